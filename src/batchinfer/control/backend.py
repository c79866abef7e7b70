"""Where jobs live: the ``JobBackend`` Protocol and its Prefect implementation.

The adapter only ever talks to a ``JobBackend``; tests and other front ends may inject their own.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import anyio
from pydantic import ValidationError

from batchinfer.contract import BatchInference, JobPage, JobStatus
from batchinfer.control.jobview import RunSnapshot, batch_inference, owner_tag
from batchinfer.control.names import DEPLOYMENT_NAME, FLOW_NAME
from batchinfer.control.recovery import (
    LEFT_RUNNING_STATE_TYPES,
    StateSpec,
    interrupted_state,
    let_go_delay,
    nothing_to_retry,
    resume_refusal,
    resume_state,
    retry_refusal,
    retry_state,
    runner_may_still_cancel,
)
from batchinfer.control.states import StateEvent, cancel_action, status_query
from batchinfer.errors import (
    JobNotCancellableError,
    JobNotFoundError,
    JobNotResumableError,
    JobNotRetryableError,
    ServiceUnavailableError,
)
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobProgress
from batchinfer.pipeline.jobstore import JobPlace, job_place
from batchinfer.pipeline.retry import strip_failed

logger = logging.getLogger(__name__)
HISTORY_READS_AT_ONCE = 8
# How often a resume looks whether the runner of a cancelled job has let go of it.
LET_GO_POLL_S = 0.5


class JobBackend(Protocol):
    async def submit(self, params: JobParameters, owner: str | None = None) -> BatchInference:
        """A new job; ``owner``: the key it belongs to (``control.ownership``), None on an open server."""
        ...

    async def status(self, job_id: UUID) -> BatchInference: ...

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]: ...

    async def jobs_files(self, job_ids: list[UUID]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        """``job_files`` of several jobs in one read (a page of a list); an unknown id is left out."""
        ...

    async def resume(self, job_id: UUID) -> BatchInference: ...

    async def retry_failed(self, job_id: UUID, every_error: bool) -> BatchInference: ...

    async def cancel(self, job_id: UUID) -> BatchInference: ...

    async def list_jobs(
        self, status: JobStatus | None, model: str | None, limit: int, offset: int, owner: str | None = None
    ) -> JobPage:
        """A page of jobs, newest first; ``owner``: only that key's."""
        ...

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        """Each job's states so far, oldest first; a job whose history cannot be read is left out."""
        ...


def snapshot(flow_run: Any, jobs_dir: Path) -> RunSnapshot:
    """A ``RunSnapshot`` of a Prefect ``FlowRun`` and its job's progress file."""
    state = flow_run.state
    parameters = dict(flow_run.parameters)
    return RunSnapshot(
        id=str(flow_run.id),
        created=flow_run.created,
        state_type=state.type.value if state else "PENDING",
        state_name=state.name if state else None,
        state_message=state.message if state else None,
        parameters=parameters,
        progress=job_place(str(flow_run.id), parameters, jobs_dir).read_progress(),
        tags=list(flow_run.tags or []),
        state_timestamp=state.timestamp if state else None,
    )


