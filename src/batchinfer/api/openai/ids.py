"""Ids of the OpenAI objects: a batch id is its job's UUID, so both APIs name the same flow run."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID

BATCH_ID_PREFIX = "batch_"
FILE_ID_PREFIX = "file-"


def batch_id_of(job_id: UUID | str) -> str:
    """``batch_<hex>`` for the job (flow run) ``job_id``."""
    return BATCH_ID_PREFIX + UUID(str(job_id)).hex


def job_uuid_of(batch_id: str) -> UUID | None:
    """The job UUID a batch id names (``batch_<hex>``, or the bare UUID), or None if it names none."""
    try:
        return UUID(batch_id.removeprefix(BATCH_ID_PREFIX))
    except ValueError:
        return None


def new_file_id() -> str:
    return FILE_ID_PREFIX + secrets.token_hex(16)  # 128 random bits: not to be guessed


def derived_id(prefix: str, *parts: object) -> str:
    """A stable id derived from ``parts``: regenerating an output file gives every line the same id."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:24]
    return prefix + digest
