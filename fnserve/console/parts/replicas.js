// parts/replicas.js — the function page's replicas table, updated in place by replica id.

import { KeyedTable } from "../table.js";
import { iso, num, relative, text } from "../format.js";

export function replicasTable() {
  const table = new KeyedTable([
    { id: "id", label: "Replica", text: (r) => text(r.id) },
    { id: "revision", label: "Revision", num: true, text: (r) => num(r.revision, 0) },
    { id: "state", label: "State", text: (r) => text(r.state),
      cls: (r) => (r.state === "ready" ? "dot ok" : "dot warn") },
    { id: "outstanding", label: "In flight", num: true, text: (r) => num(r.outstanding, 0) },
    { id: "pid", label: "PID", num: true, text: (r) => text(r.pid) },
    { id: "started", label: "Started", text: (r) => relative(r.startedAt), title: (r) => iso(r.startedAt) },
    { id: "gpus", label: "GPUs", text: (r) => (Array.isArray(r.gpus) && r.gpus.length ? r.gpus.join(", ") : "–") },
  ], { key: (r) => r.id, testid: "replica-row", caption: "Replicas", empty: "No replicas running (scaled to zero)." });
  return { element: table.element, update: (replicas) => table.update(Array.isArray(replicas) ? replicas : []) };
}
