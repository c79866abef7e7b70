"""validate_prompt_file: streams a prompt file into chunk input files and line error records."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path
from typing import BinaryIO

import pytest

from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.pipeline import validation
from batchinfer.pipeline.chunking import plan_chunk_size
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.outcomes import count_lines, iter_lines
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.settings import Limits

PARAMS = SamplingParams(max_tokens=32, n=2)


def good(i: int) -> str:
    return json.dumps([{"role": "user", "text": f"prompt {i}"}])


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    return JobLayout(tmp_path / "job")


def validate(
    tmp_path: Path, layout: JobLayout, content: bytes, chunk_size: int = 100, limits: Limits | None = None
) -> ValidationSummary:
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(content)
    return validate_prompt_file(source, layout, PARAMS, chunk_size, limits)


def chunk_requests(path: str) -> list[PromptRequest]:
    return [PromptRequest.model_validate_json(line) for line in Path(path).read_text().splitlines()]


def line_errors(layout: JobLayout) -> list[dict]:
    return [json.loads(line) for line in layout.line_errors.read_text().splitlines()]


def test_valid_lines_are_split_into_chunk_files_of_the_chunk_size_with_their_line_ranges(
    tmp_path: Path, layout: JobLayout
) -> None:
    summary = validate(tmp_path, layout, "".join(good(i) + "\n" for i in range(1, 8)).encode(), chunk_size=3)
    assert [(c.index, c.count, c.first_line, c.last_line) for c in summary.chunks] == [
        (0, 3, 1, 3),
        (1, 3, 4, 6),
        (2, 1, 7, 7),
    ]
    assert (summary.lines, summary.valid, summary.invalid, summary.chunk_size) == (7, 7, 0, 3)
    assert summary.file_error is None
    for chunk in summary.chunks:
        assert Path(chunk.input_path) == layout.chunk_input(chunk.index)
        requests = chunk_requests(chunk.input_path)
        assert [r.line for r in requests] == list(range(chunk.first_line, chunk.last_line + 1))
        assert all(r.params == PARAMS for r in requests)
    assert layout.line_errors.read_text() == ""


def test_blank_lines_are_skipped_and_counted_but_keep_line_numbering(
    tmp_path: Path, layout: JobLayout
) -> None:
    content = f"\n{good(2)}\n   \n\t\n{good(5)}\n\n".encode()
    summary = validate(tmp_path, layout, content)
    assert summary.blank_lines == 4
    assert (summary.lines, summary.valid) == (2, 2)
    assert [r.line for r in chunk_requests(summary.chunks[0].input_path)] == [2, 5]


def test_crlf_line_endings_and_a_utf8_bom_are_handled(tmp_path: Path, layout: JobLayout) -> None:
    content = b"\xef\xbb\xbf" + f"{good(1)}\r\n{good(2)}\r\n\r\n".encode()
    summary = validate(tmp_path, layout, content)
    assert (summary.valid, summary.invalid, summary.blank_lines) == (2, 0, 1)
    assert [r.messages[0].text for r in chunk_requests(summary.chunks[0].input_path)] == [
        "prompt 1",
        "prompt 2",
    ]


def test_a_last_line_without_a_newline_is_read(tmp_path: Path, layout: JobLayout) -> None:
    summary = validate(tmp_path, layout, f"{good(1)}\n{good(2)}".encode())
    assert summary.valid == 2
    assert summary.chunks[0].last_line == 2


def test_an_invalid_utf8_line_becomes_an_invalid_utf8_error_while_the_rest_run(
    tmp_path: Path, layout: JobLayout
) -> None:
    content = good(1).encode() + b"\n" + b'[{"role": "user", "text": "caf\xe9"}]\n' + good(3).encode() + b"\n"
    summary = validate(tmp_path, layout, content)
    assert (summary.lines, summary.valid, summary.invalid) == (3, 2, 1)
    assert summary.file_error is None
    (error,) = line_errors(layout)
    assert error["line"] == 2
    assert error["error"]["code"] == "invalid_utf8"
    assert error["error"]["message"]
    assert [r.line for r in chunk_requests(summary.chunks[0].input_path)] == [1, 3]


def test_bad_lines_go_to_the_line_error_file_in_input_order(tmp_path: Path, layout: JobLayout) -> None:
    content = f"not json\n{good(2)}\n[]\n{good(4)}\n42\n".encode()
    summary = validate(tmp_path, layout, content)
    assert [(e["line"], e["error"]["code"]) for e in line_errors(layout)] == [
        (1, "invalid_json"),
        (3, "empty_messages"),
        (5, "not_a_list"),
    ]
    assert (summary.lines, summary.valid, summary.invalid) == (5, 2, 3)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JSONL = "".join(good(i) + "\n" for i in range(200))

# (case, content, file error code)
FILE_ERRORS = [
    ("an empty file", b"", "empty_file"),
    ("a file of blank lines only", b"\n \r\n\t\n", "empty_file"),
    ("a gzip-compressed file", gzip.compress(JSONL.encode(), mtime=0), "not_utf8"),
    ("a UTF-16 file", JSONL.encode("utf-16"), "not_utf8"),
    ("a binary (PNG) file", PNG, "not_utf8"),
    ("a file whose every line is bad", b"not json\n[]\n{}\n", "no_valid_lines"),
]


@pytest.mark.parametrize(("content", "code"), [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_an_unusable_file_gets_a_file_level_error_and_no_chunks(
    tmp_path: Path, layout: JobLayout, content: bytes, code: str
) -> None:
    summary = validate(tmp_path, layout, content)
    assert summary.file_error is not None
    assert summary.file_error.code == code
    assert summary.file_error.message
    assert summary.chunks == []
    assert summary.valid == 0


def test_input_sha256_is_the_hash_of_the_file_bytes(tmp_path: Path, layout: JobLayout) -> None:
    content = b"\xef\xbb\xbf" + f"{good(1)}\r\n\n{good(2)}".encode()
    summary = validate(tmp_path, layout, content)
    assert summary.input_sha256 == hashlib.sha256(content).hexdigest()


def test_count_lines_counts_physical_lines_including_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for content, expected in [(b"", 0), (b"a", 1), (b"a\n", 1), (b"a\n\nb", 3), (b"\n\n", 2)]:
        path.write_bytes(content)
        assert count_lines(path) == expected, content


def test_the_chunk_size_grows_to_keep_the_chunk_count_under_the_maximum(
    tmp_path: Path, layout: JobLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "plan_chunk_size", functools.partial(plan_chunk_size, max_chunks=3))
    summary = validate(tmp_path, layout, "".join(good(i) + "\n" for i in range(10)).encode(), chunk_size=1)
    assert summary.chunk_size == 4
    assert [c.count for c in summary.chunks] == [4, 4, 2]


def test_no_temp_files_are_left_beside_the_outputs(tmp_path: Path, layout: JobLayout) -> None:
    validate(tmp_path, layout, "".join(good(i) + "\n" for i in range(5)).encode(), chunk_size=2)
    leftovers = [p for p in layout.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# ---- limits -----------------------------------------------------------------------------------


def test_a_line_over_the_line_limit_is_a_line_too_long_error_naming_the_setting(
    tmp_path: Path, layout: JobLayout
) -> None:
    limit = len(good(1))
    long_line = json.dumps([{"role": "user", "text": "x" * 5000}])
    content = f"{good(1)}\n{long_line}\n{good(3)}\r\n{long_line}".encode()
    summary = validate(tmp_path, layout, content, limits=Limits(max_line_bytes=limit + 1))
    assert [(e["line"], e["error"]["code"]) for e in line_errors(layout)] == [
        (2, "line_too_long"),
        (4, "line_too_long"),
    ]
    assert "BATCHINFER_MAX_LINE_BYTES" in line_errors(layout)[0]["error"]["message"]
    assert (summary.lines, summary.valid, summary.invalid) == (4, 2, 2)
    assert [r.line for r in chunk_requests(summary.chunks[0].input_path)] == [1, 3]
    assert summary.input_sha256 == hashlib.sha256(content).hexdigest()  # skipped bytes still hashed


@pytest.mark.parametrize(
    ("extra", "too_long"), [(0, False), (1, True)], ids=["exactly at the limit", "one byte over"]
)
def test_the_line_limit_counts_the_line_without_its_newline(
    tmp_path: Path, layout: JobLayout, extra: int, too_long: bool
) -> None:
    line = good(1)
    content = f"{line}\n{line}".encode()
    summary = validate(tmp_path, layout, content, limits=Limits(max_line_bytes=len(line) - extra))
    assert summary.invalid == (2 if too_long else 0)


def test_a_too_long_line_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"[" * (3 * 1024 * 1024) + b"\nnext\n")
    reads: list[int] = []

    class Recording:
        def __init__(self, handle: BinaryIO) -> None:
            self.handle = handle

        def readline(self, size: int = -1) -> bytes:
            line = self.handle.readline(size)
            reads.append(len(line))
            return line

    with open(path, "rb") as handle:
        lines = list(iter_lines(Recording(handle), hashlib.sha256(), max_line_bytes=1000))
    assert lines == [(1, None), (2, b"next")]
    assert max(reads) <= 1 << 20


def test_a_file_over_the_line_count_limit_fails_before_any_line_is_parsed(
    tmp_path: Path, layout: JobLayout
) -> None:
    content = "".join(good(i) + "\n" for i in range(11)).encode()
    summary = validate(tmp_path, layout, content, limits=Limits(max_lines=10))
    assert summary.file_error is not None
    assert summary.file_error.code == "too_many_lines"
    assert "11 lines" in summary.file_error.message
    assert "BATCHINFER_MAX_LINES" in summary.file_error.message
    assert (summary.lines, summary.chunks) == (0, [])
    assert not layout.root.exists() or not any(layout.root.rglob("*.jsonl"))
    assert validate(tmp_path, layout, content, limits=Limits(max_lines=11)).file_error is None


def test_batch_line_overrides_past_a_limit_are_line_errors(tmp_path: Path, layout: JobLayout) -> None:
    line = json.dumps({"custom_id": "c", "body": {"messages": [{"role": "user", "content": "x"}], "n": 5}})
    validate(tmp_path, layout, f"{line}\n".encode(), limits=Limits(max_num_generations=4))
    (error,) = line_errors(layout)
    assert (error["line"], error["custom_id"], error["error"]["code"]) == (1, "c", "limit_exceeded")


def embeddings_line(text: str) -> str:
    return json.dumps({"custom_id": text, "url": "/v1/embeddings", "body": {"model": "m", "input": text}})


def test_a_job_runs_the_endpoint_of_its_first_valid_line_and_refuses_lines_of_another(
    tmp_path: Path, layout: JobLayout
) -> None:
    content = "\n".join(["not json", embeddings_line("a"), good(3), embeddings_line("d")]) + "\n"
    summary = validate(tmp_path, layout, content.encode())
    assert summary.endpoint is Endpoint.embeddings
    assert [r.line for r in chunk_requests(summary.chunks[0].input_path)] == [2, 4]
    mismatched = [e for e in line_errors(layout) if e["error"]["code"] == "mismatched_endpoint"]
    assert [e["line"] for e in mismatched] == [3]
    assert "/v1/chat/completions" in mismatched[0]["error"]["message"]


def test_a_declared_endpoint_refuses_every_line_of_another_even_the_first(
    tmp_path: Path, layout: JobLayout
) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(good(1) + "\n" + embeddings_line("b") + "\n")
    summary = validate_prompt_file(source, layout, PARAMS, 100, endpoint=Endpoint.embeddings)
    assert (summary.endpoint, summary.valid, summary.invalid) == (Endpoint.embeddings, 1, 1)
    (error,) = line_errors(layout)
    assert (error["line"], error["error"]["code"]) == (1, "mismatched_endpoint")
    assert "the batch's endpoint" in error["error"]["message"]


def test_a_seed_file_is_a_chat_job(tmp_path: Path, layout: JobLayout) -> None:
    assert validate(tmp_path, layout, (good(1) + "\n").encode()).endpoint is Endpoint.chat
