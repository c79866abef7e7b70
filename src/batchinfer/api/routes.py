"""The seed's routes and our extensions, at module level: each handler is one call into the job
backend; refusals are ``BatchInferError``s, mapped to HTTP in one place (``app.py``)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query

from batchinfer.api.deps import BackendDep, CatalogDep, JobIdDep, SettingsDep
from batchinfer.api.submission import prepare_job
from batchinfer.contract import BatchInference, JobPage, JobStatus, SubmitJobRequest

router = APIRouter()
# A Path that is not there yet is left out, not null: the seed's Path is an object, never null.
_JOB = {"response_model": BatchInference, "response_model_exclude_none": True}


@router.post(
    "/batch_inference/submit_job",
    **_JOB,
    summary="Submit a batch inference job",
    description="This endpoint allows clients to submit a batch inference job using a model "
    "and a prompt file.",
)
async def submit_job(
    body: SubmitJobRequest, jobs: BackendDep, settings: SettingsDep, catalog: CatalogDep
) -> BatchInference:
    # Staging raw_bytes and checking files touches the disk: keep it off the event loop.
    params = await anyio.to_thread.run_sync(prepare_job, body, settings, catalog)
    return await jobs.submit(params)


@router.get(
    "/batch_inference/job_status",
    **_JOB,
    summary="Get status for an already submitted job",
    description="Retrieve the status and details of a previously submitted batch inference job "
    "using its unique job ID.",
)
async def job_status(jobs: BackendDep, job_id: JobIdDep) -> BatchInference:
    return await jobs.status(job_id)


@router.post(
    "/batch_inference/resume_job",
    **_JOB,
    summary="Resume a failed, crashed or cancelled job (extension)",
    description="Runs the job again under the same job ID, as the Prefect UI's Retry does. "
    "Chunks that finished before are reused, not sent to the model again. 404 for an unknown "
    "job; 409 for a job that completed or is still running.",
)
async def resume_job(jobs: BackendDep, job_id: JobIdDep) -> BatchInference:
    return await jobs.resume(job_id)


@router.post(
    "/batch_inference/cancel_job",
    **_JOB,
    summary="Cancel a job (extension)",
    description="A job that has not started is cancelled at once. A running job stops within "
    "seconds: requests in flight are abandoned, every line already answered is kept, and the "
    "output files are written (the lines cut short go to the error file as `cancelled`). "
    "The job then reads `failed` with `metadata.error.code` `cancelled`; resume_job runs the "
    "cancelled lines. 404 for an unknown job; 409 for a job that has already ended.",
)
async def cancel_job(jobs: BackendDep, job_id: JobIdDep) -> BatchInference:
    return await jobs.cancel(job_id)


@router.get(
    "/batch_inference/jobs",
    response_model=JobPage,
    response_model_exclude_none=True,
    summary="List jobs, newest first (extension)",
    description="Paged with `limit` and `offset`; filtered by `status` and `model`.",
)
async def list_jobs(
    jobs: BackendDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    model: Annotated[str | None, Query(description="Only jobs of this model id.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 20,
    offset: Annotated[int, Query(ge=0, description="Jobs to skip (for the next page).")] = 0,
) -> JobPage:
    return await jobs.list_jobs(status, model, limit, offset)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/models", summary="List the model ids a job may name (extension)")
async def models(catalog: CatalogDep) -> dict[str, list[dict[str, str]]]:
    return {"models": [{"id": m.id, "engine": m.engine} for m in catalog.models]}
