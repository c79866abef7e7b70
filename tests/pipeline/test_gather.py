"""gather_outputs: line errors and chunk results merged in input order into the two output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchinfer.engines.base import SamplingParams
from batchinfer.errors import JobError
from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
from batchinfer.pipeline.gather import GatherCounts, gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.validation import validate_prompt_file
from batchinfer.records import (
    ErrorDetail,
    ErrorRecord,
    Generation,
    SuccessRecord,
    Usage,
    dump_record,
)
from batchinfer.testing.engines import EchoEngine


def success(line: int, custom_id: str | None = None) -> SuccessRecord:
    return SuccessRecord(
        line=line,
        custom_id=custom_id,
        generations=[Generation(role="assistant", text=f"answer {line}", finish_reason="stop")],
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )


def failure(line: int, code: str = "invalid_json") -> ErrorRecord:
    return ErrorRecord(line=line, error=ErrorDetail(code=code, message=f"line {line} is bad"))


def write(path: Path, recs: list[SuccessRecord | ErrorRecord]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dump_record(r) + "\n" for r in recs))
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    return JobLayout(tmp_path / "job")


@pytest.fixture
def sources(layout: JobLayout) -> list[Path]:
    """Line errors on 2 and 6; chunk 0 holds lines 1, 3, 4 (4 failed in the engine); chunk 1 holds 5, 7."""
    write(layout.line_errors, [failure(2), failure(6, "empty_messages")])
    return [
        write(layout.chunk_result(0, "k"), [success(1, "a"), success(3), failure(4, "http_500")]),
        write(layout.chunk_result(1, "k"), [success(5), success(7, "z")]),
    ]


def test_records_are_merged_in_input_order_into_success_and_error_files(
    layout: JobLayout, sources: list[Path]
) -> None:
    counts = gather_outputs(layout, sources, expected_lines=7)
    assert counts == GatherCounts(succeeded=4, failed=3)
    assert [r["line"] for r in lines_of(layout.success)] == [1, 3, 5, 7]
    assert [r["line"] for r in lines_of(layout.errors)] == [2, 4, 6]


def test_every_input_line_appears_in_exactly_one_output_file(layout: JobLayout, sources: list[Path]) -> None:
    gather_outputs(layout, sources, expected_lines=7)
    seen = [r["line"] for r in lines_of(layout.success) + lines_of(layout.errors)]
    assert sorted(seen) == list(range(1, 8))


def test_output_records_match_the_documented_format(layout: JobLayout, sources: list[Path]) -> None:
    gather_outputs(layout, sources, expected_lines=7)
    first = lines_of(layout.success)[0]
    assert first == {
        "line": 1,
        "custom_id": "a",
        "generations": [{"role": "assistant", "text": "answer 1", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    error = lines_of(layout.errors)[0]
    assert error == {
        "line": 2,
        "custom_id": None,
        "error": {"code": "invalid_json", "message": "line 2 is bad"},
    }


def test_a_line_in_two_sources_is_a_duplicate_line_job_error_and_no_output_is_left(
    layout: JobLayout, sources: list[Path]
) -> None:
    sources.append(write(layout.chunk_result(2, "k"), [success(3)]))
    with pytest.raises(JobError) as raised:
        gather_outputs(layout, sources, expected_lines=7)
    assert raised.value.code == "duplicate_line"
    assert not layout.success.exists()
    assert not layout.errors.exists()


def test_missing_lines_are_a_lost_lines_job_error_and_no_output_file_is_left_in_place(
    layout: JobLayout, sources: list[Path]
) -> None:
    with pytest.raises(JobError) as raised:
        gather_outputs(layout, sources[:1], expected_lines=7)
    assert raised.value.code == "lost_lines"
    assert raised.value.message
    assert not layout.success.exists()
    assert not layout.errors.exists()
    assert [p.name for p in layout.root.iterdir() if p.is_file()] == []  # no temp files either


def test_a_missing_result_file_counts_as_missing_lines(layout: JobLayout, sources: list[Path]) -> None:
    with pytest.raises(JobError, match="re-run") as raised:
        gather_outputs(layout, [*sources[:1], layout.chunk_result(1, "gone")], expected_lines=7)
    assert raised.value.code == "lost_lines"


def test_a_file_error_adds_one_record_with_a_null_line(layout: JobLayout) -> None:
    write(layout.line_errors, [failure(1), failure(2)])
    counts = gather_outputs(
        layout, [], expected_lines=2, file_error=ErrorDetail(code="no_valid_lines", message="none valid")
    )
    assert counts == GatherCounts(succeeded=0, failed=2)
    errors = lines_of(layout.errors)
    assert [e["line"] for e in errors] == [1, 2, None]
    assert errors[-1] == {
        "line": None,
        "custom_id": None,
        "error": {"code": "no_valid_lines", "message": "none valid"},
    }
    assert layout.success.read_text() == ""


def test_an_empty_job_writes_two_empty_files(layout: JobLayout) -> None:
    assert gather_outputs(layout, [], expected_lines=0) == GatherCounts(succeeded=0, failed=0)
    assert layout.success.read_text() == layout.errors.read_text() == ""


def test_validate_run_chunks_and_gather_together_keep_input_order(layout: JobLayout, tmp_path: Path) -> None:
    prompts = ["one", "not json", "fail", "", "four", "[]", "five"]
    source = tmp_path / "p.jsonl"
    source.write_text(
        "\n".join(
            p if p in ("", "not json", "[]") else json.dumps([{"role": "user", "text": p}]) for p in prompts
        )
        + "\n"
    )
    summary = validate_prompt_file(source, layout, SamplingParams(), chunk_size=2)
    engine = EchoEngine()
    results = [layout.chunk_result(c.index, "k") for c in summary.chunks]
    for chunk, result in zip(summary.chunks, results, strict=True):
        run_chunk(ChunkFiles(chunk.index, Path(chunk.input_path), result), engine)
    counts = gather_outputs(layout, results, summary.lines, summary.file_error)
    assert counts == GatherCounts(succeeded=3, failed=3)
    assert [(r["line"], r["generations"][0]["text"]) for r in lines_of(layout.success)] == [
        (1, "echo: one"),
        (5, "echo: four"),
        (7, "echo: five"),
    ]
    assert [(r["line"], r["error"]["code"]) for r in lines_of(layout.errors)] == [
        (2, "invalid_json"),
        (3, "http_400"),
        (6, "empty_messages"),
    ]
