"""Publishing a running job's phase and progress to Prefect (glue, no logic of its own).

The phase is the RUNNING state's name (``state.py`` maps it); the counts are ``batchinfer.*``
labels on the flow run, so that ``job_status`` is one read of the run; a progress artifact shows
the same in the Prefect UI. In-process listeners (the CLI's progress bar) get every update.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from uuid import UUID

from batchinfer.jobview import JobProgress

ProgressListener = Callable[[str, JobProgress], None]
_listeners: list[ProgressListener] = []
_listeners_lock = threading.Lock()
logger = logging.getLogger(__name__)


def add_listener(listener: ProgressListener) -> None:
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: ProgressListener) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


class RunReporter:
    """Pushes ``JobProgress`` to the flow run, at most every ``interval_s`` unless forced."""

    def __init__(self, flow_run_id: str, interval_s: float = 1.0) -> None:
        from prefect.client.orchestration import get_client

        self.flow_run_id = flow_run_id
        self.progress = JobProgress()
        self.interval_s = interval_s
        self._client = get_client(sync_client=True)
        self._last_push = 0.0
        self._artifact_id: UUID | None = None

    def set_phase(self, phase: str) -> None:
        from prefect.states import Running

        # force=True: RUNNING -> RUNNING with a new name is not a transition the orchestration
        # rules would otherwise accept; the flow engine proposes the final state as usual.
        self._client.set_flow_run_state(UUID(self.flow_run_id), Running(name=phase), force=True)
        self.push(force=True)

    def push(self, force: bool = False) -> None:
        now = time.monotonic()
        with _listeners_lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.flow_run_id, self.progress)
        if not force and now - self._last_push < self.interval_s:
            return
        self._last_push = now
        try:
            self._client.update_flow_run_labels(UUID(self.flow_run_id), self.progress.to_labels())
            self._update_artifact()
        except Exception:  # progress is advisory: a hiccup of the API must not fail the job
            logger.warning("Could not publish progress for %s", self.flow_run_id, exc_info=True)

    def _update_artifact(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        p = self.progress
        percent = 100.0 * (p.completed + p.failed) / p.total if p.total else 0.0
        if self._artifact_id is None:
            if not p.total:
                return
            # Called from sync code, so async_dispatch returns the UUID itself, not a coroutine.
            self._artifact_id = create_progress_artifact(  # type: ignore[assignment]
                progress=percent, description="Prompt lines done (succeeded or failed)"
            )
        else:
            update_progress_artifact(self._artifact_id, progress=percent)
