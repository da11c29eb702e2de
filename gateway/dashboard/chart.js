// A small inline SVG line chart (no library): time on x, value on y, optional threshold lines,
// step drawing for states (modes, booleans) and marked points (evidence).

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}

function fmtTime(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/**
 * @param {object} o
 * @param {{t: number, v: number}[]} o.points  time (ms) and value, sorted by time
 * @param {{value: number, label: string, kind: string}[]} [o.thresholds]
 * @param {{t: number, v: number}[]} [o.marks]  points to mark (evidence)
 * @param {boolean} [o.step]  draw as steps (states)
 * @param {number} [o.yMin] @param {number} [o.yMax]  fixed y range (else from the data and thresholds)
 * @param {number} [o.tMin] @param {number} [o.tMax]  fixed x range
 * @param {string} [o.unit] @param {string} [o.label] accessible name
 * @param {(v: number) => string} [o.yFormat]
 */
export function lineChart(o) {
  const W = o.width ?? 560;
  const H = o.height ?? 180;
  const m = { l: 46, r: 12, t: 16, b: 24 };
  const pts = (o.points || []).filter((p) => Number.isFinite(p.v) && Number.isFinite(p.t));
  const marks = (o.marks || []).filter((p) => Number.isFinite(p.v) && Number.isFinite(p.t));
  const thresholds = o.thresholds || [];
  const svg = el("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": o.label || "",
  });
  if (o.testid) svg.setAttribute("data-testid", o.testid);
  const all = [...pts, ...marks];
  let t0 = o.tMin ?? Math.min(...all.map((p) => p.t));
  let t1 = o.tMax ?? Math.max(...all.map((p) => p.t));
  if (!Number.isFinite(t0) || !Number.isFinite(t1)) {
    t1 = Date.now();
    t0 = t1 - 60_000;
  }
  if (t1 - t0 < 1000) {
    t0 -= 30_000;
    t1 += 30_000;
  }
  const vals = [...all.map((p) => p.v), ...thresholds.map((th) => th.value)];
  let y0 = o.yMin ?? Math.min(...vals);
  let y1 = o.yMax ?? Math.max(...vals);
  if (!Number.isFinite(y0) || !Number.isFinite(y1)) {
    y0 = 0;
    y1 = 1;
  }
  if (o.yMin === undefined || o.yMax === undefined) {
    const pad = (y1 - y0) * 0.12 || Math.abs(y1) * 0.1 || 1;
    if (o.yMin === undefined) y0 -= pad;
    if (o.yMax === undefined) y1 += pad;
  }
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  const fmt = o.yFormat || ((v) => (Math.abs(y1 - y0) < 2 ? v.toFixed(2) : String(Math.round(v * 10) / 10)));

  // grid and axes
  const grid = el("g", { class: "chart-grid" });
  const ys = niceStep(y1 - y0, 4);
  for (let v = Math.ceil(y0 / ys) * ys; v <= y1 + 1e-9; v += ys) {
    grid.append(el("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    grid.append(el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end", class: "chart-tick" }, fmt(v)));
  }
  const ticks = 4;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    grid.append(
      el("text", { x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle", class: "chart-tick" }, fmtTime(t)),
    );
  }
  svg.append(grid);
  if (o.unit) svg.append(el("text", { x: m.l - 6, y: 9, "text-anchor": "end", class: "chart-unit" }, o.unit));

  // thresholds
  for (const th of thresholds) {
    if (th.value < y0 || th.value > y1) continue;
    const g = el("g", { class: `chart-threshold ${th.kind || ""}`, "data-threshold": th.value });
    g.append(el("line", { x1: m.l, x2: W - m.r, y1: y(th.value), y2: y(th.value) }));
    // labels of close lines must not overlap: "low" thresholds below their line, the others above
    const below = th.kind === "low";
    g.append(el("text", { x: W - m.r - 4, y: y(th.value) + (below ? 12 : -4), "text-anchor": "end" }, th.label));
    svg.append(g);
  }

  // the line
  if (pts.length) {
    let d = "";
    pts.forEach((p, i) => {
      if (i === 0) d += `M${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      else if (o.step) d += `H${x(p.t).toFixed(1)}V${y(p.v).toFixed(1)}`;
      else d += `L${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
    });
    if (o.step || o.extendToEnd) d += `H${x(t1).toFixed(1)}`;
    svg.append(el("path", { d, class: "chart-line" }));
    const last = pts[pts.length - 1];
    svg.append(el("circle", { cx: x(last.t), cy: y(last.v), r: 3, class: "chart-last" }));
  }
  for (const p of marks) {
    const c = el("circle", { cx: x(p.t), cy: y(p.v), r: 4.5, class: "chart-mark" });
    c.append(el("title", {}, `${fmtTime(p.t)}  ${p.v}`));
    svg.append(c);
  }
  return svg;
}
