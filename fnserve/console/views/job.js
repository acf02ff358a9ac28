// views/job.js — #/jobs/<id>: one training job's facts and metrics (polled every 2 s until it ends), a
// Cancel button while it is queued or running, and its log streamed live.

import { h } from "../dom.js";
import { api, seg } from "../api.js";
import { poll } from "../poll.js";
import { duration, iso, pairs, relative, text } from "../format.js";
import { isDone, runSeconds, stateClass } from "../jobs.js";
import { confirmButton, liveFacts, section, statusLine } from "../ui.js";
import { logTail } from "../logtail.js";

const FACTS = [
  { id: "state", label: "State", value: (j) => text(j.state), cls: stateClass },
  { id: "name", label: "Job", value: (j) => text(j.name) },
  { id: "function", label: "Function", value: (j) => text(j.function) },
  { id: "created", label: "Created", value: (j) => relative(j.createdAt), title: (j) => iso(j.createdAt) },
  { id: "started", label: "Started", value: (j) => relative(j.startedAt), title: (j) => iso(j.startedAt) },
  { id: "finished", label: "Finished", value: (j) => relative(j.finishedAt), title: (j) => iso(j.finishedAt) },
  { id: "duration", label: "Duration", value: (j) => duration(runSeconds(j)) },
  { id: "exitCode", label: "Exit code", value: (j) => text(j.exitCode) },
  { id: "params", label: "Parameters", value: (j) => pairs(j.params) },
  { id: "artifact", label: "Artifact", value: (j) => text(j.artifactUri) },
  { id: "deploy", label: "Deploy on success", value: (j) => (j.deploy ? pairs(j.deploy) : "–") },
  { id: "message", label: "Message", value: (j) => text(j.message) },
];

export function mount(root, { params }) {
  const id = params[0];
  const base = `/api/jobs/${seg(id)}`;
  const status = statusLine();
  const facts = liveFacts(FACTS, "job-facts");
  const metrics = h("div", { "data-testid": "job-metrics" });
  const actions = h("div", { class: "actions" });
  let cancellable = null;
  let ended = false;
  let restart = null;
  const log = logTail(`${base}/logs?follow=1`, { label: `Log of job ${id}`, onEnd: () => {
    // the stream ends with the job; one that ends earlier (the job not started yet) is opened again
    if (!ended) restart = setTimeout(() => {
      log.clear();
      log.start();
    }, 2000);
  } });

  root.append(h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← Training jobs")),
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, `Job ${id}`), actions, status.element),
    facts.element, section("Metrics", metrics), section("Log", log.element));

  function showMetrics(job) {
    const entries = Object.entries(job.metrics || {});
    metrics.replaceChildren(entries.length ? h("dl", { class: "facts compact" }, entries.map(([k, v]) =>
      h("div", {}, h("dt", {}, k), h("dd", {}, typeof v === "number" ? v.toLocaleString() : JSON.stringify(v)))))
      : h("p", { class: "note" }, "No metrics yet."));
  }

  const poller = poll(async (signal) => {
    const job = await api(base, { signal });
    facts.update(job);
    facts.element.dataset.state = job.state;
    showMetrics(job);
    const can = !isDone(job);
    if (can !== cancellable) {
      cancellable = can;
      actions.replaceChildren(can ? confirmButton("Cancel job", { question: "Stop this job? It publishes nothing.",
        confirm: "Stop it", danger: true, testid: "cancel-job", action: async () => {
          await api(`${base}/cancel`, { method: "POST", body: {} });
          status.say("Job cancelled.", "ok");
          poller.now();
        } }) : h("span"));
    }
    if (isDone(job) && !ended) {
      ended = true;
      poller.stop();
    }
  }, { onError: (error) => status.error(error) });

  log.start();
  return () => {
    ended = true;
    clearTimeout(restart);
    poller.stop();
    log.stop();
  };
}
