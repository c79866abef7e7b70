"""A batch file means what it says, end to end: with the official ``openai`` SDK against a running
``batchinfer serve`` and the fake model server that records what it is sent (model
``fake-recording``), every line reaches the server as written, and the output file holds the
server's answers whole; embeddings and completions batches complete with the server's vectors and
texts; the same file through the seed's ``submit_job`` gives records that carry the tool calls."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from batchinfer.testing import fake_answers
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl
from tests.e2e.test_e2e_openai_sdk import ENDED, jsonl, lines_of, poll, start
from tests.engines.test_openai_fidelity import CONVERSATION, EVERY_FIELD, SCHEMA, TOOLS

pytestmark = pytest.mark.e2e

MODEL = "fake-recording"
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "echo", "schema": SCHEMA, "strict": True}}
# custom_id -> the line's body: every field of the contract's issue, and the common workloads.
CHAT_LINES: dict[str, dict[str, Any]] = {
    "every-field": {**copy.deepcopy(EVERY_FIELD), "n": 1},
    "json": {"messages": [{"role": "user", "content": "extract"}], "response_format": JSON_FORMAT},
    "top-logprobs": {
        "messages": [{"role": "user", "content": "rank me"}],
        "logprobs": True,
        "top_logprobs": 2,
    },
    "tool-history": {"messages": CONVERSATION, "tools": TOOLS, "tool_choice": "none", "seed": 3},
}


def batch_file(lines: dict[str, dict[str, Any]], url: str) -> bytes:
    rows = [
        {"custom_id": cid, "method": "POST", "url": url, "body": {"model": MODEL, **body}}
        for cid, body in lines.items()
    ]
    return jsonl(rows)


def completed(client: openai.OpenAI, content: bytes, endpoint: str) -> list[dict[str, Any]]:
    """The output lines of a batch of ``content`` run to completion, by custom_id order."""
    created = start(client, content, "fidelity.jsonl", endpoint=endpoint)
    batch, _ = poll(client, created.id, ENDED)
    assert batch.status == "completed" and batch.error_file_id is None, batch
    return lines_of(client, batch.output_file_id)


def sent_bodies(server: FakeOpenAIServer, kind: str) -> list[dict[str, Any]]:
    return [body for seen, body in server.bodies if seen == kind]


def test_a_chat_batch_reaches_the_server_as_written_and_its_answers_come_back_whole(
    client: openai.OpenAI, recording_openai: FakeOpenAIServer
) -> None:
    recording_openai.reset()
    output = completed(client, batch_file(CHAT_LINES, "/v1/chat/completions"), "/v1/chat/completions")

    received = sorted(sent_bodies(recording_openai, fake_answers.CHAT), key=json.dumps)
    expected = sorted(({**body, "model": "served-name"} for body in CHAT_LINES.values()), key=json.dumps)
    assert received == expected  # every field of every line, exactly as sent; the model's served name

    bodies = {line["custom_id"]: line["response"]["body"] for line in output}
    assert all(b["system_fingerprint"] == fake_answers.FINGERPRINT for b in bodies.values())
    assert all(b["id"].startswith("chatcmpl-fake-") and b["model"] == "served-name" for b in bodies.values())
    call = bodies["every-field"]["choices"][0]
    assert call["finish_reason"] == "tool_calls"
    assert call["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert json.loads(bodies["json"]["choices"][0]["message"]["content"]) == {"echo": "extract"}
    tokens = bodies["top-logprobs"]["choices"][0]["logprobs"]["content"]
    assert [len(t["top_logprobs"]) for t in tokens] == [2, 2, 2]
    assert bodies["tool-history"]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_an_embeddings_batch_completes_with_the_servers_vectors_in_input_order(client: openai.OpenAI) -> None:
    lines = {f"e-{i}": {"input": [f"text {i}", f"more {i}"], "dimensions": 4} for i in range(3)}
    output = completed(client, batch_file(lines, "/v1/embeddings"), "/v1/embeddings")
    for line in output:
        inputs = lines[line["custom_id"]]["input"]
        vectors = [item["embedding"] for item in line["response"]["body"]["data"]]
        assert vectors == [fake_answers.embedding_of(text, 4) for text in inputs]


def test_a_completions_batch_completes_with_the_servers_texts(
    client: openai.OpenAI, recording_openai: FakeOpenAIServer
) -> None:
    recording_openai.reset()
    lines = {f"c-{i}": {"prompt": f"Once upon {i}", "max_tokens": 8, "echo": False} for i in range(3)}
    output = completed(client, batch_file(lines, "/v1/completions"), "/v1/completions")
    assert {line["custom_id"]: line["response"]["body"]["choices"][0]["text"] for line in output} == {
        cid: f"echo: {body['prompt']}" for cid, body in lines.items()
    }
    assert all(body["echo"] is False for body in sent_bodies(recording_openai, fake_answers.COMPLETIONS))


def test_the_same_file_through_submit_job_gives_records_that_carry_the_tool_calls(
    served: ServeProcess, data_dir: Path
) -> None:
    path = data_dir / "fidelity-seed.jsonl"
    path.write_bytes(batch_file(CHAT_LINES, "/v1/chat/completions"))
    job = served.wait(
        served.submit_ok({"model": MODEL, "prompt_file_path": {"type": "filepath", "value": str(path)}})[
            "job_id"
        ]
    )
    assert job["status"] == "completed" and job["metadata"]["endpoint"] == "/v1/chat/completions"
    records = {r["custom_id"]: r for r in read_jsonl(job["success_file_path"]["value"])}
    (called,) = records["every-field"]["generations"]
    assert called["tool_call"] is True and called["finish_reason"] == "tool_calls"
    assert (
        called["metadata"]["tool_calls"]
        == records["every-field"]["response"]["choices"][0]["message"]["tool_calls"]
    )
    assert records["json"]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert all(t["top_logprobs"] for t in records["top-logprobs"]["generations"][0]["logprobs"]["content"])
