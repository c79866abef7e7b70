"""A job's total deadline (``BATCHINFER_JOB_TIMEOUT_S``), and the chunk window that honours it.

The deadline covers one run of the job: a resumed job gets a fresh one, since the point of resuming
after ``deadline_exceeded`` is to finish the work. When it passes, no further chunk is submitted and
the job fails at once; chunks already in flight are not interrupted (their requests are bounded by
the model's ``timeout_s`` and retries), and whatever they finish is kept for a resume.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError, resume_hint

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Deadline:
    """``seconds`` from when it was made (``Deadline.after``), on a monotonic clock."""

    seconds: float
    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(seconds=seconds, at=clock() + seconds, clock=clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def exceeded(self, job_id: str, chunks_done: int, chunks_total: int) -> JobError:
        return JobError(
            f"The job passed its deadline of {_duration(self.seconds)} (BATCHINFER_JOB_TIMEOUT_S) with "
            f"{chunks_done} of {chunks_total} chunks done. {resume_hint(job_id)} If the job needs "
            "longer, raise BATCHINFER_JOB_TIMEOUT_S where the runner runs.",
            code=ErrorCode.deadline_exceeded,
        )


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class DoneFuture(Protocol, Generic[T_co]):
    """What the window needs of a future: Prefect's and ``concurrent.futures``' both fit."""

    def add_done_callback(self, fn: Callable[[Any], None], /) -> None: ...

    def result(self) -> T_co: ...


class DeadlinePassed(Exception):
    """The window stopped submitting and waiting because the deadline passed."""


class Stop(Protocol):
    def is_set(self) -> bool: ...


def windowed(
    submit: Callable[[Any], DoneFuture[T]],
    items: Iterable[Any],
    window: int,
    deadline: Deadline,
    stop: Stop | None = None,
) -> Iterator[T]:
    """Keep at most ``window`` items in flight; yield each one's result as it finishes.

    Raises ``DeadlinePassed`` as soon as the deadline passes, without waiting for what is in flight.
    Once ``stop`` is set it starts nothing more, yields what is in flight as it finishes, and ends;
    the items it never started are the caller's to account for.
    Finished futures arrive through a queue, a plain bounded wait, rather than Prefect's
    ``as_completed(timeout=)``, whose timeout works by cancelling the waiting thread's scope.
    """
    finished: queue.SimpleQueue[DoneFuture[T]] = queue.SimpleQueue()
    pending = iter(items)

    def start(count: int) -> int:
        started = 0
        for item in islice(pending, count):
            if stop is not None and stop.is_set():
                return started
            if deadline.expired():
                raise DeadlinePassed
            submit(item).add_done_callback(finished.put)
            started += 1
        return started

    in_flight = start(window)
    while in_flight:
        try:
            future = finished.get(timeout=max(deadline.remaining(), 1e-3))
        except queue.Empty:
            raise DeadlinePassed from None
        in_flight -= 1
        yield future.result()
        in_flight += start(1)
