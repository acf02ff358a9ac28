// logtail.js — a live log: a streamed fetch (with the key header, which EventSource cannot send) read
// chunk by chunk and appended to a <pre> as text nodes, the oldest lines dropped past a cap, scrolled
// along while the reader is at the bottom, and aborted when the view goes away.

import { h } from "./dom.js";
import { isAbort, stream } from "./api.js";
import { errorContent } from "./ui.js";

/**
 * A log panel for ``path`` (a streamed text answer). Options: maxLines (default 2000), testid,
 * onEnd() when the stream ends by itself. Returns {element, start(), stop(), clear()}.
 */
export function logTail(path, { maxLines = 2000, testid = "log", label = "Log", onEnd = () => {} } = {}) {
  const pre = h("pre", { class: "log", "data-testid": testid, tabindex: "0", "aria-label": label });
  const state = h("p", { class: "status muted", "aria-live": "polite", "data-testid": `${testid}-state` });
  let controller = null;
  let partial = "";
  let lines = 0;

  function add(line) {
    pre.appendChild(document.createTextNode(`${line}\n`));
    lines += 1;
    while (lines > maxLines && pre.firstChild) {
      pre.firstChild.remove();
      lines -= 1;
    }
  }

  function onText(chunk) {
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
    const parts = (partial + chunk).split("\n");
    partial = parts.pop();
    parts.forEach(add);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async function run(signal) {
    state.className = "status muted";
    state.textContent = "Following…";
    try {
      await stream(path, { signal, onText });
      if (partial) add(partial);
      partial = "";
      state.textContent = "The log ended.";
      onEnd();
    } catch (error) {
      if (isAbort(error)) return;
      state.className = "status error";
      state.replaceChildren(...errorContent(error));
    }
  }

  return {
    element: h("div", { class: "log-box" }, state, pre),
    start() {
      if (controller) controller.abort();
      controller = new AbortController();
      run(controller.signal);
    },
    stop() {
      if (controller) controller.abort();
      controller = null;
    },
    clear() {
      pre.replaceChildren();
      partial = "";
      lines = 0;
    },
  };
}
