"""A model's ``max_concurrency`` across every job and process, as a Prefect global concurrency limit.

One process keeps its own requests under ``max_concurrency`` with a semaphore (the engine's). Two
jobs, or two workers, each have their own. So each model with a ``max_concurrency`` also gets a
global concurrency limit named ``batchinfer-model-<id>`` with that many slots, and a chunk task
holds ``chunk_slots`` of them (a lease, renewed while it runs and freed if its process dies) for as
long as it runs, sending at most that many requests at once. The sum over all running chunks, in
any process, stays within the model's limit. Two API calls per chunk, not per request.

The limit is upserted from the models file when a job starts: the file is the source of truth. An
operator can watch it, or pause it (deactivate) to hold a model's traffic, in the Prefect UI under
Concurrency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

from batchinfer.engines.configs import OpenAIEngineConfig, TransformersEngineConfig

LIMIT_PREFIX = "batchinfer-model-"


def limit_name(model_id: str) -> str:
    """The global concurrency limit of model ``model_id`` (Prefect names: no '/' or '%')."""
    return LIMIT_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", model_id)


def shared_limit(config: OpenAIEngineConfig | TransformersEngineConfig) -> int | None:
    """The model's cross-job concurrency, or None for engines that run in-process (no server to
    protect: each process has its own model)."""
    return config.max_concurrency if isinstance(config, OpenAIEngineConfig) else None


def chunk_slots(max_concurrency: int, window: int) -> int:
    """Slots (in-flight requests) one chunk holds: an even share of the model's limit among the
    ``window`` chunks a job runs at once, so one job alone still uses the whole limit."""
    return max(1, math.ceil(max_concurrency / max(1, window)))


def ensure_limit(model_id: str, max_concurrency: int) -> None:
    """Create the model's limit, or set its size to ``max_concurrency``; idempotent."""
    import httpx
    from prefect.client.orchestration import get_client

    name = limit_name(model_id)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, max_concurrency)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            # Another job created it between our read and our create: now it is there to update.
            client.upsert_global_concurrency_limit_by_name(name, max_concurrency)


class SlotsBusy(Exception):
    """The model's slots did not come free within the wait."""


@contextmanager
def holding_slots(model_id: str, slots: int, timeout_s: float | None = None) -> Iterator[None]:
    """Hold ``slots`` of the model's limit while inside; waits for them first, at most
    ``timeout_s`` (then ``SlotsBusy``, told apart from a TimeoutError raised inside)."""
    from prefect.concurrency.sync import concurrency

    entered = False
    try:
        # strict: if the limit vanished (deleted by hand), fail the chunk loudly, never run unlimited.
        with concurrency(limit_name(model_id), occupy=slots, timeout_seconds=timeout_s, strict=True):
            entered = True
            yield
    except TimeoutError as exc:
        if entered:
            raise
        raise SlotsBusy(f"{slots} slots of {limit_name(model_id)} not free in {timeout_s} s") from exc
