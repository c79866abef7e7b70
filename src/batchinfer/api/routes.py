"""The seed's routes and our extensions, at module level: each handler is one call into the job
backend; refusals are ``BatchInferError``s, mapped to HTTP in one place (``app.py``)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from batchinfer.api.deps import BackendDep, CatalogDep, JobIdDep, SettingsDep, job_uuid
from batchinfer.api.submission import prepare_job
from batchinfer.contract import BatchInference, JobPage, JobStatus, RetryFailedRequest, SubmitJobRequest
from batchinfer.pipeline.live_results import finished_so_far

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


# The job's status when its results were read: a reader that saw a final status has them all.
JOB_STATUS_HEADER = "X-Batchinfer-Job-Status"


@router.get(
    "/batch_inference/job_results",
    response_class=StreamingResponse,
    summary="The records a job has finished so far, in input order (extension)",
    description="NDJSON, one success or error record a line (the shapes of the success and error "
    "files), in input order: every line before the job's first unfinished chunk, then, once the "
    "job has ended, all of them. `after_line` leaves out the lines up to it: a reader follows a "
    f"running job by asking again with the last line it has. The `{JOB_STATUS_HEADER}` header is "
    "the job's status when the records were read: once it is completed or failed, nothing more "
    "will come. 404 for an unknown job.",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def job_results(
    jobs: BackendDep,
    job_id: JobIdDep,
    after_line: Annotated[int, Query(ge=0, description="Only the lines after this one.")] = 0,
) -> StreamingResponse:
    job, place = await jobs.job_files(job_id)
    records = iterate_in_threadpool(finished_so_far(place, after_line))  # file reads: off the loop
    return StreamingResponse(
        records, media_type="application/x-ndjson", headers={JOB_STATUS_HEADER: job.status.value}
    )


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
    "/batch_inference/retry_failed",
    **_JOB,
    summary="Run an ended job again for its failed lines only (extension)",
    description="Body: `job_id`, and `all` (default false). The job runs again under its id for "
    "the lines that failed in a way a retry may fix (timeouts, 408, 429, 5xx, connection errors; "
    "with `all: true`, every failed inference), and only those are sent to the model; its success "
    "and error files are then rewritten with the new outcomes merged in, in input order, each line "
    "once. 404 for an unknown job; 409 for a job still running, one run in the foreground, or one "
    "with no such line.",
)
async def retry_failed(jobs: BackendDep, body: RetryFailedRequest) -> BatchInference:
    return await jobs.retry_failed(job_uuid(body.job_id, location="body"), body.every_error)


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
