// parts/revisions.js — the function page's revisions: each with its pinned training run and that run's
// metrics, and "Roll back to this" (asked first) on every revision that is not the one serving.

import { h } from "../dom.js";
import { api, seg } from "../api.js";
import { KeyedTable } from "../table.js";
import { iso, num, pairs, relative, text } from "../format.js";
import { confirmButton } from "../ui.js";

function stateOf(r, canary) {
  if (r.current) return "current";
  return canary !== null && r.revision === canary ? "canary" : "";
}

/** The revisions table of function ``name``; onChanged(message) after a rollback. */
export function revisionsPanel(name, { onChanged }) {
  let canary = null;
  const table = new KeyedTable([
    { id: "revision", label: "Revision", num: true, text: (r) => num(r.revision, 0) },
    { id: "state", label: "State", text: (r) => stateOf(r, canary) || "–",
      cls: (r) => (stateOf(r, canary) ? `badge ${stateOf(r, canary)}` : "") },
    { id: "created", label: "Created", text: (r) => relative(r.createdAt), title: (r) => iso(r.createdAt) },
    { id: "model", label: "Model", text: (r) => text(r.modelUri) },
    { id: "run", label: "Training run", sig: (r) => JSON.stringify(r.run ?? null), build: (r) => (!r.run ? h("span", {}, "–")
      : r.run.job ? h("a", { href: `#/jobs/${seg(r.run.job)}` }, text(r.run.id)) : h("span", {}, text(r.run.id))) },
    { id: "metrics", label: "Metrics", text: (r) => (r.run ? pairs(r.run.metrics) : "–") },
    { id: "action", label: "Action", sig: (r) => `${r.revision}:${r.current}`, build: (r) => (r.current ? h("span") :
      confirmButton("Roll back to this", {
        question: `Serve revision ${r.revision} again?`, confirm: "Roll back", testid: "rollback",
        action: async () => {
          await api(`/api/functions/${seg(name)}/rollback`, { method: "POST", body: { to: r.revision } });
          onChanged(`Rolled back to revision ${r.revision}.`);
        },
      })) },
  ], { key: (r) => r.revision, testid: "revision-row", caption: "Revisions",
    rowData: (r) => ({ revision: r.revision, current: r.current ? "true" : "false" }) });

  return {
    element: table.element,
    async refresh(signal, canaryRevision) {
      canary = canaryRevision ?? null;
      const answer = await api(`/api/functions/${seg(name)}/revisions`, { signal });
      const list = Array.isArray(answer.revisions) ? [...answer.revisions].reverse() : [];
      table.update(list.map((r) => ({ ...r, current: r.current ?? r.revision === answer.current })));
    },
  };
}
