"""What the command modules share: the error that ends a command, the client for ``--url``, a checked
manifest, and where the router finds a function's folder.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any

from fnserve.cli.client import AdminClient, find_api_key
from fnserve.manifest import load_function, manifest_path, read_yaml
from fnserve.settings import ca_file, router_url


class CliError(Exception):
    """Ends the command with this message on stderr and exit code 1."""


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
    """The manifest file and its raw data, validated here so mistakes are caught before any upload."""
    file = manifest_path(path)
    load_function(file)
    return file, read_yaml(file)


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
