"""``/v1/batches``: a batch is a job of the same flow, submitted through the app's ``JobBackend``,
and answered as OpenAI's Batch API answers.

What OpenAI refuses at create (an endpoint, window, metadata or parameter it does not take) is a 400
naming the field; everything about the input file is found while the batch is ``validating``: an
unknown ``input_file_id`` fails the batch at once, and the flow checks every line of the file
(``pipeline.batch_checks``) before it sends any. What the flow run knows (status, counts, outputs)
is read from the job each time; what it does not is in the batch's record (``records``).

The service a route gets is bound to the request's principal (``for_principal``): every file and
batch it finds, lists or makes is that key's (an admin's: anyone's), through scoped queries.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import anyio
from pydantic import ValidationError

from batchinfer.api.openai.batch_view import BatchView, Seen
from batchinfer.api.openai.errors import OpenAIError, from_batchinfer_error, not_found
from batchinfer.api.openai.files import FileStore, StoredFile, link_or_copy
from batchinfer.api.openai.ids import batch_id_of, job_uuid_of
from batchinfer.api.openai.lines import read_lines, scan_models
from batchinfer.api.openai.records import BatchRecord
from batchinfer.api.openai.schemas import Batch, BatchError, CreateBatch, FileObject, InvalidLines, Page
from batchinfer.api.openai.store import Scope, Store
from batchinfer.contract import BatchInference, Path, PathType
from batchinfer.control.backend import JobBackend
from batchinfer.control.keys import OPEN, Principal
from batchinfer.control.states import BatchStatus
from batchinfer.endpoints import Endpoint
from batchinfer.engines.catalog import ModelCatalog
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, JobNotCancellableError
from batchinfer.jobspec import JobParameters, LineChecks
from batchinfer.settings import Settings

OPENAI_WINDOW = "24h"
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_METADATA_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512
ENDED = frozenset({BatchStatus.completed, BatchStatus.failed, BatchStatus.expired})
STOPPING = frozenset({BatchStatus.cancelling, BatchStatus.cancelled})


def window_seconds(window: str) -> int:
    """``24h``, ``90m``, ``30s``, ``2d`` in seconds; a ``ValueError`` for anything else."""
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
        store: Store,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.files = files
        self.store = store
        self.view = BatchView(settings, files, store)
        self.principal = OPEN
        # One create per idempotency key at a time: the second waits, then finds the first's batch.
        self._key_locks: defaultdict[tuple[str, str], anyio.Lock] = defaultdict(anyio.Lock)

    def for_principal(self, principal: Principal) -> BatchService:
        """This service as ``principal`` uses it (sharing everything else)."""
        bound = copy.copy(self)
        bound.principal = principal
        return bound

    @property
    def scope(self) -> Scope:
        """Whose files and batches this service finds; None: everyone's."""
        return self.principal.scope

    @property
    def owner(self) -> str:
        """Whose files and batches it makes; "": an open server's."""
        return self.principal.owner or ""

    # ---- files --------------------------------------------------------------------------------

    def upload(
        self, filename: str, purpose: str, chunks: Iterable[bytes], limit: int, expiry: int | None
    ) -> StoredFile:
        return self.files.create(filename, purpose, chunks, limit, expiry, owner=self.owner)

    async def file(self, file_id: str) -> StoredFile:
        stored = await anyio.to_thread.run_sync(self.files.get, file_id, self.scope)
        if stored is None:
            raise not_found("file", file_id, "file_id")
        return stored

    async def files_page(
        self, purpose: str | None, after: str | None, limit: int, oldest_first: bool
    ) -> Page[FileObject]:
        page, more = await anyio.to_thread.run_sync(
            self.files.page, self.scope, purpose, after, limit, oldest_first
        )
        return Page[FileObject].of([f.public() for f in page], more)

    async def delete_file(self, file_id: str) -> None:
        if not await anyio.to_thread.run_sync(self.files.delete, file_id, self.scope):
            raise not_found("file", file_id, "file_id")

    # ---- create ------------------------------------------------------------------------------

    async def create(self, backend: JobBackend, payload: Any) -> Batch:
        request = _parse_create(payload)
        window_s = self._window_of(request)
        key = request.idempotency_key
        if key is None:
            return await self._create(backend, request, window_s)
        async with self._key_locks[self.owner, key]:
            existing = await anyio.to_thread.run_sync(self.store.batch_by_key, self.owner, key)
            if existing is None:
                return await self._create(backend, request, window_s)
            if existing.fingerprint != _fingerprint(request):
                raise OpenAIError(
                    409,
                    f"The idempotency_key {key!r} was used to create {existing.id} with other parameters; "
                    "send the same parameters to get that batch, or use a new key for a new batch.",
                    param="idempotency_key",
                    code=ErrorCode.idempotency_conflict,
                )
            return await self._current(backend, existing)

    def _window_of(self, request: CreateBatch) -> int:
        """The endpoint, window and metadata checked as OpenAI checks them; the window in seconds."""
        if request.endpoint not in {e.value for e in Endpoint}:
            raise _invalid_value("endpoint", request.endpoint, [e.value for e in Endpoint])
        _check_metadata(request.metadata)
        window = request.completion_window
        if window == OPENAI_WINDOW:
            return window_seconds(window)
        if not self.settings.server.openai_any_completion_window:
            raise _invalid_value(
                "completion_window",
                window,
                [OPENAI_WINDOW],
                "(Other windows are an extension this server's operator can turn on: "
                "BATCHINFER_OPENAI_ANY_COMPLETION_WINDOW=true.)",
            )
        try:
            return window_seconds(window)
        except ValueError:
            raise OpenAIError(
                400,
                f"completion_window {window!r} is not a duration; use '24h', or e.g. '90m', '30s', '2d'.",
                param="completion_window",
                code=ErrorCode.invalid_value,
            ) from None

    async def _create(self, backend: JobBackend, request: CreateBatch, window_s: int) -> Batch:
        created = int(time.time())
        record = BatchRecord(
            id=batch_id_of(uuid4()),
            owner=self.owner,
            job_id=None,
            input_file_id=request.input_file_id,
            input_path=None,
            endpoint=request.endpoint,
            completion_window=request.completion_window,
            window_s=window_s,
            model=None,
            metadata=request.metadata,  # checked: every value a string
            created_at=created,
            created_ns=time.time_ns(),
            expires_at=created + window_s,
            invalid_lines=InvalidLines(request.invalid_lines or self.settings.server.openai_invalid_lines),
            output_expires_after_s=expiry.seconds if (expiry := request.output_expires_after) else None,
            idempotency_key=request.idempotency_key,
            fingerprint=_fingerprint(request),
        )
        # Another owner's file reads as one never issued: the batch fails alike.
        stored = await anyio.to_thread.run_sync(self.files.get, request.input_file_id, self.scope)
        if stored is None:  # as OpenAI: the batch is made, and fails while validating
            record.failure = BatchError(
                code=ErrorCode.invalid_request,
                param="input_file_id",
                message=f"No file found with id {request.input_file_id!r}: upload the batch's input "
                "file with purpose 'batch', and create the batch with the id the upload returned.",
            )
            await self._save(record)
            return await self.view.of(record, None, [])  # failed at create: no job
        job = await self._submit(backend, record, _batch_input(stored))
        await self._save(record)
        return await self.view.of(record, Seen(job), [])

    async def _submit(self, backend: JobBackend, record: BatchRecord, stored: StoredFile) -> BatchInference:
        """The batch's job, reading a staged copy of its input file; ``record`` gets its job id."""
        source = self.files.path(stored.id)
        found = await anyio.to_thread.run_sync(lambda: scan_models(read_lines(source)))
        # Staged by content under the uploads dir, where every job may read (input_roots), and
        # apart from the file store: deleting the input file does not pull it from under the job.
        staged = self.settings.uploads_dir / f"{stored.sha256}.jsonl"
        await anyio.to_thread.run_sync(link_or_copy, source, staged)
        checks = (
            LineChecks.openai
            if record.invalid_lines is InvalidLines.fail_batch
            else LineChecks.openai_lenient
        )
        params = JobParameters(
            # A file whose lines name no model fails validation line by line (body.model).
            model=found.model or "",
            prompt_file=Path(type=PathType.filepath, value=str(staged)),
            # The flow stops the job exactly at expires_at (keeping its finished lines).
            expires_at=datetime.fromtimestamp(record.expires_at, UTC),
            endpoint=Endpoint(record.endpoint),
            line_checks=checks,
            # Where the job's files go: its output file's source.
            output_url=self.settings.scale_out.output_url,
        )
        try:
            job = await backend.submit(params)
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        record.id, record.job_id = batch_id_of(job.job_id), job.job_id
        record.model, record.input_path = found.model, str(staged)
        return job

    async def _save(self, record: BatchRecord) -> None:
        await anyio.to_thread.run_sync(self.store.save_batch, record)

    # ---- read --------------------------------------------------------------------------------

    async def retrieve(self, backend: JobBackend, batch_id: str) -> Batch:
        return await self._current(backend, await self._record(batch_id))

    async def list_batches(self, backend: JobBackend, after: str | None, limit: int) -> Page[Batch]:
        cursor = None if after is None else _canonical(after)
        records, has_more = await anyio.to_thread.run_sync(self.store.batches_page, self.scope, cursor, limit)
        return Page[Batch].of(await self._batches(backend, records), has_more)

    async def cancel(self, backend: JobBackend, batch_id: str) -> Batch:
        """As OpenAI: a batch already stopping is returned as it is; one that ended is a 409."""
        record = await self._record(batch_id)
        current = await self._current(backend, record)
        if current.status in STOPPING:
            return current
        if current.status in ENDED or record.job_id is None:
            raise _not_cancellable(current.status)
        try:
            await backend.cancel(UUID(record.job_id))
        except JobNotCancellableError:  # it ended meanwhile
            raise _not_cancellable((await self._current(backend, record)).status) from None
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        if record.cancelling_at is None:
            record.cancelling_at = int(time.time())
            await self._save(record)
        return await self._current(backend, record)

    async def _current(self, backend: JobBackend, record: BatchRecord) -> Batch:
        (batch,) = await self._batches(backend, [record])
        return batch

    async def _batches(self, backend: JobBackend, records: list[BatchRecord]) -> list[Batch]:
        """The batches as they are now: their jobs in one read, the state histories that changed,
        then each put together."""
        seen = await self.view.jobs(backend, records)
        histories = await self.view.histories(backend, seen)
        batches = [self.view.of(r, s, _history(histories, r)) for r, s in zip(records, seen, strict=True)]
        return list(await asyncio.gather(*batches))  # each may read its job's error files

    async def _record(self, batch_id: str) -> BatchRecord:
        record = await anyio.to_thread.run_sync(self.store.batch, _canonical(batch_id), self.scope)
        if record is None:
            raise not_found("batch", batch_id, "batch_id")
        return record


