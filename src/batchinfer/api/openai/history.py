"""A flow run's state history, for the timestamps of OpenAI's Batch object.

Read from Prefect (``read_flow_run_states``) rather than recorded when seen, so that a timestamp is
when the run got there, not when someone happened to ask. Injectable: tests pass their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from batchinfer.api.openai.status import StateEvent

logger = logging.getLogger(__name__)
HistoryReader = Callable[[list[UUID]], Awaitable[dict[UUID, list[StateEvent]]]]


async def prefect_history(job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
    """The states of each run, with one Prefect client for them all. A failure costs only the
    timestamps (logged), never the answer."""
    from prefect.client.orchestration import get_client

    histories: dict[UUID, list[StateEvent]] = {}
    try:
        async with get_client() as client:
            for job_id in job_ids:
                states = await client.read_flow_run_states(job_id)
                histories[job_id] = [StateEvent(s.type.value, s.name, s.timestamp) for s in states]
    except Exception:
        logger.warning("Could not read the state history of %s", job_ids, exc_info=True)
    return histories


async def no_history(job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
    return {}
