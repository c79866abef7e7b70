"""The client's one error type and how a refusal becomes one: the field it names, the server's
message, the code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from batchinfer.contract import BatchInference
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError

_LOCATIONS = frozenset({"body", "query", "header", "path", "cookie"})  # FastAPI's loc prefixes

# ---- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One entry of FastAPI's ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    @property
    def field(self) -> str:
        """The dotted field, without FastAPI's location prefix: ``["body", "options", "top_p"]``
        is ``options.top_p``; a bare ``["body"]`` (the whole body) stays ``body``."""
        parts = self.loc[1:] if len(self.loc) > 1 and self.loc[0] in _LOCATIONS else self.loc
        return ".".join(str(part) for part in parts)


class BatchInferClientError(BatchInferError):
    """The server refused a call (4xx/5xx), or could not be reached (``status_code`` None).

    ``detail`` is the server's ``detail`` as sent (a list of field errors or a string); ``errors``
    the field errors parsed from it; ``field`` the first one's dotted field; ``code`` the server's
    error ``type`` (``unknown_model``, ``greater_than_equal``, ``job_not_found`` ...).
    """

    code = ErrorCode.client_error

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        errors: Sequence[FieldError] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.detail = detail
        self.errors = list(errors)

    @property
    def field(self) -> str | None:
        return self.errors[0].field if self.errors else None

    @classmethod
    def from_response(cls, response: httpx.Response) -> BatchInferClientError:
        """The error for a 4xx/5xx answer, whichever of the adapter's two shapes it has."""
        detail, code = detail_and_code(response)
        errors = field_errors(detail)
        request = response.request
        message = (
            f"{request.method} {request.url.path} answered {response.status_code} "
            f"{response.reason_phrase}: {describe(detail, errors)}"
        )
        return cls(
            message,
            status_code=response.status_code,
            detail=detail,
            errors=errors,
            code=code or (errors[0].type if errors else f"http_{response.status_code}"),
        )


class JobWaitTimeout(BatchInferClientError, TimeoutError):
    """``wait_for_job`` ran out of time; ``job`` is the last status seen. Also a ``TimeoutError``."""

    def __init__(self, job: BatchInference, timeout_s: float) -> None:
        super().__init__(
            f"Job {job.job_id} is still {job.status.value} after {timeout_s:g} s; wait longer "
            "(timeout_s) or check it later with job_status.",
            code=ErrorCode.wait_timeout,
        )
        self.job = job


def detail_and_code(response: httpx.Response) -> tuple[Any, str | None]:
    """The server's ``detail`` and ``type``; the raw text when the body is not JSON (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        return response.text, None
    if not isinstance(body, dict):
        return body, None
    code = body.get("type")
    return body.get("detail", body), code if isinstance(code, str) else None


def field_errors(detail: Any) -> list[FieldError]:
    if not isinstance(detail, list):
        return []
    errors = []
    for item in detail:
        if isinstance(item, dict) and isinstance(item.get("loc"), list):
            loc = tuple(p if isinstance(p, int) else str(p) for p in item["loc"])
            errors.append(FieldError(loc, str(item.get("msg", "")), str(item.get("type", ""))))
    return errors


def describe(detail: Any, errors: Sequence[FieldError]) -> str:
    if errors:
        return "; ".join(f"{error.field}: {error.msg}" for error in errors)
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text if len(text) <= 500 else text[:500] + " ..."  # a proxy's HTML page need not be whole
