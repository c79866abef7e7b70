"""Publishing a running job's phase and progress (glue, no logic of its own).

The phase is the RUNNING state's name (``control.states`` maps it); the counts go to the job's
progress file (``pipeline.jobfiles.write_progress``), which ``job_status`` reads; a progress
artifact shows the same in the Prefect UI; the run's name and ``model:`` tag are set here too.
In-process listeners (the CLI's progress bar) get every update.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, write_progress

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
    """Publishes ``JobProgress``: the file at most every ``interval_s``, the UI's artifact at most
    every ``artifact_interval_s``, unless forced."""

    def __init__(
        self,
        flow_run_id: str,
        layout: JobLayout,
        output_root: str,
        on_write: Callable[[bool], None] | None = None,
        interval_s: float = 0.25,
        artifact_interval_s: float = 2.0,
    ) -> None:
        """``output_root``: where readers find the job's files (its folder, or its store's URL);
        ``on_write(forced)``: told each time the progress file is written (to publish it)."""
        from prefect.client.orchestration import get_client

        self.flow_run_id = flow_run_id
        self.layout = layout
        self.on_write = on_write
        self.progress = JobProgress(output_dir=output_root, pid=os.getpid())
        self.artifact_interval_s = artifact_interval_s
        self._last_artifact = 0.0
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
        write_progress(self.layout, self.progress)
        if self.on_write is not None:
            self.on_write(force)
        if not force and now - self._last_artifact < self.artifact_interval_s:
            return
        self._last_artifact = now
        try:
            self._update_artifact()
        except Exception:  # the artifact is advisory: a hiccup of the API must not fail the job
            logger.warning("Could not update the progress artifact of %s", self.flow_run_id, exc_info=True)

    def note_pace(self, pace: dict[str, Any] | None) -> None:
        """Keep the model's pace in the progress, and say in the run's log (the Prefect UI shows
        it) when the in-flight limit or its reason changed since it last said."""
        from prefect.logging import get_run_logger

        if pace is None or pace == self.progress.pace:
            return
        said = self.progress.pace or {}
        self.progress.pace = pace
        if (pace.get("concurrency"), pace.get("reason")) != (said.get("concurrency"), said.get("reason")):
            get_run_logger().info("Model pace: %s", ", ".join(f"{k} {v}" for k, v in pace.items()))

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

    def publish_summary(self, model: str, seconds: dict[str, float], infer_phase: str) -> None:
        """The end-of-job table and markdown artifacts (advisory, like the progress artifact)."""
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        from batchinfer.pipeline.results_table import first_rows
        from batchinfer.runtime.summary import outputs_markdown, summary_rows

        try:
            create_table_artifact(
                table=summary_rows(self.progress, seconds, infer_phase),
                description="Counts, timings, throughput and tokens of this job",
            )
            rows = first_rows(self.layout.results) if self.progress.outputs_ready else []
            create_markdown_artifact(
                markdown=outputs_markdown(self.flow_run_id, model, self.layout, self.progress, rows),
                description="Where this job's outputs are, and the first rows of its results",
            )
        except Exception:
            logger.warning("Could not publish the summary of %s", self.flow_run_id, exc_info=True)


def job_run_name() -> str:
    """The flow run's name in the UI: ``<model> · <prompt file name>``."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    source = params.get("prompt_file") or {}
    value = source.get("value", "") if isinstance(source, dict) else getattr(source, "value", "")
    name = Path(str(value)).name if len(str(value)) < 512 else "raw-bytes"
    return f"{params.get('model', 'model')} · {name or 'prompts'}"


def tag_with_model(job_id: str, model: str) -> None:
    """``model:<id>``, as the adapter tags the runs it creates, also on runs started another way
    (a deployment's schedule, the UI, a direct call), so the UI can filter every job by model."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    tag = f"model:{model}"
    tags = list(flow_run.tags or [])
    if tag not in tags:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(job_id), tags=[*tags, tag])
