"""No request sent twice within a job: identical deterministic lines are sent once.

Two valid lines whose requests are the same (endpoint, messages or body, sampling parameters;
``custom_id`` and the line number aside) and deterministic (temperature 0, or a ``seed``) would get
the same answer, so validation puts only the first into a chunk and writes each later one to
``work/duplicates.jsonl`` as ``{"line", "custom_id", "duplicate_of"}``. Where records are merged in
input order (gather, ``live_results``), such an entry becomes a copy of its first line's record
with its own ``line`` and ``custom_id``, and ``duplicate_of`` naming the line that was sent: an
answer when that line was answered, its error when it failed. The first line always comes before
its duplicates, so a streaming merge has seen its record by then; only the records that still have
duplicates to come are held. Pure: no Prefect.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from batchinfer import jsonwire
from batchinfer.engines.base import PromptRequest, deterministic

DUPLICATE_OF = "duplicate_of"
Record = tuple[int, str, dict[str, Any]]


class DuplicateFinder:
    """During validation: which requests repeat an earlier deterministic one. Holds a 16-byte
    digest and a line number per distinct deterministic request."""

    def __init__(self, out: IO[str]) -> None:
        self._first: dict[bytes, int] = {}
        self._out = out
        self.count = 0

    def duplicate_of(self, request: PromptRequest) -> int | None:
        """The line of the earlier identical request, noted in the duplicates file; None when
        ``request`` is to be sent."""
        if not deterministic(request):
            return None  # sampled: two identical requests are two draws, both wanted
        shape = request.model_dump_json(exclude={"line", "custom_id"}).encode()
        first = self._first.setdefault(hashlib.blake2b(shape, digest_size=16).digest(), request.line)
        if first == request.line:
            return None
        entry = {"line": request.line, "custom_id": request.custom_id, DUPLICATE_OF: first}
        self._out.write(json.dumps(entry) + "\n")
        self.count += 1
        return first


def duplicate_entries(path: Path) -> Iterator[Record]:
    """The duplicates file as merge records (line, "", entry), to be ``DuplicateCopies.resolve``d."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            entry = json.loads(raw)
            yield entry["line"], "", entry


class DuplicateCopies:
    """During a merge in input order: keeps the records that duplicates will copy, and makes the
    copies."""

    def __init__(self, path: Path) -> None:
        self._pending: Counter[int] = Counter(entry[DUPLICATE_OF] for _, _, entry in duplicate_entries(path))
        self._held: dict[int, dict[str, Any]] = {}

    def resolve(self, record: Record) -> Record:
        """``record`` as it goes out: a duplicate entry as a copy of its first line's record."""
        line, raw, obj = record
        if raw:  # a record of its own
            if line in self._pending:
                self._held[line] = obj
            return record
        first = obj[DUPLICATE_OF]
        copy = {**self._held[first], "line": line, "custom_id": obj["custom_id"], DUPLICATE_OF: first}
        self._pending[first] -= 1
        if not self._pending[first]:
            del self._pending[first], self._held[first]
        return line, jsonwire.dumps_text(copy) + "\n", copy
