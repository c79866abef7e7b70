"""The ``infer-chunk-NNNN`` task: one chunk through the model into its own result file."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.engines.registry import get_engine
from batchinfer.pipeline.chunk_run import ChunkCounts
from batchinfer.runtime.cancellation import stop_signal
from batchinfer.runtime.executors import ChunkWork
from batchinfer.runtime.scaleout import run_chunk_at


def _task_run_name() -> str:
    from prefect.runtime import task_run

    work = task_run.parameters["work"]
    return f"infer-chunk-{work.index:04d}"


@task(
    name="infer-chunk",
    task_run_name=_task_run_name,
    cache_policy=NO_CACHE,
    # A chunk fails only when its engine breaks (a failed request is a record, not an exception);
    # its result file is written whole or not at all, so a retry is safe.
    retries=2,
    retry_delay_seconds=2,
)
def infer_chunk(work: ChunkWork) -> ChunkCounts:
    engine = get_engine(work.model, work.context)  # the process's own: loaded once, shared by chunks
    stop = stop_signal(work.job_id) if work.job_id else None
    return run_chunk_at(work, engine, stop)
