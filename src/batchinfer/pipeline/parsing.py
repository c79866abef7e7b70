"""Parsing one prompt-file line into a ``PromptRequest``, or an error record saying why not.

Three line formats are accepted (DESIGN.md):

* the seed's: a JSON list of ``Message`` objects (``role``, ``text``, ``attachments``, ...);
* OpenAI-style messages in that list (``content`` as a string or as a list of parts);
* an OpenAI batch line, ``{"custom_id", "method", "url", "body"}``, the format of OpenAI's Batch
  API and ``vllm run-batch``, for any endpoint in ``endpoints.Endpoint``. Its ``body`` is kept as
  written (less ``model``, which the model's config names) for engines that send it to a server;
  its sampling fields also become the line's ``SamplingParams``, which local engines generate from
  and which our limits check. ``stream`` is refused: a batch has no one to stream to.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from batchinfer.contract import MediaAttachment, Message
from batchinfer.endpoints import PROMPT_FIELD, Endpoint, RequestDefaults, endpoint_list, endpoint_of
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.error_codes import ErrorCode
from batchinfer.records import ErrorDetail, ErrorRecord
from batchinfer.settings import Limits, env_name

KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "ipython"})
# Per endpoint: body field -> the SamplingParams field it sets for that line.
_SAMPLING_FIELDS: dict[Endpoint, dict[str, str]] = {
    Endpoint.chat: {
        "max_tokens": "max_tokens",
        "max_completion_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "n": "n",
        "logprobs": "logprobs",
        "top_logprobs": "top_logprobs",
        "stop": "stop",
        "seed": "seed",
    },
    Endpoint.completions: {
        "max_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "n": "n",
        "stop": "stop",
        "seed": "seed",
    },
    Endpoint.responses: {
        "max_output_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "top_logprobs": "top_logprobs",
    },
    Endpoint.embeddings: {},
}
# Constraints on the answer that local engines may honour; "text" constrains nothing.
_CONSTRAINED_FORMATS = frozenset({"json_object", "json_schema"})


class _LineRejected(Exception):
    """Internal: a line is bad; carries the error record's code and message."""

    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.custom_id = custom_id


