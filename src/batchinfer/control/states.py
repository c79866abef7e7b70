"""Mapping a Prefect flow run's state onto the contract's four job statuses.

Pure: takes the state type's *value* and the state's name, so it is tested without Prefect running.
The flow names its own RUNNING phases (``PHASE_*``); see ``flows/batch_job.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from batchinfer.contract import JobStatus

PHASE_VALIDATING = "Validating"
PHASE_INFERRING = "Inferring"
PHASE_GATHERING = "Gathering"

# RUNNING under the engine's default name comes before the flow names its first phase.
_VALIDATING_RUN_NAMES = frozenset({PHASE_VALIDATING, "Running"})
# Every other RUNNING name a job's run can carry (Retrying: Prefect's, for a retried run).
_RUNNING_RUN_NAMES = frozenset({PHASE_INFERRING, PHASE_GATHERING, "Retrying"})

_BY_TYPE = {
    "SCHEDULED": JobStatus.validating,  # includes Late and AwaitingRetry: the job has not started
    "PENDING": JobStatus.validating,
    "PAUSED": JobStatus.running,  # paused mid-job; it resumes where it was
    "CANCELLING": JobStatus.running,  # still stopping; it ends failed (cancelled)
    "COMPLETED": JobStatus.completed,
    "FAILED": JobStatus.failed,
    "CRASHED": JobStatus.failed,
    "CANCELLED": JobStatus.failed,
}


def job_status(state_type: str, state_name: str | None) -> JobStatus:
    """The job status for a flow run in state ``state_type`` (e.g. ``"RUNNING"``) named ``state_name``.

    An unknown state type raises ``ValueError`` so that a new Prefect state cannot slip through
    unmapped (a test walks every ``StateType``).
    """
    if state_type == "RUNNING":
        return JobStatus.validating if state_name in _VALIDATING_RUN_NAMES else JobStatus.running
    try:
        return _BY_TYPE[state_type]
    except KeyError:
        raise ValueError(f"Unmapped Prefect state type {state_type!r}") from None


@dataclass(frozen=True)
class StateQuery:
    """Flow runs in one job status: state type in ``types`` OR state name in ``names`` (the names
    only occur on RUNNING states, which is how RUNNING splits between validating and running)."""

    types: frozenset[str]
    names: frozenset[str] = frozenset()


def status_query(status: JobStatus) -> StateQuery:
    """The Prefect state filter that selects exactly the runs ``job_status`` maps to ``status``."""
    types = frozenset(t for t, s in _BY_TYPE.items() if s is status)
    if status is JobStatus.validating:
        return StateQuery(types, _VALIDATING_RUN_NAMES)
    if status is JobStatus.running:
        return StateQuery(types, _RUNNING_RUN_NAMES)
    return StateQuery(types)


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
