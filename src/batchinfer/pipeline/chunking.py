"""How many prompts a chunk task gets, and the key that makes a chunk's result reusable."""

from __future__ import annotations

import hashlib
import math

# A task run costs milliseconds locally and ~150 ms on Dask/Ray; past ~1000 chunks a job spends more
# on orchestration than on work, so big files get bigger chunks instead of more of them.
MAX_CHUNKS = 1000


def plan_chunk_size(line_count: int, requested: int, max_chunks: int = MAX_CHUNKS) -> int:
    """``requested``, grown just enough that ``line_count`` lines fit in ``max_chunks`` chunks."""
    if requested < 1 or max_chunks < 1:
        raise ValueError("chunk size and chunk count must be >= 1")
    return max(requested, math.ceil(line_count / max_chunks))


def chunk_key(input_sha256: str, chunk_size: int, model_config_json: str, params_json: str) -> str:
    """Same input, same chunking, same model and options -> same key -> a re-run skips the chunk."""
    digest = hashlib.sha256()
    for part in (input_sha256, str(chunk_size), model_config_json, params_json):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