def parse_line(
    text: str,
    line: int,
    params: SamplingParams,
    limits: Limits | None = None,
    defaults: RequestDefaults | None = None,
) -> PromptRequest | ErrorRecord:
    """Parse one decoded, non-blank line. Never raises for bad input. ``limits`` caps the sampling
    fields of batch lines, as submit caps the job's own options; ``defaults`` (the job's options,
    where it set them) fill a batch line's body where the line says nothing."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        message = f"Line is not valid JSON ({_json_reason(exc)})."
        return ErrorRecord(line=line, error=ErrorDetail(code=ErrorCode.invalid_json, message=message))
    return parse_value(value, line, params, limits, defaults)


def parse_value(
    value: Any,
    line: int,
    params: SamplingParams,
    limits: Limits | None = None,
    defaults: RequestDefaults | None = None,
) -> PromptRequest | ErrorRecord:
    """``parse_line`` of a line already read as JSON (an OpenAI batch's, which its checks read)."""
    custom_id: str | None = None
    try:
        if isinstance(value, dict) and "body" in value:
            custom_id = _custom_id(value)
            return _batch_request(value, line, custom_id, params, limits or Limits(), defaults)
        if isinstance(value, dict) and "messages" in value:
            custom_id = _custom_id(value)
            raw_messages = value["messages"]
        else:
            raw_messages = value
        messages = parse_messages(raw_messages)
    except _LineRejected as rejected:
        return ErrorRecord(
            line=line,
            custom_id=rejected.custom_id or custom_id,
            error=ErrorDetail(code=rejected.code, message=rejected.message),
        )
    return PromptRequest(line=line, custom_id=custom_id, messages=messages, params=params)


def parse_row_messages(
    raw: Any, line: int, custom_id: str | None, params: SamplingParams
) -> PromptRequest | ErrorRecord:
    """A table row's messages (already decoded) as a request, or its line error: the same checks,
    codes and messages as a JSONL line's message list."""
    try:
        messages = parse_messages(raw)
    except _LineRejected as rejected:
        return ErrorRecord(
            line=line, custom_id=custom_id, error=ErrorDetail(code=rejected.code, message=rejected.message)
        )
    return PromptRequest(line=line, custom_id=custom_id, messages=messages, params=params)


def parse_messages(raw: Any, any_parts: bool = False) -> list[Message]:
    """The seed's view of a message list. ``any_parts``: content parts of types we do not know
    (audio, video, files) are allowed, for a batch line whose body goes to a server as written."""
    if not isinstance(raw, list):
        raise _LineRejected(
            ErrorCode.not_a_list,
            f"Expected a JSON list of messages, got {_json_type(raw)}. "
            'Write each line as [{"role": "user", "text": "..."}].',
        )
    if not raw:
        raise _LineRejected(ErrorCode.empty_messages, "The message list is empty; give at least one message.")
    return [_parse_message(item, index, any_parts) for index, item in enumerate(raw)]


def _parse_message(item: Any, index: int, any_parts: bool) -> Message:
    where = f"Message {index}"
    if not isinstance(item, dict):
        raise _LineRejected(
            ErrorCode.invalid_message, f"{where} is {_json_type(item)}; each message must be a JSON object."
        )
    converted = _from_openai_style(item, where, any_parts)
    role = converted.get("role")
    if role is None:
        raise _LineRejected(ErrorCode.missing_role, f"{where} has no 'role'; use one of {_roles()}.")
    if not isinstance(role, str) or role not in KNOWN_ROLES:
        raise _LineRejected(
            ErrorCode.unknown_role, f"{where} has unknown role {role!r}; use one of {_roles()}."
        )
    attachments = converted.get("attachments")
    if attachments is not None:
        _check_attachments(attachments, where)
    try:
        message = Message.model_validate(converted)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise _LineRejected(ErrorCode.invalid_message, f"{where}: field '{field}': {first['msg']}.") from None
    # An assistant turn that only called tools has no text, and neither has a part we only pass on.
    said_something = message.text or message.attachments or item.get("tool_calls") or item.get("content")
    if not said_something:
        raise _LineRejected(
            ErrorCode.missing_text, f"{where} has no 'text' (and no attachments); give it the prompt text."
        )
    return message


def _from_openai_style(item: dict[str, Any], where: str, any_parts: bool) -> dict[str, Any]:
    """Map an OpenAI chat message (``content``) onto the seed's ``text``/``attachments``; its other
    fields (``tool_calls``, ``tool_call_id``, ``name``) stay as they are."""
    if "content" not in item or "text" in item:
        return item
    converted = {k: v for k, v in item.items() if k != "content"}
    content = item["content"]
    if content is None or isinstance(content, str):
        converted["text"] = content
        return converted
    if not isinstance(content, list):
        raise _LineRejected(
            ErrorCode.invalid_message, f"{where}: 'content' must be a string or a list of parts."
        )
    texts: list[str] = []
    attachments: list[dict[str, Any]] = list(item.get("attachments") or [])
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            attachments.append({"attachment_type": "image", "data_type": "uri", "data": url})
        elif not (any_parts and isinstance(kind, str)):
            raise _LineRejected(
                ErrorCode.invalid_message,
                f"{where}: content part {part!r:.80} is not a text or image_url part "
                "(other parts, such as input_audio, go in an OpenAI batch line's body).",
            )
    converted["text"] = "\n".join(texts) if texts else None
    if attachments:
        converted["attachments"] = attachments
    return converted


def _check_attachments(attachments: Any, where: str) -> None:
    if not isinstance(attachments, list):
        raise _LineRejected(ErrorCode.invalid_attachment, f"{where}: 'attachments' must be a list.")
    for index, attachment in enumerate(attachments):
        try:
            parsed = MediaAttachment.model_validate(attachment)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "attachment"
            raise _LineRejected(
                ErrorCode.invalid_attachment,
                f"{where}, attachment {index}: field '{field}': {first['msg']}.",
            ) from None
        if parsed.attachment_type is None or parsed.data_type is None or not parsed.data:
            raise _LineRejected(
                ErrorCode.invalid_attachment,
                f"{where}, attachment {index} needs 'attachment_type', 'data_type' and 'data'.",
            )


def _batch_request(
    value: dict[str, Any],
    line: int,
    custom_id: str | None,
    params: SamplingParams,
    limits: Limits,
    defaults: RequestDefaults | None,
) -> PromptRequest:
    endpoint = endpoint_of(value.get("url", Endpoint.chat.value))
    if endpoint is None:
        raise _LineRejected(
            ErrorCode.unsupported_endpoint,
            f"Batch line url {value.get('url')!r} is not an endpoint a batch can run; "
            f"use one of {endpoint_list()}.",
            custom_id,
        )
    method = str(value.get("method", "POST")).upper()
    if method != "POST":
        raise _LineRejected(
            ErrorCode.unsupported_method, f"Batch line method {method!r}; use 'POST'.", custom_id
        )
    body = _body(value["body"], endpoint, custom_id)
    body, inapplicable = (defaults or RequestDefaults()).fill(endpoint, body)
    if inapplicable:
        raise _LineRejected(
            ErrorCode.unsupported_parameter,
            f"The job's {' and '.join(inapplicable)} do not apply to {endpoint.value} lines; "
            "submit the job without them (or set the field in each line's body).",
            custom_id,
        )
    line_params = _line_params(endpoint, body, params, limits, custom_id)
    prompt = body[PROMPT_FIELD[endpoint]]
    messages = parse_messages(prompt, any_parts=True) if endpoint is Endpoint.chat else []
    if endpoint is not Endpoint.chat and not _is_prompt(prompt):
        raise _LineRejected(
            ErrorCode.invalid_body,
            f"body.{PROMPT_FIELD[endpoint]} must be a non-empty string or list for {endpoint.value}.",
            custom_id,
        )
    return PromptRequest(
        line=line, custom_id=custom_id, endpoint=endpoint, messages=messages, body=body, params=line_params
    )


def _body(body: Any, endpoint: Endpoint, custom_id: str | None) -> dict[str, Any]:
    """The body as it will be sent, less ``model``; a line that cannot be sent is refused."""
    prompt_field = PROMPT_FIELD[endpoint]
    if not isinstance(body, dict) or prompt_field not in body:
        raise _LineRejected(
            ErrorCode.invalid_body,
            f"Batch line 'body' must be an object with '{prompt_field}' (a {endpoint.value} request).",
            custom_id,
        )
    if body.get("stream"):
        raise _LineRejected(
            ErrorCode.unsupported_parameter,
            "body.stream cannot be used in a batch: answers are written to the output file; "
            "remove `stream` (and `stream_options`).",
            custom_id,
        )
    return {key: item for key, item in body.items() if key != "model"}


def _line_params(
    endpoint: Endpoint, body: dict[str, Any], params: SamplingParams, limits: Limits, custom_id: str | None
) -> SamplingParams:
    """The job's parameters with this line's own sampling fields over them, checked and capped."""
    fields = _SAMPLING_FIELDS[endpoint]
    overrides = {field: body[key] for key, field in fields.items() if body.get(key) is not None}
    if isinstance(overrides.get("stop"), str):
        overrides["stop"] = [overrides["stop"]]
    if endpoint is Endpoint.completions and body.get("logprobs") is not None:
        # The completions API's logprobs counts the alternatives to return per token.
        overrides.update(logprobs=True, top_logprobs=body["logprobs"])
    response_format = body.get("response_format")
    if endpoint is Endpoint.chat and response_format is not None:
        overrides["response_format"] = _constraint(response_format, custom_id)
    if not overrides:
        return params
    try:
        line_params = SamplingParams.model_validate({**params.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        key = next((k for k, f in fields.items() if f == field and k in body), field)
        raise _LineRejected(ErrorCode.invalid_parameter, f"body.{key}: {first['msg']}.", custom_id) from None
    _check_limits(line_params, limits, custom_id)
    return line_params


def _constraint(response_format: Any, custom_id: str | None) -> str | None:
    """``response_format`` as canonical JSON when it constrains the answer; None for plain text."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if not isinstance(kind, str):
        raise _LineRejected(
            ErrorCode.invalid_parameter,
            "body.response_format must be an object with a 'type' (text, json_object or json_schema).",
            custom_id,
        )
    if kind == "text":
        return None
    return json.dumps(response_format, sort_keys=True, separators=(",", ":"))


def _is_prompt(prompt: Any) -> bool:
    return (isinstance(prompt, str) and bool(prompt)) or (isinstance(prompt, list) and bool(prompt))


def _check_limits(params: SamplingParams, limits: Limits, custom_id: str | None) -> None:
    for name, value, limit, setting in (
        ("n", params.n, limits.max_num_generations, "max_num_generations"),
        ("max_tokens", params.max_tokens, limits.max_max_tokens, "max_max_tokens"),
    ):
        if value > limit:
            raise _LineRejected(
                ErrorCode.limit_exceeded,
                f"body.{name} {value} is over the limit of {limit} ({env_name(setting)}); ask for less.",
                custom_id,
            )


def _custom_id(value: dict[str, Any]) -> str | None:
    custom_id = value.get("custom_id")
    if custom_id is None or isinstance(custom_id, str):
        return custom_id
    raise _LineRejected(ErrorCode.invalid_custom_id, "'custom_id' must be a string.")


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), "a number")


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    assert isinstance(exc, json.JSONDecodeError)
    return f"{exc.msg} at column {exc.colno}"


def _roles() -> str:
    return ", ".join(sorted(KNOWN_ROLES))
