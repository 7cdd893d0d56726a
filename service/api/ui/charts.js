// Small hand-written SVG charts: lines per epoch, points with error bars, probability bars.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0e7490"];
const W = 480;
const H = 240;
const PAD = { left: 52, right: 24, top: 12, bottom: 38 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function extent(values, pad = 0.05) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!isFinite(lo)) return [0, 1];
  if (lo === hi) [lo, hi] = [lo - (Math.abs(lo) * 0.1 || 0.5), hi + (Math.abs(hi) * 0.1 || 0.5)];
  const d = (hi - lo) * pad;
  return [lo - d, hi + d];
}

function ticks([lo, hi], n = 5) {
  return Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

/** An empty chart frame: axes, grid, labels. Returns {svg, x, y} with scale functions. */
function frame(title, xLabel, yLabel, xs, ys, { logX = false } = {}) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
  svg.append(el("title", {}, title));
  const tx = logX ? (v) => Math.log10(v) : (v) => v;
  const [x0, x1] = extent(xs.map(tx));
  const [y0, y1] = extent(ys);
  const x = (v) => PAD.left + ((tx(v) - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - ((v - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  for (const t of ticks([y0, y1])) {
    svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(el("text", { x: PAD.left - 4, y: y(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  // epochs: whole numbers only, at most ~8 of them; log axes: powers spread evenly
  const step = Math.max(1, Math.ceil((Math.max(...xs) - Math.min(...xs)) / 8));
  const xTicks = logX ? ticks([x0, x1]).map((t) => 10 ** t)
    : Array.from({ length: Math.floor((Math.max(...xs) - Math.min(...xs)) / step) + 1 }, (_, i) => Math.min(...xs) + i * step);
  for (const v of xTicks) {
    svg.append(el("text", { x: x(v), y: H - PAD.bottom + 14, "text-anchor": "middle" }, logX ? fmt(v) : String(v)));
  }
  svg.append(el("text", { x: (W + PAD.left) / 2, y: H - 6, "text-anchor": "middle" }, xLabel));
  svg.append(
    el("text", { x: 12, y: H / 2, transform: `rotate(-90 12 ${H / 2})`, "text-anchor": "middle" }, yLabel)
  );
  return { svg, x, y };
}

function legend(names) {
  const div = document.createElement("div");
  div.className = "legend";
  names.forEach((name, i) => {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${COLORS[i % COLORS.length]}"></i>`;
    item.append(name);
    div.append(item);
  });
  return div;
}

/**
 * Line chart of series over epochs. `series`: [{name, points: [[x, y], ...]}]. Returns a
 * <figure> (SVG + legend); each line is a <polyline data-series=name> with one <circle>
 * per point (class "point"), so tests can count points.
 */
export function lineChart(title, xLabel, yLabel, series) {
  const all = series.flatMap((s) => s.points);
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.append(cap);
  if (!all.length) {
    fig.append(Object.assign(document.createElement("p"), { className: "muted", textContent: "No epochs yet." }));
    return fig;
  }
  const { svg, x, y } = frame(title, xLabel, yLabel, all.map((p) => p[0]), all.map((p) => p[1]));
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.map(([a, b]) => `${x(a)},${y(b)}`).join(" ");
    svg.append(el("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    for (const [a, b] of s.points) {
      const dot = el("circle", { cx: x(a), cy: y(b), r: 3, fill: color, class: "point", "data-series": s.name });
      dot.append(el("title", {}, `${s.name} epoch ${a}: ${fmt(b)}`));
      svg.append(dot);
    }
  });
  fig.append(svg, legend(series.map((s) => s.name)));
  return fig;
}

/**
 * Points with vertical error bars on a log x axis. `points`: [{label, x, y, lo, hi, group}];
 * groups get one colour each.
 */
export function scatterChart(title, xLabel, yLabel, points) {
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.append(cap);
  if (!points.length) {
    fig.append(Object.assign(document.createElement("p"), { className: "muted", textContent: "Nothing to plot yet." }));
    return fig;
  }
  const ys = points.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]);
  const { svg, x, y } = frame(title, xLabel, yLabel, points.map((p) => p.x), ys, { logX: true });
  const groups = [...new Set(points.map((p) => p.group))];
  for (const p of points) {
    const color = COLORS[groups.indexOf(p.group) % COLORS.length];
    if (p.lo != null && p.hi != null) {
      svg.append(el("line", { x1: x(p.x), x2: x(p.x), y1: y(p.lo), y2: y(p.hi), stroke: color }));
    }
    const dot = el("circle", { cx: x(p.x), cy: y(p.y), r: 4, fill: color, class: "point" });
    dot.append(el("title", {}, `${p.label}: ${fmt(p.y)} at ${p.x} parameters`));
    svg.append(dot);
    svg.append(el("text", { x: x(p.x) + 6, y: y(p.y) - 6, class: "point-label" }, p.label));
  }
  fig.append(svg, legend(groups));
  return fig;
}

/** Horizontal probability bars, one row per digit: `probs` = {"0": p, ...}. */
export function probabilityBars(probs, best) {
  const list = document.createElement("ol");
  list.className = "bars";
  for (const [digit, p] of Object.entries(probs)) {
    const li = document.createElement("li");
    li.className = digit === String(best) ? "best" : "";
    li.innerHTML = `<span class="digit">${digit}</span><span class="bar"><i style="width:${(p * 100).toFixed(1)}%"></i></span><span class="p">${(p * 100).toFixed(1)} %</span>`;
    li.setAttribute("aria-label", `digit ${digit}: ${(p * 100).toFixed(1)} percent`);
    list.append(li);
  }
  return list;
}
