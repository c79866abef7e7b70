"""``results.parquet``: every input row's outcome, in input order, beside the columns it carried.

Gather feeds it the merged records one at a time; it writes a row group every ``FLUSH_ROWS`` rows
(``pyarrow.parquet.ParquetWriter``), taking the same number of rows from the carried columns that
validation stored (``work/columns.parquet``), so memory is bounded by a row group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchinfer.error_codes import ErrorCode
from batchinfer.errors import JobError
from batchinfer.pipeline.tables import RESULT_COLUMNS

FLUSH_ROWS = 8192
RESULT_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("custom_id", pa.string()),
        ("status", pa.string()),  # succeeded | failed
        ("text", pa.string()),  # the first generation's text
        ("generations", pa.list_(pa.string())),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
    ]
)
assert tuple(RESULT_SCHEMA.names) == RESULT_COLUMNS


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """One success or error record (as in the JSONL files) as a row of the results table."""
    error = record.get("error")
    if error is not None:
        return {
            "line": record["line"],
            "custom_id": record.get("custom_id"),
            "status": "failed",
            "error_code": error.get("code"),
            "error_message": error.get("message"),
        }
    generations = record.get("generations") or []
    usage = record.get("usage") or {}
    first = generations[0] if generations else {}
    return {
        "line": record["line"],
        "custom_id": record.get("custom_id"),
        "status": "succeeded",
        "text": first.get("text"),
        "generations": [g.get("text") for g in generations],
        "finish_reason": first.get("finish_reason"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
    }


class _CarriedRows:
    """The carried columns, handed out ``n`` rows at a time, in row order."""

    def __init__(self, path: Path) -> None:
        source = pq.ParquetFile(path)
        self.schema = source.schema_arrow
        self._batches: Iterator[pa.RecordBatch] = source.iter_batches(batch_size=FLUSH_ROWS)
        self._pending = self.schema.empty_table()

    def take(self, n: int) -> pa.Table:
        while self._pending.num_rows < n:
            batch = next(self._batches, None)
            if batch is None:
                raise JobError(
                    f"The stored columns of the table end before its results do ({n} rows wanted); "
                    "re-run the job.",
                    code=ErrorCode.lost_lines,
                )
            self._pending = pa.concat_tables([self._pending, pa.Table.from_batches([batch])])
        taken, self._pending = self._pending.slice(0, n), self._pending.slice(n)
        return taken

    def exhausted(self) -> bool:
        return self._pending.num_rows == 0 and next(self._batches, None) is None


class ResultsTable:
    """Writes ``results.parquet`` into ``handle`` (an ``atomic_write`` file) as rows are added."""

    def __init__(self, handle: IO[bytes], carried_path: Path | None = None) -> None:
        self._carried = _CarriedRows(carried_path) if carried_path and carried_path.exists() else None
        schema = RESULT_SCHEMA
        for carried_field in self._carried.schema if self._carried else []:
            schema = schema.append(carried_field)
        self._writer = pq.ParquetWriter(handle, schema)
        self._rows: list[dict[str, Any]] = []
        self.rows = 0

    def __enter__(self) -> ResultsTable:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            if exc_type is None:
                self._flush()
                if self._carried is not None and not self._carried.exhausted():
                    raise JobError(
                        f"The table has more rows than the {self.rows} results gathered; re-run the job.",
                        code=ErrorCode.lost_lines,
                    )
        finally:
            self._writer.close()

    def add(self, record: dict[str, Any]) -> None:
        self._rows.append(result_row(record))
        if len(self._rows) >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows and self.rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=RESULT_SCHEMA)
        if self._carried is not None:
            for carried_field, column in zip(
                self._carried.schema, self._carried.take(len(self._rows)).columns, strict=True
            ):
                table = table.append_column(carried_field, column)
        self._writer.write_table(table)
        self.rows += len(self._rows)
        self._rows = []


def first_rows(path: Path, rows: int = 20, width: int = 120) -> list[dict[str, Any]]:
    """The first ``rows`` rows of a results table, for a glance (the Prefect UI's artifact): its
    first batch only is read, and long strings are cut to ``width`` characters."""
    if not path.exists():
        return []
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
    if batch is None:
        return []
    return [{key: _short(value, width) for key, value in row.items()} for row in batch.to_pylist()]


def _short(value: Any, width: int) -> Any:
    if isinstance(value, list):
        value = " | ".join(map(str, value))
    if isinstance(value, str) and len(value) > width:
        return value[: width - 1] + "…"
    return value
