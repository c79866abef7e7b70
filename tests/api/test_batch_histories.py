"""A batch's timestamps come from its job's state history: read from the backend once per state the
job enters, so that listing ended batches again asks the backend for nothing but the jobs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from batchinfer.api.openai.batch_view import Histories
from batchinfer.contract import BatchInference, JobStatus
from batchinfer.control.states import StateEvent

START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class StatesBackend:
    """Each job's states so far, and every job id whose history was asked for."""

    def __init__(self) -> None:
        self.states: dict[UUID, list[StateEvent]] = {}
        self.asked: list[UUID] = []

    def enter(self, job_id: UUID, state_type: str, name: str, minute: int) -> BatchInference:
        event = StateEvent(state_type, name, START + timedelta(minutes=minute))
        self.states.setdefault(job_id, []).append(event)
        state = {"type": state_type, "name": name, "timestamp": event.timestamp.isoformat()}
        status = JobStatus.completed if state_type == "COMPLETED" else JobStatus.running
        return BatchInference(job_id=str(job_id), created=START, status=status, metadata={"state": state})

    async def history(self, job_ids: list[UUID]) -> dict[UUID, list[StateEvent]]:
        self.asked += job_ids
        return {job_id: list(self.states[job_id]) for job_id in job_ids}


def _read(histories: Histories, backend: StatesBackend, *jobs: BatchInference) -> list[list[StateEvent]]:
    asyncio.run(histories.refresh(backend, list(jobs)))
    return [histories.of(job) for job in jobs]


def test_a_history_is_read_once_while_its_job_stays_in_the_same_state() -> None:
    backend, histories, job_id = StatesBackend(), Histories(), uuid4()
    done = backend.enter(job_id, "COMPLETED", "Completed", 1)
    assert _read(histories, backend, done) == [backend.states[job_id]]
    assert _read(histories, backend, done) == [backend.states[job_id]]
    assert backend.asked == [job_id]


def test_a_job_that_entered_a_new_state_has_its_history_read_again_even_one_of_the_same_name() -> None:
    backend, histories, job_id = StatesBackend(), Histories(), uuid4()
    _read(histories, backend, backend.enter(job_id, "COMPLETED", "Completed", 1))
    backend.enter(job_id, "SCHEDULED", "Resuming", 2)
    again = backend.enter(job_id, "COMPLETED", "Completed", 3)  # resumed: the same state, later
    assert _read(histories, backend, again) == [backend.states[job_id]]
    assert len(histories.of(again)) == 3 and backend.asked == [job_id, job_id]


def test_a_job_whose_state_carries_no_timestamp_is_always_read() -> None:
    backend, histories, job_id = StatesBackend(), Histories(), uuid4()
    job = backend.enter(job_id, "COMPLETED", "Completed", 1)
    del job.metadata["state"]["timestamp"]
    _read(histories, backend, job)
    _read(histories, backend, job)
    assert backend.asked == [job_id, job_id]


def test_only_the_most_recently_read_histories_are_kept() -> None:
    backend, histories = StatesBackend(), Histories(size=2)
    jobs = [backend.enter(uuid4(), "COMPLETED", "Completed", 1) for _ in range(3)]
    _read(histories, backend, *jobs)
    assert [histories.of(job) != [] for job in jobs] == [False, True, True]
