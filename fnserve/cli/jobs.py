"""Training commands: ``train`` (on the router, or ``--local`` through the job wrapper here) and ``jobs``
ls / status / logs / cancel. A followed job prints its log as it runs and ends with its record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fnserve.cli.base import UNAVAILABLE, USAGE, CliError, Commands, add_command, connect, refuse_kind, source_location
from fnserve.cli.client import AdminClient, RouterUnreachable
from fnserve.cli.output import age, print_json, table
from fnserve.manifest import manifest_path, parse_training_job, read_yaml
from fnserve.settings import Settings


def _params(pairs: list[str]) -> dict[str, Any]:
    """--set name=value pairs; values are JSON where they parse (5, 0.1, true, [1,2]), else strings."""
    params = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set expects name=value (got {pair!r})", USAGE)
        try:
            params[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[name.strip()] = raw
    return params


def cmd_train(args: argparse.Namespace) -> None:
    file = manifest_path(args.path, "train.yaml")
    data = read_yaml(file)
    refuse_kind(data, file, "Function", f"deploy it with `fnserve deploy {args.path}`")
    job = parse_training_job(data, str(file))
    params = {**job.spec.params, **_params(args.set)}
    if args.local:
        _train_here(args, file, params)
        return
    client = connect(args)
    record = submit_job(args, client, file, params)
    if not args.follow:
        if args.json:
            print_json(record)
        else:
            print(record["id"])
        return
    print(f"job {record['id']} ({record['name']} for {record['function']}) {record['state']}", file=sys.stderr)
    _follow(args, client, record["id"])


def submit_job(args: argparse.Namespace, client: AdminClient, file: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Queue the TrainingJob in ``file`` on the router, with its folder as the job's code."""
    return client.submit_job(read_yaml(file), source_location(args, file.parent), str(file), params)


def _follow(args: argparse.Namespace, client: AdminClient, job_id: str) -> None:
    record = watch(client, job_id, log_to(args))
    if args.json:
        print_json(record)
    else:
        _print_job(record)
    if record["state"] != "succeeded" or record["deploy"].startswith("not deployed"):
        raise SystemExit(1)


def log_to(args: argparse.Namespace) -> TextIO:
    """Where a followed job's log goes: stdout, or stderr when stdout is for the --json answer."""
    return sys.stderr if args.json else sys.stdout


def watch(client: AdminClient, job_id: str, out: TextIO) -> dict[str, Any]:
    """Print the job's log to ``out`` as it runs; return its record once it (and any rollout it triggers)
    settled."""
    _print_stream(client, job_id, follow=True, out=out)
    record = client.job(job_id)
    while not _settled(record):  # the log ends with the job; a deployOnSuccess rollout may still be on its way
        time.sleep(0.5)
        record = client.job(job_id)
    return record


def _print_stream(client: AdminClient, job_id: str, follow: bool, out: TextIO) -> None:
    """Copy a job's log to ``out`` as it arrives. A stream that breaks says it lost the router (it may
    have been up when the stream began)."""
    try:
        for text in client.job_logs(job_id, follow=follow):
            out.write(text)
            out.flush()
    except RouterUnreachable as exc:
        raise CliError(f"lost the router at {exc.url} ({exc.reason})", UNAVAILABLE) from None


def _settled(record: dict[str, Any]) -> bool:
    return record["state"] in ("succeeded", "failed", "timed_out", "cancelled") and record["deploy"] != "pending"


def _train_here(args: argparse.Namespace, file: Path, params: dict[str, Any]) -> None:
    """Run the job wrapper in the foreground, without a router: publishes into the same artifact store."""
    import subprocess

    settings = Settings.from_env(state_dir=args.state_dir)
    env = {**os.environ, "FNSERVE_ARTIFACT_ROOT": settings.artifacts_uri()}
    code = subprocess.run([sys.executable, "-m", "fnserve.jobs.run", "--manifest", str(file),
                           "--params", json.dumps(params)], env=env).returncode
    raise SystemExit(code)


