"""Seed ``Message`` -> OpenAI chat-completions message. Pure (file reads go through ``read_file``),
so it is tested as a table and runs in the caller's thread, off the engine's event loop."""

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
from batchinfer.engines.messages import (
    FileReader,
    UnsupportedAttachment,
    _chat_role,
    attachment_bytes,
    attachment_text,
    read_local_file,
)

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


def to_openai_message(message: Message, read_file: FileReader = read_local_file) -> dict[str, Any]:
    """One chat message. Plain string content when there is nothing to attach (every server takes
    that); a content-parts list otherwise. Video and audio raise ``UnsupportedAttachment``."""
    role = _chat_role(message.role)
    if not message.attachments:
        return {"role": role, "content": message.text or ""}
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
    return {"role": role, "content": parts}


def to_openai_messages(
    messages: Sequence[Message], read_file: FileReader = read_local_file
) -> list[dict[str, Any]]:
    return [to_openai_message(m, read_file) for m in messages]
