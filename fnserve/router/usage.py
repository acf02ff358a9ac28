"""Token counts of a generative answer, as its replica reports them (docs/generative.md, "Tokens").

The replica knows the counts; the router must not tokenize (no model libraries in the control plane),
and must not parse every answer either. So the replica says them where they cost the router least:
``x-fnserve-prompt-tokens`` on every generative answer's head, ``x-fnserve-completion-tokens`` too when
the answer is whole, and, at the end of a stream, one SSE comment line
``: fnserve-usage prompt_tokens=N completion_tokens=M`` (SSE clients skip comments). A stream is only
watched at its tail; the router counts its ``data:`` events on the way, so a stream cut short (the
client left, the replica died) is still charged: the prompt and one token per event passed on.
"""

from __future__ import annotations

from fnserve.replica_contract import (
    COMPLETION_TOKENS_HEADER,
    PROMPT_TOKENS_HEADER,
    USAGE_COMMENT_PREFIX,
    parse_usage_comment,
)
from fnserve.router.invocation import Headers, Invocation

PROMPT_HEADER = PROMPT_TOKENS_HEADER.encode()
COMPLETION_HEADER = COMPLETION_TOKENS_HEADER.encode()
_TAIL = 512  # bytes of a stream kept to find its usage line: far more than the line and `data: [DONE]`


def _count(value: bytes) -> int:
    return int(value) if value.isdigit() and len(value) < 16 else 0


def usage_from_headers(invocation: Invocation, headers: Headers) -> None:
    """The counts an answer's head carries."""
    for name, value in headers:
        if name == PROMPT_HEADER:
            invocation.prompt_tokens = _count(value)
        elif name == COMPLETION_HEADER:
            invocation.completion_tokens = _count(value)


class StreamUsage:
    """Follows a streamed answer: its events counted, its tail kept for the replica's usage line."""

    __slots__ = ("events", "tail")

    def __init__(self) -> None:
        self.events = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data:")
        self.tail = chunk[-_TAIL:] if len(chunk) >= _TAIL else (self.tail + chunk)[-_TAIL:]

    def settle(self, invocation: Invocation) -> None:
        """Put the stream's counts on the invocation: the replica's own, or, for a stream that did not
        reach its end, the events that passed (at most the tokens the request could produce)."""
        at = self.tail.rfind(USAGE_COMMENT_PREFIX)
        counts = parse_usage_comment(self.tail[at:].split(b"\n", 1)[0]) if at >= 0 else None
        if counts is not None:
            invocation.prompt_tokens, invocation.completion_tokens = counts
            return
        produced = self.events - 1 if self.tail.rstrip().endswith(b"data: [DONE]") else self.events
        cap = invocation.max_tokens or produced
        invocation.completion_tokens = max(0, min(produced, cap))