def _canonical(batch_id: str) -> str:
    job_id = job_uuid_of(batch_id)
    return batch_id_of(job_id) if job_id is not None else batch_id


def _history(histories: dict[UUID, Any], record: BatchRecord) -> list[Any]:
    return histories.get(UUID(record.job_id), []) if record.job_id else []


def _batch_input(stored: StoredFile) -> StoredFile:
    if stored.purpose != "batch":
        raise OpenAIError(
            400,
            f"File {stored.id!r} has purpose {stored.purpose!r}; a batch's input file must be "
            "uploaded with purpose 'batch'.",
            param="input_file_id",
            code=ErrorCode.invalid_file_purpose,
        )
    return stored


def _parse_create(payload: Any) -> CreateBatch:
    try:
        return CreateBatch.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise OpenAIError(
                400,
                f"Unrecognized request argument supplied: {param}.",
                param=param,
                code=ErrorCode.unknown_parameter,
            ) from None
        raise OpenAIError(400, f"Invalid '{param or 'body'}': {first['msg']}.", param=param) from None


def _fingerprint(request: CreateBatch) -> str:
    """The create's parameters but its key: the same key with other parameters is a conflict."""
    return hashlib.sha256(request.model_dump_json(exclude={"idempotency_key"}).encode()).hexdigest()


