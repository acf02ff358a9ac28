"""Text generation for a replica: requests in, text chunks out, the model stepped in worker threads.

``TextGenerator`` owns a pool of generation threads (one per request a replica serves at once:
``spec.scaling.containerConcurrency``, or ``DEFAULT_CONCURRENCY`` when that is 0). ``start()`` checks
that the prompt and its completion fit the context and hands the request to a thread, which steps the
model (``runtimes.decoding``), turns tokens into text (``runtimes.detokenize``) and passes each
decoding step's text to the event loop with ``loop.call_soon_threadsafe`` into the request's asyncio
queue. The event loop never runs the model; the thread never touches the loop's objects directly.

Many streams, few cores: each thread holds its stream for its whole life, but only ``stepping`` of
them run a decoding step at a time, taking turns in arrival order (``StepGate``). With hundreds of
streams on a small CPU replica every stream still moves, just slower, and the event loop — which
answers health checks and writes every stream's chunks — is never starved of the interpreter by
hundreds of runnable threads (it was: a replica with 256 streams stopped answering its liveness
probe and was replaced mid-stream).

A ``Generation`` is what a route holds: an async iterator of ``Chunk`` (the last one carries the
finish reason), the token counts the router bills, and ``cancel()`` for a client that went away —
the thread checks it before every decoding step, so at most the step already running is wasted.
Each generation logs one line when it ends: its tokens and tokens/s, or how many tokens it had when
the client went away.

This module does not import torch: the routes that use it are installed in every replica, and an ONNX
replica never pays for torch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runtimes.detokenize import IncrementalDecoder, StopFilter
from runtimes.prompts import Message, Prompt, render_chat

log = logging.getLogger("fnserve.runtime")

#: Generation threads when the manifest sets no ``containerConcurrency`` (0 = no limit in Knative's
#: sense): enough for a CPU replica to interleave requests, few enough to bound its memory.
DEFAULT_CONCURRENCY = 16

FinishReason = Literal["stop", "length"]


class GenerationError(ValueError):
    """The request cannot be generated as asked (too long for the context, an empty prompt): a 400.
    ``param`` is the request field to change: ``prompt`` or ``max_tokens``."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class GenerationFailed(RuntimeError):
    """The model failed while generating (not the client's doing); raised where the chunks are read."""


class TokenSource(Protocol):
    """A model that yields one sampled token per ``next()`` (``runtimes.decoding.CausalLM``)."""

    def tokens(self, prompt_ids: Sequence[int], *, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None) -> Generator[int, None, None]: ...


@dataclass(frozen=True)
class SamplingParams:
    """What a request may choose; ``max_tokens`` None means the function's default (``maxNewTokens``),
    cut to what the context leaves after the prompt."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Chunk:
    """The text one decoding step completed; the last chunk has ``finish_reason`` (its text may be "")."""

    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class _Step:
    text: str
    tokens: int


@dataclass(frozen=True)
class _End:
    text: str
    tokens: int
    finish_reason: FinishReason | None  # None: cancelled or failed
    error: BaseException | None = None


class Generation:
    """One request's generation as the event loop sees it (create with ``TextGenerator.start``)."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, max_tokens: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.prompt_tokens = len(self.prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._loop = loop
        self._queue: asyncio.Queue[_Step | _End] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.cancel_reason = ""
        self._ended = False

    # -- the event loop's side ---------------------------------------------------------------------------
    def cancel(self, reason: str = "client went away") -> None:
        """Stop generating: the thread stops before its next decoding step and logs ``reason`` (the first
        one given)."""
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def ended(self) -> bool:
        """Whether the last chunk (or the failure) has been read."""
        return self._ended

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        self.completion_tokens = item.tokens
        if isinstance(item, _Step):
            return Chunk(item.text)
        self._ended = True
        self.finish_reason = item.finish_reason
        if item.error is not None:
            raise GenerationFailed(f"{type(item.error).__name__}: {item.error}") from item.error
        if item.finish_reason is None:
            raise StopAsyncIteration
        return Chunk(item.text, item.finish_reason)

    async def text(self) -> str:
        """All of the completion (for an answer that is not streamed)."""
        return "".join([chunk.text async for chunk in self])

    # -- the generation thread's side ----------------------------------------------------------------------
    def post(self, item: _Step | _End) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is stopping, nobody reads any more
            self.cancel("the server stopped")


