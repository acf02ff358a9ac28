// ui.js — the small widgets every view shares: a status line screen readers hear, a two-step confirm
// (an in-page question instead of window.confirm, so keyboards and tests can answer it), a facts list,
// and the way an API error with its problems is shown.

import { h, replace } from "./dom.js";
import { ApiError } from "./api.js";
import { MISSING } from "./format.js";

/** A polite live region: .say(text, kind) shows a message ("error", "ok" or plain), .clear() hides it. */
export function statusLine(testid = "status") {
  const el = h("p", { class: "status", "aria-live": "polite", role: "status", "data-testid": testid });
  return {
    element: el,
    say(text, kind = "") {
      el.className = `status ${kind}`.trim();
      el.textContent = text;
    },
    error(error) {
      el.className = "status error";
      replace(el, ...errorContent(error));
    },
    clear() {
      el.className = "status";
      el.replaceChildren();
    },
  };
}

/** The text of an error, and its problems ({path, message}) as a list, as nodes. */
export function errorContent(error) {
  const message = error instanceof Error ? error.message : String(error);
  const problems = error instanceof ApiError ? error.problems : [];
  // the router's error line joins its problems; with a list of them, the list says it better
  const nodes = [h("span", {}, problems.length ? "Not accepted:" : message)];
  if (problems.length) {
    nodes.push(h("ul", { class: "problems", "data-testid": "problems" },
      problems.map((p) => h("li", {}, p.path ? `${p.path}: ${p.message}` : String(p.message)))));
  }
  return nodes;
}

/** A muted note ("not available on this router"). */
export function note(text, testid) {
  return h("p", { class: "note", "data-testid": testid }, text);
}

/**
 * A button that asks first: pressing it shows "question [confirm] [Cancel]" in its place (Escape
 * cancels); confirm runs action() (a promise), whose error is shown next to it. Returns the element
 * holding both states.
 */
export function confirmButton(label, { question, confirm = "Yes", action, testid, danger = false }) {
  const holder = h("span", { class: "confirm" });
  const status = h("span", { class: "status error", "aria-live": "polite" });
  const button = h("button", { type: "button", class: danger ? "danger" : "", "data-testid": testid }, label);
  const yes = h("button", { type: "button", class: danger ? "danger" : "primary", "data-testid": "confirm-yes" }, confirm);
  const no = h("button", { type: "button", "data-testid": "confirm-no" }, "Cancel");
  const ask = h("span", { class: "confirm-ask", role: "group", "aria-label": question }, h("span", {}, question), " ", yes, " ", no);

  function idle() {
    replace(holder, button, status);
    yes.disabled = false;
  }
  button.addEventListener("click", () => {
    status.textContent = "";
    replace(holder, ask, status);
    yes.focus();
  });
  no.addEventListener("click", () => {
    idle();
    button.focus();
  });
  ask.addEventListener("keydown", (event) => {
    if (event.key === "Escape") no.click();
  });
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    try {
      await action();
      if (holder.isConnected) idle();
    } catch (error) {
      idle();
      replace(status, ...errorContent(error));
    }
  });
  idle();
  return holder;
}

/** A definition list of [label, value, {title, testid}] facts; values may be nodes. */
export function facts(items) {
  return h("dl", { class: "facts" }, items.map(([label, value, extra = {}]) => h("div", {},
    h("dt", {}, label),
    h("dd", { title: extra.title || null, "data-testid": extra.testid || null },
      value === undefined || value === null || value === "" ? MISSING : value))));
}

/** A section with a heading. */
export function section(title, ...children) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}

/** A ready dot and its word. */
export function readiness(ready) {
  if (ready === undefined || ready === null) return h("span", {}, MISSING);
  return h("span", { class: ready ? "dot ok" : "dot warn" }, ready ? "ready" : "not ready");
}

/**
 * Facts that change (a polled record): defs [{id, label, value(record) → string, title?(record),
 * cls?(record)}]. Returns {element, update(record)}; each value is updated in place.
 */
export function liveFacts(defs, testid = "facts") {
  const cells = defs.map((def) => ({ def, dd: h("dd", { "data-testid": `fact-${def.id}` }) }));
  const element = h("dl", { class: "facts", "data-testid": testid },
    cells.map(({ def, dd }) => h("div", {}, h("dt", {}, def.label), dd)));
  return {
    element,
    update(record) {
      for (const { def, dd } of cells) {
        const value = def.value(record);
        const shown = value === undefined || value === null || value === "" ? MISSING : String(value);
        if (dd.textContent !== shown) dd.textContent = shown;
        const title = def.title ? def.title(record) : "";
        if (title) dd.title = title;
        else dd.removeAttribute("title");
        const cls = def.cls ? def.cls(record) : "";
        if (dd.className !== cls) dd.className = cls;
      }
    },
  };
}
