"""Who sees which job, in one place: ``OwnedJobs`` is the ``JobBackend`` every route gets, for the
key that made the request. A job records its owner when it is submitted (the flow run's
``owner:<name>`` tag); for any other key but an admin's it does not exist: every call on it answers
exactly as for an id never issued (``JobNotFoundError``), whatever the job's state, and lists hold
only the caller's jobs. An open server (no keys, no token) owns nothing and shows everything.

Submitting also enforces the key's quotas (``keys.Quota``): what the owner's jobs that have not
ended reserved, plus what this one asks (``pipeline.enqueued``), must fit, else a 429 naming the
quota and how much of it is in use. A job gives its reservation back once it has ended.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from uuid import UUID

import anyio

from batchinfer.contract import BatchInference, JobPage, JobStatus
from batchinfer.control.backend import JobBackend
from batchinfer.control.keys import KeyStore, Principal, Quota, Reservation
from batchinfer.control.states import StateEvent
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobNotFoundError, RequestError
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.enqueued import Enqueued, enqueued
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.pipeline.prompt_source import local_input

_ENDED = (JobStatus.completed, JobStatus.failed)


class QuotaExceededError(RequestError):
    """A submit that would take its key past one of its quotas (the message says which)."""

    code = ErrorCode.quota_exceeded
    http_status = 429


@dataclass
class QuotaBook:
    """The server's quota keeping: the key store, the tokens a request's default ``max_tokens``
    counts for, and one lock per owner, so two submits of one owner are counted one after the other."""

    keys: KeyStore
    default_max_tokens: int
    _locks: defaultdict[str, anyio.Lock] = field(default_factory=lambda: defaultdict(anyio.Lock))

    def lock(self, owner: str) -> anyio.Lock:
        return self._locks[owner]


@dataclass
class OwnedJobs:
    """``backend`` as ``principal`` may see it."""

    backend: JobBackend
    principal: Principal
    book: QuotaBook | None = None

    async def submit(self, params: JobParameters) -> BatchInference:
        owner = self.principal.owner
        if owner is None:  # an open server: nobody's, no quotas
            return await self.backend.submit(params)
        if self.book is None or _unlimited(self.principal.quota):
            return await self.backend.submit(params, owner=owner)
        async with self.book.lock(owner):
            asked = await anyio.to_thread.run_sync(self._asked, params)
            await self._check_quota(owner, asked)
            job = await self.backend.submit(params, owner=owner)
            reservation = Reservation(job.job_id, asked.requests, asked.tokens)
            await anyio.to_thread.run_sync(self.book.keys.reserve, owner, reservation)
        return job

    async def status(self, job_id: UUID) -> BatchInference:
        return self._visible(await self.backend.status(job_id), job_id)

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]:
        job, place = await self.backend.job_files(job_id)
        return self._visible(job, job_id), place

    async def jobs_files(self, job_ids: list[UUID]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        found = await self.backend.jobs_files(job_ids)
        scope = self.principal.scope
        return {i: job for i, job in found.items() if scope is None or job[0].metadata.get("owner") == scope}

    async def resume(self, job_id: UUID) -> BatchInference:
        await self._owned(job_id)
        return await self.backend.resume(job_id)

    async def retry_failed(self, job_id: UUID, every_error: bool) -> BatchInference:
        await self._owned(job_id)
        return await self.backend.retry_failed(job_id, every_error)

    async def cancel(self, job_id: UUID) -> BatchInference:
        await self._owned(job_id)
        return await self.backend.cancel(job_id)

    async def list_jobs(
        self, status: JobStatus | None, model: str | None, limit: int, offset: int, owner: str | None = None
    ) -> JobPage:
        scope = self.principal.scope
        if scope is None:
            return await self.backend.list_jobs(status, model, limit, offset)
        return await self.backend.list_jobs(status, model, limit, offset, owner=scope)

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        """The states of jobs whose owner the caller has already checked (``status``)."""
        return await self.backend.history(job_ids)

    async def _owned(self, job_id: UUID) -> None:
        """Before acting on a job: it is the caller's (an admin, or an open server, may act on any)."""
        if self.principal.scope is not None:
            await self.status(job_id)

    def _visible(self, job: BatchInference, job_id: UUID) -> BatchInference:
        scope = self.principal.scope
        if scope is not None and job.metadata.get("owner") != scope:
            raise JobNotFoundError(str(job_id))  # the very answer an id never issued gets
        return job

    # -- quotas -------------------------------------------------------------------------------

    def _asked(self, params: JobParameters) -> Enqueued:
        assert self.book is not None
        source = local_input(params.prompt_file)
        if source is None:  # a remote file, read when the job runs: one request, for now
            return Enqueued(1, self.book.default_max_tokens)
        max_tokens = params.options.max_tokens or self.book.default_max_tokens
        return enqueued(source, params.prompt_file.value, max_tokens, params.num_generations)

    async def _check_quota(self, owner: str, asked: Enqueued) -> None:
        quota = self.principal.quota
        held = await self._held(owner)
        in_use = {
            "max_running_jobs": (len(held), 1),
            "max_enqueued_requests": (sum(r.requests for r in held), asked.requests),
            "max_enqueued_tokens": (sum(r.tokens for r in held), asked.tokens),
        }
        for name, (used, more) in in_use.items():
            limit = getattr(quota, name)
            if limit is not None and used + more > limit:
                raise QuotaExceededError(
                    f"Over this key's quota {name} = {limit}: {used} in use by its jobs that have not "
                    f"ended, and this one asks {more}. Wait for a job to end (or cancel one), submit "
                    "less, or ask an admin for a larger quota.",
                    field=name,
                )

    async def _held(self, owner: str) -> list[Reservation]:
        """The owner's reservations of jobs that have not ended; those that have are given back."""
        assert self.book is not None
        held = []
        for reservation in await anyio.to_thread.run_sync(self.book.keys.reservations, owner):
            try:
                job = await self.backend.status(UUID(reservation.job_id))
                ended = job.status in _ENDED
            except JobNotFoundError:  # its flow run was deleted: nothing left to count
                ended = True
            if ended:
                await anyio.to_thread.run_sync(self.book.keys.release, reservation.job_id)
            else:
                held.append(reservation)
        return held


def _unlimited(quota: Quota) -> bool:
    return all(value is None for value in quota.model_dump().values())