def _print_job(job: dict[str, Any]) -> None:
    took = f" in {job['finishedAt'] - job['startedAt']:.1f} s" if job["finishedAt"] and job["startedAt"] else ""
    lines = [("job", f"{job['id']} ({job['name']} for function {job['function']})"),
             ("state", f"{job['state']}{took}" + (f", exit code {job['exitCode']}" if job["exitCode"] else "")),
             ("message", job["message"] or "-"), ("params", json.dumps(job["params"])),
             ("metrics", json.dumps(job["metrics"]) if job["metrics"] else "-"),
             ("artifact", job["artifactUri"] or "-"), ("deploy", job["deploy"] or "-")]
    for label, value in lines:
        print(f"{label + ':':<10} {value}")


def cmd_jobs_ls(args: argparse.Namespace) -> None:
    result = connect(args).jobs(args.limit)
    if args.json:
        print_json(result)
        return
    table(["JOB", "NAME", "FUNCTION", "STATE", "AGE", "ARTIFACT", "DEPLOY"],
          [[j["id"], j["name"], j["function"], j["state"], age(j["createdAt"]), j["artifactUri"] or "-",
            j["deploy"] or "-"] for j in result["jobs"]])


def cmd_jobs_status(args: argparse.Namespace) -> None:
    record = connect(args).job(args.job_id)
    print_json(record) if args.json else _print_job(record)


def cmd_jobs_logs(args: argparse.Namespace) -> None:
    _print_stream(connect(args), args.job_id, follow=args.follow, out=sys.stdout)


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    record = connect(args).cancel_job(args.job_id)
    print_json(record) if args.json else print(f"job {record['id']}: {record['state']} ({record['message']})")


def register(sub: Commands, common: argparse.ArgumentParser) -> None:
    """train, jobs (ls, status, logs, cancel)."""
    train = add_command(
        sub, "train", "run a training job (train.yaml, or a folder holding one)",
        "Run a TrainingJob: its command writes a model into an empty folder, published as an immutable run of\n"
        "its function if it exits 0 in time (and rolled out with deployOnSuccess). Queued on the router (prints\n"
        "the job id; --follow streams the log), or with --local run here without a router.",
        ["fnserve train functions/sentiment --follow",
         "fnserve train functions/iris/train.yaml --set epochs=50 --set seed=1",
         "fnserve train --local --state-dir .fnserve functions/sentiment"],
        [common])
    train.add_argument("path", type=Path, help="a train.yaml, or a folder holding one")
    train.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a spec.params entry")
    train.add_argument("--follow", "-f", action="store_true",
                       help="stream the log (to stderr with --json); end with metrics and artifact")
    train.add_argument("--upload", action="store_true",
                       help="send the folder's files (automatic when the router is not on this machine)")
    train.add_argument("--local", action="store_true",
                       help="no router: run the job here in the foreground and publish to the state dir's artifact "
                            "store (or FNSERVE_ARTIFACT_ROOT)")
    train.add_argument("--state-dir", type=Path, help="with --local: the state folder (default ~/.fnserve)")
    train.set_defaults(run=cmd_train)

    jobs = add_command(sub, "jobs", "training jobs: ls, status, logs, cancel",
                       "Training jobs on the router: list them, show one, print its log, cancel it.",
                       ["fnserve jobs ls", "fnserve jobs logs 20260101-120000-000-abcd --follow"])
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_ls = add_command(jobs_sub, "ls", "list the newest jobs",
                          "List the newest jobs: state, age, the run they published and what deployOnSuccess did.",
                          ["fnserve jobs ls", "fnserve jobs ls --limit 5 --json"], [common])
    jobs_ls.add_argument("--limit", type=int, default=50)
    jobs_ls.set_defaults(run=cmd_jobs_ls)
    for action, summary, description, run in (
            ("status", "show one job", "Show one job: state, exit code, params, metrics, artifact and deploy.",
             cmd_jobs_status),
            ("logs", "print a job's log", "Print a job's log (--follow: until the job ends).", cmd_jobs_logs),
            ("cancel", "stop a queued or running job", "Stop a queued or running job; it publishes nothing.",
             cmd_jobs_cancel)):
        example = f"fnserve jobs {action} 20260101-120000-000-abcd"
        command = add_command(jobs_sub, action, summary, description,
                              [example + (" --follow" if action == "logs" else " --json")], [common])
        command.add_argument("job_id", metavar="ID")
        if action == "logs":
            command.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        command.set_defaults(run=run)
