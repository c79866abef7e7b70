"""A model server's answer other than a 200: what it says (OpenAI's ``error.code`` and message,
``Retry-After``) and what the engine makes of it: a retry (``RetryableError``) or the line's error
(``Failed``). Pure: bytes and headers in, a decision out."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from batchinfer.engines.base import retryable_status
from batchinfer.engines.http_transports import RetryableError
from batchinfer.error_codes import ErrorCode
from batchinfer.records import ErrorDetail

_MAX_ERROR_BODY = 500


class Failed(Exception):
    """One request is done for, with this error record: the engine makes it the line's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.detail = ErrorDetail(code=code, message=message)


# OpenAI's error code (and type) of a 429 that says the account is out of quota, not busy.
_INSUFFICIENT_QUOTA = "insufficient_quota"


def _json_object(body: bytes) -> dict[str, Any] | None:
    """An error body as the JSON object it usually is, else None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_code(body: bytes) -> str | None:
    """The ``error.code`` (else ``error.type``) of an OpenAI-style error body, if it has one."""
    error = (_json_object(body) or {}).get("error")
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return code if isinstance(code, str) else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks a client to wait: OpenAI's ``retry-after-ms``, else ``Retry-After``."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("Retry-After"))


def _server_message(body: bytes) -> str:
    """The server's ``error.message`` for OpenAI-style JSON, else the (cut) body text."""
    data = _json_object(body)
    if data is not None:
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:_MAX_ERROR_BODY]
        for candidate in (error, data.get("message"), data.get("detail")):
            if isinstance(candidate, str):
                return candidate[:_MAX_ERROR_BODY]
    text = body.decode("utf-8", errors="replace").strip()
    return text[:_MAX_ERROR_BODY] or "(empty body)"


def answer_body(status: int, body: bytes, retry_after_s: float | None) -> bytes:
    """The body of a 200; else ``RetryableError`` for what a retry may fix, ``Failed`` for
    the rest."""
    if status == 200:
        return body
    if status == 429 and _error_code(body) == _INSUFFICIENT_QUOTA:  # no retry refills a quota
        raise Failed(
            ErrorCode.quota_exhausted,
            f"HTTP 429 insufficient_quota: {_server_message(body)} Add credit or raise the quota "
            "with the provider, then resume the job.",
        )
    if retryable_status(status):
        reason = f"HTTP {status}: {_server_message(body)}"
        raise RetryableError(f"http_{status}", reason, retry_after_s)
    raise Failed(f"http_{status}", _server_message(body))
