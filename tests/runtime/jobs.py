"""The in-process job tests' vocabulary: the scripted model, the prompt counts, and how a run ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, read_progress
from batchinfer.testing.served import read_jsonl

MODEL = OpenAIEngineConfig(id="scripted", base_url="http://127.0.0.1:9/v1", model="scripted")
LINES = 60
CHUNK_SIZE = 10


@dataclass
class Ended:
    """How a job's run ended: its final Prefect state and what it left in its directory."""

    state: Any
    layout: JobLayout  # its folder (the working copy of a job whose output_dir is a store's URL)

    @property
    def progress(self) -> JobProgress:
        progress = read_progress(self.layout)
        assert progress is not None
        return progress

    def records(self) -> dict[int, dict[str, Any]]:
        """Every line's record, from both output files; a line in both would fail the test."""
        success, errors = read_jsonl(self.layout.success), read_jsonl(self.layout.errors)
        lines = [r["line"] for r in success + errors]
        assert len(lines) == len(set(lines)), "a line is in both output files"
        return {r["line"]: r for r in success + errors}


RunJob = Callable[..., Ended]
