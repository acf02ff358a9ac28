// views/function.js — #/functions/<name>: one function's facts, traffic charts, cold starts and try-it
// for any key that may invoke it; for an admin key also actions (train, promote or drop a canary),
// revisions with rollback, replicas and its live log (a non-admin key's summary, from /api/me, is the
// brief one: no replicas, no deploy time). The live parts are polled every 2 s; everything stops (polls
// and the log stream) when leaving.

import { h } from "../dom.js";
import { api, ApiError, seg } from "../api.js";
import { isAdmin, setCurrent } from "../session.js";
import { poll } from "../poll.js";
import { iso, num, relative, text } from "../format.js";
import { actual, inFlight, labelsText, latencyText, replicaText, stat } from "../summary.js";
import { confirmButton, liveFacts, note, section, statusLine } from "../ui.js";
import { logTail } from "../logtail.js";
import { revisionsPanel } from "../parts/revisions.js";
import { replicasTable } from "../parts/replicas.js";
import { coldStartBars, statsCharts } from "../parts/stats.js";
import { tryIt } from "../parts/tryit.js";

const FACTS = [
  { id: "ready", label: "Ready", value: (f) => (f.ready ? "ready" : "not ready"),
    cls: (f) => (f.ready ? "dot ok" : "dot warn"), title: (f) => f.message || "" },
  { id: "revision", label: "Revision", value: (f) => num(f.revision, 0) },
  { id: "runtime", label: "Runtime", value: (f) => text(f.runtime) },
  { id: "url", label: "Inference path", value: (f) => text(f.url) },
  { id: "created", label: "Deployed", value: (f) => relative(f.createdAt), title: (f) => iso(f.createdAt) },
  { id: "replicas", label: "Replicas (ready / desired)", value: replicaText },
  { id: "inFlight", label: "In flight", value: (f) => num(inFlight(f), 0) },
  { id: "queued", label: "Queued", value: (f) => num(f.queued, 0) },
  { id: "canary", label: "Canary", value: (f) => (f.canaryRevision ? `revision ${f.canaryRevision} · ${num(f.canaryPercent, 0)}%` : "none") },
  { id: "rpm", label: "Requests / min", value: (f) => num(stat(f, "rpm")) },
  { id: "latency", label: "p50 / p95 ms", value: latencyText },
  { id: "errors", label: "Errors (1 h)", value: (f) => num(stat(f, "errors"), 0) },
  { id: "coldStarts", label: "Cold starts (1 h)", value: (f) => num(stat(f, "coldStarts"), 0) },
  { id: "labels", label: "Labels", value: labelsText },
  { id: "message", label: "Message", value: (f) => text(f.message) },
];

export function mount(root, { params }) {
  const name = params[0];
  const admin = isAdmin();
  const base = `/api/functions/${seg(name)}`;
  const status = statusLine();
  const facts = liveFacts(FACTS, "function-facts");
  const actions = h("div", { class: "actions", "data-testid": "function-actions" });
  const replicas = admin ? replicasTable() : null;
  const charts = h("div", { "data-testid": "charts" });
  const colds = h("div", { "data-testid": "cold-starts" });
  const trial = tryIt(name);
  let actionSig = null;
  let revisionSig = null;
  let log = null;
  let revisions = null;
  let summaryPoll = null;

  function changed(message) {
    status.say(message, "ok");
    revisionSig = null;
    summaryPoll.now();
  }

  function renderActions(f) {
    const sig = `${Boolean(f.trainable)}:${f.canaryRevision ?? ""}`;
    if (!admin || sig === actionSig) return;
    actionSig = sig;
    const train = h("button", { type: "button", "data-testid": "train" }, "Train");
    train.addEventListener("click", async () => {
      train.disabled = true;
      try {
        const job = await api(`${base}/train`, { method: "POST", body: {} });
        location.hash = `#/jobs/${seg(job.id)}`;
      } catch (error) {
        train.disabled = false;
        status.error(error);
      }
    });
    actions.replaceChildren(...[
      f.trainable ? train : null,
      f.canaryRevision ? confirmButton("Promote canary", { question: `Make revision ${f.canaryRevision} current?`,
        confirm: "Promote", testid: "promote", action: async () => {
          await api(`${base}/promote`, { method: "POST", body: {} });
          changed(`Revision ${f.canaryRevision} promoted.`);
        } }) : null,
      f.canaryRevision ? confirmButton("Drop canary", { question: `Stop revision ${f.canaryRevision}?`, danger: true,
        confirm: "Drop", testid: "drop-canary", action: async () => {
          await api(`${base}/rollback`, { method: "POST", body: {} });
          changed("Canary dropped.");
        } }) : null,
    ].filter(Boolean));
  }

  async function loadSummary(signal) {
    if (admin) return api(base, { signal });
    const me = await api("/api/me", { signal });
    setCurrent(me);
    const found = (me.functions || []).find((f) => f.name === name);
    if (!found) throw new ApiError(404, `no function ${name} for this key`, null);
    return found;
  }

  const heading = h("h1", { tabindex: "-1" }, name);
  const page = [
    h("p", { class: "crumbs" }, h("a", { href: "#/functions" }, "← Functions")),
    h("div", { class: "view-head" }, heading, actions, status.element),
    facts.element,
    section("Try it", trial.element),
  ];
  page.push(section("Last hour", charts), section("Last cold starts", colds));
  if (admin) {
    revisions = revisionsPanel(name, { onChanged: changed });
    log = logTail(`${base}/logs?follow=1&tail=100`, { label: `Log of ${name}` });
    page.push(section("Revisions", revisions.element));
  }
  if (replicas) page.push(section("Replicas", replicas.element));
  if (log) page.push(section("Log", log.element));
  root.append(...page);
  facts.element.dataset.name = name;

  summaryPoll = poll(async (signal) => {
    const f = await loadSummary(signal);
    facts.update(f);
    facts.element.dataset.actual = String(actual(f) ?? "");
    facts.element.dataset.revision = String(f.revision ?? "");
    if (replicas) replicas.update(f.replicas);
    trial.setPath(f.url);
    renderActions(f);
    const sig = `${f.revision}:${f.canaryRevision ?? ""}`;
    if (revisions && sig !== revisionSig) {
      await revisions.refresh(signal, f.canaryRevision);
      revisionSig = sig;
    }
  }, { onError: (error) => status.error(error), onOk: () => {
    if (status.element.classList.contains("error")) status.clear();
  } });

  const statsPoll = poll(async (signal) => {  // a key that may invoke the function may read its stats too
    const stats = await api(`${base}/stats`, { signal });
    charts.replaceChildren(statsCharts(stats));
    colds.replaceChildren(coldStartBars(stats.coldStarts));
  }, { onError: (error) => charts.replaceChildren(note(`Statistics unavailable: ${error.message}`)) });
  if (log) log.start();
  trial.load();

  return () => {
    summaryPoll.stop();
    statsPoll.stop();
    if (log) log.stop();
    trial.stop();
  };
}
