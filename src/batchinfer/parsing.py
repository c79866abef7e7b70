"""Parsing one prompt-file line into a ``PromptRequest``, or an error record saying why not.

Three line formats are accepted (DESIGN.md):

* the seed's: a JSON list of ``Message`` objects (``role``, ``text``, ``attachments``, ...);
* OpenAI-style messages in that list (``content`` as a string or as a list of parts);
* an OpenAI batch line, ``{"custom_id", "method", "url", "body": {"messages", ...}}``, the format of
  OpenAI's Batch API and ``vllm run-batch``. Sampling fields in ``body`` override the job's options
  for that line.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from batchinfer.contract import MediaAttachment, Message
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.records import ErrorDetail, ErrorRecord
from batchinfer.settings import Limits, env_name

KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool", "ipython"})
CHAT_ENDPOINTS = frozenset({"/v1/chat/completions", "/chat/completions"})
# body field -> SamplingParams field, for OpenAI batch lines.
_BODY_OVERRIDES = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "n": "n",
    "logprobs": "logprobs",
}


class LineRejected(Exception):
    """Internal: a line is bad; carries the error record's code and message."""

    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.custom_id = custom_id


def parse_line(
    text: str, line: int, params: SamplingParams, limits: Limits | None = None
) -> PromptRequest | ErrorRecord:
    """Parse one decoded, non-blank line. Never raises for bad input. ``limits`` caps the sampling
    overrides of batch lines, as submit caps the job's own options."""
    custom_id: str | None = None
    try:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise LineRejected("invalid_json", f"Line is not valid JSON ({_json_reason(exc)}).") from None
        if isinstance(value, dict) and "body" in value:
            custom_id = _custom_id(value)
            raw_messages, params = _batch_line(value, params, custom_id, limits or Limits())
        elif isinstance(value, dict) and "messages" in value:
            custom_id = _custom_id(value)
            raw_messages = value["messages"]
        else:
            raw_messages = value
        messages = parse_messages(raw_messages)
    except LineRejected as rejected:
        return ErrorRecord(
            line=line,
            custom_id=rejected.custom_id or custom_id,
            error=ErrorDetail(code=rejected.code, message=rejected.message),
        )
    return PromptRequest(line=line, custom_id=custom_id, messages=messages, params=params)


def parse_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list):
        raise LineRejected(
            "not_a_list",
            f"Expected a JSON list of messages, got {_json_type(raw)}. "
            'Write each line as [{"role": "user", "text": "..."}].',
        )
    if not raw:
        raise LineRejected("empty_messages", "The message list is empty; give at least one message.")
    return [_parse_message(item, index) for index, item in enumerate(raw)]


def _parse_message(item: Any, index: int) -> Message:
    where = f"Message {index}"
    if not isinstance(item, dict):
        raise LineRejected(
            "invalid_message", f"{where} is {_json_type(item)}; each message must be a JSON object."
        )
    item = _from_openai_style(item, where)
    role = item.get("role")
    if role is None:
        raise LineRejected("missing_role", f"{where} has no 'role'; use one of {_roles()}.")
    if not isinstance(role, str) or role not in KNOWN_ROLES:
        raise LineRejected("unknown_role", f"{where} has unknown role {role!r}; use one of {_roles()}.")
    attachments = item.get("attachments")
    if attachments is not None:
        _check_attachments(attachments, where)
    try:
        message = Message.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise LineRejected("invalid_message", f"{where}: field '{field}': {first['msg']}.") from None
    if not message.text and not message.attachments:
        raise LineRejected(
            "missing_text", f"{where} has no 'text' (and no attachments); give it the prompt text."
        )
    return message


def _from_openai_style(item: dict[str, Any], where: str) -> dict[str, Any]:
    """Map an OpenAI chat message (``content``) onto the seed's ``text``/``attachments``."""
    if "content" not in item or "text" in item:
        return item
    converted = {k: v for k, v in item.items() if k != "content"}
    content = item["content"]
    if content is None or isinstance(content, str):
        converted["text"] = content
        return converted
    if not isinstance(content, list):
        raise LineRejected("invalid_message", f"{where}: 'content' must be a string or a list of parts.")
    texts: list[str] = []
    attachments: list[dict[str, Any]] = list(item.get("attachments") or [])
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            attachments.append({"attachment_type": "image", "data_type": "uri", "data": url})
        else:
            raise LineRejected(
                "invalid_message",
                f"{where}: content part {part!r:.80} is not a text or image_url part.",
            )
    converted["text"] = "\n".join(texts) if texts else None
    if attachments:
        converted["attachments"] = attachments
    return converted


def _check_attachments(attachments: Any, where: str) -> None:
    if not isinstance(attachments, list):
        raise LineRejected("invalid_attachment", f"{where}: 'attachments' must be a list.")
    for index, attachment in enumerate(attachments):
        try:
            parsed = MediaAttachment.model_validate(attachment)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "attachment"
            raise LineRejected(
                "invalid_attachment",
                f"{where}, attachment {index}: field '{field}': {first['msg']}.",
            ) from None
        if parsed.attachment_type is None or parsed.data_type is None or not parsed.data:
            raise LineRejected(
                "invalid_attachment",
                f"{where}, attachment {index} needs 'attachment_type', 'data_type' and 'data'.",
            )


def _batch_line(
    value: dict[str, Any], params: SamplingParams, custom_id: str | None, limits: Limits
) -> tuple[Any, SamplingParams]:
    url = value.get("url", "/v1/chat/completions")
    if url not in CHAT_ENDPOINTS:
        raise LineRejected(
            "unsupported_endpoint",
            f"Batch line url {url!r} is not supported; use '/v1/chat/completions'.",
            custom_id,
        )
    method = str(value.get("method", "POST")).upper()
    if method != "POST":
        raise LineRejected("unsupported_method", f"Batch line method {method!r}; use 'POST'.", custom_id)
    body = value["body"]
    if not isinstance(body, dict) or "messages" not in body:
        raise LineRejected("invalid_body", "Batch line 'body' must be an object with 'messages'.", custom_id)
    overrides = {field: body[key] for key, field in _BODY_OVERRIDES.items() if body.get(key) is not None}
    if overrides:
        try:
            params = SamplingParams.model_validate({**params.model_dump(), **overrides})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise LineRejected(
                "invalid_parameter", f"body.{first['loc'][0]}: {first['msg']}.", custom_id
            ) from None
        _check_limits(params, limits, custom_id)
    return body["messages"], params


def _check_limits(params: SamplingParams, limits: Limits, custom_id: str | None) -> None:
    for name, value, limit, setting in (
        ("n", params.n, limits.max_num_generations, "max_num_generations"),
        ("max_tokens", params.max_tokens, limits.max_max_tokens, "max_max_tokens"),
    ):
        if value > limit:
            raise LineRejected(
                "limit_exceeded",
                f"body.{name} {value} is over the limit of {limit} ({env_name(setting)}); ask for less.",
                custom_id,
            )


def _custom_id(value: dict[str, Any]) -> str | None:
    custom_id = value.get("custom_id")
    if custom_id is None or isinstance(custom_id, str):
        return custom_id
    raise LineRejected("invalid_custom_id", "'custom_id' must be a string.")


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
