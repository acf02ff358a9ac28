"""Request bodies of the generative routes: JSON in, checked fields out, every mistake named by its field.

The OpenAI routes and the generate extension take the same sampling parameters (``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``) with the same ranges, so both validate them here. Bodies
are pydantic models in strict mode with unknown fields forbidden: ``"temperature": "0.5"`` or a
misspelt ``max_token`` is a 400 that names the field, never a silent default or a 422.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from runtimes.errors import bad_request
from runtimes.generation import Generation, GenerationError, SamplingParams, TextGenerator
from runtimes.prompts import PromptError

#: OpenAI's limit on stop strings per request.
MAX_STOPS = 4


class Body(BaseModel):
    """Base of request bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Sampling(Body):
    """The sampling parameters every generative route accepts."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Any = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value
        if stops is None:
            return None
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings (got {len(stops)})")
        if not all(stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def sampling(self, max_tokens: int | None = None) -> SamplingParams:
        """The parameters as the generator takes them (OpenAI's defaults: temperature 1, top_p 1)."""
        return SamplingParams(max_tokens=self.max_tokens if max_tokens is None else max_tokens,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p,
                              stop=tuple(self.stop or ()), seed=self.seed)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what it is instead."""
    if not raw.strip():
        raise bad_request("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content")`` → ``messages[0].content``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The fields of the (nested) model that holds ``loc``'s last part, if it is a Body; else []."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        nested = None if field is None else next(
            (t for t in (field.annotation, *typing.get_args(field.annotation))
             if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        fields = _fields_at(model, tuple(error["loc"]))
        return f"unknown parameter (supported: {', '.join(fields)})" if fields else "unknown field"
    if error["type"] == "missing":
        return "required"
    return error["msg"].removeprefix("Value error, ")


def validate(model: type[Body], body: dict[str, Any]) -> Any:
    """``model`` from ``body``; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # an unknown field first: a misspelt name explains the other complaints (a "missing" twin) too
        error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        param = field_path(tuple(error["loc"]))
        raise bad_request(f"{param}: {_describe(error, model)}", param or None) from None


async def start_generation(generator: TextGenerator, encode: Callable[[], list[int]], sampling: SamplingParams,
                           prompt_param: str) -> Generation:
    """Encode the prompt in a worker thread (tokenizers and chat templates are not for the event loop), then
    start generating; a prompt or ``max_tokens`` that cannot be served is a 400 naming ``prompt_param``
    (``messages`` or ``prompt`` or ``text_input``) or ``max_tokens``."""
    try:
        prompt_ids = await asyncio.to_thread(encode)
        return generator.start(prompt_ids, sampling)
    except PromptError as exc:
        raise bad_request(str(exc), prompt_param) from None
    except GenerationError as exc:
        raise bad_request(str(exc), prompt_param if exc.param == "prompt" else exc.param) from None
