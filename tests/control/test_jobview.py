"""batch_inference: the contract's BatchInference built from one snapshot of a job's flow run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as LocalPath
from typing import Any

import pytest

from batchinfer.contract import JobStatus, Options, Path, PathType
from batchinfer.control.jobview import RunSnapshot, batch_inference
from batchinfer.engines.base import SamplingParams
from batchinfer.errors import resume_hint
from batchinfer.jobspec import JobParameters
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, read_progress, write_progress
from batchinfer.pipeline.jobstore import job_place

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
JOB_ID = "0b6f2f1e-4a54-4c1e-9a55-0d3c6c2f0a11"
PROMPTS = Path(type=PathType.filepath, value="/data/prompts.jsonl")
PARAMS = JobParameters(
    model="smollm2-135m",
    prompt_file=PROMPTS,
    options=Options(max_tokens=16, temperature=0.0),
    num_generations=2,
).model_dump(mode="json", exclude_none=True)


def snapshot(
    state_type: str, state_name: str | None = None, message: str | None = None, **progress: Any
) -> RunSnapshot:
    return RunSnapshot(
        id=JOB_ID,
        created=CREATED,
        state_type=state_type,
        state_name=state_name,
        state_message=message,
        parameters=PARAMS,
        progress=JobProgress(**progress) if progress else None,
    )


DONE = {"output_dir": "/jobs/x", "total": 5, "completed": 4, "failed": 1, "outputs_ready": True}

# (case, snapshot, status)
SNAPSHOTS = [
    ("scheduled", snapshot("SCHEDULED", "Scheduled"), JobStatus.validating),
    ("pending", snapshot("PENDING", "Pending"), JobStatus.validating),
    ("validating", snapshot("RUNNING", "Validating", output_dir="/jobs/x"), JobStatus.validating),
    (
        "running",
        snapshot("RUNNING", "Inferring", total=5, completed=2, failed=1, chunks=3),
        JobStatus.running,
    ),
    ("completed", snapshot("COMPLETED", "Completed", **DONE), JobStatus.completed),
    ("failed", snapshot("FAILED", "Failed", "boom"), JobStatus.failed),
    ("crashed", snapshot("CRASHED", "Crashed", "worker died"), JobStatus.failed),
    ("cancelled", snapshot("CANCELLED", "Cancelled"), JobStatus.failed),
]


@pytest.mark.parametrize(("run", "status"), [c[1:] for c in SNAPSHOTS], ids=[c[0] for c in SNAPSHOTS])
def test_a_snapshot_becomes_a_batch_inference_with_the_mapped_status(
    run: RunSnapshot, status: JobStatus
) -> None:
    job = batch_inference(run)
    assert job.status is status
    assert job.job_id == JOB_ID
    assert job.created == CREATED
    assert job.input_file_path == PROMPTS
    assert job.metadata["model"] == "smollm2-135m"
    assert job.metadata["options"] == {"max_tokens": 16, "temperature": 0.0}
    assert job.metadata["num_generations"] == 2
    assert set(job.metadata["request_counts"]) == {"total", "completed", "failed"}
    assert ("error" in job.metadata) is (status is JobStatus.failed)


def test_request_counts_come_from_the_progress() -> None:
    job = batch_inference(
        snapshot("RUNNING", "Inferring", total=5, completed=2, failed=1, chunks=3, chunks_done=1)
    )
    assert job.metadata["request_counts"] == {"total": 5, "completed": 2, "failed": 1}
    assert job.metadata["chunks"] == {"total": 3, "done": 1}


def test_a_models_pace_is_in_the_metadata_when_the_job_has_one() -> None:
    pace = {"concurrency": 17, "reason": "latency", "requests_per_minute": 9000}
    assert batch_inference(snapshot("RUNNING", "Inferring", total=5, pace=pace)).metadata["pace"] == pace
    assert "pace" not in batch_inference(snapshot("RUNNING", "Inferring", total=5)).metadata


def test_a_job_without_progress_counts_zero() -> None:
    job = batch_inference(snapshot("SCHEDULED"))
    assert job.metadata["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert "chunks" not in job.metadata


def test_output_paths_are_given_only_when_outputs_are_ready() -> None:
    done = batch_inference(snapshot("COMPLETED", **DONE))
    assert done.success_file_path == Path(
        type=PathType.filepath, value=str(LocalPath("/jobs/x/success.jsonl"))
    )
    assert done.error_file_path == Path(type=PathType.filepath, value=str(LocalPath("/jobs/x/errors.jsonl")))
    gathering = batch_inference(snapshot("RUNNING", "Gathering", **{**DONE, "outputs_ready": False}))
    assert gathering.success_file_path is None
    assert gathering.error_file_path is None


def test_the_outputs_of_a_job_on_a_store_are_uris_there() -> None:
    done = batch_inference(snapshot("COMPLETED", **{**DONE, "output_dir": "s3://bucket/jobs/x"}))
    assert done.success_file_path == Path(type=PathType.uri, value="s3://bucket/jobs/x/success.jsonl")
    assert done.error_file_path == Path(type=PathType.uri, value="s3://bucket/jobs/x/errors.jsonl")
    assert done.metadata["results_file_path"] == {
        "type": "uri",
        "value": "s3://bucket/jobs/x/results.parquet",
    }


def test_a_failed_job_with_outputs_still_points_at_them() -> None:
    job = batch_inference(snapshot("FAILED", error_code="no_valid_lines", error_message="none valid", **DONE))
    assert job.error_file_path is not None
    assert job.metadata["error"] == {"code": "no_valid_lines", "message": "none valid"}


def test_a_failed_job_reports_the_progress_error_code_and_message() -> None:
    job = batch_inference(
        snapshot("FAILED", "Failed", "Flow run failed", error_code="not_utf8", error_message="binary")
    )
    assert job.metadata["error"] == {"code": "not_utf8", "message": "binary"}


@pytest.mark.parametrize(
    ("state_type", "message", "code", "expected_message"),
    [
        ("FAILED", "Flow run encountered an exception", "job_failed", "Flow run encountered an exception"),
        ("CRASHED", "Worker died", "crashed", f"Worker died {resume_hint(JOB_ID)}"),
        ("CANCELLED", None, "cancelled", "The job failed."),
    ],
)
def test_without_an_error_label_a_failed_job_falls_back_on_the_state(
    state_type: str, message: str | None, code: str, expected_message: str
) -> None:
    job = batch_inference(snapshot(state_type, state_type.title(), message))
    assert job.metadata["error"] == {"code": code, "message": expected_message}


def test_the_response_serialises_to_the_contract_shape() -> None:
    body = batch_inference(snapshot("COMPLETED", **DONE)).model_dump(mode="json")
    assert set(body) == {
        "job_id",
        "created",
        "status",
        "input_file_path",
        "success_file_path",
        "error_file_path",
        "metadata",
    }
    assert body["status"] == "completed"
    assert body["success_file_path"]["type"] == "filepath"


def test_job_progress_round_trips_through_the_progress_file(tmp_path: LocalPath) -> None:
    layout = JobLayout(tmp_path / "job")
    assert read_progress(layout) is None
    progress = JobProgress(
        output_dir="/jobs/y",
        total=10,
        completed=7,
        failed=3,
        chunks=2,
        chunks_done=2,
        blank_lines=1,
        prompt_tokens=100,
        completion_tokens=50,
        outputs_ready=True,
        error_code="x",
        error_message="y",
    )
    write_progress(layout, progress)
    assert read_progress(layout) == progress


@pytest.mark.parametrize(
    ("output_dir", "output_url", "working", "store"),
    [
        (None, None, "/jobs/" + JOB_ID, None),
        ("/somewhere/else", None, "/somewhere/else", None),
        ("s3://bucket/out", None, "/jobs/" + JOB_ID, "s3://bucket/out"),
        (None, "s3://bucket/jobs/", "/jobs/" + JOB_ID, f"s3://bucket/jobs/{JOB_ID}"),
        ("/somewhere/else", "s3://bucket/jobs", "/somewhere/else", None),  # its own folder wins
    ],
)
def test_a_jobs_files_are_in_its_output_dir_or_under_its_output_url_or_the_jobs_dir(
    output_dir: str | None, output_url: str | None, working: str, store: str | None
) -> None:
    place = job_place(JOB_ID, {"output_dir": output_dir, "output_url": output_url}, LocalPath("/jobs"))
    assert place.layout.root == LocalPath(working)
    assert (place.store.url if place.store else None) == store


def test_sampling_params_defaults_fill_in_what_the_options_leave_out() -> None:
    assert SamplingParams.from_options(Options(), 1, default_max_tokens=256) == SamplingParams(
        max_tokens=256, temperature=1.0, top_p=1.0, logprobs=False, n=1
    )


def test_sampling_params_keep_every_given_option_including_zero_temperature() -> None:
    options = Options(max_tokens=8, temperature=0.0, top_p=0.5, logprobs=True)
    assert SamplingParams.from_options(options, 3, default_max_tokens=256) == SamplingParams(
        max_tokens=8, temperature=0.0, top_p=0.5, logprobs=True, n=3
    )


def test_job_parameters_default_to_one_generation_and_empty_options() -> None:
    params = JobParameters.model_validate({"model": "m", "prompt_file": {"type": "uri", "value": "s3://b/k"}})
    assert params.num_generations == 1
    assert params.options == Options()
