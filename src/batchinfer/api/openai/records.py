"""What the /v1 layer keeps itself (in ``store.Store``): each file's File object, and what a batch's
flow run does not know (its input file, window, metadata, output file ids, how it was created)."""

from __future__ import annotations

from pydantic import BaseModel

from batchinfer.api.openai.schemas import BatchError, FileObject, InvalidLines


class StoredFile(BaseModel):
    """A File object, plus what only the server needs (never sent)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str
    created_ns: int  # orders files created within the same second
    expires_at: int | None = None  # past it the file is gone (``expires_after``)
    owner: str = ""  # the key that uploaded it (or whose batch made it); "": an open server's

    def public(self) -> FileObject:
        return FileObject(
            id=self.id,
            bytes=self.bytes,
            created_at=self.created_at,
            filename=self.filename,
            purpose=self.purpose,
            expires_at=self.expires_at,
        )


class BatchRecord(BaseModel):
    id: str
    owner: str = ""  # the key that created it; "": an open server's
    job_id: str | None  # None: it failed at create, before it became a job (see ``failure``)
    input_file_id: str
    input_path: str | None  # the staged copy the job reads (the input file may be deleted meanwhile)
    endpoint: str
    completion_window: str
    window_s: float
    model: str | None  # what the input file's first line names
    metadata: dict[str, str] | None = None
    created_at: int
    created_ns: int
    expires_at: int
    # Records written before invalid lines could fail a batch ran each one into the error file.
    invalid_lines: InvalidLines = InvalidLines.error_file
    output_expires_after_s: int | None = None  # the output and error files expire this long after made
    idempotency_key: str | None = None
    fingerprint: str | None = None  # of the create parameters: the key reused with others conflicts
    failure: BatchError | None = None  # why it failed at create
    output_file_id: str | None = None
    error_file_id: str | None = None
    outputs_signature: str | None = None  # of the job outputs the two files were made from
    cancelling_at: int | None = None  # when a cancel was asked through /v1
    expiring_at: int | None = None  # when the adapter stopped the job for its completion window
