"""parse_line: one prompt-file line becomes a PromptRequest, or an error record saying why not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchinfer.contract import MediaAttachmentDataType, MediaAttachmentType
from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.pipeline.parsing import parse_line
from batchinfer.records import ErrorRecord
from batchinfer.settings import Limits

JOB_PARAMS = SamplingParams(max_tokens=64, temperature=0.5, top_p=0.9, n=1)
LINE = 7
USER = {"role": "user", "text": "hello"}


def batch_line(**overrides: Any) -> str:
    line: dict[str, Any] = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return json.dumps(line)


def parse_ok(text: str) -> PromptRequest:
    outcome = parse_line(text, LINE, JOB_PARAMS)
    assert isinstance(outcome, PromptRequest), outcome
    return outcome


# (case, line text, expected error code)
BAD_LINES = [
    ("invalid JSON", '[{"role": "user", "text": "hi"}', "invalid_json"),
    ("trailing garbage after JSON", '[{"role": "user", "text": "hi"}] x', "invalid_json"),
    ("an object that is not a message list", '{"role": "user", "text": "hi"}', "not_a_list"),
    ("a bare string", '"hello"', "not_a_list"),
    ("a bare number", "42", "not_a_list"),
    ("null", "null", "not_a_list"),
    ("a boolean", "true", "not_a_list"),
    ("an empty list", "[]", "empty_messages"),
    ("an element that is not an object", '["hello"]', "invalid_message"),
    ("an element that is a list", "[[]]", "invalid_message"),
    ("an unknown role", '[{"role": "wizard", "text": "hi"}]', "unknown_role"),
    ("a role that is not a string", '[{"role": 1, "text": "hi"}]', "unknown_role"),
    ("a missing role", '[{"text": "hi"}]', "missing_role"),
    ("no text and no attachments", '[{"role": "user"}]', "missing_text"),
    ("an empty text and no attachments", '[{"role": "user", "text": ""}]', "missing_text"),
    ("text that is a number", '[{"role": "user", "text": 5}]', "invalid_message"),
    (
        "an unknown attachment_type",
        '[{"role": "user", "text": "hi", "attachments": '
        '[{"attachment_type": "pdf", "data_type": "uri", "data": "https://x/a.pdf"}]}]',
        "invalid_attachment",
    ),
    (
        "an unknown attachment data_type",
        '[{"role": "user", "text": "hi", "attachments": '
        '[{"attachment_type": "image", "data_type": "ftp", "data": "x"}]}]',
        "invalid_attachment",
    ),
    (
        "an attachment without data",
        '[{"role": "user", "text": "hi", "attachments": [{"attachment_type": "image", "data_type": "uri"}]}]',
        "invalid_attachment",
    ),
    (
        "attachments that are not a list",
        '[{"role": "user", "text": "hi", "attachments": {"attachment_type": "image"}}]',
        "invalid_attachment",
    ),
    (
        "an OpenAI content that is neither string nor list",
        '[{"role": "user", "content": 5}]',
        "invalid_message",
    ),
    (
        "an OpenAI content part of an unknown type",
        '[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]',
        "invalid_message",
    ),
    (
        "a batch line with an unsupported url",
        batch_line(url="/v1/images/generations"),
        "unsupported_endpoint",
    ),
    (
        "a batch line with a url that is not a string",
        batch_line(url=["/v1/chat/completions"]),
        "unsupported_endpoint",
    ),
    ("a batch line with a non-POST method", batch_line(method="GET"), "unsupported_method"),
    ("a batch line whose body has no messages", batch_line(body={"model": "m"}), "invalid_body"),
    ("a batch line whose body is not an object", batch_line(body=[USER]), "invalid_body"),
    (
        "a batch line with temperature -1",
        batch_line(body={"messages": [USER], "temperature": -1}),
        "invalid_parameter",
    ),
    (
        "a batch line with max_tokens 0",
        batch_line(body={"messages": [USER], "max_tokens": 0}),
        "invalid_parameter",
    ),
    ("a batch line with n 0", batch_line(body={"messages": [USER], "n": 0}), "invalid_parameter"),
    ("a batch line with top_p 2", batch_line(body={"messages": [USER], "top_p": 2}), "invalid_parameter"),
    ("a batch line with a non-string custom_id", batch_line(custom_id=5), "invalid_custom_id"),
    (
        "a messages object with a non-string custom_id",
        '{"custom_id": [1], "messages": []}',
        "invalid_custom_id",
    ),
    ("a batch line whose messages are empty", batch_line(body={"messages": []}), "empty_messages"),
    ("deeply nested JSON", "[" * 100_000 + "]" * 100_000, "invalid_json"),
]


@pytest.mark.parametrize(("text", "code"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
def test_a_bad_line_becomes_an_error_record_with_a_code_a_message_and_its_line_number(
    text: str, code: str
) -> None:
    outcome = parse_line(text, LINE, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord)
    assert outcome.error.code == code
    assert outcome.error.message.strip()
    assert outcome.line == LINE


def test_an_error_on_a_batch_line_keeps_its_custom_id() -> None:
    outcome = parse_line(batch_line(custom_id="keep-me", method="GET"), LINE, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord)
    assert outcome.custom_id == "keep-me"


def test_an_error_in_a_batch_lines_messages_keeps_its_custom_id() -> None:
    outcome = parse_line(batch_line(custom_id="keep-me", body={"messages": [{"text": "x"}]}), 1, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord)
    assert (outcome.custom_id, outcome.error.code) == ("keep-me", "missing_role")


def test_a_seed_format_line_parses_with_the_job_params_and_no_custom_id() -> None:
    request = parse_ok(
        json.dumps(
            [
                {"role": "system", "text": "be brief"},
                {"role": "user", "text": "hi", "eot": True},
            ]
        )
    )
    assert request.line == LINE
    assert request.custom_id is None
    assert request.params == JOB_PARAMS
    assert [(m.role, m.text) for m in request.messages] == [("system", "be brief"), ("user", "hi")]
    assert request.messages[1].eot is True


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "ipython"])
def test_every_known_role_is_accepted(role: str) -> None:
    assert parse_ok(json.dumps([{"role": role, "text": "x"}])).messages[0].role == role


def test_a_seed_message_with_only_an_attachment_is_accepted() -> None:
    attachment = {"attachment_type": "image", "data_type": "uri", "data": "https://x/cat.png"}
    request = parse_ok(json.dumps([{"role": "user", "attachments": [attachment]}]))
    (parsed,) = request.messages[0].attachments or []
    assert parsed.attachment_type is MediaAttachmentType.image
    assert parsed.data == "https://x/cat.png"


def test_an_openai_style_content_string_becomes_text() -> None:
    request = parse_ok('[{"role": "user", "content": "what is 2+2?"}]')
    assert request.messages[0].text == "what is 2+2?"
    assert "content" not in request.messages[0].model_dump()


def test_openai_content_parts_become_text_and_an_image_attachment_with_a_uri() -> None:
    request = parse_ok(
        json.dumps(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                        {"type": "text", "text": "briefly"},
                    ],
                }
            ]
        )
    )
    (message,) = request.messages
    assert message.text == "describe\nbriefly"
    (attachment,) = message.attachments or []
    assert attachment.attachment_type is MediaAttachmentType.image
    assert attachment.data_type is MediaAttachmentDataType.uri
    assert attachment.data == "https://example.com/cat.png"


def test_an_openai_batch_line_keeps_its_custom_id_and_applies_body_overrides() -> None:
    request = parse_ok(
        batch_line(
            custom_id="req-42",
            body={
                "model": "ignored",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 11,
                "temperature": 0.0,
                "n": 3,
            },
        )
    )
    assert request.custom_id == "req-42"
    assert request.messages[0].text == "hi"
    assert request.params.max_tokens == 11
    assert request.params.temperature == 0.0
    assert request.params.n == 3
    assert request.params.top_p == JOB_PARAMS.top_p  # not overridden: the job's value


def test_max_completion_tokens_in_a_batch_body_overrides_max_tokens() -> None:
    body = {"messages": [USER], "max_completion_tokens": 5}
    assert parse_ok(batch_line(body=body)).params.max_tokens == 5


def test_a_batch_line_without_method_or_url_defaults_to_chat_completions() -> None:
    request = parse_ok(json.dumps({"custom_id": "a", "body": {"messages": [USER]}}))
    assert request.custom_id == "a"
    assert request.params == JOB_PARAMS


def test_a_batch_line_may_use_the_short_chat_url_and_a_lowercase_method() -> None:
    assert parse_ok(batch_line(url="/chat/completions", method="post")).custom_id == "req-1"


def test_a_messages_object_is_accepted_with_its_custom_id() -> None:
    request = parse_ok(json.dumps({"custom_id": "obj-1", "messages": [USER]}))
    assert request.custom_id == "obj-1"
    assert request.messages[0].text == "hello"
    assert request.params == JOB_PARAMS


def test_unknown_extra_message_fields_are_preserved() -> None:
    request = parse_ok(json.dumps([{"role": "user", "text": "hi", "name": "bob", "x_trace": {"a": 1}}]))
    dumped = request.messages[0].model_dump()
    assert dumped["name"] == "bob"
    assert dumped["x_trace"] == {"a": 1}


def test_a_parsed_request_round_trips_through_json() -> None:
    request = parse_ok(
        batch_line(body={"messages": [{"role": "user", "content": "hi", "name": "z"}], "n": 2})
    )
    assert PromptRequest.model_validate_json(request.model_dump_json()) == request


@pytest.mark.parametrize(
    ("body_field", "value", "setting"),
    [
        ("n", 17, "BATCHINFER_MAX_NUM_GENERATIONS"),
        ("max_tokens", 32769, "BATCHINFER_MAX_MAX_TOKENS"),
        ("max_completion_tokens", 10**6, "BATCHINFER_MAX_MAX_TOKENS"),
    ],
)
def test_a_batch_line_override_past_a_limit_is_a_limit_exceeded_error_naming_the_setting(
    body_field: str, value: int, setting: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], body_field: value}
    outcome = parse_line(batch_line(body=body), LINE, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord)
    assert (outcome.custom_id, outcome.error.code) == ("req-1", "limit_exceeded")
    assert setting in outcome.error.message


def test_batch_line_overrides_within_configured_limits_are_accepted() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 32}
    outcome = parse_line(batch_line(body=body), LINE, JOB_PARAMS, Limits(max_num_generations=32))
    assert isinstance(outcome, PromptRequest)
    assert outcome.params.n == 32


# -- batch lines say what they mean: bodies kept, endpoints, the job's options as defaults -------


def test_a_batch_lines_body_is_kept_as_written_less_its_model() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [], "user": "u-1"}
    request = parse_ok(batch_line(body=body))
    assert request.body == {"messages": [{"role": "user", "content": "hi"}], "tools": [], "user": "u-1"}
    assert request.endpoint is Endpoint.chat


def test_a_seed_format_line_has_no_body_the_engine_builds_one() -> None:
    assert parse_ok(json.dumps([USER])).body is None


def test_stream_is_refused_naming_the_field_and_stream_false_is_kept() -> None:
    refused = parse_line(batch_line(body={"messages": [USER], "stream": True}), LINE, JOB_PARAMS)
    assert isinstance(refused, ErrorRecord)
    assert (refused.custom_id, refused.error.code) == ("req-1", "unsupported_parameter")
    assert "body.stream" in refused.error.message
    assert parse_ok(batch_line(body={"messages": [USER], "stream": False})).body == {
        "messages": [USER],
        "stream": False,
    }


@pytest.mark.parametrize(
    ("url", "body", "endpoint"),
    [
        ("/v1/completions", {"prompt": "Once"}, Endpoint.completions),
        ("/completions", {"prompt": ["a", "b"]}, Endpoint.completions),
        ("/v1/embeddings", {"input": "text"}, Endpoint.embeddings),
        ("/v1/embeddings", {"input": [1, 2, 3]}, Endpoint.embeddings),
        ("/v1/responses", {"input": "hi"}, Endpoint.responses),
        ("/v1/responses", {"input": [{"role": "user", "content": "hi"}]}, Endpoint.responses),
    ],
)
def test_a_line_for_each_endpoint_is_a_request_for_that_endpoint(
    url: str, body: dict[str, Any], endpoint: Endpoint
) -> None:
    request = parse_ok(batch_line(url=url, body=body))
    assert (request.endpoint, request.body, request.messages) == (endpoint, body, [])


# (case, url, body): each is an invalid_body naming the endpoint's prompt field
BAD_BODIES = [
    ("completions without a prompt", "/v1/completions", {"messages": [USER]}),
    ("completions with an empty prompt", "/v1/completions", {"prompt": ""}),
    ("embeddings without input", "/v1/embeddings", {"prompt": "x"}),
    ("embeddings with an empty list", "/v1/embeddings", {"input": []}),
    ("responses with a numeric input", "/v1/responses", {"input": 5}),
]


@pytest.mark.parametrize(("url", "body"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_a_body_without_its_endpoints_prompt_is_an_invalid_body(url: str, body: dict[str, Any]) -> None:
    outcome = parse_line(batch_line(url=url, body=body), LINE, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord) and outcome.error.code == "invalid_body"
    assert "prompt" in outcome.error.message or "input" in outcome.error.message


@pytest.mark.parametrize(
    ("url", "body", "filled"),
    [
        (
            "/v1/chat/completions",
            {"messages": [USER]},
            {"max_tokens": 9, "temperature": 0.0, "logprobs": True, "n": 2},
        ),
        (
            "/v1/chat/completions",
            {"messages": [USER], "max_completion_tokens": 3},
            {"temperature": 0.0, "logprobs": True, "n": 2},
        ),
        ("/v1/completions", {"prompt": "p"}, {"max_tokens": 9, "temperature": 0.0, "logprobs": 0, "n": 2}),
    ],
)
def test_the_jobs_own_options_fill_what_a_line_leaves_out_in_the_endpoints_words(
    url: str, body: dict[str, Any], filled: dict[str, Any]
) -> None:
    defaults = RequestDefaults(max_tokens=9, temperature=0.0, logprobs=True, n=2)
    outcome = parse_line(batch_line(url=url, body=body), LINE, JOB_PARAMS, defaults=defaults)
    assert isinstance(outcome, PromptRequest)
    assert outcome.body == {**body, **{k: v for k, v in filled.items() if k not in body}}


@pytest.mark.parametrize(
    ("url", "body", "named"),
    [
        ("/v1/embeddings", {"input": "x"}, "options.max_tokens"),
        ("/v1/responses", {"input": "x"}, "num_generations"),
    ],
)
def test_job_options_that_mean_nothing_for_an_endpoint_are_a_line_error_naming_them(
    url: str, body: dict[str, Any], named: str
) -> None:
    defaults = RequestDefaults(max_tokens=9, n=2)
    outcome = parse_line(batch_line(url=url, body=body), LINE, JOB_PARAMS, defaults=defaults)
    assert isinstance(outcome, ErrorRecord) and outcome.error.code == "unsupported_parameter"
    assert named in outcome.error.message


def test_a_responses_line_takes_the_jobs_max_tokens_as_max_output_tokens() -> None:
    defaults = RequestDefaults(max_tokens=9)
    outcome = parse_line(
        batch_line(url="/v1/responses", body={"input": "x"}), LINE, JOB_PARAMS, defaults=defaults
    )
    assert isinstance(outcome, PromptRequest) and outcome.body == {"input": "x", "max_output_tokens": 9}


def test_sampling_fields_of_a_body_become_the_lines_params() -> None:
    format_ = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    body = {"messages": [USER], "stop": "END", "seed": 3, "logprobs": True, "top_logprobs": 4}
    params = parse_ok(batch_line(body={**body, "response_format": format_})).params
    assert (params.stop, params.seed, params.logprobs, params.top_logprobs) == (("END",), 3, True, 4)
    assert params.response_format is not None and json.loads(params.response_format) == format_
    assert (
        parse_ok(batch_line(body={"messages": [USER], "response_format": {"type": "text"}})).params
        == JOB_PARAMS
    )


def test_a_completions_lines_logprobs_count_is_its_top_logprobs() -> None:
    params = parse_ok(batch_line(url="/v1/completions", body={"prompt": "p", "logprobs": 3})).params
    assert (params.logprobs, params.top_logprobs) == (True, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_logprobs", 21), ("stop", 5), ("seed", "x"), ("response_format", "json"), ("response_format", {})],
)
def test_a_malformed_sampling_field_is_an_invalid_parameter_naming_it(field: str, value: Any) -> None:
    outcome = parse_line(batch_line(body={"messages": [USER], field: value}), LINE, JOB_PARAMS)
    assert isinstance(outcome, ErrorRecord) and outcome.error.code == "invalid_parameter"
    assert f"body.{field}" in outcome.error.message


def test_an_assistant_turn_that_only_called_tools_and_the_tool_result_are_accepted() -> None:
    messages = [
        {"role": "developer", "content": "terse"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    request = parse_ok(batch_line(body={"messages": messages}))
    assert request.messages[2].model_extra == {"tool_calls": [{"id": "c1", "type": "function"}]}
    assert request.messages[3].model_extra == {"tool_call_id": "c1"}


def test_a_content_part_we_only_pass_on_is_accepted_in_a_batch_line_but_not_in_a_plain_list() -> None:
    audio = [
        {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}],
        }
    ]
    assert parse_ok(batch_line(body={"messages": audio})).body == {"messages": audio}
    plain = parse_line(json.dumps(audio), LINE, JOB_PARAMS)
    assert isinstance(plain, ErrorRecord) and plain.error.code == "invalid_message"
