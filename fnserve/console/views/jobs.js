// views/jobs.js — #/jobs: the newest training jobs (GET /api/jobs?limit=100), refreshed every 2 s and
// updated in place by job id.

import { h } from "../dom.js";
import { api, seg } from "../api.js";
import { poll } from "../poll.js";
import { KeyedTable } from "../table.js";
import { duration, iso, pairs, relative, text } from "../format.js";
import { runSeconds, stateClass } from "../jobs.js";
import { statusLine } from "../ui.js";

export function mount(root) {
  const status = statusLine();
  const table = new KeyedTable([
    { id: "id", label: "Job", text: (j) => j.id, href: (j) => `#/jobs/${seg(j.id)}` },
    { id: "function", label: "Function", text: (j) => text(j.function) },
    { id: "state", label: "State", text: (j) => text(j.state), cls: stateClass },
    { id: "created", label: "Created", text: (j) => relative(j.createdAt), title: (j) => iso(j.createdAt) },
    { id: "duration", label: "Duration", num: true, text: (j) => duration(runSeconds(j)) },
    { id: "metrics", label: "Metrics", text: (j) => pairs(j.metrics) },
  ], { key: (j) => j.id, testid: "job-row", caption: "Training jobs", empty: "No training jobs yet.",
    rowData: (j) => ({ id: j.id, state: j.state }) });
  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Training jobs"), status.element),
    table.element);
  const poller = poll(async (signal) => {
    const answer = await api("/api/jobs?limit=100", { signal });
    table.update(Array.isArray(answer.jobs) ? answer.jobs : []);
  }, { onError: (error) => status.error(error), onOk: () => status.clear() });
  return () => poller.stop();
}
