"""``/v1/batches``: a batch is a job of the same flow, submitted through the app's ``JobBackend``.

What the flow run knows (status, counts, outputs) is read from the job each time; what it does not
(input file, endpoint, window, metadata, output file ids) is in the batch's record.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from batchinfer.api.openai.errors import OpenAIError, from_batchinfer_error, not_found
from batchinfer.api.openai.files import FileStore, StoredFile, link_or_copy
from batchinfer.api.openai.history import HistoryReader
from batchinfer.api.openai.ids import batch_id_of, job_uuid_of
from batchinfer.api.openai.lines import batch_errors, read_lines, scan_models
from batchinfer.api.openai.outputs import make_outputs
from batchinfer.api.openai.pagination import cursor_page, list_body
from batchinfer.api.openai.records import BatchRecord, BatchStore
from batchinfer.api.openai.status import StateEvent, timestamps
from batchinfer.contract import BatchInference, JobStatus, Path, PathType
from batchinfer.control.backend import JobBackend
from batchinfer.control.states import BatchStatus, batch_status
from batchinfer.endpoints import Endpoint
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.errors import BatchInferError, JobNotCancellableError, UnknownModelError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import job_layout
from batchinfer.settings import Settings

ENDPOINTS = frozenset(e.value for e in Endpoint)  # each line's url must name the batch's
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_ERRORS_LISTED = 1000
MAX_METADATA_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. output_expires_after: accepted, not applied

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _window_of(request: CreateBatch) -> int:
    """The batch's endpoint checked, its metadata checked, and its completion window in seconds."""
    if request.endpoint not in ENDPOINTS:
        raise OpenAIError(
            400,
            f"Endpoint {request.endpoint!r} is not supported; use {', '.join(sorted(ENDPOINTS))}.",
            param="endpoint",
            code="unsupported_endpoint",
        )
    _check_metadata(request.metadata)
    try:
        return window_seconds(request.completion_window)
    except ValueError:
        raise OpenAIError(
            400,
            f"completion_window {request.completion_window!r} is not a duration; use '24h'.",
            param="completion_window",
        ) from None


def window_seconds(window: str) -> int:
    """``24h``, ``90m``, ``30s``, ``2d`` in seconds (OpenAI only knows ``24h``; shorter ones serve
    tests and impatient users). A ``ValueError`` for anything else."""
    match = _WINDOW.match(window.strip())
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if seconds <= 0:
        raise ValueError(window)
    return seconds


