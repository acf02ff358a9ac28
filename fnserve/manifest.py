"""Manifests — Function and TrainingJob: the pydantic models, loading from YAML, and readable errors.

A manifest is Kubernetes-shaped so that a reader who knows KServe recognises it, and field names follow
KServe/Knative wherever the concept exists there, so the cluster renderer maps them one to one. Unknown
fields are errors: a typo such as ``maxReplica`` must never be silently ignored.

Every problem is reported as ``<file>: <field path>: <what was expected> (got <value>)`` so that a user
can fix all of them in one pass; nothing here ever raises a traceback for a user mistake.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from fnserve.finite import non_finite

API_VERSION = "fnserve.dev/v1"
RUNTIMES = ("onnx", "torch", "transformers")

# KServe requires InferenceService names to be DNS-1123 labels that also start with a letter.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_CPU_RE = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEMORY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_S3_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_ARTIFACTS_RE = re.compile(r"^artifacts://[a-z]([-a-z0-9]*[a-z0-9])?/[A-Za-z0-9][A-Za-z0-9._-]*/?$")
_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class _Spec(BaseModel):
    """Base for manifest sections: camelCase keys like Kubernetes, unknown keys rejected, numbers finite
    (a NaN or an infinity stored from a manifest or an admin body could not be written out as JSON again),
    and types strict, as JSON Schema's are: "30" is not a number, 1 is not true (whole floats such as 30.0
    are integers, as in JSON Schema: see Whole). So the schema json_schema() exports accepts what this
    accepts, save the rules listed in SCHEMA_CANNOT_SAY."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True, allow_inf_nan=False,
                              strict=True)


def _whole(value: Any) -> Any:
    """30.0 → 30: JSON Schema's ``integer`` is any number without a fraction, and YAML or JSON writers may
    write a whole number so."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]
"""A strict int that takes a float with no fraction, as JSON Schema's integer does."""


def _pattern(regex: re.Pattern[str], **extra: Any) -> dict[str, Any]:
    """A string field's JSON Schema ``pattern``: the validator's own regex (Python's re, as the jsonschema
    package uses; editors' ECMAScript engines read these the same way)."""
    return {"pattern": regex.pattern, **extra}


def _uri_pattern(*, artifacts: bool, relative: bool) -> str:
    """check_uri() as one JSON Schema pattern: the forms it accepts, each anchored."""
    relative_path = r"^(?!/)(?![\s\S]*://)(?=[\s\S]*\S)"  # no '/' first, no scheme anywhere, not blank
    forms = [_S3_RE.pattern, *([_ARTIFACTS_RE.pattern] if artifacts else []), "^file:///",
             *([relative_path] if relative else [])]
    return "|".join(f"(?:{form})" for form in forms)


class Metadata(_Spec):
    name: str = Field(description="Function name: a DNS-1123 label starting with a letter.",
                      json_schema_extra=_pattern(_NAME_RE, maxLength=63))
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not _NAME_RE.match(value):
            raise ValueError("must be a DNS-1123 label: lower-case letters, digits and '-', "
                             "starting with a letter, at most 63 characters")
        return value


class ModelSource(_Spec):
    uri: str = Field(description="Artifact folder: artifacts://<function>/<run-id|latest> in the platform's "
                                 "artifact store, a path relative to the manifest, file:// or s3://. A URI "
                                 "ending in /latest is pinned to the newest complete run at deploy time.",
                      json_schema_extra={"pattern": _uri_pattern(artifacts=True, relative=True)})

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return check_uri(value, artifacts=True)


def check_uri(value: str, *, artifacts: bool = False, relative: bool = True) -> str:
    """Validate a storage URI; the messages name what is accepted where it is used."""
    accepted = ", ".join((["artifacts://<function>/<run-id|latest>"] if artifacts else [])
                         + (["a relative path"] if relative else []) + ["file:// or s3://"])
    if value.startswith("s3://"):
        if not _S3_RE.match(value):
            raise ValueError("must be s3://<bucket>/<prefix> with a valid bucket name")
    elif value.startswith("artifacts://") and artifacts:
        if not _ARTIFACTS_RE.match(value):
            raise ValueError("must be artifacts://<function>/<run-id or latest>")
    elif value.startswith("file://"):
        if not value.startswith("file:///"):
            raise ValueError("must be an absolute file:///path")
    elif "://" in value or not relative:
        raise ValueError(f"must be {accepted}")
    elif value.startswith("/") or not value.strip():
        raise ValueError("must be a path relative to the manifest's folder, or a file:// URI")
    return value


