"""The storyteller example's training job, for real but short: the job wrapper runs functions/storyteller/
train.yaml with small parameters, and the run it publishes is a causal LM that beats a unigram baseline
and loads and generates with the Auto classes. (The generative routes that serve it are tested with the
runtime and the router.)"""

from __future__ import annotations

import json
import time
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


def test_short_training_publishes_a_model_that_beats_unigram_and_generates(tmp_path: Path) -> None:
    started = time.monotonic()
    code, outcome, log = run_job(STORYTELLER / "train.yaml", (tmp_path / "storyteller").as_uri(),
                                 "--params", json.dumps(SHORT), timeout=120)
    seconds = time.monotonic() - started
    assert code == 0 and outcome["state"] == "succeeded", log
    run = tmp_path / "storyteller" / outcome["runId"]
    record = json.loads((run / "_manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert record["metrics"] == metrics == outcome["metrics"] and record["params"] == SHORT
    assert 1 < metrics["perplexity"] < metrics["unigram_perplexity"] / 2, metrics
    assert metrics["steps"] > 0 and metrics["tokens_trained"] > 0 and metrics["parameters"] > 0
    assert "smoke check, greedy: 'Once upon a time" in log
    assert seconds < 60, f"the short job took {seconds:.0f} s"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(run, local_files_only=True).eval()
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.n_positions == SHORT["context"]
    encoded = tokenizer("Once upon a time", return_tensors="pt")
    assert encoded["input_ids"][0, 0] == tokenizer.bos_token_id  # a prompt is the beginning of a story
    generated = model.generate(**encoded, max_new_tokens=20, do_sample=False, temperature=None, top_p=None)
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time") + 10, text

    chat = tokenizer.apply_chat_template([{"role": "system", "content": "Tell a story."},
                                          {"role": "user", "content": "Once upon a time, a fox"}],
                                         add_generation_prompt=True, tokenize=False)
    assert chat == "<|endoftext|>Once upon a time, a fox"


def test_a_model_no_better_than_unigram_publishes_nothing(tmp_path: Path) -> None:
    # one optimiser step leaves the model near uniform over the vocabulary: worse than the unigram
    code, outcome, log = run_job(STORYTELLER / "train.yaml", (tmp_path / "storyteller").as_uri(),
                                 "--params", json.dumps({**SHORT, "steps": 1}), timeout=120)
    assert code == 1 and outcome["state"] == "failed", log
    assert "is not clearly below the unigram baseline" in log
    assert not (tmp_path / "storyteller").exists() or not list((tmp_path / "storyteller").iterdir())
