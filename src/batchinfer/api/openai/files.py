"""The files behind ``/v1/files``: each file's bytes in ``<root>/<id>.data``, its File object in the
store. The bytes are written (atomically) before the record, so a listed file always has its bytes;
a delete removes the record first, so a half-deleted file is never listed.

A file with an expiry (``expires_after``, a batch's ``output_expires_after``) is gone once it
passes: it reads as never issued, and its bytes and record are removed when next looked at. A file
belongs to the key that made it; every look-up is scoped (``store``): another owner's reads as never
issued too.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from batchinfer.api.openai.ids import FILE_ID_PREFIX, new_file_id
from batchinfer.api.openai.records import StoredFile
from batchinfer.api.openai.store import Scope, Store
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
Clock = Callable[[], float]


class FileStore:
    def __init__(self, root: Path, store: Store, clock: Clock = time.time) -> None:
        self.root = root
        self.store = store
        self.clock = clock

    def _data(self, file_id: str) -> Path:
        return self.root / f"{file_id}.data"

    def create(
        self,
        filename: str,
        purpose: str,
        chunks: Iterable[bytes],
        max_bytes: int | None = None,
        expires_after_s: int | None = None,
        *,
        owner: str,
    ) -> StoredFile:
        """Store ``chunks`` as ``owner``'s new file, gone ``expires_after_s`` after now if given;
        ``FileTooLargeError`` (and nothing stored) past ``max_bytes``."""
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
        created_at = int(self.clock())
        stored = StoredFile(
            id=file_id,
            bytes=size,
            created_at=created_at,
            filename=filename,
            purpose=purpose,
            sha256=digest.hexdigest(),
            created_ns=time.time_ns(),
            expires_at=None if expires_after_s is None else created_at + expires_after_s,
            owner=owner,
        )
        self.store.save_file(stored)
        return stored

    def get(self, file_id: str, scope: Scope) -> StoredFile | None:
        """The file, or None if it was never issued, is another owner's, was deleted or expired."""
        # The id becomes a file name: anything but our own id shape could walk out of the root.
        if not _is_file_id(file_id):
            return None
        stored = self.store.file(file_id, scope)
        if stored is not None and stored.expires_at is not None and stored.expires_at <= self.clock():
            self.delete(file_id, None)
            return None
        return stored

    def path(self, file_id: str) -> Path:
        """Where the bytes of a file that ``get`` found are."""
        return self._data(file_id)

    def delete(self, file_id: str, scope: Scope) -> bool:
        if not _is_file_id(file_id) or not self.store.delete_file(file_id, scope):
            return False
        self._data(file_id).unlink(missing_ok=True)
        return True

    def page(
        self, scope: Scope, purpose: str | None, after: str | None, limit: int, oldest_first: bool = False
    ) -> tuple[list[StoredFile], bool]:
        """A page of the files that have not expired (those that have are removed first)."""
        for file_id in self.store.expired_files(int(self.clock())):
            self.delete(file_id, None)
        return self.store.files_page(scope, purpose, after, limit, oldest_first)


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
