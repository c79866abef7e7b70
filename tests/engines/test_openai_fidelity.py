"""A batch line means what it says: parsed by ``parse_line`` and sent by ``OpenAIEngine`` to the
fake server (which records every body), each field of the line's body reaches the server exactly
as written, and what the server answers comes back whole: in the ``Completion``'s facts and, as
sent, in its ``response``. For every endpoint a batch can run."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.openai_answers import parse_answer
from batchinfer.engines.openai_compat import OpenAIEngine
from batchinfer.pipeline.parsing import parse_line
from batchinfer.records import Completion, ErrorDetail, SuccessRecord, dump_record
from batchinfer.testing import fake_answers
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.loopback_http import QuietHandler, loopback_server

JOB = SamplingParams()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]
SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
    "additionalProperties": False,
}
# What people put in a batch line: every field here must reach the server unchanged.
CONVERSATION = [
    {"role": "developer", "content": "Answer briefly."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "A small domesticated feline."},
    {"role": "user", "content": "And in one word?", "name": "ann"},
]
EVERY_FIELD = {
    "messages": CONVERSATION,
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "echo", "schema": SCHEMA, "strict": True},
    },
    "stop": ["\n\n", "END"],
    "seed": 7,
    "logprobs": True,
    "top_logprobs": 3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "logit_bias": {"50256": -100},
    "user": "user-123",
    "reasoning_effort": "low",
    "metadata": {"team": "ml"},
    "max_completion_tokens": 50,
    "temperature": 0.3,
    "top_p": 0.9,
    "n": 2,
    "store": False,
    "service_tier": "auto",
    "stream": False,
    "modalities": ["text"],
    "x_vendor_extension": {"priority": 3},
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(record_bodies=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(server: FakeOpenAIServer) -> Iterator[OpenAIEngine]:
    config = OpenAIEngineConfig(id="fake", base_url=server.base_url, model="served-name", backoff_s=0.01)
    engine = OpenAIEngine(config)
    yield engine
    engine.close()


def batch_line(body: dict[str, Any], url: str = "/v1/chat/completions", custom_id: str = "r-1") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", **body}})


def parsed(line: str, defaults: RequestDefaults | None = None) -> PromptRequest:
    request = parse_line(line, 1, JOB, defaults=defaults)
    assert isinstance(request, PromptRequest), request
    return request


def sent(server: FakeOpenAIServer, engine: OpenAIEngine, request: PromptRequest) -> tuple[Any, Completion]:
    """What the server received for ``request``, and what came back."""
    server.reset()
    (outcome,) = engine.infer([request])
    assert isinstance(outcome, Completion), outcome
    ((_, body),) = server.bodies
    return body, outcome


def test_every_field_of_a_chat_line_reaches_the_server_as_written_with_the_models_served_name(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    body, _ = sent(server, engine, parsed(batch_line(copy.deepcopy(EVERY_FIELD))))
    assert body == {**EVERY_FIELD, "model": "served-name"}


def test_a_conversation_with_an_earlier_tool_call_and_its_result_reaches_the_server_intact(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    body, _ = sent(server, engine, parsed(batch_line({"messages": CONVERSATION})))
    assert body["messages"] == CONVERSATION


def test_the_jobs_options_fill_only_the_fields_a_line_leaves_out(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    defaults = RequestDefaults(max_tokens=9, temperature=0.0, top_p=0.5, logprobs=True)
    line = batch_line({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7})
    body, _ = sent(server, engine, parsed(line, defaults))
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["logprobs"]) == (0.7, 9, 0.5, True)


def test_a_field_nobody_set_is_left_to_the_servers_default(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    body, _ = sent(server, engine, parsed(batch_line({"messages": [{"role": "user", "content": "hi"}]})))
    assert body == {"model": "served-name", "messages": [{"role": "user", "content": "hi"}]}


def test_a_seed_message_inside_a_batch_line_is_translated_and_the_rest_goes_as_written(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    messages = [{"role": "system", "text": "be brief"}, {"role": "user", "content": "hi"}]
    body, _ = sent(server, engine, parsed(batch_line({"messages": messages})))
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_a_tool_call_comes_back_as_a_tool_call_generation_with_its_calls_in_metadata(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    line = batch_line({"messages": [{"role": "user", "content": "find cats"}], "tools": TOOLS})
    _, answer = sent(server, engine, parsed(line))
    (generation,) = answer.generations
    assert generation.tool_call is True and generation.finish_reason == "tool_calls"
    (call,) = (generation.metadata or {})["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": json.dumps({"echo": "find cats"})}
    assert answer.response is not None
    assert answer.response["choices"][0]["message"]["tool_calls"] == [call]


def test_the_servers_answer_comes_back_whole_id_fingerprint_logprobs_and_usage_details(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    line = batch_line(
        {"messages": [{"role": "user", "content": "two words"}], "logprobs": True, "top_logprobs": 2}
    )
    _, answer = sent(server, engine, parsed(line))
    response = answer.response or {}
    assert (
        response["id"].startswith("chatcmpl-fake-")
        and response["system_fingerprint"] == fake_answers.FINGERPRINT
    )
    assert response["choices"][0]["message"]["refusal"] is None
    (generation,) = answer.generations
    tokens = (generation.logprobs and generation.logprobs.content) or []
    assert [t.token for t in tokens] == ["echo:", "two", "words"]
    assert all(len(t.top_logprobs or []) == 2 for t in tokens)
    assert answer.usage.model_extra == {
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_json_content_and_a_refusal_come_back_as_the_server_gave_them(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    json_format = {"type": "json_schema", "json_schema": {"name": "echo", "schema": SCHEMA}}
    line = batch_line({"messages": [{"role": "user", "content": "x"}], "response_format": json_format})
    _, answer = sent(server, engine, parsed(line))
    assert json.loads(answer.generations[0].text or "") == {"echo": "x"}
    _, refused = sent(
        server, engine, parsed(batch_line({"messages": [{"role": "user", "content": "[refuse]"}]}))
    )
    assert (refused.generations[0].metadata or {})["refusal"] == fake_answers.REFUSAL


def test_n_asked_again_of_a_server_that_gives_one_choice_adds_the_choices_to_one_response() -> None:
    with FakeOpenAIServer(max_choices=1) as srv:
        engine = OpenAIEngine(OpenAIEngineConfig(id="one", base_url=srv.base_url, model="m"))
        try:
            (outcome,) = engine.infer(
                [parsed(batch_line({"messages": [{"role": "user", "content": "n"}], "n": 3}))]
            )
        finally:
            engine.close()
    assert isinstance(outcome, Completion)
    assert [g.text for g in outcome.generations] == ["echo: n", "echo: n", "echo: n"]
    assert [c["index"] for c in (outcome.response or {})["choices"]] == [0, 1, 2]
    assert outcome.usage.completion_tokens == 6 == (outcome.response or {})["usage"]["completion_tokens"]


def test_a_completions_line_goes_to_v1_completions_and_comes_back_with_its_text(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    request = parsed(
        batch_line({"prompt": "Once upon", "max_tokens": 5, "logprobs": 2}, url="/v1/completions")
    )
    assert request.endpoint is Endpoint.completions and request.params.top_logprobs == 2
    body, answer = sent(server, engine, request)
    assert server.bodies[0][0] == fake_answers.COMPLETIONS
    assert body == {"model": "served-name", "prompt": "Once upon", "max_tokens": 5, "logprobs": 2}
    (generation,) = answer.generations
    assert generation.text == "echo: Once upon"
    assert [t.token for t in (generation.logprobs and generation.logprobs.content) or []] == [
        "echo:",
        "Once",
        "upon",
    ]
    assert (answer.response or {})["object"] == "text_completion"


def test_an_embeddings_line_comes_back_as_one_vector_per_input_in_order(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    inputs = ["first", "second", "third"]
    request = parsed(batch_line({"input": inputs, "dimensions": 4}, url="/v1/embeddings"))
    body, answer = sent(server, engine, request)
    assert body == {"model": "served-name", "input": inputs, "dimensions": 4}
    assert answer.embeddings == [fake_answers.embedding_of(text, 4) for text in inputs]
    assert answer.generations == []


def test_a_responses_line_comes_back_with_its_output_text_or_its_function_call(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    request = parsed(batch_line({"input": "hello", "max_output_tokens": 20}, url="/v1/responses"))
    _, answer = sent(server, engine, request)
    assert answer.generations[0].text == "echo: hello" and answer.generations[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 1 and (answer.response or {})["object"] == "response"
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    _, called = sent(
        server, engine, parsed(batch_line({"input": "cats", "tools": tools}, url="/v1/responses"))
    )
    assert called.generations[0].tool_call is True
    assert (called.generations[0].metadata or {})["tool_calls"][0]["name"] == "lookup"


# (endpoint, a 200 body that is not that endpoint's answer)
NOT_AN_ANSWER = [
    (Endpoint.chat, {"data": [{"embedding": [1.0]}]}),
    (Endpoint.chat, {"choices": [{"message": {"content": 5}}]}),
    (Endpoint.chat, {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": 1}]}}]}),
    (Endpoint.completions, {"choices": [{"message": {"content": "x"}}]}),
    (Endpoint.embeddings, {"choices": [{"text": "x"}]}),
    (Endpoint.responses, {"choices": []}),
    (Endpoint.responses, {"output": ["text"]}),
]


@pytest.mark.parametrize(("endpoint", "data"), NOT_AN_ANSWER)
def test_a_body_that_is_not_the_endpoints_answer_is_refused_saying_what_is_wrong(
    endpoint: Endpoint, data: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_answer(endpoint, data)


def test_a_200_that_is_not_the_endpoints_answer_is_a_bad_response_record() -> None:
    chat_answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()

    class AnswersChatToEverything(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.reply(200, chat_answer)

    with loopback_server(AnswersChatToEverything) as base:
        engine = OpenAIEngine(OpenAIEngineConfig(id="odd", base_url=base + "/v1", model="m", max_retries=0))
        try:
            (outcome,) = engine.infer([parsed(batch_line({"input": "x"}, "/v1/embeddings"))])
        finally:
            engine.close()
    assert isinstance(outcome, ErrorDetail) and outcome.code == "bad_response"
    assert "/v1/embeddings answer" in outcome.message


def test_a_success_record_carries_the_servers_answer_and_its_vectors(
    server: FakeOpenAIServer, engine: OpenAIEngine
) -> None:
    _, answer = sent(server, engine, parsed(batch_line({"input": "v"}, url="/v1/embeddings")))
    record = SuccessRecord(
        line=1, generations=[], usage=answer.usage, embeddings=answer.embeddings, response=answer.response
    )
    line = json.loads(dump_record(record))
    assert line["embeddings"] == answer.embeddings and line["response"] == answer.response
