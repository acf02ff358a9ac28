"""Access commands: ``keys`` create / ls / revoke / rotate, ``tenants`` set / ls, and ``usage`` — who
may call what, how often, and what they did.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from fnserve.cli.base import Commands, add_command, connect
from fnserve.cli.output import print_json, stamp, table

LIMITS = ("rps", "burst", "concurrency", "daily", "tpm", "tpd")


def _limit_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in LIMITS if getattr(args, name) is not None}


def _describe(limits: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in limits.items()) or "-"


def cmd_keys_create(args: argparse.Namespace) -> None:
    result = connect(args).create_key(args.name, tenant=args.tenant, scopes=args.scope, limits=_limit_flags(args),
                                      expires_in=args.expires)
    if args.json:
        print_json(result)
        return
    key = result["key"]
    print(f"created key {key['id']} ({key['name']}, tenant {key['tenant']}, scopes {', '.join(key['scopes'])}); "
          f"its secret is shown this once:\n{result['token']}")


def cmd_keys_ls(args: argparse.Namespace) -> None:
    result = connect(args).keys()
    if args.json:
        print_json(result)
        return
    now = time.time()
    rows = []
    for k in result["keys"]:
        state = ("revoked" if k["revokedAt"] else "expired" if k["expiresAt"] and k["expiresAt"] <= now
                 else "active")
        rows.append([k["id"], k["name"], k["tenant"], ",".join(k["scopes"]), state, stamp(k["createdAt"]),
                     stamp(k["expiresAt"]), _describe(k.get("limits") or {})])
    table(["ID", "NAME", "TENANT", "SCOPES", "STATE", "CREATED (UTC)", "EXPIRES (UTC)", "LIMITS"], rows)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    result = connect(args).revoke_key(args.key_id)
    print_json(result) if args.json else print(f"revoked key {args.key_id}")


def cmd_keys_rotate(args: argparse.Namespace) -> None:
    result = connect(args).rotate_key(args.key_id, args.grace)
    if args.json:
        print_json(result)
        return
    print(f"new secret for key {args.key_id} (the old one works for {args.grace} more); shown this once:\n"
          f"{result['token']}")


def cmd_tenants_set(args: argparse.Namespace) -> None:
    result = connect(args).set_tenant(args.tenant, _limit_flags(args))
    print_json(result) if args.json else print(f"tenant {result['tenant']}: {_describe(result['limits'])}")


def cmd_tenants_ls(args: argparse.Namespace) -> None:
    result = connect(args).tenants()
    if args.json:
        print_json(result)
        return
    table(["TENANT", "DEFAULT LIMITS"], [[t, _describe(limits)] for t, limits in result["tenants"].items()])


def cmd_usage(args: argparse.Namespace) -> None:
    result = connect(args).usage(key=args.key, function=args.function, since=args.since)
    if args.json:
        print_json(result)
        return
    table(["DAY", "KEY", "FUNCTION", "REQUESTS", "4XX", "5XX", "MEAN MS", "P95 MS", "PREDICTOR MS", "PROMPT TOK",
           "COMPLETION TOK"],
          [[u["day"], u["keyId"], u["function"], u["requests"], u["clientErrors"], u["serverErrors"], u["meanMs"],
            u["p95Ms"], u["predictorMs"], u["promptTokens"], u["completionTokens"]] for u in result["usage"]])


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rps", type=float, help="requests per second (GCRA rate)")
    parser.add_argument("--burst", type=int, help="requests allowed at once (default: ceil(rps))")
    parser.add_argument("--concurrency", type=int, help="requests in flight")
    parser.add_argument("--daily", type=int, help="requests per UTC day")
    parser.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute, generative functions")
    parser.add_argument("--tpd", type=int, help="tokens per UTC day, generative functions")


def register(sub: Commands, common: argparse.ArgumentParser) -> None:
    """keys (create, ls, revoke, rotate), tenants (set, ls), usage."""
    keys = add_command(sub, "keys", "API keys: create, ls, revoke, rotate",
                       "Manage API keys: each has a tenant, scopes (admin, invoke:*, invoke:FUNCTION) and optional\n"
                       "limits; only a hash is stored, so a key's secret is shown once, when it is made.",
                       ["fnserve keys create --name app --scope invoke:sentiment --rps 10",
                        "fnserve keys ls", "fnserve keys revoke 0123456789ab"])
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = add_command(keys_sub, "create", "create a key (prints its secret once)",
                         "Create an API key and print its secret, this once.",
                         ["fnserve keys create --name app",
                          "fnserve keys create --name ops --scope admin --expires 30d",
                          "fnserve keys create --name batch --scope invoke:sentiment --rps 5 --daily 10000 --json"],
                         [common])
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", default="default")
    create.add_argument("--scope", action="append", metavar="SCOPE",
                        help="admin, metrics (GET /metrics: Prometheus), invoke:* or invoke:FUNCTION "
                             "(repeatable; default invoke:*)")
    create.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30d or 12h (default: none)")
    _add_limit_flags(create)
    create.set_defaults(run=cmd_keys_create)
    add_command(keys_sub, "ls", "list keys", "List the keys: id, name, tenant, scopes, state, expiry and limits.",
                ["fnserve keys ls", "fnserve keys ls --json"], [common]).set_defaults(run=cmd_keys_ls)
    revoke = add_command(keys_sub, "revoke", "revoke a key now",
                         "Revoke a key: every router refuses it within a second.",
                         ["fnserve keys revoke 0123456789ab"], [common])
    revoke.add_argument("key_id")
    revoke.set_defaults(run=cmd_keys_revoke)
    rotate = add_command(keys_sub, "rotate", "new secret; the old one works for --grace",
                         "Give a key a new secret (printed once); the old secret keeps working for --grace.",
                         ["fnserve keys rotate 0123456789ab", "fnserve keys rotate 0123456789ab --grace 10m"],
                         [common])
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", default="1h", help="how long the old secret keeps working (default 1h)")
    rotate.set_defaults(run=cmd_keys_rotate)

    tenants = add_command(sub, "tenants", "default limits per tenant",
                          "Default limits for the keys of a tenant that set none of their own.",
                          ["fnserve tenants set default --rps 50 --concurrency 8", "fnserve tenants ls"])
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    tenant_set = add_command(tenants_sub, "set", "set a tenant's default limits",
                             "Set a tenant's default limits (the flags given replace the tenant's limits).",
                             ["fnserve tenants set default --rps 50",
                              "fnserve tenants set acme --daily 100000 --tpm 20000"],
                             [common])
    tenant_set.add_argument("tenant")
    _add_limit_flags(tenant_set)
    tenant_set.set_defaults(run=cmd_tenants_set)
    add_command(tenants_sub, "ls", "list tenants' limits", "List every tenant with default limits.",
                ["fnserve tenants ls"], [common]).set_defaults(run=cmd_tenants_ls)

    usage = add_command(sub, "usage", "the usage ledger per key, function and day",
                        "The usage ledger: requests, errors, latency and tokens per key, function and UTC day.",
                        ["fnserve usage --since 2026-01-01", "fnserve usage --function sentiment --json"], [common])
    usage.add_argument("--key", help="one key id")
    usage.add_argument("--function", help="one function")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="from this UTC day on")
    usage.set_defaults(run=cmd_usage)
