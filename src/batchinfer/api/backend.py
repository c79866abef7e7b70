"""Where jobs live: the ``JobBackend`` Protocol and its Prefect implementation.

The adapter only ever talks to a ``JobBackend``; tests and other front ends may inject their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import anyio
from pydantic import ValidationError

from batchinfer.contract import BatchInference
from batchinfer.errors import JobNotFoundError, ServiceUnavailableError
from batchinfer.jobview import JobParameters, RunSnapshot, batch_inference, job_layout, read_progress

DEPLOYMENT_NAME = "batchinfer"
FLOW_NAME = "batch-inference"  # the @flow name in flows/batch_job.py


class JobBackend(Protocol):
    async def submit(self, params: JobParameters) -> BatchInference: ...

    async def status(self, job_id: UUID) -> BatchInference: ...


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
        progress=read_progress(job_layout(str(flow_run.id), parameters, jobs_dir)),
    )


class PrefectJobBackend:
    """Jobs as flow runs of the ``batch-inference/batchinfer`` deployment."""

    def __init__(
        self, jobs_dir: Path, flow_name: str = FLOW_NAME, deployment_name: str = DEPLOYMENT_NAME
    ) -> None:
        from prefect.client.orchestration import get_client

        self._jobs_dir = jobs_dir
        self._client = get_client()
        self._deployment = f"{flow_name}/{deployment_name}"
        self._deployment_id: UUID | None = None

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

    async def submit(self, params: JobParameters) -> BatchInference:
        flow_run = await self._client.create_flow_run_from_deployment(
            await self._deployment_uuid(),
            parameters=params.model_dump(mode="json", exclude_none=True),
            tags=[f"model:{params.model}"],
        )
        return batch_inference(snapshot(flow_run, self._jobs_dir))

    async def status(self, job_id: UUID) -> BatchInference:
        from prefect.exceptions import ObjectNotFound

        try:
            flow_run = await self._client.read_flow_run(job_id)
        except ObjectNotFound:
            raise JobNotFoundError(str(job_id)) from None
        try:
            run = await anyio.to_thread.run_sync(snapshot, flow_run, self._jobs_dir)
            return batch_inference(run)
        except ValidationError:  # a flow run of some other flow: not one of our jobs
            raise JobNotFoundError(str(job_id)) from None
