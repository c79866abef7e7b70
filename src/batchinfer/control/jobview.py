"""What a job looks like from outside: the contract's ``BatchInference``, built from one read of its
flow run plus the progress file that the flow keeps in its job directory.

Why a file and not flow-run labels: on the SQLite backend, a labels PATCH that lands while the
server records task-run states fails with SQLITE_BUSY_SNAPSHOT (HTTP 503), and Prefect's client
then sleeps 2 s before retrying, at every phase change. A small file renamed into place costs
nothing and is read by whoever can read the job's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path as LocalPath
from typing import Any

from pydantic import BaseModel, Field

from batchinfer.contract import BatchInference, JobStatus, Options, Path, PathType
from batchinfer.control.recovery import INTERRUPTED_STATE_NAME, resume_hint
from batchinfer.control.states import job_status
from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import SamplingParams
from batchinfer.pipeline.jobfiles import ERROR_FILE, SUCCESS_FILE, JobLayout, atomic_write


class JobProgress(BaseModel):
    """What the flow publishes about itself while it works (``work/progress.json``)."""

    output_dir: str | None = None
    endpoint: Endpoint | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    chunks: int = 0
    chunks_done: int = 0
    blank_lines: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outputs_ready: bool = False
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


def job_layout(job_id: str, parameters: dict[str, Any], jobs_dir: LocalPath) -> JobLayout:
    """Where a job's files are: its ``output_dir`` parameter, else ``<jobs_dir>/<job_id>``."""
    output_dir = parameters.get("output_dir")
    return JobLayout(LocalPath(output_dir) if output_dir else jobs_dir / job_id)


class JobParameters(BaseModel):
    """The flow's parameters: small by design (Prefect caps them at 512 KiB); never the prompts."""

    model: str
    prompt_file: Path
    options: Options = Field(default_factory=Options)
    num_generations: int = Field(default=1, ge=1)
    output_dir: str | None = None
    expires_at: datetime | None = Field(
        default=None, description="When it passes, the job stops and fails `expired`, keeping its work."
    )
    endpoint: Endpoint | None = Field(
        default=None,
        description="The endpoint every line must name (an OpenAI batch's); None: the first line's.",
    )


def request_defaults(options: Options, num_generations: int) -> RequestDefaults:
    """The job's options where it set them: what fills a batch line's body where it says nothing."""
    return RequestDefaults(**options.model_dump(exclude_none=True), n=num_generations)


def sampling_params(options: Options, num_generations: int, default_max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=options.max_tokens or default_max_tokens,
        temperature=1.0 if options.temperature is None else options.temperature,
        top_p=1.0 if options.top_p is None else options.top_p,
        logprobs=bool(options.logprobs),
        n=num_generations,
    )


@dataclass
class RunSnapshot:
    id: str
    created: datetime
    state_type: str
    state_name: str | None
    state_message: str | None
    parameters: dict[str, Any]
    progress: JobProgress | None = None


_FAILURE_CODES = {"CRASHED": "crashed", "CANCELLED": "cancelled", "FAILED": "job_failed"}
_ENDED = (JobStatus.completed, JobStatus.failed)


def _failure(run: RunSnapshot, progress: JobProgress) -> dict[str, str]:
    """``metadata.error``: what happened, and for a crash, how to resume."""
    if run.state_type == "CRASHED":
        # The process died, so any error in the progress file is from an earlier run: the state
        # tells. `serve` names the state Interrupted when it finds a job its previous self left.
        if run.state_name == INTERRUPTED_STATE_NAME:
            return {"code": "interrupted", "message": run.state_message or resume_hint(run.id)}
        message = (run.state_message or "The process running the job stopped.").rstrip()
        return {"code": "crashed", "message": f"{message} {resume_hint(run.id)}"}
    return {
        "code": progress.error_code or _FAILURE_CODES.get(run.state_type, "job_failed"),
        "message": progress.error_message or run.state_message or "The job failed.",
    }


def batch_inference(run: RunSnapshot) -> BatchInference:
    status = job_status(run.state_type, run.state_name)
    progress = run.progress or JobProgress()
    params = JobParameters.model_validate(run.parameters)
    metadata: dict[str, Any] = {
        "model": params.model,
        "options": params.options.model_dump(exclude_none=True),
        "num_generations": params.num_generations,
        "endpoint": (progress.endpoint or params.endpoint or Endpoint.chat).value,
        "request_counts": {
            "total": progress.total,
            "completed": progress.completed,
            "failed": progress.failed,
        },
        "state": {"type": run.state_type, "name": run.state_name},
        "usage": {
            "prompt_tokens": progress.prompt_tokens,
            "completion_tokens": progress.completion_tokens,
        },
    }
    if progress.chunks:
        metadata["chunks"] = {"total": progress.chunks, "done": progress.chunks_done}
    if progress.blank_lines:
        metadata["blank_lines_skipped"] = progress.blank_lines
    if status is JobStatus.failed:
        metadata["error"] = _failure(run, progress)
    success = error = None
    # Only once the job has ended: a resumed job still has the outputs of its previous run on disk.
    if progress.outputs_ready and progress.output_dir and status in _ENDED:
        root = LocalPath(progress.output_dir)
        success = Path(type=PathType.filepath, value=str(root / SUCCESS_FILE))
        error = Path(type=PathType.filepath, value=str(root / ERROR_FILE))
    return BatchInference(
        job_id=run.id,
        created=run.created,
        status=status,
        input_file_path=params.prompt_file,
        success_file_path=success,
        error_file_path=error,
        metadata=metadata,
    )
