"""A batch's status and timestamps, from its flow run's state and state history. Pure.

Prefect states: the flow names its RUNNING phases Validating, Inferring and Gathering
(``batchinfer.control.states``); a cancelled job ends CANCELLED, or FAILED with error code ``cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from batchinfer.contract import JobStatus
from batchinfer.control.states import PHASE_GATHERING, PHASE_INFERRING, PHASE_VALIDATING


class BatchStatus(str, Enum):
    validating = "validating"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    failed = "failed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"


ENDED = frozenset({BatchStatus.completed, BatchStatus.failed, BatchStatus.expired, BatchStatus.cancelled})
# Error codes a job ends with when its deadline (the batch's completion window) passed: the flow's
# own (``deadline_exceeded``), and the one a per-job deadline is to report (``expired``).
EXPIRED_CODES = frozenset({"expired", "deadline_exceeded", "batch_expired"})
CANCELLED_CODE = "cancelled"

_RUNNING = {
    PHASE_VALIDATING: BatchStatus.validating,
    "Running": BatchStatus.validating,  # the engine's name, before the flow names its first phase
    PHASE_INFERRING: BatchStatus.in_progress,
    "Retrying": BatchStatus.in_progress,
    PHASE_GATHERING: BatchStatus.finalizing,
}
_BY_TYPE = {
    "SCHEDULED": BatchStatus.validating,
    "PENDING": BatchStatus.validating,
    "PAUSED": BatchStatus.in_progress,
    "COMPLETED": BatchStatus.completed,
    "CANCELLING": BatchStatus.cancelling,
    "CANCELLED": BatchStatus.cancelled,
    "FAILED": BatchStatus.failed,
    "CRASHED": BatchStatus.failed,
}

# Which seed status each batch status is: job_status and batches.retrieve must agree on this.
SEED_STATUS = {
    BatchStatus.validating: JobStatus.validating,
    BatchStatus.in_progress: JobStatus.running,
    BatchStatus.finalizing: JobStatus.running,
    BatchStatus.cancelling: JobStatus.running,
    BatchStatus.completed: JobStatus.completed,
    BatchStatus.failed: JobStatus.failed,
    BatchStatus.cancelled: JobStatus.failed,
    BatchStatus.expired: JobStatus.failed,
}


def batch_status(
    state_type: str, state_name: str | None, error_code: str | None, expiring: bool = False
) -> BatchStatus:
    """The batch status of a flow run in ``state_type`` named ``state_name``, whose job reports
    ``error_code``. ``expiring``: the adapter stopped the job because its completion window passed,
    so the stop it asked for reads expired, not cancelled (and finalizing while it happens)."""
    if state_type == "RUNNING":
        return _RUNNING.get(state_name or "", BatchStatus.in_progress)
    try:
        status = _BY_TYPE[state_type]
    except KeyError:
        raise ValueError(f"Unmapped Prefect state type {state_type!r}") from None
    if status is BatchStatus.failed and error_code == CANCELLED_CODE:
        status = BatchStatus.cancelled
    if status in (BatchStatus.failed, BatchStatus.cancelled) and error_code in EXPIRED_CODES:
        return BatchStatus.expired  # however the flow ends a job whose deadline passed
    if expiring and status is BatchStatus.cancelled:
        return BatchStatus.expired
    if expiring and status is BatchStatus.cancelling:
        return BatchStatus.finalizing
    return status


@dataclass(frozen=True)
class StateEvent:
    """One state of a flow run's history."""

    type: str
    name: str | None
    timestamp: datetime


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
