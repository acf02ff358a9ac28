"""Chat messages → one prompt string, the way the model was trained to read them if it says how.

A tokenizer saved with a ``chat_template`` renders the conversation itself
(``apply_chat_template(..., add_generation_prompt=True)``), special tokens included, so the prompt is
then encoded without adding any more. A tokenizer without one (a base model such as GPT-2) gets the
plain template below — one ``role: content`` line per message, then ``assistant:`` — which any model
continues sensibly enough; its tokens are encoded as a raw prompt's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

#: The plain template's parts: each message as ``"{role}: {content}\n"``, then the cue for the answer.
PLAIN_MESSAGE = "{role}: {content}\n"
PLAIN_CUE = "assistant:"


class PromptError(ValueError):
    """The messages cannot be rendered (a chat template may refuse an order of roles): the client's to fix."""


@dataclass(frozen=True)
class Message:
    """One chat turn, already reduced to text."""

    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """The text a model continues, and whether its special tokens are already in it."""

    text: str
    templated: bool


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: Sequence[Message]) -> Prompt:
    """The conversation as the prompt the model answers (its template's, else the plain one)."""
    if has_chat_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                 add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:
            raise PromptError(f"messages: the model's chat template refuses them: {exc}") from None
        return Prompt(str(text), templated=True)
    return Prompt("".join(PLAIN_MESSAGE.format(role=m.role, content=m.content) for m in messages) + PLAIN_CUE,
                  templated=False)
