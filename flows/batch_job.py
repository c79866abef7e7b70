"""The batch job as a Prefect flow: validate -> infer-chunk x N (parallel) -> gather.

The flow run id is the job id. The flow names its RUNNING phases (Validating, Inferring,
Gathering), publishes counts as it goes and a summary at the end (``batchinfer.runtime.reporting``), and
stops early, keeping its results, when cancelled (``batchinfer.runtime.cancellation``); everything else
lives in plain modules that the tasks call.
"""

from __future__ import annotations

import signal
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path as LocalPath
from typing import Any
from uuid import UUID

from batchinfer.tasks.gather import gather
from batchinfer.tasks.infer import infer_chunk
from batchinfer.tasks.validate import validate
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from batchinfer.contract import Options, Path
from batchinfer.control.names import FLOW_NAME
from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import SamplingParams
from batchinfer.engines.catalog import load_catalog
from batchinfer.engines.configs import EngineContext
from batchinfer.engines.registry import get_engine
from batchinfer.errors import BatchInferError, JobError, rerun_hint, resume_hint
from batchinfer.jobspec import PHASE_GATHERING, PHASE_INFERRING, PHASE_VALIDATING
from batchinfer.pipeline.chunk_run import ChunkCounts, run_chunk
from batchinfer.pipeline.chunking import chunk_key
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout, job_layout
from batchinfer.runtime.cancellation import (
    CANCEL_STATE_TYPES,
    EXPIRED_REASON,
    INTERRUPTED_REASON,
    CancelWatcher,
    StopSignal,
    expiring,
    forget,
    prefect_state_reader,
    sigterm_sets,
    stop_signal,
)
from batchinfer.runtime.deadline import Deadline, DeadlinePassed, DoneFuture, windowed
from batchinfer.runtime.model_limits import chunk_slots, ensure_limit, holding_share, shared_limit
from batchinfer.runtime.reporting import RunReporter
from batchinfer.runtime.scaleout import dask_chunks
from batchinfer.runtime.summary import PhaseClock
from batchinfer.runtime.unreachable import model_unreachable, unreachable_error
from batchinfer.settings import Settings

# Upper bound on chunk threads; the engine's ``max_parallel_chunks`` picks the actual window.
MAX_CHUNK_THREADS = 32


def _job_name() -> str:
    params = flow_run.parameters
    source = params.get("prompt_file") or {}
    value = source.get("value", "") if isinstance(source, dict) else getattr(source, "value", "")
    name = LocalPath(str(value)).name if len(str(value)) < 512 else "raw-bytes"
    return f"{params.get('model', 'model')} · {name or 'prompts'}"


def _tag_with_model(job_id: str, model: str) -> None:
    """``model:<id>``, as the adapter tags the runs it creates, also on runs started another way
    (a deployment's schedule, the UI, a direct call), so the UI can filter every job by model."""
    from prefect.client.orchestration import get_client

    tag = f"model:{model}"
    tags = list(flow_run.tags or [])
    if tag not in tags:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(job_id), tags=[*tags, tag])


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
    expires_at: datetime | None = None,
    endpoint: Endpoint | None = None,
) -> dict[str, Any] | State[Any]:
    """Run every prompt of ``prompt_file`` through ``model``; write success and error JSONL files.

    ``expires_at``: when it passes, the job stops as for a cancel and fails ``expired``, its finished
    lines in the success file and the rest in the error file as ``expired`` (an OpenAI batch's
    ``completion_window``). ``endpoint``: the one endpoint every line must name (an OpenAI batch's);
    None: the first valid line's."""
    settings = Settings()
    deadline = Deadline.after(settings.job_timeout_s)  # per run: a resumed job gets a fresh one
    job_id = str(flow_run.id)
    layout = job_layout(job_id, {"output_dir": output_dir}, settings.jobs_dir)
    reporter = RunReporter(job_id, layout)
    clock = PhaseClock()
    _tag_with_model(job_id, model)
    try:
        return _run(
            settings,
            reporter,
            clock,
            layout,
            deadline,
            model,
            prompt_file,
            options,
            num_generations,
            expires_at,
            endpoint,
        )
    except BatchInferError as exc:
        reporter.progress.error_code = exc.code
        reporter.progress.error_message = exc.message
        reporter.push(force=True)
        raise JobError(exc.message, code=exc.code) from exc
    finally:
        clock.stop()
        reporter.publish_summary(model, clock.seconds, PHASE_INFERRING)
        forget(job_id)


