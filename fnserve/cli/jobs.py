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
from typing import Any

from fnserve.cli.base import CliError, connect, source_location
from fnserve.cli.client import AdminClient, AdminError, RouterUnreachable
from fnserve.cli.output import age, print_json, table
from fnserve.manifest import load_training_job, manifest_path, read_yaml
from fnserve.settings import Settings


def _params(pairs: list[str]) -> dict[str, Any]:
    """--set name=value pairs; values are JSON where they parse (5, 0.1, true, [1,2]), else strings."""
    params = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set expects name=value (got {pair!r})")
        try:
            params[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[name.strip()] = raw
    return params


def cmd_train(args: argparse.Namespace) -> None:
    file = manifest_path(args.path, "train.yaml")
    job = load_training_job(file)
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
    record = watch(client, job_id)
    if args.json:
        print_json(record)
    else:
        _print_job(record)
    if record["state"] != "succeeded" or record["deploy"].startswith("not deployed"):
        raise SystemExit(1)


def watch(client: AdminClient, job_id: str) -> dict[str, Any]:
    """Print the job's log as it runs; return its record once it (and any rollout it triggers) settled."""
    _print_stream(client, job_id, follow=True)
    record = client.job(job_id)
    while not _settled(record):  # the log ends with the job; a deployOnSuccess rollout may still be on its way
        time.sleep(0.5)
        record = client.job(job_id)
    return record


def _print_stream(client: AdminClient, job_id: str, follow: bool) -> None:
    """Copy a job's log to stdout as it arrives. A stream that breaks says it lost the router (it may
    have been up when the stream began)."""
    try:
        for text in client.job_logs(job_id, follow=follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    except AdminError as exc:
        raise CliError(exc.message) from None
    except RouterUnreachable as exc:
        raise CliError(f"lost the router at {exc.url} ({exc.reason})") from None


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
    _print_stream(connect(args), args.job_id, follow=args.follow)


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    record = connect(args).cancel_job(args.job_id)
    print(f"job {record['id']}: {record['state']} ({record['message']})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """train, jobs (ls, status, logs, cancel)."""
    train = sub.add_parser("train", parents=[common], help="run a training job (train.yaml, or a folder holding one)")
    train.add_argument("path", type=Path)
    train.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a spec.params entry")
    train.add_argument("--follow", "-f", action="store_true", help="stream the log; end with metrics and artifact")
    train.add_argument("--upload", action="store_true",
                       help="send the folder's files (automatic when the router is not on this machine)")
    train.add_argument("--local", action="store_true",
                       help="no router: run the job here in the foreground and publish to the state dir's artifact "
                            "store (or FNSERVE_ARTIFACT_ROOT)")
    train.add_argument("--state-dir", type=Path, help="with --local: the state folder (default ~/.fnserve)")
    train.set_defaults(run=cmd_train)

    jobs = sub.add_parser("jobs", help="training jobs: ls, status, logs, cancel")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_ls = jobs_sub.add_parser("ls", parents=[common], help="list the newest jobs")
    jobs_ls.add_argument("--limit", type=int, default=50)
    jobs_ls.set_defaults(run=cmd_jobs_ls)
    for action, helptext, run in (("status", "show one job", cmd_jobs_status),
                                  ("logs", "print a job's log", cmd_jobs_logs),
                                  ("cancel", "stop a queued or running job", cmd_jobs_cancel)):
        command = jobs_sub.add_parser(action, parents=[common], help=helptext)
        command.add_argument("job_id", metavar="ID")
        if action == "logs":
            command.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        command.set_defaults(run=run)
