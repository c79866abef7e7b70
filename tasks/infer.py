"""The ``infer-chunk-NNNN`` task: one chunk through the model into its own result file."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from batchinfer.cancellation import stop_signal
from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import ModelConfig, get_engine
from batchinfer.inference import ChunkCounts
from batchinfer.model_limits import SlotsBusy, holding_slots
from batchinfer.scaleout import run_chunk_at

# How long one wait for the model's slots lasts before the chunk looks at its job's cancel signal.
SLOT_WAIT_S = 2.0


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
    slots: int | None = None,
) -> ChunkCounts:
    """``slots``: the chunk's share of the model's cross-job limit (None: no shared limit).
    ``input_path``/``result_path``: local paths, or URLs on shared storage when the chunk runs on a
    Dask worker (``batchinfer.scaleout``)."""
    engine = get_engine(model, context)
    stop = stop_signal(job_id) if job_id else None
    if slots is None:
        return run_chunk_at(index, input_path, result_path, engine, stop)
    while True:
        if stop is not None and stop.is_set():  # cancelled while waiting: no slots needed
            return run_chunk_at(index, input_path, result_path, engine, stop)
        try:
            with holding_slots(model.id, slots, timeout_s=SLOT_WAIT_S):
                return run_chunk_at(index, input_path, result_path, engine, stop, slots)
        except SlotsBusy:
            continue
