"""The OpenAI request bodies a replica accepts, and what it refuses.

Only what a replica can honour is accepted: the sampling parameters of runtimes/params.py, ``n`` = 1,
``stream`` with ``stream_options.include_usage``, and ``user`` (ignored). Parameters OpenAI defines but
a replica cannot honour (``logprobs``, ``tools``, penalties…) are accepted only at their neutral
value — clients such as LangChain send ``"presence_penalty": 0`` or ``"tools": null`` with every
request — and any other value is a 400 naming the parameter; so is a field OpenAI does not define.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from runtimes.errors import bad_request
from runtimes.params import Body, Sampling, field_path
from runtimes.prompts import Message

#: OpenAI parameters a replica does not implement, with the values that ask for nothing (then accepted).
NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "presence_penalty": lambda v: v is None or (type(v) in (int, float) and v == 0),
    "frequency_penalty": lambda v: v is None or (type(v) in (int, float) and v == 0),
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None,
    "logit_bias": lambda v: v is None or v == {},
    "tools": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "functions": lambda v: v is None or v == [],
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "echo": lambda v: v is None or v is False,
    "best_of": lambda v: v is None or (type(v) is int and v == 1),
    "suffix": lambda v: v is None,
    "dimensions": lambda v: v is None,
}
#: Which of them each route knows (others are unknown fields there, as at OpenAI).
CHAT_NEUTRAL = ("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "tools",
                "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format")
COMPLETION_NEUTRAL = ("presence_penalty", "frequency_penalty", "logprobs", "logit_bias", "echo", "best_of",
                      "suffix")
EMBEDDINGS_NEUTRAL = ("dimensions",)


class StreamOptions(Body):
    include_usage: bool = False


class _Generative(Sampling):
    model: str
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None
    name: str | None = None


class ChatRequest(_Generative):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generative):
    prompt: Any


class EmbeddingsRequest(Body):
    model: str
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def take_neutral(body: dict[str, Any], names: tuple[str, ...]) -> None:
    """Remove the unimplemented parameters named in ``names`` from ``body``; a 400 unless each is neutral."""
    for name in names:
        if name in body:
            value = body.pop(name)
            if not NEUTRAL[name](value):
                raise bad_request(f"{name}: not supported by this function (got {value!r})", name)


def check_model(body: dict[str, Any]) -> str:
    """The body's ``model``: present and a string (whether it is this function is the route's question)."""
    model = body.get("model")
    if not isinstance(model, str):
        raise bad_request("model: required, the function's name as a string", "model")
    return model


def check_streaming(request: _Generative) -> None:
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options: only allowed when stream is true", "stream_options")


def chat_messages(request: ChatRequest) -> list[Message]:
    """The conversation as text: content is a string or a list of ``{"type": "text", "text": …}`` parts
    (joined with newlines); any other part (images, audio…) is a 400 naming it."""
    messages = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}].content"
        content = message.content
        if isinstance(content, str):
            messages.append(Message(message.role, content))
            continue
        if not isinstance(content, list) or not content:
            raise bad_request(f"{where}: must be a string or a non-empty list of text parts", where)
        texts = []
        for j, part in enumerate(content):
            at = f"{where}[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{at}: must be an object such as {{\"type\": \"text\", \"text\": \"...\"}}", at)
            if part["type"] != "text":
                raise bad_request(f"{at}.type: only text parts are supported (got {part['type']!r})", f"{at}.type")
            unknown = sorted(set(part) - {"type", "text"})
            if unknown:
                raise bad_request(f"{at}.{unknown[0]}: unknown field", f"{at}.{unknown[0]}")
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{at}.text: required, a string", f"{at}.text")
            texts.append(part["text"])
        messages.append(Message(message.role, "\n".join(texts)))
    return messages


def chat_max_tokens(request: ChatRequest) -> int | None:
    """``max_completion_tokens`` (OpenAI's current name) or ``max_tokens`` (its older one), not two values."""
    if None not in (request.max_tokens, request.max_completion_tokens) \
            and request.max_tokens != request.max_completion_tokens:
        raise bad_request("max_completion_tokens: give it or max_tokens, not two different values",
                         "max_completion_tokens")
    return request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens


def completion_prompt(request: CompletionRequest) -> str:
    """The prompt: a string, or a list holding one string."""
    prompt = request.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise bad_request(f"prompt: one prompt per request (got {len(prompt)})", "prompt")
    raise bad_request("prompt: required, a string (or a list holding one string)", "prompt")


#: OpenAI's limit on texts per embeddings request.
MAX_INPUTS = 2048


def embedding_inputs(request: EmbeddingsRequest) -> list[str]:
    """The texts to embed: a string or a list of strings, none empty (token-id inputs are refused)."""
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad_request("input: required, a string or a non-empty list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"input: at most {MAX_INPUTS} texts per request (got {len(texts)})", "input")
    for i, text in enumerate(texts):
        if not text:
            param = "input" if isinstance(request.input, str) else field_path(("input", i))
            raise bad_request(f"{param}: must not be empty", param)
    return texts
