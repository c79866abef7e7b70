"""Batches against a model server this project did not write: Hugging Face's ``transformers serve``,
serving the SmolLM2 checkpoint dequantized from the shipped GGUF file. A chat batch and a
completions batch through the official ``openai`` SDK against ``batchinfer serve`` complete, and
every answer is the answer the server gives to the same body sent to it directly."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from batchinfer.testing.transformers_serve import TransformersServe

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODEL = "smollm2-served"  # the session's models file: an `openai` model at transformers serve
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 plus 2?"]
STARTS = ["The capital of France is", "Water boils at", "The largest planet is"]


def run_batch(client: openai.OpenAI, endpoint: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output lines of a batch of ``bodies`` on ``endpoint``, in custom_id order."""
    rows = [
        {"custom_id": f"q{i}", "method": "POST", "url": endpoint, "body": {"model": MODEL, **body}}
        for i, body in enumerate(bodies)
    ]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    file_id = client.files.create(file=("tserve.jsonl", content), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 300
    while batch.status not in {"completed", "failed", "expired", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.error_file_id is None, batch
    assert batch.output_file_id is not None
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    return sorted(lines, key=lambda line: line["custom_id"])


def direct(server: TransformersServe, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.base_url + path, json={"model": server.model, **body}, timeout=120)
    response.raise_for_status()
    return dict(response.json())


def test_a_chat_batch_answers_as_the_server_does_directly(
    client: openai.OpenAI, transformers_server: TransformersServe
) -> None:
    bodies = [
        {"messages": [{"role": "user", "content": q}], "max_tokens": 16, "temperature": 0} for q in QUESTIONS
    ]
    lines = run_batch(client, "/v1/chat/completions", bodies)
    batched = [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines]
    expected = [
        direct(transformers_server, "/chat/completions", b)["choices"][0]["message"]["content"]
        for b in bodies
    ]
    assert batched == expected and all(batched)
    assert {line["response"]["body"]["model"] for line in lines} == {transformers_server.model}


def test_a_completions_batch_answers_as_the_server_does_directly(
    client: openai.OpenAI, transformers_server: TransformersServe
) -> None:
    bodies = [{"prompt": start, "max_tokens": 8, "temperature": 0} for start in STARTS]
    lines = run_batch(client, "/v1/completions", bodies)
    batched = [line["response"]["body"]["choices"][0]["text"] for line in lines]
    expected = [direct(transformers_server, "/completions", b)["choices"][0]["text"] for b in bodies]
    assert batched == expected and all(batched)
