// Dead letters: the mail the app never received, each with a re-drive action behind a confirmation.

import { ApiError, AuthRequired } from "./api.js";
import { ago, badge, el } from "./views.js";

const STATUS_TEXT = {
  dead_lettered: "dead-lettered",
  redrive_requested: "re-drive requested",
  delivered: "delivered",
  gone: "gone",
};

function statusBadge(status) {
  const node = badge(status);
  node.textContent = STATUS_TEXT[status] || status;
  return node;
}

function reasonText(letter) {
  const why = `${letter.error_type}: ${letter.reason}`;
  return letter.note ? `${why} — ${letter.note}` : why;
}

export function renderDeadLetters(data) {
  const body = document.querySelector("#dead-letters tbody");
  const rows = (data.dead_letters || []).map((letter) => el("tr", {
    attrs: { "data-email-id": letter.email_id, "data-status": letter.status },
  }, [
    el("td", { text: letter.mailbox }),
    el("td", { text: letter.uid }),
    el("td", { className: "nowrap", text: ago(letter.at), title: new Date(letter.at * 1000).toISOString() }),
    el("td", { className: "reason", text: reasonText(letter), title: `email id ${letter.email_id}` }),
    el("td", {}, [
      statusBadge(letter.status),
      letter.redrives ? el("small", { className: "muted", text: ` re-driven ${letter.redrives}×` }) : "",
    ]),
    el("td", {}, letter.status === "dead_lettered"
      ? [el("button", { text: "Re-drive", className: "redrive", attrs: { type: "button" } })]
      : []),
  ]));
  body.replaceChildren(...rows);
  document.getElementById("dead-letters-empty").hidden = rows.length > 0;
}

function showMessage(text, failed = false) {
  const node = document.getElementById("dead-letters-message");
  node.textContent = text;
  node.dataset.failed = failed ? "true" : "false";
  node.hidden = !text;
}

// The confirmation and the POST behind it; the deliveries view can open it for any dead letter.
export class RedriveDialog {
  // onDone() refreshes the page; onAuth() asks for the token again.
  constructor(api, { onDone = () => {}, onAuth = () => {} } = {}) {
    this.api = api;
    this.onDone = onDone;
    this.onAuth = onAuth;
    this.letter = null;
    this.watching = null; // the email id whose requested re-drive the message reports on
    this.dialog = document.getElementById("redrive-dialog");
    this.confirmButton = document.getElementById("redrive-confirm");
    document.getElementById("redrive-cancel").addEventListener("click", () => this.close());
    this.confirmButton.addEventListener("click", () => this.confirm());
    this.dialog.addEventListener("close", () => {
      this.letter = null;
    });
  }

  // Every Re-drive button in the table opens the dialog for its row's letter.
  attach(table, lettersById) {
    table.addEventListener("click", (event) => {
      const button = event.target.closest("button.redrive");
      if (!button) return;
      const letter = lettersById().get(button.closest("tr").dataset.emailId);
      if (letter) this.open(letter);
    });
  }

  // report(text, failed) shows the answer where the re-drive was asked (the panel's own by default).
  open(letter, report = showMessage) {
    this.letter = letter;
    this.report = report;
    document.getElementById("redrive-what").textContent =
      `Mailbox ${letter.mailbox}, UID ${letter.uid}, dead-lettered ${ago(letter.at)}: ${reasonText(letter)}`;
    this.confirmButton.disabled = false;
    this.dialog.showModal();
    this.confirmButton.focus();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  // Once the watched re-drive is settled, the message says how it ended.
  settle(lettersById) {
    const letter = this.watching && lettersById.get(this.watching);
    if (!letter || letter.status === "redrive_requested") return;
    this.watching = null;
    const where = `Mailbox ${letter.mailbox}, UID ${letter.uid}`;
    if (letter.status === "delivered") showMessage(`${where}: delivered to the app.`);
    else showMessage(`${where}: ${STATUS_TEXT[letter.status] || letter.status} — ${reasonText(letter)}`, true);
  }

  async confirm() {
    const letter = this.letter;
    if (!letter) return;
    this.confirmButton.disabled = true;
    try {
      const answer = await this.api.post(`/api/dead-letters/${encodeURIComponent(letter.email_id)}/redrive`, {});
      this.report(answer.message);
      this.watching = letter.email_id;
    } catch (error) {
      if (error instanceof AuthRequired) {
        this.close();
        this.onAuth();
        return;
      }
      this.report(error instanceof ApiError && error.detail ? error.detail : error.message, true);
    } finally {
      this.close();
    }
    this.onDone();
  }
}
