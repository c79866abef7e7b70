"""The fake OpenAI server itself: deterministic answers, scripted faults, stats, and its CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batchinfer.testing.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def chat(server: FakeOpenAIServer, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=5)


def test_the_server_listens_on_loopback_only(server: FakeOpenAIServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.port > 0


def test_the_answer_echoes_the_last_user_text_and_counts_words(server: FakeOpenAIServer) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}],
            },
        ],
    }
    data = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=5).json()
    assert data["choices"][0]["message"]["content"] == "echo: hello there"
    assert data["choices"][0]["finish_reason"] == "stop"
    counts = {k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert counts == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert data["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_n_choices_get_suffixes_and_max_tokens_cuts_with_finish_reason_length(
    server: FakeOpenAIServer,
) -> None:
    choices = chat(server, "a b c", n=3, max_tokens=4).json()["choices"]
    assert [c["message"]["content"] for c in choices] == [
        "echo: a b c",
        "echo: a b c",
        "echo: a b c",
    ]
    assert [c["finish_reason"] for c in choices] == ["stop", "length", "length"]
    assert [c["message"]["content"] for c in chat(server, "x", n=2).json()["choices"]] == [
        "echo: x",
        "echo: x #1",
    ]


def test_logprobs_are_one_finite_negative_entry_per_word(server: FakeOpenAIServer) -> None:
    content = chat(server, "one two", logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["echo:", "one", "two"]
    assert all(-100 < t["logprob"] < 0 for t in content)


def test_a_scripted_429_fails_the_first_n_times_then_succeeds(server: FakeOpenAIServer) -> None:
    text = "[fault:429x2] fake-429"
    first, second, third = (chat(server, text) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["Retry-After"] == "0"


def test_a_scripted_400_always_fails_with_an_openai_error_body(server: FakeOpenAIServer) -> None:
    for _ in range(2):
        response = chat(server, "[fault:400] fake-400")
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "scripted bad request"


def test_stats_report_counts_and_reset_zeroes_them(server: FakeOpenAIServer) -> None:
    httpx.post(f"{server.base_url.removesuffix('/v1')}/stats/reset", timeout=5)
    chat(server, "counted")
    httpx.post(
        f"{server.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "counted"}]},
        headers={"Authorization": "Bearer t0k"},
        timeout=5,
    )
    stats = httpx.get(f"{server.base_url.removesuffix('/v1')}/stats", timeout=5).json()
    assert stats["requests_total"] == 2 == server.requests_total
    assert stats["prompts"] == {"counted": 2}
    assert stats["last_authorization"] == "Bearer t0k"
    assert stats["max_in_flight"] >= 1
    models = httpx.get(f"{server.base_url}/models", timeout=5).json()
    assert models["data"][0]["id"] == "fake-model"


def test_the_cli_prints_its_base_url_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "batchinfer.testing.fake_openai", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            assert httpx.get(f"{base_url}/models", timeout=5).status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_the_steady_rate_leaves_out_the_first_and_last_tenth() -> None:
    from batchinfer.testing.fake_openai import steady_rate

    # 100 answers: the first 10 and the last 10 slow, the middle at 100 per second.
    times = [float(i) for i in range(10)] + [10 + i / 100 for i in range(80)] + [20.0 + i for i in range(10)]
    assert steady_rate(times) == pytest.approx(100, rel=0.02)
    assert steady_rate(times[:5]) is None  # too few to say


def test_stats_say_when_the_first_request_came_and_the_last_answer_left(server: FakeOpenAIServer) -> None:
    server.reset()
    before = time.time()
    for i in range(3):
        chat(server, f"timed {i}")
    stats = httpx.get(server.base_url.removesuffix("/v1") + "/stats", timeout=5).json()
    assert before <= stats["first_request_at"] <= stats["last_answer_at"] <= time.time()
