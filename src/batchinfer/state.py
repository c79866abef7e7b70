"""Mapping a Prefect flow run's state onto the contract's four job statuses.

Pure: takes the state type's *value* and the state's name, so it is tested without Prefect running.
The flow names its own RUNNING phases (``PHASE_*``); see ``flows/batch_job.py``.
"""

from __future__ import annotations

from batchinfer.contract import JobStatus

PHASE_VALIDATING = "Validating"
PHASE_INFERRING = "Inferring"
PHASE_GATHERING = "Gathering"

# RUNNING under the engine's default name comes before the flow names its first phase.
_VALIDATING_RUN_NAMES = frozenset({PHASE_VALIDATING, "Running"})

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