class Resources(_Spec):
    cpu: str | None = Field(default=None, description="Kubernetes CPU quantity, e.g. '1' or '500m'.",
                            json_schema_extra={"anyOf": [{"type": "string", **_pattern(_CPU_RE)},
                                                         {"type": "number", "minimum": 0}, {"type": "null"}]})
    memory: str | None = Field(default=None, description="Kubernetes memory quantity, e.g. '512Mi'.",
                               json_schema_extra={"anyOf": [{"type": "string", **_pattern(_MEMORY_RE)},
                                                            {"type": "integer", "minimum": 0}, {"type": "null"}]})
    gpu: Whole = Field(default=0, ge=0, description="Whole GPUs per replica (nvidia.com/gpu).")

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ValueError("must be a CPU quantity such as 1, 0.5 or 500m")
            value = format(Decimal(repr(value)), "f")  # 1e-05 names the quantity 0.00001
        if isinstance(value, str) and not _CPU_RE.match(value):
            raise ValueError("must be a CPU quantity such as 1, 0.5 or 500m")
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        value = _whole(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not _MEMORY_RE.match(value):
            raise ValueError("must be a memory quantity such as 512Mi or 2Gi")
        return value

    def memory_bytes(self) -> int | None:
        """The memory quantity in bytes, for backends that enforce it themselves."""
        if self.memory is None:
            return None
        number, unit = re.match(r"^([0-9.]+)(.*)$", self.memory).groups()  # type: ignore[union-attr]
        return int(float(number) * _MEMORY_UNITS[unit])


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Knative/Go duration string ("30s", "1m30s", "500ms", "2h", "30d")."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 1m30s or 500ms")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite duration")
        return float(value)
    match = _DURATION_RE.match(value.strip()) if isinstance(value, str) else None
    if not match or not value.strip() or not any(match.groups()):
        raise ValueError("must be a duration such as 30s, 1m30s or 500ms")
    days, hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


Duration = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=float | str)]
_DURATION_PATTERN = r"^\s*(?=\S)" + _DURATION_RE.pattern[1:-1] + r"\s*$"  # parse_duration strips the string


def duration(default: float, low: float, high: float, description: str) -> Any:
    """A Duration field from ``low`` to ``high`` seconds; its JSON Schema bounds a number, and a string
    must be a duration (its value unbounded there: SCHEMA_CANNOT_SAY)."""
    schema: dict[str, Any] = {"anyOf": [{"type": "number", "minimum": low, "maximum": high},
                                        {"type": "string", "pattern": _DURATION_PATTERN}]}
    return Field(default=default, ge=low, le=high, description=description, json_schema_extra=schema)


class Scaling(_Spec):
    """Replica bounds and the autoscaler's knobs, with Knative's names and meaning (docs/scaling.md)."""

    min_replicas: Whole = Field(default=0, ge=0, description="Replicas kept when idle; 0 scales to zero.")
    max_replicas: Whole | None = Field(default=None, description="Upper bound, ≥ minReplicas; omit for no limit.",
                                       json_schema_extra={"minimum": 1})
    scale_target: Whole = Field(default=100, ge=1, description="Target concurrent requests per replica.")
    target_utilization_percentage: float = Field(default=70, gt=0, le=100,
                                                 description="Share of scaleTarget to aim for.")
    container_concurrency: Whole = Field(default=0, ge=0, description="Hard per-replica limit; 0 = none.")
    stable_window: Duration = duration(30.0, 1, 3600, "Averaging window (Knative: 60s).")
    scale_to_zero_grace_period: Duration = duration(10.0, 0, 3600, "Idle time after a zero stable window before "
                                                                   "the last replica goes (Knative: 30s).")
    panic_window_percentage: float = Field(default=10, ge=1, le=100, description="Panic window, % of stableWindow.")
    panic_threshold_percentage: float = Field(default=200, ge=110, le=1000,
                                              description="Panic when the panic-window demand reaches this % of "
                                                          "the ready replicas.")
    scale_down_delay: Duration = duration(0.0, 0, 3600, "Hold scale-downs this long.")
    initial_scale: Whole | None = Field(default=None, ge=0,
                                        description="Replicas right after a deploy, ≤ maxReplicas; default "
                                                    "minReplicas.")

    @field_validator("max_replicas")
    @classmethod
    def _at_least_min(cls, value: int | None, info: Any) -> int | None:
        if value is None:
            return value
        minimum = info.data.get("min_replicas", 0)
        if value < max(1, minimum):
            if minimum >= 1:
                raise ValueError(f"must be ≥ minReplicas (got {value} < {minimum})")
            raise ValueError("must be ≥ 1 (omit it for no limit)")
        return value

    @field_validator("initial_scale")
    @classmethod
    def _within_bounds(cls, value: int | None, info: Any) -> int | None:
        maximum = info.data.get("max_replicas")
        if value is not None and maximum is not None and value > maximum:
            raise ValueError(f"must be ≤ maxReplicas (got {value} > {maximum})")
        return value


