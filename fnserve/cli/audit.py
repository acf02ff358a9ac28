"""``fnserve audit``: who did what to the platform, from the router's append-only audit log."""

from __future__ import annotations

import argparse
import re
import time

from fnserve.cli.base import USAGE, CliError, Commands, add_command, connect
from fnserve.cli.output import print_json, table

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_value(text: str) -> str:
    """``--since`` as the API takes it: a duration back from now (``90s``, ``10m``, ``2h``, ``7d``) becomes
    unix seconds; a date, a time or unix seconds go as given (the router checks them)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return f"{time.time() - float(match.group(1)) * _UNITS[match.group(2)]:.3f}"
    if not text.strip():
        raise CliError("--since needs a value: 10m, 2h, 7d, 2026-12-06 or 2026-12-06T10:00:00Z", USAGE)
    return text.strip()


def cmd_audit(args: argparse.Namespace) -> None:
    result = connect(args).audit(since_value(args.since) if args.since else None, args.actor, args.action,
                                 args.limit)
    if args.json:
        print_json(result)
        return
    table(["TIME (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME", "CLIENT", "REQUEST"],
          [[time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at"])), e["actor"], e["action"], e["target"], e["outcome"] if e["outcome"] == "ok"
            else f"{e['status']}: {e['outcome'][:80]}", e["client"] or "-", e["requestId"] or "-"]
           for e in result["entries"]])


def register(sub: Commands, common: argparse.ArgumentParser) -> None:
    audit = add_command(sub, "audit", "the admin actions on record (who did what, when)",
                        "The router's append-only audit log: every admin action (deploy, rollback, key and tenant\n"
                        "changes, …), by whom (key id), from where, and whether it succeeded; newest last.",
                        ["fnserve audit --since 1h", "fnserve audit --action function. --json",
                         "fnserve audit --actor 0123456789ab --since 2026-01-01"], [common])
    audit.add_argument("--since", help="from then on: 10m, 2h, 7d, a date or time (UTC), or unix seconds")
    audit.add_argument("--actor", metavar="KEY_ID", help="one key's actions (system: the platform's own)")
    audit.add_argument("--action", help="one action (key.revoke) or a family (key.)")
    audit.add_argument("--limit", type=int, help="the newest N entries (default 1000)")
    audit.set_defaults(run=cmd_audit)
