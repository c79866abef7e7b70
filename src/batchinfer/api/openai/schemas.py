"""OpenAI's wire objects under /v1, typed: what the routes answer (``Batch``, ``FileObject``, a
list page) and what ``POST /v1/batches`` takes. Field for field the ``openai`` SDK's own types
(``openai.types.Batch``, ``FileObject``, ``BatchError``), which a test checks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from batchinfer.control.states import BatchStatus

# OpenAI's bounds on a file's expiry after its anchor: an hour to thirty days.
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 86400
ItemT = TypeVar("ItemT", bound=BaseModel)


class BatchError(BaseModel):
    """One entry of ``Batch.errors.data``: an invalid input line, or why the batch failed."""

    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class Batch(BaseModel):
    """OpenAI's Batch object. Every timestamp is whole seconds, or null until it happens."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    usage: BatchUsage = Field(default_factory=BatchUsage)
    metadata: dict[str, str] | None = None


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class Page(BaseModel, Generic[ItemT]):
    """OpenAI's cursor page: the next one is asked for with ``after=<last_id>``."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @classmethod
    def of(cls, data: list[ItemT], has_more: bool) -> Page[ItemT]:
        first, last = (getattr(data[0], "id"), getattr(data[-1], "id")) if data else (None, None)  # noqa: B009
        return cls(data=data, first_id=first, last_id=last, has_more=has_more)


class ExpiresAfter(BaseModel):
    """A file's expiry: ``seconds`` after its ``created_at``."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class InvalidLines(StrEnum):
    """What a batch does with an invalid input line (an extension: OpenAI always fails the batch)."""

    fail_batch = "fail_batch"  # OpenAI's: the batch fails, every invalid line in Batch.errors
    error_file = "error_file"  # each invalid line goes to the error file; the batch runs the rest


class CreateBatch(BaseModel):
    """``POST /v1/batches``: OpenAI's parameters, and two extensions a self-hosted server takes
    through the SDK's ``extra_body``. Anything else is refused, naming it (never silently dropped)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, object] | None = None  # checked against OpenAI's limits, each key named
    output_expires_after: ExpiresAfter | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    invalid_lines: InvalidLines | None = None
