"""Token ids → text, one decoding step at a time: what a streamed answer may send after each step.

Two problems, one class each:

- A token is not a piece of text. Byte-level tokenizers split a multi-byte character over tokens
  (decoding half of it gives U+FFFD), and SentencePiece-style ones decode a token's leading space
  only after another token. ``IncrementalDecoder`` re-decodes a short window of recent tokens and
  emits only the new suffix, and only once it is complete (no trailing U+FFFD).
- A stop string may arrive split over steps. ``StopFilter`` holds back any tail of the text that
  could be the start of a stop string until the next step shows whether it is; the stop string
  itself is never emitted.

Both are plain Python over a tokenizer's ``decode``, so they are tested without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Prompt tokens the decoder starts its window with: enough context for a tokenizer to decode the first
#: generated token as it will appear in the full text (its leading space, a character's other bytes).
PROMPT_CONTEXT = 6

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes generated tokens into text deltas (vLLM's prefix/read-offset scheme)."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-PROMPT_CONTEXT:])
        self._prefix = 0  # the window's start: text before it was emitted long ago
        self._read = len(self._ids)  # text of ids[prefix:read] was already emitted

    def _decode(self, ids: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text

    def push(self, token: int) -> str:
        """Add one generated token; return the text it completes ("" while a character is still partial)."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]


class StopFilter:
    """Passes text through until a stop string appears; holds back what might be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what is now safe to send. Sets ``stopped`` when a stop string appeared (the
        text before it is returned, the stop string and anything after it are dropped)."""
        if self.stopped:
            return ""
        pending = self._pending + text
        hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending, self.stopped = "", True
            return pending[:min(hits)]
        keep = self._held_back(pending)
        self._pending = pending[len(pending) - keep:]
        return pending[:len(pending) - keep]

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def flush(self) -> str:
        """The generation ended without a stop string: what was held back is text after all."""
        pending, self._pending = self._pending, ""
        return pending
