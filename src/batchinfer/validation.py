"""Streaming validation of a prompt file into chunk input files and line error records.

Memory is bounded by one line, not by the file: the file is read twice as a byte stream (once to
count lines, which sizes the chunks; once to parse), and every output is written as it goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from batchinfer.chunking import plan_chunk_size
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.jobfiles import JobLayout, atomic_write
from batchinfer.parsing import parse_line
from batchinfer.records import ErrorDetail, ErrorRecord

_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20


class ChunkSpec(BaseModel):
    index: int
    input_path: str
    count: int
    first_line: int
    last_line: int


class ValidationSummary(BaseModel):
    input_sha256: str
    lines: int  # non-blank lines: each one ends up in exactly one output file
    valid: int
    invalid: int
    blank_lines: int
    chunk_size: int
    chunks: list[ChunkSpec]
    file_error: ErrorDetail | None = None  # set when the file as a whole is unusable


def count_lines(path: Path) -> int:
    """Physical lines (a last line without a newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def iter_lines(handle: IO[bytes], digest: hashlib._Hash) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without CR/LF), feeding every byte read into ``digest``."""
    for number, raw in enumerate(handle, start=1):
        digest.update(raw)
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        yield number, raw.rstrip(b"\r\n")


def validate_prompt_file(
    source: Path, layout: JobLayout, params: SamplingParams, chunk_size: int
) -> ValidationSummary:
    """Split ``source`` into chunk input files of valid prompts and a file of line errors."""
    size = plan_chunk_size(count_lines(source), chunk_size)
    digest = hashlib.sha256()
    chunks: list[ChunkSpec] = []
    valid = invalid = blank = 0
    error_codes: set[str] = set()
    with ExitStack() as outer, open(source, "rb") as handle:
        errors_out = outer.enter_context(atomic_write(layout.line_errors))
        chunk_out: IO[str] | None = None
        chunk_stack = ExitStack()
        for number, raw in iter_lines(handle, digest):
            if not raw.strip():
                blank += 1
                continue
            outcome = _parse(raw, number, params)
            if isinstance(outcome, ErrorRecord):
                invalid += 1
                error_codes.add(outcome.error.code)
                errors_out.write(outcome.model_dump_json() + "\n")
                continue
            valid += 1
            if chunk_out is None or chunks[-1].count == size:
                chunk_stack.close()
                index = len(chunks)
                path = layout.chunk_input(index)
                chunk_out = chunk_stack.enter_context(atomic_write(path))
                chunks.append(
                    ChunkSpec(
                        index=index,
                        input_path=str(path),
                        count=0,
                        first_line=number,
                        last_line=number,
                    )
                )
            chunk_out.write(outcome.model_dump_json() + "\n")
            chunks[-1].count += 1
            chunks[-1].last_line = number
        chunk_stack.close()
    lines = valid + invalid
    return ValidationSummary(
        input_sha256=digest.hexdigest(),
        lines=lines,
        valid=valid,
        invalid=invalid,
        blank_lines=blank,
        chunk_size=size,
        chunks=chunks,
        file_error=_file_error(lines, valid, error_codes),
    )


def _parse(raw: bytes, number: int, params: SamplingParams) -> PromptRequest | ErrorRecord:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ErrorRecord(
            line=number,
            error=ErrorDetail(
                code="invalid_utf8",
                message=f"Line is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8.",
            ),
        )
    return parse_line(text, number, params)


def _file_error(lines: int, valid: int, codes: set[str]) -> ErrorDetail | None:
    if lines == 0:
        return ErrorDetail(
            code="empty_file",
            message="The prompt file has no lines; give one JSON list of messages per line.",
        )
    if valid:
        return None
    if "invalid_utf8" in codes:  # binary or UTF-16 text may hold lines that decode, but no prompt
        return ErrorDetail(
            code="not_utf8",
            message="The prompt file is not UTF-8 text (is it compressed or binary?); "
            "give a UTF-8 JSONL file.",
        )
    return ErrorDetail(
        code="no_valid_lines",
        message=f"None of the {lines} lines is a valid prompt; the error file lists why for each.",
    )
