// quota.js — a key's limits as bars: how much of each (requests today, tokens today, …) is used, as a
// <meter> with the numbers as text beside it ("12 / 1,000 requests today"), each named by its limit and,
// for a limit a function's manifest sets for the key, that function ("daily · sentiment").

import { h } from "./dom.js";
import { num } from "./format.js";
import { note } from "./ui.js";

const PERIOD = { daily: "today", tpd: "today", tpm: "this minute", rps: "per second", burst: "at once",
  concurrency: "in flight" };

/** One bar's sentence: "12 / 1,000 requests today". */
export function barText(bar) {
  const of = bar.of === null || bar.of === undefined ? "unlimited" : num(bar.of, 2);
  return `${num(bar.used, 2)} / ${of} ${bar.unit || ""} ${PERIOD[bar.limit] || ""}`.replace(/\s+/g, " ").trim();
}

/** The bars of a quota object ({limits, day, bars}); a note when there are none or no quota at all. */
export function quotaBars(quota, testid = "quota") {
  if (!quota || !Array.isArray(quota.bars)) return note("No quota information from this router.", `${testid}-none`);
  const limited = Object.entries(quota.limits || {}).filter(([, v]) => v !== null && v !== undefined);
  if (quota.bars.length === 0) {
    return note(limited.length ? "No usage counted against these limits yet." : "Unlimited: no limits apply to this key.",
      `${testid}-none`);
  }
  return h("ul", { class: "bars", "data-testid": testid }, quota.bars.map((bar) => {
    const max = bar.of > 0 ? bar.of : 1;
    const share = Math.min(1, (bar.used || 0) / max);
    const name = bar.function ? `${bar.limit} · ${bar.function}` : bar.limit;
    return h("li", { "data-testid": "quota-bar", "data-limit": bar.limit, "data-function": bar.function ?? "" },
      h("span", { class: "bar-name" }, name),
      h("meter", { min: 0, max, value: Math.min(bar.used || 0, max), low: max * 0.75, high: max * 0.9,
        optimum: 0, class: share >= 0.9 ? "high" : "", "aria-label": `${name}: ${barText(bar)}` }),
      h("span", { class: "bar-text", "data-testid": "quota-text" }, barText(bar)));
  }));
}
