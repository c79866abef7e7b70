"""Streaming validation of a prompt file into chunk input files and line error records.

Memory is bounded by one line, not by the file: the file is read twice as a byte stream (once to
count lines, which sizes the chunks and enforces ``max_lines``; once to parse), every output is
written as it goes, and a line over ``max_line_bytes`` is skipped in bounded reads, never held whole.
A table (Parquet, CSV: ``pipeline.tables``) goes the same way, a row a line, a batch of rows at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from pydantic import BaseModel

from batchinfer.endpoints import Endpoint, RequestDefaults
from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import PromptTableError
from batchinfer.pipeline.batch_checks import BatchRules, LineProblem
from batchinfer.pipeline.chunking import plan_chunk_size
from batchinfer.pipeline.duplicates import DuplicateFinder
from batchinfer.pipeline.jobfiles import JobLayout, atomic_write
from batchinfer.pipeline.outcomes import (
    Outcome,
    batch_line_outcomes,
    count_lines,
    line_outcomes,
    row_outcomes,
)
from batchinfer.pipeline.tables import (
    CarriedColumns,
    PromptTemplate,
    TableFormat,
    count_rows,
    plan_table,
    read_schema,
    table_format,
    template_needs_table,
)
from batchinfer.records import ErrorDetail, ErrorRecord
from batchinfer.settings import Limits, env_name

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
    duplicates: int = 0  # valid lines not sent: an identical earlier deterministic line is
    file_error: ErrorDetail | None = None  # set when the file as a whole is unusable
    endpoint: Endpoint = Endpoint.chat  # the one endpoint every valid line of the job names


def validate_prompt_file(
    source: Path,
    layout: JobLayout,
    params: SamplingParams,
    chunk_size: int,
    limits: Limits | None = None,
    *,
    defaults: RequestDefaults | None = None,
    endpoint: Endpoint | None = None,
    prompt: PromptTemplate | None = None,
    name: str | None = None,
    dedupe: bool = True,
    rules: BatchRules | None = None,
) -> ValidationSummary:
    """Split ``source`` into chunk input files of valid prompts and a file of line errors.

    ``source`` is a JSONL file, or a table (``pipeline.tables``: Parquet by its magic, CSV by
    ``name``, the path or URI the user gave), whose rows go the same way as lines: row ``n`` is line
    ``n``. A job runs one endpoint: ``endpoint`` when the job declares it (an OpenAI batch does),
    else the first valid line's; a line naming another is a ``mismatched_endpoint`` line error.
    ``dedupe``: a line repeating an earlier deterministic request is not sent (``duplicates``).
    ``rules``: an OpenAI batch's (``batch_checks``): its file is JSONL whatever its bytes, every line
    is checked as OpenAI checks it, and with ``rules.fail_batch`` any invalid line fails the job
    (``invalid_batch_file``, the lines in ``layout.batch_errors``) before a chunk runs."""
    limits, prompt = limits or Limits(), prompt or PromptTemplate()
    layout.carried_columns.unlink(missing_ok=True)  # an earlier run's, of another input perhaps
    layout.duplicates.unlink(missing_ok=True)
    layout.batch_errors.unlink(missing_ok=True)
    fmt = None if rules is not None else table_format(source, name)
    if fmt is not None:
        return _validate_table(
            source, fmt, layout, params, chunk_size, limits=limits, prompt=prompt, dedupe=dedupe
        )
    if prompt.is_set:
        failure = template_needs_table()
        return _failed(ErrorDetail(code=failure.code, message=failure.message), chunk_size)
    physical_lines = count_lines(source)
    if physical_lines > limits.max_lines:  # refused before any line is parsed
        return _too_many_lines(physical_lines, limits.max_lines, chunk_size)
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        if rules is None:
            outcomes = line_outcomes(handle, digest, params, limits, defaults)
        else:
            outcomes = batch_line_outcomes(handle, digest, params, limits, defaults, rules)
        split = _split(outcomes, layout, plan_chunk_size(physical_lines, chunk_size), endpoint, dedupe)
    return split.summary(digest.hexdigest())


def _validate_table(
    source: Path,
    fmt: TableFormat,
    layout: JobLayout,
    params: SamplingParams,
    chunk_size: int,
    *,
    limits: Limits,
    prompt: PromptTemplate,
    dedupe: bool,
) -> ValidationSummary:
    """A table's rows as lines; its carried columns into ``layout.carried_columns``."""
    try:
        schema = read_schema(source, fmt)
        plan = plan_table(schema.names, prompt)
        rows = count_rows(source, fmt)
        if rows > limits.max_lines:
            return _too_many_lines(rows, limits.max_lines, chunk_size)
        with CarriedColumns(layout.carried_columns, schema, plan) as carried:
            outcomes = row_outcomes(source, fmt, plan, prompt, params, carried=carried)
            split = _split(outcomes, layout, plan_chunk_size(rows, chunk_size), None, dedupe)
    except PromptTableError as exc:
        return _failed(ErrorDetail(code=exc.code, message=exc.message), chunk_size)
    except pa.ArrowException as exc:  # a corrupt Parquet file, a CSV whose types change midway
        message = f"The table cannot be read: {exc}. Check that it is a valid {fmt.value} file."
        return _failed(ErrorDetail(code=ErrorCode.invalid_table, message=message), chunk_size)
    return split.summary(_file_sha256(source))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Split:
    tally: _Tally
    chunks: _ChunkWriter
    endpoints: _EndpointCheck
    duplicates: int

    def summary(self, input_sha256: str) -> ValidationSummary:
        tally = self.tally
        if tally.batch_problems:
            return _failed(_invalid_batch(tally), self.chunks.size)
        return ValidationSummary(
            input_sha256=input_sha256,
            lines=tally.valid + tally.invalid,
            valid=tally.valid,
            invalid=tally.invalid,
            blank_lines=tally.blank,
            chunk_size=self.chunks.size,
            chunks=self.chunks.specs,
            duplicates=self.duplicates,
            file_error=_file_error(tally.valid + tally.invalid, tally.valid, tally.codes),
            endpoint=self.endpoints.job_endpoint or Endpoint.chat,
        )


