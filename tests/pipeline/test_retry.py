"""strip_failed: which error records a retry takes out of a job's chunk results, so that the job,
run again, sends those lines and only those."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchinfer.pipeline.jobfiles import JobLayout, JobProgress
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.pipeline.retry import strip_failed
from batchinfer.records import ErrorDetail, ErrorRecord, Generation, SuccessRecord, Usage, dump_record

KEY = "run-key"
# Line -> its record's error code in chunk 0 (None: answered).
CHUNK = {
    1: None,
    2: "timeout",
    3: "http_429",
    4: "http_503",
    5: "connection_error",
    6: "http_400",
    7: "http_408",
    8: "bad_response",
    9: "http_500",
    10: "unsupported_attachment",
}
RETRYABLE = [2, 3, 4, 5, 7, 9]


def record(line: int, code: str | None) -> SuccessRecord | ErrorRecord:
    if code is None:
        usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
        return SuccessRecord(line=line, generations=[Generation(role="assistant", text="ok")], usage=usage)
    return ErrorRecord(line=line, error=ErrorDetail(code=code, message="m"))


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    layout = JobLayout(tmp_path / "job")
    result = layout.chunk_result(0, KEY)
    result.parent.mkdir(parents=True)
    result.write_text("".join(dump_record(record(line, code)) + "\n" for line, code in CHUNK.items()))
    return layout


def lines_left(layout: JobLayout) -> list[int]:
    return [json.loads(raw)["line"] for raw in layout.chunk_result(0, KEY).read_text().splitlines()]


def test_by_default_only_the_failures_a_retry_may_fix_are_taken_out(layout: JobLayout) -> None:
    taken = strip_failed(JobPlace(layout), JobProgress(chunks=1, chunk_key=KEY))
    assert taken == len(RETRYABLE)
    assert lines_left(layout) == [line for line in CHUNK if line not in RETRYABLE]


def test_every_error_takes_out_every_failed_inference_and_keeps_the_answers(layout: JobLayout) -> None:
    assert strip_failed(JobPlace(layout), JobProgress(chunks=1, chunk_key=KEY), every_error=True) == 9
    assert lines_left(layout) == [1]


def test_a_second_strip_has_nothing_left_to_take(layout: JobLayout) -> None:
    progress = JobProgress(chunks=1, chunk_key=KEY)
    strip_failed(JobPlace(layout), progress)
    assert strip_failed(JobPlace(layout), progress) == 0


@pytest.mark.parametrize(
    "progress",
    [
        JobProgress(chunks=1, chunk_key="another-run"),
        JobProgress(chunks=1),
        JobProgress(chunks=0, chunk_key=KEY),
    ],
    ids=["another run's key", "no key yet", "no chunks"],
)
def test_result_files_that_are_not_this_runs_are_left_alone(layout: JobLayout, progress: JobProgress) -> None:
    assert strip_failed(JobPlace(layout), progress) == 0
    assert lines_left(layout) == list(CHUNK)


def test_a_chunk_never_run_is_skipped(layout: JobLayout) -> None:
    assert strip_failed(JobPlace(layout), JobProgress(chunks=3, chunk_key=KEY)) == len(RETRYABLE)
