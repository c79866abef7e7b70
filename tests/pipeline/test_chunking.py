"""Chunk sizing and the key that makes a chunk's result reusable across re-runs."""

from __future__ import annotations

import pytest

from batchinfer.pipeline.chunking import MAX_CHUNKS, chunk_key, plan_chunk_size

# (lines, requested, max_chunks, planned size)
PLANS = [
    (0, 100, 1000, 100),
    (1, 100, 1000, 100),
    (100_000, 100, 1000, 100),
    (100_001, 100, 1000, 101),
    (250_000, 100, 1000, 250),
    (10, 1, 3, 4),
    (9, 1, 3, 3),
    (7, 50, 3, 50),
    (1, 1, 1, 1),
    (5, 1, 1, 5),
]


@pytest.mark.parametrize(("lines", "requested", "max_chunks", "size"), PLANS)
def test_the_requested_size_grows_only_as_much_as_needed_to_fit_max_chunks(
    lines: int, requested: int, max_chunks: int, size: int
) -> None:
    planned = plan_chunk_size(lines, requested, max_chunks)
    assert planned == size
    assert -(-lines // planned) <= max_chunks


def test_the_default_maximum_is_about_a_thousand_chunks() -> None:
    assert MAX_CHUNKS == 1000
    assert plan_chunk_size(2_000_000, 10) == 2000


@pytest.mark.parametrize(("requested", "max_chunks"), [(0, 10), (-1, 10), (10, 0)])
def test_a_non_positive_size_or_chunk_count_is_refused(requested: int, max_chunks: int) -> None:
    with pytest.raises(ValueError):
        plan_chunk_size(10, requested, max_chunks)


KEY_ARGS = ("ab" * 32, 100, '{"id": "m"}', '{"max_tokens": 16}')


def test_the_chunk_key_is_stable_for_the_same_inputs() -> None:
    assert chunk_key(*KEY_ARGS) == chunk_key(*KEY_ARGS)
    assert len(chunk_key(*KEY_ARGS)) == 16
    int(chunk_key(*KEY_ARGS), 16)  # hex


@pytest.mark.parametrize(
    "changed",
    [
        ("cd" * 32, 100, '{"id": "m"}', '{"max_tokens": 16}'),
        ("ab" * 32, 101, '{"id": "m"}', '{"max_tokens": 16}'),
        ("ab" * 32, 100, '{"id": "other"}', '{"max_tokens": 16}'),
        ("ab" * 32, 100, '{"id": "m"}', '{"max_tokens": 17}'),
    ],
    ids=["input hash", "chunk size", "model config", "params"],
)
def test_the_chunk_key_changes_when_any_input_changes(changed: tuple[str, int, str, str]) -> None:
    assert chunk_key(*changed) != chunk_key(*KEY_ARGS)


def test_the_chunk_key_parts_cannot_run_into_each_other() -> None:
    assert chunk_key("a", 1, "bc", "d") != chunk_key("a", 1, "b", "cd")
