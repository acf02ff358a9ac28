"""AdminClient: the one HTTP client for a router's admin API (and single inference calls), shared by the
``fnserve`` command, the benchmarks and the tests.

Stdlib urllib only, so that talking to a router costs no dependency and no import time. Every answer
of 400 or more becomes one AdminError carrying the status and the router's JSON error body (a
top-level ``"error"`` string, sometimes ``reason`` or ``problems``), so a caller that must tell one
refusal from another reads fields instead of parsing messages. A router that cannot be reached is a
RouterUnreachable — a ConnectionError, so code that waits for a router to come up keeps catching
OSError. An https:// router is verified against the system's trust store, or against ``ca_file``
(FNSERVE_CA_FILE for the CLI) when its certificate comes from a private CA. A deploy is followed as the
router streams its phases (JSON lines), so it waits as long as the backend does and no longer. Paths and
request bodies of the admin API are written here once; how an answer is shown is the caller's business.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

NDJSON = "application/x-ndjson"


class AdminError(Exception):
    """The router answered with an error status; ``body`` is its decoded answer (a dict when JSON)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The router's ``error`` line (the whole body when it sent no JSON object)."""
        return str(self.body.get("error", self.body) if isinstance(self.body, dict) else self.body)

    @property
    def reason(self) -> str | None:
        """The machine-readable ``reason`` some refusals carry (e.g. ``NoCompleteRun``)."""
        return self.body.get("reason") if isinstance(self.body, dict) else None


class RouterUnreachable(ConnectionError):
    """No answer at all: refused, timed out, or the connection dropped mid-answer."""

    def __init__(self, url: str, reason: Any) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


def find_api_key() -> str | None:
    """FNSERVE_API_KEY, else the admin key `fnserve up` wrote: $FNSERVE_STATE_DIR, ./.fnserve, ~/.fnserve."""
    return api_key_source()[0]


def api_key_source() -> tuple[str | None, str]:
    """The key find_api_key() finds and where it came from (FNSERVE_API_KEY or the admin.key file), or None
    and the places it looked in."""
    if os.environ.get("FNSERVE_API_KEY"):
        return os.environ["FNSERVE_API_KEY"].strip(), "FNSERVE_API_KEY"
    folders = [os.environ.get("FNSERVE_STATE_DIR"), ".fnserve", str(Path.home() / ".fnserve")]
    files = [Path(folder).expanduser() / "admin.key" for folder in filter(None, folders)]
    for file in files:
        try:
            return file.read_text().strip(), str(file)
        except OSError:
            continue
    return None, ", ".join(map(str, files))


def _decode(raw: bytes, content_type: str) -> Any:
    return json.loads(raw) if "json" in content_type and raw else raw.decode("utf-8", errors="replace")


