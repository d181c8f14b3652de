// Small inline-SVG line charts for the doctor's track record (GET /api/me/track-record):
// reputation and cumulative earnings after each settled case. No library; attributes only
// (no inline style), so the page's CSP holds.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== null) el.textContent = text;
  return el;
}

// One line chart: `values` over settled cases (index on x), with its first and last values
// labelled, an optional dashed `target` line (e.g. the next tier's reputation).
function lineChart({ id, title, values, unit, target = null, targetLabel = "" }) {
  const W = 320, H = 120, PAD_L = 44, PAD_R = 8, PAD_T = 16, PAD_B = 22;
  const lo = Math.min(...values, target ?? Infinity);
  const hi = Math.max(...values, target ?? -Infinity);
  const span = hi - lo || 1;
  const x = (i) => PAD_L + (values.length === 1 ? 0 : (i * (W - PAD_L - PAD_R)) / (values.length - 1));
  const y = (v) => PAD_T + (H - PAD_T - PAD_B) * (1 - (v - lo) / span);
  const first = values[0], last = values[values.length - 1];
  const desc = title + ": " + first + " " + unit + " before your first case shown, " + last +
    " " + unit + " now, over " + (values.length - 1) + " settled case" +
    (values.length === 2 ? "" : "s") + (target === null ? "." : "; " + targetLabel + " at " + target + ".");
  const svg = svgEl("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": id + "-title " + id + "-desc",
    class: "chart", id,
  });
  svg.appendChild(svgEl("title", { id: id + "-title" }, title));
  svg.appendChild(svgEl("desc", { id: id + "-desc" }, desc));
  svg.appendChild(svgEl("line", { x1: PAD_L, x2: W - PAD_R, y1: H - PAD_B, y2: H - PAD_B, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: PAD_L, x2: PAD_L, y1: PAD_T, y2: H - PAD_B, class: "axis" }));
  svg.appendChild(svgEl("text", { x: PAD_L - 4, y: y(hi) + 4, class: "tick", "text-anchor": "end" }, String(hi)));
  svg.appendChild(svgEl("text", { x: PAD_L - 4, y: y(lo) + 4, class: "tick", "text-anchor": "end" }, String(lo)));
  svg.appendChild(svgEl("text", { x: PAD_L, y: H - 6, class: "tick" }, "settled cases →"));
  if (target !== null) {
    svg.appendChild(svgEl("line", { x1: PAD_L, x2: W - PAD_R, y1: y(target), y2: y(target), class: "target" }));
    svg.appendChild(svgEl("text", { x: W - PAD_R, y: y(target) - 3, class: "tick", "text-anchor": "end" }, targetLabel));
  }
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(svgEl("polyline", { points, class: "series" }));
  values.forEach((v, i) => {
    svg.appendChild(svgEl("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, class: "dot" }));
  });
  return svg;
}

// Both charts for a track record, and the profile's tier line (`me`: GET /api/me).
function renderTrack(container, record, me) {
  container.replaceChildren();
  if (!record.points.length) return false;
  const reputation = [record.start_reputation, ...record.points.map((p) => p.reputation)];
  const earnings = [record.earned_before, ...record.points.map((p) => p.earned)];
  const next = me && me.next_tier_reputation !== null ? me.next_tier_reputation : null;
  const caption = (text) => {
    const p = document.createElement("p");
    p.className = "chart-label";
    p.textContent = text;
    p.setAttribute("aria-hidden", "true"); // the chart's own title says it
    container.appendChild(p);
  };
  caption("Reputation after each settled case");
  container.appendChild(lineChart({
    id: "chart-reputation", title: "Reputation", values: reputation, unit: "points",
    target: next, targetLabel: next === null ? "" : "tier " + (me.tier + 1),
  }));
  caption("Credits earned, in total");
  container.appendChild(lineChart({
    id: "chart-earnings", title: "Earnings", values: earnings, unit: "credits",
  }));
  return true;
}
