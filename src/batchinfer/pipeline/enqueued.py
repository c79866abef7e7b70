"""What a prompt file asks of its model, counted before its job runs, for the quotas of the key that
submits it: its requests (non-blank lines; a table's rows) and its tokens, estimated as a hosted API
counts them against its limits: the prompt's (a quarter of its bytes) plus ``max_tokens`` for every
generation of every request. Pure: one streaming read of a local file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchinfer.engines.pacing import BYTES_PER_TOKEN
from batchinfer.pipeline.tables import count_rows, table_format

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Enqueued:
    requests: int
    tokens: int


def enqueued(path: Path, name: str | None, max_tokens: int, generations: int) -> Enqueued:
    """The requests and estimated tokens of the prompt file at ``path`` (``name``: what the user
    called it, which tells a CSV table)."""
    fmt = table_format(path, name)
    if fmt is not None:
        requests, prompt_bytes = count_rows(path, fmt), path.stat().st_size
    else:
        requests, prompt_bytes = _nonblank_lines(path)
    return Enqueued(requests, prompt_bytes // BYTES_PER_TOKEN + requests * max_tokens * generations)


def _nonblank_lines(path: Path) -> tuple[int, int]:
    """Non-blank lines and the bytes they hold, read in bounded pieces (a line may be huge)."""
    lines = size = length = 0
    blank = True
    with open(path, "rb") as handle:
        while piece := handle.readline(_BLOCK):
            blank, length = blank and not piece.strip(), length + len(piece)
            if piece.endswith(b"\n"):
                lines, size = (lines, size) if blank else (lines + 1, size + length)
                blank, length = True, 0
    return (lines, size) if blank else (lines + 1, size + length)
