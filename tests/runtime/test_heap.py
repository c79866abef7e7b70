"""The collector while a job runs: its starting heap frozen, young collections rarer, and the
process's own settings back as they were once the last job in it ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from batchinfer.runtime.heap import YOUNG_THRESHOLD, quiet_collector


@pytest.fixture(autouse=True)
def default_collector() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_inside_a_job_the_starting_heap_is_frozen_and_young_collections_are_rarer() -> None:
    with quiet_collector():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


def test_after_a_job_the_heap_is_unfrozen_and_the_thresholds_are_back() -> None:
    with quiet_collector():
        pass
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_an_error_in_the_job_still_puts_the_collector_back() -> None:
    with pytest.raises(RuntimeError), quiet_collector():
        raise RuntimeError("the job failed")
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_process_that_already_collects_less_often_keeps_its_own_threshold() -> None:
    gc.set_threshold(50_000, 10, 10)
    with quiet_collector():
        assert gc.get_threshold()[0] == 50_000
    assert gc.get_threshold() == (50_000, 10, 10)


def test_overlapping_jobs_restore_the_collector_only_when_the_last_one_ends() -> None:
    first_in, second_done = threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []

    def second_job() -> None:
        first_in.wait()
        with quiet_collector():
            pass
        second_done.set()

    other = threading.Thread(target=second_job)
    other.start()
    with quiet_collector():
        first_in.set()
        second_done.wait()
        seen.append(gc.get_threshold())  # the second job ended first: still quiet for this one
    other.join()
    assert seen == [(YOUNG_THRESHOLD, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)


def test_cyclic_garbage_made_inside_a_job_is_still_collected() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with quiet_collector():
        gc.collect()
        Node()
        assert gc.collect() > 0
