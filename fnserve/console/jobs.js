// jobs.js — what a training job record reads as: its duration (so far, while it runs) and whether it
// has finished. Shared by the jobs list and the job page.

export const DONE = ["succeeded", "failed", "timed_out", "cancelled"];

export const isDone = (job) => DONE.includes(job.state);

/** Seconds the job ran (until now while it runs), or null before it started. */
export function runSeconds(job, now = Date.now() / 1000) {
  if (typeof job.startedAt !== "number") return null;
  const end = typeof job.finishedAt === "number" ? job.finishedAt : isDone(job) ? job.startedAt : now;
  return Math.max(0, end - job.startedAt);
}

/** A CSS class for the state word. */
export function stateClass(job) {
  return { succeeded: "badge ok", running: "badge info", queued: "badge", failed: "badge bad",
    timed_out: "badge bad", cancelled: "badge warn" }[job.state] || "badge";
}
