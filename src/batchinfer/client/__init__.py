"""A small typed HTTP client for the batchinfer adapter (``batchinfer serve``), sync and async.

One convention, two layers:

* ``BatchInferClient`` (sync) and ``AsyncBatchInferClient`` (async) are context managers that hold
  one ``httpx`` client, so a program that makes many calls reuses its connections. Their methods
  are ``submit_job``, ``job_status``, ``cancel_job``, ``retry_failed``, ``list_jobs``,
  ``wait_for_job`` and ``job_results`` (the records finished so far; the sync client's
  ``follow_results`` yields them as they come); the async client's are the same names, awaited.
  Async code uses ``AsyncBatchInferClient``: there are no ``*_async`` module functions.
* The module functions of the same names are thin sync conveniences: each builds a client for one
  call and closes it.

Where the server is and who you are come from the arguments, else from the environment when a
client is built (never at import): ``BATCHINFER_URL`` (default ``http://127.0.0.1:8000``, where
``batchinfer serve`` listens) and ``BATCHINFER_API_TOKEN`` (sent as ``Authorization: Bearer``: your key
from ``batchinfer keys create``, or the server's token).

Every refusal (a 4xx or 5xx answer) and every failure to reach the server raises one exception
type, ``BatchInferClientError``, whose message names the field and quotes the server's message.

This module imports neither Prefect nor torch: a client is cheap to import and to run anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchinfer.contract import BatchInference, JobPage, JobStatus, Path
from batchinfer.error_codes import ErrorCode

if TYPE_CHECKING:
    import pandas as pd

from batchinfer.client.calls import (
    DEFAULT_POLL_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    OptionsLike,
    PromptFile,
    ResultsSoFar,
    prompt_path,
)
from batchinfer.client.clients import AsyncBatchInferClient, BatchInferClient
from batchinfer.client.errors import BatchInferClientError, FieldError, JobWaitTimeout

# JobPage (the answer of GET /batch_inference/jobs) is the adapter's own model, re-exported here:
# one definition of the shape for both ends.
__all__ = [
    "DEFAULT_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "AsyncBatchInferClient",
    "BatchInferClient",
    "BatchInferClientError",
    "FieldError",
    "JobPage",
    "JobWaitTimeout",
    "ResultsSoFar",
    "cancel_job",
    "job_status",
    "list_jobs",
    "prompt_path",
    "read_results",
    "submit_dataframe",
    "submit_job",
    "wait_for_job",
]


# ---- module functions: one call, one short-lived sync client ------------------------------------


def submit_job(
    model: str,
    prompt_file: PromptFile,
    *,
    options: OptionsLike | None = None,
    num_generations: int = 1,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Submit a job (see ``BatchInferClient.submit_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.submit_job(
            model,
            prompt_file,
            options=options,
            num_generations=num_generations,
            prompt_template=prompt_template,
            system_prompt=system_prompt,
        )


def job_status(
    job_id: str, *, base_url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> BatchInference:
    """The job as it is now (see ``BatchInferClient.job_status``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.job_status(job_id)


def cancel_job(
    job_id: str, *, base_url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> BatchInference:
    """Cancel the job (see ``BatchInferClient.cancel_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.cancel_job(job_id)


def list_jobs(
    *,
    status: JobStatus | str | None = None,
    model: str | None = None,
    limit: int = 20,
    offset: int = 0,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> JobPage:
    """One page of jobs (see ``BatchInferClient.list_jobs``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.list_jobs(status=status, model=model, limit=limit, offset=offset)


def wait_for_job(
    job_id: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = DEFAULT_POLL_S,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Poll until the job is ``completed`` or ``failed`` (see ``BatchInferClient.wait_for_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.wait_for_job(job_id, timeout_s=timeout_s, poll_s=poll_s)


# ---- tables -------------------------------------------------------------------------------------


def read_results(
    job_or_id: BatchInference | str,
    *,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """A finished job's ``results.parquet`` as a DataFrame: one row per input row, in input order
    (``line``, ``status``, ``text``, ..., then the input table's carried columns). The file is on
    the server's disk (``metadata.results_file_path``): this reads it where that path is readable,
    the same machine as ``serve`` or a shared ``BATCHINFER_HOME``. A job id is looked up first."""
    import pandas as pd

    job = job_or_id
    if isinstance(job, str):
        job = job_status(job, base_url=base_url, token=token, timeout=timeout)
    results = job.metadata.get("results_file_path")
    if not results:
        raise BatchInferClientError(
            f"Job {job.job_id} is {job.status.value} and has no results table yet; wait for it to "
            "end (wait_for_job), then read its results.",
            code=ErrorCode.no_results,
        )
    return pd.read_parquet(Path.model_validate(results).value)


def submit_dataframe(
    model: str,
    frame: pd.DataFrame,
    *,
    options: OptionsLike | None = None,
    num_generations: int = 1,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Submit a DataFrame as a table prompt file, sent as Parquet ``raw_bytes`` (so within the
    server's ``BATCHINFER_MAX_PROMPT_FILE_BYTES``): a ``prompt`` or ``messages`` column, or a
    ``prompt_template`` over its columns; every other column comes back in ``read_results``."""
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return submit_job(
        model,
        buffer.getvalue(),
        options=options,
        num_generations=num_generations,
        prompt_template=prompt_template,
        system_prompt=system_prompt,
        base_url=base_url,
        token=token,
        timeout=timeout,
    )
