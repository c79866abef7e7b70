"""A ``PromptRequest`` -> the JSON body an OpenAI-compatible server is sent, and a seed ``Message``
-> an OpenAI chat message. Pure (file reads go through ``read_file``), so it is tested as a table
and runs in the caller's thread, off the engine's event loop."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from batchinfer.contract import (
    MediaAttachment,
    MediaAttachmentDataType,
    MediaAttachmentType,
    Message,
)
from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import PromptRequest
from batchinfer.engines.messages import (
    FileReader,
    UnsupportedAttachment,
    _chat_role,
    attachment_bytes,
    attachment_text,
    read_local_file,
)

# Fields of an OpenAI chat message besides role and content: a seed Message that carries them
# (kept as its extra fields) sends them on; other extra fields are the user's own notes and stay home.
OPENAI_MESSAGE_FIELDS = ("name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio")
# Schemes an OpenAI-compatible server fetches or decodes itself; anything else we inline as data.
_PASS_THROUGH_SCHEMES = {"http", "https", "data"}

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_mime(data: bytes) -> str:
    """The image type from its magic bytes; servers need it in the data URL to pick a decoder."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def image_url(attachment: MediaAttachment, read_file: FileReader = read_local_file) -> str:
    """A URL the server can load: http(s)/data URIs as given, anything else as a data URL."""
    if attachment.data_type is MediaAttachmentDataType.uri:
        uri = attachment.data or ""
        if urlparse(uri).scheme.lower() in _PASS_THROUGH_SCHEMES:
            return uri
    data = attachment_bytes(attachment, read_file)  # raw_bytes, filepath, file:// (or refuses)
    return f"data:{sniff_image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def request_payload(
    request: PromptRequest, model: str, read_file: FileReader = read_local_file
) -> dict[str, Any]:
    """The body to send: a batch line's own (``model`` set to the server's name for the model, a
    seed message inside it translated), else a chat request built from the seed line's messages
    and the job's parameters."""
    if request.body is not None:
        payload = {"model": model, **request.body}
        if request.endpoint is Endpoint.chat:
            payload["messages"] = [_as_sent(m, read_file) for m in request.body["messages"]]
        return payload
    params = request.params
    payload = {
        "model": model,
        "messages": to_openai_messages(request.messages, read_file),
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.logprobs:
        payload["logprobs"] = True
    return payload


def _as_sent(message: Any, read_file: FileReader) -> Any:
    """An OpenAI message goes as written; one in the seed's shape (``text``/``attachments``, no
    ``content``) is translated, its files read."""
    if (
        isinstance(message, dict)
        and "content" not in message
        and ("text" in message or "attachments" in message)
    ):
        return to_openai_message(Message.model_validate(message), read_file)
    return message


def to_openai_message(message: Message, read_file: FileReader = read_local_file) -> dict[str, Any]:
    """One chat message. Plain string content when there is nothing to attach (every server takes
    that); a content-parts list otherwise. Video and audio raise ``UnsupportedAttachment``. OpenAI
    message fields the seed message carries (``tool_calls``, ``tool_call_id``, ...) go along."""
    role = _chat_role(message.role)
    extras = {k: v for k, v in (message.model_extra or {}).items() if k in OPENAI_MESSAGE_FIELDS}
    if not message.attachments:
        return {"role": role, "content": message.text or "", **extras}
    parts: list[dict[str, Any]] = []
    if message.text:
        parts.append({"type": "text", "text": message.text})
    for attachment in message.attachments:
        kind = attachment.attachment_type
        if kind is MediaAttachmentType.image:
            parts.append({"type": "image_url", "image_url": {"url": image_url(attachment, read_file)}})
        elif kind is MediaAttachmentType.text:
            parts.append({"type": "text", "text": attachment_text(attachment, read_file)})
        else:
            name = kind.value if kind else "untyped"
            raise UnsupportedAttachment(
                f"The OpenAI chat API takes image and text attachments only, not {name}; "
                "drop the attachment or use a model served by an engine that accepts it."
            )
    return {"role": role, "content": parts, **extras}


def to_openai_messages(
    messages: Sequence[Message], read_file: FileReader = read_local_file
) -> list[dict[str, Any]]:
    return [to_openai_message(m, read_file) for m in messages]
