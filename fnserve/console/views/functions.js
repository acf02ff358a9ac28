// views/functions.js — #/functions: every function (or, for a non-admin key, those it may invoke) in one
// table refreshed every 2 s, its rows updated in place by name.

import { h } from "../dom.js";
import { api, seg } from "../api.js";
import { freshFunctions, isAdmin, setCurrent } from "../session.js";
import { poll } from "../poll.js";
import { KeyedTable } from "../table.js";
import { num, text } from "../format.js";
import { actual, inFlight, labelsText, latencyText, replicaText, stat } from "../summary.js";
import { statusLine } from "../ui.js";

export const COLUMNS = [
  { id: "name", width: "11rem", label: "Name", text: (f) => f.name, href: (f) => `#/functions/${seg(f.name)}` },
  { id: "revision", width: "5rem", label: "Revision", num: true, text: (f) => num(f.revision, 0) },
  { id: "runtime", width: "5.5rem", label: "Runtime", text: (f) => text(f.runtime) },
  { id: "ready", width: "7rem", label: "Ready", text: (f) => (f.ready ? "ready" : "not ready"),
    cls: (f) => (f.ready ? "dot ok" : "dot warn"), title: (f) => f.message || null },
  { id: "replicas", width: "6.5rem", label: "Replicas", hint: "ready / desired", num: true, text: replicaText },
  { id: "inFlight", width: "4.5rem", label: "In flight", num: true, text: (f) => num(inFlight(f), 0) },
  { id: "queued", width: "4.5rem", label: "Queued", num: true, text: (f) => num(f.queued, 0) },
  { id: "rpm", width: "5rem", label: "Req/min", num: true, text: (f) => num(stat(f, "rpm")) },
  { id: "latency", width: "6rem", label: "p50 / p95 ms", num: true, text: latencyText },
  { id: "errors", width: "5rem", label: "Errors (1 h)", num: true, text: (f) => num(stat(f, "errors"), 0) },
  { id: "coldStarts", width: "5.5rem", label: "Cold starts (1 h)", num: true, text: (f) => num(stat(f, "coldStarts"), 0) },
  { id: "labels", width: "minmax(10rem, 1fr)", label: "Labels", text: labelsText },
];

export function mount(root) {
  const status = statusLine();
  const table = new KeyedTable(COLUMNS, {
    key: (f) => f.name, testid: "function-row", caption: "Functions",
    rowData: (f) => ({ name: f.name, ready: f.ready ? "true" : "false", actual: actual(f) ?? "" }),
    empty: "No functions deployed.", fixed: true,
  });
  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Functions"), status.element),
    table.element);

  let first = freshFunctions();  // the sign-in check just brought them: the first render waits for nothing
  const poller = poll(async (signal) => {
    let list;
    if (first) {
      [list, first] = [first, null];
    } else if (isAdmin()) {  // the brief view: what this table shows, sorted by name, no replica lists
      list = (await api("/api/functions?view=brief", { signal })).functions;
    } else {
      const me = await api("/api/me", { signal });
      setCurrent(me);
      list = me.functions;
    }
    table.update(list);
    table.table.dataset.count = String(list.length);
  }, { onError: (error) => status.error(error), onOk: () => status.clear() });

  return () => poller.stop();
}