class AdminClient:
    """A router at ``url`` (no trailing slash needed), as the holder of ``key`` (None: no credentials);
    ``ca_file``: PEM certificates to trust instead of the system's (raises OSError / ssl.SSLError when it
    cannot be read as such)."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 300.0, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @property
    def headers(self) -> dict[str, str]:
        """The credentials header, for callers that speak HTTP through another client (aiohttp, Locust)."""
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    # -- the three ways of talking ---------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request with an optional JSON body; the decoded answer (JSON, else text)."""
        with self._open(self._request(method, path, body), self.timeout) as response:
            return _decode(response.read(), response.headers.get("Content-Type", ""))

    def stream(self, path: str, timeout: float | None = 3600.0) -> Iterator[str]:
        """A streamed text answer (a job's log), chunk by chunk as it arrives."""
        with self._open(self._request("GET", path), timeout) as response:
            while chunk := response.read1(65536):
                yield chunk.decode("utf-8", errors="replace")

    def events(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """An answer streamed as JSON lines (application/x-ndjson), one event at a time; empty lines (the
        router's keep-alives) are skipped. A router that answers with plain JSON instead yields that
        answer once, as ``{"phase": "ready", "result": ...}``."""
        request = self._request(method, path, body, accept=NDJSON)
        with self._open(request, self.timeout) as response:
            if NDJSON not in response.headers.get("Content-Type", ""):
                yield {"phase": "ready", "status": response.status,
                       "result": _decode(response.read(), response.headers.get("Content-Type", ""))}
                return
            while line := response.readline():
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    raise RouterUnreachable(self.url, f"not a progress event: {line[:80]!r}") from None

    def _request(self, method: str, path: str, body: Any = None, accept: str | None = None) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**({"Content-Type": "application/json"} if data else {}), **({"Accept": accept} if accept else {}),
                   **self.headers}
        return urllib.request.Request(self.url + path, data=data, method=method, headers=headers)

    @contextlib.contextmanager
    def _open(self, request: urllib.request.Request, timeout: float | None) -> Iterator[Any]:
        """The answer to ``request`` while it is read: an error status is an AdminError, no answer (or one
        broken off) a RouterUnreachable."""
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                yield response
        except urllib.error.HTTPError as exc:
            raise AdminError(exc.code, _decode(exc.read(), exc.headers.get("Content-Type", ""))) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise RouterUnreachable(self.url, getattr(exc, "reason", exc)) from None
        except http.client.HTTPException as exc:  # an answer broken off mid-way (a restarted router)
            raise RouterUnreachable(self.url, f"the answer broke off: {exc!r}") from None

    # -- functions -------------------------------------------------------------------------------
    def functions(self) -> dict[str, Any]:
        return self.call("GET", "/api/functions")

    def function(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/api/functions/{name}")

    def deploy(self, manifest: Any, location: dict[str, Any], source: str, canary: int | None = None,
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Deploy ``manifest``; ``location`` is ``{"sourceDir": ...}`` or ``{"files": {...}}``; ``canary`` N
        runs it beside the current revision with N% of the requests. The deploy's progress is streamed:
        ``progress`` is handed each phase as it begins ({"phase": "validating"}, "pinning", "starting");
        the answer once the revision serves, or the AdminError the plain request would have raised. No
        timeout but the backend's own: the router keeps the stream alive until it is done."""
        extra = {"canary": canary} if canary else {}
        body = {"manifest": manifest, "source": source, **location, **extra}
        for event in self.events("POST", "/api/functions", body):
            if "error" in event:
                raise AdminError(int(event.pop("status", 500)), event)
            if event.get("phase") == "ready":
                return dict(event["result"])
            if progress is not None:
                progress(event)
        raise RouterUnreachable(self.url, "the deploy's progress stream ended before its outcome")

    def promote(self, name: str) -> dict[str, Any]:
        return self.call("POST", f"/api/functions/{name}/promote")

    def remove(self, name: str) -> Any:
        return self.call("DELETE", f"/api/functions/{name}")

    def function_logs(self, name: str, tail: int = 100) -> str:
        return self.call("GET", f"/api/functions/{name}/logs?tail={tail}")

    def follow_function_logs(self, name: str, tail: int = 100) -> Iterator[str]:
        """The end of the replica logs, then what they write next (a quiet function may say nothing for
        hours: no read timeout)."""
        return self.stream(f"/api/functions/{name}/logs?tail={tail}&follow=1", timeout=None)

    def revisions(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/api/functions/{name}/revisions")

    def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        return self.call("POST", f"/api/functions/{name}/rollback", {"to": to} if to else {})

    def invoke(self, name: str, body: Any, v2: bool = False) -> Any:
        """One inference request, KServe V1 or Open Inference (V2)."""
        return self.call("POST", f"/v2/models/{name}/infer" if v2 else f"/v1/models/{name}:predict", body)

    # -- training jobs ---------------------------------------------------------------------------
    def submit_job(self, manifest: Any, location: dict[str, Any], source: str,
                   params: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/api/jobs", {"manifest": manifest, "source": source, "params": params, **location})

    def jobs(self, limit: int = 50) -> dict[str, Any]:
        return self.call("GET", f"/api/jobs?limit={limit}")

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/jobs/{job_id}")

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        return self.stream(f"/api/jobs/{job_id}/logs" + ("?follow=1" if follow else ""))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.call("POST", f"/api/jobs/{job_id}/cancel")

    # -- keys, tenants, usage --------------------------------------------------------------------
    def keys(self) -> dict[str, Any]:
        return self.call("GET", "/api/keys")

    def create_key(self, name: str, *, tenant: str | None = None, scopes: list[str] | None = None,
                   limits: dict[str, Any] | None = None, expires_in: str | None = None) -> dict[str, Any]:
        """A new key (default scope ``invoke:*``); the answer holds its ``token``, shown this once."""
        body: dict[str, Any] = {"name": name, **({"tenant": tenant} if tenant is not None else {}),
                                "scopes": scopes or ["invoke:*"], "limits": limits or {}}
        if expires_in:
            body["expiresIn"] = expires_in
        return self.call("POST", "/api/keys", body)

    def revoke_key(self, key_id: str) -> Any:
        return self.call("DELETE", f"/api/keys/{key_id}")

    def rotate_key(self, key_id: str, grace: str) -> dict[str, Any]:
        return self.call("POST", f"/api/keys/{key_id}/rotate", {"grace": grace})

    def tenants(self) -> dict[str, Any]:
        return self.call("GET", "/api/tenants")

    def set_tenant(self, tenant: str, limits: dict[str, Any]) -> dict[str, Any]:
        return self.call("PUT", f"/api/tenants/{tenant}", limits)

    def audit(self, since: str | None = None, actor: str | None = None, action: str | None = None,
              limit: int | None = None) -> dict[str, Any]:
        query = urllib.parse.urlencode({k: v for k, v in (("since", since), ("actor", actor), ("action", action),
                                                          ("limit", limit)) if v})
        return self.call("GET", "/api/audit" + (f"?{query}" if query else ""))

    def usage(self, key: str | None = None, function: str | None = None, since: str | None = None) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in (("key", key), ("function", function), ("since", since)) if v)
        return self.call("GET", "/api/usage" + (f"?{query}" if query else ""))
