"""A model's ``max_concurrency`` across every job and process, as a Prefect global concurrency limit.

One process keeps its own requests under ``max_concurrency`` per replica with its replica set (the
engine's). Two jobs, or two workers, each have their own. So each model with a ``max_concurrency``
also gets a global concurrency limit named ``batchinfer-model-<id>`` with that many slots for each
of its replicas (``base_urls``). A job, before its
first chunk, takes a share of them (``holding_share``: a lease, renewed while it runs and freed if
its process dies) and holds it until its last chunk is done: as many chunks' worth
(``chunk_slots`` each) as are free, up to its chunk window; it then runs that many chunks at once,
each sending at most ``chunk_slots`` requests at a time. The sum over all jobs, in any process,
stays within the model's limit, at the cost of a few API calls per job.

Why per job and not per chunk: a chunk-by-chunk lease costs a Prefect API round trip or two per
chunk, and a slot released by one chunk is not at once free for the next (measured: a 2,000-line
job took 22 s instead of 8.5 s).

The limit is upserted from the models file when a job starts: the file is the source of truth. An
operator can watch it in the Prefect UI under Concurrency; deactivating it there lifts it, as
Prefect's inactive limits do.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from batchinfer.engines.base import StopFlag
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.registry import AnyModelConfig

# How often a job waiting for its model's slots looks again (and looks for a cancel).
SHARE_POLL_S = 0.5
# A job's lease on its slots: renewed every third of it while the job runs; if the process dies,
# the slots come back when it runs out (or at once, when the job is resumed).
LEASE_S = 60.0
logger = logging.getLogger(__name__)

LIMIT_PREFIX = "batchinfer-model-"


def limit_name(model_id: str) -> str:
    """The global concurrency limit of model ``model_id`` (Prefect names: no '/' or '%')."""
    return LIMIT_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", model_id)


def shared_limit(config: AnyModelConfig) -> int | None:
    """The model's cross-job concurrency: ``max_concurrency`` for each of its replicas; None for
    engines that run in-process (no server to protect: each process has its own model)."""
    return config.total_concurrency if isinstance(config, OpenAIEngineConfig) else None


def chunk_slots(max_concurrency: int, window: int) -> int:
    """Slots (in-flight requests) one chunk holds: an even share of the model's limit among the
    ``window`` chunks a job runs at once, so one job alone still uses the whole limit."""
    return max(1, math.ceil(max_concurrency / max(1, window)))


def ensure_limit(model_id: str, max_concurrency: int) -> None:
    """Create the model's limit, or set its size to ``max_concurrency``; idempotent."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    name = limit_name(model_id)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, max_concurrency)
        except (ObjectAlreadyExists, httpx.HTTPStatusError) as exc:
            # Another job created it between our read and our create (Prefect's client raises
            # ObjectAlreadyExists for the 409): now it is there to update.
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code != 409:
                raise
            client.upsert_global_concurrency_limit_by_name(name, max_concurrency)


def share_chunks(free_slots: int, slots_per_chunk: int, window: int) -> int:
    """How many chunks' worth of the free slots a job takes: all it can use, up to its window."""
    return max(0, min(window, free_slots // max(1, slots_per_chunk)))


@contextmanager
def holding_share(
    model_id: str,
    slots_per_chunk: int,
    window: int,
    stop: StopFlag,
    lease_file: Path,
    poll_s: float = SHARE_POLL_S,
) -> Iterator[int]:
    """Hold as large a share of the model's limit as is free, ``window`` chunks' worth at most and
    one chunk's at least, waiting for one if need be; yields how many chunks it covers (0 if the
    job was stopped while it waited). The lease id is kept in ``lease_file`` while held, so that a
    resumed job gives back what its killed predecessor held instead of waiting for it to expire."""
    from prefect.client.orchestration import get_client

    name = limit_name(model_id)
    with get_client(sync_client=True) as client:
        _release_stale_lease(client, lease_file)
        lease_id = None
        while lease_id is None and not stop.is_set():
            limit = client.read_global_concurrency_limit_by_name(name)
            if not limit.active:  # deactivated in the UI: Prefect's meaning is "no limit"
                yield window
                return
            chunks = share_chunks(limit.limit - limit.active_slots, slots_per_chunk, window)
            if chunks:
                lease_id = _try_lease(client, name, chunks * slots_per_chunk)
            if lease_id is None:
                time.sleep(poll_s)
        if lease_id is None:
            yield 0
            return
        lease_file.parent.mkdir(parents=True, exist_ok=True)
        lease_file.write_text(str(lease_id), encoding="utf-8")
        renewing = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lease_id, renewing), daemon=True)
        renewer.start()
        try:
            yield chunks
        finally:
            renewing.set()
            renewer.join(timeout=5)
            client.release_concurrency_slots_with_lease(lease_id)
            lease_file.unlink(missing_ok=True)


def _try_lease(client: Any, name: str, slots: int) -> UUID | None:
    """A lease on ``slots`` of limit ``name``, or None when another job took them first (423)."""
    import httpx

    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=LEASE_S
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            return None
        raise
    return UUID(response.json()["lease_id"])


def _renew(lease_id: UUID, done: threading.Event) -> None:
    """Keep the lease alive while the job holds it; its own client, since this is another thread."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not done.wait(LEASE_S / 3):
            try:
                client.renew_concurrency_lease(lease_id, lease_duration=LEASE_S)
            except Exception:  # one missed renewal is harmless; the next one is a third of a lease away
                logger.warning("Could not renew concurrency lease %s", lease_id, exc_info=True)


def _release_stale_lease(client: Any, lease_file: Path) -> None:
    try:
        stale = UUID(lease_file.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        client.release_concurrency_slots_with_lease(stale)
    except Exception:  # already expired or released: nothing to give back
        logger.debug("Stale lease %s was already gone", stale, exc_info=True)
    lease_file.unlink(missing_ok=True)


async def reset_model_limits() -> list[str]:
    """Zero the held slots of every model limit; the names of those that had some.

    Only when no job can be running: ``serve`` does, when it owns the Prefect server, before its
    runner starts. Prefect keeps leases in memory by default, so after a server restart the slots
    of jobs that were running stay counted with no lease left to expire, and would block the
    model for good."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    reset = []
    async with get_client() as client:
        for limit in await client.read_global_concurrency_limits(limit=200):
            if limit.name.startswith(LIMIT_PREFIX) and limit.active_slots:
                await client.update_global_concurrency_limit(
                    limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
                reset.append(limit.name)
    return reset
