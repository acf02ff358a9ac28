"""What a function's own folder says about it beyond serving: its example inputs, whether it can be
trained here, and which run (and job) each revision's model came from, with that run's metrics.

The console shows these beside a function; each is read from the revision's frozen source and model
folders, so what is shown is what that revision was deployed with, not what the folder holds today.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fnserve.backends.base import BackendError
from fnserve.finite import as_strings
from fnserve.records import JobRecord, Revision
from fnserve.state import StateStore

EXAMPLES_FILE = "examples.jsonl"
TRAIN_FILE = "train.yaml"
METRICS_FILE = "metrics.json"
MAX_EXAMPLES = 20
MAX_EXAMPLE_BYTES = 256 * 1024


class NotInFolder(BackendError):
    """The revision's folder has no such file (no examples, no train.yaml): 404."""

    status = 404


class Catalog:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    @staticmethod
    def trainable(revision: Revision) -> bool:
        """Whether the revision's folder holds a training job manifest (``train.yaml``)."""
        return (revision.source_dir / TRAIN_FILE).is_file()

    @staticmethod
    def train_manifest(revision: Revision) -> Path | None:
        path = revision.source_dir / TRAIN_FILE
        return path if path.is_file() else None

    async def examples(self, revision: Revision) -> list[dict[str, Any]]:
        """The first MAX_EXAMPLES request bodies of ``examples.jsonl`` (lines that are no JSON object are
        skipped: the file is the function author's, and a bad line must not hide the good ones)."""
        return await asyncio.to_thread(_read_examples, revision.source_dir / EXAMPLES_FILE)

    async def runs(self, revisions: list[Revision]) -> dict[int, dict[str, Any] | None]:
        """Each revision's pinned run by revision number: its id, the job here that published it, and
        the run's metrics (the job's record, else the run's own metrics.json); None for a model that is
        no run (a plain folder)."""
        return await asyncio.to_thread(self._runs, revisions)

    def _runs(self, revisions: list[Revision]) -> dict[int, dict[str, Any] | None]:
        jobs: dict[str, JobRecord] = {}
        for record in self.state.jobs(1000):  # newest first: a run published twice is its newest job's
            if record.artifact_uri:
                jobs.setdefault(record.artifact_uri.rstrip("/"), record)
        found: dict[int, dict[str, Any] | None] = {}
        for revision in revisions:
            uri = revision.function.spec.model.uri.rstrip("/")
            job = jobs.get(uri)
            run_id = uri.rsplit("/", 1)[-1] if "://" in uri else None
            metrics = job.metrics if job is not None and job.metrics else _read_metrics(revision.model_dir)
            found[revision.number] = ({"id": run_id, "job": job.id if job is not None else None, "metrics": metrics}
                                      if run_id or job is not None else None)
        return found


def _read_examples(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as file:
            text = file.read(MAX_EXAMPLE_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return []
    bodies = []
    for line in text.splitlines():
        try:
            body = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # not JSON, NaN or Infinity (no JSON answer can carry them), too deep
            continue
        if isinstance(body, dict):
            bodies.append(body)
            if len(bodies) == MAX_EXAMPLES:
                break
    return bodies


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_metrics(model_dir: Path) -> dict[str, Any] | None:
    """A run's metrics.json; a NaN loss is news, so non-finite numbers are kept as strings ("nan")."""
    try:
        data = json.loads((model_dir / METRICS_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return as_strings(data) if isinstance(data, dict) else None


def as_chat(name: str, prompt: str) -> dict[str, Any]:
    """An example prompt as the chat request a text-generation function answers."""
    return {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
