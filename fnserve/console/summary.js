// summary.js — reading a function summary defensively: fields a router may not send yet (actual,
// inFlight, labels, stats, …) are worked out from what it does send, or left missing ("–").

import { MISSING, num, pairs } from "./format.js";

const replicas = (f) => (Array.isArray(f.replicas) ? f.replicas : []);

/** Ready replicas: the summary's "actual", else the replicas whose state is ready. */
export function actual(f) {
  if (typeof f.actual === "number") return f.actual;
  return Array.isArray(f.replicas) ? replicas(f).filter((r) => r.state === "ready").length : null;
}

/** Requests in flight: "inFlight", else the replicas' outstanding requests. */
export function inFlight(f) {
  if (typeof f.inFlight === "number") return f.inFlight;
  return Array.isArray(f.replicas) ? replicas(f).reduce((sum, r) => sum + (r.outstanding || 0), 0) : null;
}

export const stat = (f, name) => (f.stats && typeof f.stats[name] === "number" ? f.stats[name] : null);

/** "1 / 2" (ready / desired). */
export function replicaText(f) {
  const have = actual(f);
  return `${have === null ? MISSING : num(have, 0)} / ${typeof f.desired === "number" ? num(f.desired, 0) : MISSING}`;
}

/** "12 / 40" p50 / p95 milliseconds. */
export function latencyText(f) {
  const p50 = stat(f, "p50Ms");
  const p95 = stat(f, "p95Ms");
  return p50 === null && p95 === null ? MISSING : `${num(p50, 0)} / ${num(p95, 0)}`;
}

export const labelsText = (f) => (f.labels ? pairs(f.labels) : pairs(f.manifest?.metadata?.labels));