def _run(
    settings: Settings,
    reporter: RunReporter,
    clock: PhaseClock,
    layout: JobLayout,
    deadline: Deadline,
    model: str,
    prompt_file: Path,
    options: Options | None,
    num_generations: int,
    expires_at: datetime | None,
    endpoint: Endpoint | None,
) -> dict[str, Any] | State[Any]:
    job_id = reporter.flow_run_id
    reporter.set_phase(PHASE_VALIDATING)
    clock.enter(PHASE_VALIDATING)
    config = load_catalog(settings.models).get(model)
    options = options or Options()
    params = SamplingParams.from_options(options, num_generations, settings.default_max_tokens)
    defaults = RequestDefaults.from_options(options, num_generations)
    summary = validate(prompt_file, str(layout.root), params, settings.chunk_size, defaults, endpoint)
    progress = reporter.progress
    progress.endpoint = summary.endpoint
    progress.total, progress.failed = summary.lines, summary.invalid
    progress.chunks, progress.blank_lines = len(summary.chunks), summary.blank_lines

    if summary.file_error is not None:
        gather(str(layout.root), [], summary.lines, summary.file_error)
        progress.outputs_ready = True
        raise JobError(summary.file_error.message, code=summary.file_error.code)

    reporter.set_phase(PHASE_INFERRING)
    clock.enter(PHASE_INFERRING)
    context = EngineContext(cache_dir=settings.cache_dir, threads=settings.threads)
    engine = get_engine(config, context)  # load once here, so chunk threads share it
    window = min(settings.max_parallel_chunks or engine.max_parallel_chunks, MAX_CHUNK_THREADS)
    limit = shared_limit(config) if settings.share_model_limits else None
    slots = None
    if limit is not None:
        ensure_limit(config.id, limit)
        slots = chunk_slots(limit, window)
    # Everything that shapes a chunk's requests: a resumed job reuses results only when all match.
    requests_key = f"{params.model_dump_json()}|{defaults.model_dump_json()}|{endpoint}"
    key = chunk_key(summary.input_sha256, summary.chunk_size, config.model_dump_json(), requests_key)
    result_paths = [str(layout.chunk_result(c.index, key)) for c in summary.chunks]
    submitted: set[int] = set()

    dask = dask_chunks(settings, job_id)  # None: chunk tasks run on this process's threads

    def submit(chunk: Any) -> DoneFuture[ChunkCounts]:
        submitted.add(chunk.index)
        if dask is not None:
            params = {"model": config, "context": context, "job_id": job_id, "max_in_flight": slots}
            return dask.submit(
                infer_chunk, chunk.index, chunk.input_path, result_paths[chunk.index], **params
            )
        return infer_chunk.submit(
            chunk.index, chunk.input_path, result_paths[chunk.index], config, context, job_id, slots
        )

    error_codes: Counter[str] = Counter()

    def count(counts: ChunkCounts) -> None:
        progress.completed += counts.succeeded
        progress.failed += counts.failed
        progress.prompt_tokens += counts.prompt_tokens
        progress.completion_tokens += counts.completion_tokens
        progress.chunks_done += 1
        error_codes.update(counts.error_codes)
        reporter.push()

    stop = stop_signal(job_id)
    with sigterm_sets(stop):  # until the end: a cancel's SIGTERM must not cut the gather short
        try:
            with (
                CancelWatcher(job_id, stop, prefect_state_reader(job_id)),
                expiring(stop, expires_at),
                dask or nullcontext(),
                _model_share(config.id, slots, min(window, len(summary.chunks)), stop, layout) as held,
            ):
                chunks_at_once = window if held is None else held
                for counts in windowed(submit, summary.chunks, chunks_at_once, deadline, stop):
                    count(counts)
        except DeadlinePassed:
            raise deadline.exceeded(job_id, progress.chunks_done, progress.chunks) from None
        if stop.is_set():  # the chunks in flight have finished; the ones never started are cancelled
            for chunk in summary.chunks:
                if chunk.index not in submitted:
                    count(
                        run_chunk(
                            chunk.index,
                            LocalPath(chunk.input_path),
                            LocalPath(result_paths[chunk.index]),
                            engine,
                            stop,
                        )
                    )

        clock.enter(PHASE_GATHERING)
        if stop.is_set():
            # Neither a phase change (it would overwrite CANCELLING) nor the gather *task* (a task
            # re-arms Prefect's own SIGTERM handler while it runs, and the runner's SIGTERM for this
            # cancel may land just then).
            gathered = gather_outputs(layout, [LocalPath(p) for p in result_paths], summary.lines)
        else:
            reporter.set_phase(PHASE_GATHERING)
            gathered = gather(str(layout.root), result_paths, summary.lines)
        progress.completed, progress.failed = gathered.succeeded, gathered.failed
        progress.outputs_ready = True
        reporter.push(force=True)
        if stop.is_set():
            return _stopped(reporter, stop, cut_short=error_codes[stop.abandoned.code])
        if model_unreachable(gathered.succeeded, error_codes):
            # These results hold no answer, only connection errors: drop them, so that a resume
            # (once the server is back) asks the server again instead of reusing them.
            for result_path in result_paths:
                LocalPath(result_path).unlink(missing_ok=True)
            base_url = getattr(config, "base_url", None)
            raise unreachable_error(
                reporter.flow_run_id, config.id, base_url, error_codes["connection_error"]
            )
        return {
            "job_dir": str(layout.root),
            "request_counts": {
                "total": summary.lines,
                "completed": gathered.succeeded,
                "failed": gathered.failed,
            },
        }


