"""The machine running a job keeps its store up to date (``jobstore``): what a reader elsewhere
needs, as soon as it exists, each file whole. A job without a store publishes nothing.

Order matters to a reader: a chunk's result goes up when the chunk ends, before the progress that
counts it; the outputs go up before the progress that says they are ready. Progress itself goes up
at most every ``progress_interval_s`` (a PUT each), and always when a phase changes or the job ends.
Pure: no Prefect.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import JobPlace, JobStore


class Publisher:
    def __init__(self, place: JobPlace, progress_interval_s: float = 2.0) -> None:
        self.layout: JobLayout = place.layout
        self.store: JobStore | None = place.store
        self.progress_interval_s = progress_interval_s
        self._last_progress = 0.0

    def _put(self, path: Path) -> None:
        if self.store is not None and path.exists():
            self.store.publish(path, self.layout.name_of(path))

    def validated(self) -> None:
        """What validation wrote that readers merge into the results: line errors, duplicates, the
        lines that failed an OpenAI batch, a table's carried columns."""
        layout = self.layout
        for path in (layout.line_errors, layout.duplicates, layout.batch_errors, layout.carried_columns):
            self._put(path)

    def chunk_done(self, result: Path) -> None:
        self._put(result)

    def gathered(self) -> None:
        for path in (self.layout.success, self.layout.errors, self.layout.results):
            self._put(path)

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            self._put(self.layout.progress)

    def resume_from_store(self, results: list[Path]) -> None:
        """Make the local chunk results what the store holds (the one source of truth: a retry
        elsewhere may have taken lines out of them, another machine may have finished some)."""
        if self.store is None:
            return
        held = set(self.store.names(self.layout.name_of(self.layout.work / "chunks")))
        for result in results:
            name = self.layout.name_of(result)
            if name in held:
                self.store.fetch(name, result)
            else:
                result.unlink(missing_ok=True)

    def dropped(self, results: list[Path]) -> None:
        """Results the job threw away on purpose (a model server never reached): gone everywhere."""
        for result in results:
            result.unlink(missing_ok=True)
            if self.store is not None:
                self.store.remove(self.layout.name_of(result))