def _split(
    outcomes: Iterable[Outcome], layout: JobLayout, size: int, endpoint: Endpoint | None, dedupe: bool
) -> _Split:
    """Every outcome to its place: valid requests into chunk files (a repeat of an earlier
    deterministic one, with ``dedupe``, into the duplicates file), line errors into one file."""
    tally, endpoints = _Tally(), _EndpointCheck(endpoint)
    with (
        atomic_write(layout.line_errors) as errors_out,
        atomic_write(layout.duplicates) as duplicates_out,
        _ChunkWriter(layout, size) as chunks,
        _BatchErrorsWriter(layout.batch_errors) as batch_errors,
    ):
        finder = DuplicateFinder(duplicates_out)
        for outcome in outcomes:
            if outcome is None:
                tally.blank += 1
                continue
            if isinstance(outcome, LineProblem):
                tally.batch_problem(outcome)
                batch_errors.write(outcome)
                continue
            checked = endpoints.check(outcome)
            if isinstance(checked, ErrorRecord):
                tally.error(checked.error.code)
                errors_out.write(checked.model_dump_json() + "\n")
            else:
                tally.valid += 1
                if not (dedupe and finder.duplicate_of(checked)):
                    chunks.write(checked)
    return _Split(tally, chunks, endpoints, finder.count)


@dataclass
class _Tally:
    valid: int = 0
    invalid: int = 0
    blank: int = 0
    codes: set[str] = field(default_factory=set)
    batch_problems: int = 0  # lines that fail an OpenAI batch (``batch_checks``)
    first_problem: LineProblem | None = None

    def error(self, code: str) -> None:
        self.invalid += 1
        self.codes.add(code)

    def batch_problem(self, problem: LineProblem) -> None:
        self.batch_problems += 1
        self.first_problem = self.first_problem or problem


