"""``batchinfer run``: one job in this process, with a progress bar; prints the final BatchInference.

Everything that can be wrong with the request is refused before any server starts. Without
``PREFECT_API_URL`` the job runs against the data dir's warm local Prefect server (``warm_prefect``),
started by the first run and kept for later ones, or with ``BATCHINFER_LOCAL_SERVER_IDLE_S=0`` a
temporary one of its own; either runs in a session of its own, so that a terminal's Ctrl-C reaches
this process only.

The flow runs in a worker thread; this (main) thread keeps the signals. The first Ctrl-C or SIGTERM
stops the job as a cancel does: no new request goes out, requests in flight are abandoned, both
output files are written, and the job ends cancelled, with the command that finishes it. A second
one ends everything at once.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path as LocalPath
from types import FrameType
from typing import Any
from urllib.parse import urlparse

from batchinfer.api.submission import prepare_job
from batchinfer.cli.prefect_env import PREFECT_SOURCES, PrefectSetup, apply_prefect_env, use_api_url
from batchinfer.cli.preflight import check_prefect_api, free_port
from batchinfer.cli.warm_prefect import using, warm_prefect_url
from batchinfer.contract import BatchInference, Options, Path, PathType, SubmitJobRequest
from batchinfer.engines.catalog import load_catalog
from batchinfer.errors import RequestError
from batchinfer.pipeline.jobfiles import JobProgress
from batchinfer.settings import Settings

FIRST_ID_WAIT_S = 3.0  # an interrupt before the job has an id waits this long for one, then quits
STOP_GRACE_S = 20.0  # an interrupted job that has not stopped by then is ended the hard way


def _prompt_path(text: str) -> Path:
    if urlparse(text).scheme in {"", "c", "d"}:  # a plain (or Windows drive) path
        return Path(type=PathType.filepath, value=str(LocalPath(text).expanduser().resolve()))
    return Path(type=PathType.uri, value=text)


def _template(template: str | None, prompt_column: str | None) -> str | None:
    """``--prompt-column C`` alone is the template ``{C}``; with ``--template``, the template's
    ``{prompt}`` is ``{C}``. The field name is escaped neither way: a column name with braces in it
    cannot be a template field."""
    if prompt_column is None:
        return template
    if template is None:
        return "{" + prompt_column + "}"
    return template.replace("{prompt}", "{" + prompt_column + "}").replace(
        "{prompt:", "{" + prompt_column + ":"
    )


def run_in_foreground(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    try:
        request = SubmitJobRequest(
            model=args.model,
            prompt_file_path=_prompt_path(args.prompts),
            options=Options(
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                logprobs=args.logprobs or None,
            ),
            num_generations=args.num_generations,
            prompt_template=_template(args.template, args.prompt_column),
            system_prompt=args.system_prompt,
            max_error_rate=args.max_error_rate,
        )
    except ValidationError as exc:  # the flags' own checks catch these first; the contract has the last word
        error = exc.errors()[0]
        raise RequestError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}", field="") from None
    params = prepare_job(request, settings, load_catalog(settings.models), args.output_dir)
    prefect = apply_prefect_env(settings)
    if prefect.api_url:
        check_prefect_api(
            prefect.api_url,
            f"start that server, or fix or unset the PREFECT_API_URL that Prefect reads ({PREFECT_SOURCES}) "
            "to run on a Prefect server of batchinfer's own.",
        )
    url, in_use = (
        (prefect.api_url, nullcontext()) if prefect.api_url else _local_prefect_server(settings, prefect)
    )
    use_api_url(url)
    with in_use:
        return _run_flow(params.model_dump(mode="json", exclude_none=True), settings)


def _local_prefect_server(
    settings: Settings, prefect: PrefectSetup
) -> tuple[str, AbstractContextManager[None]]:
    """The warm local server (``warm_prefect``) and what marks it used while the job runs, or with
    ``local_server_idle_s`` 0 a temporary one."""
    if idle_s := settings.server.local_server_idle_s:
        return warm_prefect_url(settings, prefect), using(prefect.home, idle_s)
    return _temporary_prefect_server(settings, prefect), nullcontext()


def _temporary_prefect_server(settings: Settings, prefect: PrefectSetup) -> str:
    """Start a Prefect server for this run; its API URL. It stops when this process exits, after
    Prefect's own exit hooks have sent the last logs and events (they run before ``atexit``'s)."""
    from batchinfer.cli.children import Supervisor
    from batchinfer.cli.local_prefect import launch_prefect_server

    supervisor = Supervisor()
    atexit.register(supervisor.stop_all, 5.0)
    print(
        f"Starting a temporary Prefect server: {prefect.why_a_server_of_our_own()}.",
        file=sys.stderr,
        flush=True,
    )
    log = settings.home / "logs" / "run-prefect-server.log"
    return launch_prefect_server(supervisor, free_port(), dict(os.environ), log, ui=False).wait_until_ours()


def _run_flow(parameters: dict[str, Any], settings: Settings) -> int:
    from batchinfer.engines.registry import close_engines
    from batchinfer.runtime import reporting

    job = ForegroundJob(parameters)
    with _progress_bar() as on_progress:
        reporting.add_listener(job.on_progress)
        reporting.add_listener(on_progress)
        try:
            job.run()
        finally:
            reporting.remove_listener(on_progress)
            reporting.remove_listener(job.on_progress)
            close_engines()
    final = job.result(settings)
    print(final.model_dump_json(indent=2))
    if results := final.metadata.get("results_file_path"):
        print(f"Results table: {results['value']}", file=sys.stderr)
    if job.interrupted_by is not None:
        error = final.metadata.get("error", {})
        print(f"Interrupted. {error.get('message', '')}".rstrip(), file=sys.stderr)
        return 128 + job.interrupted_by
    return 0 if final.status.value == "completed" else 1


class ForegroundJob:
    """The flow in a worker thread, stopped cooperatively by the main thread's first signal."""

    def __init__(self, parameters: dict[str, Any]) -> None:
        self.parameters = parameters
        self.job_id: str | None = None
        self.interrupted_by: int | None = None
        self._interrupted_at = 0.0
        self._state: Any = None
        self._error: BaseException | None = None

    def on_progress(self, job_id: str, progress: JobProgress) -> None:
        self.job_id = job_id

    def _target(self) -> None:
        from batchinfer.flows.batch_job import batch_job

        try:
            self._state = batch_job(**self.parameters, return_state=True)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._error = exc

    def run(self) -> None:
        thread = threading.Thread(target=self._target, name="batch-job", daemon=True)
        with _signals_to(self._interrupt):
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
                self._stop_if_interrupted()
        if self._error is not None:
            raise self._error

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted_by is not None:
            quit_now(128 + signum, "Stopped at once.")
        self.interrupted_by, self._interrupted_at = signum, time.monotonic()
        print(
            "\nStopping: no new requests; what finished is kept (Ctrl-C again to quit at once) ...",
            file=sys.stderr,
            flush=True,
        )

    def _stop_if_interrupted(self) -> None:
        from batchinfer.runtime.cancellation import INTERRUPTED_REASON, stop_signal

        if self.interrupted_by is None:
            return
        waited = time.monotonic() - self._interrupted_at
        if self.job_id is not None:
            stop_signal(self.job_id).set(INTERRUPTED_REASON)
            if waited > STOP_GRACE_S:
                quit_now(128 + self.interrupted_by, f"The job did not stop within {STOP_GRACE_S:.0f} s.")
        elif waited > FIRST_ID_WAIT_S:
            quit_now(128 + self.interrupted_by, "Interrupted before the job started; nothing ran.")

    def result(self, settings: Settings) -> BatchInference:
        from prefect.client.orchestration import get_client

        from batchinfer.control.backend import snapshot
        from batchinfer.control.jobview import batch_inference

        flow_run_id = self._state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            return batch_inference(snapshot(client.read_flow_run(flow_run_id), settings.jobs_dir))


@contextmanager
def _signals_to(handler: Any) -> Any:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def quit_now(code: int, message: str) -> None:
    """End this process and every process it started, now (a second Ctrl-C, or a job that will
    not stop): no output files are written beyond those already there."""
    import psutil

    print(message, file=sys.stderr, flush=True)
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            continue
    os._exit(code)


def _progress_bar() -> AbstractContextManager[Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task_id = bar.add_task("validating", total=None, failed=0)

    def on_progress(job_id: str, progress: JobProgress) -> None:
        bar.update(
            task_id,
            description="running" if progress.total else "validating",
            total=progress.total or None,
            completed=progress.completed + progress.failed,
            failed=progress.failed,
        )

    @contextmanager
    def showing() -> Any:
        with bar:
            yield on_progress

    return showing()
