"""Manifest validation: what a user sees for each kind of mistake, and that valid input round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fnserve.manifest import Function, ManifestError, load_function, load_training_job, parse_function, parse_manifest

ROOT = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "apiVersion": "fnserve.dev/v1",
    "kind": "Function",
    "metadata": {"name": "sentiment"},
    "spec": {"runtime": "onnx", "model": {"uri": "./model"}, "handler": "handler:SentimentHandler",
             "resources": {"cpu": "500m", "memory": "512Mi", "gpu": 0},
             "scaling": {"minReplicas": 1, "maxReplicas": 3, "scaleTarget": 8, "containerConcurrency": 4},
             "timeout": 30},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with one dotted path set (or removed when value is ...)."""
    data = json.loads(json.dumps(VALID))
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return data


def problems(data: Any, source: str = "function.yaml") -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_function(data, source)
    return caught.value.lines()


def test_example_manifest_is_valid() -> None:
    function = load_function(ROOT / "functions" / "sentiment")
    assert function.name == "sentiment"
    assert function.spec.runtime == "onnx"
    assert function.spec.scaling.max_replicas == 2


def test_valid_manifest_round_trips_with_its_own_keys() -> None:
    function = parse_function(VALID)
    again = parse_function(function.to_dict())
    assert again == function
    assert function.to_dict()["spec"]["scaling"]["minReplicas"] == 1
    assert function.spec.resources.memory_bytes() == 512 * 2**20


def test_defaults_follow_kserve() -> None:
    function = parse_function(with_change("spec.scaling", ...))
    assert function.spec.scaling.min_replicas == 0
    assert function.spec.scaling.max_replicas is None
    assert function.spec.scaling.scale_target == 100
    assert function.spec.scaling.container_concurrency == 0


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("apiVersion", "v1", "function.yaml: apiVersion: must be one of 'fnserve.dev/v1' (got 'v1')"),
    ("kind", "Service", "function.yaml: kind: must be one of 'Function' (got 'Service')"),
    ("metadata.name", "Bad_Name", "function.yaml: metadata.name: must be a DNS-1123 label"),
    ("metadata.name", "1abc", "function.yaml: metadata.name: must be a DNS-1123 label"),
    ("metadata.name", "a" * 64, "function.yaml: metadata.name: must be a DNS-1123 label"),
    ("spec.runtime", "tensorflow", "function.yaml: spec.runtime: must be one of 'onnx', 'torch' or 'transformers'"),
    ("spec.model.uri", "http://example.com/m", "function.yaml: spec.model.uri: must be artifacts://<function>/<run-id|latest>, a relative path, file:// or s3://"),
    ("spec.model.uri", "artifacts://Sentiment/latest", "function.yaml: spec.model.uri: must be artifacts://<function>/<run-id or latest>"),
    ("spec.model.uri", "file://relative/x", "function.yaml: spec.model.uri: must be an absolute file:///path"),
    ("spec.model.uri", "/abs/model", "function.yaml: spec.model.uri: must be a path relative to the manifest's folder"),
    ("spec.model.uri", "s3://", "function.yaml: spec.model.uri: must be s3://<bucket>/<prefix>"),
    ("spec.handler", "handler.SentimentHandler", "function.yaml: spec.handler: must be 'module:Class'"),
    ("spec.resources.cpu", "lots", "function.yaml: spec.resources.cpu: must be a CPU quantity"),
    ("spec.resources.memory", "1GB", "function.yaml: spec.resources.memory: must be a memory quantity"),
    ("spec.resources.gpu", -1, "function.yaml: spec.resources.gpu: must be ≥ 0 (got -1)"),
    ("spec.scaling.minReplicas", "two", "function.yaml: spec.scaling.minReplicas: must be a whole number (got 'two')"),
    ("spec.scaling.maxReplicas", 0, "function.yaml: spec.scaling.maxReplicas: must be ≥ minReplicas (got 0 < 1)"),
    ("spec.scaling.scaleTarget", 0, "function.yaml: spec.scaling.scaleTarget: must be ≥ 1 (got 0)"),
    ("spec.scaling.containerConcurrency", -2, "function.yaml: spec.scaling.containerConcurrency: must be ≥ 0 (got -2)"),
    ("spec.timeout", 0, "function.yaml: spec.timeout: must be ≥ 1 (got 0)"),
    ("spec.timeout", 99999, "function.yaml: spec.timeout: must be ≤ 3600 (got 99999)"),
    ("spec.model.uri", ..., "function.yaml: spec.model.uri: required field is missing"),
    ("spec.runtime", ..., "function.yaml: spec.runtime: required field is missing"),
    ("metadata", ..., "function.yaml: metadata: required field is missing"),
])
def test_each_field_error_names_file_and_path(path: str, value: Any, expected: str) -> None:
    lines = problems(with_change(path, value))
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]