class _BatchErrorsWriter:
    """The lines that fail an OpenAI batch, as error records with their ``param``: written only
    when there is one (a batch that passes leaves no file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = ExitStack()
        self._out: IO[str] | None = None

    def __enter__(self) -> _BatchErrorsWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)  # an error while writing leaves no file

    def write(self, problem: LineProblem) -> None:
        if self._out is None:
            self._out = self._stack.enter_context(atomic_write(self.path))
        self._out.write(problem.as_error_record().model_dump_json() + "\n")


class _ChunkWriter:
    """Valid requests into chunk input files of ``size`` lines, each written whole (atomically)."""

    def __init__(self, layout: JobLayout, size: int) -> None:
        self.layout = layout
        self.size = size
        self.specs: list[ChunkSpec] = []
        self._stack = ExitStack()
        self._out: IO[str] | None = None

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def write(self, request: PromptRequest) -> None:
        if self._out is None or self.specs[-1].count == self.size:
            self._stack.close()
            index = len(self.specs)
            path = self.layout.chunk_input(index)
            self._out = self._stack.enter_context(atomic_write(path))
            self.specs.append(
                ChunkSpec(
                    index=index,
                    input_path=str(path),
                    count=0,
                    first_line=request.line,
                    last_line=request.line,
                )
            )
        # Defaults left out: a chunk reads back the same requests from a third of the bytes, in
        # two thirds of the time (read once per line on the hot path; nothing reads fields_set).
        self._out.write(request.model_dump_json(exclude_defaults=True) + "\n")
        self.specs[-1].count += 1
        self.specs[-1].last_line = request.line


class _EndpointCheck:
    """The job's one endpoint: declared, or set by its first valid line."""

    def __init__(self, declared: Endpoint | None) -> None:
        self.declared = declared
        self.job_endpoint = declared

    def check(self, outcome: PromptRequest | ErrorRecord) -> PromptRequest | ErrorRecord:
        if isinstance(outcome, ErrorRecord):
            return outcome
        if self.job_endpoint is None:
            self.job_endpoint = outcome.endpoint
        if outcome.endpoint is self.job_endpoint:
            return outcome
        why = "the batch's endpoint" if self.declared else "the endpoint of the job's first valid line"
        return ErrorRecord(
            line=outcome.line,
            custom_id=outcome.custom_id,
            error=ErrorDetail(
                code=ErrorCode.mismatched_endpoint,
                message=f"This line is a {outcome.endpoint.value} request, but the job runs "
                f"{self.job_endpoint.value} ({why}); a job runs one endpoint, so put these lines "
                "in a file of their own.",
            ),
        )


def _too_many_lines(lines: int, limit: int, chunk_size: int) -> ValidationSummary:
    return _failed(
        ErrorDetail(
            code=ErrorCode.too_many_lines,
            message=f"The prompt file has {lines:,} lines, over the limit of {limit:,} "
            f"({env_name('max_lines')}); split it into smaller files or raise the limit.",
        ),
        chunk_size,
    )


def _failed(error: ErrorDetail, chunk_size: int) -> ValidationSummary:
    """A file-level failure with no line parsed: no line is in an output file, so none is lost."""
    return ValidationSummary(
        input_sha256="",
        lines=0,
        valid=0,
        invalid=0,
        blank_lines=0,
        chunk_size=chunk_size,
        chunks=[],
        file_error=error,
    )


def _invalid_batch(tally: _Tally) -> ErrorDetail:
    first = tally.first_problem
    assert first is not None
    lines = tally.valid + tally.invalid + tally.batch_problems
    return ErrorDetail(
        code=ErrorCode.invalid_batch_file,
        message=f"{tally.batch_problems} of the batch's {lines} lines are invalid, so nothing was sent "
        f"(line {first.line}: {first.message}); the batch's errors list every one. Fix them and "
        "create the batch again.",
    )


def _file_error(lines: int, valid: int, codes: set[str]) -> ErrorDetail | None:
    if lines == 0:
        return ErrorDetail(
            code=ErrorCode.empty_file,
            message="The prompt file has no lines; give one JSON list of messages per line.",
        )
    if valid:
        return None
    if ErrorCode.invalid_utf8 in codes:  # binary or UTF-16 text may hold lines that decode, but no prompt
        return ErrorDetail(
            code=ErrorCode.not_utf8,
            message="The prompt file is not UTF-8 text (is it compressed or binary?); "
            "give a UTF-8 JSONL file.",
        )
    return ErrorDetail(
        code=ErrorCode.no_valid_lines,
        message=f"None of the {lines} lines is a valid prompt; the error file lists why for each.",
    )
