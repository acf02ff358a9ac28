"""A stand-in for the Kubernetes API server that fnserve's Knative backend talks to, with the visible behaviour of the
controllers it waits on (KServe's InferenceService, the Job controller, Knative Eventing's JobSink and its job-sink
receiver), served over real HTTP on 127.0.0.1.

Why: the backend drives a cluster through the official ``kubernetes`` client. Mocking the client would only test our
beliefs about the client; this stand-in answers the requests the client really sends (server-side apply, get, list,
watch, delete, pod logs) so tests exercise its wire format, its (de)serialisation and the timing of status changes.

It is a stand-in, not a cluster. It follows real behaviour where that is easy to get wrong (status codes and Status
bodies, SSA ownership and no-op applies, watch semantics, Job deletion orphaning pods by default, Job conditions,
the job-sink receiver's naming and answers) and simplifies the rest: one process, in memory, every namespace exists,
no auth or admission webhooks, resources 404 unless registered (as without their CRD), field ownership is tracked
per leaf with lists atomic, and garbage collection and controllers run on one scheduler thread.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import heapq
import itertools
import json
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from kubernetes import client

Obj = dict[str, Any]
Path = tuple[str, ...]
APPLY_PATCH = "application/apply-patch+yaml"
ISVC = ("serving.kserve.io", "inferenceservices")
JOBSINKS = ("sinks.knative.dev", "jobsinks")
JOBS = ("batch", "jobs")
PODS = ("", "pods")
SECRETS = ("", "secrets")
ISVC_LABEL = "serving.kserve.io/inferenceservice"
ISVC_FINALIZER = "inferenceservice.finalizers"
JOB_SINK_NAME_LABEL = "sinks.knative.dev/job-sink-name"  # knative.dev/eventing/pkg/apis/sinks/constants.go
JOB_SINK_ID_LABEL = "sinks.knative.dev/job-sink-id"
JOB_DELETE_WARNING = ('299 - "child pods are preserved by default when jobs are deleted; set propagationPolicy='
                      'Background to remove them or set propagationPolicy=Orphan to suppress this warning"')
_BUILTIN_GROUPS = {"", "batch", "apps"}  # typed lists: items carry no apiVersion/kind
_STATUS_STRUCT = {PODS, JOBS, ("", "services"), ("", "persistentvolumeclaims"), ("batch", "cronjobs"),
                  ("apps", "deployments")}  # built-in types whose JSON always has "status": {} (a struct, not a pointer)
_MISSING = object()


@dataclass(frozen=True)
class Resource:
    """One served resource type. Unregistered ones 404, as on an API server without the CRD."""

    group: str
    version: str
    plural: str
    kind: str
    return_deleted: bool = False  # DELETE answers with the object (pods, serviceaccounts), else with a Status

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gk(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


DEFAULT_RESOURCES = (
    Resource("", "v1", "pods", "Pod", return_deleted=True),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", return_deleted=True),
    Resource("", "v1", "events", "Event"),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("batch", "v1", "cronjobs", "CronJob"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"),
    Resource("serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime"),
    Resource("serving.knative.dev", "v1", "services", "Service"),
    Resource("serving.knative.dev", "v1", "revisions", "Revision"),
    Resource("sinks.knative.dev", "v1alpha1", "jobsinks", "JobSink"),
    Resource("eventing.knative.dev", "v1", "brokers", "Broker"),
    Resource("eventing.knative.dev", "v1", "triggers", "Trigger"),
)


class ApiError(Exception):
    """An API failure, answered as a Kubernetes ``Status`` object (what ApiException.body carries)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural})


