"""A prompt file's lines (and a table's rows) as outcomes, one each: the request it makes, its line
error, a problem that fails an OpenAI batch (``batch_checks``), or None for a blank line. Read as a
byte stream: a line over ``max_line_bytes`` is skipped in bounded reads, never held whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TypeAlias

from batchinfer.endpoints import RequestDefaults
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.error_codes import ErrorCode
from batchinfer.pipeline.batch_checks import BatchLineChecker, BatchRules, LineProblem
from batchinfer.pipeline.parsing import parse_line, parse_value
from batchinfer.pipeline.tables import (
    CarriedColumns,
    PromptTemplate,
    TableFormat,
    TablePlan,
    iter_batches,
    row_request,
)
from batchinfer.records import ErrorDetail, ErrorRecord
from batchinfer.settings import Limits, env_name

_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20


def count_lines(path: Path) -> int:
    """Physical lines (a last line without a newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def iter_lines(
    handle: IO[bytes], digest: hashlib._Hash, max_line_bytes: int = Limits.max_line_bytes
) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line bytes without CR/LF), feeding every byte read into ``digest``.

    A line longer than ``max_line_bytes`` (not counting its newline) comes as ``None``: it is read
    in bounded pieces and dropped, so a 50 MB line costs one bounded buffer, not 50 MB."""
    number = 0
    while raw := handle.readline(max_line_bytes + 1):
        number += 1
        digest.update(raw)
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _skip_rest_of_line(handle, digest)
            yield number, None
            continue
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        yield number, raw.rstrip(b"\r\n")


def _skip_rest_of_line(handle: IO[bytes], digest: hashlib._Hash) -> None:
    while block := handle.readline(_BLOCK):
        digest.update(block)
        if block.endswith(b"\n"):
            return


# None: a blank line, skipped and counted; a LineProblem: a line that fails an OpenAI batch.
Outcome: TypeAlias = PromptRequest | ErrorRecord | LineProblem | None


def line_outcomes(
    handle: IO[bytes],
    digest: hashlib._Hash,
    params: SamplingParams,
    limits: Limits,
    defaults: RequestDefaults | None,
) -> Iterator[Outcome]:
    for number, raw in iter_lines(handle, digest, limits.max_line_bytes):
        if raw is not None and not raw.strip():
            yield None
        elif raw is None:
            yield line_too_long(number, limits.max_line_bytes)
        else:
            yield _parse(raw, number, params, limits, defaults)


def batch_line_outcomes(
    handle: IO[bytes],
    digest: hashlib._Hash,
    params: SamplingParams,
    limits: Limits,
    defaults: RequestDefaults | None,
    rules: BatchRules,
) -> Iterator[Outcome]:
    """An OpenAI batch's lines: each one's first problem (as a line error unless the batch fails
    on it), else the request it makes."""
    checker = BatchLineChecker(rules)
    for number, raw in iter_lines(handle, digest, limits.max_line_bytes):
        if raw is not None and not raw.strip():
            yield None
            continue
        if raw is None:
            too_long = line_too_long(number, limits.max_line_bytes).error
            value, problem = None, LineProblem(number, too_long.code, too_long.message)
        else:
            value, problem = checker.check(number, raw)
        if problem is None:
            yield parse_value(value, number, params, limits, defaults)
        else:
            yield problem if rules.fail_batch else problem.as_error_record()


def row_outcomes(
    source: Path,
    fmt: TableFormat,
    plan: TablePlan,
    prompt: PromptTemplate,
    params: SamplingParams,
    *,
    carried: CarriedColumns,
) -> Iterator[Outcome]:
    number = 0
    for batch in iter_batches(source, fmt):
        carried.write(batch)
        # Only the columns a prompt is made of become Python objects; carried ones stay Arrow.
        for row in batch.select(plan.read).to_pylist():
            number += 1
            yield row_request(row, number, plan, prompt, params)


def _parse(
    raw: bytes, number: int, params: SamplingParams, limits: Limits, defaults: RequestDefaults | None
) -> PromptRequest | ErrorRecord:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ErrorRecord(
            line=number,
            error=ErrorDetail(
                code=ErrorCode.invalid_utf8,
                message=f"Line is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8.",
            ),
        )
    return parse_line(text, number, params, limits, defaults)


def line_too_long(number: int, limit: int) -> ErrorRecord:
    return ErrorRecord(
        line=number,
        error=ErrorDetail(
            code=ErrorCode.line_too_long,
            message=f"Line is longer than the limit of {limit:,} bytes ({env_name('max_line_bytes')}); "
            "shorten the prompt (large attachments can go by filepath or uri) or raise the limit.",
        ),
    )
