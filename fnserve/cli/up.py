"""``fnserve up``: flags → Settings, manifests checked before anything starts, then fnserve.server runs
the router in the foreground. The server module is imported only here, so no other command pays for
uvicorn and the router at start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fnserve.cli.base import CliError, load_function_file
from fnserve.settings import Settings


def cmd_up(args: argparse.Namespace) -> None:
    from fnserve import server
    from fnserve.router.app import StartupDeploy

    deploys = []
    for path in args.deploy:
        file, data = load_function_file(path)
        deploys.append(StartupDeploy(data, str(file.parent.resolve()), str(path)))
    settings = Settings.from_env(host=args.host, port=args.port, state_dir=args.state_dir,
                                 tls_cert_file=args.tls_cert, tls_key_file=args.tls_key)
    try:
        server.serve(settings, args.backend, deploys)
    except server.CannotStart as exc:
        raise CliError(str(exc)) from None


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run the router and the embedded backend in the foreground")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8080)")
    up.add_argument("--state-dir", type=Path, help="state folder (default ~/.fnserve)")
    up.add_argument("--tls-cert", metavar="FILE",
                    help="serve HTTPS with this PEM certificate (chain); needs --tls-key (FNSERVE_TLS_CERT_FILE)")
    up.add_argument("--tls-key", metavar="FILE", help="the certificate's unencrypted PEM private key (FNSERVE_TLS_KEY_FILE)")
    up.add_argument("--backend", choices=["local", "knative"], default="local",
                    help="local: replicas and jobs as processes here (default); knative: KServe InferenceServices "
                         "and Jobs in the cluster this runs in (or FNSERVE_CLUSTER_API_URL / ~/.kube/config)")
    up.add_argument("--deploy", type=Path, action="append", default=[], metavar="PATH",
                    help="deploy this function once the router is up (repeatable)")
    up.set_defaults(run=cmd_up)
