"""The composition root of ``fnserve up``: everything a running router is made of, put together once.

In order: the TLS certificate and the secret files checked (a bad one ends the start with one line,
before anything exists), the state folder, the listening socket (bound before anything slow, so a
taken port fails at once and the port is known before the first line is printed), logging and tracing, the state store,
the admin key (FNSERVE_ADMIN_KEY_FILE's, or one made on a first start), the backend and the Starlette
app, and uvicorn on the bound socket, speaking HTTPS when given a certificate. The command line lives
in ``fnserve.cli``; this module takes a Settings object and knows nothing of flags.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from fnserve import __version__, logs, tracing
from fnserve.backends.base import Serving, Training
from fnserve.database import StoreUnavailable, UnsupportedDatabase
from fnserve.router.app import StartupDeploy, create_app
from fnserve.router.http_server import protocol_with
from fnserve.router.services.keys import (
    SecretFileError,
    bootstrap_admin_key,
    install_admin_key,
    read_admin_key_file,
    resolve_pepper,
)
from fnserve.settings import Settings
from fnserve.state import StateStore


class CannotStart(Exception):
    """A setting the router cannot start with; the message is one line naming it and what is wrong."""


class CannotListen(CannotStart):
    """The router's address is taken or not ours to bind; the message says which and what to check."""


# OpenSSL's reasons for a key that is not the certificate's (same algorithm; another algorithm)
_MISMATCH = ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED")


def _refuse_password() -> str:
    raise CannotStart("is encrypted; give an unencrypted key (the router has no way to ask for a password)")


def _load(what: str, path: str, load: Callable[[], None], ssl_problem: Callable[[ssl.SSLError], str]) -> None:
    """One load into an SSLContext, every failure turned into one line naming the file."""
    try:
        load()
    except CannotStart as exc:
        raise CannotStart(f"{what} {path}: {exc}") from None
    except ssl.SSLError as exc:
        raise CannotStart(f"{what} {path}: {ssl_problem(exc)}") from None
    except OSError as exc:
        raise CannotStart(f"{what} {path}: cannot read it ({exc.strerror})") from None


def check_tls(settings: Settings) -> bool:
    """Whether to serve HTTPS; raises CannotStart naming the file when the pair cannot be served. It loads
    the pair as uvicorn will, so a mistake surfaces here as one line and not as a traceback after binding."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return False
    if not (cert and key):
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise CannotStart(f"{given} needs {missing} too (FNSERVE_TLS_CERT_FILE and FNSERVE_TLS_KEY_FILE go together)")
    for what, path in (("TLS certificate", cert), ("TLS key", key)):
        if not Path(path).exists():
            raise CannotStart(f"{what} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load("TLS certificate", cert, lambda: context.load_verify_locations(cafile=cert),
          lambda _: "not a PEM certificate")
    _load("TLS key", key, lambda: context.load_cert_chain(cert, key, password=_refuse_password),
          lambda exc: f"does not match the certificate {cert}" if exc.reason in _MISMATCH else "not a PEM private key")
    return True


def bind(settings: Settings) -> socket.socket:
    """A listening socket on the configured host and port (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
                           + (" (is another fnserve up running?)" if exc.errno == 98 else "")) from None
    sock.listen(2048)
    return sock  # not inheritable: uvloop's spawn keeps every inheritable descriptor open in the child


def build_app(settings: Settings, backend_kind: str, state: StateStore,
              deploys: list[StartupDeploy]) -> Starlette:
    """The backend of ``backend_kind`` ("local" or "knative") and the router app over it. Backends are imported
    here, on demand: the cluster one pulls in the kubernetes client, which a local router never needs."""
    serving: Serving
    training: Training
    if backend_kind == "knative":
        from fnserve.backends import knative

        serving, training = knative.create(settings, state)
    else:
        from fnserve.backends import local

        serving, training = local.create(settings, state)
    return create_app(settings, serving, training, state=state, deploys=deploys)


def serve(settings: Settings, backend_kind: str = "local", deploys: list[StartupDeploy] | None = None) -> None:
    """Run the router in the foreground until SIGTERM / SIGINT (uvicorn re-raises the signal afterwards,
    so the process ends with the conventional status). Raises CannotStart before anything started."""
    tls = check_tls(settings)
    try:
        admin_file = read_admin_key_file(settings)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        pepper = resolve_pepper(settings)
    except SecretFileError as exc:
        raise CannotStart(str(exc)) from None
    sock = bind(settings)
    logs.configure(settings.log_level, settings.log_format_for(backend_kind), "router", access_log=settings.access_log)
    if spans_to := tracing.configure("fnserve-router", {"service.version": __version__}):
        logging.getLogger("fnserve.tracing").info("sending spans to %s", spans_to)
    try:
        state = StateStore(settings.state_location())
    except (StoreUnavailable, UnsupportedDatabase) as exc:
        raise CannotStart(str(exc)) from None
    if admin_file:
        install_admin_key(state, pepper, *admin_file)
        print(f"fnserve: admin API key {admin_file[0]} from FNSERVE_ADMIN_KEY_FILE", flush=True)
    elif admin := bootstrap_admin_key(state, pepper, settings.state_dir):
        print(f"fnserve: created the admin API key (shown once; also in {settings.state_dir / 'admin.key'}, "
              f"mode 0600):\n  {admin}", flush=True)
    app = build_app(settings, backend_kind, state, deploys or [])
    config = uvicorn.Config(app, loop="uvloop", http=protocol_with(settings.header_timeout), lifespan="on",
                            access_log=False, log_level=settings.log_level, log_config=None, timeout_graceful_shutdown=10,
                            timeout_keep_alive=math.ceil(settings.keepalive_timeout),
                            ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file)
    port, scheme = sock.getsockname()[1], "https" if tls else "http"
    print(f"fnserve {__version__} listening on {scheme}://{settings.host}:{port} (state: {settings.state_dir})",
          flush=True)
    uvicorn.Server(config).run(sockets=[sock])
