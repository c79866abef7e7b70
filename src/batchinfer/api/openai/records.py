"""What the adapter keeps about a batch that the flow run does not know: a small JSON per batch."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pydantic import BaseModel

from batchinfer.api.openai.ids import BATCH_ID_PREFIX
from batchinfer.pipeline.jobfiles import atomic_write


class BatchRecord(BaseModel):
    id: str
    job_id: str
    input_file_id: str
    input_path: str  # the staged copy the job reads (the input file may be deleted meanwhile)
    endpoint: str
    completion_window: str
    window_s: float
    model: str
    metadata: dict[str, str] | None = None
    created_at: int
    created_ns: int
    expires_at: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    outputs_signature: str | None = None  # of the job outputs the two files were made from
    cancelling_at: int | None = None  # when a cancel was asked through /v1
    expiring_at: int | None = None  # when the adapter stopped the job for its completion window


class BatchStore:
    """``<root>/<batch id>.json``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, record: BatchRecord) -> None:
        with atomic_write(self.root / f"{record.id}.json") as handle:
            handle.write(record.model_dump_json())

    def get(self, batch_id: str) -> BatchRecord | None:
        rest = batch_id.removeprefix(BATCH_ID_PREFIX)
        if not (batch_id.startswith(BATCH_ID_PREFIX) and rest.isalnum()):  # never a path
            return None
        try:
            return BatchRecord.model_validate_json((self.root / f"{batch_id}.json").read_text("utf-8"))
        except FileNotFoundError:
            return None

    def list(self) -> list[BatchRecord]:
        """Every batch, newest first."""
        records = []
        for path in self.root.glob(f"{BATCH_ID_PREFIX}*.json"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                records.append(BatchRecord.model_validate_json(path.read_text("utf-8")))
        records.sort(key=lambda r: (r.created_ns, r.id), reverse=True)
        return records
