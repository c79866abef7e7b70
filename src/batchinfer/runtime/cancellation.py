"""Stopping a running job on request, keeping what it has done.

A cancel (the adapter's ``cancel_job``, the Prefect UI's Cancel, ``prefect flow-run cancel``) puts the
flow run in CANCELLING. The job notices in one of two ways, whichever comes first: its own watcher
thread sees the state, or the runner that owns the process sends SIGTERM (Prefect's runners do).
Either way it sets the job's ``StopSignal``; engines check it between requests and abandon the
requests still waiting or in flight as ``cancelled`` error records, so every chunk finishes at once
and writes its result file; chunks never started get all-``cancelled`` result files; gather then
writes both output files as usual. A resume re-runs only the ``cancelled`` lines.

Pure except for ``CancelWatcher``, which polls the Prefect API from a daemon thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from uuid import UUID

from batchinfer.engines.base import CANCELLED, EXPIRED, InferenceOutcome
from batchinfer.error_codes import ErrorCode
from batchinfer.records import ErrorDetail
from batchinfer.runtime.fail_fast import OutcomeTally, not_sent

logger = logging.getLogger(__name__)

CANCELLED_CODE = CANCELLED.code
EXPIRED_REASON = ErrorCode.expired  # the StopSignal reason when the job's completion window passes
# The reason when `batchinfer run` is interrupted (Ctrl-C, SIGTERM): a cancel of a job that no runner
# owns, so no CANCELLING state stands behind it.
INTERRUPTED_REASON = ErrorCode.interrupted
# Prefect state types in which a job is being, or has been, cancelled.
CANCEL_STATE_TYPES = frozenset({"CANCELLING", "CANCELLED"})


class StopSignal:
    """A job's request to stop, shared by its flow and every chunk in the same process. With a
    ``tally`` (``fail_fast``), it also hears each request's outcome and stops the job itself on
    failures no retry fixes; ``reason`` is then the job's error code."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.tally: OutcomeTally | None = None

    def observe(self, outcome: InferenceOutcome) -> None:
        if self.tally is not None and (code := self.tally.add(outcome)) is not None:
            self.set(code)

    @property
    def failed_fast(self) -> bool:
        return self.tally is not None and self.reason is not None and self.reason == self.tally.tripped

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def abandoned(self) -> ErrorDetail:
        """The error record of a line this stop cut short."""
        if self.failed_fast:
            assert self.reason is not None
            return not_sent(self.reason)
        return EXPIRED if self.reason == EXPIRED_REASON else CANCELLED

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


_signals: dict[str, StopSignal] = {}
_signals_lock = threading.Lock()


def stop_signal(job_id: str) -> StopSignal:
    """The process-wide ``StopSignal`` of ``job_id`` (the chunk tasks find it by the job id)."""
    with _signals_lock:
        return _signals.setdefault(job_id, StopSignal())


def forget(job_id: str) -> None:
    with _signals_lock:
        _signals.pop(job_id, None)


class CancelWatcher:
    """Polls the job's flow-run state every ``interval_s``; sets ``stop`` once it is cancelling."""

    def __init__(
        self,
        job_id: str,
        stop: StopSignal,
        read_state_type: Callable[[], str | None],
        interval_s: float = 1.0,
    ) -> None:
        self._job_id = job_id
        self._stop = stop
        self._read_state_type = read_state_type
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-watch-{job_id}", daemon=True)

    def __enter__(self) -> CancelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self._interval_s) and not self._stop.is_set():
            try:
                state_type = self._read_state_type()
            except Exception:  # the API hiccupped: look again next time
                logger.debug("Could not read the state of job %s", self._job_id, exc_info=True)
                continue
            if state_type in CANCEL_STATE_TYPES:
                self._stop.set("cancel requested")


def prefect_state_reader(job_id: str) -> Callable[[], str | None]:
    """Reads the flow run's state type through Prefect's sync client."""
    from prefect.client.orchestration import get_client

    client = get_client(sync_client=True)

    def read() -> str | None:
        state = client.read_flow_run(UUID(job_id)).state
        return state.type.value if state else None

    return read


@contextmanager
def sigterm_sets(stop: StopSignal) -> Iterator[None]:
    """While inside, SIGTERM sets ``stop`` instead of interrupting the main thread at a random
    point, so that a runner's cancel (SIGTERM, then SIGKILL 30 s later) lets the job finish its
    chunks and write its outputs. Outside the main thread (no signals there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        logger.info("Not in the main thread: a SIGTERM will stop this job the hard way.")
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set("SIGTERM")

    previous: Any = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        # Once stopping, keep it: the runner's SIGTERM may still come while the job finishes.
        if not stop.is_set():
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def expiring(stop: StopSignal, expires_at: datetime | None) -> Iterator[None]:
    """While inside, ``stop`` is set (reason ``expired``) when ``expires_at`` passes (at once if it
    has); the job then stops as for a cancel, keeping what it finished."""
    if expires_at is None:
        yield
        return
    delay = (expires_at - datetime.now(UTC)).total_seconds()
    timer = threading.Timer(max(0.0, delay), stop.set, args=(EXPIRED_REASON,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
