"""job_status: every Prefect state type maps onto one of the contract's four job statuses."""

from __future__ import annotations

import pytest
from prefect.client.schemas.objects import StateType

from batchinfer.contract import JobStatus
from batchinfer.control.states import cancel_action, job_status, status_query
from batchinfer.jobspec import PHASE_GATHERING, PHASE_INFERRING, PHASE_VALIDATING

# Every member of Prefect's StateType must be listed here: a new one fails
# test_every_prefect_state_type_is_mapped until someone decides what it means for a job.
EXPECTED = {
    "SCHEDULED": JobStatus.validating,
    "PENDING": JobStatus.validating,
    "RUNNING": JobStatus.running,  # under a phase name other than Validating/Running
    "PAUSED": JobStatus.running,
    "CANCELLING": JobStatus.running,
    "COMPLETED": JobStatus.completed,
    "FAILED": JobStatus.failed,
    "CRASHED": JobStatus.failed,
    "CANCELLED": JobStatus.failed,
}


@pytest.mark.parametrize("state_type", list(StateType), ids=lambda s: s.value)
def test_every_prefect_state_type_is_mapped(state_type: StateType) -> None:
    assert state_type.value in EXPECTED, f"decide the job status for Prefect's new {state_type}"
    name = PHASE_INFERRING if state_type is StateType.RUNNING else None
    assert job_status(state_type.value, name) is EXPECTED[state_type.value]


@pytest.mark.parametrize("state_type", list(StateType), ids=lambda s: s.value)
def test_every_state_type_maps_whatever_the_state_name(state_type: StateType) -> None:
    for name in (None, "", "Late", "AwaitingRetry", "Something new"):
        assert isinstance(job_status(state_type.value, name), JobStatus)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        (PHASE_VALIDATING, JobStatus.validating),
        ("Running", JobStatus.validating),  # Prefect's default name, before the flow names a phase
        (PHASE_INFERRING, JobStatus.running),
        (PHASE_GATHERING, JobStatus.running),
        (None, JobStatus.running),
    ],
)
def test_running_names_tell_validating_from_running(name: str | None, status: JobStatus) -> None:
    assert job_status(StateType.RUNNING.value, name) is status


def test_the_phase_names_are_the_documented_ones() -> None:
    assert (PHASE_VALIDATING, PHASE_INFERRING, PHASE_GATHERING) == ("Validating", "Inferring", "Gathering")


@pytest.mark.parametrize("state_type", ["BOGUS", "running", ""])
def test_an_unknown_state_type_raises_value_error(state_type: str) -> None:
    with pytest.raises(ValueError, match="Unmapped"):
        job_status(state_type, None)


_RUN_STATES = [
    ("SCHEDULED", "Scheduled"),
    ("SCHEDULED", "AwaitingRetry"),
    ("PENDING", "Pending"),
    ("RUNNING", "Running"),
    ("RUNNING", "Validating"),
    ("RUNNING", "Inferring"),
    ("RUNNING", "Gathering"),
    ("RUNNING", "Retrying"),
    ("PAUSED", "Paused"),
    ("CANCELLING", "Cancelling"),
    ("COMPLETED", "Completed"),
    ("FAILED", "Failed"),
    ("CRASHED", "Crashed"),
    ("CANCELLED", "Cancelled"),
]


@pytest.mark.parametrize("status", list(JobStatus))
def test_the_list_filter_of_a_status_selects_exactly_the_runs_that_read_as_that_status(
    status: JobStatus,
) -> None:
    query = status_query(status)
    for state_type, name in _RUN_STATES:
        selected = state_type in query.types or name in query.names
        assert selected == (job_status(state_type, name) is status), (state_type, name)


@pytest.mark.parametrize(
    ("state_type", "action"),
    [
        ("SCHEDULED", "cancel_now"),
        ("PENDING", "cancel_now"),
        ("PAUSED", "cancel_now"),
        ("RUNNING", "request_cancel"),
        ("CANCELLING", "request_cancel"),
        ("COMPLETED", "already_ended"),
        ("FAILED", "already_ended"),
        ("CRASHED", "already_ended"),
        ("CANCELLED", "already_ended"),
    ],
)
def test_a_cancel_ends_a_waiting_job_at_once_asks_a_running_one_and_refuses_an_ended_one(
    state_type: str, action: str
) -> None:
    assert cancel_action(state_type) == action
