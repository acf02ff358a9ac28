// views/usage.js — #/usage: requests, errors, latency and tokens per key × function × day, and each
// key's limits as bars of what is used, refreshed every 5 s (the router writes its counts to the ledger
// once a second). An admin sees every key over the last 7 days; any other key sees its own over the
// last 30 (what GET /api/me gives).

import { h } from "../dom.js";
import { api, isAbort, seg } from "../api.js";
import { isAdmin, setCurrent } from "../session.js";
import { poll } from "../poll.js";
import { KeyedTable } from "../table.js";
import { ms, num, text, daysAgo } from "../format.js";
import { quotaBars } from "../quota.js";
import { note, section, statusLine } from "../ui.js";

const MAX_KEYS = 50;

function usageTable(days) {
  return new KeyedTable([
    { id: "day", label: "Day", text: (u) => text(u.day) },
    { id: "key", label: "Key", text: (u) => text(u.keyId) },
    { id: "function", label: "Function", text: (u) => text(u.function) },
    { id: "requests", label: "Requests", num: true, text: (u) => num(u.requests, 0) },
    { id: "clientErrors", label: "4xx", num: true, text: (u) => num(u.clientErrors, 0) },
    { id: "serverErrors", label: "5xx", num: true, text: (u) => num(u.serverErrors, 0) },
    { id: "meanMs", label: "Mean", num: true, text: (u) => ms(u.meanMs) },
    { id: "p95Ms", label: "p95", num: true, text: (u) => ms(u.p95Ms) },
    { id: "tokens", label: "Tokens (prompt / completion)", num: true,
      text: (u) => `${num(u.promptTokens, 0)} / ${num(u.completionTokens, 0)}` },
  ], { key: (u) => `${u.keyId}\u0000${u.function}\u0000${u.day}`, testid: "usage-row", caption: "Usage",
    empty: `No requests in the last ${days} days.` });
}

const byDay = (a, b) => String(b.day).localeCompare(String(a.day)) || String(a.keyId).localeCompare(String(b.keyId))
  || String(a.function).localeCompare(String(b.function));

export function mount(root) {
  const status = statusLine();
  const admin = isAdmin();
  const days = admin ? 7 : 30;
  const table = usageTable(days);
  const quotas = h("div", { "data-testid": "quotas" });
  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Usage"), status.element),
    section("Limits", quotas), section(`Last ${days} days`, table.element));

  async function adminView(signal) {
    const [usage, keys] = await Promise.all([api(`/api/usage?since=${daysAgo(days)}`, { signal }), api("/api/keys", { signal })]);
    table.update((usage.usage || []).slice().sort(byDay));
    const live = (keys.keys || []).filter((k) => !k.revokedAt);
    const shown = live.slice(0, MAX_KEYS);
    const blocks = await Promise.all(shown.map(async (k) => {
      let bars;
      try {
        bars = quotaBars(await api(`/api/keys/${seg(k.id)}/quota`, { signal }), `quota-${k.id}`);
      } catch (error) {
        if (isAbort(error)) throw error;
        bars = note(`Quota unavailable: ${error.message}`);
      }
      return h("div", { class: "quota", "data-testid": "key-quota", "data-key": k.id },
        h("h3", {}, `${k.name} `, h("span", { class: "muted" }, `${k.id} · ${k.tenant}`)), bars);
    }));
    quotas.replaceChildren(...blocks);
    if (live.length > MAX_KEYS) quotas.appendChild(note(`First ${MAX_KEYS} of ${live.length} keys.`));
  }

  async function ownView(signal) {
    const me = await api("/api/me", { signal });
    setCurrent(me);
    table.update((Array.isArray(me.usage) ? me.usage : []).slice().sort(byDay));
    const who = me.key ? `${me.key.name ?? ""} ` : "";
    quotas.replaceChildren(h("div", { class: "quota", "data-testid": "key-quota", "data-key": me.key?.id ?? "" },
      h("h3", {}, who, h("span", { class: "muted" }, me.key ? `${me.key.id} · ${me.key.tenant}` : "")),
      quotaBars(me.quota, "quota-own")));
  }

  const poller = poll(admin ? adminView : ownView, { interval: 5000, onError: (error) => status.error(error),
    onOk: () => status.clear() });
  return () => poller.stop();
}
