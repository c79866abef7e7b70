"""OpenAI's Batch API checks on every line of a batch's input file, made while the batch is
``validating`` and before any request is sent. Pure: no Prefect, no I/O.

A line's first problem, in this order, is its one ``LineProblem`` (its code and ``param`` are
OpenAI's): not JSON; not an object, or without ``custom_id``, ``method``, ``url`` or ``body``; one of
those of the wrong type; a ``url`` other than the batch's endpoint; ``body.stream``; a model that is
not served, or another than the batch's; a body without what its endpoint requires (``model`` and
its prompt field, of the right JSON type); a ``custom_id`` used by an earlier line. What the model
judges (roles, parameter ranges) is not checked here: the model server (or a local engine in its
place) answers it, line by line.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from batchinfer.endpoints import PROMPT_FIELD, Endpoint, endpoint_of
from batchinfer.error_codes import ErrorCode
from batchinfer.records import ErrorDetail, ErrorRecord

ENVELOPE = ("custom_id", "method", "url", "body")
NOT_JSON_MESSAGE = "This line is not parseable as valid JSON."
_SHOWN_MODELS = 10


class BatchRules(BaseModel):
    """What one batch's lines are checked against."""

    model_config = ConfigDict(frozen=True)

    endpoint: Endpoint
    model: str  # the batch's one model: what its first line names
    served: frozenset[str]  # the model ids of the models file
    fail_batch: bool = True  # OpenAI's: any invalid line fails the batch; else each is a line error


class LineProblem(NamedTuple):
    """One invalid line, as an entry of OpenAI's ``Batch.errors.data``."""

    line: int
    code: str
    message: str
    param: str | None = None
    custom_id: str | None = None

    def as_error_record(self) -> ErrorRecord:
        detail = ErrorDetail(code=self.code, message=self.message, param=self.param)
        return ErrorRecord(line=self.line, custom_id=self.custom_id, error=detail)


class BatchLineChecker:
    """Checks a file's lines in order; remembers the ``custom_id`` of each line it has seen."""

    def __init__(self, rules: BatchRules) -> None:
        self.rules = rules
        self._custom_ids: dict[str, int] = {}  # custom_id -> the first line that used it

    def check(self, number: int, raw: bytes) -> tuple[Any, LineProblem | None]:
        """The line's JSON value, and its first problem (None: the line is a valid batch request)."""
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, LineProblem(number, ErrorCode.invalid_json_line, NOT_JSON_MESSAGE)
        custom_id = value.get("custom_id") if isinstance(value, dict) else None
        custom_id = custom_id if isinstance(custom_id, str) else None
        problem = _envelope_problem(value, self.rules) or _body_problem(value["body"], self.rules)
        if problem is None and custom_id is not None and custom_id in self._custom_ids:
            problem = (
                ErrorCode.duplicate_custom_id,
                f"The custom_id {custom_id!r} is already used by line {self._custom_ids[custom_id]}; "
                "give every line of the file its own custom_id.",
                "custom_id",
            )
        if custom_id is not None:
            self._custom_ids.setdefault(custom_id, number)
        if problem is None:
            return value, None
        code, message, param = problem
        return value, LineProblem(number, code, message, param, custom_id)


Problem = tuple[str, str, str | None]  # code, message, param


def _envelope_problem(value: Any, rules: BatchRules) -> Problem | None:
    """Not an object; a missing field of the four; a wrong type, method or url."""
    if not isinstance(value, dict):
        return (
            ErrorCode.missing_required_parameter,
            f"This line is {_json_type(value)}, not an object: missing required parameter 'custom_id'. "
            'Write each line as {"custom_id": ..., "method": "POST", "url": ..., "body": {...}}.',
            "custom_id",
        )
    for field in ENVELOPE:
        if field not in value:
            return (
                ErrorCode.missing_required_parameter,
                f"Missing required parameter: '{field}'. Every line needs custom_id, method, url and body.",
                field,
            )
    if not isinstance(value["custom_id"], str):
        return (
            ErrorCode.invalid_request,
            "custom_id must be a string; give each line a unique one.",
            "custom_id",
        )
    if value["method"] != "POST":
        return (
            ErrorCode.invalid_request,
            f"method is {value['method']!r}; a batch sends 'POST' only.",
            "method",
        )
    if endpoint_of(value["url"]) is not rules.endpoint:
        return (
            ErrorCode.invalid_url,
            f"The url {value['url']!r} does not match the batch's endpoint '{rules.endpoint.value}'; "
            "a batch runs one endpoint: put other requests in a batch of their own.",
            "url",
        )
    if not isinstance(value["body"], dict):
        return (
            ErrorCode.invalid_request,
            f"body is {_json_type(value['body'])}; it must be the {rules.endpoint.value} request object.",
            "body",
        )
    return None


def _body_problem(body: dict[str, Any], rules: BatchRules) -> Problem | None:
    """``stream``; the model (served, the batch's); the fields the endpoint requires."""
    if body.get("stream"):
        return (
            ErrorCode.streaming_unsupported,
            "Streaming is not supported in a batch (answers go to the output file); remove body.stream.",
            "body.stream",
        )
    model = body.get("model")
    if isinstance(model, str) and model not in rules.served:
        return (
            ErrorCode.model_not_found,
            f"The model {model!r} does not exist or is not served here; use one of: {_ids(rules)}.",
            "body.model",
        )
    if isinstance(model, str) and model != rules.model:
        return (
            ErrorCode.model_mismatch,
            f"This line names model {model!r}, but the batch runs {rules.model!r} (its first line's); "
            "a batch runs one model: put these lines in a batch of their own.",
            "body.model",
        )
    prompt_field = PROMPT_FIELD[rules.endpoint]
    for field in ("model", prompt_field):
        if field not in body:
            return (
                ErrorCode.invalid_request,
                f"Missing required parameter: 'body.{field}' (a {rules.endpoint.value} request needs it).",
                f"body.{field}",
            )
    if not isinstance(model, str):
        return (
            ErrorCode.invalid_request,
            "body.model must be a string: a model id of this server.",
            "body.model",
        )
    prompt = body[prompt_field]
    if not (isinstance(prompt, list) or (isinstance(prompt, str) and rules.endpoint is not Endpoint.chat)):
        kind = "an array of messages" if rules.endpoint is Endpoint.chat else "a string or an array"
        return ErrorCode.invalid_request, f"body.{prompt_field} must be {kind}.", f"body.{prompt_field}"
    return None


def _ids(rules: BatchRules) -> str:
    ids = sorted(rules.served)
    more = f" and {len(ids) - _SHOWN_MODELS} more" if len(ids) > _SHOWN_MODELS else ""
    return ", ".join(ids[:_SHOWN_MODELS]) + more


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    return "null" if value is None else "a JSON number or boolean"
