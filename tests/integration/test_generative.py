"""Generative functions as a user meets them: `fnserve up` as a process, functions/storyteller deployed
(its own training job runs first, with short settings), functions/embeddings beside it, and the
official ``openai`` client on the other side — chat, streamed chat whose first chunk comes long before
its last, completions, embeddings equal to the V1 answer, the model list, its exceptions for an unknown
model, a bad parameter and an exhausted token quota, the ledger's tokens against what the client was
told, and a client that leaves mid-stream: generation stops and its concurrency slot is free at once.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import yaml

from tests.conftest import Router, function_copy, http, running_router, wait_for
from tests.integration.test_loadtest import locust, rows
from tests.integration.test_storyteller import SHORT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STORYTELLER = ROOT / "functions" / "storyteller"
EMBEDDINGS = ROOT / "functions" / "embeddings"
#: the storyteller's training job in the tests: test_storyteller's short one (a 128-token context)
QUICK_TRAINING = SHORT


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """One platform for the module, with the storyteller (trained by its own job) and the embeddings."""
    root = tmp_path_factory.mktemp("generative")
    teller = function_copy(STORYTELLER, root / "storyteller", skip=("model",),
                           scaling={"minReplicas": 1, "maxReplicas": 1, "containerConcurrency": 4})
    train = yaml.safe_load((teller / "train.yaml").read_text())
    train["spec"]["params"] = {**train["spec"].get("params", {}), **QUICK_TRAINING}
    (teller / "train.yaml").write_text(yaml.safe_dump(train))
    with running_router(root / "state") as router:
        router.cli("deploy", str(teller), check=True)
        router.cli("deploy", str(EMBEDDINGS), check=True)
        yield router


def client(router: Router, key: str | None = None, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/openai/v1", api_key=key or router.admin_key,
                         **{"max_retries": 0, "timeout": 60, **options})


def new_key(router: Router, name: str, **limits: Any) -> tuple[str, str]:
    created = router.api.create_key(name, scopes=["invoke:*"], limits=limits)
    return created["token"], created["key"]["id"]


def test_the_storyteller_was_trained_by_its_own_job_and_its_run_is_a_language_model(platform: Router) -> None:
    jobs = [j for j in platform.api.jobs()["jobs"] if j["function"] == "storyteller"]
    assert [j["state"] for j in jobs] == ["succeeded"]
    metrics = jobs[0]["metrics"]
    assert 1 < metrics["perplexity"] < metrics["unigram_perplexity"] / 2, metrics
    assert metrics["steps"] > 0 and metrics["tokens_trained"] > 0 and metrics["parameters"] > 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    serving = [r for r in platform.api.revisions("storyteller")["revisions"] if r["current"]]
    run = Path(serving[0]["modelDir"])
    tokenizer = AutoTokenizer.from_pretrained(run, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(run, local_files_only=True)
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.n_positions == SHORT["context"]
    chat = tokenizer.apply_chat_template([{"role": "system", "content": "Tell a story."},
                                          {"role": "user", "content": "Once upon a time, a fox"}],
                                         add_generation_prompt=True, tokenize=False)
    assert chat == "<|endoftext|>Once upon a time, a fox"  # a conversation is the start of a story


def test_chat_completions_and_completions(platform: Router) -> None:
    c = client(platform)
    chat = c.chat.completions.create(model="storyteller", max_tokens=16, temperature=0,
                                     messages=[{"role": "user", "content": "Once upon a time"}])
    assert chat.object == "chat.completion" and chat.model == "storyteller"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 16 and chat.usage.prompt_tokens > 0
    again = c.chat.completions.create(model="storyteller", max_tokens=16, temperature=0,
                                      messages=[{"role": "user", "content": "Once upon a time"}])
    assert again.choices[0].message.content == chat.choices[0].message.content  # greedy is deterministic

    completion = c.completions.create(model="storyteller", prompt="The old fox", max_tokens=12, seed=3,
                                      temperature=0.8)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens <= 12


def test_a_streamed_chat_arrives_token_by_token(platform: Router) -> None:
    c = client(platform)
    started = time.perf_counter()
    arrivals: list[float] = []
    text, usage = "", None
    stream = c.chat.completions.create(model="storyteller", max_tokens=64, temperature=0.9, seed=1, stream=True,
                                       stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": "Once upon a time"}])
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []  # the usage chunk has no choices
            continue
        delta = chunk.choices[0].delta.content or ""
        if delta:
            arrivals.append(time.perf_counter() - started)
            text += delta
    assert usage is not None and usage.completion_tokens >= 32, (usage, text)
    assert len(arrivals) >= usage.completion_tokens // 2  # chunk by chunk, not one body at the end
    # spread over the generation, not gathered into one body: an answer sent whole arrives within a
    # millisecond. (Not "first < last / 3": a first token slowed by a busy machine is no buffering.)
    first, last = arrivals[0], arrivals[-1]
    assert last - first > last / 4, f"first chunk at {first:.3f} s, last at {last:.3f} s"


def test_embeddings_equal_the_v1_answer(platform: Router) -> None:
    sentences = ["a cat sits on the mat", "stocks fell sharply"]
    answer = client(platform).embeddings.create(model="embeddings", input=sentences)
    vectors = np.array([item.embedding for item in sorted(answer.data, key=lambda d: d.index)])
    status, _, v1 = http("POST", f"{platform.url}/v1/models/embeddings:predict", {"instances": sentences},
                         headers=platform.admin)
    assert status == 200
    assert vectors.shape == (2, 384)
    assert np.allclose(vectors, np.array(v1["predictions"]), atol=1e-5)
    assert answer.usage.prompt_tokens > 0


def test_the_model_list_and_the_clients_exceptions(platform: Router) -> None:
    c = client(platform)
    assert {"storyteller", "embeddings"} <= {m.id for m in c.models.list()}
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="storyteller", temperature=7, messages=[{"role": "user", "content": "x"}])
    assert "temperature" in str(bad.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="storyteller", messages=[{"role": "user", "content": "x"}],
                                  logprobs=True)
    with pytest.raises(openai.AuthenticationError):
        client(platform, "fns_not_a_key").models.list()


def test_a_token_quota_is_a_rate_limit_error_and_the_ledger_holds_what_the_client_was_told(
        platform: Router) -> None:
    key, key_id = new_key(platform, "tokens", tpm=400)
    c = client(platform, key)
    told = [0, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(20):  # each reserves 64: the minute's 400 are gone within a few
            answer = c.completions.create(model="storyteller", prompt="Once upon a time", max_tokens=64)
            assert answer.usage is not None
            told[0] += answer.usage.prompt_tokens
            told[1] += answer.usage.completion_tokens
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert '"tokens";q=400;w=60' in refused.value.response.headers["ratelimit-policy"]
    assert refused.value.body["limit"] == "tpm"  # type: ignore[index]
    streamed = 0
    # a stream's tokens count too: a fresh key, its counts told in the stream's usage chunk
    key2, key2_id = new_key(platform, "stream-tokens")
    for chunk in client(platform, key2).chat.completions.create(
            model="storyteller", max_tokens=20, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Tell me a story"}]):
        if chunk.usage is not None:
            streamed_usage = chunk.usage
            streamed += 1
    assert streamed == 1

    def ledger(key_id: str) -> dict[str, Any]:
        rows = [r for r in platform.api.usage(key=key_id)["usage"] if r["function"] == "storyteller"]
        return rows[0] if rows else {}

    row = wait_for(lambda: ledger(key_id) or None, 10, "the usage row of the token key")
    assert (row["promptTokens"], row["completionTokens"]) == tuple(told)
    row2 = ledger(key2_id)
    assert (row2["promptTokens"], row2["completionTokens"]) == (streamed_usage.prompt_tokens,
                                                                 streamed_usage.completion_tokens)
    assert "PROMPT TOK" in platform.cli("usage", "--function", "storyteller", check=True).stdout


def _read_head_and_some(sock: socket.socket, events: int) -> bytes:
    """Read a streamed answer's head and its first ``events`` SSE events."""
    data = b""
    deadline = time.monotonic() + 30
    while data.count(b"data: ") < events and time.monotonic() < deadline:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_a_client_that_leaves_mid_stream_stops_generation_and_frees_its_slot(platform: Router) -> None:
    key, _ = new_key(platform, "single", concurrency=1)
    body = (b'{"model": "storyteller", "stream": true, "max_tokens": 100, '
            b'"messages": [{"role": "user", "content": "Once upon a time"}]}')
    host, port = "127.0.0.1", int(platform.url.rsplit(":", 1)[1])
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json"
                     b"\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        head = _read_head_and_some(sock, 3)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        # while it streams, the key's one slot is taken
        status, _, refused = http("POST", f"{platform.url}/openai/v1/completions",
                                  {"model": "storyteller", "prompt": "x", "max_tokens": 1},
                                  headers={"Authorization": f"Bearer {key}"})
        assert status == 429 and refused["error"]["limit"] == "concurrency"
    left = time.monotonic()
    # the slot is free at once: the next request of the key is admitted
    status, _, _ = wait_for(lambda: (answer := http("POST", f"{platform.url}/openai/v1/completions",
                                                    {"model": "storyteller", "prompt": "x", "max_tokens": 1},
                                                    headers={"Authorization": f"Bearer {key}"}))[0] == 200
                            and answer, 5, "the key's slot to be free")
    assert time.monotonic() - left < 2
    pattern = re.compile(r"client went away after (\d+) tokens")
    found = wait_for(lambda: pattern.findall(platform.api.function_logs("storyteller", tail=400)), 10,
                     "the replica to log that generation stopped")
    assert int(found[-1]) < 100


