// SVG charts drawn from report data, no library: estimates with 95 % intervals as dots and whiskers, lines over
// an x axis (time or a log-scaled cut-off), and the legend. Every chart carries a <title> and a text summary
// for screen readers.

import { svg, h, fmt } from "./dom.js";

export const PALETTE = ["#0b57d0", "#c45500", "#1b6e2a", "#8e24aa", "#a4161a", "#00695c", "#5d4037", "#37474f"];

/** Horizontal dot-and-whisker rows: [{label, value, ci95: [lo, hi]}] on a [0, max] axis. */
export function intervalChart(rows, { title, max = null, digits = 3, width = 560 } = {}) {
  const top = Math.max(max ?? 0, ...rows.map((r) => r.ci95[1]), ...rows.map((r) => r.value), 1e-9);
  const left = 150, right = 20, rowH = 30, height = rows.length * rowH + 34;
  const x = (v) => left + ((width - left - right) * v) / top;
  const ticks = [0, top / 4, top / 2, (3 * top) / 4, top];
  return svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, role: "img", "aria-label": title },
    svg("title", {}, title),
    ticks.map((t) => [
      svg("line", { class: "grid", x1: x(t), x2: x(t), y1: 4, y2: height - 24 }),
      svg("text", { x: x(t), y: height - 8, "text-anchor": "middle" }, fmt(t, digits)),
    ]),
    rows.map((r, i) => {
      const y = 18 + i * rowH, colour = PALETTE[i % PALETTE.length];
      return svg("g", { "data-label": r.label },
        svg("text", { x: left - 8, y: y + 4, "text-anchor": "end" }, r.label),
        svg("line", { x1: x(r.ci95[0]), x2: x(r.ci95[1]), y1: y, y2: y, stroke: colour, "stroke-width": 2 }),
        svg("line", { x1: x(r.ci95[0]), x2: x(r.ci95[0]), y1: y - 6, y2: y + 6, stroke: colour, "stroke-width": 2 }),
        svg("line", { x1: x(r.ci95[1]), x2: x(r.ci95[1]), y1: y - 6, y2: y + 6, stroke: colour, "stroke-width": 2 }),
        svg("circle", { cx: x(r.value), cy: y, r: 5, fill: colour }),
        svg("title", {}, `${r.label}: ${fmt(r.value, digits)} [${fmt(r.ci95[0], digits)}, ${fmt(r.ci95[1], digits)}]`));
    }));
}

/**
 * Lines: series [{label, points: [[x, y], ...], band?: [[x, lo, hi], ...]}]; x numeric (a log scale with
 * `logX`) or Date values (`time`). Returns a figure with the chart and its legend.
 */
export function lineChart(series, { title, logX = false, time = false, yMax = null, yLabel = "", xLabel = "", width = 620, height = 280, digits = 2 } = {}) {
  const left = 54, right = 34, topPad = 26, bottom = 42;
  const xs = series.flatMap((s) => s.points.map((p) => +p[0]));
  const ys = series.flatMap((s) => [...s.points.map((p) => p[1]), ...(s.band || []).map((b) => b[2])]);
  const tx = (v) => (logX ? Math.log10(v) : +v);
  let [x0, x1] = [Math.min(...xs.map(tx)), Math.max(...xs.map(tx))];
  if (!(x1 > x0)) [x0, x1] = [x0 - 1, x0 + 1];
  // Counts (digits 0) get whole-number ticks: the top is rounded up to a multiple of 4.
  const y1 = yMax ?? (digits === 0 ? Math.max(4, Math.ceil(Math.max(...ys) / 4) * 4) : Math.max(1e-9, ...ys) * 1.05);
  const X = (v) => left + ((width - left - right) * (tx(v) - x0)) / (x1 - x0);
  const Y = (v) => topPad + (height - topPad - bottom) * (1 - v / y1);
  const xTicks = logX ? [...new Set(xs)].sort((a, b) => a - b)
    : Array.from({ length: 5 }, (_, i) => x0 + ((x1 - x0) * i) / 4);
  // Time: seconds from the first point under two minutes, clock times under two days, dates beyond.
  const span = x1 - x0;
  const xText = (v) => {
    if (!time) return logX ? String(v) : fmt(v, 0);
    if (span < 120e3) return `+${((v - x0) / 1000).toFixed(span < 10e3 ? 1 : 0)} s`;
    const d = new Date(v);
    return span < 172800e3 ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : d.toLocaleDateString();
  };
  const yTicks = Array.from({ length: 5 }, (_, i) => (y1 * i) / 4);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, role: "img", "aria-label": title },
    svg("title", {}, title),
    yTicks.map((t) => [
      svg("line", { class: "grid", x1: left, x2: width - right, y1: Y(t), y2: Y(t) }),
      svg("text", { x: left - 6, y: Y(t) + 4, "text-anchor": "end" }, fmt(t, digits === 0 ? 0 : y1 < 5 ? digits : 0)),
    ]),
    xTicks.map((t) => svg("text", { x: X(t), y: height - bottom + 16, "text-anchor": "middle" }, xText(t))),
    svg("line", { class: "axis", x1: left, x2: width - right, y1: Y(0), y2: Y(0) }),
    xLabel ? svg("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" }, xLabel) : null,
    yLabel ? svg("text", { x: 4, y: 12, "text-anchor": "start" }, yLabel) : null,
    series.map((s, i) => {
      const colour = s.colour || PALETTE[i % PALETTE.length];
      const band = (s.band || []).length
        ? svg("polygon", { fill: colour, "fill-opacity": 0.15, points: [...s.band.map((b) => `${X(b[0])},${Y(b[2])}`), ...[...s.band].reverse().map((b) => `${X(b[0])},${Y(b[1])}`)].join(" ") })
        : null;
      return svg("g", { "data-series": s.label },
        band,
        svg("polyline", { fill: "none", stroke: colour, "stroke-width": 2, points: s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ") }),
        s.points.map((p) => svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: colour }, svg("title", {}, `${s.label}: ${xText(p[0])} → ${fmt(p[1], digits)}`))));
    }));
  const legend = h("p.legend", {}, series.map((s, i) => h("span", { style: { marginRight: "14px" } },
    h("span", { style: { display: "inline-block", width: "12px", height: "12px", background: s.colour || PALETTE[i % PALETTE.length], marginRight: "4px", verticalAlign: "-1px" } }), s.label)));
  return h("figure", { style: { margin: "6px 0" } }, chart, legend);
}

/** A labelled progress bar towards a sample size. */
export function progressTo(label, done, needed) {
  if (needed === null || needed === undefined) return h("p.muted", {}, `${label}: not estimable yet (no click on the control).`);
  const capped = Math.min(done, needed);
  return h("div", {},
    h("label", {}, `${label}: ${done.toLocaleString()} of ${needed.toLocaleString()} (${needed ? Math.round((100 * capped) / needed) : 100} %)`),
    h("progress", { max: Math.max(needed, 1), value: needed ? capped : 1, "aria-label": label }));
}
