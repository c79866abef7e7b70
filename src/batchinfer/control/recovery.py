"""Resuming a job after a crash, and recognising jobs a stopped ``serve`` left behind. Pure: state
types and names in, decisions and messages out; the Prefect calls live in ``api/backend.py``.

A resume sets the flow run back to SCHEDULED (named ``AwaitingRetry``, exactly what the Prefect UI's
"Retry" does), so the runner starts it again under the same id, hence in the same job directory,
where every finished chunk's result file is reused instead of re-sent to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from batchinfer.control.states import StateEvent
from batchinfer.errors import resume_hint

# The name of the SCHEDULED state a resume proposes: the Prefect UI's "Retry" button's own.
RESUME_STATE_NAME = "AwaitingRetry"

# CRASHED under this name: `serve` found the job left running by a previous `serve` whose processes
# are gone. jobview reports it with the error code ``interrupted``.
INTERRUPTED_STATE_NAME = "Interrupted"

# A job in one of these states may be resumed: it stopped, and it did not finish.
RESUMABLE_STATE_TYPES = frozenset({"FAILED", "CRASHED", "CANCELLED"})

# States that need a live process. Found at `serve` start, their process died with the last `serve`.
LEFT_RUNNING_STATE_TYPES = ("PENDING", "RUNNING", "CANCELLING")


def resume_refusal(job_id: str, state_type: str, has_deployment: bool) -> str | None:
    """Why job ``job_id`` in ``state_type`` cannot be resumed, or None when it can."""
    if state_type == "COMPLETED":
        return f"Job {job_id} has already completed; there is nothing to resume. Submit a new job instead."
    if state_type not in RESUMABLE_STATE_TYPES:
        return (
            f"Job {job_id} is still {state_type.lower()}; only a failed, crashed or cancelled job can be "
            "resumed. Wait for it to end (job_status)."
        )
    if not has_deployment:
        # Prefect refuses to reschedule a run without a deployment: no runner would ever pick it up.
        return (
            f"Job {job_id} ran in the foreground (`batchinfer run`), not on a runner, so nothing can "
            "pick it up again. Run the same command again with the same --output-dir: finished "
            "chunks are reused."
        )
    return None


# A job in one of these states may have its failed lines retried: it has ended.
RETRYABLE_STATE_TYPES = RESUMABLE_STATE_TYPES | {"COMPLETED"}


def retry_refusal(job_id: str, state_type: str, has_deployment: bool) -> str | None:
    """Why job ``job_id`` in ``state_type`` cannot have its failed lines retried, or None."""
    if state_type not in RETRYABLE_STATE_TYPES:
        return (
            f"Job {job_id} is still {state_type.lower()}; its failed lines can be retried once it has "
            "ended. Wait for it to end (job_status)."
        )
    if not has_deployment:
        return (
            f"Job {job_id} ran in the foreground (`batchinfer run`), not on a runner, so nothing can "
            "pick it up again. Submit it to `batchinfer serve` to retry lines."
        )
    return None


def nothing_to_retry(job_id: str, every_error: bool) -> str:
    """The refusal of a retry that would run no line."""
    which = "failed inference" if every_error else "retryable (timeout, 408, 429, 5xx, connection error)"
    hint = "" if every_error else " `all: true` (`batchinfer retry --all`) retries every failed line."
    return (
        f"Job {job_id} has no {which} line to retry; lines the prompt file got wrong fail the same way "
        f"again: fix them and submit a new job.{hint} (A job that failed model_unreachable kept no "
        "results to retry from: resume it.)"
    )


# A running job asked to stop (CANCELLING) sets Cancelled itself once it has written what it
# finished. The runner or worker that owns its process then ends Prefect's own cancel: it waits for
# the process to exit (looking every 3 s), and sets Cancelled again, by force. A resume before that
# second Cancelled is overwritten by it, and the resumed run, started under the same id, is killed.
# So a resume waits for it, at most this long after the job's own Cancelled (longer than the runner's
# 3 s steps, twice, on a loaded machine).
RUNNER_LET_GO_S = 20.0


def runner_may_still_cancel(history: list[StateEvent]) -> datetime | None:
    """When a cancelled job's own Cancelled was set, while its runner's Cancelled is still to come;
    None when no runner will set it again. ``history``: the run's states, oldest first.

    The runner's Cancelled follows only a CANCELLING (a job cancelled before it ran has no process)
    and always comes last: the runner sets it after the process, hence the job, has ended.
    """
    if [event.type for event in history[-2:]] != ["CANCELLING", "CANCELLED"]:
        return None  # no cancel of a running job, the runner's Cancelled is in, or a resume came since
    return history[-1].timestamp


def let_go_delay(own_cancel_at: datetime, now: datetime | None = None) -> float:
    """Seconds a resume may still wait for the runner of a job that cancelled at ``own_cancel_at``."""
    elapsed = ((now or datetime.now(UTC)) - own_cancel_at).total_seconds()
    return max(0.0, RUNNER_LET_GO_S - elapsed)


@dataclass(frozen=True)
class StateSpec:
    """A Prefect state to propose, as plain values (``type`` is a ``StateType`` value)."""

    type: str
    name: str
    message: str


def resume_state() -> StateSpec:
    """What a resume proposes: SCHEDULED named AwaitingRetry, exactly what the Prefect UI's "Retry"
    button sets, so that both paths look and behave the same."""
    return StateSpec("SCHEDULED", RESUME_STATE_NAME, "Resumed: finished chunks are reused.")


def retry_state(lines: int) -> StateSpec:
    """What a retry of ``lines`` failed lines proposes: a resume that says so."""
    return StateSpec("SCHEDULED", RESUME_STATE_NAME, f"Retrying {lines} failed lines; the rest are kept.")


def interrupted_state(job_id: str, state_type: str) -> StateSpec | None:
    """The state for a job that a previous ``serve`` left in ``state_type``; None to leave it alone.

    SCHEDULED jobs are left alone on purpose: the new runner starts them like any queued job.
    """
    if state_type == "CANCELLING":  # the user wanted it stopped, and it is
        return StateSpec(
            "CANCELLED",
            "Cancelled",
            "batchinfer serve stopped while this job was being cancelled; it is cancelled now.",
        )
    if state_type in ("PENDING", "RUNNING"):
        doing = "starting" if state_type == "PENDING" else "running"
        return StateSpec(
            "CRASHED",
            INTERRUPTED_STATE_NAME,
            f"batchinfer serve stopped while this job was {doing}, and the process running it is "
            f"gone. {resume_hint(job_id)}",
        )
    return None