def test_unknown_fields_are_errors_with_a_suggestion() -> None:
    data = with_change("spec.scaling.maxReplica", 3)
    assert problems(data) == ["function.yaml: spec.scaling.maxReplica: unknown field (did you mean maxReplicas?)"]
    data = with_change("spec.colour", "blue")
    (line,) = problems(data)
    assert line.startswith("function.yaml: spec.colour: unknown field (allowed: runtime, model, handler")


def test_every_problem_is_reported_at_once() -> None:
    data = with_change("spec.runtime", "tf")
    data["spec"]["scaling"]["maxReplicas"] = 0
    data["metadata"]["name"] = "X"
    paths = [line.split(": ")[1] for line in problems(data)]
    assert paths == ["metadata.name", "spec.runtime", "spec.scaling.maxReplicas"]


def test_max_replicas_zero_without_min_says_how_to_mean_unlimited() -> None:
    data = with_change("spec.scaling", {"maxReplicas": 0})
    assert problems(data) == ["function.yaml: spec.scaling.maxReplicas: must be ≥ 1 (omit it for no limit) (got 0)"]


def test_not_a_mapping() -> None:
    assert problems(["a"])[0].startswith("function.yaml: must be a mapping")
    assert problems(None)[0].startswith("function.yaml: must be a mapping")
    (line,) = problems(with_change("spec", "onnx"))
    assert line == "function.yaml: spec: must be a mapping (got 'onnx')"


def test_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "function.yaml"
    broken.write_text("apiVersion: fnserve.dev/v1\nkind: Function\nmetadata: {name: x\n")
    with pytest.raises(ManifestError) as caught:
        load_function(broken)
    assert caught.value.lines()[0].startswith(f"{broken}: line 4, column 1: invalid YAML")
    with pytest.raises(ManifestError) as caught:
        load_function(tmp_path / "missing.yaml")
    assert caught.value.lines() == [f"{tmp_path / 'missing.yaml'}: no such file"]


def test_folder_means_its_function_yaml(tmp_path: Path) -> None:
    (tmp_path / "function.yaml").write_text(yaml.safe_dump(VALID))
    assert load_function(tmp_path).name == "sentiment"


def test_json_schema_describes_the_manifest() -> None:
    schema = json.loads(subprocess.run([sys.executable, "-m", "fnserve.cli", "schema"], check=True,
                                       capture_output=True, text=True).stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["required"]) == {"apiVersion", "kind", "metadata", "spec"}
    scaling = schema["$defs"]["Scaling"]["properties"]
    assert {"minReplicas", "maxReplicas", "scaleTarget", "containerConcurrency"} <= set(scaling)
    assert schema["$defs"]["Scaling"]["additionalProperties"] is False
    assert Function.model_json_schema(by_alias=True)["properties"]["apiVersion"]["const"] == "fnserve.dev/v1"


def run_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fnserve.cli", "validate", *map(str, paths)],
                          capture_output=True, text=True)


def test_validate_command_prints_ok_or_every_problem_without_traceback(tmp_path: Path) -> None:
    good = run_validate(ROOT / "functions" / "sentiment" / "function.yaml", ROOT / "functions" / "sentiment" / "train.yaml")
    assert good.returncode == 0
    assert good.stdout.splitlines() == [f"{ROOT}/functions/sentiment/function.yaml: ok (Function sentiment)",
                                        f"{ROOT}/functions/sentiment/train.yaml: ok (TrainingJob sentiment-train)"]

    bad_file = tmp_path / "function.yaml"
    bad_file.write_text(yaml.safe_dump(with_change("spec.scaling.maxReplicas", 0) | {"extra": 1}))
    bad = run_validate(bad_file)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        f"{bad_file}: spec.scaling.maxReplicas: must be ≥ minReplicas (got 0 < 1)",
        f"{bad_file}: extra: unknown field (allowed: apiVersion, kind, metadata, spec)",
    ]


