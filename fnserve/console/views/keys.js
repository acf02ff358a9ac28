// views/keys.js — #/keys: API keys (list, create, rotate, revoke). A new or rotated key's secret is shown
// once in a token panel and kept nowhere else; rotate and revoke ask first.

import { h } from "../dom.js";
import { api, isAbort, seg } from "../api.js";
import { KeyedTable } from "../table.js";
import { iso, pairs, relative, text } from "../format.js";
import { confirmButton, errorContent, section, statusLine } from "../ui.js";
import { tokenPanel } from "../token.js";

const LIMITS = [["rps", "Requests / second", "any"], ["burst", "Burst", "1"], ["concurrency", "Concurrency", "1"],
  ["daily", "Requests / day", "1"], ["tpm", "Tokens / minute", "1"], ["tpd", "Tokens / day", "1"]];

function stateOf(key, now = Date.now() / 1000) {
  if (key.revokedAt) return "revoked";
  if (typeof key.expiresAt === "number" && key.expiresAt <= now) return "expired";
  return "active";
}

function field(id, label, input, help) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    help ? h("small", { class: "muted", id: `${id}-help` }, help) : null);
}

export function mount(root) {
  const status = statusLine();
  const tokenSlot = h("div");
  const controller = new AbortController();
  const signal = controller.signal;

  function showToken(token, what) {
    tokenSlot.replaceChildren(tokenPanel(token, what, () => status.say("The secret is gone from this page.", "ok")));
    tokenSlot.firstChild.focus();
  }

  const table = new KeyedTable([
    { id: "id", label: "Id", text: (k) => k.id },
    { id: "name", label: "Name", text: (k) => text(k.name) },
    { id: "tenant", label: "Tenant", text: (k) => text(k.tenant) },
    { id: "scopes", label: "Scopes", text: (k) => (Array.isArray(k.scopes) ? k.scopes.join(", ") : "–") },
    { id: "created", label: "Created", text: (k) => relative(k.createdAt), title: (k) => iso(k.createdAt) },
    { id: "expires", label: "Expires", text: (k) => (k.expiresAt ? relative(k.expiresAt) : "never"), title: (k) => iso(k.expiresAt) },
    { id: "state", label: "State", text: (k) => stateOf(k) + (k.previousSecretValidUntil && !k.revokedAt ? " (old secret still valid)" : ""),
      cls: (k) => ({ active: "badge ok", revoked: "badge bad", expired: "badge warn" })[stateOf(k)] },
    { id: "limits", label: "Limits", text: (k) => pairs(k.limits) },
    { id: "actions", label: "Actions", sig: (k) => stateOf(k), build: (k) => (stateOf(k) !== "active" ? h("span") : h("span", { class: "row-actions" },
      confirmButton("Rotate", { question: "New secret? The old one works for 1 h more.", confirm: "Rotate", testid: "rotate",
        action: async () => {
          const answer = await api(`/api/keys/${seg(k.id)}/rotate`, { method: "POST", body: {} });
          showToken(answer.token, `New secret of key ${k.id}`);
          await refresh();
        } }),
      " ",
      confirmButton("Revoke", { question: "Revoke this key now?", confirm: "Revoke", danger: true, testid: "revoke",
        action: async () => {
          await api(`/api/keys/${seg(k.id)}`, { method: "DELETE" });
          status.say(`Key ${k.id} revoked.`, "ok");
          await refresh();
        } }))) },
  ], { key: (k) => k.id, testid: "key-row", caption: "API keys", empty: "No keys.",
    rowData: (k) => ({ id: k.id, name: k.name, state: stateOf(k) }) });

  async function refresh() {
    const answer = await api("/api/keys", { signal });
    table.update(Array.isArray(answer.keys) ? answer.keys : []);
  }

  // the create form
  const name = h("input", { type: "text", required: true, autocomplete: "off", "data-testid": "key-name" });
  const tenant = h("input", { type: "text", placeholder: "default", autocomplete: "off", "data-testid": "key-tenant" });
  const scopes = h("input", { type: "text", placeholder: "invoke:*", autocomplete: "off", "data-testid": "key-scopes" });
  const expires = h("input", { type: "number", min: "1", step: "1", inputmode: "numeric", "data-testid": "key-expires" });
  const limits = LIMITS.map(([id, label, step]) => [id, label,
    h("input", { type: "number", min: "0", step, inputmode: "decimal", "data-testid": `key-limit-${id}` })]);
  const formError = h("div", { class: "status error", "aria-live": "polite", "data-testid": "form-error" });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "create-key" }, "Create key");
  const form = h("form", { class: "key-form", novalidate: true },
    h("div", { class: "grid" },
      field("key-name", "Name (required)", name),
      field("key-tenant", "Tenant", tenant),
      field("key-scopes", "Scopes, comma separated", scopes, "e.g. invoke:sentiment, or admin; empty: invoke:*"),
      field("key-expires", "Expires in (seconds)", expires, "empty: never")),
    h("fieldset", {}, h("legend", {}, "Limits (empty: the tenant's)"),
      h("div", { class: "grid" }, limits.map(([id, label, input]) => field(`key-limit-${id}`, label, input)))),
    h("div", { class: "actions" }, submit), formError);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.replaceChildren();
    const body = { name: name.value.trim() };
    if (!body.name) {
      formError.textContent = "A key needs a name.";
      name.focus();
      return;
    }
    if (tenant.value.trim()) body.tenant = tenant.value.trim();
    const list = scopes.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (list.length) body.scopes = list;
    if (expires.value.trim()) body.expiresIn = Number(expires.value);
    const chosen = Object.fromEntries(limits.filter(([, , input]) => input.value.trim() !== "")
      .map(([id, , input]) => [id, Number(input.value)]));
    if (Object.keys(chosen).length) body.limits = chosen;
    submit.disabled = true;
    try {
      const answer = await api("/api/keys", { method: "POST", body, signal });
      form.reset();
      showToken(answer.token, `New key ${answer.key?.name ?? body.name} (${answer.key?.id ?? ""})`);
      await refresh();
    } catch (error) {
      if (!isAbort(error)) formError.replaceChildren(...errorContent(error));
    } finally {
      submit.disabled = false;
    }
  });

  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "API keys"), status.element),
    tokenSlot, table.element, section("Create a key", form));
  refresh().catch((error) => {
    if (!isAbort(error)) status.error(error);
  });
  return () => {
    controller.abort();
    tokenSlot.replaceChildren();
  };
}
