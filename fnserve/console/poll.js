// poll.js — refreshing a view's live data: a setTimeout chain (the next call is planned only once the
// previous one answered, ``interval`` after the previous one began, so a slow router is never hit twice
// at once and a quick one is asked every ``interval``), paused while the tab is hidden,
// and stopped — its fetch aborted — when the view goes away.

import { isAbort } from "./api.js";

/**
 * Run task(signal) now and then every ``interval`` ms from the start of the last run (at once if it took longer). onError(error) hears failures
 * (not aborts); onOk() each success. Returns {stop(), now()}: now() runs it again at once.
 */
export function poll(task, { interval = 2000, onError = () => {}, onOk = () => {} } = {}) {
  let timer = null;
  let controller = null;
  let stopped = false;
  let again = false;

  async function tick() {
    timer = null;
    if (stopped || document.hidden) return;
    const started = performance.now();
    controller = new AbortController();
    try {
      await task(controller.signal);
      if (!stopped) onOk();
    } catch (error) {
      if (!stopped && !isAbort(error)) onError(error);
    }
    controller = null;
    if (stopped) return;
    if (again) {
      again = false;
      tick();
    } else if (!document.hidden) {  // every ``interval`` from the start of the last, never two at once
      timer = setTimeout(tick, Math.max(0, interval - (performance.now() - started)));
    }
  }

  function visible() {
    if (!document.hidden && !stopped && timer === null && controller === null) tick();
  }

  document.addEventListener("visibilitychange", visible);
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (controller) controller.abort();
      document.removeEventListener("visibilitychange", visible);
    },
    now() {
      if (stopped) return;
      if (controller) {
        again = true;
        return;
      }
      clearTimeout(timer);
      tick();
    },
  };
}
