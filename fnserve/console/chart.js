// chart.js — a small SVG line chart (axes, tick labels, legend) built with createElementNS, for the
// function page's requests and latency over the last hour. No chart library: this is all it needs.

import { h, s } from "./dom.js";
import { num } from "./format.js";

const WIDE = 640;
const NARROW = 360;
const H = 220;
const PAD = { left: 56, right: 12, top: 12, bottom: 40 };

/** The smallest 1, 2 or 5 × 10^n at least ``value`` (an axis top that reads well). */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function pathOf(values, x, y) {
  let d = "";
  let pen = false;
  values.forEach((value, i) => {
    if (value === null || value === undefined || !Number.isFinite(value)) {
      pen = false;
      return;
    }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(value).toFixed(1)}`;
    pen = true;
  });
  return d;
}

/** Circles for the values with no value on either side (a lone bucket draws no line). */
function lonePoints(values, x, y, cls) {
  const ok = (i) => i >= 0 && i < values.length && Number.isFinite(values[i]);
  return values.flatMap((value, i) => (ok(i) && !ok(i - 1) && !ok(i + 1)
    ? [s("circle", { cx: x(i).toFixed(1), cy: y(value).toFixed(1), r: 2.5, class: `point ${cls}` })] : []));
}

/**
 * series: [{name, values: (number|null)[], cls}] — all of the same length, oldest first, one per
 * ``step`` seconds ending now. yLabel: the y axis' title. Returns a <figure> holding the SVG and legend.
 */
export function lineChart({ title, series, step = 10, yLabel, testid }) {
  // drawn in fewer units on a phone, so that its labels stay readable once scaled to the screen
  const W = window.matchMedia("(max-width: 640px)").matches ? NARROW : WIDE;
  const count = Math.max(1, ...series.map((line) => line.values.length));
  const top = niceMax(Math.max(0, ...series.flatMap((line) => line.values.filter(Number.isFinite))));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (count === 1 ? plotW : (i / (count - 1)) * plotW);
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const grid = [0, 0.5, 1].map((f) => s("g", { class: "tick" },
    s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top * f), y2: y(top * f), class: "grid" }),
    s("text", { x: PAD.left - 6, y: y(top * f) + 4, "text-anchor": "end" }, num(top * f))));
  const span = Math.round((count * step) / 60);
  const xTicks = [0, 0.5, 1].map((f) => s("text", {
    x: PAD.left + f * plotW, y: H - PAD.bottom + 16, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle",
  }, f === 1 ? "now" : `−${Math.round(span * (1 - f))} min`));

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title },
    s("title", {}, title),
    ...grid,
    s("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: PAD.top + plotH, class: "axis" }),
    s("line", { x1: PAD.left, x2: W - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH, class: "axis" }),
    ...xTicks,
    s("text", { x: PAD.left + plotW / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, "time"),
    s("text", { x: 14, y: PAD.top + plotH / 2, "text-anchor": "middle", class: "axis-title",
      transform: `rotate(-90 14 ${PAD.top + plotH / 2})` }, yLabel),
    ...series.map((line) => s("path", { d: pathOf(line.values, x, y), class: `line ${line.cls}` },
      s("title", {}, line.name))),
    ...series.flatMap((line) => lonePoints(line.values, x, y, line.cls)));

  const legend = h("ul", { class: "legend" },
    series.map((line) => h("li", {}, h("span", { class: `swatch ${line.cls}`, "aria-hidden": "true" }), line.name)));
  return h("figure", { class: "chart-box", "data-testid": testid },
    h("figcaption", {}, title), svg, legend);
}