def _model_share(
    model_id: str, slots: int | None, window: int, stop: StopSignal, layout: JobLayout
) -> AbstractContextManager[int | None]:
    """The job's share of its model's cross-job limit, in chunks (None: the model has none)."""
    if slots is None:
        return nullcontext(None)
    return holding_share(model_id, slots, max(window, 1), stop, layout.work / "model-lease.txt")


def _stopped(reporter: RunReporter, stop: StopSignal, cut_short: int) -> State[Any]:
    """The end of a job that stopped early, its outputs written: Failed ``expired`` when its
    completion window passed, Cancelled when someone asked (the UI, ``cancel_job``). A SIGTERM with
    no cancel behind it (a worker shutting down) is handed back to Prefect as the termination it
    is, so the job ends crashed, resumable, as it always did."""
    from prefect.exceptions import TerminationSignal

    job_id = reporter.flow_run_id
    expired = stop.reason == EXPIRED_REASON
    interrupted = stop.reason == INTERRUPTED_REASON  # `batchinfer run` was: a cancel without a runner
    if not (expired or interrupted) and prefect_state_reader(job_id)() not in CANCEL_STATE_TYPES:
        raise TerminationSignal(signal.SIGTERM)
    progress = reporter.progress
    code = stop.abandoned.code
    message = (
        f"{'Expired: the completion window passed' if expired else 'Cancelled'}: "
        f"{progress.completed} lines succeeded and {progress.failed - cut_short} failed before "
        f"that; the {cut_short} lines it cut short are in the error file as `{code}`. "
        f"{rerun_hint(str(reporter.layout.root)) if interrupted else resume_hint(job_id)}"
    )
    progress.error_code, progress.error_message = code, message
    reporter.push(force=True)
    return Failed(message=message) if expired else Cancelled(message=message)
