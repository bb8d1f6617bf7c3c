// Renders /api/webhooks into the table with DOM nodes (no HTML strings from payload data).
"use strict";

function linkCell(links) {
  const cell = document.createElement("div");
  for (const link of links) {
    const line = document.createElement("div");
    const status = link.status || "found";
    line.className = status === "transferred" ? "ok" : (link.error ? "failed" : "");
    const anchor = document.createElement("a");
    anchor.href = link.r2_url || link.url;
    anchor.textContent = `${link.provider}: ${status}`;
    line.appendChild(anchor);
    if (link.size) line.append(` (${link.size} bytes)`);
    if (link.error) line.append(` ${link.error}`);
    cell.appendChild(line);
  }
  if (!links.length) cell.textContent = "none";
  return cell;
}

async function refresh() {
  const response = await fetch("/api/webhooks");
  const data = await response.json();
  const body = document.getElementById("webhooks");
  const template = document.getElementById("row");
  body.replaceChildren();
  for (const hook of data.webhooks) {
    const row = template.content.firstElementChild.cloneNode(true);
    if (hook.duplicate) row.classList.add("duplicate");
    row.querySelector(".time").textContent = new Date(hook.received_at * 1000).toLocaleTimeString();
    row.querySelector(".subject").textContent = hook.payload.subject || "";
    row.querySelector(".from").textContent = hook.payload.from || "";
    row.querySelector(".links").appendChild(linkCell(hook.payload.delivery_links || []));
    row.querySelector(".key").textContent = hook.idempotency_key;
    body.appendChild(row);
  }
  document.getElementById("summary").textContent =
    `${data.webhooks.length} webhook(s) received, ${data.rejected} rejected for a bad signature.`;
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren();
  for (const note of data.alerts) {
    for (const alert of note.payload.alerts || []) {
      const item = document.createElement("li");
      item.textContent = `${alert.status}: ${alert.labels.alertname} ${alert.annotations.summary || ""}`;
      alerts.appendChild(item);
    }
  }
}

refresh();
setInterval(() => refresh().catch(() => {}), 3000);
