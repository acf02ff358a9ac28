"""The ``fnserve`` command. ``up`` runs the router (fnserve.server); every other command talks to a
running router's admin API (--url / FNSERVE_URL) through AdminClient, or, for validate, schema, render
and completion, works offline.

One module per resource registers its subcommands and formats its answers: functions.py, jobs.py,
keys.py (keys, tenants, usage), audit.py, manifests.py (offline), up.py, completion.py. client.py is the
HTTP client the benchmarks and tests use too; output.py the table, age and JSON helpers.

User mistakes end in one readable line per problem and an exit code that says what kind of failure it
was (base.EXIT_CODES), never a traceback; with ``--json`` the failure is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import difflib
import os
import ssl
import sys
from typing import Any, NoReturn

from fnserve import __version__
from fnserve.cli import audit, completion, functions, jobs, keys, manifests, up
from fnserve.cli.base import AUTH, CLOSED_PIPE, ERROR, EXIT_CODES, INTERRUPTED, NOT_FOUND, UNAVAILABLE, USAGE, CliError
from fnserve.cli.client import AdminError, RouterUnreachable, api_key_source
from fnserve.cli.output import error_document, print_json
from fnserve.manifest import ManifestError
from fnserve.settings import SettingsError


class UsageError(Exception):
    """argparse refused the command line; ``parser`` is the (sub)command whose usage applies."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """argparse, with an unknown command answered by the nearest one, and usage errors raised (UsageError)
    instead of printed, so that main() can say them as JSON under --json."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and action.choices and value not in action.choices:
            close = difflib.get_close_matches(str(value), list(action.choices), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see `{self.prog} --help`"
            raise argparse.ArgumentError(None, f"unknown command {value!r}; {hint}")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)
    parser = Parser(prog="fnserve", description="Serverless model inference, on Knative or one machine.",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="Run `fnserve COMMAND --help` for a command's options and examples, and see\n"
                           "`fnserve completion --help` for shell completion. With --json a command prints one JSON\n"
                           "document on stdout: its answer, or on failure {\"error\": \"...\", \"exitCode\": N,\n"
                           "\"status\": HTTP status or null, ...}.\n\nexit codes:\n"
                           + codes + "\n\nMore in docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"fnserve {__version__}")
    offline = argparse.ArgumentParser(add_help=False)
    offline.add_argument("--json", action="store_true", help="machine-readable output (errors too)")
    common = argparse.ArgumentParser(add_help=False, parents=[offline])
    common.add_argument("--url", help="router URL (default: $FNSERVE_URL or http://127.0.0.1:8080; "
                                      "HOST:PORT means http://)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `fnserve --help` has always listed them
    up.register(sub, offline)
    functions.register(sub, common)
    keys.register(sub, common)
    functions.register_revisions(sub, common)
    jobs.register(sub, common)
    audit.register(sub, common)
    manifests.register(sub, offline)
    completion.register(sub, offline)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command; exits with its status (base.EXIT_CODES) unless it succeeded."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options = argv[:argv.index("--")] if "--" in argv else argv
    try:
        code = _run(argv, "--json" in options)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`fnserve schema | head`): nothing more to say, and nothing to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = CLOSED_PIPE
    if code:
        raise SystemExit(code)


def _run(argv: list[str], as_json: bool) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.run(args)
        return 0
    except UsageError as exc:
        if as_json:
            print_json(error_document(str(exc), USAGE))
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        if as_json:
            print_json(error_document("interrupted", INTERRUPTED))
        return INTERRUPTED
    except (ManifestError, CliError, AdminError, RouterUnreachable, SettingsError) as exc:
        lines, document = describe(exc)
        if as_json:
            print_json(document)
        else:
            print("\n".join(lines), file=sys.stderr)
        return int(document["exitCode"])


def describe(exc: BaseException) -> tuple[list[str], dict[str, Any]]:
    """A failure as the lines a person reads on stderr and the JSON error object --json prints."""
    if isinstance(exc, ManifestError):
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return exc.lines(), error_document(exc.lines()[0] + more, ERROR, file=exc.source,
                                           problems=[{"path": p.path, "message": p.message} for p in exc.problems])
    if isinstance(exc, SettingsError):
        return [f"fnserve: {exc.message}"], error_document(exc.message, ERROR)
    if isinstance(exc, AdminError):
        code = {404: NOT_FOUND, 401: AUTH, 403: AUTH}.get(exc.status, UNAVAILABLE if exc.status >= 500 else ERROR)
        hint = _hint(exc)
        fields = {k: v for k, v in exc.body.items() if k != "error"} if isinstance(exc.body, dict) else {}
        return ([f"fnserve: {exc.message}" + (f" ({hint})" if hint else "")],
                error_document(exc.message, code, exc.status, **fields, **({"hint": hint} if hint else {})))
    if isinstance(exc, RouterUnreachable):
        message = _unreachable(exc)
        return [f"fnserve: {message}"], error_document(message, UNAVAILABLE, url=exc.url)
    assert isinstance(exc, CliError)
    return [f"fnserve: {exc}"], error_document(str(exc), exc.code, **exc.fields)


def _hint(exc: AdminError) -> str:
    """What to do about a refused key: where the CLI looks for one, or which one it sent."""
    if exc.status != 401:
        return ""
    key, source = api_key_source()
    if key is None:
        return (f"set FNSERVE_API_KEY, or FNSERVE_STATE_DIR to the state dir where `fnserve up` wrote its "
                f"admin.key; looked in {source}")
    return f"the key came from {source}; set FNSERVE_API_KEY or FNSERVE_STATE_DIR to use another"


def _unreachable(exc: RouterUnreachable) -> str:
    if isinstance(exc.reason, ssl.SSLCertVerificationError):
        return (f"cannot verify the certificate of {exc.url} ({exc.reason.verify_message}); "
                "set FNSERVE_CA_FILE to the PEM file of the CA that signed it")
    return f"cannot reach the router at {exc.url} ({exc.reason}); is `fnserve up` running?"


__all__ = ["build_parser", "describe", "main"]
