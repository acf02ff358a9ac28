// views/audit.js — #/audit: the newest 200 admin actions, newest first, filtered by an action prefix
// (e.g. "key." for every key action).

import { h } from "../dom.js";
import { api, isAbort } from "../api.js";
import { KeyedTable } from "../table.js";
import { iso, pairs, relative, text } from "../format.js";
import { statusLine } from "../ui.js";

export function mount(root) {
  let controller = null;
  const status = statusLine();
  const table = new KeyedTable([
    { id: "at", label: "When", text: (e) => relative(e.at), title: (e) => iso(e.at) },
    { id: "actor", label: "Actor", text: (e) => text(e.actor) },
    { id: "action", label: "Action", text: (e) => text(e.action) },
    { id: "target", label: "Target", text: (e) => text(e.target) },
    { id: "outcome", label: "Outcome", text: (e) => `${text(e.outcome)}${e.status ? ` (${e.status})` : ""}`,
      cls: (e) => (e.outcome === "ok" ? "badge ok" : "badge bad") },
    { id: "client", label: "Client", text: (e) => text(e.client), title: (e) => (e.requestId ? `request ${e.requestId}` : null) },
    { id: "detail", label: "Detail", text: (e) => pairs(e.detail) },
  ], { key: (e) => e.id, testid: "audit-row", caption: "Audit log", empty: "No matching entries." });

  const filter = h("input", { id: "audit-action", type: "search", placeholder: "e.g. key. or function.deploy",
    autocomplete: "off", "data-testid": "audit-filter" });
  const form = h("form", { class: "inline-form", role: "search" },
    h("label", { for: "audit-action" }, "Action starts with"), filter,
    h("button", { type: "submit", "data-testid": "audit-apply" }, "Filter"));

  async function load() {
    if (controller) controller.abort();
    controller = new AbortController();
    const prefix = filter.value.trim();
    const query = `/api/audit?limit=200${prefix ? `&action=${encodeURIComponent(prefix)}` : ""}`;
    try {
      const answer = await api(query, { signal: controller.signal });
      const entries = (answer.entries || []).slice().sort((a, b) => (b.at - a.at) || (b.id - a.id));
      table.update(entries);
      status.clear();
    } catch (error) {
      if (!isAbort(error)) status.error(error);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Audit log"), status.element),
    form, table.element);
  load();
  return () => controller && controller.abort();
}
