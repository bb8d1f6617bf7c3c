// Small line charts on a canvas, and the series the dashboard derives from metric history.

// Counter total -> rate per minute between consecutive exports (a reset counts as zero).
export function perMinute(history) {
  const out = [];
  for (let i = 1; i < history.length; i += 1) {
    const [t0, v0] = history[i - 1];
    const [t1, v1] = history[i];
    if (t1 > t0) out.push([t1, Math.max(0, v1 - v0) / (t1 - t0) * 60]);
  }
  return out;
}

// Histogram [t, sum, count] history -> mean per export interval; intervals without data skipped.
export function meanPerInterval(history) {
  const out = [];
  for (let i = 1; i < history.length; i += 1) {
    const [, s0, c0] = history[i - 1];
    const [t1, s1, c1] = history[i];
    const count = c1 - c0;
    if (count > 0) out.push([t1, Math.max(0, s1 - s0) / count]);
  }
  return out;
}

// Histogram points (bounds, cumulative bucket counts) of every series -> the q-quantile, read
// by linear interpolation inside its bucket (the first starts at 0, the last ends at the max).
export function quantile(points, q) {
  const withBuckets = (points || []).filter((p) => p.count && p.bounds && p.buckets);
  if (!withBuckets.length) return null;
  const bounds = withBuckets[0].bounds;
  const counts = bounds.map(() => 0).concat([0]);
  let max = 0;
  for (const p of withBuckets) {
    p.buckets.forEach((c, i) => { counts[i] += c; });
    max = Math.max(max, p.max ?? 0);
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    if (counts[i] && seen + counts[i] >= rank) {
      const low = i === 0 ? 0 : bounds[i - 1];
      const high = i < bounds.length ? Math.min(bounds[i], max || bounds[i]) : max;
      return low + (high - low) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return max;
}

export function plain(history) {
  return history.map(([t, v]) => [t, v]);
}

function cssColor(element, name, fallback) {
  const value = getComputedStyle(element).getPropertyValue(name).trim();
  return value || fallback;
}

// Draws points [[t, v], ...]; `limit` draws a dashed line (such as the memory limit).
export function drawChart(canvas, points, { format = (v) => String(v), min = 0, max, limit } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(120, canvas.clientWidth);
  const height = Math.max(60, canvas.clientHeight || Number(canvas.getAttribute("height")) || 90);
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const ink = cssColor(canvas, "--chart-ink", "#2563eb");
  const muted = cssColor(canvas, "--muted", "#6b7280");
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = muted;
  if (points.length < 2) {
    ctx.fillText(points.length ? "collecting…" : "no data yet", 8, height / 2);
    return;
  }
  const values = points.map(([, v]) => v);
  let top = max ?? Math.max(...values, limit ?? -Infinity);
  if (!(top > min)) top = min + 1;
  const left = points[0][0];
  const right = points[points.length - 1][0];
  const pad = { top: 14, bottom: 4, left: 2, right: 2 };
  const x = (t) => pad.left + (right > left ? (t - left) / (right - left) : 1) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (Math.min(Math.max(v, min), top) - min) / (top - min)) * (height - pad.top - pad.bottom);
  if (limit !== undefined) {
    ctx.strokeStyle = cssColor(canvas, "--bad", "#dc2626");
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(pad.left, y(limit));
    ctx.lineTo(width - pad.right, y(limit));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.beginPath();
  points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.strokeStyle = ink;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(x(right), y(min));
  ctx.lineTo(x(left), y(min));
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = ink;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.fillStyle = muted;
  ctx.fillText(`max ${format(top)}`, 4, 10);
}
