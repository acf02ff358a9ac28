"""The ``fnserve`` command. ``up`` runs the router; every other command talks to a running router's
admin API (--url / FNSERVE_URL) or, for validate and schema, works offline.

User mistakes end in one readable line per problem and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fnserve import __version__
from fnserve.manifest import (
    KINDS,
    ManifestError,
    json_schema,
    load_function,
    load_manifest,
    load_training_job,
    manifest_path,
    read_yaml,
)
from fnserve.settings import Settings, router_url


class CliError(Exception):
    """Ends the command with this message on stderr and exit code 1."""


# -- talking to the router ---------------------------------------------------------------------
def api_key() -> str | None:
    """FNSERVE_API_KEY, else the admin key `fnserve up` wrote: $FNSERVE_STATE_DIR, ./.fnserve, ~/.fnserve."""
    if os.environ.get("FNSERVE_API_KEY"):
        return os.environ["FNSERVE_API_KEY"].strip()
    folders = [os.environ.get("FNSERVE_STATE_DIR"), ".fnserve", str(Path.home() / ".fnserve")]
    for folder in filter(None, folders):
        try:
            return (Path(folder).expanduser() / "admin.key").read_text().strip()
        except OSError:
            continue
    return None


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None,
             timeout: float = 300.0) -> tuple[int, Any]:
    url = router_url(args.url) + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    key = api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the router at {router_url(args.url)} ({reason}); "
                       f"is `fnserve up` running?") from None
    payload = json.loads(raw) if "json" in kind and raw else raw.decode("utf-8", errors="replace")
    return status, payload


def _stream(args: argparse.Namespace, path: str) -> None:
    """Copy a streamed text response (a job's log) to stdout as it arrives."""
    headers = {"Authorization": f"Bearer {key}"} if (key := api_key()) else {}
    request = urllib.request.Request(router_url(args.url) + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            while chunk := response.read1(65536):
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
    except urllib.error.HTTPError as exc:
        payload = json.loads(exc.read() or b"{}")
        raise CliError(str(payload.get("error", exc))) from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise CliError(f"lost the router at {router_url(args.url)} ({getattr(exc, 'reason', exc)})") from None


def _ok(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    return _checked(*_request(args, method, path, body))


def _checked(status: int, payload: Any) -> Any:
    """The payload of a successful answer; an error answer becomes one readable CliError."""
    if status >= 400:
        message = str(payload.get("error", payload) if isinstance(payload, dict) else payload)
        if status == 401:
            message += " (set FNSERVE_API_KEY, or run where `fnserve up` wrote .fnserve/admin.key)"
        raise CliError(message)
    return payload


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _age(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- commands ------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from fnserve.backends.base import Serving, Training
    from fnserve.router.app import StartupDeploy, create_app
    from fnserve.router.http_server import protocol_with
    from fnserve.router.services.keys import bootstrap_admin_key, load_pepper
    from fnserve.state import StateStore

    deploys = []
    for path in args.deploy:
        file, data = _load(path)
        deploys.append(StartupDeploy(data, str(file.parent.resolve()), str(path)))
    settings = Settings.from_env(host=args.host, port=args.port, state_dir=args.state_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
                       + (" (is another fnserve up running?)" if exc.errno == 98 else "")) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = StateStore(settings.state_dir / "fnserve.db")
    admin = bootstrap_admin_key(state, load_pepper(settings.state_dir), settings.state_dir)
    if admin:
        print(f"fnserve: created the admin API key (shown once; also in {settings.state_dir / 'admin.key'}, "
              f"mode 0600):\n  {admin}", flush=True)
    serving: Serving
    training: Training
    if args.backend == "knative":
        from fnserve.backends import knative

        serving, training = knative.create(settings, state)
    else:
        from fnserve.backends import local

        serving, training = local.create(settings, state)
    app = create_app(settings, serving, training, state=state, deploys=deploys)
    config = uvicorn.Config(app, loop="uvloop", http=protocol_with(settings.header_timeout), lifespan="on",
                            access_log=False, log_level=settings.log_level, timeout_graceful_shutdown=10,
                            timeout_keep_alive=settings.keepalive_timeout)
    port = sock.getsockname()[1]
    print(f"fnserve {__version__} listening on http://{settings.host}:{port} (state: {settings.state_dir})",
          flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def _load(path: Path) -> tuple[Path, Any]:
    """The manifest file and its raw data, validated here so mistakes are caught before any upload."""
    file = manifest_path(path)
    load_function(file)
    return file, read_yaml(file)


def _source(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Where the router finds the function's folder: its path when the router runs on this machine,
    else (or with --upload) the folder's files themselves."""
    from urllib.parse import urlparse

    local = urlparse(router_url(args.url)).hostname in ("127.0.0.1", "localhost", "::1")
    if local and not args.upload:
        return {"sourceDir": str(folder.resolve())}
    import base64

    skip = {"__pycache__", ".git", ".ipynb_checkpoints"}
    files = {p.relative_to(folder).as_posix(): base64.b64encode(p.read_bytes()).decode()
             for p in sorted(folder.rglob("*")) if p.is_file() and not skip & set(p.relative_to(folder).parts)}
    return {"files": files}


def cmd_deploy(args: argparse.Namespace) -> None:
    file, data = _load(args.path)
    started = time.monotonic()
    body = {"manifest": data, "source": str(args.path), **_source(args, file.parent)}
    status, result = _request(args, "POST", "/api/functions", body)
    if status == 400 and isinstance(result, dict) and result.get("reason") == "NoCompleteRun":
        name = data["metadata"]["name"]
        if _train_first(args, file, name, result["error"]):  # its job rolled the function out already
            result = _ok(args, "GET", f"/api/functions/{name}")
        else:
            result = _ok(args, "POST", "/api/functions", body)
    else:
        result = _checked(status, result)
    if args.json:
        _print_json(result)
        return
    print(f"{result['name']}: revision {result['revision']} ready in {time.monotonic() - started:.1f} s "
          f"→ {router_url(args.url)}{result['url']}")


def _train_first(args: argparse.Namespace, file: Path, name: str, problem: str) -> bool:
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
    record = _watch(args, _submit_job(args, job_file, job.spec.params)["id"])
    if record["state"] != "succeeded":
        raise CliError(f"{name}: job {record['id']} {record['state']} ({record['message'] or 'see its log'}); "
                       f"nothing deployed")
    return str(record["deploy"]).startswith("revision")


def cmd_ls(args: argparse.Namespace) -> None:
    result = _ok(args, "GET", "/api/functions")
    if args.json:
        _print_json(result)
        return
    rows = [[f["name"], f["revision"], f["runtime"], "yes" if f["ready"] else "no",
             sum(r["state"] == "ready" for r in f["replicas"]), _age(f["createdAt"]), f["url"]]
            for f in result["functions"]]
    _table(["NAME", "REVISION", "RUNTIME", "READY", "REPLICAS", "AGE", "URL"], rows)


def cmd_status(args: argparse.Namespace) -> None:
    result = _ok(args, "GET", f"/api/functions/{args.name}")
    if args.json:
        _print_json(result)
        return
    spec = result["manifest"]["spec"]
    scaling = spec.get("scaling", {})
    serving = sum(r["state"] == "ready" for r in result["replicas"])
    bounds = f"min {scaling.get('minReplicas', 0)}, max {scaling.get('maxReplicas', 'unlimited')}"
    starts = ", ".join(f"{ms:.0f} ms" for ms in result.get("startTimesMs", [])[-5:]) or "none yet"
    print(f"name:      {result['name']}\nrevision:  {result['revision']} ({_age(result['createdAt'])} ago)\n"
          f"runtime:   {spec['runtime']}\nmodel:     {result['modelDir']}\n"
          f"ready:     {'yes' if result['ready'] else 'no'}" + (f"  ({result['message']})" if result["message"] else ""))
    print(f"replicas:  {serving} ready, {result.get('desired')} desired ({bounds})"
          f"{'  PANIC' if result.get('panic') else ''}\nqueued:    {result.get('queued', 0)}\n"
          f"cold starts: {starts} (replica start to ready, latest last)")
    print()
    _table(["REPLICA", "REVISION", "STATE", "PID", "GPUS", "IN-FLIGHT", "UPTIME", "URL"],
           [[r["id"], r["revision"], r["state"], r["pid"], ",".join(r.get("gpus", [])) or "-", r["outstanding"],
             _age(r["startedAt"]), r["url"]] for r in result["replicas"]])


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
    path = f"/v2/models/{args.name}/infer" if args.v2 else f"/v1/models/{args.name}:predict"
    _print_json(_ok(args, "POST", path, body))


def cmd_logs(args: argparse.Namespace) -> None:
    print(_ok(args, "GET", f"/api/functions/{args.name}/logs?tail={args.tail}"), end="")


def cmd_rm(args: argparse.Namespace) -> None:
    _ok(args, "DELETE", f"/api/functions/{args.name}")
    print(f"{args.name}: deleted")


def cmd_keys_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "tenant": args.tenant, "scopes": args.scope or ["invoke:*"],
                            "limits": _limit_flags(args)}
    if args.expires:
        body["expiresIn"] = args.expires
    result = _ok(args, "POST", "/api/keys", body)
    if args.json:
        _print_json(result)
        return
    key = result["key"]
    print(f"created key {key['id']} ({key['name']}, tenant {key['tenant']}, scopes {', '.join(key['scopes'])}); "
          f"its secret is shown this once:\n{result['token']}")


def _limit_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ("rps", "burst", "concurrency", "daily")
            if getattr(args, name) is not None}


def _describe(limits: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in limits.items()) or "-"


def cmd_tenants_set(args: argparse.Namespace) -> None:
    result = _ok(args, "PUT", f"/api/tenants/{args.tenant}", _limit_flags(args))
    print(f"tenant {result['tenant']}: {_describe(result['limits'])}")


def cmd_tenants_ls(args: argparse.Namespace) -> None:
    result = _ok(args, "GET", "/api/tenants")
    if args.json:
        _print_json(result)
        return
    _table(["TENANT", "DEFAULT LIMITS"], [[t, _describe(limits)] for t, limits in result["tenants"].items()])


def cmd_usage(args: argparse.Namespace) -> None:
    query = "&".join(f"{k}={v}" for k, v in (("key", args.key), ("function", args.function), ("since", args.since))
                     if v)
    result = _ok(args, "GET", "/api/usage" + (f"?{query}" if query else ""))
    if args.json:
        _print_json(result)
        return
    _table(["DAY", "KEY", "FUNCTION", "REQUESTS", "4XX", "5XX", "MEAN MS", "P95 MS", "PREDICTOR MS"],
           [[u["day"], u["keyId"], u["function"], u["requests"], u["clientErrors"], u["serverErrors"], u["meanMs"],
             u["p95Ms"], u["predictorMs"]] for u in result["usage"]])


def _stamp(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"


def cmd_keys_ls(args: argparse.Namespace) -> None:
    result = _ok(args, "GET", "/api/keys")
    if args.json:
        _print_json(result)
        return
    now = time.time()
    rows = []
    for k in result["keys"]:
        state = ("revoked" if k["revokedAt"] else "expired" if k["expiresAt"] and k["expiresAt"] <= now
                 else "active")
        rows.append([k["id"], k["name"], k["tenant"], ",".join(k["scopes"]), state, _stamp(k["createdAt"]),
                     _stamp(k["expiresAt"]), _describe(k.get("limits") or {})])
    _table(["ID", "NAME", "TENANT", "SCOPES", "STATE", "CREATED (UTC)", "EXPIRES (UTC)", "LIMITS"], rows)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    _ok(args, "DELETE", f"/api/keys/{args.key_id}")
    print(f"revoked key {args.key_id}")


def cmd_keys_rotate(args: argparse.Namespace) -> None:
    result = _ok(args, "POST", f"/api/keys/{args.key_id}/rotate", {"grace": args.grace})
    if args.json:
        _print_json(result)
        return
    print(f"new secret for key {args.key_id} (the old one works for {args.grace} more); shown this once:\n"
          f"{result['token']}")


def cmd_validate(args: argparse.Namespace) -> None:
    failed = False
    for path in args.paths:
        try:
            manifest = load_manifest(path)
            print(f"{manifest_path(path)}: ok ({manifest.kind} {manifest.name})")
        except ManifestError as exc:
            failed = True
            print("\n".join(exc.lines()), file=sys.stderr)
    if failed:
        raise SystemExit(1)


def cmd_schema(args: argparse.Namespace) -> None:
    _print_json(json_schema(args.kind))


def cmd_render(args: argparse.Namespace) -> None:
    import yaml

    from fnserve.backends.knative.folders import render_path
    from fnserve.backends.knative.render import ClusterConfig, RenderError, config_from_settings

    config = ClusterConfig() if args.defaults else config_from_settings(Settings.from_env())
    if args.namespace:
        from dataclasses import replace

        config = replace(config, namespace=args.namespace)
    for path in args.paths:
        try:
            objects, notes = render_path(path, config, jobsink=not args.plain_job)
        except RenderError as exc:
            raise CliError(f"{path}: {exc}") from None
        for note in notes:
            print(f"fnserve: note: {note}", file=sys.stderr)
        if args.output is None:
            print(yaml.safe_dump_all(objects, sort_keys=False), end="---\n" if path != args.paths[-1] else "")
            continue
        args.output.mkdir(parents=True, exist_ok=True)
        for body in objects:
            target = args.output / _object_file(body)
            target.write_text(yaml.safe_dump(body, sort_keys=False))
            print(target)


def _object_file(body: dict[str, Any]) -> str:
    """<name>.<kind>.yaml; a code ConfigMap's name ends in a content digest, which the file name omits so
    that a changed function overwrites its file instead of adding one."""
    name, kind = body["metadata"]["name"], body["kind"].lower()
    return f"{name.rsplit('-', 1)[0] if kind == 'configmap' else name}.{kind}.yaml"


# -- training ------------------------------------------------------------------------------------
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
    record = _submit_job(args, file, params)
    if not args.follow:
        if args.json:
            _print_json(record)
        else:
            print(record["id"])
        return
    print(f"job {record['id']} ({record['name']} for {record['function']}) {record['state']}", file=sys.stderr)
    _follow(args, record["id"])


def _submit_job(args: argparse.Namespace, file: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Queue the TrainingJob in ``file`` on the router, with its folder as the job's code."""
    return _ok(args, "POST", "/api/jobs", {"manifest": read_yaml(file), "source": str(file), "params": params,
                                           **_source(args, file.parent)})


def _follow(args: argparse.Namespace, job_id: str) -> None:
    record = _watch(args, job_id)
    if args.json:
        _print_json(record)
    else:
        _print_job(record)
    if record["state"] != "succeeded" or record["deploy"].startswith("not deployed"):
        raise SystemExit(1)


def _watch(args: argparse.Namespace, job_id: str) -> dict[str, Any]:
    """Print the job's log as it runs; return its record once it (and any rollout it triggers) settled."""
    _stream(args, f"/api/jobs/{job_id}/logs?follow=1")
    record = _ok(args, "GET", f"/api/jobs/{job_id}")
    while not _settled(record):  # the log ends with the job; a deployOnSuccess rollout may still be on its way
        time.sleep(0.5)
        record = _ok(args, "GET", f"/api/jobs/{job_id}")
    return record


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
    result = _ok(args, "GET", f"/api/jobs?limit={args.limit}")
    if args.json:
        _print_json(result)
        return
    _table(["JOB", "NAME", "FUNCTION", "STATE", "AGE", "ARTIFACT", "DEPLOY"],
           [[j["id"], j["name"], j["function"], j["state"], _age(j["createdAt"]), j["artifactUri"] or "-",
             j["deploy"] or "-"] for j in result["jobs"]])


def cmd_jobs_status(args: argparse.Namespace) -> None:
    record = _ok(args, "GET", f"/api/jobs/{args.job_id}")
    _print_json(record) if args.json else _print_job(record)


def cmd_jobs_logs(args: argparse.Namespace) -> None:
    _stream(args, f"/api/jobs/{args.job_id}/logs" + ("?follow=1" if args.follow else ""))


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    record = _ok(args, "POST", f"/api/jobs/{args.job_id}/cancel")
    print(f"job {record['id']}: {record['state']} ({record['message']})")


def cmd_revisions(args: argparse.Namespace) -> None:
    result = _ok(args, "GET", f"/api/functions/{args.name}/revisions")
    if args.json:
        _print_json(result)
        return
    _table(["REVISION", "SERVING", "CREATED (UTC)", "MODEL"],
           [[r["revision"], "*" if r["current"] else "", _stamp(r["createdAt"]), r["modelUri"]]
            for r in result["revisions"]])


def cmd_rollback(args: argparse.Namespace) -> None:
    result = _ok(args, "POST", f"/api/functions/{args.name}/rollback", {"to": args.to} if args.to else {})
    if args.json:
        _print_json(result)
        return
    print(f"{result['name']}: revision {result['revision']} serving again "
          f"(model {result['manifest']['spec']['model']['uri']})")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rps", type=float, help="requests per second (GCRA rate)")
    parser.add_argument("--burst", type=int, help="requests allowed at once (default: ceil(rps))")
    parser.add_argument("--concurrency", type=int, help="requests in flight")
    parser.add_argument("--daily", type=int, help="requests per UTC day")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnserve", description="Serverless model inference, on Knative or one machine.")
    parser.add_argument("--version", action="version", version=f"fnserve {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="router URL (default: $FNSERVE_URL or http://127.0.0.1:8080)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the router and the embedded backend in the foreground")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8080)")
    up.add_argument("--state-dir", type=Path, help="state folder (default ~/.fnserve)")
    up.add_argument("--backend", choices=["local", "knative"], default="local",
                    help="local: replicas and jobs as processes here (default); knative: KServe InferenceServices "
                         "and Jobs in the cluster this runs in (or FNSERVE_CLUSTER_API_URL / ~/.kube/config)")
    up.add_argument("--deploy", type=Path, action="append", default=[], metavar="PATH",
                    help="deploy this function once the router is up (repeatable)")
    up.set_defaults(run=cmd_up)

    deploy = sub.add_parser("deploy", parents=[common], help="deploy a function.yaml (or a folder holding one)")
    deploy.add_argument("path", type=Path)
    deploy.add_argument("--upload", action="store_true",
                        help="send the folder's files (automatic when the router is not on this machine)")
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
    logs.set_defaults(run=cmd_logs)

    keys = sub.add_parser("keys", help="API keys: create, ls, revoke, rotate")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", parents=[common], help="create a key (prints its secret once)")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", default="default")
    create.add_argument("--scope", action="append", metavar="SCOPE",
                        help="admin, invoke:* or invoke:FUNCTION (repeatable; default invoke:*)")
    create.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30d or 12h (default: none)")
    _add_limit_flags(create)
    create.set_defaults(run=cmd_keys_create)
    keys_sub.add_parser("ls", parents=[common], help="list keys").set_defaults(run=cmd_keys_ls)
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key now")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=cmd_keys_revoke)
    rotate = keys_sub.add_parser("rotate", parents=[common], help="new secret; the old one works for --grace")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", default="1h", help="how long the old secret keeps working (default 1h)")
    rotate.set_defaults(run=cmd_keys_rotate)

    tenants = sub.add_parser("tenants", help="default limits per tenant")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    tenant_set = tenants_sub.add_parser("set", parents=[common], help="set a tenant's default limits")
    tenant_set.add_argument("tenant")
    _add_limit_flags(tenant_set)
    tenant_set.set_defaults(run=cmd_tenants_set)
    tenants_sub.add_parser("ls", parents=[common], help="list tenants' limits").set_defaults(run=cmd_tenants_ls)

    usage = sub.add_parser("usage", parents=[common], help="the usage ledger per key, function and day")
    usage.add_argument("--key", help="one key id")
    usage.add_argument("--function", help="one function")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="from this UTC day on")
    usage.set_defaults(run=cmd_usage)

    revisions = sub.add_parser("revisions", parents=[common], help="list a function's revisions")
    revisions.add_argument("name")
    revisions.set_defaults(run=cmd_revisions)
    rollback = sub.add_parser("rollback", parents=[common], help="serve an earlier revision again")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, metavar="REVISION", help="default: the one before the current")
    rollback.set_defaults(run=cmd_rollback)

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

    render = sub.add_parser("render", help="print (or write) the Kubernetes objects a manifest becomes in a cluster")
    render.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="a function folder, function.yaml or train.yaml")
    render.add_argument("-o", "--output", type=Path, metavar="DIR", help="write one file per object into DIR")
    render.add_argument("--namespace", help="default: $FNSERVE_CLUSTER_NAMESPACE or fnserve")
    render.add_argument("--plain-job", action="store_true", help="a TrainingJob as one batch/v1 Job, not a JobSink")
    render.add_argument("--defaults", action="store_true",
                        help="ignore FNSERVE_* cluster settings (how manifests/examples is rendered)")
    render.set_defaults(run=cmd_render)

    validate = sub.add_parser("validate", help="check manifests (Function or TrainingJob) without using them")
    validate.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    validate.set_defaults(run=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of a manifest kind")
    schema.add_argument("--kind", choices=list(KINDS), default="Function")
    schema.set_defaults(run=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ManifestError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        raise SystemExit(1) from None
    except CliError as exc:
        print(f"fnserve: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