def _no_resource(what: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource (stand-in: {what} is not "
                    "registered; see KubeApiStandIn.register_resource)")


def _invalid(res: Resource, name: str, path: str, detail: str) -> ApiError:
    return ApiError(422, "Invalid", f'{res.qualified_kind} "{name}" is invalid: {path}: {detail}',
                    {"name": name, "group": res.group, "kind": res.kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": path}]})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _random(length: int) -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(length))  # k8s util/rand alphabet


def _generate_name(base: str) -> str:
    """apiserver's SimpleNameGenerator: the base cut to 58 characters plus 5 random ones."""
    return base[:58] + _random(5)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy (returned) or fail after ``timeout`` s, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- selectors and validation, with the API server's messages ----------------------------------------------------
_TERM = re.compile(r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)(?:\s*(?P<op>==|=|!=)\s*"
                   r"(?P<value>[-A-Za-z0-9_.]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_EXTRA_FIELDS = {("", "pods"): {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "status.phase",
                                "spec.serviceAccountName", "status.podIP", "status.nominatedNodeName"},
                 ("batch", "jobs"): {"status.successful"}, ("", "secrets"): {"type"}}


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [term for term in [*terms, current] if term.strip()]


def label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A predicate for a label selector (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``,
    ``!a``, comma-separated); a malformed one is the API server's 400."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text):
        match = _TERM.match(term)
        if match is None or (match["neg"] and (match["op"] or match["setop"])):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector {term.strip()!r}")
        key = match["key"]
        if match["op"]:
            tests.append(lambda labels, k=key, v=match["value"], eq=match["op"] != "!=": (labels.get(k) == v) == eq)
        elif match["setop"]:
            values = {value.strip() for value in match["values"].split(",")}
            tests.append(lambda labels, k=key, vs=values, inside=match["setop"] == "in": (labels.get(k) in vs) == inside)
        else:
            tests.append(lambda labels, k=key, present=not match["neg"]: (k in labels) == present)
    return lambda labels: all(test(labels) for test in tests)


def field_selector(res: Resource, text: str) -> Callable[[Obj], bool]:
    """A predicate for a field selector; like the API server, only metadata.name/namespace (plus a few per
    built-in type) are supported and anything else is a 400."""
    tests: list[Callable[[Obj], bool]] = []
    for term in _split_terms(text):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if match is None:
            raise ApiError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{term}'")
        key, op, value = match.groups()
        if key not in {"metadata.name", "metadata.namespace"} | _EXTRA_FIELDS.get(res.gk, set()):
            raise ApiError(400, "BadRequest", f"field label not supported: {key}" if res.group in _BUILTIN_GROUPS
                           else f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        path = ("status.succeeded" if key == "status.successful" else key).split(".")
        tests.append(lambda obj, p=path, v=value, eq=op != "!=": (str(_dig(obj, p, "")) == v) == eq)
    return lambda obj: all(test(obj) for test in tests)


def _dig(obj: Any, path: Iterable[str], default: Any = None) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return default
        obj = obj[part]
    return obj


def _key_error(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _LABEL_PART.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return None


def _validate(res: Resource, obj: Obj, old: Obj | None) -> None:
    """The object-level checks a real API server (or the CRD schema) makes that fnserve could plausibly trip."""
    meta, name = obj["metadata"], obj["metadata"]["name"]
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise _invalid(res, name, "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                       "consist of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                       "alphanumeric character (e.g. 'example.com', regex used for validation is "
                       "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    for section in ("labels", "annotations"):
        for key, value in (meta.get(section) or {}).items():
            if value is None:  # JSON null decodes to ""
                continue
            if not isinstance(value, str):
                kind = {bool: "bool", int: "number", float: "number", list: "array", dict: "object"}.get(type(value))
                raise ApiError(400, "BadRequest", f"json: cannot unmarshal {kind} into Go struct field "
                               f"ObjectMeta.metadata.{section} of type string")
            error = _key_error(key)
            if error:
                raise _invalid(res, name, f"metadata.{section}", f'Invalid value: "{key}": {error}')
            if section == "labels" and (len(value) > 63 or (value and not _LABEL_PART.match(value))):
                raise _invalid(res, name, "metadata.labels", f'Invalid value: "{value}": a valid label must be an empty '
                               "string or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                               "with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                               "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    if res.gk == JOBS:
        _validate_job(res, obj, old)
    elif res.gk == ISVC and not _dig(obj, ("spec", "predictor")):
        raise _invalid(res, name, "spec.predictor", "Required value")
    elif res.gk in (("", "configmaps"), SECRETS):
        _validate_config(res, obj, old)


def _validate_job(res: Resource, obj: Obj, old: Obj | None) -> None:
    name, spec = obj["metadata"]["name"], obj.get("spec") or {}
    if len(name) > 63:  # the name becomes the pods' job-name label
        raise _invalid(res, name, "metadata.name", f'Invalid value: "{name}": must be no more than 63 characters')
    pod = _dig(spec, ("template", "spec"), {}) or {}
    for index, container in enumerate(pod.get("containers") or [None]):
        for key in ("name", "image"):
            if not (container or {}).get(key):
                raise _invalid(res, name, f"spec.template.spec.containers[{index}].{key}" if container
                               else "spec.template.spec.containers", "Required value")
    if pod.get("restartPolicy", "Always") not in ("Never", "OnFailure"):
        raise _invalid(res, name, "spec.template.spec.restartPolicy", f'Unsupported value: '
                       f'"{pod.get("restartPolicy", "Always")}": supported values: "OnFailure", "Never"')
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        raise _invalid(res, name, "spec.activeDeadlineSeconds", f"Invalid value: {deadline}: must be greater than 0")
    if old is not None and spec.get("template") != _dig(old, ("spec", "template")):
        raise _invalid(res, name, "spec.template", "Invalid value: core.PodTemplateSpec{...}: field is immutable")


def _validate_config(res: Resource, obj: Obj, old: Obj | None) -> None:
    name, total = obj["metadata"]["name"], 0
    for section in ("data", "binaryData", "stringData"):
        for key, value in (obj.get(section) or {}).items():
            if not _CONFIG_KEY.match(key):
                raise _invalid(res, name, f"{section}[{key}]", f'Invalid value: "{key}": a valid config key must '
                               "consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
                               "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
            size = len(str(value).encode())
            total += size * 3 // 4 if section == "binaryData" or (res.gk == SECRETS and section == "data") else size
    if total > 1048576:
        raise _invalid(res, name, "[]", "Too long: must have at most 1048576 bytes")
    if old is not None and old.get("immutable"):
        for key in ("data", "binaryData", "immutable"):
            if obj.get(key) != old.get(key):
                raise _invalid(res, name, key, "Forbidden: field is immutable when `immutable` is set")


# -- server-side apply field ownership ------------------------------------------------------------------------------
def _leaves(body: Obj) -> dict[Path, Any]:
    """The leaf fields an applied configuration sets: the granularity of ownership here (real SSA also keys the
    items of some lists; the stand-in treats every list as one value)."""
    out: dict[Path, Any] = {}

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, (*path, key))
        else:
            out[path] = value

    for key, value in body.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            walk(value, (key,))
    meta = body.get("metadata") or {}
    for section in ("labels", "annotations"):
        for key, value in (meta.get(section) or {}).items():
            out[("metadata", section, key)] = value
    for key in ("finalizers", "ownerReferences"):
        if key in meta:
            out[("metadata", key)] = meta[key]
    return out


def _fields_v1(paths: Iterable[Path]) -> Obj:
    root: Obj = {}
    for path in paths:
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def _paths(fields: Obj, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, value in fields.items():
        if key.startswith("f:"):
            if isinstance(value, dict) and any(child.startswith("f:") for child in value):
                out |= _paths(value, (*prefix, key[2:]))
            else:
                out.add((*prefix, key[2:]))
    return out


def _set_path(obj: Obj, path: Path, value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(obj.get(part), dict):
            obj[part] = {}
        obj = obj[part]
    obj[path[-1]] = copy.deepcopy(value)


def _del_path(obj: Obj, path: Path) -> None:
    parents: list[tuple[Obj, str]] = []
    for part in path[:-1]:
        if not isinstance(obj.get(part), dict):
            return
        parents.append((obj, part))
        obj = obj[part]
    obj.pop(path[-1], None)
    for parent, part in reversed(parents):  # maps emptied by the removal go too
        if parent[part] or part == "metadata":
            break
        del parent[part]


def _managed(manager: str, operation: str, res: Resource, paths: Iterable[Path], subresource: str = "") -> Obj:
    entry = {"manager": manager, "operation": operation, "apiVersion": res.api_version, "time": _now(),
             "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}
    return {**entry, "subresource": subresource} if subresource else entry


def _content(obj: Obj | None) -> Obj:
    return {key: value for key, value in (obj or {}).items() if key not in ("metadata", "status")}


def _timeless(obj: Obj) -> Obj:
    meta = {key: value for key, value in obj["metadata"].items() if key != "resourceVersion"}
    meta["managedFields"] = [{k: v for k, v in entry.items() if k != "time"} for entry in meta.get("managedFields", [])]
    return {**obj, "metadata": meta}


def _conflict(res: Resource, name: str, owner: str, paths: list[Path]) -> ApiError:
    dotted = ["." + ".".join(path) for path in paths]
    using = f'conflict{"s" if len(dotted) > 1 else ""} with "{owner}" using {res.api_version}'
    message = (f"Apply failed with 1 conflict: {using}: {dotted[0]}" if len(dotted) == 1 else
               f"Apply failed with {len(dotted)} conflicts: {using}:\n" + "\n".join(f"- {d}" for d in dotted))
    return ApiError(409, "Conflict", message, {"name": name, "group": res.group, "kind": res.plural, "causes": [
        {"reason": "FieldManagerConflict", "message": f'conflict with "{owner}" using {res.api_version}', "field": d}
        for d in dotted]})


# -- storage, watch history, controller scheduling -----------------------------------------------------------------
@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str
    gk: tuple[str, str]
    obj: Obj
    old: Obj | None


class ObjectStore:
    """Objects by (group, plural, namespace, name) under one resourceVersion counter, plus the recent change history
    that watches replay from: etcd and the watch cache, in memory. Reads return copies."""

    def __init__(self, history: int = 10_000) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.compacted = 0  # watches from a resourceVersion at or below this get 410 Expired
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._events: deque[WatchEvent] = deque()
        self._history = history
        self._rv = 0

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, gk: tuple[str, str], namespace: str, name: str) -> Obj | None:
        with self.lock:
            return copy.deepcopy(self._objects.get((*gk, namespace, name)))

    def objects(self, gk: tuple[str, str], namespace: str | None = None) -> list[Obj]:
        with self.lock:
            return [copy.deepcopy(obj) for (group, plural, ns, _), obj in sorted(self._objects.items())
                    if (group, plural) == gk and namespace in (None, ns)]

    def everything(self) -> list[tuple[tuple[str, str], Obj]]:
        with self.lock:
            return [((key[0], key[1]), copy.deepcopy(obj)) for key, obj in sorted(self._objects.items())]

    def put(self, gk: tuple[str, str], obj: Obj) -> Obj:
        with self.lock:
            key = (*gk, obj["metadata"]["namespace"], obj["metadata"]["name"])
            old = self._objects.get(key)
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._objects[key] = copy.deepcopy(obj)
            self._emit(WatchEvent(self._rv, "ADDED" if old is None else "MODIFIED", gk, copy.deepcopy(obj), old))
            return copy.deepcopy(obj)

    def remove(self, gk: tuple[str, str], namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.pop((*gk, namespace, name), None)
            if obj is not None:
                self._rv += 1  # a deletion is a change with its own resourceVersion
                obj["metadata"]["resourceVersion"] = str(self._rv)
                self._emit(WatchEvent(self._rv, "DELETED", gk, copy.deepcopy(obj), obj))
            return copy.deepcopy(obj)

    def events_after(self, rv: int, timeout: float) -> list[WatchEvent]:
        with self.lock:
            if not self._events or self._events[-1].rv <= rv:
                self.changed.wait(timeout)
            return [event for event in self._events if event.rv > rv]

    def compact(self) -> None:
        with self.lock:
            self._events.clear()
            self.compacted = self._rv
            self.changed.notify_all()

    def wake(self) -> None:
        with self.lock:
            self.changed.notify_all()

    def _emit(self, event: WatchEvent) -> None:
        self._events.append(event)
        while len(self._events) > self._history:
            self.compacted = self._events.popleft().rv
        self.changed.notify_all()


class _Scheduler:
    """Runs the simulated controllers' delayed steps in due order on one thread, like a controller's work queue:
    nothing sleeps in a request, and steps never race each other."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="kube-standin-controllers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), functools.partial(fn, *args)))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                task = heapq.heappop(self._heap)[2]
            try:
                task()
            except Exception:  # a stand-in bug: reported when the stand-in exits
                self._on_error(traceback.format_exc())


@dataclass
class _JobRule:
    succeed: bool = True
    logs: str | None = None
    seconds: float | None = None
    hold: bool = False


@dataclass
class RecordedRequest:
    """One request as the stand-in received it; ``server`` is "api" or "jobsink"."""

    server: str
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _condition(status: Obj, kind: str) -> Obj:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _set_conditions(status: Obj, updates: dict[str, tuple[str, str | None, str | None]]) -> None:
    """Knative-style conditions, sorted by type; lastTransitionTime moves only when the status does."""
    current = {c["type"]: c for c in status.get("conditions") or []}
    for kind, (value, reason, message) in updates.items():
        before = current.get(kind) or {}
        moved = before.get("status") != value
        cond = {"type": kind, "status": value, "lastTransitionTime": _now() if moved else before["lastTransitionTime"]}
        current[kind] = {**cond, **({"reason": reason} if reason else {}), **({"message": message} if message else {})}
    status["conditions"] = sorted(current.values(), key=lambda c: c["type"])


def _job_conditions(kinds: Iterable[str], reason: str, message: str) -> list[Obj]:
    now = _now()
    return [{"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
             "lastTransitionTime": now} for kind in kinds]


def _owner_ref(obj: Obj, api_version: str, kind: str, block: bool = True) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": block}


def _container_statuses(containers: list[Obj], state: str, started: str) -> list[Obj]:
    now, out = _now(), []
    for index, container in enumerate(containers):
        main = index == 0
        status: Obj = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                       "containerID": f"containerd://{uuid.uuid4().hex}", "restartCount": 0,
                       "ready": state == "running" or (state == "crashloop" and not main),
                       "started": state == "running" or (state == "crashloop" and not main)}
        if state == "running" or (state == "crashloop" and not main):
            status["state"] = {"running": {"startedAt": started}}
        elif state == "crashloop":
            status.update(restartCount=3, state={"waiting": {"reason": "CrashLoopBackOff", "message":
                          f"back-off 40s restarting failed container={container['name']}"}},
                          lastState={"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started,
                                                    "finishedAt": now}})
        else:
            code = 0 if state == "succeeded" else 1
            status["state"] = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                              "startedAt": started, "finishedAt": now}}
        out.append(status)
    return out


def _shape_log(text: str, query: dict[str, str], started: str) -> str:
    lines = text.splitlines(keepends=True)
    if query.get("tailLines"):
        lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) > 0 else []
    if query.get("timestamps") == "true":
        lines = [f"{started[:-1]}.000000000Z {line}" for line in lines]
    data = "".join(lines)
    if query.get("limitBytes"):
        data = data.encode()[:int(query["limitBytes"])].decode(errors="ignore")
    return data


def _child_name(parent: str, suffix: str) -> str:
    """knative.dev/pkg/kmeta.ChildName: parent + suffix, hashed down to 63 characters when longer."""
    longest, head = 63, 63 - 32
    if len(parent) <= longest - len(suffix):
        return parent + suffix
    if head - len(suffix) <= 0:
        digest = hashlib.md5((parent + suffix).encode()).hexdigest()
        name = parent[:head] + digest
        name += suffix[:max(0, longest - len(name))]
        return re.sub(r"[^a-zA-Z0-9]+$", "", name)
    return parent[:head - len(suffix)] + hashlib.md5(parent.encode()).hexdigest() + suffix


def jobsink_job_name(jobsink: str, source: str, event_id: str) -> str:
    """The Job name Knative's job-sink receiver gives an event (cmd/jobsink toJobName): the JobSink's name, a dash,
    and the md5 of source + id, so the name does NOT contain the event id; re-posting an event finds the same Job."""
    return _child_name(f"{jobsink}-", hashlib.md5((source + event_id).encode()).hexdigest())


def _parse_cloudevent(headers: Any, body: bytes) -> Obj:
    """A CloudEvent from an HTTP request in structured or binary mode, as the CloudEvents SDK reads it; ValueError
    for a non-event or one lacking specversion, id, source or type."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == "application/cloudevents+json":
        event = json.loads(body or b"null")
        if not isinstance(event, dict):
            raise ValueError("structured event is not a JSON object")
    elif headers.get("ce-specversion"):
        event = {key.lower()[3:]: value for key, value in headers.items() if key.lower().startswith("ce-")}
        if headers.get("Content-Type"):
            event["datacontenttype"] = headers["Content-Type"]
        if body:
            if not content_type or content_type.endswith("json"):
                event["data"] = json.loads(body)
            else:
                try:
                    event["data"] = body.decode()
                except UnicodeDecodeError:
                    event["data_base64"] = base64.b64encode(body).decode()
    else:
        raise ValueError("message is not a CloudEvent")
    if event.get("specversion") not in ("1.0", "0.3"):
        raise ValueError(f"unsupported specversion {event.get('specversion')!r}")
    for attribute in ("id", "source", "type"):
        if not isinstance(event.get(attribute), str) or not event[attribute]:
            raise ValueError(f"{attribute} is required")
    return event


# -- the stand-in --------------------------------------------------------------------------------------------------
class KubeApiStandIn:
    """The API server stand-in: ``with KubeApiStandIn() as api:`` serves ``api.url`` (give the kubernetes client
    ``client_configuration(api.url)``) and Knative's job-sink receiver at ``api.jobsink_url``.

    Controllers run after ``status_delay`` s (InferenceService conditions Unknown, Job active, JobSink Ready); an
    InferenceService turns Ready ``ready_delay`` s later and a Job finishes ``job_seconds`` s after starting, unless
    a test hook says otherwise. An InferenceService gets a new Knative Revision only when its revision template
    changes, and canaryTrafficPercent splits its traffic as KServe does. Internal failures (stand-in bugs) are
    re-raised on exit.
    """

    def __init__(self, *, ready_delay: float = 0.3, status_delay: float = 0.05, job_seconds: float = 0.3,
                 domain: str = "example.com", resources: Iterable[Resource] = DEFAULT_RESOURCES,
                 history: int = 10_000) -> None:
        self.url = ""
        self.jobsink_url = ""
        self.store = ObjectStore(history)
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self.domain = domain
        self._ready_delay, self._status_delay, self._job_seconds = ready_delay, status_delay, job_seconds
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._by_gk: dict[tuple[str, str], Resource] = {}
        for res in resources:
            self.register_resource(res)
        self._scheduler = _Scheduler(self.errors.append)
        self._stopping = threading.Event()
        self._watch_epoch = 0
        self._servers: list[_Server] = []
        self._fail_next: dict[str, tuple[str, str]] = {}
        self._held: set[tuple[str, str]] = set()
        self._job_rules: dict[str, _JobRule] = {}
        self._job_runs: dict[str, _JobRule] = {}  # by Job uid: the rule its run follows
        self._logs: dict[tuple[str, str], dict[str, str]] = {}  # (namespace, pod) -> container -> text
        self._owner_logs: dict[tuple[str, str], str] = {}  # ("inferenceservices" | "jobs", name) -> text
        self._templates: dict[str, tuple[str, int]] = {}  # InferenceService uid -> (revision template digest, count)
        self._pod_ips = itertools.count(10)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> KubeApiStandIn:
        for role in ("api", "jobsink"):
            server = _Server(self, role)
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                             name=f"kube-standin-{role}").start()
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.jobsink_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self._scheduler.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.store.wake()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._scheduler.stop()

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        if self.errors and exc_type is None:
            raise AssertionError("the Kubernetes stand-in failed internally:\n" + "\n".join(self.errors))

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client_configuration(self.url))

    def register_resource(self, res: Resource) -> None:
        """Serve another resource type (what installing its CRD does)."""
        self._resources[(res.group, res.version, res.plural)] = res
        self._by_gk.setdefault(res.gk, res)

    # -- test hooks ----------------------------------------------------------------------------------------------
    def set_ready_delay(self, seconds: float) -> None:
        self._ready_delay = seconds

    def fail_next(self, resource: str, name: str, reason: str = "RevisionFailed",
                  message: str = "Container failed with: Error: the model did not load") -> None:
        """The next reconcile of InferenceService ``name`` ends Ready=False (and PredictorReady=False) with this
        reason and message, and its new pod crash-loops, instead of turning Ready."""
        if resource != ISVC[1]:
            raise ValueError("fail_next supports inferenceservices; use job_outcome for jobs")
        self._fail_next[name] = (reason, message)

    def hold(self, resource: str, name: str) -> None:
        """Keep InferenceService ``name`` at Ready=Unknown (a revision that never comes up) until release()."""
        self._held.add((resource, name))

    def release(self, resource: str, name: str) -> None:
        self._held.discard((resource, name))
        for obj in self.store.objects(ISVC):
            if obj["metadata"]["name"] == name and resource == ISVC[1]:
                meta = obj["metadata"]
                self._scheduler.call_later(0, self._isvc_settle, meta["namespace"], name, meta["generation"])

    def job_outcome(self, name: str, succeed: bool = True, logs: str | None = None,
                    seconds: float | None = None) -> None:
        """How Jobs named ``name`` (or starting with it; the longest match wins) started from now on end: success
        (Complete) or failure (Failed, BackoffLimitExceeded), after ``seconds``, their pod printing ``logs``."""
        self._job_rules[name] = _JobRule(succeed, logs, seconds)

    def hold_job(self, name: str, logs: str | None = None) -> None:
        """Jobs named ``name`` (or starting with it) run until deleted, release_job(), or their activeDeadlineSeconds."""
        self._job_rules[name] = _JobRule(logs=logs, hold=True)

    def release_job(self, name: str, succeed: bool = True) -> None:
        self._job_rules.pop(name, None)
        for job in self.store.objects(JOBS):
            meta = job["metadata"]
            if meta["name"].startswith(name) and meta["uid"] in self._job_runs:
                self._scheduler.call_later(0, self._job_end, meta["namespace"], meta["name"], meta["uid"],
                                           "Complete" if succeed else "BackoffLimitExceeded")

    def set_logs(self, resource: str, name: str, text: str, container: str | None = None,
                 append: bool = False) -> None:
        """What pods print: for ``resource`` "pods" that pod (its first container unless ``container``); for
        "inferenceservices" or "jobs", the main container of that object's current and future pods. ``append``
        adds to what was printed (what a ``follow=true`` reader then receives) instead of replacing it."""
        with self.store.lock:
            if resource != "pods":
                self._owner_logs[(resource, name)] = self._owner_logs.get((resource, name), "") * append + text
            for pod in self.store.objects(PODS):
                labels, pod_name = pod["metadata"].get("labels") or {}, pod["metadata"]["name"]
                if (resource, name) in (("pods", pod_name), (ISVC[1], labels.get(ISVC_LABEL)),
                                        (JOBS[1], labels.get("job-name"))):
                    main = container or pod["spec"]["containers"][0]["name"]
                    logs = self._logs.setdefault((pod["metadata"]["namespace"], pod_name), {})
                    logs[main] = logs.get(main, "") * append + text
            self.store.wake()

    def break_watches(self) -> None:
        """End every open watch now (as an API server restart or a load balancer timeout does)."""
        self._watch_epoch += 1
        self.store.wake()

    def expire_watch_history(self) -> None:
        """Forget the change history: a watch resuming from an older resourceVersion gets 410 Expired."""
        self.store.compact()

    # -- state, for assertions ---------------------------------------------------------------------------------------
    def resource(self, plural: str, group: str | None = None) -> Resource:
        found = [r for r in self._by_gk.values() if r.plural == plural and group in (None, r.group)]
        if len(found) != 1:
            raise ValueError(f"{plural!r} names {len(found)} registered resources; pass group=")
        return found[0]

    def get_object(self, plural: str, name: str, namespace: str = "default", group: str | None = None) -> Obj | None:
        return self.store.get(self.resource(plural, group).gk, namespace, name)

    def list_objects(self, plural: str, namespace: str | None = None, group: str | None = None,
                     labels: str = "") -> list[Obj]:
        matches = label_selector(labels)
        return [obj for obj in self.store.objects(self.resource(plural, group).gk, namespace)
                if matches(obj["metadata"].get("labels") or {})]

    def seed(self, obj: Obj, namespace: str | None = None) -> Obj:
        """Create ``obj`` as a client would (controllers react to it)."""
        res = next(r for r in self._resources.values() if r.api_version == obj["apiVersion"] and r.kind == obj["kind"])
        return self._create(res, namespace or obj["metadata"].get("namespace") or "default", obj, "stand-in-seed")

    # -- API operations ------------------------------------------------------------------------------------------------
    def _present(self, res: Resource, obj: Obj) -> Obj:
        obj["apiVersion"] = res.api_version
        return obj

    def _check_identity(self, res: Resource, namespace: str, name: str | None, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", f"the object provided is unrecognized (must be of type {res.kind})")
        version, kind, meta = body.get("apiVersion"), body.get("kind"), body.get("metadata") or {}
        if not version or not kind:
            raise ApiError(400, "BadRequest", f"Object 'Kind' is missing in {json.dumps(body)[:200]}")
        if version != res.api_version:
            raise ApiError(400, "BadRequest", f"the API version in the data ({version}) does not match the expected "
                           f"API version ({res.api_version})")
        if kind != res.kind:
            raise ApiError(400, "BadRequest", f"the kind in the data ({kind}) does not match the expected kind "
                           f"({res.kind})")
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent "
                           "on the request")
        if name is not None and meta.get("name") != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the name on "
                           f"the URL ({name})")

    def _write(self, res: Resource, obj: Obj, old: Obj | None) -> Obj:
        if res.gk in _STATUS_STRUCT:
            obj.setdefault("status", {})
        stored = self.store.put(res.gk, obj)
        meta = stored["metadata"]
        generation_moved = old is None or old["metadata"].get("generation") != meta.get("generation")
        if res.gk == ISVC and generation_moved and not meta.get("deletionTimestamp"):
            self._scheduler.call_later(self._status_delay, self._isvc_progress, meta["namespace"], meta["name"],
                                       meta["generation"])
        elif res.gk == JOBSINKS and generation_moved:
            self._scheduler.call_later(self._status_delay, self._jobsink_ready, meta["namespace"], meta["name"],
                                       meta["generation"])
        elif res.gk == JOBS and old is None:
            self._scheduler.call_later(self._status_delay, self._job_start, meta["namespace"], meta["name"],
                                       meta["uid"])
        return self._present(res, stored)

    def _default(self, res: Resource, obj: Obj) -> None:
        """The Job defaults the API server fills in (each only when unset, as on every write)."""
        if res.gk != JOBS:
            return
        spec, uid, name = obj.setdefault("spec", {}), obj["metadata"]["uid"], obj["metadata"]["name"]
        for key, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1), ("suspend", False),
                           ("completionMode", "NonIndexed"), ("podReplacementPolicy", "TerminatingOrFailed"),
                           ("manualSelector", False)):
            spec.setdefault(key, value)
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
        for key, value in (("batch.kubernetes.io/controller-uid", uid), ("batch.kubernetes.io/job-name", name),
                           ("controller-uid", uid), ("job-name", name)):
            labels.setdefault(key, value)

    def _create(self, res: Resource, namespace: str, body: Obj, manager: str, dry_run: bool = False) -> Obj:
        self._check_identity(res, namespace, None, body)
        meta_in = body.get("metadata") or {}
        name = meta_in.get("name") or (_generate_name(meta_in["generateName"]) if meta_in.get("generateName") else "")
        if not name:
            raise _invalid(res, "", "metadata.name", "Required value: name or generateName is required")
        with self.store.lock:
            if self.store.get(res.gk, namespace, name) is not None:
                raise ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                               {"name": name, "group": res.group, "kind": res.plural})
            obj = copy.deepcopy(body)
            obj.pop("status", None)  # status is the controllers' (status subresource)
            meta = obj.setdefault("metadata", {})
            for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "deletionTimestamp", "selfLink"):
                meta.pop(key, None)
            meta.update(name=name, namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                        managedFields=[_managed(manager, "Update", res, _leaves(body))])
            self._default(res, obj)
            _validate(res, obj, None)
            return self._present(res, obj) if dry_run else self._write(res, obj, None)

    def _apply(self, res: Resource, namespace: str, name: str, body: Obj, manager: str, force: bool,
               dry_run: bool) -> tuple[int, Obj]:
        """Server-side apply: create or update ``name`` with the fields ``body`` sets, owned by ``manager``. Fields
        the manager applied before and leaves out now are removed; others' fields stay; a value another manager owns
        is a 409 unless ``force``. An apply that changes nothing writes nothing (no new resourceVersion, no event)."""
        self._check_identity(res, namespace, name, body)
        if body["metadata"].get("managedFields") is not None:
            raise ApiError(400, "BadRequest", "metadata.managedFields must be nil")
        applied = _leaves(body)
        with self.store.lock:
            existing = self.store.get(res.gk, namespace, name)
            obj = copy.deepcopy(existing) if existing else {"apiVersion": res.api_version, "kind": res.kind, "metadata": {
                "name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now()}}
            mine: set[Path] = set()
            entries: list[Obj | None] = []  # None marks where this manager's entry goes
            others: set[Path] = set()
            for entry in obj["metadata"].get("managedFields") or []:
                paths = _paths(entry.get("fieldsV1") or {})
                if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
                    mine = paths
                    entries.append(None)
                    continue
                if not entry.get("subresource"):
                    clashing = sorted(p for p in paths if p in applied and _dig(existing, p, _MISSING) != applied[p])
                    if clashing and not force:
                        raise _conflict(res, name, entry.get("manager", ""), clashing)
                    paths -= set(clashing)
                    entry = {**entry, "fieldsV1": _fields_v1(paths)}
                    others |= paths
                if paths or entry.get("subresource"):
                    entries.append(entry)
            for path in mine - applied.keys() - others:
                _del_path(obj, path)
            for path, value in applied.items():
                _set_path(obj, path, value)
            meta = obj["metadata"]
            entry = _managed(manager, "Apply", res, applied)
            entries = entries if None in entries else [*entries, None]
            meta["managedFields"] = [entry if item is None else item for item in entries]
            meta["generation"] = 1 if existing is None else (
                existing["metadata"].get("generation", 1) + (_content(obj) != _content(existing)))
            self._default(res, obj)
            _validate(res, obj, existing)
            if existing is not None and _timeless(obj) == _timeless(existing):
                return 200, self._present(res, existing)
            code = 201 if existing is None else 200
            return code, self._present(res, obj) if dry_run else self._write(res, obj, existing)

    def _delete(self, res: Resource, namespace: str, name: str, policy: str | None,
                dry_run: bool) -> tuple[Obj, dict[str, str]]:
        """Delete as the API server does: objects with finalizers only get a deletionTimestamp; Jobs orphan their
        pods unless told Background/Foreground (with a Warning header); garbage collection follows asynchronously."""
        headers: dict[str, str] = {}
        with self.store.lock:
            obj = self.store.get(res.gk, namespace, name)
            if obj is None:
                raise _not_found(res, name)
            if policy is None:
                policy = "Orphan" if res.gk == JOBS else "Background"
                if res.gk == JOBS:
                    headers["Warning"] = JOB_DELETE_WARNING
            if policy not in ("Orphan", "Background", "Foreground"):
                raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported'
                               f' value: "{policy}": supported values: "Foreground", "Background", "Orphan"')
            if dry_run:
                return self._present(res, obj), headers
            meta, uid = obj["metadata"], obj["metadata"]["uid"]
            finalizers = [*meta.get("finalizers", []), *(["foregroundDeletion"] if policy == "Foreground" else [])]
            if not finalizers:
                removed = self._remove(res, namespace, name, policy)
                return (self._present(res, removed) if res.return_deleted else
                        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details":
                         {"name": name, "group": res.group, "kind": res.plural, "uid": uid}}), headers
            meta["finalizers"] = list(dict.fromkeys(finalizers))
            meta.setdefault("deletionTimestamp", _now())
            meta.setdefault("deletionGracePeriodSeconds", 0)
            stored = self._write(res, obj, obj)
            if policy == "Orphan":
                self._orphan(uid)
            if policy == "Foreground":
                self._scheduler.call_later(self._status_delay, self._foreground, res, namespace, name, uid)
            if res.gk == ISVC:
                self._scheduler.call_later(self._status_delay, self._finalize, res, namespace, name, uid, ISVC_FINALIZER)
            return stored, headers

    def _remove(self, res: Resource, namespace: str, name: str, policy: str) -> Obj:
        removed = self.store.remove(res.gk, namespace, name) or {}
        if removed and policy == "Orphan":
            self._orphan(removed["metadata"]["uid"])
        elif removed:
            self._scheduler.call_later(0.02, self._collect, removed["metadata"]["uid"])
        return removed

    def _dependents(self, uid: str) -> list[tuple[Resource, Obj]]:
        return [(self._by_gk[gk], obj) for gk, obj in self.store.everything()
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def _collect(self, uid: str) -> None:
        """The garbage collector: dependents of a deleted owner go too (in the background)."""
        with self.store.lock:
            for res, obj in self._dependents(uid):
                self._remove(res, obj["metadata"]["namespace"], obj["metadata"]["name"], "Background")

    def _orphan(self, uid: str) -> None:
        for res, obj in self._dependents(uid):
            refs = [ref for ref in obj["metadata"]["ownerReferences"] if ref.get("uid") != uid]
            obj["metadata"]["ownerReferences"] = refs
            if not refs:
                del obj["metadata"]["ownerReferences"]
            self._write(res, obj, obj)

    def _foreground(self, res: Resource, namespace: str, name: str, uid: str) -> None:
        self._collect(uid)
        self._finalize(res, namespace, name, uid, "foregroundDeletion")

    def _finalize(self, res: Resource, namespace: str, name: str, uid: str, finalizer: str) -> None:
        with self.store.lock:
            obj = self.store.get(res.gk, namespace, name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            meta = obj["metadata"]
            meta["finalizers"] = [f for f in meta.get("finalizers", []) if f != finalizer]
            if meta["finalizers"] or not meta.get("deletionTimestamp"):
                self._write(res, obj, obj)
            else:
                self._remove(res, namespace, name, "Background")

    def _status_write(self, res: Resource, obj: Obj, manager: str) -> Obj:
        entry = _managed(manager, "Update", res, [("status",)], "status")
        entries = obj["metadata"].setdefault("managedFields", [])
        index = next((i for i, e in enumerate(entries) if e.get("manager") == manager), len(entries))
        entries[index:index + 1] = [entry]
        return self._write(res, obj, obj)

    # -- InferenceService controller (KServe on Knative) ----------------------------------------------------------------
    def _isvc_progress(self, namespace: str, name: str, generation: int) -> None:
        """A new generation: Knative has a new Revision that is not ready yet, so everything is Unknown."""
        res = self._by_gk[ISVC]
        with self.store.lock:
            obj = self.store.get(ISVC, namespace, name)
            meta = (obj or {}).get("metadata") or {}
            if obj is None or meta.get("generation") != generation or meta.get("deletionTimestamp"):
                return
            if ISVC_FINALIZER not in meta.setdefault("finalizers", []):
                meta["finalizers"].append(ISVC_FINALIZER)
            status = obj.setdefault("status", {})
            waiting = f'Configuration "{name}-predictor" is waiting for a Revision to become ready.'
            kinds = ["LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady", "Ready"]
            if not status.get("url"):
                kinds += ["IngressReady", "PredictorRouteReady"]
            _set_conditions(status, {kind: ("Unknown", "RevisionMissing", waiting) for kind in kinds})
            active = _dig(status, ("modelStatus", "states", "activeModelState"))
            status.update(observedGeneration=generation, modelStatus={
                "states": {"targetModelState": "Pending", **({"activeModelState": active} if active else {})},
                "transitionStatus": "InProgress"},
                deploymentMode=(meta.get("annotations") or {}).get("serving.kserve.io/deploymentMode", "Knative"))
            predictor = status.setdefault("components", {}).setdefault("predictor", {})
            predictor["latestCreatedRevision"] = self._isvc_revision(obj)
            self._status_write(res, obj, "kserve-controller")
        if (ISVC[1], name) not in self._held:
            self._scheduler.call_later(self._ready_delay, self._isvc_settle, namespace, name, generation)

    def _isvc_revision(self, obj: Obj) -> str:
        """The Knative Revision a generation runs: a new one only when the revision template changed — the
        predictor less canaryTrafficPercent (a traffic setting), with the labels and annotations KServe copies
        onto the template. So a canary's promotion keeps its Revision and its pods."""
        meta = obj["metadata"]
        predictor = {k: v for k, v in (_dig(obj, ("spec", "predictor"), {}) or {}).items() if k != "canaryTrafficPercent"}
        digest = hashlib.sha256(json.dumps([predictor, meta.get("labels"), meta.get("annotations")],
                                           sort_keys=True).encode()).hexdigest()
        known, count = self._templates.get(meta["uid"], ("", 0))
        if digest != known:
            count += 1
            self._templates[meta["uid"]] = (digest, count)
        return f"{meta['name']}-predictor-{count:05d}"

    def _isvc_settle(self, namespace: str, name: str, generation: int) -> None:
        """The Revision came up (Ready True, URLs, a running pod) or failed (fail_next: Ready False)."""
        res = self._by_gk[ISVC]
        with self.store.lock:
            obj = self.store.get(ISVC, namespace, name)
            meta = (obj or {}).get("metadata") or {}
            status = (obj or {}).get("status") or {}
            if (obj is None or meta.get("generation") != generation or meta.get("deletionTimestamp")
                    or (ISVC[1], name) in self._held or status.get("observedGeneration") != generation
                    or _condition(status, "Ready").get("status") != "Unknown"):
                return
            revision = status["components"]["predictor"]["latestCreatedRevision"]
            active = _dig(status, ("modelStatus", "states", "activeModelState"))
            if name in self._fail_next:
                reason, message = self._fail_next.pop(name)
                _set_conditions(status, {kind: ("False", reason, message) for kind in (
                    "LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady", "Ready")})
                status["modelStatus"] = {
                    "states": {"targetModelState": "FailedToLoad", **({"activeModelState": active} if active else {})},
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": message}}
                self._status_write(res, obj, "kserve-controller")
                self._isvc_pod(namespace, obj, revision, message)
                return
            internal = f"http://{name}-predictor.{namespace}.svc.cluster.local"
            _set_conditions(status, {kind: ("True", None, None) for kind in (
                "IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady",
                "PredictorRouteReady", "Ready")})
            status.update(url=f"http://{name}.{namespace}.{self.domain}", address={"url": internal}, modelStatus={
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}, "transitionStatus": "UpToDate",
                "copies": {"failedCopies": 0, "totalCopies": 1}})
            predictor = status["components"]["predictor"]
            previous = self._isvc_traffic(predictor, revision, _dig(obj, ("spec", "predictor", "canaryTrafficPercent")))
            predictor.update(latestReadyRevision=revision, address={"url": internal},
                             url=f"http://{name}-predictor.{namespace}.{self.domain}")
            self._status_write(res, obj, "kserve-controller")
            self._isvc_pod(namespace, obj, revision, None, previous)

    @staticmethod
    def _isvc_traffic(predictor: Obj, revision: str, canary: int | None) -> str | None:
        """KServe's split (ksvc_reconciler.go, PropagateStatus): with canaryTrafficPercent, the new Revision takes
        that share and the last Revision that had all the traffic (latestRolledoutRevision) the rest; a Revision
        that gets 100% becomes the rolled-out one. Returns the Revision that keeps a share beside ``revision``."""
        rolled = predictor.get("latestRolledoutRevision")
        if canary is not None and canary < 100 and rolled and rolled != revision:
            predictor["traffic"] = [{"revisionName": revision, "percent": canary, "latestRevision": True},
                                    {"revisionName": rolled, "percent": 100 - canary, "latestRevision": False,
                                     "tag": "prev"}]
            return str(rolled)
        predictor["traffic"] = [{"revisionName": revision, "percent": 100, "latestRevision": True}]
        if rolled != revision:
            if rolled:
                predictor["previousRolledoutRevision"] = rolled
            predictor["latestRolledoutRevision"] = revision
        return None

    def _isvc_pod(self, namespace: str, isvc: Obj, revision: str, failure: str | None, keep: str | None = None) -> None:
        """The revision's pod (kserve-container + Knative's queue-proxy), labelled with the InferenceService's labels
        as KServe's revision template is; a ready revision replaces the pods of every other but ``keep`` (the one
        that keeps a share of the traffic)."""
        name = isvc["metadata"]["name"]
        for pod in self.store.objects(PODS, namespace):
            labels = pod["metadata"].get("labels") or {}
            if labels.get(ISVC_LABEL) == name and labels.get("serving.knative.dev/revision") not in (revision, keep) \
                    and not failure:
                self._remove(self._by_gk[PODS], namespace, pod["metadata"]["name"], "Background")
        if any((pod["metadata"].get("labels") or {}).get("serving.knative.dev/revision") == revision
               for pod in self.store.objects(PODS, namespace)):
            return
        predictor = _dig(isvc, ("spec", "predictor"), {}) or {}
        image = _dig(predictor, ("containers",), [{}])[0].get("image") or \
            f"kserve/{_dig(predictor, ('model', 'modelFormat', 'name'), 'custom')}server:stand-in"
        containers = [{"name": "kserve-container", "image": image, "ports": [{"containerPort": 8080,
                                                                              "protocol": "TCP"}]},
                      {"name": "queue-proxy", "image": "gcr.io/knative-releases/knative.dev/serving/cmd/queue"}]
        text = self._owner_logs.get((ISVC[1], name)) or (f"ERROR: {failure}\n" if failure else
                                                         "INFO: Started server process [1]\nINFO: model loaded\n"
                                                         "INFO: Uvicorn running on http://0.0.0.0:8080\n")
        labels = {**(isvc["metadata"].get("labels") or {}), ISVC_LABEL: name, "component": "predictor", "app": revision,
                  "serving.knative.dev/revision": revision, "serving.knative.dev/service": f"{name}-predictor",
                  "serving.knative.dev/configuration": f"{name}-predictor"}
        self._new_pod(namespace, _generate_name(f"{revision}-deployment-{_random(10)}-"),
                      labels, {"containers": containers, "restartPolicy": "Always"},
                      _owner_ref(isvc, self._by_gk[ISVC].api_version, "InferenceService"),
                      "crashloop" if failure else "running",
                      {"kserve-container": text, "queue-proxy": '{"severity":"INFO","message":"Starting queue-proxy"}\n'})

    def _new_pod(self, namespace: str, name: str, labels: dict[str, str], spec: Obj, owner: Obj, state: str,
                 logs: dict[str, str]) -> Obj:
        now = _now()
        spec = {**spec, "nodeName": "stand-in-node", "serviceAccountName": spec.get("serviceAccountName", "default")}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": now, "labels": labels,
            "ownerReferences": [owner]}, "spec": spec,
            "status": {"phase": "Running", "podIP": f"10.244.0.{next(self._pod_ips) % 250}", "startTime": now,
                       "hostIP": "192.168.0.2", "qosClass": "BestEffort"}}
        self._set_pod_state(pod, state)
        self._logs[(namespace, name)] = dict(logs)
        return self._write(self._by_gk[PODS], pod, None)

    def _set_pod_state(self, pod: Obj, state: str) -> None:
        status, ready = pod["status"], "True" if state == "running" else "False"
        status["phase"] = {"succeeded": "Succeeded", "failed": "Failed"}.get(state, "Running")
        status["containerStatuses"] = _container_statuses(pod["spec"]["containers"], state, status["startTime"])
        status["conditions"] = [{"type": kind, "status": value, "lastTransitionTime": status["startTime"]}
                                for kind, value in (("PodScheduled", "True"), ("Initialized", "True"),
                                                    ("ContainersReady", ready), ("Ready", ready))]

    # -- JobSink controller ------------------------------------------------------------------------------------------
    def _jobsink_ready(self, namespace: str, name: str, generation: int) -> None:
        with self.store.lock:
            obj = self.store.get(JOBSINKS, namespace, name)
            if obj is None or obj["metadata"].get("generation") != generation:
                return
            status = obj.setdefault("status", {})
            url = f"{self.jobsink_url}/{namespace}/{name}"
            _set_conditions(status, {"Addressable": ("True", None, None), "Ready": ("True", None, None)})
            status.update(observedGeneration=generation, address={"name": "http", "url": url},
                          addresses=[{"name": "http", "url": url}])
            self._status_write(self._by_gk[JOBSINKS], obj, "eventing-controller")

    # -- Job controller ----------------------------------------------------------------------------------------------
    def _job_rule(self, name: str) -> _JobRule:
        keys = [key for key in list(self._job_rules) if name.startswith(key)]
        return self._job_rules[max(keys, key=len)] if keys else _JobRule()

    def _job_start(self, namespace: str, name: str, uid: str) -> None:
        """The Job controller starts the run: a pod, ``status.active``, ``startTime``; its end is scheduled from
        the job_outcome/hold_job rule and ``spec.activeDeadlineSeconds``."""
        res = self._by_gk[JOBS]
        with self.store.lock:
            job = self.store.get(JOBS, namespace, name)
            if job is None or job["metadata"]["uid"] != uid or _dig(job, ("status", "startTime")):
                return
            rule = self._job_runs[uid] = self._job_rule(name)
            job.setdefault("status", {}).update(active=1, ready=1, startTime=_now(), terminating=0,
                                                uncountedTerminatedPods={})
            self._status_write(res, job, "job-controller")
            self._job_pod(namespace, job, "running")
        deadline = job["spec"].get("activeDeadlineSeconds")
        seconds = self._job_seconds if rule.seconds is None else rule.seconds
        if deadline is not None and (rule.hold or seconds > deadline):
            self._scheduler.call_later(deadline, self._job_end, namespace, name, uid, "DeadlineExceeded")
        elif not rule.hold:
            self._scheduler.call_later(seconds, self._job_end, namespace, name, uid,
                                       "Complete" if rule.succeed else "BackoffLimitExceeded")

    def _job_pod(self, namespace: str, job: Obj, state: str) -> Obj:
        meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
        rule = self._job_runs.get(meta["uid"]) or _JobRule()
        default = f"{meta['name']}: started\n" + (f"{meta['name']}: done\n" if rule.succeed else
                                                   "Error: the run failed (exit code 1)\n")
        text = rule.logs if rule.logs is not None else self._owner_logs.get((JOBS[1], meta["name"]), default)
        main = template["spec"]["containers"][0]["name"]
        return self._new_pod(namespace, _generate_name(f"{meta['name']}-"), template["metadata"]["labels"],
                             template["spec"], _owner_ref(job, "batch/v1", "Job"), state, {main: text})

    def _job_end(self, namespace: str, name: str, uid: str, outcome: str) -> None:
        """Complete (succeeded=1), or Failed with BackoffLimitExceeded (one failed pod per allowed attempt) or
        DeadlineExceeded (active pods deleted, so their logs are gone); then ttlSecondsAfterFinished applies."""
        res, pods_res = self._by_gk[JOBS], self._by_gk[PODS]
        with self.store.lock:
            job = self.store.get(JOBS, namespace, name)
            status = (job or {}).get("status") or {}
            if job is None or job["metadata"]["uid"] != uid or any(
                    _condition(status, kind).get("status") == "True" for kind in ("Complete", "Failed")):
                return
            pods = [pod for pod in self.store.objects(PODS, namespace)
                    if any(ref["uid"] == uid for ref in pod["metadata"].get("ownerReferences") or [])]
            status.pop("active", None)  # zero counts are omitted, as the API server's JSON does
            status["ready"] = 0
            if outcome == "Complete":
                for pod in pods:
                    self._set_pod_state(pod, "succeeded")
                    self._write(pods_res, pod, pod)
                status.update(succeeded=1, completionTime=_now(), conditions=_job_conditions(
                    ("SuccessCriteriaMet", "Complete"), "CompletionsReached", "Reached expected number of succeeded pods"))
            elif outcome == "DeadlineExceeded":
                for pod in pods:
                    self._remove(pods_res, namespace, pod["metadata"]["name"], "Background")
                status.update(failed=1, conditions=_job_conditions(
                    ("FailureTarget", "Failed"), "DeadlineExceeded", "Job was active longer than specified deadline"))
            else:
                for pod in pods:
                    self._set_pod_state(pod, "failed")
                    self._write(pods_res, pod, pod)
                retries = int(job["spec"].get("backoffLimit", 6))
                for _ in range(retries):  # the retried attempts, failed too (without the real backoff delays)
                    self._job_pod(namespace, job, "failed")
                status.update(failed=retries + 1, conditions=_job_conditions(
                    ("FailureTarget", "Failed"), "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            self._status_write(res, job, "job-controller")
            self._job_runs.pop(uid, None)
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            self._scheduler.call_later(ttl, self._ttl_delete, namespace, name, uid)

    def _ttl_delete(self, namespace: str, name: str, uid: str) -> None:
        with self.store.lock:
            job = self.store.get(JOBS, namespace, name)
            if job is not None and job["metadata"]["uid"] == uid:
                self._remove(self._by_gk[JOBS], namespace, name, "Background")

    # -- HTTP: the API server -----------------------------------------------------------------------------------------
    def _serve_api(self, h: _Handler, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        parts = [unquote(part) for part in path.strip("/").split("/") if part]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _no_resource(path)
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            if len(rest) == 2 and group == "" and method == "GET":  # every namespace exists here
                return h.send_json(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": rest[1]},
                                         "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
            namespace, rest = rest[1], rest[2:]
        res = self._resources.get((group, version, rest[0])) if 1 <= len(rest) <= 3 else None
        if res is None:
            raise _no_resource(f"{rest[0] if rest else path} in {group or 'core'}/{version}")
        name, sub = (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        dry_run = query.get("dryRun") == "All"
        if sub is not None:
            if method == "GET" and sub == "log" and res.gk == PODS and namespace:
                return self._pod_log(h, namespace, name or "", query)
            if method == "GET" and sub == "status" and namespace:
                return h.send_json(200, self._get(res, namespace, name or ""))
            raise _no_resource(f"{res.qualified}/{sub}")
        if name is None:
            if method == "GET" and query.get("watch") in ("true", "1"):
                return self._watch(h, res, namespace, query)
            if method == "GET":
                return h.send_json(200, self._list(res, namespace, query))
            if method == "POST" and namespace:
                manager = query.get("fieldManager") or (h.headers.get("User-Agent") or "unknown").split("/")[0]
                return h.send_json(201, self._create(res, namespace, _parse_body(raw), manager, dry_run))
        elif namespace is None:
            raise _no_resource(f"cluster-scoped {res.qualified}")
        elif method == "GET":
            return h.send_json(200, self._get(res, namespace, name))
        elif method == "PATCH":
            content_type = (h.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != APPLY_PATCH:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                               f"accepted media types include: {APPLY_PATCH} (the stand-in implements server-side "
                               f"apply only; got {content_type or 'no Content-Type'})")
            if not query.get("fieldManager"):
                raise ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                               "is required for apply patch", {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                                   {"reason": "FieldValueRequired", "message": "Required value: is required for apply "
                                    "patch", "field": "fieldManager"}]})
            code, obj = self._apply(res, namespace, name, _parse_body(raw), query["fieldManager"],
                                    query.get("force") == "true", dry_run)
            return h.send_json(code, obj)
        elif method == "DELETE":
            options = (_parse_body(raw) if raw.strip() else None) or {}
            policy = query.get("propagationPolicy") or options.get("propagationPolicy")
            orphan = query.get("orphanDependents") or str(options.get("orphanDependents", "")).lower()
            policy = policy or {"true": "Orphan", "false": "Background"}.get(orphan)
            body, headers = self._delete(res, namespace, name, policy, dry_run or "All" in str(options.get("dryRun")))
            return h.send_json(200, body, headers)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource "
                       f"(stand-in: {method} is not implemented; it serves apply, get, list, watch, create, delete)")

    def _get(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.store.get(res.gk, namespace, name)
        if obj is None:
            raise _not_found(res, name)
        return self._present(res, obj)

    def _list(self, res: Resource, namespace: str | None, query: dict[str, str]) -> Obj:
        labels_ok, fields_ok = label_selector(query.get("labelSelector", "")), field_selector(
            res, query.get("fieldSelector", ""))
        with self.store.lock:
            items = [self._present(res, obj) for obj in self.store.objects(res.gk, namespace)
                     if labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj)]
            version = self.store.resource_version
        if res.group in _BUILTIN_GROUPS:
            items = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
        return {"apiVersion": res.api_version, "kind": f"{res.kind}List",
                "metadata": {"resourceVersion": str(version)}, "items": items}

    def _watch(self, h: _Handler, res: Resource, namespace: str | None, query: dict[str, str]) -> None:
        """A watch: the current objects as ADDED (none when resuming from a resourceVersion), then live changes;
        an object leaving or entering the selector arrives as DELETED / ADDED. A resourceVersion older than the
        history is an ERROR event with a 410 Status. Ends after timeoutSeconds, with a BOOKMARK if allowed."""
        labels_ok, fields_ok = label_selector(query.get("labelSelector", "")), field_selector(
            res, query.get("fieldSelector", ""))

        def matches(obj: Obj | None) -> bool:
            return obj is not None and namespace in (None, obj["metadata"]["namespace"]) and \
                labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj)

        since = query.get("resourceVersion") or "0"
        if not since.isdigit():
            raise ApiError(400, "BadRequest", f'resourceVersion: Invalid value: "{since}": must be an integer')
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        deadline = time.monotonic() + timeout if timeout else None
        bookmarks, epoch = query.get("allowWatchBookmarks") == "true", self._watch_epoch
        with self.store.lock:
            position, current = int(since), self.store.resource_version
            initial = [obj for obj in self.store.objects(res.gk, namespace) if matches(obj)] if position == 0 else []
            expired = 0 < position < self.store.compacted
            position = current if position == 0 else position
        h.start_chunked("application/json")

        def send(kind: str, obj: Obj) -> None:
            h.write_chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if expired:
            send("ERROR", ApiError(410, "Expired", f"too old resource version: {since} ({current})").status())
            return h.end_chunked()
        for obj in initial:
            send("ADDED", self._present(res, obj))
        if bookmarks and query.get("sendInitialEvents") == "true":
            send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version, "metadata": {
                "resourceVersion": str(position), "annotations": {"k8s.io/initial-events-end": "true"}}})
        while not self._stopping.is_set() and epoch == self._watch_epoch:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            for event in self.store.events_after(position, min(0.25, remaining or 0.25)):
                position = event.rv
                if event.gk != res.gk:
                    continue
                if event.type == "DELETED":
                    kind = "DELETED" if matches(event.obj) else None
                else:
                    now_in, was_in = matches(event.obj), event.type == "MODIFIED" and matches(event.old)
                    kind = "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else None
                if kind:
                    send(kind, self._present(res, copy.deepcopy(event.obj)))
        if bookmarks and not self._stopping.is_set():
            send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": str(position)}})
        h.end_chunked()

    def _pod_log(self, h: _Handler, namespace: str, name: str, query: dict[str, str]) -> None:
        """Pod logs as the kubelet serves them: text/plain; a pod with several containers needs ``container``."""
        pod = self.store.get(PODS, namespace, name)
        if pod is None:
            raise _not_found(self._by_gk[PODS], name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or (names[0] if len(names) == 1 else "")
        if not container:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: "
                           f"[{' '.join(names)}]")
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        status = next((s for s in (pod.get("status") or {}).get("containerStatuses", []) if s["name"] == container), {})
        waiting, previous = _dig(status, ("state", "waiting")), _dig(status, ("lastState", "terminated"))
        if waiting and not previous:
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: '
                           f"{waiting.get('reason', 'ContainerCreating')}")
        if query.get("previous") == "true" and not previous:
            raise ApiError(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
        started = (pod.get("status") or {}).get("startTime") or pod["metadata"]["creationTimestamp"]
        text = self._logs.get((namespace, name), {}).get(container, "")
        if query.get("follow") != "true":
            return h.send_body(200, _shape_log(text, query, started).encode(), "text/plain")
        h.start_chunked("text/plain")
        h.write_chunk(_shape_log(text, query, started).encode())
        sent = len(text)
        while not self._stopping.is_set():
            with self.store.lock:
                current, version = self.store.get(PODS, namespace, name), self.store.resource_version
                text = self._logs.get((namespace, name), {}).get(container, "")
            if len(text) > sent:
                h.write_chunk(_shape_log(text[sent:], {"timestamps": query.get("timestamps", "")}, started).encode())
                sent = len(text)
            if current is None or _dig(current, ("status", "phase")) in ("Succeeded", "Failed"):
                break
            self.store.events_after(version, 0.25)  # woken by any change, set_logs() included
        h.end_chunked()

    # -- HTTP: Knative Eventing's job-sink receiver -------------------------------------------------------------------------
    def _serve_jobsink(self, h: _Handler, method: str, raw: bytes) -> None:
        """knative.dev/eventing cmd/jobsink: POST /{namespace}/{jobsink} with a CloudEvent creates one Job per
        (source, id) and answers 202 with a relative Location; GET on it is 202 running, 200 Complete, 400 Failed.
        Bodies are empty and every client error is a bare 400 (an unknown JobSink included), as in Knative."""
        parts = h.path.removesuffix("/").split("/")  # the raw request URI, as Knative splits it
        if method == "GET":
            return self._jobsink_status(h, parts)
        if method != "POST" or len(parts) != 3:
            return h.send_body(400, b"")
        namespace, sink_name = parts[1], parts[2]
        with self.store.lock:
            sink = self.store.get(JOBSINKS, namespace, sink_name)
            if sink is None:
                return h.send_body(400, b"")
            try:
                event = _parse_cloudevent(h.headers, raw)
            except ValueError:
                return h.send_body(400, b"")
            job_name = jobsink_job_name(sink_name, event["source"], event["id"])
            location = {"Location": f"/namespaces/{namespace}/name/{sink_name}/sources/{event['source']}/ids/"
                                    f"{event['id']}"}
            selector = label_selector(f"{JOB_SINK_ID_LABEL}={job_name},{JOB_SINK_NAME_LABEL}={sink_name}")
            if any(selector(job["metadata"].get("labels") or {}) for job in self.store.objects(JOBS, namespace)):
                return h.send_body(202, b"", headers=location)
            job = self._jobsink_job(sink, namespace, job_name)
            try:
                created = self._create(self._by_gk[JOBS], namespace, job, "job-sink")
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    return h.send_body(500, b"", headers={"Reason": exc.message})
                created = self.store.get(JOBS, namespace, job_name) or {}
            secret = {"apiVersion": "v1", "kind": "Secret", "immutable": True, "type": "Opaque", "metadata": {
                "name": job_name, "labels": {JOB_SINK_ID_LABEL: job_name, JOB_SINK_NAME_LABEL: sink_name},
                "ownerReferences": [_owner_ref(created, "batch/v1", "Job", block=False)]},
                "data": {"event": base64.b64encode(json.dumps(event).encode()).decode()}}
            try:
                self._create(self._by_gk[SECRETS], namespace, secret, "job-sink")
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    return h.send_body(500, b"", headers={"Reason": exc.message})
        return h.send_body(202, b"", headers=location)

    def _jobsink_job(self, sink: Obj, namespace: str, job_name: str) -> Obj:
        """The JobSink's spec.job, defaulted and given the event: labels, owner, the event Secret mounted at
        /etc/jobsink-event (K_EVENT_PATH) and KNATIVE_EXECUTION_MODE=batch, as the receiver builds it."""
        template = copy.deepcopy(_dig(sink, ("spec", "job"), {}) or {})
        meta = {k: v for k, v in (template.get("metadata") or {}).items() if k in ("labels", "annotations")}
        labels = meta.setdefault("labels", {})
        labels.update({JOB_SINK_ID_LABEL: job_name, JOB_SINK_NAME_LABEL: sink["metadata"]["name"]})
        meta.update(name=job_name, namespace=namespace, ownerReferences=[
            {**_owner_ref(sink, "sinks.knative.dev/v1alpha1", "jobsinks", block=False)}])
        pod = _dig(template, ("spec", "template", "spec"), {}) or {}
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            env = container.setdefault("env", [])
            if not any(item.get("name") == "KNATIVE_EXECUTION_MODE" for item in env):
                env.append({"name": "KNATIVE_EXECUTION_MODE", "value": "batch"})
        for container in pod.get("containers", []):
            mounts = container.setdefault("volumeMounts", [])
            mount = next((m for m in mounts if m.get("name") == "jobsink-event"), None)
            if mount is None:
                mount = {"name": "jobsink-event", "readOnly": True, "mountPath": "/etc/jobsink-event"}
                mounts.append(mount)
            container["env"].append({"name": "K_EVENT_PATH", "value": mount["mountPath"]})
        if not any(v.get("name") == "jobsink-event" for v in pod.get("volumes", [])):
            pod.setdefault("volumes", []).append({"name": "jobsink-event", "secret": {"secretName": job_name}})
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template.get("spec") or {}}

    def _jobsink_status(self, h: _Handler, parts: list[str]) -> None:
        if len(parts) != 9:
            return h.send_body(400, b"")
        namespace, sink_name, source, event_id = parts[2], parts[4], parts[6], parts[8]
        if self.store.get(JOBSINKS, namespace, sink_name) is None:
            return h.send_body(400, b"")
        job = self.store.get(JOBS, namespace, jobsink_job_name(sink_name, source, event_id))
        if job is None:
            return h.send_body(500, b"")
        status = job.get("status") or {}
        for kind, code in (("Failed", 400), ("Complete", 200)):
            if _condition(status, kind).get("status") == "True":
                return h.send_body(code, b"", headers={"Reason": kind})
        return h.send_body(202, b"", headers={"Location": "/".join(parts)})


