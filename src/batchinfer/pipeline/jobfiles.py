"""Where a job's files live, and the one way they are written: to a temp file, then renamed.

A reader therefore never sees a half-written output, and a crash never leaves one that looks done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from batchinfer.endpoints import Endpoint

SUCCESS_FILE = "success.jsonl"
ERROR_FILE = "errors.jsonl"
RESULTS_FILE = "results.parquet"


@dataclass(frozen=True)
class JobLayout:
    """The files of one job under its directory. ``work/`` holds intermediate, resumable state."""

    root: Path

    def name_of(self, path: Path) -> str:
        """``path`` (one of this layout's files) relative to the job's folder: its name on a store."""
        return path.relative_to(self.root).as_posix()

    @property
    def success(self) -> Path:
        return self.root / SUCCESS_FILE

    @property
    def errors(self) -> Path:
        return self.root / ERROR_FILE

    @property
    def results(self) -> Path:
        """Every row's outcome as one table, with the input table's carried columns."""
        return self.root / RESULTS_FILE

    @property
    def carried_columns(self) -> Path:
        """A table prompt file's carried columns, every row in row order (``pipeline.tables``)."""
        return self.work / "columns.parquet"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def staged_input(self) -> Path:
        """A local copy of a remote (``uri``) prompt file."""
        return self.work / "input.jsonl"

    @property
    def progress(self) -> Path:
        """Live counts of a running job (see ``jobview.JobProgress``)."""
        return self.work / "progress.json"

    @property
    def line_errors(self) -> Path:
        return self.work / "line_errors.jsonl"

    @property
    def batch_errors(self) -> Path:
        """The lines that failed an OpenAI batch's checks (``pipeline.batch_checks``), if any did."""
        return self.work / "batch_errors.jsonl"

    @property
    def duplicates(self) -> Path:
        """Lines not sent because an identical earlier one was (``pipeline.duplicates``)."""
        return self.work / "duplicates.jsonl"

    def chunk_input(self, index: int) -> Path:
        return self.work / "chunks" / f"input-{index:05d}.jsonl"

    def chunk_result(self, index: int, key: str) -> Path:
        return self.work / "chunks" / f"result-{index:05d}-{key}.jsonl"


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync and rename it into place, else remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        encoding, newline = (None, None) if "b" in mode else ("utf-8", "\n")
        with open(tmp, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- the progress file ---------------------------------------------------------------------------
# Why a file and not flow-run labels: on the SQLite backend, a labels PATCH that lands while the
# server records task-run states fails with SQLITE_BUSY_SNAPSHOT (HTTP 503), and Prefect's client
# then sleeps 2 s before retrying, at every phase change. A small file renamed into place costs
# nothing and is read by whoever can read the job's outputs.


class JobProgress(BaseModel):
    """What the flow publishes about itself while it works (``work/progress.json``)."""

    output_dir: str | None = None
    # The process running the job (to look at it with py-spy, say): a served job's process is
    # forked from a fork server, so neither its command line nor its environment names the job.
    pid: int | None = None
    endpoint: Endpoint | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    chunks: int = 0
    # The key of this run's chunk result files (``chunking.chunk_key``): what finished so far is
    # read from them (``live_results``); files of an earlier, different run are not this run's.
    chunk_key: str | None = None
    chunk_first_lines: list[int] = Field(default_factory=list)  # where each chunk starts, in input lines
    chunks_done: int = 0
    blank_lines: int = 0
    deduplicated: int = 0  # lines answered by copying an identical earlier line's answer
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outputs_ready: bool = False
    # An HTTP model's pace in this job's process: its in-flight limit under ``auto`` and why it is
    # there, its per-minute limits, how often the server asked to wait (``OpenAIEngine.pace``).
    pace: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


def write_progress(layout: JobLayout, progress: JobProgress) -> None:
    with atomic_write(layout.progress) as handle:
        handle.write(progress.model_dump_json())


def read_progress(layout: JobLayout) -> JobProgress | None:
    """The job's last published progress, or None before the flow has written any."""
    try:
        return JobProgress.model_validate_json(layout.progress.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
