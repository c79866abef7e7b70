"""The job deadline and the chunk window: at most `window` chunks in flight, none submitted past
the deadline, and no waiting on chunks in flight once it has passed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from batchinfer.runtime.deadline import Deadline, DeadlinePassed, windowed


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def done(value: int) -> Future[int]:
    future: Future[int] = Future()
    future.set_result(value)
    return future


def test_a_deadline_counts_down_from_when_it_was_made() -> None:
    clock = FakeClock()
    deadline = Deadline.after(10, clock)
    clock.now += 4
    assert deadline.remaining() == 6 and not deadline.expired()
    clock.now += 6
    assert deadline.remaining() == 0 and deadline.expired()


@pytest.mark.parametrize(
    ("seconds", "shown"), [(86400, "24 h"), (5400, "1.5 h"), (90, "1.5 min"), (0.5, "0.5 s")]
)
def test_deadline_exceeded_is_a_job_error_naming_the_deadline_progress_and_resume(
    seconds: float, shown: str
) -> None:
    error = Deadline.after(seconds).exceeded("job-1", chunks_done=3, chunks_total=10)
    assert error.code == "deadline_exceeded"
    assert f"deadline of {shown} (BATCHINFER_JOB_TIMEOUT_S)" in error.message
    assert "3 of 10 chunks done" in error.message
    assert "batchinfer resume job-1" in error.message


def test_the_window_yields_every_result_and_never_has_more_than_window_in_flight() -> None:
    lock = threading.Lock()
    in_flight = peak = 0

    def work(item: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.005)
        with lock:
            in_flight -= 1
        return item * 2

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(windowed(lambda i: pool.submit(work, i), range(20), 3, Deadline.after(60)))
    assert sorted(results) == [i * 2 for i in range(20)]
    assert peak <= 3


def test_past_the_deadline_no_further_item_is_submitted() -> None:
    clock = FakeClock()
    submitted: list[int] = []

    def submit(item: int) -> Future[int]:
        submitted.append(item)
        clock.now += 1  # each item takes a second
        return done(item)

    results: list[int] = []
    with pytest.raises(DeadlinePassed):
        for result in windowed(submit, range(10), 1, Deadline.after(3.5, clock)):
            results.append(result)
    assert submitted == [0, 1, 2, 3]
    assert results == [0, 1, 2, 3]  # what finished in time is handed over, not thrown away


def test_past_the_deadline_the_window_stops_waiting_for_items_in_flight() -> None:
    never: Future[int] = Future()  # a chunk that hangs
    started = time.monotonic()
    with pytest.raises(DeadlinePassed):
        list(windowed(lambda _: never, [1], 1, Deadline.after(0.05)))
    assert time.monotonic() - started < 2


def test_an_item_that_fails_fails_the_window() -> None:
    failed: Future[int] = Future()
    failed.set_exception(RuntimeError("engine broke"))
    with pytest.raises(RuntimeError, match="engine broke"):
        list(windowed(lambda _: failed, [1], 1, Deadline.after(60)))


class Switch:
    def __init__(self) -> None:
        self.on = False

    def is_set(self) -> bool:
        return self.on


def test_once_stopped_the_window_starts_nothing_more_and_yields_what_was_in_flight() -> None:
    stop = Switch()
    started: list[int] = []

    def submit(item: int) -> Future[int]:
        started.append(item)
        return done(item)

    results = []
    for value in windowed(submit, range(10), 2, Deadline.after(60), stop):
        results.append(value)
        stop.on = True  # cancelled after the first result
    assert started == [0, 1]  # the window held 2; nothing started after the stop
    assert results == [0, 1]