def _parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: KubeApiStandIn, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.standin, self.role = standin, role

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its keep-alive connection is normal; anything else is a stand-in bug."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            self.standin.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch streams, as the client expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the requests are in KubeApiStandIn.requests."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        standin, split = self.server.standin, urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        standin.requests.append(RecordedRequest(self.server.role, method, split.path, query,
                                                self.headers.get("Content-Type"), raw, dict(self.headers.items())))
        try:
            if self.server.role == "jobsink":
                standin._serve_jobsink(self, method, raw)
            else:
                standin._serve_api(self, method, split.path, query, raw)
        except ApiError as exc:
            self.send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (e.g. Watch.stop())
            self.close_connection = True
        except Exception:
            standin.errors.append(traceback.format_exc())
            self.send_json(500, ApiError(500, "InternalError", "stand-in bug; see KubeApiStandIn.errors").status())

    def send_body(self, code: int, data: bytes, content_type: str | None = None,
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        self.send_body(code, json.dumps(body).encode(), "application/json", headers)

    def start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def client_configuration(url: str) -> client.Configuration:
    """A kubernetes client Configuration for the stand-in: its host, no auth, no TLS verification, and no proxy
    (this client version takes HTTP(S)_PROXY from the environment; the stand-in is on loopback)."""
    configuration = client.Configuration(host=url)
    configuration.verify_ssl = False
    configuration.proxy = None
    return configuration
