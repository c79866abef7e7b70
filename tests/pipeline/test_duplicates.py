"""Identical deterministic lines are sent once (``pipeline.duplicates``): validation keeps only the
first in the chunks, and gather (and the results so far) give every line its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchinfer.engines.base import SamplingParams
from batchinfer.pipeline.chunk_run import ChunkFiles, read_requests, run_chunk
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout, JobProgress, write_progress
from batchinfer.pipeline.jobstore import JobPlace
from batchinfer.pipeline.live_results import finished_so_far
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.testing.engines import EchoEngine

GREEDY = SamplingParams(temperature=0)
# Lines 3, 5 and 6 repeat line 1 or 2; line 4 is line 1 with another custom_id (still the same
# request); line 7 asks for fewer tokens (another request).
LINES: list[dict[str, Any]] = [
    {"custom_id": "a", "text": "hello"},
    {"custom_id": "b", "text": "fail this"},
    {"custom_id": "c", "text": "hello"},
    {"custom_id": "d", "text": "hello"},
    {"custom_id": "e", "text": "fail this"},
    {"custom_id": "f", "text": "hello"},
    {"custom_id": "g", "text": "hello", "max_tokens": 3},
]


def batch_line(custom_id: str, text: str, **body: Any) -> str:
    request = {"messages": [{"role": "user", "content": text}], **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}
    )


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    return JobLayout(tmp_path / "job")


def validate(
    layout: JobLayout, tmp_path: Path, params: SamplingParams = GREEDY, dedupe: bool = True
) -> ValidationSummary:
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(batch_line(**line) + "\n" for line in LINES))
    return validate_prompt_file(source, layout, params, chunk_size=3, dedupe=dedupe)


def sent_lines(summary: ValidationSummary) -> list[int]:
    return [r.line for c in summary.chunks for r in read_requests(Path(c.input_path))]


def run_all(layout: JobLayout, summary: ValidationSummary) -> list[Path]:
    results = [layout.chunk_result(c.index, "k") for c in summary.chunks]
    for chunk, result in zip(summary.chunks, results, strict=True):
        run_chunk(ChunkFiles(chunk.index, Path(chunk.input_path), result), EchoEngine())
    return results


def test_a_deterministic_request_repeated_is_sent_once_whatever_its_custom_id(
    layout: JobLayout, tmp_path: Path
) -> None:
    summary = validate(layout, tmp_path)
    assert sent_lines(summary) == [1, 2, 7]
    assert summary.duplicates == 4 and summary.valid == 7
    entries = [json.loads(raw) for raw in layout.duplicates.read_text().splitlines()]
    assert [(e["line"], e["custom_id"], e["duplicate_of"]) for e in entries] == [
        (3, "c", 1),
        (4, "d", 1),
        (5, "e", 2),
        (6, "f", 1),
    ]


@pytest.mark.parametrize(
    ("params", "dedupe", "sent"),
    [
        (SamplingParams(temperature=1.0), True, 7),  # two draws are two answers, both wanted
        (SamplingParams(temperature=0.7, seed=4), True, 3),  # a seed makes it deterministic
        (GREEDY, False, 7),  # BATCHINFER_DEDUPLICATE=false
    ],
    ids=["sampled", "seeded", "turned off"],
)
def test_only_deterministic_requests_are_deduplicated_and_only_when_on(
    layout: JobLayout, tmp_path: Path, params: SamplingParams, dedupe: bool, sent: int
) -> None:
    assert len(sent_lines(validate(layout, tmp_path, params, dedupe))) == sent


def test_gather_gives_every_line_its_first_lines_outcome_under_its_own_line_and_custom_id(
    layout: JobLayout, tmp_path: Path
) -> None:
    summary = validate(layout, tmp_path)
    counts = gather_outputs(layout, run_all(layout, summary), summary.lines)
    assert (counts.succeeded, counts.failed) == (5, 2)
    success = [json.loads(raw) for raw in layout.success.read_text().splitlines()]
    errors = [json.loads(raw) for raw in layout.errors.read_text().splitlines()]
    assert [(r["line"], r["custom_id"], r.get("duplicate_of")) for r in success] == [
        (1, "a", None),
        (3, "c", 1),
        (4, "d", 1),
        (6, "f", 1),
        (7, "g", None),
    ]
    assert {r["generations"][0]["text"] for r in success[:4]} == {"echo: hello"}
    assert [(r["line"], r["custom_id"], r.get("duplicate_of"), r["error"]["code"]) for r in errors] == [
        (2, "b", None, "http_400"),
        (5, "e", 2, "http_400"),  # the line it repeats failed: so does it, with the same error
    ]


def test_the_results_so_far_carry_the_duplicates_in_place(layout: JobLayout, tmp_path: Path) -> None:
    summary = validate(layout, tmp_path)
    run_all(layout, summary)
    write_progress(layout, JobProgress(chunks=len(summary.chunks), chunk_key="k"))
    assert [json.loads(raw)["line"] for raw in finished_so_far(JobPlace(layout))] == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not text\n"], ids=["empty", "not utf-8"])
def test_a_file_that_fails_as_a_whole_leaves_no_duplicates_of_an_earlier_run(
    layout: JobLayout, tmp_path: Path, content: bytes
) -> None:
    validate(layout, tmp_path)
    unusable = tmp_path / "unusable.jsonl"
    unusable.write_bytes(content)
    assert validate_prompt_file(unusable, layout, GREEDY, chunk_size=3).file_error is not None
    assert not layout.duplicates.exists() or layout.duplicates.read_text() == ""
