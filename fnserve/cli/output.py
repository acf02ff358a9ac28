"""How the ``fnserve`` command shows answers: aligned tables, ages and UTC timestamps, indented JSON.

Plain text for a terminal, one function per shape, so every command prints the same way; ``--json``
prints the router's answer as it came, and a failure as one error object (error_document).
"""

from __future__ import annotations

import json
import time
from typing import Any


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False))


def error_document(message: str, exit_code: int, status: int | None = None, **fields: Any) -> dict[str, Any]:
    """What --json prints on stdout when a command fails: the one-line ``error``, the ``exitCode`` the
    command ends with, the router's HTTP ``status`` (null when no router answered), and what else is known
    (the router's ``requestId``, ``problems``, ``reason``; a ``hint``)."""
    return {"error": message, "exitCode": exit_code, "status": status, **fields}


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def age(timestamp: float) -> str:
    """Time since ``timestamp`` in its largest whole unit: 3d, 5h, 12m, 40s."""
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def stamp(timestamp: float | None) -> str:
    """A UTC minute, or '-' for none."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"
