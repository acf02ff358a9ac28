// token.js — showing a new or rotated key's secret exactly once: a panel with the token, Copy and Done.
// The token is held by this panel's text only; Done (or leaving the page) removes it for good.

import { h } from "./dom.js";

/** A panel showing ``token`` for ``what`` (e.g. "New key ci-bot"); onDone() after it is dismissed. */
export function tokenPanel(token, what, onDone) {
  const value = h("code", { class: "token", "data-testid": "token-value" }, token);
  const copied = h("span", { class: "status", "aria-live": "polite" });
  const copy = h("button", { type: "button", "data-testid": "copy-token" }, "Copy");
  const done = h("button", { type: "button", class: "primary", "data-testid": "token-done" }, "Done");
  const panel = h("section", { class: "panel token-panel", "data-testid": "new-token", tabindex: "-1",
    "aria-labelledby": "token-title" },
  h("h2", { id: "token-title" }, what),
  h("p", {}, "Copy this secret now: it is shown this once and cannot be seen again."),
  value, h("div", { class: "actions" }, copy, done, copied));

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(token);
      copied.textContent = "Copied.";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(value);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  done.addEventListener("click", () => {
    value.textContent = "";
    panel.remove();
    onDone();
  });
  return panel;
}
