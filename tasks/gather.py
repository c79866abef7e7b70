"""The ``gather`` task: chunk results and line errors into the success and error files."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.pipeline.gather import GatherCounts, gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.records import ErrorDetail


@task(name="gather", task_run_name="gather", cache_policy=NO_CACHE)
def gather(
    job_dir: str,
    result_paths: list[str],
    expected_lines: int,
    file_error: ErrorDetail | None = None,
) -> GatherCounts:
    return gather_outputs(
        JobLayout(Path(job_dir)), [Path(p) for p in result_paths], expected_lines, file_error
    )
