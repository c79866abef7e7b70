"""Table prompt files (Parquet, CSV): one row is one prompt, read a batch of rows at a time.

A file is a Parquet table when it starts with the ``PAR1`` magic, whatever its name, and a CSV
table when its name ends ``.csv``; anything else is a JSONL prompt file. A row's prompt is, in this
order: the job's ``prompt_template`` filled from the row's columns, its ``messages`` column (a list
of ``{role, content}`` structs, or a JSON string of such a list), or its ``prompt`` column (a string,
sent as one user message). An optional ``custom_id`` column names the rows. Every other column is
*carried*: kept out of the model request, stored beside the job (``work/columns.parquet``) and
written next to each row's answer in ``results.parquet``.

Rows are read in record batches (``ParquetFile.iter_batches``, ``pyarrow.csv.open_csv``), so memory
is bounded by a batch, not by the table.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from batchinfer.engines.base import PromptRequest, SamplingParams
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import PromptTableError
from batchinfer.pipeline.jobfiles import atomic_write
from batchinfer.pipeline.parsing import parse_row_messages
from batchinfer.records import ErrorDetail, ErrorRecord

PARQUET_MAGIC = b"PAR1"
MESSAGES_COLUMN = "messages"
PROMPT_COLUMN = "prompt"
CUSTOM_ID_COLUMN = "custom_id"
TEMPLATE_SOURCE = "prompt_template"
BATCH_ROWS = 4096
_CSV_BLOCK = 1 << 20
# The columns results.parquet opens with; a carried column of the same name is renamed input_<name>.
RESULT_COLUMNS = (
    "line",
    "custom_id",
    "status",
    "text",
    "generations",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
)


class TableFormat(str, Enum):
    parquet = "parquet"
    csv = "csv"


class PromptTemplate(BaseModel):
    """How a table row becomes a prompt, when the job says (``prompt_template``, ``system_prompt``)."""

    template: str | None = Field(default=None, description="str.format-style, named fields only.")
    system_prompt: str | None = None

    @property
    def is_set(self) -> bool:
        return self.template is not None or self.system_prompt is not None


@dataclass(frozen=True)
class TablePlan:
    """What a table's columns are for: where each row's prompt comes from, and what is carried."""

    source: str  # MESSAGES_COLUMN, PROMPT_COLUMN or TEMPLATE_SOURCE
    columns: list[str]
    carried: list[str]
    read: list[str]  # the columns a row's request is made of (custom_id among them)


def table_format(path: Path, name: str | None = None) -> TableFormat | None:
    """Parquet by its magic, CSV by its name (``name``: the path or URI the user gave), else None."""
    with open(path, "rb") as handle:
        if handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
            return TableFormat.parquet
    shown = urlparse(name).path if name and "://" in name else (name or path.name)
    return TableFormat.csv if shown.lower().endswith(".csv") else None


def _csv_options() -> tuple[pa_csv.ReadOptions, pa_csv.ConvertOptions]:
    # Prompt columns are text whatever they look like; every other column keeps its inferred type.
    text = {name: pa.string() for name in (MESSAGES_COLUMN, PROMPT_COLUMN, CUSTOM_ID_COLUMN)}
    return pa_csv.ReadOptions(block_size=_CSV_BLOCK), pa_csv.ConvertOptions(column_types=text)


def read_schema(path: Path, fmt: TableFormat) -> pa.Schema:
    """The table's columns, cheaply: a Parquet footer, or a CSV header and first block."""
    if fmt is TableFormat.parquet:
        return pq.read_schema(path).remove_metadata()
    read, convert = _csv_options()
    return pa_csv.open_csv(path, read_options=read, convert_options=convert).schema


def count_rows(path: Path, fmt: TableFormat) -> int:
    if fmt is TableFormat.parquet:
        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(batch.num_rows for batch in iter_batches(path, fmt))


def iter_batches(path: Path, fmt: TableFormat) -> Iterator[pa.RecordBatch]:
    if fmt is TableFormat.parquet:
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        return
    read, convert = _csv_options()
    yield from pa_csv.open_csv(path, read_options=read, convert_options=convert)


