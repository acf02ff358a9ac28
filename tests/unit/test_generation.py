"""Text generation in-process: detokenizing and stop strings step by step, sampling, the generation threads
(EOS, max_tokens, stop, cancel, the context), and the transformers runtime's text-generation task on a
tiny GPT-2 and a tiny Llama checked against transformers' own ``generate``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fnserve.manifest import TransformersOptions
from runtimes.decoding import sample
from runtimes.detokenize import IncrementalDecoder, StopFilter
from runtimes.generation import Generation, GenerationError, SamplingParams, StepGate, TextGenerator
from runtimes.prompts import Message, render_chat
from tests.tiny_lm import save_tiny_lm


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")


def tokenizer_of(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- detokenizing ------------------------------------------------------------------------------------------

def deltas(tokenizer: Any, prompt: str, completion: str) -> list[str]:
    prompt_ids = tokenizer.encode(prompt)
    ids = tokenizer.encode(prompt + completion)[len(prompt_ids):]
    decoder = IncrementalDecoder(tokenizer, prompt_ids)
    return [decoder.push(token) for token in ids]


def test_a_character_split_over_byte_tokens_is_sent_only_once_whole(gpt2: Path) -> None:
    tokenizer = tokenizer_of(gpt2)
    completion = " héllo wörld 🙂 ok"  # the tokenizer never saw these: é, ö and the emoji are bytes
    pieces = deltas(tokenizer, "Hello world!", completion)
    assert "".join(pieces) == completion
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # the emoji's first bytes completed nothing on their own
    assert "🙂" in pieces or any(p.endswith("🙂") for p in pieces)


def test_sentencepiece_spaces_come_out_as_in_the_whole_text(llama: Path) -> None:
    tokenizer = tokenizer_of(llama)
    pieces = deltas(tokenizer, "Once upon", " a time there was a little robot")
    assert "".join(pieces) == " a time there was a little robot"
    assert pieces[0].startswith(" ")  # the first token's leading space survives


def test_a_stop_string_split_over_steps_is_found_and_never_sent() -> None:
    stops = StopFilter(["END", "\n\n"])
    sent = [stops.push(text) for text in ("once upon a time E", "N", "D and after")]
    assert sent == ["once upon a time ", "", ""] and stops.stopped
    assert stops.push("more") == ""


def test_text_that_only_looked_like_a_stop_string_is_sent_late_not_lost() -> None:
    stops = StopFilter(["STOP"])
    assert [stops.push(t) for t in ("ab ST", "O", "ny")] == ["ab ", "", "STOny"]
    assert stops.push("xS") == "x" and stops.flush() == "S" and not stops.stopped


def test_the_earliest_of_several_stop_strings_wins() -> None:
    stops = StopFilter(["world", "lo"])
    assert stops.push("hello world") == "hel" and stops.stopped


# -- sampling ----------------------------------------------------------------------------------------------

def test_temperature_zero_is_greedy_and_a_small_top_p_keeps_only_the_best() -> None:
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    rng = torch.Generator().manual_seed(0)
    assert sample(logits, 0.0, 1.0, rng) == 1
    assert {sample(logits, 1.0, 0.01, rng) for _ in range(50)} == {1}
    assert {sample(logits, 1.0, 1.0, rng) for _ in range(200)} == {0, 1, 2, 3}


def test_a_seed_reproduces_the_draws() -> None:
    logits = torch.zeros(50)
    first, again, other = (torch.Generator().manual_seed(seed) for seed in (7, 7, 8))
    draws = [[sample(logits, 1.0, 0.9, rng) for _ in range(20)] for rng in (first, again, other)]
    assert draws[0] == draws[1] != draws[2]


# -- the generation threads, on a scripted model -----------------------------------------------------------

class Script:
    """A TokenSource that yields the given tokens, then the last one forever; counts the forward passes."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.script = list(tokens)
        self.steps = 0
        self.gate: threading.Event | None = None

    def tokens(self, prompt_ids: Sequence[int], *, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None) -> Generator[int, None, None]:
        for i in range(10**6):
            if self.gate is not None:
                self.gate.wait(5)
                self.gate.clear()
            self.steps += 1
            yield self.script[min(i, len(self.script) - 1)]


def generator(tokenizer: Any, script: Script, *, context: int = 64, default: int = 8) -> TextGenerator:
    return TextGenerator("tiny", script, tokenizer, context=context, default_max_tokens=default,
                         eos_ids=[tokenizer.eos_token_id], concurrency=2)