class PrefectJobBackend:
    """Jobs as flow runs of the ``batch-inference/batchinfer`` deployment."""

    def __init__(
        self, jobs_dir: Path, flow_name: str = FLOW_NAME, deployment_name: str = DEPLOYMENT_NAME
    ) -> None:
        from prefect.client.orchestration import get_client

        self._jobs_dir = jobs_dir
        self._flow_name = flow_name
        self._client = get_client()
        self._deployment = f"{flow_name}/{deployment_name}"
        self._deployment_id: UUID | None = None
        # One flow-run creation at a time. On SQLite (the database `serve` starts by default), writes
        # that overlap fail inside the Prefect server with "database is locked", and Prefect's client
        # backs off for seconds before each retry: 20 simultaneous submits took up to 30+ s each.
        # In turn, each takes a fraction of a second.
        self._create_lock = anyio.Lock()

    async def __aenter__(self) -> PrefectJobBackend:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def _deployment_uuid(self) -> UUID:
        from prefect.exceptions import ObjectNotFound

        if self._deployment_id is None:
            try:
                deployment = await self._client.read_deployment_by_name(self._deployment)
            except ObjectNotFound:
                raise ServiceUnavailableError(
                    f"The deployment {self._deployment} is not registered yet; "
                    "is `batchinfer serve` (or a worker) running? Retry in a few seconds."
                ) from None
            self._deployment_id = deployment.id
        return self._deployment_id

    async def submit(self, params: JobParameters, owner: str | None = None) -> BatchInference:
        deployment_id = await self._deployment_uuid()
        tags = [f"model:{params.model}", *([owner_tag(owner)] if owner is not None else [])]
        async with self._create_lock:
            flow_run = await self._client.create_flow_run_from_deployment(
                deployment_id,
                parameters=params.model_dump(mode="json", exclude_none=True),
                tags=tags,
            )
        return batch_inference(snapshot(flow_run, self._jobs_dir))

    async def status(self, job_id: UUID) -> BatchInference:
        _, job = await self._read_job(job_id)
        return job

    async def job_files(self, job_id: UUID) -> tuple[BatchInference, JobPlace]:
        """The job as it is now, and where its files are (to read what it has finished so far)."""
        flow_run, job = await self._read_job(job_id)
        return job, self._place(flow_run)

    async def jobs_files(self, job_ids: list[UUID]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        if not job_ids:
            return {}
        runs = await self._client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=job_ids)), limit=len(job_ids)
        )
        return await anyio.to_thread.run_sync(self._jobs_of, runs)

    def _jobs_of(self, runs: list[Any]) -> dict[UUID, tuple[BatchInference, JobPlace]]:
        found = {}
        for run in runs:
            try:
                found[run.id] = (batch_inference(snapshot(run, self._jobs_dir)), self._place(run))
            except ValidationError:  # a flow run of some other flow: not one of our jobs
                continue
        return found

    async def resume(self, job_id: UUID) -> BatchInference:
        """Set a failed, crashed or cancelled job back to SCHEDULED, as the Prefect UI's "Retry"
        does; the runner starts it again under the same id, reusing its finished chunks."""
        flow_run, _ = await self._read_job(job_id)
        state_type = await self._settled_state_type(flow_run)
        refusal = resume_refusal(str(job_id), state_type, has_deployment=flow_run.deployment_id is not None)
        if refusal is not None:
            raise JobNotResumableError(refusal)
        return await self._reschedule(job_id, resume_state(), JobNotResumableError)

    async def retry_failed(self, job_id: UUID, every_error: bool) -> BatchInference:
        """Run an ended job again for its failed lines only (``pipeline.retry``): their records
        are taken out of its chunk results, and it is rescheduled as for a resume."""
        flow_run, _ = await self._read_job(job_id)
        state_type = await self._settled_state_type(flow_run)
        refusal = retry_refusal(str(job_id), state_type, has_deployment=flow_run.deployment_id is not None)
        if refusal is not None:
            raise JobNotRetryableError(refusal)
        place = self._place(flow_run)
        progress = await anyio.to_thread.run_sync(place.read_progress) or JobProgress()
        lines = await anyio.to_thread.run_sync(strip_failed, place, progress, every_error)
        if not lines:
            raise JobNotRetryableError(nothing_to_retry(str(job_id), every_error))
        return await self._reschedule(job_id, retry_state(lines), JobNotRetryableError)

    def _place(self, flow_run: Any) -> JobPlace:
        return job_place(str(flow_run.id), dict(flow_run.parameters), self._jobs_dir)

    async def _settled_state_type(self, flow_run: Any) -> str:
        """The job's state type once the runner that owned its process has let go of a cancel
        (``recovery.runner_may_still_cancel``): a resume before that would be cancelled again."""
        state_type: str = flow_run.state.type.value if flow_run.state else "PENDING"
        if state_type != "CANCELLED":
            return state_type
        while True:
            states = await self._states(flow_run.id)
            own_cancel_at = runner_may_still_cancel(states)
            if own_cancel_at is None or (delay := let_go_delay(own_cancel_at)) == 0:
                return states[-1].type if states else state_type
            await anyio.sleep(min(delay, LET_GO_POLL_S))

    async def _states(self, job_id: UUID) -> list[StateEvent]:
        """The run's states, oldest first, as Prefect recorded them (when it got there)."""
        states = await self._client.read_flow_run_states(job_id)
        return [StateEvent(s.type.value, s.name, s.timestamp) for s in states]

    async def _reschedule(
        self, job_id: UUID, spec: StateSpec, refused: type[JobNotResumableError | JobNotRetryableError]
    ) -> BatchInference:
        from prefect.client.schemas.objects import State, StateType
        from prefect.client.schemas.responses import SetStateStatus

        state: State[Any] = State(type=StateType(spec.type), name=spec.name, message=spec.message)
        result = await self._client.set_flow_run_state(job_id, state, force=True)
        if result.status != SetStateStatus.ACCEPT:  # force makes this unlikely; say so if it happens
            raise refused(f"Prefect did not reschedule job {job_id}: {result.details}")
        return await self.status(job_id)

    async def cancel(self, job_id: UUID) -> BatchInference:
        """Cancel a job: at once if no process runs it yet, else ask it to stop (CANCELLING), which
        it does within seconds, writing what it finished to its output files (as the UI's Cancel)."""
        from prefect.client.schemas.objects import State
        from prefect.states import Cancelled, Cancelling

        flow_run, _ = await self._read_job(job_id)
        state_type = flow_run.state.type.value if flow_run.state else "PENDING"
        action = cancel_action(state_type)
        if action == "already_ended":
            raise JobNotCancellableError(
                f"Job {job_id} has already ended ({state_type.lower()}); there is nothing to cancel."
            )
        message = "Cancelled through the batchinfer API."
        state: State[Any] = (
            Cancelled(message=message) if action == "cancel_now" else Cancelling(message=message)
        )
        await self._client.set_flow_run_state(job_id, state, force=True)
        return await self.status(job_id)

    async def list_jobs(
        self, status: JobStatus | None, model: str | None, limit: int, offset: int, owner: str | None = None
    ) -> JobPage:
        """A page of jobs, newest first, filtered by status, model (the ``model:<id>`` tag) and
        owner (the ``owner:<name>`` tag)."""
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateName,
            FlowRunFilterStateType,
            FlowRunFilterTags,
            Operator,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        # Every run of the flow, however it was started (adapter, deployment, UI, direct call).
        flow_filter = FlowFilter(name=FlowFilterName(any_=[self._flow_name]))
        run_filter = FlowRunFilter()
        tags = [*([f"model:{model}"] if model else []), *([owner_tag(owner)] if owner else [])]
        if tags:
            run_filter.tags = FlowRunFilterTags(all_=tags)
        if status is not None:
            query = status_query(status)
            run_filter.state = FlowRunFilterState(  # type: ignore[call-arg]  # operator: a mixin field
                operator=Operator.or_,
                type=FlowRunFilterStateType(any_=[StateType(t) for t in sorted(query.types)]),
                name=FlowRunFilterStateName(any_=sorted(query.names)) if query.names else None,
            )
        runs = await self._client.read_flow_runs(
            flow_filter=flow_filter,
            flow_run_filter=run_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
            offset=offset,
        )
        total = await self._client.count_flow_runs(flow_filter=flow_filter, flow_run_filter=run_filter)
        jobs = [
            batch_inference(await anyio.to_thread.run_sync(snapshot, run, self._jobs_dir)) for run in runs
        ]
        return JobPage(
            data=jobs, total=total, limit=limit, offset=offset, has_more=offset + len(jobs) < total
        )

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        """From Prefect's record of each run's states (when it got there, not when someone asked).
        A failure costs only the timestamps, logged, never the answer they are part of. The reads
        go side by side, a few at a time."""
        histories: dict[UUID, list[StateEvent]] = {}
        reads = anyio.Semaphore(HISTORY_READS_AT_ONCE)

        async def read(job_id: UUID) -> None:
            async with reads:
                try:
                    histories[job_id] = await self._states(job_id)
                except Exception:
                    logger.warning("Could not read the state history of job %s", job_id, exc_info=True)

        await asyncio.gather(*map(read, job_ids))
        return histories

    async def _read_job(self, job_id: UUID) -> tuple[Any, BatchInference]:
        """The flow run and its ``BatchInference``; 404 for an unknown id or another flow's run."""
        from prefect.exceptions import ObjectNotFound

        try:
            flow_run = await self._client.read_flow_run(job_id)
        except ObjectNotFound:
            raise JobNotFoundError(str(job_id)) from None
        try:
            run = await anyio.to_thread.run_sync(snapshot, flow_run, self._jobs_dir)
            return flow_run, batch_inference(run)
        except ValidationError:  # a flow run of some other flow: not one of our jobs
            raise JobNotFoundError(str(job_id)) from None


