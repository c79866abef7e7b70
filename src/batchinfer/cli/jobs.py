"""``batchinfer status``, ``jobs`` and ``results`` (a running ``serve``, through the Python client,
at ``BATCHINFER_URL`` with ``BATCHINFER_API_TOKEN``), and ``models`` (the models file itself).

Output is for a person in a terminal; ``--json`` (and ``results --format jsonl``) for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchinfer.client import DEFAULT_URL, URL_ENV, BatchInferClient, BatchInferClientError
from batchinfer.contract import BatchInference
from batchinfer.errors import ServiceUnavailableError
from batchinfer.settings import Settings

CLIENT_TIMEOUT_S = 10.0
TEXT_WIDTH = 80  # characters of an answer or an error message in a table cell


def _console() -> Any:
    from rich.console import Console

    # Piped: wide enough that a job id or a path is never wrapped mid-way.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


@contextmanager
def _serve() -> Iterator[BatchInferClient]:
    """The client of the ``serve`` at ``BATCHINFER_URL``; its refusals become one-line errors."""
    client = BatchInferClient(timeout=CLIENT_TIMEOUT_S)
    try:
        yield client
    except BatchInferClientError as exc:
        if exc.status_code is None:
            url = os.environ.get(URL_ENV) or DEFAULT_URL
            raise ServiceUnavailableError(
                f"Nothing answers at {url} ({URL_ENV}); start the server with `batchinfer serve`, or "
                f"point {URL_ENV} at one that runs."
            ) from None
        raise ServiceUnavailableError(exc.errors[0].msg if exc.errors else exc.message) from None
    finally:
        client.close()


def status_command(args: argparse.Namespace) -> int:
    with _serve() as client:
        job = client.job_status(args.job_id)
    if args.json:
        print(job.model_dump_json(indent=2, exclude_none=True))
        return 0
    _console().print(_job_grid(job))
    return 0


def _counts(job: BatchInference) -> str:
    counts = job.metadata.get("request_counts", {})
    total, done, failed = (counts.get(k, 0) for k in ("total", "completed", "failed"))
    left = max(total - done - failed, 0)
    return f"{total:,} total, {done:,} succeeded, {failed:,} failed" + (f", {left:,} to go" if left else "")


def _job_grid(job: BatchInference) -> Any:
    from rich.table import Table

    metadata = job.metadata
    state = metadata.get("state", {})
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("Job", job.job_id)
    grid.add_row("Status", f"{job.status.value} ({state.get('name') or state.get('type', '?')})")
    grid.add_row("Model", str(metadata.get("model", "?")))
    grid.add_row("Created", job.created.strftime("%Y-%m-%d %H:%M:%S %Z"))
    grid.add_row("Lines", _counts(job))
    if chunks := metadata.get("chunks"):
        grid.add_row("Chunks", f"{chunks['done']}/{chunks['total']}")
    if error := metadata.get("error"):
        grid.add_row("Error", f"{error.get('code')}: {error.get('message')}")
    if job.input_file_path is not None:
        grid.add_row("Input", _shown(job.input_file_path.value))
    for label, path in (("Answers", job.success_file_path), ("Errors", job.error_file_path)):
        if path is not None:
            grid.add_row(label, path.value)
    return grid


def _shown(value: str) -> str:
    return value if len(value) <= 200 else "(the file's content, sent as raw_bytes)"


def jobs_command(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _serve() as client:
        page = client.list_jobs(status=args.status, model=args.model, limit=args.limit)
    if args.json:
        print(page.model_dump_json(indent=2, exclude_none=True))
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("JOB ID", "STATUS", "MODEL", "LINES", "SUCCEEDED", "FAILED", "CREATED"):
        table.add_column(column, no_wrap=True)
    for job in page.data:
        counts = job.metadata.get("request_counts", {})
        table.add_row(
            job.job_id,
            job.status.value,
            str(job.metadata.get("model", "?")),
            *(f"{counts.get(k, 0):,}" for k in ("total", "completed", "failed")),
            job.created.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console = _console()
    console.print(table if page.data else "No jobs match.")
    if page.has_more:
        console.print(f"Showing {len(page.data)} of {page.total}; --limit (up to 200) shows more.")
    return 0


def results_command(args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(args)
    with _serve() as client:
        job = client.job_status(args.job_id)
    path = job.error_file_path if args.errors else job.success_file_path
    if path is None:
        raise ServiceUnavailableError(_no_results(job))
    records = _records(Path(path.value), job)
    fmt = "jsonl" if args.json else args.format or ("table" if sys.stdout.isatty() else "jsonl")
    if fmt == "jsonl":
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        _console().print(_errors_table(records) if args.errors else _answers_table(records))
    return 0


def _follow(args: argparse.Namespace) -> int:
    """Print the job's answers (``--errors``: its error records) as JSONL as they finish, in input
    order, until it ends; exit 0 if it completed, 1 if it failed."""
    with _serve() as client:
        for record in client.follow_results(args.job_id):
            if ("error" in record) == args.errors:
                print(json.dumps(record, ensure_ascii=False), flush=True)
        job = client.job_status(args.job_id)
    return 0 if job.status.value == "completed" else 1


def _no_results(job: BatchInference) -> str:
    if job.status.value in ("validating", "running"):
        return (
            f"Job {job.job_id} is still {job.status.value} ({_counts(job)}); its results appear when it "
            f"ends: `batchinfer status {job.job_id}`."
        )
    error = job.metadata.get("error", {})
    return f"Job {job.job_id} ended {job.status.value} without output files: {error.get('message', '')}"


def _records(path: Path, job: BatchInference) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except OSError:
        raise ServiceUnavailableError(
            f"The results of job {job.job_id} are at {path} on the machine that runs serve; that file "
            "cannot be read here. Read it there, or copy it here."
        ) from None


def _clip(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= TEXT_WIDTH else flat[: TEXT_WIDTH - 1] + "…"


def _answers_table(records: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("LINE", "CUSTOM ID", "ANSWER", "FINISH"):
        table.add_column(column, no_wrap=column != "ANSWER")
    for record in records:
        first = (record.get("generations") or [{}])[0]
        table.add_row(
            str(record.get("line")),
            record.get("custom_id") or "",
            _clip(first.get("text") or ""),
            str(first.get("finish_reason") or ""),
        )
    return table


def _errors_table(records: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("LINE", "CUSTOM ID", "CODE", "MESSAGE"):
        table.add_column(column, no_wrap=column != "MESSAGE")
    for record in records:
        error = record.get("error") or {}
        line = record.get("line")
        table.add_row(
            "file" if line is None else str(line),
            record.get("custom_id") or "",
            str(error.get("code", "")),
            _clip(error.get("message", "")),
        )
    return table


def models_command(args: argparse.Namespace, settings: Settings) -> int:
    from batchinfer.engines.catalog import load_catalog

    catalog = load_catalog(settings.models)
    rows = [_model_row(model) for model in catalog.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "ENGINE", "SERVES", "LIMITS", "PRICE / 1M TOKENS (IN, OUT)"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["engine"], row["serves"], _limits_text(row["limits"]), _price_text(row))
    console = _console()
    console.print(table)
    console.print(f"From {settings.models or 'the embedded default (BATCHINFER_MODELS is unset)'}.")
    return 0


# The fields of each engine that bound what a job can do, as `models` shows them.
_LIMIT_FIELDS = {
    "openai": ("max_concurrency", "timeout_s", "max_retries"),
    "transformers": ("batch_size", "threads", "dtype"),
    "ctranslate2": ("max_batch_size", "threads", "compute_type"),
    "llamacpp": ("n_ctx", "n_threads", "n_batch"),
    "vllm": ("max_model_len", "tensor_parallel_size", "gpu_memory_utilization"),
}


def _model_row(model: Any) -> dict[str, Any]:
    serves = {
        "openai": lambda: f"{getattr(model, 'model', '')} at {', '.join(getattr(model, 'replica_urls', []))}",
        "vllm": lambda: str(getattr(model, "model", "")),
    }.get(
        model.engine, lambda: str(getattr(model, "path", None) or f"package {getattr(model, 'package', '')}")
    )
    limits = {name: getattr(model, name) for name in _LIMIT_FIELDS.get(model.engine, ())}
    if len(getattr(model, "replica_urls", ())) > 1:  # max_concurrency is then each one's
        limits["replicas"] = len(model.replica_urls)
    return {
        "id": model.id,
        "engine": model.engine,
        "serves": serves(),
        "limits": limits,
        "price_per_million_input_tokens": model.price_per_million_input_tokens,
        "price_per_million_output_tokens": model.price_per_million_output_tokens,
    }


def _limits_text(limits: dict[str, Any]) -> str:
    return ", ".join(f"{name} {'default' if value is None else value}" for name, value in limits.items())


def _price_text(row: dict[str, Any]) -> str:
    prices = (row["price_per_million_input_tokens"], row["price_per_million_output_tokens"])
    return "-" if prices == (None, None) else ", ".join("-" if p is None else f"{p:g}" for p in prices)