#: Bounds of a limit: far above any real one, low enough to stay exact in a float, a Lua number in Redis
#: and a SQLite integer.
MAX_RPS = 1e6
MAX_COUNT = 10**6
MAX_DAILY = 10**12


class LimitsSpec(_Spec):
    """Per-function overrides of the callers' limits (per key × function; per address when public)."""

    rps: float | None = Field(default=None, gt=0, le=MAX_RPS, description="Requests per second (GCRA rate).")
    burst: Whole | None = Field(default=None, ge=1, le=MAX_COUNT, description="Requests allowed at once.")
    concurrency: Whole | None = Field(default=None, ge=1, le=MAX_COUNT, description="Requests in flight.")
    daily: Whole | None = Field(default=None, ge=1, le=MAX_DAILY, description="Requests per UTC day.")
    tpm: Whole | None = Field(default=None, ge=1, le=MAX_DAILY,
                              description="Tokens (prompt + completion) per minute, for generative functions.")
    tpd: Whole | None = Field(default=None, ge=1, le=MAX_DAILY, description="Tokens per UTC day.")


class AuthSpec(_Spec):
    public: bool = Field(default=False, description="Invocable without an API key.")


class Batching(_Spec):
    """Adaptive batching inside the replica (docs/runtimes.md): concurrent requests become one model call."""

    max_batch_size: Whole = Field(default=32, ge=1, le=4096,
                                description="Rows (instances) per model call at most; a larger request runs alone.")
    max_latency_ms: float = Field(default=5.0, ge=0, le=10_000,
                                  description="How long the oldest request may wait for others before its batch runs.")


class TransformersOptions(_Spec):
    """What the transformers runtime does with the model folder (runtime: transformers only)."""

    task: Literal["feature-extraction", "text-classification", "text-generation"] = Field(
        description="feature-extraction: mean-pooled, L2-normalised sentence embeddings; "
                    "text-classification: label and score per text; "
                    "text-generation: a causal LM streaming tokens (docs/generative.md).")
    fp16: bool = Field(default=False, description="Half precision when the replica runs on a GPU (CPU stays fp32).")
    max_length: Whole = Field(default=512, ge=1, le=65_536,
                            description="Tokens per text at most; longer texts are truncated. For "
                                        "text-generation: the context, prompt and completion together.")
    max_new_tokens: Whole = Field(default=128, ge=1, le=65_536,
                                description="text-generation: completion tokens when a request names no "
                                            "max_tokens (also what admission reserves for it).")


class FunctionSpec(_Spec):
    # runtime transformers needs the transformers section, and no other runtime takes one
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"runtime": {"const": "transformers"}}, "required": ["runtime"]},
        "then": {"required": ["transformers"], "properties": {"transformers": {"type": "object"}}},
        "else": {"properties": {"transformers": {"type": "null"}}}})

    runtime: Literal["onnx", "torch", "transformers"] = Field(description="Model format / predictor.")
    model: ModelSource
    handler: str | None = Field(default=None, description="module:Class in the function's folder.",
                                json_schema_extra=_pattern(_HANDLER_RE))
    transformers: TransformersOptions | None = Field(default=None,
                                                     description="Task and precision; required by runtime transformers.")
    batching: Batching | None = Field(default=None, description="Gather concurrent requests into batches; "
                                                                "off when omitted.")
    resources: Resources = Field(default_factory=Resources)
    scaling: Scaling = Field(default_factory=Scaling)
    timeout: Whole = Field(default=60, ge=1, le=3600, description="Seconds a request may take end to end "
                                                                   "(streams included).")
    response_start_timeout: Whole | None = Field(
        default=None, ge=1, le=3600, description="Seconds until the answer's first byte, ≤ timeout "
                                                 "(default: timeout).")
    idle_timeout: Whole | None = Field(
        default=None, ge=1, le=3600, description="Seconds a streamed answer may pause between chunks, ≤ timeout "
                                                 "(default: no limit but timeout).")
    auth: AuthSpec = Field(default_factory=AuthSpec)
    limits: LimitsSpec | None = None

    @field_validator("handler")
    @classmethod
    def _module_class(cls, value: str | None) -> str | None:
        if value is not None and not _HANDLER_RE.match(value):
            raise ValueError("must be 'module:Class', e.g. handler:SentimentHandler")
        return value

    @field_validator("transformers")
    @classmethod
    def _only_for_transformers(cls, value: TransformersOptions | None, info: Any) -> TransformersOptions | None:
        runtime = info.data.get("runtime")
        if value is not None and runtime not in (None, "transformers"):
            raise ValueError(f"only applies to runtime transformers (got runtime {runtime})")
        return value

    @model_validator(mode="after")
    def _transformers_needs_task(self) -> FunctionSpec:
        if self.runtime == "transformers" and self.transformers is None:
            raise PydanticCustomError("fnserve", "runtime transformers needs a transformers section with its task "
                                                  "(feature-extraction, text-classification or text-generation)")
        return self

    @model_validator(mode="after")
    def _timeouts_within_timeout(self) -> FunctionSpec:
        """Knative's rule: neither the first byte nor a pause may be allowed longer than the whole request."""
        for name, value in (("responseStartTimeout", self.response_start_timeout), ("idleTimeout", self.idle_timeout)):
            if value is not None and value > self.timeout:
                raise PydanticCustomError("fnserve", f"{name} ({value} s) must not exceed timeout ({self.timeout} s)")
        return self


