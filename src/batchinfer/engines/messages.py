"""Turning the seed's ``Message`` into what engines consume. Pure functions, shared by every engine."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from batchinfer.contract import (
    MediaAttachment,
    MediaAttachmentDataType,
    MediaAttachmentType,
    Message,
)
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import InferenceError

FileReader = Callable[[str], bytes]


def read_local_file(path: str) -> bytes:
    return Path(path).read_bytes()


class UnsupportedAttachment(InferenceError):
    code = ErrorCode.unsupported_attachment


def attachment_bytes(attachment: MediaAttachment, read_file: FileReader = read_local_file) -> bytes:
    """The attachment's content. ``raw_bytes`` data is base64; ``filepath`` and ``file://`` are read."""
    data = attachment.data or ""
    kind = attachment.data_type or MediaAttachmentDataType.raw_bytes
    if kind is MediaAttachmentDataType.raw_bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UnsupportedAttachment(
                "raw_bytes attachment data is not valid base64; encode the bytes with base64."
            ) from exc
    if kind is MediaAttachmentDataType.filepath:
        return read_file(data)
    parsed = urlparse(data)
    if parsed.scheme == "file":
        return read_file(unquote(parsed.path))
    raise UnsupportedAttachment(
        f"Cannot fetch attachment URI scheme {parsed.scheme!r} here; pass the content as raw_bytes."
    )


def attachment_text(attachment: MediaAttachment, read_file: FileReader = read_local_file) -> str:
    """A text attachment's content. raw_bytes text may be given as plain text or as base64."""
    if (attachment.data_type or MediaAttachmentDataType.raw_bytes) is MediaAttachmentDataType.raw_bytes:
        try:
            return base64.b64decode(attachment.data or "", validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return attachment.data or ""
    try:
        return attachment_bytes(attachment, read_file).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsupportedAttachment("A text attachment must be UTF-8.") from exc


def message_plain_text(message: Message, read_file: FileReader = read_local_file) -> str:
    """The message's text with its text attachments inlined after it; other media are refused,
    because a text-only engine cannot see them (the line becomes an error record, not a crash)."""
    parts = [message.text] if message.text else []
    for attachment in message.attachments or []:
        if attachment.attachment_type is MediaAttachmentType.text:
            parts.append(attachment_text(attachment, read_file))
        else:
            kind = attachment.attachment_type.value if attachment.attachment_type else "unknown"
            raise UnsupportedAttachment(
                f"This engine is text-only and cannot take a {kind} attachment; "
                "use a model served by a multimodal engine, or drop the attachment."
            )
    return "\n\n".join(parts)


def to_text_chat(messages: list[Message], read_file: FileReader = read_local_file) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` for chat templates of text-only models."""
    return [{"role": _chat_role(m.role), "content": message_plain_text(m, read_file)} for m in messages]


def _chat_role(role: str | None) -> str:
    # llama-stack's "ipython" role is a tool result; chat templates know it as "tool".
    return "tool" if role == "ipython" else (role or "user")