async def mark_interrupted_jobs(deployment: str = f"{FLOW_NAME}/{DEPLOYMENT_NAME}") -> list[str]:
    """Mark the jobs that a previous ``serve`` left PENDING, RUNNING or CANCELLING as CRASHED
    "Interrupted" (CANCELLED for CANCELLING), with a message saying how to resume; their ids.

    Only call it when no live process can be running them: ``serve`` does, when it owns the Prefect
    server, before it starts its runner. Without this they would show ``running`` forever.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import State

    async with get_client() as client:
        try:
            deployment_id = (await client.read_deployment_by_name(deployment)).id
        except ObjectNotFound:  # a fresh database: no job ever ran
            return []
        left_running = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(t) for t in LEFT_RUNNING_STATE_TYPES])
            ),
        )
        runs: list[Any] = []
        page = 200
        while batch := await client.read_flow_runs(
            flow_run_filter=left_running, limit=page, offset=len(runs)
        ):
            runs += batch
            if len(batch) < page:
                break
        marked = []
        for flow_run in runs:
            spec = interrupted_state(str(flow_run.id), flow_run.state.type.value)
            if spec is None:
                continue
            state = State(type=StateType(spec.type), name=spec.name, message=spec.message)
            await client.set_flow_run_state(flow_run.id, state, force=True)
            marked.append(str(flow_run.id))
        return marked
