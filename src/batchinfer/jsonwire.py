"""JSON on the hot path: request bodies, server answers and output records, once per prompt.

orjson is several times faster than the standard library (and ships with Prefect). Its output is
compact UTF-8, the same JSON the standard library writes with ``ensure_ascii=False`` and no spaces.
What orjson refuses (integers beyond 64 bits, ``NaN`` in an answer) goes through the standard
library instead, so no value is lost or changed by the choice.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """Raises ``ValueError`` on invalid JSON, as ``json.loads`` does."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # NaN, Infinity and the like: read as the standard library reads them