class BatchService:
    def __init__(
        self,
        settings: Settings,
        catalog: ModelCatalog,
        files: FileStore,
        batches: BatchStore,
        history: HistoryReader,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.files = files
        self.batches = batches
        self.history = history
        # One output conversion per batch at a time; concurrent retrieves wait, then reuse it.
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)

    # ---- create ------------------------------------------------------------------------------

    async def create(self, backend: JobBackend, payload: Any) -> dict[str, Any]:
        request = _parse_create(payload)
        stored = self._input_file(request.input_file_id)
        window_s = _window_of(request)
        source = self.files.path(stored.id)
        model = await anyio.to_thread.run_sync(self._model_of, source, stored.id)
        # Staged by content under the uploads dir, where every job may read (input_roots), and
        # apart from the file store: deleting the input file does not pull it from under the job.
        staged = self.settings.uploads_dir / f"{stored.sha256}.jsonl"
        await anyio.to_thread.run_sync(link_or_copy, source, staged)
        # The batch's own clock, whole seconds as OpenAI's: the flow stops the job exactly at
        # expires_at (keeping its finished lines), so expired_at is never before it.
        created = int(time.time())
        params = JobParameters(
            model=model,
            prompt_file=Path(type=PathType.filepath, value=str(staged)),
            expires_at=datetime.fromtimestamp(created + window_s, UTC),
            endpoint=Endpoint(request.endpoint),
        )
        try:
            job = await backend.submit(params)
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        record = BatchRecord(
            id=batch_id_of(job.job_id),
            job_id=job.job_id,
            input_file_id=stored.id,
            input_path=str(staged),
            endpoint=request.endpoint,
            completion_window=request.completion_window,
            window_s=window_s,
            model=model,
            metadata=request.metadata,
            created_at=created,
            created_ns=time.time_ns(),
            expires_at=created + window_s,
        )
        self.batches.save(record)
        return await self._view(backend, record, job, [])

    def _input_file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise not_found("File", file_id, "input_file_id")
        if stored.purpose != "batch":
            raise OpenAIError(
                400,
                f"File {stored.id!r} has purpose {stored.purpose!r}; a batch's input file must be "
                "uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_file_purpose",
            )
        return stored

    def _model_of(self, source: Any, file_id: str) -> str:
        """The batch's one model, from its lines' ``body.model``; a known model id."""
        found = scan_models(read_lines(source))
        if found.model is None:
            raise OpenAIError(
                400,
                f"No line of {file_id!r} names a model in body.model; give every line the model id.",
                param="input_file_id",
                code="missing_model",
            )
        if found.mismatched:
            shown = ", ".join(map(str, found.mismatched[:10]))
            raise OpenAIError(
                400,
                f"A batch runs one model: line {found.first_line} names {found.model!r}, but lines "
                f"{shown}{' ...' if len(found.mismatched) > 10 else ''} name another.",
                param="input_file_id",
                code="mismatched_model",
            )
        try:
            self.catalog.get(found.model)
        except UnknownModelError as exc:
            raise OpenAIError(400, exc.message, param="body.model", code="model_not_found") from None
        return found.model

    # ---- read ---------------------------------------------------------------------------------

    async def retrieve(self, backend: JobBackend, batch_id: str) -> dict[str, Any]:
        record = self._record(batch_id)
        job = await self._job(backend, record)
        history = await self.history([UUID(record.job_id)])
        return await self._view(backend, record, job, history.get(UUID(record.job_id), []))

    async def list_batches(self, backend: JobBackend, after: str | None, limit: int) -> dict[str, Any]:
        if after is not None:
            after = self._canonical(after)
        records, has_more = cursor_page(self.batches.list(), lambda r: r.id, after, limit)
        histories = await self.history([UUID(r.job_id) for r in records])
        data = []
        for record in records:
            job = await self._job(backend, record)
            data.append(await self._view(backend, record, job, histories.get(UUID(record.job_id), [])))
        return list_body(data, has_more)

    async def cancel(self, backend: JobBackend, batch_id: str) -> dict[str, Any]:
        record = self._record(batch_id)
        try:
            job = await backend.cancel(UUID(record.job_id))
        except JobNotCancellableError as exc:
            raise OpenAIError(409, exc.message, param="batch_id", code="batch_not_cancellable") from None
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        if record.cancelling_at is None:
            record.cancelling_at = int(time.time())
            self.batches.save(record)
        history = await self.history([UUID(record.job_id)])
        return await self._view(backend, record, job, history.get(UUID(record.job_id), []))

    def _canonical(self, batch_id: str) -> str:
        job_id = job_uuid_of(batch_id)
        return batch_id_of(job_id) if job_id is not None else batch_id

    def _record(self, batch_id: str) -> BatchRecord:
        record = self.batches.get(self._canonical(batch_id))
        if record is None:
            raise not_found("Batch", batch_id, "batch_id")
        return record

    async def _job(self, backend: JobBackend, record: BatchRecord) -> BatchInference:
        try:
            job = await backend.status(UUID(record.job_id))
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        return await self._expire_if_due(backend, record, job)

    async def _expire_if_due(
        self, backend: JobBackend, record: BatchRecord, job: BatchInference
    ) -> BatchInference:
        """Past its completion window, a batch still running is stopped as a cancel stops it (the
        finished lines kept), and reads expired. The flow stops it itself (``expires_at``); this
        covers a job that no runner has picked up by then."""
        now = int(time.time())
        if job.status in (JobStatus.completed, JobStatus.failed) or now < record.expires_at:
            return job
        if record.expiring_at is None:
            record.expiring_at = now
            self.batches.save(record)
        state_type = job.metadata.get("state", {}).get("type")
        # A running job stops itself at expires_at (the flow's timer); stopping it from here too
        # would race it. Only a job that no runner has started yet is the adapter's to stop.
        if state_type in ("RUNNING", "CANCELLING", "CANCELLED"):
            return job
        try:
            return await backend.cancel(UUID(record.job_id))
        except JobNotCancellableError:  # it ended meanwhile
            return await backend.status(UUID(record.job_id))

    # ---- the Batch object ---------------------------------------------------------------------

    async def _view(
        self, backend: JobBackend, record: BatchRecord, job: BatchInference, history: list[StateEvent]
    ) -> dict[str, Any]:
        state = job.metadata.get("state") or {}
        error = job.metadata.get("error") or {}
        status = batch_status(
            state.get("type", "PENDING"), state.get("name"), error.get("code"), record.expiring_at is not None
        )
        if status in (BatchStatus.completed, BatchStatus.failed, BatchStatus.expired, BatchStatus.cancelled):
            record = await self._outputs(record, job, status)
        stamps = timestamps(history, status)
        if record.expiring_at is not None and record.cancelling_at is None:
            stamps["cancelling_at"] = None  # the adapter's stop for the window, not a cancel
        if stamps["cancelling_at"] is None and status in (BatchStatus.cancelling, BatchStatus.cancelled):
            stamps["cancelling_at"] = record.cancelling_at
        if status is BatchStatus.expired and stamps["expired_at"] is None:
            stamps["expired_at"] = record.expiring_at
        counts = job.metadata.get("request_counts") or {}
        usage = job.metadata.get("usage") or {}
        errors = await anyio.to_thread.run_sync(self._errors, record, status, error)
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return {
            "id": record.id,
            "object": "batch",
            "endpoint": record.endpoint,
            "model": record.model,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": record.input_file_id,
            "completion_window": record.completion_window,
            "status": status.value,
            "output_file_id": record.output_file_id,
            "error_file_id": record.error_file_id,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            **stamps,
            "request_counts": {
                "total": int(counts.get("total", 0)),
                "completed": int(counts.get("completed", 0)),
                "failed": int(counts.get("failed", 0)),
            },
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
            "metadata": record.metadata,
        }

    async def _outputs(self, record: BatchRecord, job: BatchInference, status: BatchStatus) -> BatchRecord:
        async with self._locks[record.id]:
            current = self.batches.get(record.id) or record  # another request may have made them
            made = await anyio.to_thread.run_sync(make_outputs, current, job, status, self.files)
            if made is None:
                return current
            current = current.model_copy(
                update={
                    "output_file_id": made.output_file_id,
                    "error_file_id": made.error_file_id,
                    "outputs_signature": made.signature,
                }
            )
            self.batches.save(current)
            return current

    def _errors(
        self, record: BatchRecord, status: BatchStatus, error: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Validation failures by line (what the job's validation wrote), then a wholesale failure."""
        layout = job_layout(record.job_id, {}, self.settings.jobs_dir)
        data: list[dict[str, Any]] = []
        try:
            with open(layout.line_errors, encoding="utf-8") as handle:
                data = batch_errors(handle, MAX_ERRORS_LISTED)
        except FileNotFoundError:
            pass
        if status is BatchStatus.failed and error:
            data.append(
                {"code": error.get("code"), "message": error.get("message"), "param": None, "line": None}
            )
        return data


def _parse_create(payload: Any) -> CreateBatch:
    try:
        return CreateBatch.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{param or 'body'}: {first['msg']}.", param=param) from None


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_KEYS:
        raise OpenAIError(400, f"metadata has {len(metadata)} keys; at most 16.", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_KEY_CHARS or len(value) > MAX_VALUE_CHARS:
            raise OpenAIError(
                400,
                f"metadata key {key[:64]!r}: keys are at most 64 characters, values at most 512.",
                param="metadata",
            )
