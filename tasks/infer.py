"""The ``infer-chunk-NNNN`` task: one chunk through the model into its own result file."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import ModelConfig, get_engine
from batchinfer.pipeline.chunk_run import ChunkCounts
from batchinfer.runtime.cancellation import stop_signal
from batchinfer.runtime.scaleout import run_chunk_at


@task(
    name="infer-chunk",
    task_run_name="infer-chunk-{index:04d}",
    cache_policy=NO_CACHE,
    # A chunk fails only when its engine breaks (a failed request is a record, not an exception);
    # its result file is written whole or not at all, so a retry is safe.
    retries=2,
    retry_delay_seconds=2,
)
def infer_chunk(
    index: int,
    input_path: str,
    result_path: str,
    model: ModelConfig,
    context: EngineContext,
    job_id: str | None = None,
    max_in_flight: int | None = None,
) -> ChunkCounts:
    """``max_in_flight``: the chunk's part of the share of the model's cross-job limit that its job
    holds (``batchinfer.runtime.model_limits``); None: no shared limit.
    ``input_path``/``result_path``: local paths, or URLs on shared storage when the chunk runs on a
    Dask worker (``batchinfer.runtime.scaleout``)."""
    engine = get_engine(model, context)
    stop = stop_signal(job_id) if job_id else None
    return run_chunk_at(index, input_path, result_path, engine, stop, max_in_flight)