def _invalid_value(param: str, value: str, supported: list[str], more: str = "") -> OpenAIError:
    quoted = [f"'{v}'" for v in supported]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])}, and {quoted[-1]}"
    message = f"Invalid value: '{value}'. Supported values are: {listed}." + (f" {more}" if more else "")
    return OpenAIError(400, message, param=param, code=ErrorCode.invalid_value)


def _not_cancellable(status: BatchStatus) -> OpenAIError:
    return OpenAIError(409, f"Cannot cancel a batch with status '{status.value}'.")


def _check_metadata(metadata: dict[str, object] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values strings up to 512."""
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_KEYS:
        raise OpenAIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_KEYS} properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code=ErrorCode.object_above_max_properties,
        )
    for key, value in metadata.items():
        param = f"metadata.{key}"
        if len(key) > MAX_KEY_CHARS:
            raise _too_long(param, "key", MAX_KEY_CHARS, len(key))
        if not isinstance(value, str):
            raise OpenAIError(
                400,
                f"Invalid type for '{param}': expected a string, but got {type(value).__name__} instead.",
                param=param,
                code=ErrorCode.invalid_type,
            )
        if len(value) > MAX_VALUE_CHARS:
            raise _too_long(param, "value", MAX_VALUE_CHARS, len(value))


def _too_long(param: str, what: str, limit: int, length: int) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid '{param}': {what} too long. Expected a string with maximum length {limit}, "
        f"but got a string with length {length} instead.",
        param=param,
        code=ErrorCode.string_above_max_length,
    )
