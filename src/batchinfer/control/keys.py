"""API keys of one server's users, and what each key's owner has enqueued, in one SQLite database
under ``BATCHINFER_HOME`` (``keys.sqlite3``).

A key is shown once, when it is made, and stored only as its SHA-256 (a key is 256 random bits, so
a fast hash is enough: there is nothing to guess from it); ``list`` shows its first characters so a
person can tell keys apart. A revoked key is refused from the next request on (nothing is cached);
``rotate`` gives a key a new secret under the same name (so its owner keeps what it made) and
refuses the old one at once.
A key may carry quotas: requests and tokens enqueued at once (reserved when a job is submitted,
given back when it ends) and jobs running at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from batchinfer.error_codes import ErrorCode
from batchinfer.errors import RequestError

KEY_PREFIX = "bik_"
SHOWN_CHARS = 12  # of a key, in lists: enough to tell keys apart, far too few to use one

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    shown TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    quota TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_owner ON reservations (owner);
"""
_COLUMNS = "name, shown, admin, created_at, revoked_at, quota"  # a KeyRecord's


class Quota(BaseModel):
    """What one key's owner may have at once; None: no limit."""

    max_enqueued_requests: int | None = Field(default=None, ge=1)
    max_enqueued_tokens: int | None = Field(default=None, ge=1)
    max_running_jobs: int | None = Field(default=None, ge=1)


class KeyRecord(BaseModel):
    """A key as stored: never the key itself."""

    name: str
    shown: str  # its first characters, for lists
    admin: bool
    created_at: int
    revoked_at: int | None = None
    quota: Quota = Field(default_factory=Quota)


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the owner of what they create, and whether they see everyone's."""

    owner: str | None  # None: the server is open (no keys, no token); nothing is owned
    admin: bool
    quota: Quota = field(default_factory=Quota)

    @property
    def scope(self) -> str | None:
        """The owner whose objects this principal sees; None: everyone's."""
        return None if self.admin else self.owner


OPEN = Principal(owner=None, admin=True)


@dataclass(frozen=True)
class Reservation:
    job_id: str
    requests: int
    tokens: int


class KeyExistsError(RequestError):
    code = ErrorCode.key_exists
    http_status = 409


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect():
            pass

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Made again when it is not there: an operator may delete the store to start afresh while
        # serve runs, and serve then reads it as "no keys" rather than failing every request.
        fresh = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            if fresh:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            with db:
                yield db
        finally:
            db.close()

    def create(self, name: str, admin: bool = False, quota: Quota | None = None) -> tuple[KeyRecord, str]:
        """A new key named ``name``: its record, and the key itself (shown once, never stored)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            name=name,
            shown=key[:SHOWN_CHARS],
            admin=admin,
            created_at=int(time.time()),
            quota=quota or Quota(),
        )
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO keys (name, sha256, shown, admin, created_at, quota) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        _digest(key),
                        record.shown,
                        admin,
                        record.created_at,
                        record.quota.model_dump_json(),
                    ),
                )
        except sqlite3.IntegrityError:
            message = f"A key named {name!r} exists: choose another name, or `keys rotate {name}`."
            raise KeyExistsError(message, field="name") from None
        return record, key

    def records(self) -> list[KeyRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, name").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the key named ``name``; False if there is no such key not yet revoked."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (int(time.time()), name),
            )
            return cursor.rowcount > 0

    def rotate(self, name: str) -> tuple[KeyRecord, str] | None:
        """A new secret for the key named ``name`` (in use again if it was revoked): its record and
        the key; None if there is no such key."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE keys SET sha256 = ?, shown = ?, revoked_at = NULL WHERE name = ?",
                (_digest(key), key[:SHOWN_CHARS], name),
            )
            if cursor.rowcount == 0:
                return None
            row = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        return _record(row), key

    def any_keys(self) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def authenticate(self, key: str) -> KeyRecord | None:
        """The record of a key that is not revoked; None for any other string."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE sha256 = ? AND revoked_at IS NULL",
                (_digest(key),),
            ).fetchone()
        return None if row is None else _record(row)

    # -- what each owner has enqueued ---------------------------------------------------------

    def reserve(self, owner: str, reservation: Reservation) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO reservations (job_id, owner, requests, tokens) VALUES (?, ?, ?, ?)",
                (reservation.job_id, owner, reservation.requests, reservation.tokens),
            )

    def reservations(self, owner: str) -> list[Reservation]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT job_id, requests, tokens FROM reservations WHERE owner = ?", (owner,)
            ).fetchall()
        return [Reservation(*row) for row in rows]

    def release(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _record(row: tuple[object, ...]) -> KeyRecord:
    name, shown, admin, created_at, revoked_at, quota = row
    return KeyRecord(
        name=str(name),
        shown=str(shown),
        admin=bool(admin),
        created_at=int(str(created_at)),
        revoked_at=None if revoked_at is None else int(str(revoked_at)),
        quota=Quota.model_validate_json(str(quota)),
    )
