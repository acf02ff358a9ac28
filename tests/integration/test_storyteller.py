"""The storyteller example's training job refuses to publish a model no better than a unigram baseline.
The short training itself (SHORT) runs once, in tests/integration/test_generative.py, where
`fnserve deploy functions/storyteller` runs the job with these settings and its run is checked and
served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_job

pytestmark = pytest.mark.slow

STORYTELLER = ROOT / "functions" / "storyteller"
#: A short training: a smaller model, 120 steps on one thread (about 10 s when the two cores are free; two
#: threads are faster on free cores but many times slower when another process holds one), capped at 30 s.
#: The whole job stays well under a minute, and the model still ends far below the unigram's perplexity.
SHORT = {"steps": 120, "max_seconds": 30, "threads": 1, "layers": 2, "dim": 128, "heads": 4, "batch_size": 8,
         "context": 128, "lr": 4e-3, "warmup": 10}


def test_a_model_no_better_than_unigram_publishes_nothing(tmp_path: Path) -> None:
    # one optimiser step leaves the model near uniform over the vocabulary: worse than the unigram
    code, outcome, log = run_job(STORYTELLER / "train.yaml", (tmp_path / "storyteller").as_uri(),
                                 "--params", json.dumps({**SHORT, "steps": 1}), timeout=120)
    assert code == 1 and outcome["state"] == "failed", log
    assert "is not clearly below the unigram baseline" in log
    assert not (tmp_path / "storyteller").exists() or not list((tmp_path / "storyteller").iterdir())