JOB: dict[str, Any] = {"apiVersion": "fnserve.dev/v1", "kind": "TrainingJob", "metadata": {"name": "sentiment-train"},
                       "spec": {"function": "sentiment", "command": ["python", "train.py"]}}


def job_problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest({**JOB, "spec": {**JOB["spec"], **spec}}, "train.yaml")
    return caught.value.lines()


def test_training_job_defaults_and_durations() -> None:
    job = parse_manifest({**JOB, "spec": {**JOB["spec"], "timeout": "1h30m", "output": "s3://bucket-a/runs/"}},
                         "train.yaml")
    assert job.kind == "TrainingJob" and job.spec.timeout == 5400 and job.spec.output == "s3://bucket-a/runs"
    assert job.spec.params == {} and job.spec.deploy_on_success is False and job.spec.resources.gpu == 0
    assert load_training_job(ROOT / "functions" / "sentiment").spec.function == "sentiment"


def test_training_job_errors_read_like_function_errors() -> None:
    assert job_problems({"command": [], "timeout": "soon", "output": "./runs", "deployOnSucces": True,
                         "resources": {"gpu": -1}}) == [
        "train.yaml: spec.command: must not be empty",
        "train.yaml: spec.resources.gpu: must be ≥ 0 (got -1)",
        "train.yaml: spec.timeout: must be a duration such as 30s, 1m30s or 500ms (got 'soon')",
        "train.yaml: spec.output: must be file:// or s3:// (got './runs')",
        "train.yaml: spec.deployOnSucces: unknown field (did you mean deployOnSuccess?)",
    ]
    assert job_problems({"function": "Sentiment"})[0].startswith("train.yaml: spec.function: must be a DNS-1123 label")
    with pytest.raises(ManifestError, match="kind: must be one of 'Function', 'TrainingJob' \\(got 'Job'\\)"):
        parse_manifest({**JOB, "kind": "Job"}, "train.yaml")


def test_every_example_function_and_job_is_valid() -> None:
    for folder in sorted((ROOT / "functions").iterdir()):
        function = load_function(folder)
        job = load_training_job(folder / "train.yaml")
        assert job.spec.function == function.name


@pytest.mark.parametrize(("spec", "expected"), [
    ({"runtime": "transformers"},
     "function.yaml: spec: runtime transformers needs a transformers section with its task "
     "(feature-extraction, text-classification or text-generation)"),
    ({"runtime": "transformers", "transformers": {"task": "summarization"}},
     "function.yaml: spec.transformers.task: must be one of 'feature-extraction', 'text-classification' or "
     "'text-generation' "
     "(got 'summarization')"),
    ({"transformers": {"task": "feature-extraction"}},
     "function.yaml: spec.transformers: only applies to runtime transformers (got runtime onnx)"),
    ({"batching": {"maxBatchSize": 0}}, "function.yaml: spec.batching.maxBatchSize: must be ≥ 1 (got 0)"),
    ({"timeout": 30, "idleTimeout": 60},
     "function.yaml: spec: idleTimeout (60 s) must not exceed timeout (30 s)"),
    ({"timeout": 30, "responseStartTimeout": 31},
     "function.yaml: spec: responseStartTimeout (31 s) must not exceed timeout (30 s)"),
    ({"batching": {"maxLatency": 5}},
     "function.yaml: spec.batching.maxLatency: unknown field (did you mean maxLatencyMs?)"),
])
def test_runtime_options_and_batching_errors(spec: dict[str, Any], expected: str) -> None:
    data = json.loads(json.dumps(VALID))
    data["spec"].update(spec)
    assert problems(data) == [expected]


def test_batching_is_off_unless_asked_and_defaults_when_it_is() -> None:
    assert parse_function(VALID, "f").spec.batching is None
    batching = parse_function(with_change("spec.batching", {}), "f").spec.batching
    assert (batching.max_batch_size, batching.max_latency_ms) == (32, 5.0)
