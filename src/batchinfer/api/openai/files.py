"""The file store behind ``/v1/files``: each file's bytes plus a small JSON of its File object.

Bytes are written first and the JSON last, each atomically (temp file + rename), so a listed file
always has its bytes; a delete removes the JSON first, so a half-deleted file is never listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchinfer.api.openai.ids import FILE_ID_PREFIX, new_file_id
from batchinfer.errors import FileTooLargeError
from batchinfer.pipeline.jobfiles import atomic_write

# OpenAI's purposes. Only `batch` files can start a batch; `batch_output` is what batches write.
PURPOSES = frozenset(
    {
        "assistants",
        "assistants_output",
        "batch",
        "batch_output",
        "fine-tune",
        "fine-tune-results",
        "vision",
        "user_data",
    }
)
_BLOCK = 1 << 20


class StoredFile(BaseModel):
    """A File object, plus what only the server needs (never sent)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str
    created_ns: int  # orders files created within the same second

    def public(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Files under ``root``: ``<id>.data`` and ``<id>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _data(self, file_id: str) -> Path:
        return self.root / f"{file_id}.data"

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{file_id}.json"

    def create(
        self, filename: str, purpose: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> StoredFile:
        """Store ``chunks`` as a new file; ``FileTooLargeError`` (and nothing stored) past ``max_bytes``."""
        file_id = new_file_id()
        digest = hashlib.sha256()
        size = 0
        with atomic_write(self._data(file_id), "wb") as handle:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLargeError(
                        f"The file is over the limit of {max_bytes} bytes "
                        "(BATCHINFER_MAX_PROMPT_FILE_BYTES).",
                        field="file",
                    )
                digest.update(chunk)
                handle.write(chunk)
        now = time.time_ns()
        stored = StoredFile(
            id=file_id,
            bytes=size,
            created_at=now // 1_000_000_000,
            filename=filename,
            purpose=purpose,
            sha256=digest.hexdigest(),
            created_ns=now,
        )
        with atomic_write(self._meta(file_id)) as handle:
            handle.write(stored.model_dump_json())
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        # The id becomes a file name: anything but our own id shape could walk out of the root.
        if not _is_file_id(file_id):
            return None
        try:
            return StoredFile.model_validate_json(self._meta(file_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def path(self, file_id: str) -> Path:
        """Where the bytes of a file that ``get`` found are."""
        return self._data(file_id)

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        self._meta(file_id).unlink(missing_ok=True)
        self._data(file_id).unlink(missing_ok=True)
        return True

    def list(self, purpose: str | None = None) -> list[StoredFile]:
        """Every file (of ``purpose``), newest first."""
        files = []
        for meta in self.root.glob(f"{FILE_ID_PREFIX}*.json"):
            with contextlib.suppress(FileNotFoundError, ValueError):  # deleted meanwhile, or torn
                stored = StoredFile.model_validate_json(meta.read_text(encoding="utf-8"))
                if purpose is None or stored.purpose == purpose:
                    files.append(stored)
        files.sort(key=lambda f: (f.created_ns, f.id), reverse=True)
        return files


def read_blocks(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            yield block


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes: a hard link when the filesystem allows, else a copy."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:
        with atomic_write(target, "wb") as handle:
            for block in read_blocks(source):
                handle.write(block)


def _is_file_id(text: str) -> bool:
    rest = text.removeprefix(FILE_ID_PREFIX)
    return text.startswith(FILE_ID_PREFIX) and 0 < len(rest) <= 64 and rest.isalnum()
