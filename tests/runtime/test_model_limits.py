"""A model's cross-job limit: its Prefect name, which engines have one, and each chunk's share."""

from __future__ import annotations

import contextvars
import threading
import uuid

import pytest

from batchinfer.engines.configs import EMBEDDED_DEFAULT, OpenAIEngineConfig
from batchinfer.runtime.model_limits import chunk_slots, ensure_limit, limit_name, share_chunks, shared_limit


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("llama-8b", "batchinfer-model-llama-8b"),
        ("meta/llama 3.1", "batchinfer-model-meta-llama-3.1"),
        ("a%b", "batchinfer-model-a-b"),
    ],
)
def test_a_limit_is_named_after_its_model_in_characters_prefect_accepts(model_id: str, name: str) -> None:
    assert limit_name(model_id) == name


def test_http_models_share_their_max_concurrency_and_local_models_share_nothing() -> None:
    http = OpenAIEngineConfig(id="m", base_url="http://127.0.0.1:1/v1", model="m", max_concurrency=12)
    assert shared_limit(http) == 12
    assert shared_limit(EMBEDDED_DEFAULT) is None


def test_a_models_cross_job_limit_is_its_max_concurrency_times_its_replicas() -> None:
    urls = [f"http://127.0.0.1:{port}/v1" for port in (1, 2, 3)]
    http = OpenAIEngineConfig(id="m", base_urls=urls, model="m", max_concurrency=12)
    assert shared_limit(http) == 36


@pytest.mark.parametrize(
    ("max_concurrency", "window", "slots"), [(64, 4, 16), (4, 2, 2), (5, 2, 3), (1, 8, 1), (10, 0, 10)]
)
def test_a_chunk_holds_an_even_share_so_one_job_alone_uses_the_whole_limit(
    max_concurrency: int, window: int, slots: int
) -> None:
    assert chunk_slots(max_concurrency, window) == slots
    assert slots * max(window, 1) >= max_concurrency


@pytest.mark.parametrize(
    ("free", "per_chunk", "window", "chunks"),
    [(64, 16, 4, 4), (40, 16, 4, 2), (15, 16, 4, 0), (64, 16, 2, 2), (4, 2, 2, 2), (3, 2, 2, 1)],
)
def test_a_job_takes_the_free_slots_it_can_use_up_to_its_window(
    free: int, per_chunk: int, window: int, chunks: int
) -> None:
    assert share_chunks(free, per_chunk, window) == chunks


def test_jobs_that_create_a_models_limit_at_the_same_moment_all_succeed(prefect_harness: None) -> None:
    """Two jobs of a model whose limit does not exist yet both create it: the one that loses the
    race updates the limit the other made, instead of failing the job (ObjectAlreadyExists)."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.orchestration import get_client

    model_id = f"racing-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        ensure_limit(model_id, 12)

    with ThreadPoolExecutor(8) as pool:  # each job in this context, which names the test's server
        for future in [pool.submit(contextvars.copy_context().run, create) for _ in range(8)]:
            future.result()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name(model_id)).limit == 12
