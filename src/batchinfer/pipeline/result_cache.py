"""Answers kept across jobs, for models with ``cache: true`` in the models file.

A re-run of a prompt file that is mostly unchanged should send only what changed. The cache maps
(the model's config, the full request) to the answer the model gave, for deterministic requests
only (temperature 0, or a ``seed``): a sampled request is a fresh draw each time, as asked. It is
one SQLite database under ``BATCHINFER_HOME`` (WAL mode, so the chunk threads and processes of
several jobs read and write it at once), capped at ``max_bytes``: past the cap, the answers used
least recently go first. An answer served from it is marked ``"cached": true`` in its record. Only
answers are kept, never failures: a failure is worth asking again. Pure: no Prefect.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from batchinfer.engines.base import PromptRequest, deterministic
from batchinfer.records import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    answer TEXT NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_use ON answers (used);
"""


@dataclass(frozen=True)
class CacheSpec:
    """Where a chunk's model keeps its answers, as plain values a chunk task can carry."""

    path: str
    model_json: str
    max_bytes: int

    def open(self) -> ResultCache:
        """This process's cache for the spec: its database is set up once, not for every chunk."""
        return _opened(self)


@functools.cache
def _opened(spec: CacheSpec) -> ResultCache:
    return ResultCache(Path(spec.path), spec.model_json, spec.max_bytes)


class ResultCache:
    """The answers of one model (``model_json``: its config, which a changed setting changes)."""

    def __init__(self, path: Path, model_json: str, max_bytes: int) -> None:
        self._path = path
        self._model = model_json.encode()
        self._max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=30)

    def key(self, request: PromptRequest) -> bytes | None:
        """The request's key, or None for a request the cache does not serve (a sampled one)."""
        if not deterministic(request):
            return None
        shape = request.model_dump_json(exclude={"line", "custom_id"}).encode()
        return hashlib.blake2b(self._model + b"\0" + shape, digest_size=20).digest()

    def get(self, keys: Sequence[bytes]) -> dict[bytes, Completion]:
        """The cached answers among ``keys``, each marked used now."""
        found: dict[bytes, Completion] = {}
        with closing(self._connect()) as db, db:
            for start in range(0, len(keys), 500):  # SQLite's limit on parameters per statement
                batch = list(keys[start : start + 500])
                marks = ",".join("?" * len(batch))
                rows = db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", batch)
                found.update((key, Completion.model_validate_json(answer)) for key, answer in rows)
            db.executemany("UPDATE answers SET used = ? WHERE key = ?", [(time.time(), k) for k in found])
        return found

    def put(self, answers: dict[bytes, Completion]) -> None:
        """Keep ``answers``, then drop the least recently used past ``max_bytes``."""
        if not answers:
            return
        now = time.time()
        rows = [(key, text, len(text), now) for key, text in _texts(answers)]
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", rows)
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()
        if total <= self._max_bytes:
            return
        excess = total - self._max_bytes
        oldest = db.execute("SELECT key, size FROM answers ORDER BY used")
        doomed, freed = [], 0
        for key, size in oldest:
            doomed.append((key,))
            freed += size
            if freed >= excess:
                break
        db.executemany("DELETE FROM answers WHERE key = ?", doomed)


def _texts(answers: dict[bytes, Completion]) -> list[tuple[bytes, str]]:
    return [(key, answer.model_dump_json()) for key, answer in answers.items()]
