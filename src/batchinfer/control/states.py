"""One table of Prefect flow-run states, from which a job's seed status and its OpenAI batch status
are both derived, so that ``job_status`` and ``batches.retrieve`` can never disagree.

Pure: takes the state type's *value* and the state's name, so it is tested without Prefect running.
The flow names its own RUNNING phases (``jobspec.PHASE_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Literal

from batchinfer.contract import JobStatus
from batchinfer.error_codes import ErrorCode
from batchinfer.jobspec import PHASE_GATHERING, PHASE_INFERRING, PHASE_VALIDATING


@dataclass(frozen=True)
class StateEvent:
    """One state of a flow run's history (a batch's timestamps come from them)."""

    type: str
    name: str | None
    timestamp: datetime


class BatchStatus(str, Enum):
    """An OpenAI batch's status."""

    validating = "validating"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    failed = "failed"
    expired = ErrorCode.expired
    cancelling = "cancelling"
    cancelled = ErrorCode.cancelled


# (state type, RUNNING phase name or None for any) -> the batch status of a run in it.
STATES: dict[tuple[str, str | None], BatchStatus] = {
    ("SCHEDULED", None): BatchStatus.validating,  # Late and AwaitingRetry too: not started
    ("PENDING", None): BatchStatus.validating,
    ("RUNNING", PHASE_VALIDATING): BatchStatus.validating,
    ("RUNNING", "Running"): BatchStatus.validating,  # the engine's name, before the flow names a phase
    ("RUNNING", PHASE_INFERRING): BatchStatus.in_progress,
    ("RUNNING", "Retrying"): BatchStatus.in_progress,  # Prefect's, for a retried run
    ("RUNNING", PHASE_GATHERING): BatchStatus.finalizing,
    ("RUNNING", None): BatchStatus.in_progress,  # any other name
    ("PAUSED", None): BatchStatus.in_progress,  # paused mid-job; it resumes where it was
    ("CANCELLING", None): BatchStatus.cancelling,  # still stopping; it ends cancelled
    ("COMPLETED", None): BatchStatus.completed,
    ("FAILED", None): BatchStatus.failed,
    ("CRASHED", None): BatchStatus.failed,
    ("CANCELLED", None): BatchStatus.cancelled,
}
# Which seed status each batch status is.
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
# Error codes a job ends with when its deadline (the batch's completion window) passed.
EXPIRED_CODES = frozenset({ErrorCode.expired, ErrorCode.deadline_exceeded, ErrorCode.batch_expired})
CANCELLED_CODE = ErrorCode.cancelled


def run_status(state_type: str, state_name: str | None) -> BatchStatus:
    """The table's status for a flow run in ``state_type`` (e.g. ``"RUNNING"``) named ``state_name``.
    An unknown state type raises ``ValueError``, so a new Prefect state cannot slip through
    unmapped (a test walks every ``StateType``)."""
    status = STATES.get((state_type, state_name)) or STATES.get((state_type, None))
    if status is None:
        raise ValueError(f"Unmapped Prefect state type {state_type!r}")
    return status


def job_status(state_type: str, state_name: str | None) -> JobStatus:
    """The seed's status of a flow run."""
    return SEED_STATUS[run_status(state_type, state_name)]


def batch_status(
    state_type: str, state_name: str | None, error_code: str | None, expiring: bool = False
) -> BatchStatus:
    """The batch status of a flow run whose job reports ``error_code``. ``expiring``: the adapter
    stopped the job because its completion window passed, so the stop it asked for reads expired,
    not cancelled (and finalizing while it happens)."""
    status = run_status(state_type, state_name)
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
class StateQuery:
    """Flow runs in one job status: state type in ``types`` OR RUNNING with a name in ``names``."""

    types: frozenset[str]
    names: frozenset[str] = frozenset()


def status_query(status: JobStatus) -> StateQuery:
    """The Prefect state filter that selects the runs ``job_status`` maps to ``status``, from the
    table: whole state types, and for RUNNING the phase names that are ``status``."""
    types = frozenset(
        t for (t, name), s in STATES.items() if name is None and t != "RUNNING" and SEED_STATUS[s] is status
    )
    names = frozenset(
        name for (t, name), s in STATES.items() if t == "RUNNING" and name and SEED_STATUS[s] is status
    )
    return StateQuery(types, names)


CancelAction = Literal["cancel_now", "request_cancel", "already_ended"]
_ENDED_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_NOT_STARTED_TYPES = frozenset({"SCHEDULED", "PENDING", "PAUSED"})


def cancel_action(state_type: str) -> CancelAction:
    """What a cancel does to a run in ``state_type``: a run no process has (yet) is CANCELLED at
    once; a running one is asked (CANCELLING) and stops itself, keeping its results."""
    if state_type in _ENDED_TYPES:
        return "already_ended"
    if state_type in _NOT_STARTED_TYPES:
        return "cancel_now"
    return "request_cancel"
