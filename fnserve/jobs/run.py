"""``python -m fnserve.jobs.run``: one training run — the same program on a laptop and in a cluster pod.

It runs the job's command in the function's folder with an empty output folder, its parameters and
run id in the environment (FNSERVE_OUTPUT_DIR, FNSERVE_PARAMS, FNSERVE_RUN_ID, FNSERVE_FUNCTION), in a
process group of its own so that a timeout or a cancel (SIGTERM to this wrapper) stops the command and
everything it started. Only a command that exits 0 within its timeout is published, files first and
``_manifest.json`` last (see fnserve/storage/runs.py); every other ending publishes nothing.

The command's output goes straight to this process's stdout/stderr (the job log); the wrapper's own
lines start with ``fnserve-job:``, or are JSON objects with FNSERVE_LOG_FORMAT=json. With ``--result FILE`` the outcome is also written there as JSON for
LocalJobs (backends/local/jobs.py), which starts the wrapper but is not imported by it: the wrapper
needs nothing of the backends. Exit status: 0 published, the command's own status if it failed, 124
timed out, 143 cancelled, 2 bad manifest, 1 when publishing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnserve import logs
from fnserve.finite import as_strings
from fnserve.manifest import ManifestError, TrainingJob, load_training_job
from fnserve.replica_contract import die_with_parent, set_parent_death_signal
from fnserve.settings import Settings
from fnserve.storage import ArtifactError, describe_folder, new_run_id, open_store, publish
from fnserve.storage.runs import PublishAborted

TIMED_OUT, CANCELLED, BAD_MANIFEST = 124, 143, 2
METRICS_FILE = "metrics.json"


@dataclass
class Outcome:
    state: str
    exit_code: int
    run_id: str
    message: str = ""
    artifact_uri: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "exitCode": self.exit_code, "runId": self.run_id, "message": self.message,
                "artifactUri": self.artifact_uri, "metrics": self.metrics}


_job_log = logging.getLogger("fnserve.job")
_fields: dict[str, Any] = {}
"""The run's id and job name, on each of the wrapper's lines in the json format."""
_as_json = False
"""FNSERVE_LOG_FORMAT=json: main() configured logging, and the wrapper's lines go through it."""


def say(message: str) -> None:
    """One of the wrapper's own lines: ``fnserve-job: …`` between the command's output, or with
    FNSERVE_LOG_FORMAT=json (a cluster's jobs) a JSON object like every other fnserve process writes."""
    if _as_json:
        _job_log.info(message, extra={"fields": _fields})
    else:
        print(f"fnserve-job: {message}", file=sys.stderr, flush=True)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp * 1000) % 1000:03d}Z"


