// parts/stats.js — the function page's last hour: requests per 10 s and p50 / p95 latency as two line
// charts, and the last cold starts as stacked bars (queue, fork, imports, model load, ready, server start).

import { h } from "../dom.js";
import { lineChart } from "../chart.js";
import { iso, ms, num, relative } from "../format.js";

const PHASES = [["queueMs", "queue", "seg-queue"], ["forkMs", "fork", "seg-fork"],
  ["importsMs", "imports", "seg-imports"], ["loadMs", "model load", "seg-load"], ["readyMs", "ready", "seg-ready"],
  ["serverMs", "server start", "seg-server"]];

/** The two charts for a /stats answer. */
export function statsCharts(stats) {
  const buckets = Array.isArray(stats.buckets) ? stats.buckets : [];
  const step = stats.intervalSeconds || 10;
  const pick = (field) => buckets.map((b) => (typeof b[field] === "number" ? b[field] : null));
  return h("div", { class: "charts" },
    lineChart({ title: `Requests per ${step} s`, step, yLabel: "requests", testid: "chart-requests",
      series: [{ name: "requests", values: pick("requests"), cls: "s1" },
        { name: "errors", values: pick("errors"), cls: "s3" }] }),
    lineChart({ title: "Latency (ms)", step, yLabel: "ms", testid: "chart-latency",
      series: [{ name: "p50", values: pick("p50Ms"), cls: "s1" }, { name: "p95", values: pick("p95Ms"), cls: "s2" }] }));
}

/** The newest cold starts (up to ``count``) as stacked horizontal bars, scaled to the slowest. */
export function coldStartBars(list, count = 8) {
  const shown = (Array.isArray(list) ? list : []).slice(0, count);
  if (shown.length === 0) return h("p", { class: "note", "data-testid": "cold-starts-none" },
    "No cold start recorded yet (the split is shown for functions on the embedded backend).");
  const longest = Math.max(1, ...shown.map((c) => c.totalMs || PHASES.reduce((sum, [k]) => sum + (c[k] || 0), 0)));
  const legend = h("ul", { class: "legend" }, PHASES.map(([, label, cls]) =>
    h("li", {}, h("span", { class: `swatch ${cls}`, "aria-hidden": "true" }), label)));
  const rows = shown.map((c) => {
    const bar = h("div", { class: "stack", "aria-hidden": "true" });
    for (const [key, label, cls] of PHASES) {
      const part = h("span", { class: `seg ${cls}`, title: `${label}: ${ms(c[key])}` });
      part.style.width = `${(Math.max(0, c[key] || 0) / longest) * 100}%`;
      bar.appendChild(part);
    }
    const words = PHASES.map(([key, label]) => `${label} ${ms(c[key])}`).join(" · ");
    return h("li", { "data-testid": "cold-start" },
      h("div", { class: "cold-head" },
        h("span", { title: iso(c.at) }, relative(c.at)), " ",
        h("span", { class: "muted" }, `revision ${num(c.revision, 0)}${c.replica ? ` · ${c.replica}` : ""}`), " ",
        h("strong", {}, ms(c.totalMs))),
      bar, h("div", { class: "cold-text" }, words));
  });
  return h("div", {}, legend, h("ul", { class: "cold-starts" }, rows));
}
