"""Function commands: deploy, ls, status, rm, invoke, logs, revisions, rollback, promote — each one admin call,
its answer printed as a table or lines (or as it came, with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fnserve.cli.base import USAGE, CliError, Commands, add_command, connect, load_function_file, source_location
from fnserve.cli.client import AdminClient, AdminError
from fnserve.cli.jobs import log_to, submit_job, watch
from fnserve.cli.output import age, print_json, stamp, table
from fnserve.manifest import load_training_job
from fnserve.settings import router_url


def cmd_deploy(args: argparse.Namespace) -> None:
    client = connect(args)
    file, data = load_function_file(args.path)
    name = data["metadata"]["name"]
    started = time.monotonic()
    location = source_location(args, file.parent)
    show = _progress(name, started)
    try:
        result = client.deploy(data, location, str(args.path), args.canary, progress=show)
    except AdminError as exc:
        if exc.status != 400 or exc.reason != "NoCompleteRun" or args.canary:
            raise
        if _train_first(args, client, file, name, exc.body["error"]):  # its job rolled the function out already
            result = client.function(name)
        else:
            result = client.deploy(data, location, str(args.path), progress=show)
    if args.json:
        print_json(result)
        return
    if args.canary:
        print(f"{result['name']}: revision {result['revision']} ready in {time.monotonic() - started:.1f} s, taking "
              f"{args.canary}% of the requests as a canary (fnserve promote / rollback {result['name']})")
        return
    print(f"{result['name']}: revision {result['revision']} ready in {time.monotonic() - started:.1f} s "
          f"→ {router_url(args.url)}{result['url']}")


_PHASES = {"validating": "validating the manifest, folder and handler", "pinning": "pinning the model {model}",
           "starting": "starting revision {revision} (model {model})"}


def _progress(name: str, started: float) -> Callable[[dict[str, Any]], None]:
    """Prints each phase of a deploy on stderr as the router reports it, with the time since ``started``."""
    def show(event: dict[str, Any]) -> None:
        phase = str(event.get("phase"))
        try:
            text = _PHASES[phase].format(**event)
        except (KeyError, IndexError):  # a phase (or a detail) this CLI does not know: its name will do
            text = phase
        print(f"[{time.monotonic() - started:5.1f} s] {name}: {text}", file=sys.stderr, flush=True)
    return show


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
    record = watch(client, submit_job(args, client, job_file, job.spec.params)["id"], log_to(args))
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
        raise CliError(f"--data is not valid JSON: {exc}", USAGE) from None
    print_json(connect(args).invoke(args.name, body, v2=args.v2))


def cmd_logs(args: argparse.Namespace) -> None:
    """The replicas' lines as they read (``==> replica <==`` before each one's); with --json one object per
    line, ``{"replica", "line"}`` (JSON lines, so a followed log can be piped to jq as it comes)."""
    client = connect(args)
    chunks = (client.follow_function_logs(args.name, args.tail) if args.follow  # until Ctrl-C or `fnserve rm`
              else iter([client.function_logs(args.name, args.tail)]))
    if not args.json:
        for text in chunks:
            print(text, end="", flush=True)
        return
    replica, partial = None, ""
    for text in chunks:
        *lines, partial = (partial + text).split("\n")
        for line in lines:
            if line.startswith("==> ") and line.endswith(" <=="):
                replica = line[4:-4]
            elif line:
                print(json.dumps({"replica": replica, "line": line}), flush=True)


def cmd_rm(args: argparse.Namespace) -> None:
    result = connect(args).remove(args.name)
    print_json(result) if args.json else print(f"{args.name}: deleted")


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


def register(sub: Commands, common: argparse.ArgumentParser) -> None:
    """deploy, ls, status, rm, invoke, logs."""
    deploy = add_command(
        sub, "deploy", "deploy a function.yaml (or a folder holding one)",
        "Deploy a function as a new revision and wait until it serves. The manifest is checked here first;\n"
        "the router then validates it, pins the model (artifacts://…/latest → a run), starts the revision\n"
        "and routes to it once it is ready; each phase is shown as it happens (on stderr). A function never\n"
        "trained runs the train.yaml beside it first. A failed deploy leaves the serving revision as it was.",
        ["fnserve deploy functions/sentiment",
         "fnserve deploy functions/sentiment --canary 10   # beside the current revision, 10% of the requests",
         "fnserve deploy fn/function.yaml --url https://fnserve.example.com --json"],
        [common])
    deploy.add_argument("path", type=Path, help="a function.yaml, or a folder holding one")
    deploy.add_argument("--upload", action="store_true",
                        help="send the folder's files (automatic when the router is not on this machine)")
    deploy.add_argument("--canary", type=_percent, metavar="PERCENT",
                        help="run the new revision beside the current one with this percent (1-99) of the requests")
    deploy.set_defaults(run=cmd_deploy)

    add_command(sub, "ls", "list deployed functions",
                "List the deployed functions: serving revision, runtime, readiness, ready replicas, age and URL.",
                ["fnserve ls", "fnserve ls --json | jq -r '.functions[].name'"], [common]).set_defaults(run=cmd_ls)

    for name, summary, description, example, run in (
            ("status", "show one function and its replicas",
             "Show a function: its revision and model, ready and desired replicas, recent cold starts, the\n"
             "canary split if there is one, and every replica (pid, in-flight requests, uptime).",
             "fnserve status sentiment", cmd_status),
            ("rm", "delete a function and stop its replicas",
             "Delete a function and its revisions: it stops serving at once and its replicas are stopped\n"
             "(fnserve audit keeps who deleted it).", "fnserve rm sentiment", cmd_rm)):
        command = add_command(sub, name, summary, description, [example, f"{example} --json"], [common])
        command.add_argument("name", help="the function's name (metadata.name)")
        command.set_defaults(run=run)

    invoke = add_command(
        sub, "invoke", "send one inference request",
        "Send one inference request to a function through the router, as KServe V1 (instances →\n"
        "predictions) or with --v2 as the Open Inference Protocol, and print the JSON answer.",
        ["fnserve invoke sentiment -d '{\"instances\": [\"what a wonderful film\"]}'",
         "fnserve invoke sentiment -d @request.json",
         "fnserve invoke sentiment --v2 -d '{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", "
         "\"shape\": [1], \"data\": [\"great\"]}]}'"],
        [common])
    invoke.add_argument("name")
    invoke.add_argument("--data", "-d", required=True, help="JSON body, or @file holding it")
    invoke.add_argument("--v2", action="store_true", help="Open Inference Protocol (V2) instead of KServe V1")
    invoke.set_defaults(run=cmd_invoke)

    logs = add_command(sub, "logs", "print the end of a function's replica logs",
                       "Print the last lines of each of a function's replica logs; with -f, go on printing what\n"
                       "the replicas write until Ctrl-C or the function's removal (on one machine new replicas too;\n"
                       "in a cluster the pods running when asked, as kubectl logs -f).\n"
                       "Probes are not logged; every request's line carries its request_id (docs/operations.md).",
                       ["fnserve logs sentiment", "fnserve logs sentiment --tail 20",
                        "fnserve logs sentiment -f --json | jq -r .line"], [common])
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=100, help="lines per replica (default 100)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="go on printing what the replicas write until Ctrl-C")
    logs.set_defaults(run=cmd_logs)


def register_revisions(sub: Commands,
                       common: argparse.ArgumentParser) -> None:
    """revisions, rollback (listed after the key commands in --help, as they always were)."""
    revisions = add_command(sub, "revisions", "list a function's revisions",
                            "List every revision of a function, oldest first: when it was made, the model run\n"
                            "it serves, and which one serves now (*).",
                            ["fnserve revisions sentiment", "fnserve revisions sentiment --json"], [common])
    revisions.add_argument("name")
    revisions.set_defaults(run=cmd_revisions)
    rollback = add_command(sub, "rollback", "drop a function's canary, or serve an earlier revision again",
                           "Drop the function's canary if it has one; else serve the revision before the current\n"
                           "one again (or --to N). The revision starts before it takes requests.",
                           ["fnserve rollback sentiment", "fnserve rollback sentiment --to 3"], [common])
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, metavar="REVISION",
                          help="default: drop the canary if there is one, else the revision before the current")
    rollback.set_defaults(run=cmd_rollback)
    promote = add_command(sub, "promote", "make a function's canary take every request",
                          "Promote a function's canary (fnserve deploy --canary N): it becomes the current\n"
                          "revision and takes every request; the revision it replaces drains.",
                          ["fnserve promote sentiment"], [common])
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