def run(gen: TextGenerator, prompt: str, params: SamplingParams) -> tuple[list[Any], Generation]:
    async def go() -> tuple[list[Any], Generation]:
        generation = gen.start(gen.encode_text(prompt), params)
        return [chunk async for chunk in generation], generation

    return asyncio.run(go())


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text))


def test_eos_ends_the_completion_and_is_not_counted(llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = tokenizer_of(llama)
    script = Script(ids(tokenizer, "a little robot")[1:] + [tokenizer.eos_token_id])
    with caplog.at_level(logging.INFO, logger="fnserve.runtime"):
        chunks, generation = run(generator(tokenizer, script), "Once upon", SamplingParams(max_tokens=20))
    assert "".join(c.text for c in chunks) == " a little robot"
    assert [c.finish_reason for c in chunks][-1] == "stop" and chunks[-1].text == ""
    assert generation.completion_tokens == len(script.script) - 1 and generation.finish_reason == "stop"
    assert any(f"tiny: {generation.completion_tokens} tokens in" in r.message and "tokens/s" in r.message
               for r in caplog.records)


def test_max_tokens_ends_with_length_and_the_last_text_carries_it(llama: Path) -> None:
    tokenizer = tokenizer_of(llama)
    script = Script(ids(tokenizer, "the quick brown fox jumps over the lazy dog")[1:])
    chunks, generation = run(generator(tokenizer, script), "Once upon", SamplingParams(max_tokens=3))
    assert generation.completion_tokens == 3 == script.steps
    assert chunks[-1].finish_reason == "length" and chunks[-1].text  # no empty chunk just for the reason
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_a_stop_string_ends_the_completion_before_it(llama: Path) -> None:
    tokenizer = tokenizer_of(llama)
    script = Script(ids(tokenizer, "the quick brown fox jumps over the lazy dog")[1:])
    chunks, generation = run(generator(tokenizer, script), "Once upon", SamplingParams(max_tokens=30, stop=("fox",)))
    assert "".join(c.text for c in chunks) == " the quick brown "
    assert generation.finish_reason == "stop" and generation.completion_tokens == script.steps < 30


def test_a_cancelled_generation_stops_within_one_step(llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = tokenizer_of(llama)
    script = Script(ids(tokenizer, "a b c d e f g h")[1:])
    script.gate = threading.Event()
    gen = generator(tokenizer, script)

    async def go() -> Generation:
        generation = gen.start(gen.encode_text("Once"), SamplingParams(max_tokens=50))
        seen = 0
        async for _ in generation:
            seen += 1
            if seen == 3:
                generation.cancel()
                script.gate.set()  # let a step that was already asked for finish
            else:
                script.gate.set()
        return generation

    with caplog.at_level(logging.INFO, logger="fnserve.runtime"):
        script.gate.set()
        generation = asyncio.run(go())
    assert generation.finish_reason is None and generation.ended
    assert script.steps <= 4  # three read, at most the one running when cancel came
    assert [r.message for r in caplog.records if "went away" in r.message] == [
        f"tiny: client went away after {script.steps} tokens; generation stopped"]


def test_the_context_bounds_prompt_and_completion(llama: Path) -> None:
    tokenizer = tokenizer_of(llama)
    gen = generator(tokenizer, Script([5]), context=16, default=8)
    prompt = gen.encode_text("Once upon a time")  # 5 tokens with <s>
    assert gen.max_tokens_for(len(prompt), None) == 8
    assert gen.max_tokens_for(12, None) == 4  # the default is cut to the room left
    with pytest.raises(GenerationError, match="plus max_tokens") as caught:
        gen.max_tokens_for(len(prompt), 12)
    assert caught.value.param == "max_tokens" and "at most 11 tokens" in str(caught.value)
    with pytest.raises(GenerationError, match="no room") as caught:
        gen.max_tokens_for(16, None)
    assert caught.value.param == "prompt"


def test_an_empty_prompt_starts_from_the_beginning_of_text_token(gpt2: Path) -> None:
    tokenizer = tokenizer_of(gpt2)
    assert generator(tokenizer, Script([5])).encode_text("") == [tokenizer.bos_token_id]


# -- chat templates ----------------------------------------------------------------------------------------

CHAT = [Message("system", "Be brief."), Message("user", "Tell me a story")]


def test_a_tokenizer_with_a_chat_template_renders_the_conversation(llama: Path) -> None:
    tokenizer = tokenizer_of(llama)
    prompt = render_chat(tokenizer, CHAT)
    assert prompt.templated and prompt.text == "<s><|system|>\nBe brief.</s>\n<|user|>\nTell me a story</s>\n<|assistant|>\n"
    gen = generator(tokenizer, Script([5]))
    expected = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in CHAT],
                                             add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert gen.encode_chat(CHAT) == list(expected)  # no second <s> in front of the template's own


def test_a_tokenizer_without_one_gets_the_plain_template(gpt2: Path) -> None:
    prompt = render_chat(tokenizer_of(gpt2), CHAT)
    assert not prompt.templated
    assert prompt.text == "system: Be brief.\nuser: Tell me a story\nassistant:"


# -- the transformers runtime --------------------------------------------------------------------------------

def served(folder: Path, **options: Any) -> Any:
    from runtimes.transformers import TransformersModel

    model = TransformersModel("tiny", folder, options=TransformersOptions.model_validate({"task": "text-generation", **options}),
                              concurrency=4)
    model.load()
    return model


def reference_greedy(folder: Path, prompt: str, tokens: int) -> str:
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_of(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    prompt_ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt_ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    # the completion as it reads after the prompt (a SentencePiece decoder drops a leading space of a text)
    whole = tokenizer.decode(out[0], skip_special_tokens=True)
    return str(whole[len(tokenizer.decode(prompt_ids["input_ids"][0], skip_special_tokens=True)):])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_generation_matches_transformers_generate(arch: str, gpt2: Path, llama: Path) -> None:
    folder = gpt2 if arch == "gpt2" else llama
    model = served(folder)
    assert model.generator is not None and model.generator.context == 512  # the architecture's 512 positions
    gen = model.generator

    async def go() -> str:
        generation = gen.start(await asyncio.to_thread(gen.encode_text, "Once upon a time"),
                               SamplingParams(max_tokens=24, temperature=0))
        return await generation.text()

    text = asyncio.run(go())
    assert text == reference_greedy(folder, "Once upon a time", 24).rstrip("\ufffd")
    assert len(text) > 10


def test_concurrent_seeded_requests_answer_as_they_would_alone(gpt2: Path) -> None:
    gen = served(gpt2, maxNewTokens=16).generator
    prompt = gen.encode_text("Once upon a time")

    async def one(seed: int) -> str:
        return await gen.start(prompt, SamplingParams(seed=seed, top_p=0.9)).text()

    async def together() -> list[str]:
        return list(await asyncio.gather(*(one(seed) for seed in (1, 2, 3, 1))))

    alone = [asyncio.run(one(seed)) for seed in (1, 2, 3)]
    assert asyncio.run(together()) == [*alone, alone[0]]
    assert len(set(alone)) == 3


def test_text_generation_refuses_predict_with_the_routes_to_use(gpt2: Path) -> None:
    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match="/openai/v1/chat/completions"):
        asyncio.run(served(gpt2).predict({"instances": ["hi"]}))


def test_max_length_beyond_the_architecture_is_cut_to_its_positions(gpt2: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fnserve.runtime"):
        model = served(gpt2, maxLength=4096)
    assert model.generator.context == 512
    assert any("maxLength 4096 is more than GPT2LMHeadModel supports" in r.message for r in caplog.records)


def test_the_step_gate_lets_few_in_at_once_and_in_the_order_they_came() -> None:
    gate = StepGate(2)
    with gate, gate:  # two places, both free: nobody waits
        assert gate._inside == 2 and not gate._waiting
    one, order, lock = StepGate(1), [], threading.Lock()

    def stepper(number: int) -> None:
        with one:
            with lock:
                order.append(number)

    threads = []
    with one:  # the place is taken: whoever comes now waits, and is let in in arrival order
        for number in range(6):
            thread = threading.Thread(target=stepper, args=(number,))
            thread.start()
            threads.append(thread)
            deadline = time.monotonic() + 10
            while len(one._waiting) < number + 1 and time.monotonic() < deadline:
                time.sleep(0.001)  # until this thread is queued, so the arrival order is known
    for thread in threads:
        thread.join(10)
    assert order == list(range(6)) and one._inside == 0
