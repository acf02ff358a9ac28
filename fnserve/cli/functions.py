"""Function commands: deploy, ls, status, rm, invoke, logs, revisions, rollback, promote — each one admin call,
its answer printed as a table or lines (or as it came, with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fnserve.cli.base import CliError, connect, load_function_file, source_location
from fnserve.cli.client import AdminClient, AdminError
from fnserve.cli.jobs import submit_job, watch
from fnserve.cli.output import age, print_json, stamp, table
from fnserve.manifest import load_training_job
from fnserve.settings import router_url


def cmd_deploy(args: argparse.Namespace) -> None:
    client = connect(args)
    file, data = load_function_file(args.path)
    started = time.monotonic()
    location = source_location(args, file.parent)
    try:
        result = client.deploy(data, location, str(args.path), args.canary)
    except AdminError as exc:
        if exc.status != 400 or exc.reason != "NoCompleteRun" or args.canary:
            raise
        name = data["metadata"]["name"]
        if _train_first(args, client, file, name, exc.body["error"]):  # its job rolled the function out already
            result = client.function(name)
        else:
            result = client.deploy(data, location, str(args.path))
    if args.json:
        print_json(result)
        return
    if args.canary:
        print(f"{result['name']}: revision {result['revision']} ready in {time.monotonic() - started:.1f} s, taking "
              f"{args.canary}% of the requests as a canary (fnserve promote / rollback {result['name']})")
        return
    print(f"{result['name']}: revision {result['revision']} ready in {time.monotonic() - started:.1f} s "
          f"→ {router_url(args.url)}{result['url']}")


def _train_first(args: argparse.Namespace, client: AdminClient, file: Path, name: str, problem: str) -> bool:
    """A first deploy of a function whose model is ``artifacts://<name>/latest`` and that has no run yet:
    run the training job beside its manifest (publishing the first run), so deploying simply works.
    True when the job deployed the function itself (deployOnSuccess)."""
    job_file = file.parent / "train.yaml"
    if not job_file.is_file():
        raise CliError(problem)
    job = load_training_job(job_file)
    if job.spec.function != name:
        raise CliError(problem)
    print(f"{name}: no model published yet; running its job {job_file} first", file=sys.stderr, flush=True)
    record = watch(client, submit_job(args, client, job_file, job.spec.params)["id"])
    if record["state"] != "succeeded":
        raise CliError(f"{name}: job {record['id']} {record['state']} ({record['message'] or 'see its log'}); "
                       f"nothing deployed")
    return str(record["deploy"]).startswith("revision")


def cmd_ls(args: argparse.Namespace) -> None:
    result = connect(args).functions()
    if args.json:
        print_json(result)
        return
    rows = [[f["name"], f["revision"], f["runtime"], "yes" if f["ready"] else "no",
             sum(r["state"] == "ready" for r in f["replicas"]), age(f["createdAt"]), f["url"]]
            for f in result["functions"]]
    table(["NAME", "REVISION", "RUNTIME", "READY", "REPLICAS", "AGE", "URL"], rows)


def cmd_status(args: argparse.Namespace) -> None:
    result = connect(args).function(args.name)
    if args.json:
        print_json(result)
        return
    spec = result["manifest"]["spec"]
    scaling = spec.get("scaling", {})
    serving = sum(r["state"] == "ready" for r in result["replicas"])
    bounds = f"min {scaling.get('minReplicas', 0)}, max {scaling.get('maxReplicas', 'unlimited')}"
    starts = ", ".join(f"{ms:.0f} ms" for ms in result.get("startTimesMs", [])[-5:]) or "none yet"
    print(f"name:      {result['name']}\nrevision:  {result['revision']} ({age(result['createdAt'])} ago)\n"
          f"runtime:   {spec['runtime']}\nmodel:     {result['modelDir']}\n"
          f"ready:     {'yes' if result['ready'] else 'no'}" + (f"  ({result['message']})" if result["message"] else ""))
    print(f"replicas:  {serving} ready, {result.get('desired')} desired ({bounds})"
          f"{'  PANIC' if result.get('panic') else ''}\nqueued:    {result.get('queued', 0)}\n"
          f"cold starts: {starts} (replica start to ready, latest last)")
    traffic = result.get("traffic", [])
    if len(traffic) > 1:
        print("\ntraffic (requests through this router since it started):")
        table(["REVISION", "ROLE", "PERCENT", "REQUESTS", "ERRORS", "MEAN MS", "P95 MS"],
              [[t["revision"], "canary" if t["canary"] else "current", f"{t['percent']}%", t["requests"],
                t["errors"], t["meanMs"], t["p95Ms"]] for t in traffic])
    print()
    table(["REPLICA", "REVISION", "STATE", "PID", "GPUS", "IN-FLIGHT", "UPTIME", "URL"],
          [[r["id"], r["revision"], r["state"], r["pid"], ",".join(r.get("gpus", [])) or "-", r["outstanding"],
            age(r["startedAt"]), r["url"]] for r in result["replicas"]])


def cmd_invoke(args: argparse.Namespace) -> None:
    raw = args.data
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text()
        except OSError as exc:
            raise CliError(f"{raw[1:]}: cannot read ({exc.strerror})") from None
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc}") from None
    print_json(connect(args).invoke(args.name, body, v2=args.v2))


def cmd_logs(args: argparse.Namespace) -> None:
    client = connect(args)
    if not args.follow:
        print(client.function_logs(args.name, args.tail), end="")
        return
    for text in client.follow_function_logs(args.name, args.tail):  # until Ctrl-C, or the function's removal
        print(text, end="", flush=True)


def cmd_rm(args: argparse.Namespace) -> None:
    connect(args).remove(args.name)
    print(f"{args.name}: deleted")


def cmd_revisions(args: argparse.Namespace) -> None:
    result = connect(args).revisions(args.name)
    if args.json:
        print_json(result)
        return
    table(["REVISION", "SERVING", "CREATED (UTC)", "MODEL"],
          [[r["revision"], "*" if r["current"] else "", stamp(r["createdAt"]), r["modelUri"]]
           for r in result["revisions"]])


def cmd_rollback(args: argparse.Namespace) -> None:
    result = connect(args).rollback(args.name, args.to)
    if args.json:
        print_json(result)
        return
    if result.get("droppedCanary") is not None:
        print(f"{result['name']}: canary revision {result['droppedCanary']} dropped; revision {result['revision']} "
              f"takes every request")
        return
    print(f"{result['name']}: revision {result['revision']} serving again "
          f"(model {result['manifest']['spec']['model']['uri']})")


def cmd_promote(args: argparse.Namespace) -> None:
    result = connect(args).promote(args.name)
    if args.json:
        print_json(result)
        return
    print(f"{result['name']}: revision {result['revision']} promoted; it takes every request")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """deploy, ls, status, rm, invoke, logs."""
    deploy = sub.add_parser("deploy", parents=[common], help="deploy a function.yaml (or a folder holding one)")
    deploy.add_argument("path", type=Path)
    deploy.add_argument("--upload", action="store_true",
                        help="send the folder's files (automatic when the router is not on this machine)")
    deploy.add_argument("--canary", type=_percent, metavar="PERCENT",
                        help="run the new revision beside the current one with this percent (1-99) of the requests")
    deploy.set_defaults(run=cmd_deploy)

    sub.add_parser("ls", parents=[common], help="list deployed functions").set_defaults(run=cmd_ls)

    for name, helptext, run in (("status", "show one function and its replicas", cmd_status),
                                ("rm", "delete a function and stop its replicas", cmd_rm)):
        command = sub.add_parser(name, parents=[common], help=helptext)
        command.add_argument("name")
        command.set_defaults(run=run)

    invoke = sub.add_parser("invoke", parents=[common], help="send one inference request")
    invoke.add_argument("name")
    invoke.add_argument("--data", "-d", required=True, help="JSON body, or @file holding it")
    invoke.add_argument("--v2", action="store_true", help="Open Inference Protocol (V2) instead of KServe V1")
    invoke.set_defaults(run=cmd_invoke)

    logs = sub.add_parser("logs", parents=[common], help="print the end of a function's replica logs")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=100, help="lines per replica (default 100)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="go on printing what the replicas write, new replicas included, until Ctrl-C")
    logs.set_defaults(run=cmd_logs)


def register_revisions(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    """revisions, rollback (listed after the key commands in --help, as they always were)."""
    revisions = sub.add_parser("revisions", parents=[common], help="list a function's revisions")
    revisions.add_argument("name")
    revisions.set_defaults(run=cmd_revisions)
    rollback = sub.add_parser("rollback", parents=[common],
                              help="drop a function's canary, or serve an earlier revision again")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, metavar="REVISION",
                          help="default: drop the canary if there is one, else the revision before the current")
    rollback.set_defaults(run=cmd_rollback)
    promote = sub.add_parser("promote", parents=[common], help="make a function's canary take every request")
    promote.add_argument("name")
    promote.set_defaults(run=cmd_promote)


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole percent from 1 to 99 (got {text!r})") from None
    if not 1 <= value <= 99:
        raise argparse.ArgumentTypeError(f"a whole percent from 1 to 99 (got {value})")
    return value
