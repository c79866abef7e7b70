"""What a job looks like from outside: the contract's ``BatchInference``, built from one read of its
flow run plus the progress file that the flow keeps in its job directory (``pipeline.jobfiles``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path as LocalPath
from typing import Any

from batchinfer.contract import BatchInference, JobStatus, Path, PathType
from batchinfer.control.recovery import INTERRUPTED_STATE_NAME
from batchinfer.control.states import job_status
from batchinfer.endpoints import Endpoint
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import resume_hint
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import ERROR_FILE, RESULTS_FILE, SUCCESS_FILE, JobProgress
from batchinfer.pipeline.jobstore import is_url


@dataclass
class RunSnapshot:
    id: str
    created: datetime
    state_type: str
    state_name: str | None
    state_message: str | None
    parameters: dict[str, Any]
    progress: JobProgress | None = None
    tags: list[str] = field(default_factory=list)
    state_timestamp: datetime | None = None  # when the run entered its state


OWNER_TAG = "owner:"  # a flow run's tag naming the key that submitted it (``control.ownership``)


def owner_tag(owner: str) -> str:
    return OWNER_TAG + owner


def owner_of(tags: list[str]) -> str | None:
    """The owner a flow run's tags name, if any."""
    return next((tag.removeprefix(OWNER_TAG) for tag in tags if tag.startswith(OWNER_TAG)), None)


_FAILURE_CODES = {
    "CRASHED": ErrorCode.crashed,
    "CANCELLED": ErrorCode.cancelled,
    "FAILED": ErrorCode.job_failed,
}
_ENDED = (JobStatus.completed, JobStatus.failed)


def _failure(run: RunSnapshot, progress: JobProgress) -> dict[str, str]:
    """``metadata.error``: what happened, and for a crash, how to resume."""
    if run.state_type == "CRASHED":
        # The process died, so any error in the progress file is from an earlier run: the state
        # tells. `serve` names the state Interrupted when it finds a job its previous self left.
        if run.state_name == INTERRUPTED_STATE_NAME:
            return {"code": ErrorCode.interrupted, "message": run.state_message or resume_hint(run.id)}
        message = (run.state_message or "The process running the job stopped.").rstrip()
        return {"code": ErrorCode.crashed, "message": f"{message} {resume_hint(run.id)}"}
    return {
        "code": progress.error_code or _FAILURE_CODES.get(run.state_type, ErrorCode.job_failed),
        "message": progress.error_message or run.state_message or "The job failed.",
    }


OUTPUT_FILES = (SUCCESS_FILE, ERROR_FILE, RESULTS_FILE)


def _output(root: str, name: str) -> Path:
    """One output file of a job whose files are under ``root``: a folder, or a store's URL."""
    if is_url(root):
        return Path(type=PathType.uri, value=f"{root.rstrip('/')}/{name}")
    return Path(type=PathType.filepath, value=str(LocalPath(root) / name))


def _state(run: RunSnapshot) -> dict[str, Any]:
    state: dict[str, Any] = {"type": run.state_type, "name": run.state_name}
    if run.state_timestamp is not None:
        state["timestamp"] = run.state_timestamp.isoformat()
    return state


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
        "state": _state(run),
        "usage": {
            "prompt_tokens": progress.prompt_tokens,
            "completion_tokens": progress.completion_tokens,
        },
    }
    for name in ("prompt_template", "system_prompt"):
        if (value := getattr(params, name)) is not None:
            metadata[name] = value
    if (owner := owner_of(run.tags)) is not None:
        metadata["owner"] = owner
    if progress.deduplicated:  # answered by copying an identical earlier line's answer, not sent
        metadata["request_counts"]["deduplicated"] = progress.deduplicated
    if progress.chunks:
        metadata["chunks"] = {"total": progress.chunks, "done": progress.chunks_done}
    if progress.pace:  # what an HTTP model's pace settled on, and why
        metadata["pace"] = progress.pace
    if progress.blank_lines:
        metadata["blank_lines_skipped"] = progress.blank_lines
    if status is JobStatus.failed:
        metadata["error"] = _failure(run, progress)
    success = error = None
    # Only once the job has ended: a resumed job still has the outputs of its previous run on disk.
    if progress.outputs_ready and progress.output_dir and status in _ENDED:
        success, error, results = (_output(progress.output_dir, name) for name in OUTPUT_FILES)
        metadata["results_file_path"] = results.model_dump(mode="json")
    return BatchInference(
        job_id=run.id,
        created=run.created,
        status=status,
        input_file_path=params.prompt_file,
        success_file_path=success,
        error_file_path=error,
        metadata=metadata,
    )