def test_the_streaming_locust_user_reports_ttft_and_tokens_per_second(platform: Router, tmp_path: Path) -> None:
    folder = tmp_path / "locust"
    result = locust(platform, platform.admin_key, folder, 6, "--slo-p95", "chat TTFT=5000,chat stream=20000",
                    function="storyteller")
    assert result.returncode == 0, result.stderr[-3000:]
    stats = rows(folder)
    assert {"chat stream", "chat TTFT", "chat tokens/s"} <= set(stats), sorted(stats)
    assert int(stats["chat stream"]["Request Count"]) > 0 and int(stats["Aggregated"]["Failure Count"]) == 0
    assert int(stats["chat TTFT"]["Request Count"]) == int(stats["chat tokens/s"]["Request Count"]) > 0
    assert 0 < float(stats["chat TTFT"]["Median Response Time"]) < float(stats["chat stream"]["Median Response Time"])
    assert float(stats["chat tokens/s"]["Average Response Time"]) > 1  # tokens a second, not milliseconds


def test_open_inference_generate_and_generate_stream(platform: Router) -> None:
    status, head, answer = http("POST", f"{platform.url}/v2/models/storyteller/generate",
                                {"text_input": "Once upon a time", "parameters": {"max_tokens": 8, "temperature": 0}},
                                headers=platform.admin)
    assert status == 200 and answer["model_name"] == "storyteller" and answer["text_output"]
    status, head, raw = http("POST", f"{platform.url}/v2/models/storyteller/generate_stream",
                             {"text_input": "Once upon a time", "parameters": {"max_tokens": 8, "temperature": 0}},
                             headers=platform.admin)
    assert status == 200 and head["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert "".join(e["text_output"] for e in events) == answer["text_output"]
