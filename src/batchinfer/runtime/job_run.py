"""One run of a job, as data and phases (as Prefect's own ``FlowRunEngine`` keeps a run's state in
one object): ``JobRun.validate()`` splits the prompt file into chunks and line errors,
``infer()`` runs the chunks through the model in a window, ``finish()`` gathers the outputs and
says how the job ended. ``lifecycle()`` wraps the three: a cancel (the UI, ``cancel_job``, the
runner's SIGTERM), the completion window (``expires_at``), the job's deadline and its errors, so
the phases themselves read as the design does.

A stop (cancel or expiry) never cuts a phase short in the middle of writing: the chunks in flight
finish, the ones never started are recorded ``cancelled`` (or ``expired``), and ``finish`` still
writes both output files. The Prefect tasks it calls are injected (``JobTasks``), so the flow in
``flows/batch_job.py`` wires them and this module imports no top-level ``tasks``.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import Engine, InFlightCap, PacedEngine, SamplingParams
from batchinfer.engines.catalog import ModelCatalog, load_catalog
from batchinfer.engines.configs import EngineContext, OpenAIEngineConfig
from batchinfer.engines.registry import AnyModelConfig, get_engine
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import BatchInferError, JobError, UnknownModelError, rerun_hint, resume_hint
from batchinfer.jobspec import (
    PHASE_GATHERING,
    PHASE_INFERRING,
    PHASE_VALIDATING,
    JobParameters,
    LineChecks,
)
from batchinfer.pipeline.batch_checks import BatchRules
from batchinfer.pipeline.chunk_run import ChunkCounts, ChunkFiles, run_chunk
from batchinfer.pipeline.chunking import chunk_key
from batchinfer.pipeline.gather import GatherCounts, gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.jobstore import job_place
from batchinfer.pipeline.publish import Publisher
from batchinfer.pipeline.result_cache import CacheSpec
from batchinfer.pipeline.tables import PromptTemplate
from batchinfer.pipeline.validation import ChunkSpec, ValidationSummary
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
from batchinfer.runtime.executors import MAX_CHUNK_THREADS, ChunkExecutor, ChunkWork, chunk_executor
from batchinfer.runtime.fail_fast import FailFastRules, OutcomeTally
from batchinfer.runtime.heap import quiet_collector
from batchinfer.runtime.model_limits import chunk_slots, ensure_limit, holding_share, shared_limit
from batchinfer.runtime.model_rates import ensure_rate_limits
from batchinfer.runtime.reporting import RunReporter
from batchinfer.runtime.summary import PhaseClock
from batchinfer.runtime.unreachable import model_unreachable, unreachable_error
from batchinfer.settings import Settings

if TYPE_CHECKING:
    from prefect import Task
    from prefect.states import State

JobResult = dict[str, Any]


@dataclass(frozen=True)
class JobTasks:
    """The Prefect tasks a run calls: what the Prefect UI shows as its task runs."""

    validate: Callable[..., ValidationSummary]
    infer_chunk: Task[[ChunkWork], ChunkCounts]
    gather: Callable[..., GatherCounts]


@dataclass
class JobRun:
    """A job's one run: what it was asked (``params``), what it found, what it has done."""

    job_id: str
    params: JobParameters
    tasks: JobTasks
    settings: Settings
    layout: JobLayout  # where it works; with a store (``place``), the files go up there too
    publisher: Publisher
    reporter: RunReporter
    deadline: Deadline  # per run: a resumed job gets a fresh one
    stop: StopSignal
    clock: PhaseClock = field(default_factory=PhaseClock)
    config: AnyModelConfig | None = None
    summary: ValidationSummary | None = None
    result_paths: list[str] = field(default_factory=list)
    submitted: set[int] = field(default_factory=set)
    error_codes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def start(cls, job_id: str, params: JobParameters, tasks: JobTasks, settings: Settings) -> JobRun:
        place = job_place(job_id, params.model_dump(include={"output_dir", "output_url"}), settings.jobs_dir)
        publisher = Publisher(place)
        reporter = RunReporter(job_id, place.layout, place.root, publisher.progress)
        deadline = Deadline.after(settings.jobs.job_timeout_s)
        return cls(
            job_id, params, tasks, settings, place.layout, publisher, reporter, deadline, stop_signal(job_id)
        )

    @contextmanager
    def lifecycle(self) -> Iterator[None]:
        """Cancel, expiry, deadline and errors around the phases, with the collector kept quiet
        (``heap``). A SIGTERM sets the stop signal until the very end: a cancel's SIGTERM must
        not cut the gather short."""
        watcher = CancelWatcher(self.job_id, self.stop, prefect_state_reader(self.job_id))
        try:
            with (
                sigterm_sets(self.stop),
                watcher,
                expiring(self.stop, self.params.expires_at),
                quiet_collector(),  # full collections would walk Prefect's whole heap, often
            ):
                yield
        except (BatchInferError, DeadlinePassed) as exc:
            error = self._deadline_error() if isinstance(exc, DeadlinePassed) else exc
            progress = self.reporter.progress
            progress.error_code, progress.error_message = error.code, error.message
            self.reporter.push(force=True)
            raise JobError(error.message, code=error.code) from exc
        finally:
            self.clock.stop()
            self.reporter.publish_summary(self.params.model, self.clock.seconds, PHASE_INFERRING)
            forget(self.job_id)

    # -- the phases ---------------------------------------------------------------------------

    def validate(self) -> ValidationSummary:
        """The prompt file as chunk files and line errors; a file unusable as a whole fails the
        job, its error in the error file."""
        self._enter(PHASE_VALIDATING)
        catalog = load_catalog(self.settings.models)
        rules = self._batch_rules(catalog)
        self.config = self._model_config(catalog, rules)
        params, defaults = self._sampling()
        prompt = PromptTemplate(template=self.params.prompt_template, system_prompt=self.params.system_prompt)
        summary = self.tasks.validate(
            self.params.prompt_file,
            str(self.layout.root),
            params,
            # No model: every line says so (model_not_found) and the job fails before it chunks.
            self.settings.jobs.chunk_size_for(self.config) if self.config else 1,
            defaults,
            self.params.endpoint,
            prompt=prompt,
            rules=rules,
        )
        progress = self.reporter.progress
        progress.endpoint, progress.total, progress.failed = summary.endpoint, summary.lines, summary.invalid
        progress.chunks, progress.blank_lines = len(summary.chunks), summary.blank_lines
        progress.deduplicated = summary.duplicates
        self.publisher.validated()
        if summary.file_error is not None:
            self.tasks.gather(str(self.layout.root), [], summary.lines, summary.file_error)
            self.publisher.gathered()
            progress.outputs_ready = True
            raise JobError(summary.file_error.message, code=summary.file_error.code)
        assert self.config is not None  # the valid lines name a model that is served
        self.stop.tally = OutcomeTally(self._fail_fast_rules())
        # Everything that shapes a chunk's requests: a resumed job reuses results only when all match.
        shape = (
            f"{params.model_dump_json()}|{defaults.model_dump_json()}|{self.params.endpoint}"
            f"|{prompt.model_dump_json() if prompt.is_set else ''}|dedupe={self.settings.jobs.deduplicate}"
        )
        key = chunk_key(summary.input_sha256, summary.chunk_size, self.config.model_dump_json(), shape)
        self.result_paths = [str(self.layout.chunk_result(c.index, key)) for c in summary.chunks]
        self.publisher.resume_from_store([Path(p) for p in self.result_paths])
        progress.chunk_key, progress.chunk_first_lines = key, [c.first_line for c in summary.chunks]
        self.summary = summary
        return summary

    def infer(self) -> None:
        """Every chunk through the model, a window of them at a time, within the model's share of
        its cross-job limit. Once stopped, the chunks never started are recorded as stopped."""
        assert self.config is not None and self.summary is not None
        self._enter(PHASE_INFERRING)
        context = EngineContext(cache_dir=self.settings.cache_dir, threads=self.settings.jobs.threads)
        engine = get_engine(self.config, context)  # loaded here, once, so chunk threads share it
        paced = engine if isinstance(engine, PacedEngine) else None
        if paced is not None:
            self._share_rates(paced)
        window = min(self.settings.jobs.max_parallel_chunks or engine.max_parallel_chunks, MAX_CHUNK_THREADS)
        slots = self._model_slots(window)
        chunks = self.summary.chunks
        with (
            chunk_executor(self.settings, self.job_id, self.tasks.infer_chunk) as executor,
            self._model_share(slots, min(window, len(chunks))) as held,
        ):
            cap = None if held is None or slots is None else InFlightCap(self.job_id, held * slots, slots)
            submit = self._submitter(executor, context, cap)
            for counts in windowed(
                submit, chunks, window if held is None else held, self.deadline, self.stop
            ):
                if paced is not None:
                    self.reporter.note_pace(paced.pace())
                self._count(counts)
        if self.stop.is_set():  # the chunks in flight have finished; the ones never started are stopped
            self._record_unstarted(engine, chunks)

    def finish(self) -> JobResult | State[Any]:
        """Both output files, gathered in input order, and how the job ended."""
        assert self.config is not None and self.summary is not None
        self.clock.enter(PHASE_GATHERING)
        gathered = self._gather(self.summary.lines)
        self.publisher.gathered()
        progress = self.reporter.progress
        progress.completed, progress.failed = gathered.succeeded, gathered.failed
        progress.outputs_ready = True
        self.reporter.push(force=True)
        tally = self.stop.tally
        # A job that stopped itself, or one that ran to the end and failed in a way it judges whole
        # (a small job whose every answer was a 401, its error rate): failed with that code.
        if tally is not None and (
            self.stop.failed_fast or (not self.stop.is_set() and tally.final_verdict())
        ):
            raise tally.error(self.job_id, self.config.id)
        if self.stop.is_set():
            return self._stopped(cut_short=self.error_codes[self.stop.abandoned.code])
        if model_unreachable(gathered.succeeded, self.error_codes):
            # These results hold no answer, only connection errors: drop them, so that a resume
            # (once the server is back) asks the server again instead of reusing them.
            self.publisher.dropped([Path(p) for p in self.result_paths])
            urls = self.config.replica_urls if isinstance(self.config, OpenAIEngineConfig) else []
            raise unreachable_error(
                self.job_id, self.config.id, urls, self.error_codes[ErrorCode.connection_error]
            )
        counts = {"total": self.summary.lines, "completed": gathered.succeeded, "failed": gathered.failed}
        return {"job_dir": str(self.layout.root), "request_counts": counts}

    # -- inside the phases --------------------------------------------------------------------

    def _enter(self, phase: str) -> None:
        self.reporter.set_phase(phase)
        self.clock.enter(phase)

    def _batch_rules(self, catalog: ModelCatalog) -> BatchRules | None:
        """An OpenAI batch's line checks (``batch_checks``); None for the seed's per-line parsing."""
        if self.params.line_checks is LineChecks.seed:
            return None
        return BatchRules(
            endpoint=self.params.endpoint or Endpoint.chat,
            model=self.params.model,
            served=frozenset(catalog.ids()),
            fail_batch=self.params.line_checks is LineChecks.openai,
        )

    def _model_config(self, catalog: ModelCatalog, rules: BatchRules | None) -> AnyModelConfig | None:
        """The job's model. An OpenAI batch may name one that is not served: its lines say so, one
        by one, and it fails at validation, before anything needs the model (None until then)."""
        try:
            return catalog.get(self.params.model)
        except UnknownModelError:
            if rules is None:
                raise
            return None

    def _sampling(self) -> tuple[SamplingParams, RequestDefaults]:
        options, n = self.params.options, self.params.num_generations
        return SamplingParams.from_options(
            options, n, self.settings.jobs.default_max_tokens
        ), RequestDefaults.from_options(options, n)

    def _fail_fast_rules(self) -> FailFastRules:
        assert self.config is not None
        rate = self.params.max_error_rate  # the job's own value wins over the model's
        if rate is None:
            rate = self.config.max_error_rate
        return FailFastRules(min_fatal=self.settings.jobs.fail_fast_after or None, max_error_rate=rate)

    def _model_slots(self, window: int) -> int | None:
        """Each chunk's part of the model's cross-job limit (None: the model has none)."""
        assert self.config is not None
        limit = shared_limit(self.config) if self.settings.jobs.share_model_limits else None
        if limit is None:
            return None
        ensure_limit(self.config.id, limit)
        return chunk_slots(limit, window)

    def _share_rates(self, engine: PacedEngine) -> None:
        """The model's per-minute limits held with every other process, through Prefect."""
        config = self.config
        if not isinstance(config, OpenAIEngineConfig) or not self.settings.jobs.share_model_limits:
            return
        if (grants := ensure_rate_limits(config)) is not None:
            engine.share_rates(grants)

    def _model_share(self, slots: int | None, window: int) -> AbstractContextManager[int | None]:
        """The job's share of its model's cross-job limit, in chunks (None: the model has none)."""
        assert self.config is not None
        if slots is None:
            return nullcontext(None)
        return holding_share(
            self.config.id, slots, max(window, 1), self.stop, self.layout.work / "model-lease.txt"
        )

    def _submitter(
        self, executor: ChunkExecutor, context: EngineContext, cap: InFlightCap | None
    ) -> Callable[[ChunkSpec], DoneFuture[ChunkCounts]]:
        assert self.config is not None
        config, settings = self.config, self.settings
        cache = None
        if config.cache:  # by the config's JSON: a changed setting of the model changes the answers
            max_bytes = settings.jobs.result_cache_max_bytes
            cache = CacheSpec(str(settings.result_cache_path), config.model_dump_json(), max_bytes)

        def submit(chunk: ChunkSpec) -> DoneFuture[ChunkCounts]:
            self.submitted.add(chunk.index)
            work = ChunkWork(
                chunk.index,
                chunk.input_path,
                self.result_paths[chunk.index],
                config,
                context,
                self.job_id,
                cap,
                cache,
            )
            return executor.submit(work)

        return submit

    def _count(self, counts: ChunkCounts) -> None:
        progress = self.reporter.progress
        progress.completed += counts.succeeded
        progress.failed += counts.failed
        progress.prompt_tokens += counts.prompt_tokens
        progress.completion_tokens += counts.completion_tokens
        progress.chunks_done += 1
        self.error_codes.update(counts.error_codes)
        self.publisher.chunk_done(Path(self.result_paths[counts.index]))  # before the count that says so
        self.reporter.push()

    def _record_unstarted(self, engine: Engine, chunks: list[ChunkSpec]) -> None:
        for chunk in chunks:
            if chunk.index not in self.submitted:
                files = ChunkFiles(chunk.index, Path(chunk.input_path), Path(self.result_paths[chunk.index]))
                self._count(run_chunk(files, engine, self.stop))

    def _gather(self, lines: int) -> GatherCounts:
        if self.stop.is_set():
            # Neither a phase change (it would overwrite CANCELLING) nor the gather *task* (a task
            # re-arms Prefect's own SIGTERM handler while it runs, and the runner's SIGTERM for this
            # cancel may land just then).
            return gather_outputs(self.layout, [Path(p) for p in self.result_paths], lines)
        self.reporter.set_phase(PHASE_GATHERING)
        return self.tasks.gather(str(self.layout.root), self.result_paths, lines)

    def _deadline_error(self) -> JobError:
        progress = self.reporter.progress
        return self.deadline.exceeded(self.job_id, progress.chunks_done, progress.chunks)

    def _stopped(self, cut_short: int) -> State[Any]:
        """The end of a job that stopped early, its outputs written: Failed ``expired`` when its
        completion window passed, Cancelled when someone asked (the UI, ``cancel_job``) or
        ``batchinfer run`` was interrupted. A SIGTERM with no cancel behind it (a worker shutting
        down) is handed back to Prefect as the termination it is: the job ends crashed, resumable."""
        from prefect.exceptions import TerminationSignal
        from prefect.states import Cancelled, Failed

        expired = self.stop.reason == EXPIRED_REASON
        interrupted = self.stop.reason == INTERRUPTED_REASON  # `batchinfer run`: a cancel without a runner
        if not (expired or interrupted) and prefect_state_reader(self.job_id)() not in CANCEL_STATE_TYPES:
            raise TerminationSignal(signal.SIGTERM)
        progress = self.reporter.progress
        code = self.stop.abandoned.code
        message = (
            f"{'Expired: the completion window passed' if expired else 'Cancelled'}: "
            f"{progress.completed} lines succeeded and {progress.failed - cut_short} failed before "
            f"that; the {cut_short} lines it cut short are in the error file as `{code}`. "
            f"{rerun_hint(str(self.layout.root)) if interrupted else resume_hint(self.job_id)}"
        )
        progress.error_code, progress.error_message = code, message
        self.reporter.push(force=True)
        return Failed(message=message) if expired else Cancelled(message=message)