class _Document(_Spec):
    """What every kind of manifest offers; the fields stay on each kind, in Kubernetes order."""

    if TYPE_CHECKING:  # declared by each kind, after apiVersion and kind
        metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain data with its own (camelCase) keys, defaults filled in."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Function(_Document):
    """A deployable function: the one manifest used from laptop to cluster."""

    api_version: Literal["fnserve.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["Function"]
    metadata: Metadata
    spec: FunctionSpec


class TrainingJobSpec(_Spec):
    function: str = Field(description="The function this job trains (its artifacts go under its name).",
                          json_schema_extra=_pattern(_NAME_RE, maxLength=63))
    command: list[str] = Field(min_length=1, description="argv, run in the folder of this manifest.",
                               json_schema_extra={"prefixItems": [{"pattern": r"\S"}]})  # a program to run
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Free-form parameters, handed to the job as FNSERVE_PARAMS (JSON).")

    @field_validator("params")
    @classmethod
    def _finite_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        where = non_finite(params)
        if where:
            raise ValueError(f"params.{where[0]} is not a finite number; FNSERVE_PARAMS is JSON, which has none")
        return params
    resources: Resources = Field(default_factory=Resources)
    timeout: Duration = duration(3600.0, 1, 7 * 86400,
                                 "Wall-clock limit; past it the job is killed and publishes nothing.")
    output: str | None = Field(default=None, description="Where runs go (file:// or s3://): <output>/<run-id>/. "
                                                         "Default: the platform's artifact root + /<function>/.",
                               json_schema_extra={"pattern": _uri_pattern(artifacts=False, relative=False)})
    deploy_on_success: bool = Field(default=False,
                                    description="Roll the function forward to the new run once it is published.")
    image: str | None = Field(default=None, description="Container image (cluster only; ignored locally).")

    @field_validator("function")
    @classmethod
    def _function_name(cls, value: str) -> str:
        return Metadata._dns_label(value)

    @field_validator("command")
    @classmethod
    def _no_empty_words(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the program (command[0]) must not be empty")
        return value

    @field_validator("output")
    @classmethod
    def _output_uri(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, relative=False).rstrip("/")


class TrainingJob(_Document):
    """A training run: a command that writes a model, published as one immutable run of a function."""

    api_version: Literal["fnserve.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["TrainingJob"]
    metadata: Metadata
    spec: TrainingJobSpec


KINDS: dict[str, type[Function] | type[TrainingJob]] = {"Function": Function, "TrainingJob": TrainingJob}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where, and what was expected."""

    path: str
    message: str

    def render(self, source: str) -> str:
        return f"{source}: {self.path}: {self.message}" if self.path else f"{source}: {self.message}"


class ManifestError(Exception):
    """A manifest that cannot be used; carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))

    def lines(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__ if not value else f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at the parent of ``loc``, to suggest a fix for an unknown field."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        # an optional section (``Batching | None``) suggests the section's own keys
        current = next((t for t in typing.get_args(field.annotation) if t is not type(None)), field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _message(model: type[BaseModel], error: ErrorDetails) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "fnserve":  # a rule across fields; its message says it all
        return str(error["msg"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(allowed)}"
        return f"unknown field ({hint})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {_got(value)})"
    if kind == "value_error":
        reason = str(ctx.get("error", error["msg"]))
        return reason if "(got " in reason else f"{reason} (got {_got(value)})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
        bound = next(iter(ctx.values()))
        return f"must be {sign[kind]} {bound} (got {_got(value)})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {_got(value)})"
    if kind == "too_short":
        return "must not be empty"
    if kind in ("string_type",):
        return f"must be a string (got {_got(value)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (got {_got(value)})"
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_got(value)})"


def problems_from(model: type[BaseModel], exc: ValidationError) -> list[Problem]:
    """Turn pydantic's errors into readable problems keyed by manifest field path."""
    return [Problem(_path(e["loc"]), _message(model, e)) for e in exc.errors()]


def _validate(model: type[Any], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ManifestError(source, [Problem("", f"must be a mapping with apiVersion, kind, metadata "
                                                 f"and spec (got {_got(data)})")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(source, problems_from(model, exc)) from None


def parse_function(data: Any, source: str = "function.yaml") -> Function:
    """Validate already-parsed manifest data; raises ManifestError listing every problem."""
    return _validate(Function, data, source)


def parse_training_job(data: Any, source: str = "train.yaml") -> TrainingJob:
    return _validate(TrainingJob, data, source)


def parse_manifest(data: Any, source: str) -> Function | TrainingJob:
    """Either kind, chosen by the manifest's own ``kind``."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in KINDS:
        model: type[Any] = Function
        if isinstance(data, dict) and kind is not None:
            raise ManifestError(source, [Problem("kind", f"must be one of {', '.join(map(repr, KINDS))} "
                                                         f"(got {_got(kind)})")])
    else:
        model = KINDS[kind]
    return _validate(model, data, source)


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it: ~10× faster, which a replica's start notices."""


def read_yaml(path: Path) -> Any:
    """Read one YAML document, turning I/O and syntax errors into a ManifestError."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(source, [Problem("", "no such file")]) from None
    except IsADirectoryError:
        raise ManifestError(source, [Problem("", "is a folder, expected a manifest file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(source, [Problem("", f"cannot be read: {exc}")]) from None
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 (a safe loader: libyaml's, else PyYAML's)
    except yaml.YAMLError:
        pass
    try:  # the same document again with PyYAML's own parser, whose messages name what is wrong more exactly
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(source, [Problem("", f"{where}invalid YAML: {reason}")]) from None


def manifest_path(path: Path, default: str = "function.yaml") -> Path:
    """Accept either a manifest file or a function folder holding ``default``."""
    return path / default if path.is_dir() else path


def load_function(path: Path) -> Function:
    """Load and validate a function manifest file (or a folder holding function.yaml)."""
    path = manifest_path(path)
    return parse_function(read_yaml(path), str(path))


def load_training_job(path: Path) -> TrainingJob:
    """Load and validate a training job manifest (or a folder holding train.yaml)."""
    path = manifest_path(path, "train.yaml")
    return parse_training_job(read_yaml(path), str(path))


def load_manifest(path: Path) -> Function | TrainingJob:
    """Either kind of manifest; a folder means its function.yaml."""
    path = manifest_path(path)
    return parse_manifest(read_yaml(path), str(path))


SCHEMA_CANNOT_SAY = {
    "Function": ["spec.scaling.maxReplicas ≥ spec.scaling.minReplicas",
                 "spec.scaling.initialScale ≤ spec.scaling.maxReplicas",
                 "spec.responseStartTimeout and spec.idleTimeout ≤ spec.timeout"],
    "TrainingJob": [],
}
"""The rules of each kind that JSON Schema cannot express (they compare two values), besides those of every
kind in SCHEMA_CANNOT_SAY_ANY; the exported schema's description lists them, `fnserve validate` checks them."""
SCHEMA_CANNOT_SAY_ANY = ["the range of a duration written as a string (e.g. stableWindow: 2h, more than 3600 s)",
                         "YAML's non-finite numbers (.nan, .inf) and keys that are not strings, which JSON has not"]


def json_schema(kind: str = "Function") -> dict[str, Any]:
    """JSON Schema for a manifest kind, for editors' completion and validation: it accepts what
    `fnserve validate` accepts, but for the rules its description lists (SCHEMA_CANNOT_SAY)."""
    schema = KINDS[kind].model_json_schema(by_alias=True)
    slug = "function" if kind == "Function" else "trainingjob"
    rules = "; ".join([*SCHEMA_CANNOT_SAY[kind], *SCHEMA_CANNOT_SAY_ANY])
    description = (f"{schema.pop('description', '')} Rules only `fnserve validate` checks (JSON Schema cannot "
                   f"express them): {rules}.").strip()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://fnserve.dev/schemas/{slug}-v1.json", **schema, "description": description}
