"""The decoding loop of a causal language model: one forward pass per token, on the KV cache.

``CausalLM.tokens`` is a generator: each ``next()`` runs one forward pass (the whole prompt first, then
only the newest token against the cache of everything before it) and yields the sampled token. The
caller decides after every token whether to ask for another, so stopping — at EOS, a stop string,
``max_tokens`` or a client gone away — costs at most the step already running. Runs in a worker
thread; it shares nothing between requests but the (read-only) model, and each request samples from
its own ``torch.Generator``, so concurrent requests never disturb each other's random numbers and a
``seed`` reproduces an answer whatever else the replica is doing.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Generator, Sequence
from typing import Any

import torch


def sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    """The next token from the last position's logits: greedy at temperature 0, else nucleus sampling
    (the smallest set of most likely tokens whose probability reaches ``top_p``)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        ordered, order = torch.sort(probabilities, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the more likely tokens
        ordered = ordered.masked_fill(before >= top_p, 0.0)  # the most likely token always stays
        return int(order[torch.multinomial(ordered, 1, generator=rng)])
    return int(torch.multinomial(probabilities, 1, generator=rng))


class CausalLM:
    """A loaded ``AutoModelForCausalLM`` on its device, stepped token by token."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device
        parameters = inspect.signature(model.forward).parameters
        # transformers 5 names the KV cache ``cache`` (``past_key_values`` before, and still in some classes)
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def tokens(self, prompt_ids: Sequence[int], *, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None) -> Generator[int, None, None]:
        """Sampled tokens after the prompt, one per ``next()``, without end: the caller stops."""
        rng = torch.Generator(device=self.device)
        rng.manual_seed(secrets.randbits(63) if seed is None else seed)
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        cache = None
        while True:
            with torch.inference_mode():
                output = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache}, **self._last_only)
                cache = output[self._cache_arg]
                token = sample(output.logits[0, -1, :], temperature, top_p, rng)
            yield token
            ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
