"""``batchinfer run``: one job in this process, with a progress bar; prints the final BatchInference."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path as LocalPath
from urllib.parse import urlparse

from batchinfer.catalog import load_catalog
from batchinfer.contract import Options, Path, PathType, SubmitJobRequest
from batchinfer.errors import BatchInferError, RequestError
from batchinfer.jobview import JobProgress
from batchinfer.prefect_env import apply_prefect_env
from batchinfer.preflight import check_prefect_api
from batchinfer.settings import Settings
from batchinfer.submission import prepare_job


def _prompt_path(text: str) -> Path:
    if urlparse(text).scheme in {"", "c", "d"}:  # a plain (or Windows drive) path
        return Path(type=PathType.filepath, value=str(LocalPath(text).expanduser().resolve()))
    return Path(type=PathType.uri, value=text)


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
        )
        params = prepare_job(request, settings, load_catalog(settings.models), args.output_dir)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"error: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    except RequestError as exc:
        print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except BatchInferError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    apply_prefect_env(settings, os.environ)  # Prefect reads it when first imported: before that
    if external := os.environ.get("PREFECT_API_URL"):
        check_prefect_api(
            external,
            "start that server, fix PREFECT_API_URL (or the Prefect profile that sets it), or unset it "
            "to run on a temporary Prefect server.",
        )
    return _run_flow(params.model_dump(mode="json", exclude_none=True), settings)


def _run_flow(parameters: dict[str, object], settings: Settings) -> int:
    from prefect.client.orchestration import get_client
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from batchinfer import reporting
    from batchinfer.api.backend import snapshot
    from batchinfer.engines.registry import close_engines
    from batchinfer.flows.batch_job import batch_job
    from batchinfer.jobview import batch_inference

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task_id = bar.add_task("validating", total=None, failed=0)

        def on_progress(job_id: str, progress: JobProgress) -> None:
            done = progress.completed + progress.failed
            bar.update(
                task_id,
                description="running" if progress.total else "validating",
                total=progress.total or None,
                completed=done,
                failed=progress.failed,
            )

        reporting.add_listener(on_progress)
        try:
            state = batch_job(**parameters, return_state=True)
        finally:
            reporting.remove_listener(on_progress)
            close_engines()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        job = batch_inference(snapshot(client.read_flow_run(flow_run_id), settings.jobs_dir))
    print(job.model_dump_json(indent=2))
    return 0 if job.status.value == "completed" else 1
