"""The exported JSON Schema accepts exactly what the validator accepts: every example manifest, and variants
of a valid manifest of each kind, are judged by both (jsonschema against `fnserve schema`, and the pydantic
models); the few rules JSON Schema cannot express are listed, each with the variant that shows it, and must
be named in the schema's description. The examples name the committed schemas in their modeline."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fnserve.manifest import KINDS, SCHEMA_CANNOT_SAY, SCHEMA_CANNOT_SAY_ANY, ManifestError, json_schema, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("functions/*/function.yaml")) + sorted(ROOT.glob("functions/*/train.yaml"))
SCHEMA_FILES = {"Function": ROOT / "schemas" / "function-v1.json", "TrainingJob": ROOT / "schemas" / "trainingjob-v1.json"}
CHECKERS = {kind: jsonschema.Draft202012Validator(json_schema(kind)) for kind in KINDS}

BASE: dict[str, dict[str, Any]] = {
    "Function": {"apiVersion": "fnserve.dev/v1", "kind": "Function", "metadata": {"name": "sentiment"},
                 "spec": {"runtime": "onnx", "model": {"uri": "./model"}, "timeout": 60,
                          "scaling": {"minReplicas": 1, "maxReplicas": 3}}},
    "TrainingJob": {"apiVersion": "fnserve.dev/v1", "kind": "TrainingJob", "metadata": {"name": "sentiment-train"},
                    "spec": {"function": "sentiment", "command": ["python", "train.py"]}},
}
GONE = object()
TRANSFORMERS = {"task": "feature-extraction"}

# (kind, {dotted path: value, GONE to remove it}, valid)
VARIANTS: list[tuple[str, dict[str, Any], bool]] = [
    ("Function", {}, True),
    ("Function", {"spec.timeout": 30.0}, True),  # a whole float is JSON Schema's integer
    ("Function", {"spec.timeout": "30"}, False),
    ("Function", {"spec.timeout": True}, False),
    ("Function", {"spec.timeout": 30.5}, False),
    ("Function", {"spec.timeout": 0}, False),
    ("Function", {"spec.timeout": 3601}, False),
    ("Function", {"spec.timeout": None}, False),
    ("Function", {"spec.responseStartTimeout": 60, "spec.idleTimeout": 5}, True),
    ("Function", {"spec.scaling.maxReplicas": None}, True),
    ("Function", {"spec.scaling.maxReplicas": 0, "spec.scaling.minReplicas": 0}, False),
    ("Function", {"spec.scaling.minReplicas": -1}, False),
    ("Function", {"spec.scaling.initialScale": 2}, True),
    ("Function", {"spec.scaling.maxReplica": 3}, False),
    ("Function", {"spec.scaling.stableWindow": "1m30s"}, True),
    ("Function", {"spec.scaling.stableWindow": " 45s "}, True),
    ("Function", {"spec.scaling.stableWindow": 45}, True),
    ("Function", {"spec.scaling.stableWindow": "1500ms"}, True),
    ("Function", {"spec.scaling.stableWindow": 0}, False),
    ("Function", {"spec.scaling.stableWindow": 3601}, False),
    ("Function", {"spec.scaling.stableWindow": "soon"}, False),
    ("Function", {"spec.scaling.stableWindow": ""}, False),
    ("Function", {"spec.scaling.targetUtilizationPercentage": 0}, False),
    ("Function", {"spec.scaling.targetUtilizationPercentage": 100}, True),
    ("Function", {"metadata.name": "Sentiment"}, False),
    ("Function", {"metadata.name": "1abc"}, False),
    ("Function", {"metadata.name": "abc-"}, False),
    ("Function", {"metadata.name": "a" * 63}, True),
    ("Function", {"metadata.name": "a" * 64}, False),
    ("Function", {"metadata.name": GONE}, False),
    ("Function", {"metadata.labels": {"tier": "gold"}}, True),
    ("Function", {"metadata.labels": {"tier": 1}}, False),
    ("Function", {"apiVersion": "fnserve.dev/v2"}, False),
    ("Function", {"apiVersion": GONE}, False),
    ("Function", {"extra": 1}, False),
    ("Function", {"spec.runtime": "tensorflow"}, False),
    ("Function", {"spec.model": GONE}, False),
    ("Function", {"spec.model.uri": "model"}, True),
    ("Function", {"spec.model.uri": "s3://bucket-a/models/x"}, True),
    ("Function", {"spec.model.uri": "file:///srv/models/x"}, True),
    ("Function", {"spec.model.uri": "artifacts://sentiment/latest"}, True),
    ("Function", {"spec.model.uri": "/srv/models/x"}, False),
    ("Function", {"spec.model.uri": "file://relative/x"}, False),
    ("Function", {"spec.model.uri": "http://example.com/x"}, False),
    ("Function", {"spec.model.uri": "s3://B"}, False),
    ("Function", {"spec.model.uri": "artifacts://sentiment"}, False),
    ("Function", {"spec.model.uri": "./a/s3://b"}, False),
    ("Function", {"spec.model.uri": "  "}, False),
    ("Function", {"spec.handler": "pkg.handler:Cls"}, True),
    ("Function", {"spec.handler": "handler"}, False),
    ("Function", {"spec.handler": "handler:"}, False),
    ("Function", {"spec.resources": {"cpu": "500m", "memory": "1Gi", "gpu": 1}}, True),
    ("Function", {"spec.resources": {"cpu": 0.5, "memory": 536870912}}, True),
    ("Function", {"spec.resources": {"cpu": 2, "memory": 512.0}}, True),
    ("Function", {"spec.resources.cpu": 1e-05}, True),
    ("Function", {"spec.resources.cpu": "1.5 cores"}, False),
    ("Function", {"spec.resources.cpu": -1}, False),
    ("Function", {"spec.resources.cpu": True}, False),
    ("Function", {"spec.resources.memory": "512MB"}, False),
    ("Function", {"spec.resources.memory": 1.5}, False),
    ("Function", {"spec.resources.memory": -5}, False),
    ("Function", {"spec.resources.gpu": -1}, False),
    ("Function", {"spec.resources": None}, False),
    ("Function", {"spec.runtime": "transformers", "spec.transformers": TRANSFORMERS}, True),
    ("Function", {"spec.runtime": "transformers"}, False),
    ("Function", {"spec.runtime": "transformers", "spec.transformers": None}, False),
    ("Function", {"spec.transformers": TRANSFORMERS}, False),
    ("Function", {"spec.transformers": None}, True),
    ("Function", {"spec.runtime": "transformers", "spec.transformers": {"task": "translation"}}, False),
    ("Function", {"spec.batching": {"maxBatchSize": 8, "maxLatencyMs": 2.5}}, True),
    ("Function", {"spec.batching": None}, True),
    ("Function", {"spec.batching": {"maxBatchSize": 0}}, False),
    ("Function", {"spec.batching": {"maxLatencyMs": -1}}, False),
    ("Function", {"spec.auth": {"public": True}}, True),
    ("Function", {"spec.auth": {"public": "yes"}}, False),
    ("Function", {"spec.auth": {"public": 1}}, False),
    ("Function", {"spec.limits": {"rps": 2.5, "burst": 5, "daily": 1000}}, True),
    ("Function", {"spec.limits": None}, True),
    ("Function", {"spec.limits": {"rps": 0}}, False),
    ("Function", {"spec.limits": {"burst": "5"}}, False),
    ("TrainingJob", {}, True),
    ("TrainingJob", {"spec.timeout": "1h30m"}, True),
    ("TrainingJob", {"spec.timeout": 600}, True),
    ("TrainingJob", {"spec.timeout": 0}, False),
    ("TrainingJob", {"spec.timeout": "later"}, False),
    ("TrainingJob", {"spec.params": {"epochs": 3, "lr": 0.1, "layers": [8, 8]}}, True),
    ("TrainingJob", {"spec.output": "s3://bucket-a/runs"}, True),
    ("TrainingJob", {"spec.output": "file:///srv/runs"}, True),
    ("TrainingJob", {"spec.output": "./runs"}, False),
    ("TrainingJob", {"spec.output": "artifacts://sentiment/x"}, False),
    ("TrainingJob", {"spec.command": []}, False),
    ("TrainingJob", {"spec.command": ["  ", "x"]}, False),
    ("TrainingJob", {"spec.command": ["python", ""]}, True),
    ("TrainingJob", {"spec.command": "python train.py"}, False),
    ("TrainingJob", {"spec.function": "Sentiment"}, False),
    ("TrainingJob", {"spec.function": GONE}, False),
    ("TrainingJob", {"spec.deployOnSuccess": True, "spec.image": "ghcr.io/x/y:1"}, True),
    ("TrainingJob", {"spec.deployOnSuccess": "yes"}, False),
    ("TrainingJob", {"spec.resources": {"cpu": "1", "memory": "1Gi"}}, True),
    ("TrainingJob", {"kind": "Function"}, False),
]

# what the schema accepts and the validator does not: (kind, change, the words of SCHEMA_CANNOT_SAY naming it)
CANNOT_SAY: list[tuple[str, dict[str, Any], str]] = [
    ("Function", {"spec.scaling.minReplicas": 3, "spec.scaling.maxReplicas": 2}, "maxReplicas ≥ spec.scaling.minReplicas"),
    ("Function", {"spec.scaling.maxReplicas": 2, "spec.scaling.initialScale": 3}, "initialScale ≤ spec.scaling.maxReplicas"),
    ("Function", {"spec.responseStartTimeout": 61}, "responseStartTimeout and spec.idleTimeout ≤ spec.timeout"),
    ("Function", {"spec.idleTimeout": 61}, "responseStartTimeout and spec.idleTimeout ≤ spec.timeout"),
    ("Function", {"spec.scaling.stableWindow": "2h"}, "duration written as a string"),
    ("TrainingJob", {"spec.timeout": "8d"}, "duration written as a string"),
    ("Function", {"spec.scaling.targetUtilizationPercentage": math.nan}, "non-finite numbers"),
    ("TrainingJob", {"spec.params": {"lr": math.inf}}, "non-finite numbers"),
    ("Function", {"metadata.labels": {1: "one"}}, "keys that are not strings"),
]


def changed(kind: str, change: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE[kind])
    for path, value in change.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is GONE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def judged(kind: str, data: Any) -> tuple[bool, bool]:
    """(the validator accepts it, the schema accepts it)."""
    try:
        parse_manifest(data, "manifest.yaml")
        valid = True
    except ManifestError:
        valid = False
    return valid, CHECKERS[kind].is_valid(data)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_is_valid_for_both(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert judged(data["kind"], data) == (True, True)


@pytest.mark.parametrize(("kind", "change", "valid"), VARIANTS, ids=[f"{k}:{c}" for k, c, _ in VARIANTS])
def test_schema_and_validator_agree(kind: str, change: dict[str, Any], valid: bool) -> None:
    data = changed(kind, change)
    assert judged(kind, data) == (valid, valid), [e.message for e in CHECKERS[kind].iter_errors(data)]


@pytest.mark.parametrize(("kind", "change", "rule"), CANNOT_SAY, ids=[f"{k}:{c}" for k, c, _ in CANNOT_SAY])
def test_what_the_schema_cannot_say_is_listed_in_its_description(kind: str, change: dict[str, Any], rule: str) -> None:
    assert judged(kind, changed(kind, change)) == (False, True)
    assert any(rule in said for said in [*SCHEMA_CANNOT_SAY[kind], *SCHEMA_CANNOT_SAY_ANY])
    assert rule in json_schema(kind)["description"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_committed_schemas_are_current(kind: str) -> None:
    assert json.loads(SCHEMA_FILES[kind].read_text()) == json_schema(kind), "run `make schemas`"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_name_their_schema_in_a_modeline(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, f"{path}: first line should be the yaml-language-server modeline"
    kind = yaml.safe_load(path.read_text())["kind"]
    assert (path.parent / match.group(1)).resolve() == SCHEMA_FILES[kind]
