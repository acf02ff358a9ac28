"""``fnserve up``: flags → Settings, manifests checked before anything starts, then fnserve.server runs
the router in the foreground. The server module is imported only here, so no other command pays for
uvicorn and the router at start-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fnserve.cli.base import CliError, Commands, add_command, load_function_file
from fnserve.logs import LEVELS as LOG_LEVELS
from fnserve.settings import Settings


def cmd_up(args: argparse.Namespace) -> None:
    from fnserve import server
    from fnserve.router.app import StartupDeploy

    deploys = []
    for path in args.deploy:
        file, data = load_function_file(path)
        deploys.append(StartupDeploy(data, str(file.parent.resolve()), str(path)))
    settings = Settings.from_env(host=args.host, port=args.port, state_dir=args.state_dir,
                                 tls_cert_file=args.tls_cert, tls_key_file=args.tls_key, log_level=args.log_level)
    try:
        server.serve(settings, args.backend, deploys)
    except server.CannotStart as exc:
        raise CliError(str(exc)) from None


def register(sub: Commands, offline: argparse.ArgumentParser) -> None:
    up = add_command(
        sub, "up", "run the router and the embedded backend in the foreground",
        "Run the router in the foreground: the HTTP API for inference and administration, and the backend\n"
        "that starts replicas and training jobs (processes on this machine, or KServe objects in a cluster).\n"
        "The first start creates the state dir and an admin key, printed once and written to admin.key there.\n"
        "With --json, a router that cannot start says why as a JSON error object.",
        ["fnserve up --state-dir .fnserve",
         "fnserve up --deploy functions/sentiment          # and deploy a function once it is up",
         "fnserve up --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem"],
        [offline])
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
    up.add_argument("--log-level", choices=LOG_LEVELS,
                    help="how much the router logs (default info; FNSERVE_LOG_LEVEL)")
    up.set_defaults(run=cmd_up)
