"""OpenAI batch lines: reading the model off an input file, and turning our success and error
records (``batchinfer.records``) into OpenAI's output lines. Pure, apart from reading files.

An output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``
with ``body`` an object, not a string: the model server's answer as it sent it when the record
carries one (engines that talk to a server), else the endpoint's answer built from the record
(local engines).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchinfer.api.openai.ids import derived_id
from batchinfer.api.openai.schemas import BatchError
from batchinfer.endpoints import Endpoint
from batchinfer.error_codes import ErrorCode

EXPIRED_CODE = ErrorCode.batch_expired
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_HTTP_CODE = re.compile(r"^http_(\d{3})$")
# Our error codes for lines the job did not run because it stopped, by why it stopped.
_STOPPED_CODES = frozenset(
    {ErrorCode.cancelled, ErrorCode.expired, ErrorCode.deadline_exceeded, EXPIRED_CODE}
)


@dataclass
class InputModels:
    """What an input file's lines say about their model."""

    model: str | None = None
    first_line: int | None = None
    mismatched: list[int] = field(default_factory=list)  # lines naming another model


def scan_models(lines: Iterable[bytes]) -> InputModels:
    """The model of the first line whose ``body.model`` is a string, and the lines naming another.
    Lines that are not JSON or have no model are left to the job's validation to report."""
    found = InputModels()
    for number, raw in enumerate(lines, start=1):
        model = _model_of(raw)
        if model is None:
            continue
        if found.model is None:
            found.model, found.first_line = model, number
        elif model != found.model:
            found.mismatched.append(number)
    return found


def _model_of(raw: bytes) -> str | None:
    if b'"model"' not in raw:  # cheap: most lines of a long file are parsed once, here, for this
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    body = value.get("body") if isinstance(value, dict) else None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


@dataclass(frozen=True)
class OutputContext:
    """What every output line of one batch shares."""

    batch_id: str
    model: str
    created: int
    expired: bool = False  # lines the job did not run read batch_expired, not cancelled
    endpoint: str = Endpoint.chat.value


def success_line(record: dict[str, Any], ctx: OutputContext) -> dict[str, Any]:
    """A success record as OpenAI's output line: the server's own answer, or one built from it."""
    line = record["line"]
    body = record.get("response") or _built_body(record, ctx)
    return {
        "id": derived_id("batch_req_", ctx.batch_id, line),
        "custom_id": record.get("custom_id"),
        "response": {
            "status_code": 200,
            "request_id": derived_id("req_", ctx.batch_id, line),
            "body": body,
        },
        "error": None,
    }


def _built_body(record: dict[str, Any], ctx: OutputContext) -> dict[str, Any]:
    """The endpoint's answer for a record that carries none (a local engine's)."""
    usage = record.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    counts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
    common = {"created": ctx.created, "model": ctx.model}
    if record.get("embeddings") is not None:
        data = [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(record["embeddings"])
        ]
        return {"object": "list", "data": data, "model": ctx.model, "usage": counts}
    generations = record["generations"]
    if ctx.endpoint == Endpoint.completions.value:
        choices = [
            {
                "index": i,
                "text": g.get("text"),
                "finish_reason": g.get("finish_reason") or "stop",
                "logprobs": None,
            }
            for i, g in enumerate(generations)
        ]
        return {
            "id": derived_id("cmpl-", ctx.batch_id, record["line"]),
            "object": "text_completion",
            **common,
            "choices": choices,
            "usage": counts,
        }
    choices = [
        {
            "index": index,
            "message": {
                "role": generation.get("role") or "assistant",
                "content": generation.get("text"),
                **(generation.get("metadata") or {}),
            },
            "finish_reason": generation.get("finish_reason") or "stop",
            "logprobs": generation.get("logprobs"),
        }
        for index, generation in enumerate(generations)
    ]
    return {
        "id": derived_id("chatcmpl-", ctx.batch_id, record["line"]),
        "object": "chat.completion",
        **common,
        "choices": choices,
        "usage": counts,
    }


def error_line(record: dict[str, Any], ctx: OutputContext) -> dict[str, Any]:
    """An error record as OpenAI's output line. A model server's HTTP refusal (``http_4xx``) keeps
    its status code in ``response``, as OpenAI reports a request it answered with an error."""
    line = record.get("line")
    code, message = record["error"]["code"], record["error"]["message"]
    if ctx.expired and code in _STOPPED_CODES:
        code, message = EXPIRED_CODE, EXPIRED_MESSAGE
    response = None
    http = _HTTP_CODE.match(code)
    if http:
        status = int(http.group(1))
        response = {
            "status_code": status,
            "request_id": derived_id("req_", ctx.batch_id, line),
            "body": {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status < 500 else "server_error",
                    "param": None,
                    "code": code,
                }
            },
        }
    return {
        "id": derived_id("batch_req_", ctx.batch_id, line),
        "custom_id": record.get("custom_id"),
        "response": response,
        "error": {"code": code, "message": message},
    }


def convert(records: Iterable[str], ctx: OutputContext) -> Iterator[bytes]:
    """Our JSONL records (success or error, told apart by their keys) as OpenAI's JSONL lines."""
    for raw in records:
        if not raw.strip():
            continue
        record = json.loads(raw)
        line = success_line(record, ctx) if "generations" in record else error_line(record, ctx)
        yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


def unrun_records(lines: Iterable[bytes], code: str, message: str) -> Iterator[str]:
    """An error record for every non-blank input line: for a batch that stopped before its job
    read the file, so that every line still ends up in an output file."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        custom_id = None
        try:
            value = json.loads(raw)
            if isinstance(value, dict) and isinstance(value.get("custom_id"), str):
                custom_id = value["custom_id"]
        except (ValueError, RecursionError):
            pass
        record = {"line": number, "custom_id": custom_id, "error": {"code": code, "message": message}}
        yield json.dumps(record, ensure_ascii=False)


def read_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from handle


def batch_errors(line_errors: Iterable[str], limit: int) -> list[BatchError]:
    """OpenAI's ``Batch.errors.data`` from our validation's line errors (at most ``limit``)."""
    data: list[BatchError] = []
    for raw in line_errors:
        if len(data) >= limit:
            break
        if not raw.strip():
            continue
        record = json.loads(raw)
        error = record["error"]
        data.append(
            BatchError(
                code=error["code"],
                message=error["message"],
                param=error.get("param"),
                line=record.get("line"),
            )
        )
    return data
