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

SUCCESS_FILE = "success.jsonl"
ERROR_FILE = "errors.jsonl"


@dataclass(frozen=True)
class JobLayout:
    """The files of one job under its directory. ``work/`` holds intermediate, resumable state."""

    root: Path

    @property
    def success(self) -> Path:
        return self.root / SUCCESS_FILE

    @property
    def errors(self) -> Path:
        return self.root / ERROR_FILE

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
