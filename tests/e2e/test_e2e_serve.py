"""End to end: `batchinfer serve` (real Prefect server, runner, adapter) driven over HTTP like a user.

Only the models are doubles: a deterministic OpenAI-compatible server on 127.0.0.1 that answers
"echo: <prompt>", and a tiny transformers model built by the test session.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from batchinfer.client import BatchInferClient
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


def _prompts(n: int, tag: str) -> list[list[dict[str, str]]]:
    return [user_prompt(f"{tag} question {i}") for i in range(n)]


def _body(path: dict[str, str], model: str = "fake", **extra: object) -> dict[str, object]:
    return {"model": model, "prompt_file_path": path, "options": {"max_tokens": 16}, **extra}


def _check_echo_outputs(job: dict, prompts: list[list[dict[str, str]]]) -> None:
    """Every line answered, in input order, each with the answer to its own prompt."""
    assert job["status"] == "completed", job
    success = read_jsonl(job["success_file_path"]["value"])
    assert read_jsonl(job["error_file_path"]["value"]) == []
    assert [r["line"] for r in success] == list(range(1, len(prompts) + 1))
    for record, prompt in zip(success, prompts, strict=True):
        assert record["generations"][0]["text"] == f"echo: {prompt[0]['text']}"
        assert record["generations"][0]["role"] == "assistant"
    counts = job["metadata"]["request_counts"]
    assert counts == {"total": len(prompts), "completed": len(prompts), "failed": 0}


def test_a_filepath_job_runs_to_completion_with_every_line_answered(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = _prompts(120, "filepath")
    path = write_jsonl(data_dir / "filepath.jsonl", prompts)
    job = served.submit_ok(_body({"type": "filepath", "value": str(path)}))
    uuid.UUID(job["job_id"])
    assert job["status"] == "validating"
    _check_echo_outputs(served.wait(job["job_id"]), prompts)


def test_a_file_uri_job_runs_to_completion(served: ServeProcess, data_dir: Path) -> None:
    prompts = _prompts(30, "uri")
    path = write_jsonl(data_dir / "uri.jsonl", prompts)
    job = served.submit_ok(_body({"type": "uri", "value": path.as_uri()}))
    _check_echo_outputs(served.wait(job["job_id"]), prompts)


@pytest.mark.parametrize("encoding", ["jsonl-text", "base64"])
def test_a_raw_bytes_job_runs_to_completion(served: ServeProcess, encoding: str) -> None:
    prompts = _prompts(25, f"raw-{encoding}")
    text = "".join(json.dumps(p) + "\n" for p in prompts)
    value = text if encoding == "jsonl-text" else base64.b64encode(text.encode()).decode()
    job = served.submit_ok(_body({"type": "raw_bytes", "value": value}))
    assert job["input_file_path"]["type"] == "filepath"  # staged by content hash, not echoed back
    _check_echo_outputs(served.wait(job["job_id"]), prompts)


def test_a_thousand_line_job_puts_every_line_in_exactly_one_file_in_input_order(
    served: ServeProcess, data_dir: Path
) -> None:
    rows: list[object] = []
    bad_lines = {17, 250, 999}
    for i in range(1, 1001):
        rows.append("not json" if i in bad_lines else user_prompt(f"thousand {i}"))
    path = data_dir / "thousand.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    job = served.wait(served.submit_ok(_body({"type": "filepath", "value": str(path)}))["job_id"])
    assert job["status"] == "completed"
    success = read_jsonl(job["success_file_path"]["value"])
    errors = read_jsonl(job["error_file_path"]["value"])
    assert sorted([r["line"] for r in success] + [r["line"] for r in errors]) == list(range(1, 1001))
    assert [r["line"] for r in success] == sorted(r["line"] for r in success)
    assert {r["line"] for r in errors} == bad_lines
    for record in success:
        assert record["generations"][0]["text"] == f"echo: thousand {record['line']}"
    assert job["metadata"]["request_counts"] == {"total": 1000, "completed": 997, "failed": 3}


def test_bad_lines_go_to_the_error_file_with_line_code_and_message_and_the_rest_run(
    served: ServeProcess, data_dir: Path
) -> None:
    lines = [
        json.dumps(user_prompt("fine one")),
        "{not json",
        json.dumps({"role": "user", "text": "not a list"}),
        "[]",
        json.dumps([{"role": "wizard", "text": "x"}]),
        json.dumps([{"role": "user"}]),
        json.dumps([{"role": "user", "text": "x", "attachments": [{"attachment_type": "smell"}]}]),
        json.dumps(user_prompt("fine two")),
    ]
    path = data_dir / "bad-lines.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = served.wait(served.submit_ok(_body({"type": "filepath", "value": str(path)}))["job_id"])
    assert job["status"] == "completed"
    errors = read_jsonl(job["error_file_path"]["value"])
    assert [(e["line"], e["error"]["code"]) for e in errors] == [
        (2, "invalid_json"),
        (3, "not_a_list"),
        (4, "empty_messages"),
        (5, "unknown_role"),
        (6, "missing_text"),
        (7, "invalid_attachment"),
    ]
    assert all(e["error"]["message"] for e in errors)
    success = read_jsonl(job["success_file_path"]["value"])
    assert [(r["line"], r["generations"][0]["text"]) for r in success] == [
        (1, "echo: fine one"),
        (8, "echo: fine two"),
    ]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty_file"),
        (b"\n\n  \n", "empty_file"),
        (b"\x1f\x8b\x08\x00\xff\xfe\x00\x81binary\n\xff\xfe\xfd\n", "not_utf8"),
        (b"nope\n{}\n[]\n", "no_valid_lines"),
    ],
    ids=["empty", "blank-only", "binary", "no-valid-line"],
)
def test_an_unusable_file_ends_the_job_failed_with_the_reason_in_metadata_and_error_file(
    served: ServeProcess, data_dir: Path, content: bytes, code: str
) -> None:
    path = data_dir / f"unusable-{code}-{len(content)}.jsonl"
    path.write_bytes(content)
    job = served.wait(served.submit_ok(_body({"type": "filepath", "value": str(path)}))["job_id"])
    assert job["status"] == "failed"
    assert job["metadata"]["error"]["code"] == code
    assert job["metadata"]["error"]["message"]
    errors = read_jsonl(job["error_file_path"]["value"])
    assert errors[-1]["line"] is None and errors[-1]["error"]["code"] == code
    assert read_jsonl(job["success_file_path"]["value"]) == []


def test_a_job_is_seen_validating_then_running_then_completed_with_counts_moving(
    served: ServeProcess, data_dir: Path, slow_openai: FakeOpenAIServer
) -> None:
    prompts = _prompts(400, "watched")  # 400 x 25 ms at 8 in flight: a few seconds of running
    path = write_jsonl(data_dir / "watched.jsonl", prompts)
    job_id = served.submit_ok(_body({"type": "filepath", "value": str(path)}, model="fake-slow"))["job_id"]
    seen: list[str] = []
    partial_counts: set[int] = set()
    while not seen or seen[-1] not in {"completed", "failed"}:
        job = served.status(job_id).json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        done = job["metadata"]["request_counts"]["completed"]
        if job["status"] == "running" and 0 < done < len(prompts):
            partial_counts.add(done)
    assert seen == ["validating", "running", "completed"]
    assert partial_counts, "request_counts never showed a job part-way done"
    _check_echo_outputs(served.status(job_id).json(), prompts)


def test_the_transformers_engine_runs_a_job_with_n_generations_and_logprobs(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = _prompts(10, "tiny")
    path = write_jsonl(data_dir / "tiny.jsonl", prompts)
    body = {
        "model": "tiny",
        "prompt_file_path": {"type": "filepath", "value": str(path)},
        "options": {"max_tokens": 6, "temperature": 0.8, "logprobs": True},
        "num_generations": 2,
    }
    job = served.wait(served.submit_ok(body)["job_id"], timeout_s=240)
    assert job["status"] == "completed", job
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == list(range(1, 11))
    for record in success:
        assert len(record["generations"]) == 2
        for generation in record["generations"]:
            assert generation["finish_reason"] in {"stop", "length"}
            tokens = generation["logprobs"]["content"]
            assert 1 <= len(tokens) <= 6
            assert all(t["logprob"] <= 0 for t in tokens)


def test_the_prefect_ui_gets_a_progress_artifact_and_named_phases(
    served: ServeProcess, data_dir: Path
) -> None:
    path = write_jsonl(data_dir / "artifact.jsonl", _prompts(60, "artifact"))
    job = served.wait(served.submit_ok(_body({"type": "filepath", "value": str(path)}))["job_id"])
    artifacts = httpx.post(
        served.prefect_api_url + "/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [job["job_id"]]}}},
        timeout=10,
    ).json()
    progress = [a for a in artifacts if a["type"] == "progress"]
    assert progress and progress[0]["data"] == pytest.approx(100.0)
    states = httpx.get(
        served.prefect_api_url + "/flow_run_states/", params={"flow_run_id": job["job_id"]}, timeout=10
    ).json()
    names = [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]
    assert [n for n in names if n in {"Validating", "Inferring", "Gathering"}] == [
        "Validating",
        "Inferring",
        "Gathering",
    ]
    assert names[-1] == "Completed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "nope", "prompt_file_path": {"type": "raw_bytes", "value": "[]"}}, "model"),
        (
            {"model": "fake", "prompt_file_path": {"type": "filepath", "value": "/no/such/file.jsonl"}},
            "prompt_file_path",
        ),
        (
            {"model": "fake", "prompt_file_path": {"type": "uri", "value": "ftp://host/x.jsonl"}},
            "prompt_file_path",
        ),
        (
            {"model": "fake", "prompt_file_path": {"type": "raw_bytes", "value": "[]"}, "num_generations": 0},
            "num_generations",
        ),
        (
            {
                "model": "fake",
                "prompt_file_path": {"type": "raw_bytes", "value": "[]"},
                "options": {"top_p": 2},
            },
            "options",
        ),
    ],
    ids=["unknown-model", "missing-file", "bad-scheme", "zero-generations", "top-p-too-big"],
)
def test_a_bad_request_gets_a_4xx_naming_the_field(served: ServeProcess, body: dict, field: str) -> None:
    response = served.submit(body)
    assert 400 <= response.status_code < 500
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


def test_an_unknown_model_error_lists_the_known_ids(served: ServeProcess) -> None:
    response = served.submit({"model": "nope", "prompt_file_path": {"type": "raw_bytes", "value": "[]"}})
    message = response.json()["detail"][0]["msg"]
    assert "fake" in message and "smollm2-135m" in message


def test_job_status_of_an_unknown_job_is_404_and_of_a_non_uuid_is_422(served: ServeProcess) -> None:
    assert served.status(str(uuid.uuid4())).status_code == 404
    response = served.status("not-a-uuid")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "job_id"]


def test_job_results_is_a_growing_ordered_prefix_while_a_20000_line_job_runs_and_follow_reads_it_all(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = _prompts(20_000, "live")
    path = data_dir / "live.jsonl"
    write_jsonl(path, prompts)
    job_id = served.submit_ok(_body({"type": "filepath", "value": str(path)}))["job_id"]
    env = {k: v for k, v in served.env.items() if not k.startswith("PREFECT_")}
    follower = subprocess.Popen(
        [sys.executable, "-m", "batchinfer.cli", "results", job_id, "--follow"],
        env={**env, "BATCHINFER_URL": served.url},
        stdout=subprocess.PIPE,
        text=True,
    )
    prefixes, last = [], 0  # the last line of each growing read while the job ran
    with BatchInferClient(served.url) as client:
        while True:
            so_far = client.job_results(job_id, after_line=last)
            got = [record["line"] for record in so_far.records]
            assert got == list(range(last + 1, last + 1 + len(got)))  # in order, from where it left off
            last += len(got)
            if so_far.status.value in ("completed", "failed"):
                break
            if got:
                prefixes.append(last)
            time.sleep(0.2)
    assert so_far.status.value == "completed" and last == 20_000
    assert len(prefixes) >= 2 and prefixes[0] < 20_000, prefixes  # seen growing, not only at the end
    out, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0
    followed = [json.loads(line) for line in out.splitlines()]
    assert followed == read_jsonl(served.status(job_id).json()["success_file_path"]["value"])