class StepGate:
    """At most ``limit`` threads inside at once, the others admitted first come, first served: a thread
    that leaves hands its place straight to the longest waiter, so one that loops back to the gate
    cannot overtake the threads already queued (threading.Semaphore lets it barge)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inside = 0
        self._waiting: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            if self._inside < self.limit and not self._waiting:
                self._inside += 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # the place was handed over: _inside already counts this thread

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._inside -= 1


class TextGenerator:
    """A text-generation function's model, tokenizer and generation threads."""

    def __init__(self, name: str, lm: TokenSource, tokenizer: Any, *, context: int, default_max_tokens: int,
                 eos_ids: Iterable[int], concurrency: int = 0, stepping: int = 2) -> None:
        self.name = name
        self.lm = lm
        self.tokenizer = tokenizer
        self.context = context
        self.default_max_tokens = default_max_tokens
        self.eos_ids = frozenset(eos_ids)
        self.concurrency = concurrency or DEFAULT_CONCURRENCY
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"{name}-generate")
        self._gate = StepGate(max(1, stepping))
        self._running: set[Generation] = set()  # what close() cancels; threads remove their own
        self._lock = threading.Lock()

    # -- prompts (tokenizer work: call these in a worker thread, e.g. asyncio.to_thread) --------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids; special tokens are added unless a chat template already wrote them."""
        ids = list(self.tokenizer.encode(prompt.text, add_special_tokens=not prompt.templated))
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [int(self.tokenizer.bos_token_id)]  # an empty prompt: the model starts a text from scratch
        if not ids:
            raise GenerationError("the prompt is empty and this model has no beginning-of-text token to start "
                                  "from: send some text", "prompt")
        return ids

    def encode_text(self, text: str) -> list[int]:
        return self.encode(Prompt(text, templated=False))

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        return self.encode(render_chat(self.tokenizer, messages))

    # -- generating (on the event loop) --------------------------------------------------------------------
    def max_tokens_for(self, prompt_tokens: int, asked: int | None) -> int:
        """How many tokens the completion may have; a GenerationError when the request cannot fit."""
        room = self.context - prompt_tokens
        if room < 1:
            raise GenerationError(f"the prompt is {prompt_tokens} tokens, and this function's context is "
                                  f"{self.context} tokens (prompt and completion together): no room is left for a "
                                  f"completion; shorten the prompt", "prompt")
        if asked is None:
            return min(self.default_max_tokens, room)
        if asked > room:
            raise GenerationError(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) is "
                                  f"{prompt_tokens + asked} tokens, more than this function's context of "
                                  f"{self.context} tokens: shorten the prompt or ask for at most {room} tokens", "max_tokens")
        return asked

    def start(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Queue the generation on a generation thread; read its chunks from the returned Generation."""
        max_tokens = self.max_tokens_for(len(prompt_ids), params.max_tokens)
        loop = asyncio.get_running_loop()
        generation = Generation(prompt_ids, params, max_tokens, loop)
        with self._lock:
            self._running.add(generation)
        self._executor.submit(self._run, generation)
        return generation

    def close(self) -> None:
        """The replica is stopping: drop queued generations, stop running ones at their next step."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for generation in self._running:
                generation.cancel("the replica is stopping")

    # -- the generation thread -----------------------------------------------------------------------------
    def _run(self, generation: Generation) -> None:
        try:
            self._generate(generation)
        finally:
            with self._lock:
                self._running.discard(generation)

    def _generate(self, generation: Generation) -> None:
        started = time.perf_counter()
        params = generation.params
        decoder = IncrementalDecoder(self.tokenizer, generation.prompt_ids)
        stops = StopFilter(params.stop)
        tokens = self.lm.tokens(generation.prompt_ids, temperature=params.temperature, top_p=params.top_p,
                                seed=params.seed)
        count, tail = 0, ""
        finish: FinishReason | None = None
        try:
            while not generation.cancelled:
                with self._gate:
                    token = next(tokens)  # one forward pass
                if token in self.eos_ids:
                    finish, tail = "stop", stops.flush()
                    break
                count += 1
                text = stops.push(decoder.push(token))
                if stops.stopped:
                    finish, tail = "stop", text
                    break
                if count >= generation.max_tokens:
                    finish, tail = "length", text + stops.flush()
                    break
                if text:
                    generation.post(_Step(text, count))
        except Exception as exc:
            log.exception("%s: generation failed after %d tokens", self.name, count)
            generation.post(_End("", count, None, exc))
            return
        finally:
            tokens.close()
        elapsed = time.perf_counter() - started
        if finish is None:
            log.info("%s: %s after %d tokens; generation stopped", self.name, generation.cancel_reason, count)
            generation.post(_End("", count, None))
            return
        log.info("%s: %d tokens in %.2f s (%.1f tokens/s), prompt %d tokens, finish_reason %s", self.name, count,
                 elapsed, count / elapsed if elapsed > 0 else 0.0, generation.prompt_tokens, finish)
        generation.post(_End(tail, count, finish))
