"""A job's stop signal: set by its watcher when the flow run is cancelling, or by SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from batchinfer.runtime.cancellation import CancelWatcher, StopSignal, expiring, sigterm_sets, stop_signal


def test_a_stop_signal_keeps_the_first_reason() -> None:
    stop = StopSignal()
    stop.set("cancel requested")
    stop.set("SIGTERM")
    assert stop.is_set() and stop.reason == "cancel requested"


def test_each_job_has_its_own_signal_in_the_process() -> None:
    assert stop_signal("job-a") is stop_signal("job-a")
    assert stop_signal("job-a") is not stop_signal("job-b")


def _watch(states: Iterator[str | None]) -> StopSignal:
    stop = StopSignal()

    def read() -> str | None:
        value = next(states)
        if value == "boom":
            raise ConnectionError("API down for a moment")
        return value

    with CancelWatcher("job", stop, read, interval_s=0.01):
        stop.wait(2)
    return stop


@pytest.mark.parametrize("cancel_state", ["CANCELLING", "CANCELLED"])
def test_the_watcher_stops_the_job_once_its_run_is_cancelling(cancel_state: str) -> None:
    stop = _watch(iter(["RUNNING", "boom", "RUNNING", cancel_state, *["RUNNING"] * 1000]))
    assert stop.is_set() and stop.reason == "cancel requested"


def test_the_watcher_leaves_a_running_job_alone() -> None:
    stop, looks = StopSignal(), threading.Semaphore(0)

    def read() -> str:
        looks.release()
        return "RUNNING"

    with CancelWatcher("job", stop, read, interval_s=0.01):
        for _ in range(5):  # five looks at a running job, each followed by no stop
            assert looks.acquire(timeout=5)
    assert not stop.is_set()


def test_inside_sigterm_sets_a_sigterm_stops_the_job_instead_of_the_process() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    try:
        with sigterm_sets(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(2)
        assert stop.reason == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, before)


def test_without_a_stop_the_previous_sigterm_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_sets(StopSignal()):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_job_past_its_expiry_stops_at_once_and_its_cut_lines_read_expired() -> None:
    stop = StopSignal()
    with expiring(stop, datetime.now(UTC) - timedelta(seconds=1)):
        assert stop.wait(2)
    assert stop.reason == "expired" and stop.abandoned.code == "expired"


def test_a_job_expiring_later_runs_on_and_a_cancel_reads_cancelled() -> None:
    stop = StopSignal()
    with expiring(stop, datetime.now(UTC) + timedelta(hours=1)):
        assert not stop.wait(0.1)
        stop.set("cancel requested")
    assert stop.abandoned.code == "cancelled"
