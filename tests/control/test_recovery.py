"""Resume and interrupted jobs, as pure decisions: which jobs may be resumed, how long a resume waits
for the runner of a cancelled job, what a stopped `serve` leaves behind, and how job_status reports
a crash (with how to resume it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer.contract import JobStatus, PathType
from batchinfer.control.jobview import RunSnapshot, batch_inference
from batchinfer.control.recovery import (
    INTERRUPTED_STATE_NAME,
    RESUME_STATE_NAME,
    RUNNER_LET_GO_S,
    interrupted_state,
    let_go_delay,
    nothing_to_retry,
    resume_refusal,
    resume_state,
    retry_refusal,
    retry_state,
    runner_may_still_cancel,
)
from batchinfer.control.states import StateEvent
from batchinfer.errors import resume_hint
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobProgress

JOB_ID = "6f1c2a3b-0000-4000-8000-00000000beef"
PARAMS = JobParameters(
    model="fake", prompt_file={"type": PathType.filepath, "value": "/data/p.jsonl"}
).model_dump(mode="json", exclude_none=True)


def run(state_type: str, name: str | None, message: str | None = None, **progress: object) -> RunSnapshot:
    return RunSnapshot(
        id=JOB_ID,
        created=datetime(2025, 1, 1, tzinfo=UTC),
        state_type=state_type,
        state_name=name,
        state_message=message,
        parameters=PARAMS,
        progress=JobProgress(**progress) if progress else None,  # type: ignore[arg-type]
    )


# (state type, runs on a deployment, refused because ...) -- None: resumable
RESUME_TABLE = [
    ("FAILED", True, None),
    ("CRASHED", True, None),
    ("CANCELLED", True, None),
    ("COMPLETED", True, "already completed"),
    ("RUNNING", True, "still running"),
    ("PENDING", True, "still pending"),
    ("SCHEDULED", True, "still scheduled"),
    ("PAUSED", True, "still paused"),
    ("CANCELLING", True, "still cancelling"),
    ("CRASHED", False, "same --output-dir"),
]


@pytest.mark.parametrize(("state_type", "has_deployment", "refused_because"), RESUME_TABLE)
def test_only_a_job_that_stopped_without_finishing_and_has_a_runner_may_be_resumed(
    state_type: str, has_deployment: bool, refused_because: str | None
) -> None:
    refusal = resume_refusal(JOB_ID, state_type, has_deployment)
    if refused_because is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_because in refusal and JOB_ID in refusal


# (state type, runs on a deployment, refused because ...) -- None: its failed lines may be retried
RETRY_TABLE = [
    ("COMPLETED", True, None),
    ("FAILED", True, None),
    ("CRASHED", True, None),
    ("CANCELLED", True, None),
    ("RUNNING", True, "still running"),
    ("SCHEDULED", True, "still scheduled"),
    ("CANCELLING", True, "still cancelling"),
    ("COMPLETED", False, "foreground"),
]


@pytest.mark.parametrize(("state_type", "has_deployment", "refused_because"), RETRY_TABLE)
def test_only_a_job_that_has_ended_and_has_a_runner_may_have_its_failed_lines_retried(
    state_type: str, has_deployment: bool, refused_because: str | None
) -> None:
    refusal = retry_refusal(JOB_ID, state_type, has_deployment)
    if refused_because is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_because in refusal and JOB_ID in refusal


def test_a_retry_says_how_many_lines_it_runs_and_is_rescheduled_like_a_resume() -> None:
    spec = retry_state(12)
    assert (spec.type, spec.name) == ("SCHEDULED", "AwaitingRetry") and "12 failed lines" in spec.message


@pytest.mark.parametrize(("every_error", "says"), [(False, "`all: true`"), (True, "failed inference")])
def test_a_retry_with_nothing_to_run_says_why_and_what_to_do(every_error: bool, says: str) -> None:
    message = nothing_to_retry(JOB_ID, every_error)
    assert JOB_ID in message and says in message and "submit a new job" in message


NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def history(*types: str) -> list[StateEvent]:
    return [StateEvent(state_type, None, NOON + timedelta(seconds=i)) for i, state_type in enumerate(types)]


@pytest.mark.parametrize(
    ("types", "waits"),
    [
        (("RUNNING", "CANCELLING", "CANCELLED"), True),  # the job's own Cancelled: its runner's is to come
        (("RUNNING", "CANCELLING", "CANCELLED", "CANCELLED"), False),  # the runner's is in
        (("SCHEDULED", "CANCELLED"), False),  # cancelled before any process ran it
        (("RUNNING", "CANCELLING", "CRASHED"), False),
        (("RUNNING", "CANCELLING", "CANCELLED", "CANCELLED", "SCHEDULED", "RUNNING"), False),
        (("RUNNING", "CANCELLING", "CANCELLED", "SCHEDULED", "RUNNING", "CANCELLING", "CANCELLED"), True),
    ],
)
def test_a_resume_waits_for_the_runner_of_a_cancelled_job_only_while_its_cancelled_is_still_to_come(
    types: tuple[str, ...], waits: bool
) -> None:
    own_cancel_at = runner_may_still_cancel(history(*types))
    assert (own_cancel_at is not None) is waits
    if waits:
        assert own_cancel_at == history(*types)[-1].timestamp


@pytest.mark.parametrize(
    ("ago_s", "wait_s"), [(0.0, RUNNER_LET_GO_S), (2.0, RUNNER_LET_GO_S - 2.0), (60.0, 0.0)]
)
def test_a_resume_waits_for_the_runner_at_most_its_let_go_time_after_the_jobs_own_cancel(
    ago_s: float, wait_s: float
) -> None:
    assert let_go_delay(NOON - timedelta(seconds=ago_s), NOON) == pytest.approx(wait_s)


def test_a_resume_proposes_the_same_state_as_the_prefect_ui_retry_button() -> None:
    # The UI's retryFlowRun sets {type: SCHEDULED, name: "AwaitingRetry"}; so do we, so that both
    # paths look and behave the same (the e2e tests take both).
    spec = resume_state()
    assert (spec.type, spec.name) == ("SCHEDULED", "AwaitingRetry")


def test_the_resume_hint_names_the_command_and_the_endpoint() -> None:
    hint = resume_hint(JOB_ID)
    assert f"batchinfer resume {JOB_ID}" in hint
    assert f"POST /batch_inference/resume_job?job_id={JOB_ID}" in hint


# (state a stopped serve left, the state it becomes: (type, name) or None to leave it)
LEFT_BEHIND = [
    ("RUNNING", ("CRASHED", INTERRUPTED_STATE_NAME)),
    ("PENDING", ("CRASHED", INTERRUPTED_STATE_NAME)),
    ("CANCELLING", ("CANCELLED", "Cancelled")),
    ("SCHEDULED", None),  # queued: the new runner simply starts it
    ("PAUSED", None),
    ("COMPLETED", None),
    ("FAILED", None),
    ("CRASHED", None),
]


@pytest.mark.parametrize(("state_type", "becomes"), LEFT_BEHIND)
def test_a_job_a_stopped_serve_left_needing_a_process_is_ended_and_others_are_left_alone(
    state_type: str, becomes: tuple[str, str] | None
) -> None:
    spec = interrupted_state(JOB_ID, state_type)
    assert ((spec.type, spec.name) if spec else None) == becomes


def test_an_interrupted_job_says_what_happened_and_how_to_resume() -> None:
    spec = interrupted_state(JOB_ID, "RUNNING")
    assert spec is not None
    assert "serve stopped while this job was running" in spec.message
    assert resume_hint(JOB_ID) in spec.message


def test_job_status_reports_an_interrupted_job_as_failed_with_code_interrupted() -> None:
    message = interrupted_state(JOB_ID, "RUNNING").message  # type: ignore[union-attr]
    job = batch_inference(run("CRASHED", INTERRUPTED_STATE_NAME, message))
    assert job.status is JobStatus.failed
    assert job.metadata["error"] == {"code": "interrupted", "message": message}


def test_job_status_of_a_crashed_job_adds_how_to_resume_to_prefects_message() -> None:
    job = batch_inference(run("CRASHED", "Crashed", "Process exited with status code: -9."))
    assert job.metadata["error"]["code"] == "crashed"
    assert job.metadata["error"]["message"].startswith("Process exited with status code: -9.")
    assert f"batchinfer resume {JOB_ID}" in job.metadata["error"]["message"]


def test_a_crash_ignores_an_error_left_in_the_progress_file_by_an_earlier_run() -> None:
    job = batch_inference(run("CRASHED", "Crashed", "killed", error_code="deadline_exceeded"))
    assert job.metadata["error"]["code"] == "crashed"


def test_a_resumed_job_does_not_point_at_the_outputs_of_its_previous_run() -> None:
    previous = {"output_dir": "/jobs/x", "total": 3, "outputs_ready": True}
    assert batch_inference(run("SCHEDULED", RESUME_STATE_NAME, **previous)).success_file_path is None
    assert batch_inference(run("FAILED", "Failed", **previous)).success_file_path is not None
