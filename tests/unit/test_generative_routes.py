"""The OpenAI and generate routes in-process (a FastAPI app set up as the replica sets up KServe's, served by
Starlette's test client): what a client gets for each mistake — status, shape, and the field named — and
the answers' shape and token-usage contract. The same routes in a real replica, spoken to by the
official openai client, are in integration/test_generative_replica.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from starlette.testclient import TestClient

from fnserve.manifest import TransformersOptions
from fnserve.replica_contract import parse_usage_comment
from runtimes import errors, generate_routes, openai_routes
from runtimes.base import FunctionModel
from tests.tiny_lm import save_tiny_lm

NAME = "storyteller"


def app_for(model: FunctionModel) -> FastAPI:
    app = FastAPI(default_response_class=ORJSONResponse)  # as KServe's
    app.state.model = model
    errors.install(app, model)
    openai_routes.install(app, model)
    generate_routes.install(app, model)
    return app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from runtimes.transformers import TransformersModel

    folder = save_tiny_lm(tmp_path_factory.mktemp("gpt2"), "gpt2")
    options = TransformersOptions.model_validate({"task": "text-generation", "maxLength": 64, "maxNewTokens": 8})
    model = TransformersModel(NAME, folder, options=options)
    model.load()
    with TestClient(app_for(model)) as test_client:
        yield test_client
    model.stop()


class Iris(FunctionModel):
    runtime = "onnx"


@pytest.fixture(scope="module")
def iris() -> Iterator[TestClient]:
    with TestClient(app_for(Iris("iris", Path(".")))) as test_client:
        yield test_client


def tokenizer_of(client: TestClient) -> Any:
    return client.app.state.model.tokenizer  # type: ignore[attr-defined]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": NAME, "messages": [{"role": "user", "content": "Tell me a story"}], **fields}


def openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    return dict(error)


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"temperature": "0.5"}, "temperature", "valid number"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"n": 2}, "n", "less than or equal to 1"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"seed": 1.5}, "seed", "valid integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": [""]}, "stop", "must not be empty"),
    ({"stop": 7}, "stop", "string or a list"),
    ({"stream": "yes"}, "stream", "valid boolean"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
    ({"logprobs": True}, "logprobs", "not supported"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
    ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "not two different values"),
    ({"max_token": 5}, "max_token", "unknown parameter (supported: "),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'user'"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "string or a non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type", "only text parts"),
    ({"messages": [{"role": "user", "content": "x", "colour": 1}]}, "messages[0].colour", "unknown field"),
])
def test_a_bad_chat_parameter_is_a_400_naming_it(client: TestClient, fields: dict[str, Any], param: str,
                                                  words: str) -> None:
    error = openai_error(client.post("/openai/v1/chat/completions", json=chat(**fields)), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"] and error["message"].startswith(param)


def test_parameters_at_their_neutral_values_are_accepted(client: TestClient) -> None:
    response = client.post("/openai/v1/chat/completions", json=chat(
        presence_penalty=0, frequency_penalty=0.0, logprobs=False, tools=None, tool_choice="none", n=1, user="u-1",
        messages=[{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": "Hi", "name": "ann"}]))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("raw", "words"), [(b"", "empty"), (b"{nope", "not valid JSON"), (b"[1]", "JSON object")])
def test_a_body_that_is_not_a_json_object_is_a_400(client: TestClient, raw: bytes, words: str) -> None:
    error = openai_error(client.post("/openai/v1/completions", content=raw), 400)
    assert words in error["message"] and error["param"] is None


def test_another_models_name_is_a_404_model_not_found(client: TestClient) -> None:
    error = openai_error(client.post("/openai/v1/chat/completions", json=chat(model="gpt-4o")), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model") and "'gpt-4o'" in error["message"]
    assert openai_error(client.get("/openai/v1/models/gpt-4o"), 404)["code"] == "model_not_found"
    assert openai_error(client.post("/openai/v1/completions", json={"prompt": "x"}), 400)["param"] == "model"


def test_routes_and_methods_that_do_not_exist_answer_in_openai_shape(client: TestClient) -> None:
    assert "no such route" in openai_error(client.post("/openai/v1/responses", json={}), 404)["message"]
    assert "method not allowed" in openai_error(client.get("/openai/v1/chat/completions"), 405)["message"]
    # outside /openai the platform's shape stays
    assert client.post("/v2/models/nope/infer", json={}).json() == {"error": "no such route: POST /v2/models/nope/infer"}


def test_a_route_for_another_task_is_a_400_wrong_task(client: TestClient, iris: TestClient) -> None:
    error = openai_error(client.post("/openai/v1/embeddings", json={"model": NAME, "input": "x"}), 400)
    assert (error["code"], error["param"]) == ("wrong_task", "model")
    assert "feature-extraction" in error["message"] and "text-generation function" in error["message"]
    error = openai_error(iris.post("/openai/v1/chat/completions", json=chat(model="iris")), 400)
    assert error["code"] == "wrong_task" and "'iris' is an onnx function" in error["message"]
    response = iris.post("/v2/models/iris/generate", json={"text_input": "x"})
    assert response.status_code == 400 and "/v2/models/iris/infer" in response.json()["error"]


def test_a_request_beyond_the_context_is_a_400_saying_how_much_fits(client: TestClient) -> None:
    error = openai_error(client.post("/openai/v1/completions", json={"model": NAME, "prompt": "Once", "max_tokens": 100}),
                         400)
    assert error["param"] == "max_tokens" and "context of 64 tokens" in error["message"]
    assert "prompt (2 tokens)" in error["message"] and "at most 62 tokens" in error["message"]
    long = " ".join(["stories"] * 100)
    error = openai_error(client.post("/openai/v1/chat/completions",
                                     json=chat(messages=[{"role": "user", "content": long}])), 400)
    assert error["param"] == "messages" and "shorten the prompt" in error["message"]


def test_a_whole_completion_carries_its_usage_in_body_and_headers(client: TestClient) -> None:
    response = client.post("/openai/v1/completions", json={"model": NAME, "prompt": ["Once upon a time"],
                                                           "max_tokens": 5, "seed": 3})
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == NAME
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    assert response.headers["x-fnserve-prompt-tokens"] == "6"
    assert response.headers["x-fnserve-completion-tokens"] == "5"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and isinstance(choice["text"], str)
    error = openai_error(client.post("/openai/v1/completions", json={"model": NAME, "prompt": ["a", "b"]}), 400)
    assert error["param"] == "prompt" and "one prompt per request" in error["message"]


def events(body: str) -> list[str]:
    return [event for event in body.split("\n\n") if event]


def test_a_streamed_chat_is_openai_chunks_then_usage_then_the_comment_then_done(client: TestClient) -> None:
    prompt = len(tokenizer_of(client).encode("user: Tell me a story\nassistant:"))  # the plain template's prompt
    with client.stream("POST", "/openai/v1/chat/completions",
                       json=chat(stream=True, max_tokens=8, seed=1, stream_options={"include_usage": True})) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fnserve-prompt-tokens"] == str(prompt)
        assert "content-length" not in response.headers
        stream = events(response.read().decode())
    assert stream[-1] == "data: [DONE]"
    assert parse_usage_comment(stream[-2].encode()) == (prompt, 8)
    chunks = [json.loads(event.removeprefix("data: ")) for event in stream[:-2]]
    *content, usage = chunks
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": prompt, "completion_tokens": 8,
                                                         "total_tokens": prompt + 8}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == usage["id"] for c in chunks)
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * (len(content) - 1) + ["length"]
    assert all(c["usage"] is None for c in content)
    whole = client.post("/openai/v1/chat/completions", json=chat(max_tokens=8, seed=1)).json()
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == whole["choices"][0]["message"]["content"]


def test_models_lists_this_function(client: TestClient) -> None:
    body = client.get("/openai/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [NAME]
    assert client.get(f"/openai/v1/models/{NAME}").json()["id"] == NAME


def test_generate_and_generate_stream(client: TestClient) -> None:
    request = {"text_input": "Once upon a time", "parameters": {"max_tokens": 6, "seed": 5}}
    response = client.post(f"/v2/models/{NAME}/generate", json=request)
    body = response.json()
    assert body["model_name"] == NAME and body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
    assert (response.headers["x-fnserve-prompt-tokens"], response.headers["x-fnserve-completion-tokens"]) == ("6", "6")
    with client.stream("POST", f"/v2/models/{NAME}/generate_stream", json=request) as streamed:
        assert streamed.headers["x-fnserve-prompt-tokens"] == "6"
        stream = events(streamed.read().decode())
    assert parse_usage_comment(stream[-1].encode()) == (6, 6)
    steps = [json.loads(event.removeprefix("data: ")) for event in stream[:-1]]
    assert "".join(s["text_output"] for s in steps) == body["text_output"]
    assert steps[-1]["finish_reason"] == "length" and all("finish_reason" not in s for s in steps[:-1])


@pytest.mark.parametrize(("path", "request_body", "status", "words"), [
    ("/v2/models/other/generate", {"text_input": "x"}, 404, "'other' is not served here"),
    (f"/v2/models/{NAME}/generate", {"text_input": "x", "parameters": {"top_k": 5}}, 400,
     "parameters.top_k: unknown parameter (supported: max_tokens, temperature, top_p, stop, seed)"),
    (f"/v2/models/{NAME}/generate", {"parameters": {}}, 400, "text_input: required"),
    (f"/v2/models/{NAME}/generate_stream", {"text_input": "x", "parameters": {"temperature": -1}}, 400,
     "parameters.temperature: Input should be greater than or equal to 0"),
])
def test_generate_errors_are_the_platforms_shape(client: TestClient, path: str, request_body: dict[str, Any],
                                                 status: int, words: str) -> None:
    response = client.post(path, json=request_body)
    assert response.status_code == status and list(response.json()) == ["error"]
    assert words in response.json()["error"]
