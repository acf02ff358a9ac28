"""The ``fnserve`` command. ``up`` runs the router (fnserve.server); every other command talks to a
running router's admin API (--url / FNSERVE_URL) through AdminClient, or, for validate, schema and
render, works offline.

One module per resource registers its subcommands and formats its answers: functions.py, jobs.py,
keys.py (keys, tenants, usage), audit.py, manifests.py (offline), up.py. client.py is the HTTP client the
benchmarks and tests use too; output.py the table, age and JSON helpers.

User mistakes end in one readable line per problem and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import ssl
import sys

from fnserve import __version__
from fnserve.cli import audit, functions, jobs, keys, manifests, up
from fnserve.cli.base import CliError
from fnserve.cli.client import AdminError, RouterUnreachable
from fnserve.manifest import ManifestError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnserve", description="Serverless model inference, on Knative or one machine.")
    parser.add_argument("--version", action="version", version=f"fnserve {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="router URL (default: $FNSERVE_URL or http://127.0.0.1:8080)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `fnserve --help` has always listed them
    up.register(sub)
    functions.register(sub, common)
    keys.register(sub, common)
    functions.register_revisions(sub, common)
    jobs.register(sub, common)
    audit.register(sub, common)
    manifests.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ManifestError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        raise SystemExit(1) from None
    except (CliError, AdminError, RouterUnreachable) as exc:
        print(f"fnserve: {_message(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _message(exc: Exception) -> str:
    """One readable line: the router's own error (with a hint where a key is missing), or why it was not
    reached."""
    if isinstance(exc, AdminError):
        hint = " (set FNSERVE_API_KEY, or run where `fnserve up` wrote .fnserve/admin.key)"
        return exc.message + (hint if exc.status == 401 else "")
    if isinstance(exc, RouterUnreachable) and isinstance(exc.reason, ssl.SSLCertVerificationError):
        return (f"cannot verify the certificate of {exc.url} ({exc.reason.verify_message}); "
                "set FNSERVE_CA_FILE to the PEM file of the CA that signed it")
    if isinstance(exc, RouterUnreachable):
        return f"cannot reach the router at {exc.url} ({exc.reason}); is `fnserve up` running?"
    return str(exc)


__all__ = ["build_parser", "main"]
