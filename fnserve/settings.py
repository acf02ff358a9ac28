"""All of fnserve's configuration in one place, read from FNSERVE_* environment variables.

Command-line flags override the environment; the environment overrides the defaults below. Nothing else
in the code base reads os.environ for configuration, so this file is the complete list of knobs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fnserve import logs
from fnserve.storage.stores import S3Options

DEFAULT_URL = "http://127.0.0.1:8080"


class SettingsError(SystemExit):
    """A setting that cannot be used, said in one line (``fnserve: FNSERVE_X='…' is not …``); a SystemExit,
    so a process that reads its settings at start ends with that line and status 1, never a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"fnserve: {message}")
        self.message = message


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    """Address the router listens on; every route but health and /openapi.json needs an API key."""
    port: int = 8080
    tls_cert_file: str | None = None
    """PEM certificate (chain) the router serves HTTPS with (fnserve up --tls-cert); unset = plain HTTP, as
    behind an Ingress that terminates TLS. Needs tls_key_file too."""
    tls_key_file: str | None = None
    """PEM private key of tls_cert_file, unencrypted (fnserve up --tls-key)."""
    state_dir: Path = field(default_factory=lambda: Path.home() / ".fnserve")
    """SQLite state (unless database_url is set), replica logs and stored manifests."""
    database_url: str | None = None
    """postgresql://user:password@host:port/db shared by every router; unset = SQLite in the state dir."""
    sync_interval: float = 0.25
    """Seconds between two looks at the state database's change versions (another router's deploy,
    key revocation or tenant change is applied here within about this long)."""
    replica_ready_timeout: float = 120.0
    """Seconds a new replica may take from process start to a loaded, answering model."""
    replica_stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a replica is stopped."""
    drain_timeout: float = 30.0
    """Seconds an old replica may keep finishing requests after a redeploy."""
    connect_timeout: float = 5.0
    """Seconds the proxy waits to connect to a replica before answering 503."""
    max_body_bytes: int = 64 * 2**20
    """Largest request body the router reads; a larger one is answered 413 before it is read past this."""
    header_timeout: float = 10.0
    """Seconds a client has from a request's first byte (or its connection's opening) to finish the
    headers; then 408 and the connection is closed (slowloris)."""
    body_timeout: float = 30.0
    """Seconds a request body may stall between two chunks before 408."""
    keepalive_timeout: float = 5.0
    """Seconds an idle client connection stays open between requests (uvicorn counts whole seconds: a
    fraction is rounded up)."""
    s3_endpoint_url: str | None = None
    """S3 API endpoint for s3:// URIs (MinIO, Ceph…); unset = boto3's default (AWS, or AWS_ENDPOINT_URL)."""
    s3_region: str | None = None
    """S3 region; unset = boto3's chain (AWS_DEFAULT_REGION, the profile)."""
    s3_access_key_id: str | None = None
    """S3 credentials; unset = boto3's chain (AWS_* variables, ~/.aws, an instance or pod role)."""
    s3_secret_access_key: str | None = None
    s3_part_size: int = 8 * 2**20
    """Bytes per part of a multipart upload; larger files are uploaded in parts (S3's minimum: 5 MiB)."""
    artifact_root: str | None = None
    """Where training runs are published and artifacts:// URIs point (file:// or s3://); unset = the
    state dir's artifacts/ folder."""
    max_jobs: int = 1
    """Training jobs run at once on this machine; more wait in a queue."""
    job_stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is cancelled or runs past its timeout."""
    autoscale_tick: float = 2.0
    """Seconds between autoscaler decisions (Knative: 2 s); a request at zero decides at once."""
    activator_queue_limit: int = 1000
    """Requests one function may hold waiting for a replica; more → 503 with Retry-After."""
    activator_timeout: float = 60.0
    """Seconds a request may wait for a replica (cold start or all full); past it → 504."""
    replica_log_max_bytes: int = 10 * 2**20
    """Size at which a replica's log file is rotated (one previous part kept: <replica>.log.1)."""
    replica_log_keep_seconds: float = 120.0
    """How long the logs of a revision no longer serving (replaced, failed to deploy, removed) stay, so
    `fnserve logs` can still say why; then they are deleted."""
    liveness_timeout: float = 3.0
    """Seconds a replica has to answer a health check (one per autoscaler tick)."""
    liveness_failures: int = 3
    """Consecutive failed health checks after which a replica is killed and replaced."""
    gpus: str | None = None
    """GPU ids the embedded backend may hand out ("0,1", "none"); unset = ask nvidia-smi."""
    redis_url: str | None = None
    """redis://host:port/db shared by several routers for rate and concurrency limits, daily quotas and the
    usage ledger; unset = in memory (daily counts and usage flushed to the database every second)."""
    pepper_file: str | None = None
    """File holding the HMAC pepper of API keys (≥ 16 bytes; read, never created): routers that share keys
    must share it, so in a cluster it is a mounted Secret; unset = <state dir>/pepper, created on first use."""
    admin_key_file: str | None = None
    """File holding the admin API key (fns_<id>_<secret>; a mounted Secret in a cluster): made to exist with
    that secret at every start, a changed secret replacing the stored one; unset = a key generated on the
    first start, printed once and written to <state dir>/admin.key."""
    default_rps: float | None = None
    """Rate limit for keys whose key and tenant set none (requests/s); unset = no limit."""
    default_burst: int | None = None
    default_concurrency: int | None = None
    default_daily: int | None = None
    default_tpm: int | None = None
    """Tokens per minute for keys whose key and tenant set none (generative functions); unset = no limit."""
    default_tpd: int | None = None
    cluster_namespace: str = "fnserve"
    """Namespace of the cluster backend's objects (fnserve up --backend knative, fnserve render)."""
    cluster_runtime_image: str = "ghcr.io/fnserve/runtime-cpu:0.1.0"
    cluster_gpu_runtime_image: str = "ghcr.io/fnserve/runtime-cuda:0.1.0"
    cluster_deployment_mode: str = "Knative"
    """KServe's deploymentMode annotation: "Knative" (KServe ≥ 0.17) or "Serverless" (older)."""
    cluster_gpu_node_selector: str = "nvidia.com/gpu.present=true"
    """name=value[,name=value] node labels a GPU function's pods must land on; "" for none."""
    cluster_gpu_toleration: str = "nvidia.com/gpu"
    """Taint key GPU pods tolerate (operator Exists, effect NoSchedule); "" for none."""
    cluster_jobsink: bool = True
    """Start training runs through a Knative Eventing JobSink (Eventing ≥ 1.15); false = plain Jobs."""
    cluster_jobsink_url: str = "http://job-sink.knative-eventing.svc.cluster.local"
    cluster_api_url: str | None = None
    """Kubernetes API server; unset = in-cluster service account, else ~/.kube/config."""
    cluster_ready_timeout: float = 900.0
    """Seconds a deploy waits for the InferenceService's Ready condition (GPU nodes can take minutes)."""
    forkserver: bool = True
    """Start replicas by forking a warm fork server per runtime (Linux); false = a fresh interpreter each."""
    fork_spare_after: float = 1.0
    """Seconds a fork server is idle before it forks a spare child, so the next cold start skips the fork;
    negative = keep no spare."""
    replica_threads: int = 1
    """Worker threads per replica running model code."""
    python: str = sys.executable
    """Interpreter that runs replicas (the one fnserve runs in)."""
    log_level: str = "info"
    """debug, info, warning, error or critical: the router's and its replicas' log lines (fnserve up
    --log-level)."""
    log_format: str | None = None
    """text (one readable line) or json (one object per line, for a log pipeline); unset = json with the
    cluster backend, text on one machine. Replicas and jobs write the same format."""
    access_log: bool = True
    """One line per request (method, path, function, revision, status, timings, key id, bytes); false = off."""

    def log_format_for(self, backend_kind: str) -> str:
        return self.log_format or ("json" if backend_kind == "knative" else "text")

    def state_location(self) -> Path | str:
        """The state database: PostgreSQL when configured, else the SQLite file in the state dir."""
        return self.database_url or self.state_dir / "fnserve.db"

    def artifacts_uri(self) -> str:
        """The artifact root as an absolute URI, without a trailing slash."""
        return (self.artifact_root or (self.state_dir / "artifacts").as_uri()).rstrip("/")

    def s3_options(self) -> S3Options:
        return S3Options(self.s3_endpoint_url, self.s3_region, self.s3_access_key_id, self.s3_secret_access_key,
                         self.s3_part_size)

    def s3_env(self) -> dict[str, str]:
        """The S3 settings as FNSERVE_* variables, for processes (job wrappers) that read them back."""
        return {f"FNSERVE_{name.upper()}": str(value) for name in
                ("s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_secret_access_key", "s3_part_size")
                if (value := getattr(self, name)) is not None}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults ← FNSERVE_<FIELD> environment variables ← explicit overrides (None = not given)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"FNSERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, raw, cls.__dataclass_fields__[f.name].type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "log_level" in values:
            values["log_level"] = _one_of("FNSERVE_LOG_LEVEL", values["log_level"], logs.LEVELS)
        if values.get("replica_log_max_bytes", 2**20) < 2**16:
            raise SettingsError(f"FNSERVE_REPLICA_LOG_MAX_BYTES={values['replica_log_max_bytes']} is below the "
                                f"least a replica log may hold before it is rotated, 65536")
        if "log_format" in values:
            values["log_format"] = _one_of("FNSERVE_LOG_FORMAT", values["log_format"], logs.FORMATS)
        if "state_dir" in values:
            values["state_dir"] = Path(values["state_dir"]).expanduser().resolve()
        return replace(cls(), **values)


def _convert(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind).replace(" | None", "")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError:
        raise SettingsError(f"FNSERVE_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def _one_of(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in allowed:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return value


def router_url(explicit: str | None = None) -> str:
    """Where the CLI finds the router: --url, then FNSERVE_URL, then the default. A URL without a scheme
    (``localhost:8080``) means http://; anything else that is not an http(s) URL with a host is a
    SettingsError naming where it came from."""
    from urllib.parse import urlsplit

    given, source = (explicit, "--url ") if explicit else (os.environ.get("FNSERVE_URL"), "FNSERVE_URL=")
    url = (given or DEFAULT_URL).strip()
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{source}{given!r} is not a router URL; expected http://HOST:PORT or https://HOST:PORT "
                            f"(a bare HOST:PORT means http://)")
    return url.rstrip("/")


def ca_file() -> str | None:
    """FNSERVE_CA_FILE: PEM certificates the CLI trusts for an https:// router signed by a private CA (or
    self-signed); unset = the system's trust store."""
    return os.environ.get("FNSERVE_CA_FILE") or None
