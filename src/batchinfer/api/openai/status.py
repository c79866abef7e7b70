"""A batch's timestamps, from its flow run's state history. Pure. Its status comes from the one
table of Prefect states in ``control.states``."""

from __future__ import annotations

from datetime import datetime

from batchinfer.control.states import BatchStatus, StateEvent
from batchinfer.jobspec import PHASE_GATHERING, PHASE_INFERRING


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def timestamps(history: list[StateEvent], status: BatchStatus) -> dict[str, int | None]:
    """OpenAI's ``*_at`` fields from the run's states. Phases take their first occurrence (when the
    batch got there); ends take the last (a resumed job ends again)."""
    events = sorted(history, key=lambda e: e.timestamp)

    def first(*kinds: tuple[str, str | None]) -> datetime | None:
        return next((e.timestamp for e in events if _matches(e, kinds)), None)

    def last(*kinds: tuple[str, str | None]) -> datetime | None:
        return next((e.timestamp for e in reversed(events) if _matches(e, kinds)), None)

    end = last(("COMPLETED", None), ("FAILED", None), ("CRASHED", None), ("CANCELLED", None))
    return {
        "in_progress_at": _unix(first(("RUNNING", PHASE_INFERRING))),
        "finalizing_at": _unix(first(("RUNNING", PHASE_GATHERING))),
        "completed_at": _unix(last(("COMPLETED", None))) if status is BatchStatus.completed else None,
        "failed_at": _unix(end) if status is BatchStatus.failed else None,
        "cancelling_at": _unix(first(("CANCELLING", None))),
        "cancelled_at": _unix(end) if status is BatchStatus.cancelled else None,
        "expired_at": _unix(end) if status is BatchStatus.expired else None,
    }


def _matches(event: StateEvent, kinds: tuple[tuple[str, str | None], ...]) -> bool:
    return any(event.type == t and (n is None or event.name == n) for t, n in kinds)
