"""The ``infer-chunk-NNNN`` task: one chunk through the model into its own result file."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import ModelConfig, get_engine
from batchinfer.inference import ChunkCounts, run_chunk


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
    index: int, input_path: str, result_path: str, model: ModelConfig, context: EngineContext
) -> ChunkCounts:
    engine = get_engine(model, context)
    return run_chunk(index, Path(input_path), Path(result_path), engine)
