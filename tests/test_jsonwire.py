"""The hot path's JSON: orjson where it can, the standard library where orjson refuses, the same
JSON either way."""

from __future__ import annotations

import json
import math

import pytest

from batchinfer import jsonwire


@pytest.mark.parametrize(
    "value",
    [
        {"text": "Grüße, 東京 ✓", "n": 3, "p": 0.1, "ok": True, "none": None, "list": [1, "a"]},
        {"huge": 2**70},  # beyond orjson's 64-bit integers
        "plain",
    ],
    ids=["mixed", "big integer", "string"],
)
def test_dumps_writes_what_the_standard_library_writes_compact(value: object) -> None:
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert jsonwire.dumps_text(value) == expected
    assert jsonwire.loads(jsonwire.dumps(value)) == value


def test_loads_reads_what_only_the_standard_library_reads() -> None:
    assert math.isnan(jsonwire.loads(b'{"x": NaN}')["x"])


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsonwire.loads(b'{"x": ')