# ---- templates and columns ----------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The column names a template uses; positional (``{}``, ``{0}``), attribute and index fields
    are refused: a template names columns, nothing else."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptTableError(
            f"prompt_template is not a valid template ({exc}); write {{column}} for a column's "
            "value and {{{{ or }}}} for a literal brace.",
            field="prompt_template",
            code=ErrorCode.invalid_request,
        ) from None
    fields: list[str] = []
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[") or "{" in (spec or ""):
            raise PromptTableError(
                f"prompt_template field {{{name}}} is not a column name; use named fields only, "
                'such as "Summarise in one line: {abstract}".',
                field="prompt_template",
                code=ErrorCode.invalid_request,
            )
        if name not in fields:
            fields.append(name)
    return fields


def plan_table(columns: list[str], prompt: PromptTemplate) -> TablePlan:
    """Where each row's prompt comes from; a ``PromptTableError`` naming the table's columns when
    the template names one it lacks, or the table has no column to make prompts of."""
    shown = ", ".join(columns) or "none"
    fields: list[str] = []
    if prompt.template is not None:
        fields = template_fields(prompt.template)
        for name in fields:
            if name not in columns:
                raise PromptTableError(
                    f"prompt_template uses {{{name}}}, but the table has no column {name!r}; "
                    f"its columns are: {shown}.",
                    field="prompt_template",
                )
        source = TEMPLATE_SOURCE
    elif MESSAGES_COLUMN in columns:
        source = MESSAGES_COLUMN
    elif PROMPT_COLUMN in columns:
        source = PROMPT_COLUMN
    else:
        raise PromptTableError(
            f"The table has neither a {MESSAGES_COLUMN!r} column (a list of {{role, content}}) nor a "
            f"{PROMPT_COLUMN!r} column (a string); its columns are: {shown}. Rename the prompt "
            "column, or give a prompt_template.",
            field="prompt_file_path",
            code=ErrorCode.no_prompt_column,
        )
    used = {CUSTOM_ID_COLUMN, source}
    read = [c for c in columns if c in used or c in fields]
    return TablePlan(source, columns, [c for c in columns if c not in used], read)


def check_prompt_source(path: Path, name: str | None, prompt: PromptTemplate) -> None:
    """Submit-time check of a local prompt file: a table must be able to make prompts (its schema
    is read, not its rows); a template needs a table."""
    fmt = table_format(path, name)
    if fmt is None:
        if prompt.is_set:
            raise template_needs_table()
        return
    plan_table(read_schema(path, fmt).names, prompt)


def template_needs_table() -> PromptTableError:
    return PromptTableError(
        "prompt_template and system_prompt build prompts from a table's columns (Parquet or CSV); "
        "a JSONL line carries its own messages. Put the system message in each line, or send a table.",
        field="prompt_template",
        code=ErrorCode.template_needs_table,
    )


# ---- rows to requests ---------------------------------------------------------------------------


def row_request(
    row: dict[str, Any], number: int, plan: TablePlan, prompt: PromptTemplate, params: SamplingParams
) -> PromptRequest | ErrorRecord:
    """One row as a request, or its line error (a null or malformed prompt)."""
    raw_id = row.get(CUSTOM_ID_COLUMN)
    custom_id = None if raw_id is None else str(raw_id)
    messages = _row_messages(row, plan, prompt)
    if isinstance(messages, ErrorDetail):
        return ErrorRecord(line=number, custom_id=custom_id, error=messages)
    if prompt.system_prompt is not None:
        messages = [{"role": "system", "content": prompt.system_prompt}, *messages]
    return parse_row_messages(messages, number, custom_id, params)


def _row_messages(row: dict[str, Any], plan: TablePlan, prompt: PromptTemplate) -> Any:
    """The row's messages as parsed data, or an ``ErrorDetail`` saying why there are none."""
    if plan.source == TEMPLATE_SOURCE:
        assert prompt.template is not None
        return _render(prompt.template, row)
    value = row.get(plan.source)
    if value is None:
        return ErrorDetail(
            code=ErrorCode.missing_prompt, message=f"The row's {plan.source!r} is null; give it a prompt."
        )
    if plan.source == PROMPT_COLUMN:
        if not isinstance(value, str) or not value.strip():
            return ErrorDetail(
                code=ErrorCode.invalid_prompt,
                message=f"The row's 'prompt' is {_kind(value)}; give a non-empty string.",
            )
        return [{"role": "user", "content": value}]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return ErrorDetail(
                code=ErrorCode.invalid_prompt,
                message="The row's 'messages' is a string but not JSON; give a JSON list of "
                '{"role", "content"} objects.',
            )
    # A list of structs: a field some messages lack is null in the others; leave it out.
    if isinstance(value, list):
        return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in value]
    return value


def _render(template: str, row: dict[str, Any]) -> list[dict[str, str]] | ErrorDetail:
    values = {name: row.get(name) for name in template_fields(template)}
    nulls = [name for name, value in values.items() if value is None]
    if nulls:
        return ErrorDetail(
            code=ErrorCode.missing_prompt,
            message=f"The row's {', '.join(map(repr, nulls))} is null, so prompt_template cannot "
            "be filled; give it a value.",
        )
    try:
        text = template.format_map(values)
    except (ValueError, TypeError) as exc:
        return ErrorDetail(
            code=ErrorCode.invalid_prompt, message=f"prompt_template cannot be filled from this row: {exc}."
        )
    return [{"role": "user", "content": text}]


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "an empty string"
    return f"a {type(value).__name__}"


# ---- carried columns ----------------------------------------------------------------------------


def carried_name(column: str) -> str:
    """A carried column's name in results.parquet: its own, unless a result column has it."""
    return f"input_{column}" if column in RESULT_COLUMNS else column


class CarriedColumns:
    """The carried columns of every row, in row order, into one Parquet file (written atomically)."""

    def __init__(self, path: Path, schema: pa.Schema, plan: TablePlan) -> None:
        self.path = path
        self.columns = plan.carried
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._schema = pa.schema([schema.field(c).with_name(carried_name(c)) for c in self.columns])

    def __enter__(self) -> CarriedColumns:
        if not self.columns:
            self.path.unlink(missing_ok=True)  # none to carry: no file, not an earlier run's
            return self
        handle = self._stack.enter_context(atomic_write(self.path, "wb"))
        self._writer = self._stack.enter_context(pq.ParquetWriter(handle, self._schema))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is not None:
            selected = batch.select(self.columns)
            self._writer.write_batch(pa.RecordBatch.from_arrays(selected.columns, schema=self._schema))
