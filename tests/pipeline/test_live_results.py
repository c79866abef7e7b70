"""finished_so_far: a running job's final records, in input order, up to its first unfinished
chunk; once it has ended, its output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchinfer.engines.base import SamplingParams
from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, write_progress
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.pipeline.live_results import finished_so_far
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.records import ErrorDetail
from batchinfer.testing.engines import EchoEngine

KEY = "run-key"
# Ten lines, chunks of two: line 3 is not JSON (a line error), so chunk 1 holds lines 4 and 5.
PROMPTS = ["p1", "p2", None, "p4", "p5", "p6", "p7", "p8", "p9", "p10"]


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    return JobLayout(tmp_path / "job")


@pytest.fixture
def summary(layout: JobLayout, tmp_path: Path) -> ValidationSummary:
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        "".join(
            ("not json" if p is None else json.dumps([{"role": "user", "text": p}])) + "\n" for p in PROMPTS
        )
    )
    summary = validate_prompt_file(source, layout, SamplingParams(), chunk_size=2)
    write_progress(layout, JobProgress(chunks=len(summary.chunks), chunk_key=KEY))
    return summary


def run_chunks(layout: JobLayout, summary: ValidationSummary, *indexes: int) -> None:
    for index in indexes:
        chunk = summary.chunks[index]
        run_chunk(ChunkFiles(index, Path(chunk.input_path), layout.chunk_result(index, KEY)), EchoEngine())


def lines(layout: JobLayout, after_line: int = 0) -> list[int | None]:
    return [json.loads(raw)["line"] for raw in finished_so_far(JobPlace(layout), after_line)]


def test_before_any_chunk_finished_only_the_lines_before_the_first_chunk_are_final(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    assert lines(layout) == []


def test_the_finished_prefix_grows_chunk_by_chunk_with_line_errors_in_place(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    run_chunks(layout, summary, 0)
    assert lines(layout) == [1, 2, 3]  # line 3's error is final: it comes before chunk 1's lines
    run_chunks(layout, summary, 1)
    assert lines(layout) == [1, 2, 3, 4, 5]


def test_a_chunk_finished_out_of_order_waits_for_the_ones_before_it(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    run_chunks(layout, summary, 0, 2, 3)
    assert lines(layout) == [1, 2, 3]  # chunk 1 (lines 4-5) is not done: 6-9 wait for it
    run_chunks(layout, summary, 1)
    assert lines(layout) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_after_line_leaves_out_the_lines_a_reader_already_has(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    run_chunks(layout, summary, 0, 1, 2)
    assert lines(layout, after_line=4) == [5, 6, 7]


def test_the_records_are_the_ones_gather_writes_byte_for_byte(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    run_chunks(layout, summary, *range(len(summary.chunks)))
    so_far = "".join(finished_so_far(JobPlace(layout)))
    results = [layout.chunk_result(c.index, KEY) for c in summary.chunks]
    gather_outputs(layout, results, summary.lines)
    by_line = {
        json.loads(r)["line"]: r
        for r in (layout.success.read_text() + layout.errors.read_text()).splitlines()
    }
    assert so_far == "".join(by_line[line] + "\n" for line in sorted(by_line))


def test_result_files_of_an_earlier_run_with_another_key_are_not_this_runs(
    layout: JobLayout, summary: ValidationSummary
) -> None:
    chunk = summary.chunks[0]
    run_chunk(ChunkFiles(0, Path(chunk.input_path), layout.chunk_result(0, "older-run")), EchoEngine())
    assert lines(layout) == []


def test_once_the_outputs_are_written_they_are_read_with_a_whole_file_error_last(layout: JobLayout) -> None:
    layout.root.mkdir(parents=True)
    layout.line_errors.parent.mkdir(parents=True, exist_ok=True)
    layout.line_errors.write_text(
        '{"line": 1, "custom_id": null, "error": {"code": "invalid_json", "message": "m"}}\n'
    )
    gather_outputs(layout, [], 1, ErrorDetail(code="no_valid_lines", message="none valid"))
    write_progress(layout, JobProgress(outputs_ready=True))
    assert lines(layout) == [1, None]
    assert lines(layout, after_line=1) == []


def test_a_job_that_has_not_published_progress_has_no_results_yet(layout: JobLayout) -> None:
    assert lines(layout) == []
