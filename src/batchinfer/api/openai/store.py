"""The /v1 layer's records in one SQLite database, ``$BATCHINFER_HOME/openai.sqlite3``: File objects
and batch records, with the queries the routes need (by id, by idempotency key, newest-first pages
after a cursor, the files past their expiry).

Every query a route makes takes a ``scope``: the owner whose records it may find (None: everyone's,
for an admin or an open server). A record of another owner is simply not found, so it reads exactly
as an id never issued; an idempotency key is one owner's own.

Its calls block: the routes make them on a worker thread (``anyio.to_thread``). Each opens its own
connection (SQLite connections stay on the thread that made them); WAL lets reads run beside a write.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from batchinfer.api.openai.records import BatchRecord, StoredFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    expires_at INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_age ON files (created_ns, id);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    idempotency_key TEXT,
    record TEXT NOT NULL,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS batches_by_age ON batches (created_ns, id);
"""
RecordT = TypeVar("RecordT", bound=BaseModel)
Scope = str | None  # the owner whose records a query may find; None: everyone's
_IN_SCOPE = "(?1 IS NULL OR owner = ?1)"


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # one transaction: committed on success, rolled back on an error
                yield db
        finally:
            db.close()

    # -- files --------------------------------------------------------------------------------

    def save_file(self, stored: StoredFile) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO files (id, owner, created_ns, purpose, expires_at, record) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.owner,
                    stored.created_ns,
                    stored.purpose,
                    stored.expires_at,
                    stored.model_dump_json(),
                ),
            )

    def file(self, file_id: str, scope: Scope) -> StoredFile | None:
        query = f"SELECT record FROM files WHERE id = ?2 AND {_IN_SCOPE}"
        return self._one(StoredFile, query, scope, file_id)

    def delete_file(self, file_id: str, scope: Scope) -> bool:
        with self._connect() as db:
            query = f"DELETE FROM files WHERE id = ?2 AND {_IN_SCOPE}"
            return db.execute(query, (scope, file_id)).rowcount > 0

    def expired_files(self, now: int) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM files WHERE expires_at <= ?", (now,)).fetchall()
        return [row[0] for row in rows]

    def files_page(
        self, scope: Scope, purpose: str | None, after: str | None, limit: int, oldest_first: bool = False
    ) -> tuple[list[StoredFile], bool]:
        where = f"{_IN_SCOPE} AND (?2 IS NULL OR purpose = ?2)"
        args = [scope, purpose]
        return self._page(StoredFile, "files", where, args, after, limit, oldest_first=oldest_first)

    # -- batches ------------------------------------------------------------------------------

    def save_batch(self, record: BatchRecord) -> None:
        """Insert or update; a second batch of one owner with the same idempotency key is an
        IntegrityError."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO batches (id, owner, created_ns, idempotency_key, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                (
                    record.id,
                    record.owner,
                    record.created_ns,
                    record.idempotency_key,
                    record.model_dump_json(),
                ),
            )

    def batch(self, batch_id: str, scope: Scope) -> BatchRecord | None:
        query = f"SELECT record FROM batches WHERE id = ?2 AND {_IN_SCOPE}"
        return self._one(BatchRecord, query, scope, batch_id)

    def batch_by_key(self, owner: str, idempotency_key: str) -> BatchRecord | None:
        """``owner``'s batch made with ``idempotency_key`` (a key is each owner's own)."""
        query = "SELECT record FROM batches WHERE owner = ?1 AND idempotency_key = ?2"
        return self._one(BatchRecord, query, owner, idempotency_key)

    def batches_page(self, scope: Scope, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        return self._page(BatchRecord, "batches", _IN_SCOPE, [scope], after, limit)

    # -- shared -------------------------------------------------------------------------------

    def _one(self, kind: type[RecordT], query: str, first: Scope, second: str) -> RecordT | None:
        with self._connect() as db:
            row = db.execute(query, (first, second)).fetchone()
        return None if row is None else kind.model_validate_json(row[0])

    def _page(
        self,
        kind: type[RecordT],
        table: str,
        where: str,
        args: Sequence[object],
        after: str | None,
        limit: int,
        *,
        oldest_first: bool = False,
    ) -> tuple[list[RecordT], bool]:
        """Up to ``limit`` records after the one with id ``after``, newest first (or oldest first),
        and whether more follow. An ``after`` that names none gives an empty page: the cursor's
        place is unknown, and starting over would repeat records the client has seen."""
        order, beyond = ("ASC", ">") if oldest_first else ("DESC", "<")
        n = len(args)  # the parameters so far are ?1 .. ?n
        with self._connect() as db:
            if after is not None:
                query = f"SELECT created_ns, id FROM {table} WHERE id = ?{n + 1} AND {where}"
                cursor = db.execute(query, (*args, after)).fetchone()
                if cursor is None:  # unknown, or another owner's: nothing follows it for this caller
                    return [], False
                where, args = f"{where} AND (created_ns, id) {beyond} (?{n + 1}, ?{n + 2})", [*args, *cursor]
            rows = db.execute(
                f"SELECT record FROM {table} WHERE {where} "
                f"ORDER BY created_ns {order}, id {order} LIMIT ?{len(args) + 1}",
                (*args, limit + 1),
            ).fetchall()
        return [kind.model_validate_json(row[0]) for row in rows[:limit]], len(rows) > limit


def adopt_json_records(store: Store, files_dir: Path, batches_dir: Path) -> int:
    """Records an earlier release kept as one JSON file each (``files/<id>.json`` beside the file's
    bytes, ``batches/<id>.json``), moved into ``store``; each JSON file is renamed ``.adopted`` once
    it is in, so a restart does not read it again. How many were adopted."""

    def save_file(text: str) -> None:
        store.save_file(StoredFile.model_validate_json(text))

    def save_batch(text: str) -> None:
        store.save_batch(BatchRecord.model_validate_json(text))

    adopted = 0
    for directory, save in ((files_dir, save_file), (batches_dir, save_batch)):
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(ValueError, sqlite3.IntegrityError):  # torn, or already in
                save(path.read_text(encoding="utf-8"))
                adopted += 1
            path.rename(path.with_name(path.name + ".adopted"))
    return adopted
