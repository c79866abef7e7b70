"""The batch job as a Prefect flow: validate -> infer-chunk x N (parallel) -> gather.

The flow run id is the job id. The run itself is ``runtime.job_run.JobRun``: its phases name the
run's RUNNING states (Validating, Inferring, Gathering), its lifecycle handles cancel, expiry,
deadline and errors; this module wires the Prefect tasks in and names the run for the UI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner

from batchinfer.contract import Options, Path
from batchinfer.control.names import FLOW_NAME
from batchinfer.endpoints import Endpoint
from batchinfer.jobspec import JobParameters, LineChecks
from batchinfer.runtime.executors import MAX_CHUNK_THREADS
from batchinfer.runtime.job_run import JobRun, JobTasks
from batchinfer.runtime.reporting import job_run_name, tag_with_model
from batchinfer.settings import Settings
from batchinfer.tasks.gather import gather
from batchinfer.tasks.infer import infer_chunk
from batchinfer.tasks.validate import validate

TASKS = JobTasks(validate=validate, infer_chunk=infer_chunk, gather=gather)


@flow(
    name=FLOW_NAME,
    flow_run_name=job_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CHUNK_THREADS),  # type: ignore[arg-type]
    persist_result=False,
    log_prints=True,
)
def batch_job(
    model: str,
    prompt_file: Path,
    *,
    options: Options | None = None,
    num_generations: int = 1,
    output_dir: str | None = None,
    output_url: str | None = None,
    expires_at: datetime | None = None,
    endpoint: Endpoint | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    max_error_rate: float | None = None,
    line_checks: LineChecks = LineChecks.seed,
) -> dict[str, Any] | State[Any]:
    """Run every prompt of ``prompt_file`` through ``model``; write success and error JSONL files.

    ``output_dir``: the job's folder, a path or an fsspec URL; ``output_url``: a store that holds it
    as ``<output_url>/<job id>`` (else ``BATCHINFER_HOME/jobs/<job id>``). ``expires_at``: when it
    passes, the job stops as for a cancel and fails ``expired``, keeping its finished lines (an
    OpenAI batch's ``completion_window``). ``endpoint``: the one endpoint
    every line must name (an OpenAI batch's); None: the first valid line's. ``prompt_template``
    and ``system_prompt``: a table prompt file's prompts, built from each row's columns.
    ``max_error_rate``: past this share of failed requests the job stops, ``error_rate_exceeded``.
    ``line_checks``: ``openai`` checks every line as OpenAI's Batch API does and fails the job on
    any invalid one before a request is sent (a /v1 batch's); ``seed``: each bad line to the error file."""
    params = JobParameters(
        model=model,
        prompt_file=prompt_file,
        options=options or Options(),
        num_generations=num_generations,
        output_dir=output_dir,
        output_url=output_url,
        expires_at=expires_at,
        endpoint=endpoint,
        prompt_template=prompt_template,
        system_prompt=system_prompt,
        max_error_rate=max_error_rate,
        line_checks=line_checks,
    )
    job = JobRun.start(str(flow_run.id), params, TASKS, Settings())
    tag_with_model(job.job_id, model)
    with job.lifecycle():
        job.validate()
        job.infer()
        outcome = job.finish()
    return outcome
