"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for every /v1 answer.

The SDK picks its exception class from the status code (400 BadRequestError, 404 NotFoundError, ...)
and reads the message from ``error.message``, so both must be right for a client to see the reason.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, RequestError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(BatchInferError):
    """A refusal under /v1, answered in OpenAI's shape with its own status (raised by the /v1
    handlers; ``from_batchinfer_error`` turns the rest of the tree into one)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = self.http_status = status
        self.param = param
        self.wire_code = code  # OpenAI answers `"code": null` when there is none


def not_found(kind: str, object_id: str, param: str) -> OpenAIError:
    """OpenAI's answer for an id never issued (``kind``: batch, file)."""
    return OpenAIError(404, f"No {kind} found with id {object_id!r}.", param=param, code=ErrorCode.not_found)


def error_body(status: int, message: str, param: str | None, code: str | None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error_response(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status, content=error_body(exc.status, exc.message, exc.param, exc.wire_code)
    )


def from_batchinfer_error(exc: BatchInferError) -> OpenAIError:
    """Our own errors (a backend's 404/409/503, a refused model) in OpenAI's terms. FastAPI's 422
    becomes 400: OpenAI answers every malformed request 400."""
    status = exc.http_status
    param = exc.field or None if isinstance(exc, RequestError) else None
    return OpenAIError(400 if status == 422 else status, exc.message, param=param, code=exc.code)
