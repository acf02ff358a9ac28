"""The fnserve command as a new user meets it, in process against a stand-in router (and in a subprocess
where a pipe, the environment or a shell is the point): help and examples for every command, a typo's
nearest command, exit codes by kind of failure, --json for answers and errors alike, a closed pipe, bad
settings in one line, URLs without a scheme, the deploy's phases as they happen, hints, completion."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from fnserve.cli import build_parser, completion, main
from fnserve.settings import Settings, SettingsError, router_url
from tests.unit.test_manifest import VALID

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "fnserve.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def fnserve(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``fnserve ARGS`` in this process: its exit code, stdout and stderr."""
    def run(*args: str) -> Result:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


# -- a stand-in router ------------------------------------------------------------------------------

FAILURES = {"missing": (404, "function 'missing' not found"), "locked": (401, "an API key is required"),
            "forbidden": (403, "API key 0123 has no 'admin' scope"), "crashed": (500, "internal error in the router"),
            "down": (503, "the state database is unavailable"), "refused": (409, "no canary to promote")}


class StandIn(BaseHTTPRequestHandler):
    """GET /api/functions/NAME fails as FAILURES[NAME] says; POST /api/functions streams a deploy's phases
    (with keep-alive lines and a pause before the end), or fails once starting for a function named
    'broken'."""

    protocol_version = "HTTP/1.0"  # the answer ends when the connection closes

    def log_message(self, format: str, *args: Any) -> None: ...

    def answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/api/functions/sentiment/logs"):
            text = b"==> sentiment-00001-ab12 <==\nPOST /v1/models/sentiment:predict 200\n\nsecond line\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        name = self.path.rsplit("/", 1)[-1]
        status, message = FAILURES.get(name, (404, f"function {name!r} not found"))
        self.answer(status, {"error": message, "requestId": "req-1"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body["manifest"]["metadata"]["name"]
        if "application/x-ndjson" not in self.headers.get("Accept", ""):
            self.answer(400, {"error": "this stand-in streams deploys only"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        model = body["manifest"]["spec"]["model"]["uri"]
        events: list[Any] = [{"phase": "validating"}, {"phase": "pinning", "model": model}, "",
                             {"phase": "starting", "revision": 3, "model": "artifacts://sentiment/run-7"}, "", 0.3]
        events.append({"error": "sentiment: revision 3 did not start: boom", "requestId": "req-2", "status": 422}
                      if name == "broken" else
                      {"phase": "ready", "status": 200, "result": {"name": name, "revision": 3,
                                                                   "url": f"/v1/models/{name}:predict"}})
        for event in events:
            if isinstance(event, float):
                time.sleep(event)
                continue
            self.wfile.write((json.dumps(event) if event else "").encode() + b"\n")
            self.wfile.flush()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "function.yaml").write_text(yaml.safe_dump(VALID))
    return tmp_path / "fn"


# -- help, typos, completion ------------------------------------------------------------------------

def commands(parser: argparse.ArgumentParser, path: str = "fnserve") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{path} {name}", child
                yield from commands(child, f"{path} {name}")


def test_every_command_has_a_description_examples_and_json() -> None:
    found = list(commands(build_parser()))
    assert len(found) > 25
    for name, parser in found:
        text = parser.format_help()
        assert parser.description, name
        assert "\nexamples:\n  " in text and "fnserve " in text.split("\nexamples:")[1], name
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        assert not leaf or "--json" in text, name
    top = build_parser().format_help()
    assert all(f"\n  {code} " in top for code in (0, 1, 2, 3, 4, 5)) and "docs/cli.md" in top


def test_a_typo_names_the_nearest_command(fnserve: Callable[..., Result]) -> None:
    typo = fnserve("delpoy", "functions/sentiment")
    assert typo.code == 2 and typo.out == ""
    assert typo.err.splitlines()[-1] == "fnserve: error: unknown command 'delpoy'; did you mean 'deploy'?"
    nested = fnserve("jobs", "lss")
    assert nested.code == 2 and "unknown command 'lss'; did you mean 'ls'?" in nested.err
    assert "see `fnserve --help`" in fnserve("zzzzzz").err
    as_json = fnserve("delpoy", "--json")
    assert as_json.code == 2 and as_json.json == {"error": "unknown command 'delpoy'; did you mean 'deploy'?",
                                                  "exitCode": 2, "status": None}
    assert fnserve("deploy", "--canary", "150", "x", "--json").json["exitCode"] == 2


def test_bash_completion_completes_commands_options_and_choices(fnserve: Callable[..., Result], tmp_path: Path) -> None:
    script = tmp_path / "fnserve.bash"
    script.write_text(fnserve("completion", "bash").out)
    probe = ('comp() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); _fnserve; '
             'echo "${COMPREPLY[*]}"; }; comp fnserve de; comp fnserve jobs ""; comp fnserve deploy --ca; '
             'comp fnserve up --log-level ""; comp fnserve keys create --na; complete -p fnserve')
    lines = subprocess.run(["bash", "-c", f"source {script}; {probe}"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines == ["deploy", "ls status logs cancel", "--canary", "debug info warning error critical", "--name",
                     "complete -o default -F _fnserve fnserve"]


def test_zsh_and_fish_scripts_know_every_command(fnserve: Callable[..., Result]) -> None:
    zsh, fish = fnserve("completion", "zsh").out, fnserve("completion", "fish").out
    assert zsh.startswith("#compdef fnserve") and "bashcompinit" in zsh and "_fnserve()" in zsh
    top = next(completion.nodes(build_parser()))
    for name, _ in top.commands:
        assert f"-n '__fnserve_at \"\"' -a {name} -d" in fish
    assert "-n '__fnserve_at \"/up\"' -l backend -x -a 'local knative'" in fish
    assert fnserve("completion", "fish", "--json").json["shell"] == "fish"


# -- exit codes and --json errors -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "code", "status"), [("missing", 3, 404), ("locked", 4, 401), ("forbidden", 4, 403),
                                                      ("crashed", 5, 500), ("down", 5, 503), ("refused", 1, 409)])
def test_exit_codes_tell_failures_apart_with_or_without_json(fnserve: Callable[..., Result], stand_in: str,
                                                             monkeypatch: pytest.MonkeyPatch, name: str, code: int,
                                                             status: int) -> None:
    monkeypatch.setenv("FNSERVE_API_KEY", "fns_0123_x")
    plain = fnserve("status", name, "--url", stand_in)
    assert plain.code == code and plain.out == "" and len(plain.err.splitlines()) == 1
    assert plain.err.startswith(f"fnserve: {FAILURES[name][1]}")
    failed = fnserve("status", name, "--url", stand_in, "--json")
    assert failed.code == code and failed.err == ""
    assert {k: v for k, v in failed.json.items() if k != "hint"} == {
        "error": FAILURES[name][1], "exitCode": code, "status": status, "requestId": "req-1"}


def test_an_unreachable_router_is_exit_5_and_a_url_without_scheme_means_http(fnserve: Callable[..., Result]) -> None:
    from tests.conftest import free_port

    port = free_port()
    plain = fnserve("ls", "--url", f"127.0.0.1:{port}")
    assert plain.code == 5 and plain.err.startswith(f"fnserve: cannot reach the router at http://127.0.0.1:{port} (")
    failed = fnserve("ls", "--url", f"127.0.0.1:{port}", "--json")
    assert failed.code == 5 and failed.json["status"] is None and failed.json["url"] == f"http://127.0.0.1:{port}"


def test_router_urls(monkeypatch: pytest.MonkeyPatch, fnserve: Callable[..., Result]) -> None:
    monkeypatch.delenv("FNSERVE_URL", raising=False)
    assert router_url() == "http://127.0.0.1:8080"
    assert router_url("localhost:9000/") == "http://localhost:9000"
    assert router_url("https://fnserve.example.com") == "https://fnserve.example.com"
    monkeypatch.setenv("FNSERVE_URL", "router.internal:8080")
    assert router_url() == "http://router.internal:8080"
    for wrong in ("ftp://x", "http://", "localhost:http", "http://host:99999"):
        with pytest.raises(SettingsError):
            router_url(wrong)
    monkeypatch.setenv("FNSERVE_URL", "ftp://x")
    result = fnserve("ls")
    assert result.code == 1 and result.err == ("fnserve: FNSERVE_URL='ftp://x' is not a router URL; expected "
                                               "http://HOST:PORT or https://HOST:PORT (a bare HOST:PORT means http://)\n")


def test_the_401_hint_names_where_keys_are_looked_for(fnserve: Callable[..., Result], stand_in: str,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FNSERVE_API_KEY", raising=False)
    monkeypatch.setenv("FNSERVE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    hint = fnserve("status", "locked", "--url", stand_in).err
    assert "set FNSERVE_API_KEY, or FNSERVE_STATE_DIR to the state dir where `fnserve up` wrote its admin.key" in hint
    assert f"looked in {tmp_path}/state/admin.key, .fnserve/admin.key, {tmp_path}/.fnserve/admin.key" in hint
    (tmp_path / ".fnserve").mkdir()
    (tmp_path / ".fnserve" / "admin.key").write_text("fns_0123_x\n")
    assert "the key came from .fnserve/admin.key" in fnserve("status", "locked", "--url", stand_in).err


def test_a_manifest_given_to_the_wrong_command_says_which_one(fnserve: Callable[..., Result]) -> None:
    job = ROOT / "functions" / "iris" / "train.yaml"
    deploy = fnserve("deploy", str(job))
    assert deploy.code == 2 and deploy.err == f"fnserve: {job} is a TrainingJob; run it with `fnserve train {job}`\n"
    train = fnserve("train", str(ROOT / "functions" / "iris" / "function.yaml"), "--json")
    assert train.code == 2 and "deploy it with `fnserve deploy" in train.json["error"]


def test_up_says_why_it_cannot_start_in_json(fnserve: Callable[..., Result], tmp_path: Path) -> None:
    refused = fnserve("up", "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"),
                      "--state-dir", str(tmp_path / "state"), "--json")
    assert refused.code == 1 and refused.json == {"error": f"TLS certificate {tmp_path / 'none.pem'}: no such file",
                                                  "exitCode": 1, "status": None}
    assert not (tmp_path / "state").exists()


def test_offline_commands_answer_and_fail_in_json(fnserve: Callable[..., Result], tmp_path: Path) -> None:
    good = ROOT / "functions" / "sentiment"
    assert fnserve("validate", str(good), "--json").json == {"results": [
        {"file": str(good / "function.yaml"), "ok": True, "kind": "Function", "name": "sentiment"}]}
    bad = tmp_path / "function.yaml"
    bad.write_text(yaml.safe_dump({**VALID, "extra": 1}))
    failed = fnserve("validate", str(good), str(bad), "--json")
    assert failed.code == 1 and failed.json["error"] == "1 of 2 manifests are invalid"
    assert failed.json["results"][1]["problems"] == [
        {"path": "extra", "message": "unknown field (allowed: apiVersion, kind, metadata, spec)"}]
    assert fnserve("schema", "--json").json["$id"].endswith("function-v1.json")
    rendered = fnserve("render", "--defaults", str(good), "--json").json["objects"]
    assert [o["kind"] for o in rendered] == ["ConfigMap", "InferenceService"]
    missing = fnserve("render", str(tmp_path / "nothing"), "--json")
    assert missing.code == 1 and missing.json["problems"] == [{"path": "", "message": "no such file"}]


# -- deploy: its phases as they happen --------------------------------------------------------------

def test_deploy_shows_each_phase_as_the_router_reports_it(fnserve: Callable[..., Result], stand_in: str,
                                                          function_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNSERVE_API_KEY", "fns_0123_x")
    result = fnserve("deploy", str(function_dir), "--url", stand_in)
    assert result.code == 0, result.err
    phases = [re.fullmatch(r"\[ *(\d+\.\d) s\] sentiment: (.*)", line) for line in result.err.splitlines()]
    assert all(phases), result.err
    assert [m.group(2) for m in phases if m] == ["validating the manifest, folder and handler",
                                                 "pinning the model ./model",
                                                 "starting revision 3 (model artifacts://sentiment/run-7)"]
    done = re.fullmatch(r"sentiment: revision 3 ready in (\d+\.\d) s → (.*)\n", result.out)
    assert done and done.group(2) == f"{stand_in}/v1/models/sentiment:predict"
    starting = float(phases[-1].group(1))  # type: ignore[union-attr]
    assert starting < 0.3 <= float(done.group(1))  # shown when it began, not when the deploy ended

    as_json = fnserve("deploy", str(function_dir), "--url", stand_in, "--json")
    assert as_json.json == {"name": "sentiment", "revision": 3, "url": "/v1/models/sentiment:predict"}
    assert "starting revision 3" in as_json.err  # phases stay on stderr


def test_a_deploy_that_fails_while_starting_is_the_routers_error(fnserve: Callable[..., Result], stand_in: str,
                                                                 function_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNSERVE_API_KEY", "fns_0123_x")
    (function_dir / "function.yaml").write_text(yaml.safe_dump({**VALID, "metadata": {"name": "broken"}}))
    failed = fnserve("deploy", str(function_dir), "--url", stand_in)
    assert failed.code == 1 and failed.out == ""
    assert failed.err.splitlines()[-1] == "fnserve: sentiment: revision 3 did not start: boom"
    as_json = fnserve("deploy", str(function_dir), "--url", stand_in, "--json")
    assert as_json.json == {"error": "sentiment: revision 3 did not start: boom", "exitCode": 1, "status": 422,
                            "requestId": "req-2"}


# -- the environment and the pipe, as a shell sees them ---------------------------------------------

def test_a_closed_pipe_ends_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader_gone = subprocess.Popen([*CLI, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert reader_gone.stdout is not None and reader_gone.stderr is not None
    reader_gone.stdout.close()  # before the command writes anything: its first write fails with EPIPE
    assert reader_gone.wait(30) == 141 and reader_gone.stderr.read() == b""
    head = subprocess.run(["bash", "-c", f"{sys.executable} -m fnserve.cli schema | head -1"], capture_output=True,
                          text=True, env=env, check=True)
    assert head.stdout == "{\n" and head.stderr == ""


def test_a_bad_log_level_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "up", "--port", "1", "--state-dir", str(tmp_path / "state")], capture_output=True,
                          text=True, env={**os.environ, "FNSERVE_LOG_LEVEL": "loud"}, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "fnserve: FNSERVE_LOG_LEVEL='loud' is not one of debug, info, warning, error, critical\n"
    assert not (tmp_path / "state").exists()
    assert Settings.from_env({"FNSERVE_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert Settings.from_env({}, log_level="warning").log_level == "warning"


def test_the_exit_codes_are_documented() -> None:
    from fnserve.cli.base import EXIT_CODES

    table = (ROOT / "docs" / "cli.md").read_text()
    assert all(f"\n| {code} | " in table for code, _ in EXIT_CODES)
    assert "[docs/cli.md](docs/cli.md)" in (ROOT / "README.md").read_text()


def test_logs_as_json_lines_name_their_replica(fnserve: Callable[..., Result], stand_in: str) -> None:
    result = fnserve("logs", "sentiment", "--json", "--url", stand_in)
    assert result.code == 0, result.err
    assert [json.loads(line) for line in result.out.splitlines()] == [
        {"replica": "sentiment-00001-ab12", "line": "POST /v1/models/sentiment:predict 200"},
        {"replica": "sentiment-00001-ab12", "line": "second line"}]
    plain = fnserve("logs", "sentiment", "--url", stand_in)
    assert plain.out.startswith("==> sentiment-00001-ab12 <==\n")
