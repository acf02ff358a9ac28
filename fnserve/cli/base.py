"""What the command modules share: the exit codes, the error that ends a command, how a command is
registered (its help, description and examples), the client for ``--url``, a checked manifest, and where
the router finds a function's folder.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from fnserve.cli.client import AdminClient, find_api_key
from fnserve.manifest import manifest_path, parse_function, read_yaml
from fnserve.settings import ca_file, router_url

# exit codes, as `fnserve --help` and docs/cli.md list them
OK, ERROR, USAGE, NOT_FOUND, AUTH, UNAVAILABLE = 0, 1, 2, 3, 4, 5
INTERRUPTED, CLOSED_PIPE = 130, 141
EXIT_CODES = ((OK, "success"),
              (ERROR, "failed: the router refused (400, 409, 422, 429), an invalid manifest or setting, a failed job"),
              (USAGE, "usage: an unknown command or option, a missing argument, a manifest given to the wrong command"),
              (NOT_FOUND, "not found (404): no such function, revision, job or key"),
              (AUTH, "authentication (401, 403): no API key, a refused one, or one without the scope"),
              (UNAVAILABLE, "server (5xx) or unreachable: refused, timed out, certificate not verified"),
              (INTERRUPTED, "interrupted (Ctrl-C)"),
              (CLOSED_PIPE, "the reader of stdout went away (`fnserve schema | head`), as SIGPIPE ends other tools"))


Commands: TypeAlias = "argparse._SubParsersAction[Any]"
"""What add_subparsers() returns, of fnserve's parser class (cli/__init__.py) or argparse's."""


class CliError(Exception):
    """Ends the command with this message (on stderr, or as JSON under --json) and exit code ``code``;
    ``fields`` go into the JSON error object."""

    def __init__(self, message: str, code: int = ERROR, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.fields = fields


def add_command(sub: Commands, name: str, summary: str, description: str, examples: Sequence[str],
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the list of commands, ``description`` and ``examples`` (shell lines, a
    trailing ``# comment`` allowed) in its own --help."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=list(parents), help=summary,
                                                     description=description, epilog=epilog,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def connect(args: argparse.Namespace) -> AdminClient:
    """The router of ``--url`` (else FNSERVE_URL, else the default), with the key find_api_key() finds,
    trusting FNSERVE_CA_FILE's certificates when it is set."""
    trusted = ca_file()
    try:
        return AdminClient(router_url(args.url), find_api_key(), ca_file=trusted)
    except ssl.SSLError:
        raise CliError(f"FNSERVE_CA_FILE={trusted}: no PEM certificate in it") from None
    except OSError as exc:
        raise CliError(f"FNSERVE_CA_FILE={trusted}: cannot read it ({exc.strerror})") from None


def load_function_file(path: Path) -> tuple[Path, Any]:
    """The manifest file and its raw data, validated here so mistakes are caught before any upload; a
    TrainingJob given where a Function belongs says which command runs it."""
    file = manifest_path(path)
    data = read_yaml(file)
    refuse_kind(data, file, "TrainingJob", f"run it with `fnserve train {path}`")
    parse_function(data, str(file))
    return file, data


def refuse_kind(data: Any, file: Path, kind: str, advice: str) -> None:
    """A usage error when the manifest ``data`` read from ``file`` is of ``kind``, one the command does not take."""
    if isinstance(data, dict) and data.get("kind") == kind:
        raise CliError(f"{file} is a {kind}; {advice}", USAGE)


def source_location(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
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