def _git(folder: Path) -> dict[str, Any]:
    """The commit of the function's folder and whether it had uncommitted changes, if it is in git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    return {"gitCommit": commit, "gitDirty": bool(git("status", "--porcelain", "--", "."))}


def _child_dies_with_us() -> None:  # runs in the child between fork and exec
    set_parent_death_signal(signal.SIGKILL)


class Command:
    """The job's command in its own process group; stop() ends the whole group, grandchildren too."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_child_dies_with_us)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def wait(self, deadline: float, stop_requested: list[bool]) -> int | None:
        """The exit status, or None when the deadline passed or a stop was requested first."""
        while not stop_requested[0]:
            try:
                return self.process.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return None
        return None

    def stop(self, grace: float) -> None:
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.reap()

    def reap(self) -> None:
        """Whatever the command left running in its group goes too."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def run_job(job: TrainingJob, function_dir: Path, output_uri: str, run_id: str, scratch: Path,
            params: dict[str, Any], settings: Settings) -> Outcome:
    spec = job.spec
    output = scratch / "output"
    output.mkdir(parents=True)
    env = {**os.environ, "FNSERVE_OUTPUT_DIR": str(output), "FNSERVE_PARAMS": json.dumps(params),
           "FNSERVE_RUN_ID": run_id, "FNSERVE_FUNCTION": spec.function, "FNSERVE_JOB": job.name,
           "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    stop_requested = [False]

    def on_signal(signum: int, _: Any) -> None:
        stop_requested[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    started = time.time()
    say(f"run {run_id} of {job.name} for function {spec.function}: {' '.join(spec.command)} "
        f"(in {function_dir}, timeout {spec.timeout:g} s)")
    try:
        command = Command(spec.command, function_dir, env)
    except OSError as exc:
        return Outcome("failed", 127, run_id, f"spec.command: cannot run {spec.command[0]!r}: {exc.strerror}")
    code = command.wait(time.monotonic() + spec.timeout, stop_requested)
    if code is None:
        command.stop(settings.job_stop_timeout)
        if stop_requested[0]:
            return Outcome("cancelled", CANCELLED, run_id, "cancelled; nothing was published")
        return Outcome("timed_out", TIMED_OUT, run_id,
                       f"ran past its timeout of {spec.timeout:g} s and was stopped; nothing was published")
    command.reap()
    if code != 0:
        status = code if code > 0 else 128 - code
        how = f"exited with status {code}" if code > 0 else f"was killed by signal {-code}"
        return Outcome("failed", status, run_id, f"the command {how}; nothing was published")
    return _publish(job, function_dir, output, output_uri, run_id, params, started, stop_requested, settings)


def _publish(job: TrainingJob, function_dir: Path, output: Path, output_uri: str, run_id: str,
             params: dict[str, Any], started: float, stop_requested: list[bool], settings: Settings) -> Outcome:
    try:
        files = describe_folder(output)
        if not files:
            raise ArtifactError("the command exited 0 but wrote nothing to FNSERVE_OUTPUT_DIR")
        metrics: dict[str, Any] = {}
        if (output / METRICS_FILE).is_file():
            try:
                metrics = json.loads((output / METRICS_FILE).read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ArtifactError(f"{METRICS_FILE} is not valid JSON: {exc}") from None
            if not isinstance(metrics, dict):
                raise ArtifactError(f"{METRICS_FILE} must hold a JSON object")
            metrics = as_strings(metrics)  # a NaN loss is news, but not JSON: it is kept as "nan"
        record = {"apiVersion": "fnserve.dev/v1", "kind": "TrainingRun", "runId": run_id,
                  "function": job.spec.function, "job": job.name, "command": job.spec.command, "params": params,
                  "metrics": metrics, "startedAt": _iso(started), "finishedAt": _iso(time.time()),
                  "source": {"dir": str(function_dir), **_git(function_dir)}}
        store = open_store(output_uri, settings.s3_options()).child(run_id)
        say(f"publishing {len(files)} file(s), {sum(f.size for f in files)} bytes, to {store.uri}")
        publish(store, output, files, record, abort=lambda: stop_requested[0])
    except PublishAborted:
        return Outcome("cancelled", CANCELLED, run_id, "cancelled while publishing; nothing was published")
    except ArtifactError as exc:
        return Outcome("failed", 1, run_id, f"not published: {exc}")
    return Outcome("succeeded", 0, run_id, "published", store.uri, metrics)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fnserve.jobs.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="the TrainingJob manifest (train.yaml)")
    parser.add_argument("--function-dir", type=Path, help="where the command runs (default: the manifest's folder)")
    parser.add_argument("--output", help="the function's run root (default: spec.output, else the artifact root "
                                         "+ /<function>)")
    parser.add_argument("--run-id", help="default: a new one")
    parser.add_argument("--params", help="JSON object replacing spec.params")
    parser.add_argument("--scratch", type=Path, help="working folder, removed at the end (default: a temp folder)")
    parser.add_argument("--result", type=Path, help="write the outcome here as JSON")
    parser.add_argument("--event", action="store_true",
                        help="take the run id and params from the CloudEvent a Knative JobSink mounted "
                             "($K_EVENT_PATH/event)")
    return parser.parse_args(argv)


def read_event(folder: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """Run id and params from the CloudEvent that started this pod (structured JSON, data as sent)."""
    path = Path(folder or "/etc/jobsink-event") / "event"
    event = json.loads(path.read_text())
    data = event.get("data") or {}
    if isinstance(data, str):
        data = json.loads(data)
    return data.get("runId") or event.get("id"), data.get("params")


def main(argv: list[str] | None = None) -> int:
    global _as_json
    args = parse_args(argv)
    die_with_parent(CANCELLED)  # in the embedded backend the job must not outlive the platform
    settings = Settings.from_env()
    if settings.log_format == "json":  # Settings has checked both values
        logs.configure(settings.log_level, "json", "job")
        _as_json = True
    event_run, event_params = read_event(os.environ.get("K_EVENT_PATH")) if args.event else (None, None)
    run_id = args.run_id or event_run or new_run_id()
    _fields["run_id"] = run_id
    try:
        job = load_training_job(args.manifest)
        _fields["job"] = job.name
        params = json.loads(args.params) if args.params else (event_params if event_params is not None
                                                               else job.spec.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
    except ManifestError as exc:
        say("\n".join(exc.lines()))
        return _finish(args.result, Outcome("failed", BAD_MANIFEST, run_id, str(exc)))
    except ValueError as exc:
        say(str(exc))
        return _finish(args.result, Outcome("failed", BAD_MANIFEST, run_id, str(exc)))
    function_dir = (args.function_dir or args.manifest.resolve().parent).resolve()
    output_uri = (args.output or job.spec.output or f"{settings.artifacts_uri()}/{job.spec.function}").rstrip("/")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix=f"fnserve-job-{run_id}-"))
    try:
        outcome = run_job(job, function_dir, output_uri, run_id, scratch, params, settings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _finish(args.result, outcome)


def _finish(result: Path | None, outcome: Outcome) -> int:
    say(f"{outcome.state}: {outcome.message}" + (f" → {outcome.artifact_uri}" if outcome.artifact_uri else ""))
    if outcome.metrics:
        say(f"metrics: {json.dumps(outcome.metrics)}")
    if result is not None:
        result.write_text(json.dumps(outcome.to_dict()))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
