"""A batch as OpenAI's Batch object: its record and its job (status, counts, usage, outputs, errors)
put together, each time it is read.

Its status comes from the one table of Prefect states (``control.states``), its timestamps from the
run's state history (``status``); its output and error files are made once its job has ended
(``outputs``). A batch that failed at create (no job) or while validating has neither file, as at
OpenAI: ``errors`` says why, each invalid line listed.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio

from batchinfer.api.openai.errors import from_batchinfer_error
from batchinfer.api.openai.files import FileStore
from batchinfer.api.openai.lines import batch_errors
from batchinfer.api.openai.outputs import make_outputs
from batchinfer.api.openai.records import BatchRecord
from batchinfer.api.openai.schemas import (
    Batch,
    BatchError,
    BatchErrors,
    BatchRequestCounts,
    BatchUsage,
    InvalidLines,
)
from batchinfer.api.openai.status import timestamps
from batchinfer.api.openai.store import Store
from batchinfer.contract import BatchInference, JobStatus
from batchinfer.control.backend import JobBackend
from batchinfer.control.states import BatchStatus, StateEvent, batch_status
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, JobNotCancellableError, JobNotFoundError
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.settings import Settings

MAX_ERRORS_LISTED = 1000
HISTORIES_KEPT = 10_000  # state histories remembered (each a few states), the least recently read dropped
INVALID_FILE_CODE = ErrorCode.invalid_batch_file  # the job's code when its lines failed the batch's checks
_WITH_OUTPUTS = frozenset(
    {BatchStatus.completed, BatchStatus.failed, BatchStatus.expired, BatchStatus.cancelled}
)


class BatchView:
    def __init__(self, settings: Settings, files: FileStore, store: Store) -> None:
        self.settings = settings
        self.files = files
        self.store = store
        # One output conversion per batch at a time; concurrent retrieves wait, then reuse it.
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._histories = Histories()

    async def jobs(self, backend: JobBackend, records: list[BatchRecord]) -> list[Seen | None]:
        """Each batch's job as it is now, and where its files are (None: it never had a job), in
        one read; a job stopped first if its window passed before any runner picked it up."""
        ids = [UUID(r.job_id) for r in records if r.job_id]
        try:
            found = await backend.jobs_files(ids)
            if missing := [job_id for job_id in ids if job_id not in found]:
                raise JobNotFoundError(str(missing[0]))
        except BatchInferError as exc:
            raise from_batchinfer_error(exc) from None
        seen: list[Seen | None] = []
        for record in records:
            if record.job_id is None:
                seen.append(None)
                continue
            job, place = found[UUID(record.job_id)]
            seen.append(Seen(await self._expire_if_due(backend, record, job), place))
        return seen

    async def histories(self, backend: JobBackend, seen: list[Seen | None]) -> dict[UUID, list[StateEvent]]:
        """The state history of each job seen, read from the backend only where it has a state
        since it was last read (an ended batch's history is read once)."""
        jobs = [s.job for s in seen if s is not None]
        await self._histories.refresh(backend, jobs)
        return {UUID(job.job_id): self._histories.of(job) for job in jobs}

    async def of(self, record: BatchRecord, seen: Seen | None, history: list[StateEvent]) -> Batch:
        if seen is None:
            return self._failed_at_create(record)
        job = seen.job
        state = job.metadata.get("state") or {}
        error = job.metadata.get("error") or {}
        status = batch_status(
            state.get("type", "PENDING"), state.get("name"), error.get("code"), record.expiring_at is not None
        )
        if status in _WITH_OUTPUTS and error.get("code") != INVALID_FILE_CODE:
            record = await self._outputs(record, job, status)
        errors = await anyio.to_thread.run_sync(self._errors, record, status, error, seen.place)
        counts = job.metadata.get("request_counts") or {}
        return Batch(
            **self._common(record),
            model=record.model,
            status=status,
            errors=BatchErrors(data=errors) if errors else None,
            output_file_id=record.output_file_id,
            error_file_id=record.error_file_id,
            **self._stamps(record, status, history),
            request_counts=BatchRequestCounts(
                total=int(counts.get("total", 0)),
                completed=int(counts.get("completed", 0)),
                failed=int(counts.get("failed", 0)),
            ),
            usage=_usage(job.metadata.get("usage") or {}),
        )

    def _failed_at_create(self, record: BatchRecord) -> Batch:
        errors = BatchErrors(data=[record.failure]) if record.failure else None
        return Batch(
            **self._common(record), status=BatchStatus.failed, errors=errors, failed_at=record.created_at
        )

    @staticmethod
    def _common(record: BatchRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "endpoint": record.endpoint,
            "input_file_id": record.input_file_id,
            "completion_window": record.completion_window,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "metadata": record.metadata,
        }

    @staticmethod
    def _stamps(record: BatchRecord, status: BatchStatus, history: list[StateEvent]) -> dict[str, Any]:
        stamps = timestamps(history, status)
        if record.expiring_at is not None and record.cancelling_at is None:
            stamps["cancelling_at"] = None  # the adapter's stop for the window, not a cancel
        if stamps["cancelling_at"] is None and status in (BatchStatus.cancelling, BatchStatus.cancelled):
            stamps["cancelling_at"] = record.cancelling_at
        if status is BatchStatus.expired and stamps["expired_at"] is None:
            stamps["expired_at"] = record.expiring_at
        return stamps

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
            await anyio.to_thread.run_sync(self.store.save_batch, record)
        state_type = job.metadata.get("state", {}).get("type")
        # A running job stops itself at expires_at (the flow's timer); stopping it from here too
        # would race it. Only a job that no runner has started yet is the adapter's to stop.
        if state_type in ("RUNNING", "CANCELLING", "CANCELLED"):
            return job
        assert record.job_id is not None
        try:
            return await backend.cancel(UUID(record.job_id))
        except JobNotCancellableError:  # it ended meanwhile
            return await backend.status(UUID(record.job_id))

    async def _outputs(self, record: BatchRecord, job: BatchInference, status: BatchStatus) -> BatchRecord:
        async with self._locks[record.id]:
            current = await anyio.to_thread.run_sync(self.store.batch, record.id, None) or record
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
            await anyio.to_thread.run_sync(self.store.save_batch, current)
            return current

    def _errors(
        self, record: BatchRecord, status: BatchStatus, error: dict[str, Any], place: JobPlace | None
    ) -> list[BatchError]:
        """Each invalid line of a batch that failed validation; with ``invalid_lines: error_file``
        also those of one that ran; then why it failed, when no line says."""
        if error.get("code") == INVALID_FILE_CODE:
            return _listed(place, "batch_errors")
        lenient = record.invalid_lines is InvalidLines.error_file
        data = _listed(place, "line_errors") if lenient else []
        if status is BatchStatus.failed and error:
            data.append(BatchError(code=error.get("code"), message=error.get("message")))
        return data


class Histories:
    """The state histories last read, by job, each valid while its job's state is the history's last."""

    def __init__(self, size: int = HISTORIES_KEPT) -> None:
        self._size = size
        self._kept: OrderedDict[str, list[StateEvent]] = OrderedDict()

    async def refresh(self, backend: JobBackend, jobs: list[BatchInference]) -> None:
        stale = [UUID(job.job_id) for job in jobs if not self._current(job)]
        for job_id, history in (await backend.history(stale)).items():
            self._kept[str(job_id)] = history
            self._kept.move_to_end(str(job_id))
        while len(self._kept) > self._size:
            self._kept.popitem(last=False)

    def of(self, job: BatchInference) -> list[StateEvent]:
        return self._kept.get(job.job_id, [])

    def _current(self, job: BatchInference) -> bool:
        history, state = self._kept.get(job.job_id), job.metadata.get("state") or {}
        if not history or "timestamp" not in state:
            return False
        last = history[-1]
        entered = datetime.fromisoformat(state["timestamp"])
        return (last.type, last.name, last.timestamp) == (state.get("type"), state.get("name"), entered)


@dataclass(frozen=True)
class Seen:
    """A batch's job as last read, and where its files are (None: just submitted, nothing to read)."""

    job: BatchInference
    place: JobPlace | None = None


def _listed(place: JobPlace | None, which: str) -> list[BatchError]:
    """The job's ``which`` file (``batch_errors``, ``line_errors``) as errors, wherever it is."""
    if place is None:
        return []
    path = getattr(place.layout, which)
    with place.local_copies([path]) as copy:
        local = copy.root / place.layout.name_of(path)
        if not local.exists():
            return []
        with open(local, encoding="utf-8") as handle:
            return batch_errors(handle, MAX_ERRORS_LISTED)


def _usage(usage: dict[str, Any]) -> BatchUsage:
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return BatchUsage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
