"""The in-process job tests' fixture: the real flow and its tasks in this process, on the session's
Prefect test server, with a scripted engine made the process's engine for the model."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchinfer.contract import Path as PromptPath
from batchinfer.contract import PathType
from batchinfer.engines.base import Engine
from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import engine_in_use
from batchinfer.flows.batch_job import batch_job
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import is_url
from batchinfer.settings import Settings
from tests.runtime.jobs import CHUNK_SIZE, LINES, MODEL, Ended, RunJob


@pytest.fixture
def run_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None) -> Iterator[RunJob]:
    """Runs the flow in this process on ``engine`` over ``lines`` prompts; how it ended."""
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [MODEL.model_dump(exclude_none=True)]}))
    for name, value in {
        "HOME": str(tmp_path / "home"),
        "MODELS": str(models),
        "CHUNK_SIZE": str(CHUNK_SIZE),
    }.items():
        monkeypatch.setenv(f"BATCHINFER_{name}", value)
    monkeypatch.setenv("BATCHINFER_SHARE_MODEL_LIMITS", "false")
    settings = Settings()
    context = EngineContext(cache_dir=settings.cache_dir, threads=settings.jobs.threads)

    def run(
        engine: Engine,
        lines: int = LINES,
        prompt: Callable[[int], str] = "prompt {}".format,
        rows: list[Any] | None = None,
        **parameters: Any,
    ) -> Ended:
        """``rows`` (JSON values, one a line) instead of ``lines`` prompts made by ``prompt``."""
        prompts = tmp_path / "prompts.jsonl"
        rows = [[{"role": "user", "text": prompt(i)}] for i in range(lines)] if rows is None else rows
        prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
        source = PromptPath(type=PathType.filepath, value=str(prompts))
        out = str(parameters.pop("output_dir", tmp_path / "out"))
        parameters.setdefault("model", MODEL.id)
        with engine_in_use(MODEL, context, engine):
            state = batch_job(prompt_file=source, output_dir=out, return_state=True, **parameters)
        # A job whose folder is on a store works in a copy under the data dir.
        working = settings.jobs_dir / str(state.state_details.flow_run_id) if is_url(out) else Path(out)
        return Ended(state, JobLayout(working))

    yield run
