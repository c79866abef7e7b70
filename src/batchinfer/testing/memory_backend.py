"""A ``JobBackend`` in memory, for tests of the HTTP adapter without Prefect: jobs in a dict, each in
whatever state a test puts it (and with the outputs it gives it), owned as the adapter says."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from batchinfer.contract import BatchInference, JobPage, JobStatus, PathType
from batchinfer.contract import Path as ContractPath
from batchinfer.control.states import StateEvent, job_status
from batchinfer.errors import JobNotCancellableError, JobNotFoundError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import JobPlace

SCHEDULED = {"type": "SCHEDULED", "name": "Scheduled"}
ENDED_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


@dataclass
class MemoryJob:
    params: JobParameters
    owner: str | None = None
    state: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULED))
    error: dict[str, str] | None = None
    outputs: tuple[Path, Path] | None = None  # the success and error files, once it has them
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def end(self, state_type: str, error_code: str | None = None) -> None:
        """End it as a flow run would: COMPLETED, or FAILED/CANCELLED with ``error_code``."""
        self.state = {"type": state_type, "name": state_type.capitalize()}
        self.error = {"code": error_code, "message": f"It ended {error_code}."} if error_code else None


class MemoryBackend:
    def __init__(self, root: Path | None = None) -> None:
        self.jobs: dict[UUID, MemoryJob] = {}
        self.root = root or Path("/nonexistent")  # where job_files says a job's files are

    def job_of(self, job_id: str) -> MemoryJob:
        """The job a job id or a batch id (``batch_<hex>``) names."""
        return self.jobs[UUID(job_id.removeprefix("batch_"))]

    def _view(self, job_id: UUID) -> BatchInference:
        job = self.jobs[job_id]
        success = errors = None
        if job.outputs is not None:
            success, errors = (ContractPath(type=PathType.filepath, value=str(p)) for p in job.outputs)
        metadata: dict[str, Any] = {
            "model": job.params.model,
            "state": job.state,
            "request_counts": {"total": 1},
        }
        if job.owner is not None:
            metadata["owner"] = job.owner
        if job.error is not None:
            metadata["error"] = job.error
        return BatchInference(
            job_id=str(job_id),
            created=job.created,
            status=job_status(job.state["type"], job.state["name"]),
            input_file_path=job.params.prompt_file,
            success_file_path=success,
            error_file_path=errors,
            metadata=metadata,
        )

    def _job(self, job_id: UUID) -> MemoryJob:
        if job_id not in self.jobs:
            raise JobNotFoundError(str(job_id))
        return self.jobs[job_id]

    async def submit(self, params: JobParameters, owner: str | None = None) -> BatchInference:
        job_id = uuid4()
        self.jobs[job_id] = MemoryJob(params, owner)
        return self._view(job_id)

    async def status(self, job_id: UUID) -> BatchInference:
        self._job(job_id)
        return self._view(job_id)

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]:
        return await self.status(job_id), JobPlace(JobLayout(self.root / str(job_id)))

    async def jobs_files(self, job_ids: list[UUID]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        return {job_id: await self.job_files(job_id) for job_id in job_ids if job_id in self.jobs}

    async def resume(self, job_id: UUID) -> BatchInference:
        self._job(job_id).state = dict(SCHEDULED)
        return self._view(job_id)

    async def retry_failed(self, job_id: UUID, every_error: bool) -> BatchInference:
        return await self.resume(job_id)

    async def cancel(self, job_id: UUID) -> BatchInference:
        job = self._job(job_id)
        if job.state["type"] in ENDED_TYPES:
            raise JobNotCancellableError(f"Job {job_id} has already ended.")
        job.state = {"type": "CANCELLING", "name": "Cancelling"}
        return self._view(job_id)

    async def list_jobs(
        self, status: JobStatus | None, model: str | None, limit: int, offset: int, owner: str | None = None
    ) -> JobPage:
        views = [self._view(job_id) for job_id, job in self.jobs.items() if owner in (None, job.owner)]
        views = [v for v in views if status in (None, v.status) and model in (None, v.metadata["model"])]
        views.sort(key=lambda v: v.created, reverse=True)
        page = views[offset : offset + limit]
        return JobPage(
            data=page, total=len(views), limit=limit, offset=offset, has_more=offset + limit < len(views)
        )

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        return {}  # no states recorded: the timestamps a run's states give stay null
