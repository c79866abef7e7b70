"""The batch job as a Prefect flow: validate -> infer-chunk x N (parallel) -> gather.

The flow run id is the job id. The flow names its RUNNING phases (Validating, Inferring,
Gathering) and publishes counts as it goes (``batchinfer.reporting``); everything else lives in
plain modules that the tasks call.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path as LocalPath
from typing import Any

from batchinfer.tasks.gather import gather
from batchinfer.tasks.infer import infer_chunk
from batchinfer.tasks.validate import validate
from prefect import flow
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from batchinfer.api.backend import FLOW_NAME
from batchinfer.catalog import load_catalog
from batchinfer.chunking import chunk_key
from batchinfer.contract import Options, Path
from batchinfer.deadline import Deadline, DeadlinePassed, windowed
from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import get_engine
from batchinfer.errors import BatchInferError, JobError
from batchinfer.inference import ChunkCounts
from batchinfer.jobfiles import JobLayout
from batchinfer.jobview import job_layout, sampling_params
from batchinfer.reporting import RunReporter
from batchinfer.settings import Settings
from batchinfer.state import PHASE_GATHERING, PHASE_INFERRING, PHASE_VALIDATING
from batchinfer.unreachable import model_unreachable, unreachable_error

# Upper bound on chunk threads; the engine's ``max_parallel_chunks`` picks the actual window.
MAX_CHUNK_THREADS = 32


def _job_name() -> str:
    params = flow_run.parameters
    source = params.get("prompt_file") or {}
    value = source.get("value", "") if isinstance(source, dict) else getattr(source, "value", "")
    name = LocalPath(str(value)).name if len(str(value)) < 512 else "raw-bytes"
    return f"{params.get('model', 'model')} · {name or 'prompts'}"


@flow(
    name=FLOW_NAME,
    flow_run_name=_job_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CHUNK_THREADS),  # type: ignore[arg-type]
    persist_result=False,
    log_prints=True,
)
def batch_job(
    model: str,
    prompt_file: Path,
    options: Options | None = None,
    num_generations: int = 1,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Run every prompt of ``prompt_file`` through ``model``; write success and error JSONL files."""
    settings = Settings()
    deadline = Deadline.after(settings.job_timeout_s)  # per run: a resumed job gets a fresh one
    job_id = str(flow_run.id)
    layout = job_layout(job_id, {"output_dir": output_dir}, settings.jobs_dir)
    reporter = RunReporter(job_id, layout)
    try:
        return _run(settings, reporter, layout, deadline, model, prompt_file, options, num_generations)
    except BatchInferError as exc:
        reporter.progress.error_code = exc.code
        reporter.progress.error_message = exc.message
        reporter.push(force=True)
        raise JobError(exc.message, code=exc.code) from exc


def _run(
    settings: Settings,
    reporter: RunReporter,
    layout: JobLayout,
    deadline: Deadline,
    model: str,
    prompt_file: Path,
    options: Options | None,
    num_generations: int,
) -> dict[str, Any]:
    reporter.set_phase(PHASE_VALIDATING)
    config = load_catalog(settings.models).get(model)
    params = sampling_params(options or Options(), num_generations, settings.default_max_tokens)
    summary = validate(
        prompt_file,
        str(layout.root),
        params,
        settings.chunk_size,
    )
    progress = reporter.progress
    progress.total, progress.failed = summary.lines, summary.invalid
    progress.chunks, progress.blank_lines = len(summary.chunks), summary.blank_lines

    if summary.file_error is not None:
        gather(str(layout.root), [], summary.lines, summary.file_error)
        progress.outputs_ready = True
        raise JobError(summary.file_error.message, code=summary.file_error.code)

    reporter.set_phase(PHASE_INFERRING)
    context = EngineContext(cache_dir=settings.cache_dir, threads=settings.threads)
    engine = get_engine(config, context)  # load once here, so chunk threads share it
    window = min(settings.max_parallel_chunks or engine.max_parallel_chunks, MAX_CHUNK_THREADS)
    key = chunk_key(
        summary.input_sha256, summary.chunk_size, config.model_dump_json(), params.model_dump_json()
    )
    result_paths = [str(layout.chunk_result(c.index, key)) for c in summary.chunks]

    def submit(chunk: Any) -> PrefectFuture[ChunkCounts]:
        return infer_chunk.submit(chunk.index, chunk.input_path, result_paths[chunk.index], config, context)

    error_codes: Counter[str] = Counter()
    try:
        for counts in windowed(submit, summary.chunks, window, deadline):
            progress.completed += counts.succeeded
            progress.failed += counts.failed
            progress.prompt_tokens += counts.prompt_tokens
            progress.completion_tokens += counts.completion_tokens
            progress.chunks_done += 1
            error_codes.update(counts.error_codes)
            reporter.push()
    except DeadlinePassed:
        raise deadline.exceeded(reporter.flow_run_id, progress.chunks_done, progress.chunks) from None

    reporter.set_phase(PHASE_GATHERING)
    gathered = gather(str(layout.root), result_paths, summary.lines)
    progress.completed, progress.failed = gathered.succeeded, gathered.failed
    progress.outputs_ready = True
    reporter.push(force=True)
    if model_unreachable(gathered.succeeded, error_codes):
        # These results hold no answer, only connection errors: drop them, so that a resume
        # (once the server is back) asks the server again instead of reusing them.
        for result_path in result_paths:
            LocalPath(result_path).unlink(missing_ok=True)
        base_url = getattr(config, "base_url", None)
        raise unreachable_error(reporter.flow_run_id, config.id, base_url, error_codes["connection_error"])
    return {
        "job_dir": str(layout.root),
        "request_counts": {
            "total": summary.lines,
            "completed": gathered.succeeded,
            "failed": gathered.failed,
        },
    }
