"""Reliability end to end, against `batchinfer serve` and loopback model servers that misbehave:
a job killed mid-way and resumed, a `serve` killed and restarted, faults at the model server, the
job deadline, and a reader watching the outputs appear.

Prompt texts are unique per test, so the model servers' per-text counters (``prompts``) say exactly
which prompts a test's job sent, and how often.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from batchinfer.pipeline.chunk_run import read_requests
from batchinfer.pipeline.jobfiles import JobLayout, read_progress
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import (
    ServeProcess,
    prompt_texts,
    read_jsonl,
    serve_env,
    user_prompt,
    wait_for,
    write_prompts,
)

pytestmark = pytest.mark.e2e

CHUNK_SIZE = 50  # the session's serve runs with BATCHINFER_CHUNK_SIZE=50


def _body(path: Path, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "prompt_file_path": {"type": "filepath", "value": str(path)},
        "options": {"max_tokens": 16},
    }


def _submit(served: ServeProcess, path: Path, model: str) -> str:
    return str(served.submit_ok(_body(path, model))["job_id"])


def _chunks_done(served: ServeProcess, job_id: str) -> int:
    return int(served.status(job_id).json()["metadata"].get("chunks", {}).get("done", 0))


def _assert_every_line_answered_once_in_order(job: dict[str, Any], texts: list[str]) -> None:
    assert job["status"] == "completed", job
    assert read_jsonl(job["error_file_path"]["value"]) == []
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == list(range(1, len(texts) + 1))
    assert [r["generations"][0]["text"] for r in success] == [f"echo: {t}" for t in texts]


def _finished_chunks(job_dir: Path) -> set[int]:
    """Indices of the chunks whose result file exists (written whole, so the chunk is done)."""
    return {int(p.name.split("-")[1]) for p in (job_dir / "work" / "chunks").glob("result-*.jsonl")}


def _chunk_texts(job_dir: Path, index: int) -> list[str]:
    requests = read_requests(job_dir / "work" / "chunks" / f"input-{index:05d}.jsonl")
    return [r.messages[-1].text or "" for r in requests]


def _flow_run_process(served: ServeProcess, job_id: str) -> psutil.Process:
    """The process running the job, as its progress file names it; a descendant of ``serve``
    (not the Prefect server, not the runner)."""
    assert served.proc is not None
    progress = read_progress(JobLayout(served.home / "jobs" / job_id))
    assert progress is not None and progress.pid is not None, f"job {job_id} has published no pid"
    process = psutil.Process(progress.pid)
    assert process in psutil.Process(served.proc.pid).children(recursive=True)
    assert process != served.runner()
    return process


def _retry_like_the_prefect_ui(served: ServeProcess, job_id: str) -> None:
    """Exactly the request the Prefect UI's "Retry" button sends."""
    response = httpx.post(
        f"{served.prefect_api_url}/flow_runs/{job_id}/set_state",
        json={
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
            "force": False,
        },
        timeout=30,
    )
    assert response.status_code == 201 and response.json()["status"] == "ACCEPT", response.text


def _resume_via_endpoint(served: ServeProcess, job_id: str) -> None:
    response = served.resume(job_id)
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == job_id
    assert response.json()["status"] == "validating"


# ---- resume after a crash --------------------------------------------------------------------


@pytest.mark.parametrize(
    "resume", [_resume_via_endpoint, _retry_like_the_prefect_ui], ids=["resume_job", "prefect-ui-retry"]
)
def test_a_job_killed_mid_way_finishes_on_resume_without_resending_its_finished_chunks(
    served: ServeProcess,
    data_dir: Path,
    slow_openai: FakeOpenAIServer,
    resume: Callable[[ServeProcess, str], None],
) -> None:
    texts = prompt_texts(f"killed-{resume.__name__}", 800)  # 16 chunks; ~3 s at the slow server
    job_id = _submit(served, write_prompts(data_dir, f"killed{resume.__name__}", texts), "fake-slow")
    wait_for(lambda: _chunks_done(served, job_id) >= 3, 60, "three chunks done")

    _flow_run_process(served, job_id).kill()  # SIGKILL: no cleanup, no last words
    crashed = served.wait(job_id, timeout_s=60)
    assert crashed["status"] == "failed"
    assert crashed["metadata"]["error"]["code"] == "crashed"
    assert f"batchinfer resume {job_id}" in crashed["metadata"]["error"]["message"]
    job_dir = served.home / "jobs" / job_id
    assert not (job_dir / "success.jsonl").exists()  # a crash leaves no output that looks complete
    finished = _finished_chunks(job_dir)
    assert 0 < len(finished) < len(texts) // CHUNK_SIZE

    resume(served, job_id)
    _assert_every_line_answered_once_in_order(served.wait(job_id, timeout_s=120), texts)
    for index in finished:
        sent = {text: slow_openai.prompts[text] for text in _chunk_texts(job_dir, index)}
        assert set(sent.values()) == {1}, f"chunk {index} was sent again on resume: {sent}"


def test_a_job_left_running_by_a_killed_serve_shows_interrupted_after_a_restart_and_resumes(
    tmp_path: Path, models_file: Path, slow_openai: FakeOpenAIServer, prefect_db_template: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = serve_env(home, models_file, roots=[tmp_path], BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE))
    first = ServeProcess(home=home, env=env, database_template=prefect_db_template).start()
    texts = prompt_texts("restart", 800)
    job_id = _submit(first, write_prompts(tmp_path, "restart", texts), "fake-slow")
    wait_for(lambda: _chunks_done(first, job_id) >= 2, 60, "two chunks done")

    assert first.proc is not None
    family = [psutil.Process(first.proc.pid), *psutil.Process(first.proc.pid).children(recursive=True)]
    for process in family:  # kill -9 the whole tree: server, runner, job, adapter
        process.kill()
    psutil.wait_procs(family, timeout=15)
    first.proc.wait()

    second = ServeProcess(home=home, env=env).start()
    try:
        job = second.status(job_id).json()
        assert job["status"] == "failed"
        assert job["metadata"]["error"]["code"] == "interrupted"
        message = job["metadata"]["error"]["message"]
        assert "serve stopped while this job was running" in message
        assert f"batchinfer resume {job_id}" in message and "resume_job" in message

        result = subprocess.run(
            [sys.executable, "-m", "batchinfer.cli", "resume", job_id],
            env={**env, "PREFECT_API_URL": second.prefect_api_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["job_id"] == job_id
        _assert_every_line_answered_once_in_order(second.wait(job_id, timeout_s=120), texts)
    finally:
        second.stop()


def test_resume_refuses_a_completed_job_with_409_and_an_unknown_one_with_404(
    served: ServeProcess, data_dir: Path
) -> None:
    texts = prompt_texts("resume-refused", 3)
    job_id = _submit(served, write_prompts(data_dir, "resume-refused", texts), "fake")
    assert served.wait(job_id)["status"] == "completed"
    response = served.resume(job_id)
    assert response.status_code == 409
    assert "already completed" in response.json()["detail"][0]["msg"]
    assert served.resume("6f1c2a3b-0000-4000-8000-000000000404").status_code == 404


# ---- faults at the model server --------------------------------------------------------------


def test_ten_percent_500s_and_ten_percent_429s_are_retried_until_every_line_succeeds_once(
    served: ServeProcess, data_dir: Path, flaky_openai: FakeOpenAIServer
) -> None:
    flaky_openai.reset()  # this server is this test's alone
    texts = prompt_texts("flaky", 300)
    job = served.wait(_submit(served, write_prompts(data_dir, "flaky", texts), "fake-flaky"))
    _assert_every_line_answered_once_in_order(job, texts)
    assert flaky_openai.statuses[200] == len(texts)  # each line answered exactly once
    assert flaky_openai.statuses[429] > 0 and flaky_openai.statuses[500] > 0
    assert flaky_openai.requests_total == len(texts) + flaky_openai.statuses[429] + flaky_openai.statuses[500]


def test_a_hang_is_retried_then_a_timeout_record_and_a_permanent_400_is_a_record_with_the_servers_message(
    served: ServeProcess, data_dir: Path, fake_openai: FakeOpenAIServer
) -> None:
    texts = prompt_texts("faults", 6)
    texts[2] = "[fault:400] e2e refused"
    texts[4] = "[fault:hang] e2e hangs"
    job = served.wait(_submit(served, write_prompts(data_dir, "faults", texts), "fake-faults"))
    assert job["status"] == "completed"
    errors = read_jsonl(job["error_file_path"]["value"])
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(3, "http_400"), (5, "timeout")]
    assert errors[0]["error"]["message"] == "scripted bad request"
    assert "timeout_s" in errors[1]["error"]["message"]
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == [1, 2, 4, 6]
    assert fake_openai.prompts[texts[2]] == 1  # a 400 is not retried
    assert fake_openai.prompts[texts[4]] == 2  # fake-faults: max_retries 1


def test_a_model_server_down_for_the_whole_job_fails_it_model_unreachable_with_every_line_recorded(
    served: ServeProcess, data_dir: Path, down_base_url: str
) -> None:
    texts = prompt_texts("down", 120)
    path = write_prompts(data_dir, "down", texts)
    path.write_text(path.read_text().replace(json.dumps(user_prompt(texts[1])), "not json", 1))
    job = served.wait(_submit(served, path, "fake-down"))
    assert job["status"] == "failed"
    assert job["metadata"]["error"]["code"] == "model_unreachable"
    assert down_base_url in job["metadata"]["error"]["message"]
    errors = read_jsonl(job["error_file_path"]["value"])
    assert [e["line"] for e in errors] == list(range(1, 121))
    assert {e["error"]["code"] for e in errors if e["line"] != 2} == {"connection_error"}
    assert errors[1]["error"]["code"] == "invalid_json"
    assert read_jsonl(job["success_file_path"]["value"]) == []
    # Nothing is kept of the connection errors, so a resume asks the server again.
    assert _finished_chunks(served.home / "jobs" / job["job_id"]) == set()


def test_a_wrong_api_key_fails_the_job_auth_failed_in_seconds_and_a_resume_after_the_fix_finishes_it(
    served: ServeProcess, data_dir: Path, refusing_openai: FakeOpenAIServer
) -> None:
    texts = prompt_texts("bad key", 5_000)
    started = time.monotonic()
    job = served.wait(_submit(served, write_prompts(data_dir, "bad-key", texts), "fake-bad-key"))
    took = time.monotonic() - started
    assert job["status"] == "failed" and job["metadata"]["error"]["code"] == "auth_failed"
    assert "api_key_env" in job["metadata"]["error"]["message"]
    assert took < 30, took
    assert refusing_openai.requests_total <= 200  # not 5,000 requests to learn the key is wrong
    errors = read_jsonl(job["error_file_path"]["value"])
    assert len(errors) == 5_000 and {e["error"]["code"] for e in errors} == {"http_401", "auth_failed"}

    refusing_openai.refuse = None  # the user fixes the key, then resumes
    _resume_via_endpoint(served, job["job_id"])
    _assert_every_line_answered_once_in_order(served.wait(job["job_id"]), texts)


def test_retry_failed_after_the_server_recovers_resends_only_the_failed_lines_and_merges_them_in_place(
    served: ServeProcess, data_dir: Path, fake_openai: FakeOpenAIServer
) -> None:
    # 300 lines; every fifth fails with 503 for good (fake-faults: max_retries 1), one with a 400.
    texts = [f"retry {i}" + (" [fault:503]" if i % 5 == 0 else "") for i in range(300)]
    texts[1] = "retry 1 [fault:400]"
    job = served.wait(_submit(served, write_prompts(data_dir, "retry", texts), "fake-faults"))
    assert job["status"] == "completed" and job["metadata"]["request_counts"]["failed"] == 61
    sent_before = {t: fake_openai.prompts[t] for t in texts}
    try:
        fake_openai.faults = False  # the server recovers
        response = httpx.post(served.url + "/batch_inference/retry_failed", json={"job_id": job["job_id"]})
        assert response.status_code == 200, response.text
        retried = served.wait(job["job_id"])
        resent = {t for t in texts if fake_openai.prompts[t] != sent_before[t]}
        assert resent == {t for t in texts if "[fault:503]" in t}  # only the 60 retryable lines, once each
        assert all(fake_openai.prompts[t] == sent_before[t] + 1 for t in resent)
        success = read_jsonl(retried["success_file_path"]["value"])
        assert [r["line"] for r in success] == [n for n in range(1, 301) if n != 2]  # in order, once each
        assert [e["line"] for e in read_jsonl(retried["error_file_path"]["value"])] == [2]  # the 400 stays

        # `batchinfer retry --all` runs the 400 too; after that there is nothing left to retry.
        cli = subprocess.run(
            [sys.executable, "-m", "batchinfer.cli", "retry", job["job_id"], "--all"],
            env={**served.env, "PREFECT_API_URL": served.prefect_api_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        finished = served.wait(job["job_id"])
        assert read_jsonl(finished["error_file_path"]["value"]) == []
        assert len(read_jsonl(finished["success_file_path"]["value"])) == 300
        again = httpx.post(served.url + "/batch_inference/retry_failed", json={"job_id": job["job_id"]})
        assert again.status_code == 409 and "no retryable" in again.json()["detail"][0]["msg"]
    finally:
        fake_openai.faults = True


# ---- the deadline ----------------------------------------------------------------------------


def _run_cli(served: ServeProcess, prompts: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "batchinfer.cli", "run", str(prompts), "--model", "stalling"]
    return subprocess.run(
        [*argv, "--max-tokens", "16", "--output-dir", str(out)],
        env={**served.env, "PREFECT_API_URL": served.prefect_api_url, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_job_past_its_deadline_fails_deadline_exceeded_and_a_rerun_reuses_its_finished_chunks(
    served: ServeProcess, data_dir: Path, tmp_path: Path
) -> None:
    # Four chunks of 10, two in flight at a time. Chunks 1 and 2 stall (their first requests take
    # 7 s) past the 5 s deadline, so chunk 3 is never started, however slow the machine is.
    texts = prompt_texts("deadline", 40)
    texts[10:30] = [f"[fault:hangx1] {t}" for t in texts[10:30]]
    prompts, out = write_prompts(data_dir, "deadline", texts), data_dir / "deadline-out"
    with FakeOpenAIServer(hang_s=7) as server:
        models = tmp_path / "models.yaml"
        models.write_text(
            json.dumps(  # JSON is YAML
                {
                    # A fixed limit: `auto` would start at 8 in flight and send each chunk's last
                    # two stalling requests 7 s later, which only makes this test wait longer.
                    "models": [
                        {
                            "id": "stalling",
                            "engine": "openai",
                            "base_url": server.base_url,
                            "model": "m",
                            "max_concurrency": 64,
                        }
                    ]
                }
            )
        )
        env = {
            "BATCHINFER_MODELS": str(models),
            "BATCHINFER_CHUNK_SIZE": "10",
            "BATCHINFER_MAX_PARALLEL_CHUNKS": "2",
        }
        first = _run_cli(served, prompts, out, **env, BATCHINFER_JOB_TIMEOUT_S="5")
        assert first.returncode == 1, first.stderr
        job = json.loads(first.stdout)
        assert job["status"] == "failed"
        assert job["metadata"]["error"]["code"] == "deadline_exceeded"
        assert "deadline of 5 s (BATCHINFER_JOB_TIMEOUT_S)" in job["metadata"]["error"]["message"]
        assert all(server.prompts[t] == 0 for t in texts[30:])  # chunk 3: never submitted
        finished = _finished_chunks(out)  # chunks in flight at the deadline finished, and are kept
        assert finished and 3 not in finished

        second = _run_cli(served, prompts, out, **env)  # same input, model, options: same chunk keys
        assert second.returncode == 0, second.stderr
        _assert_every_line_answered_once_in_order(json.loads(second.stdout), texts)
        for index in finished:
            assert {server.prompts[t] for t in _chunk_texts(out, index)} == {1}


# ---- atomic outputs --------------------------------------------------------------------------


def test_a_reader_polling_the_job_dir_never_sees_a_partial_output_file(
    served: ServeProcess, data_dir: Path
) -> None:
    texts = prompt_texts("atomic", 2000)
    path = write_prompts(data_dir, "atomic", texts)
    path.write_text(path.read_text().replace(json.dumps(user_prompt(texts[9])), "{broken", 1))
    job_id = _submit(served, path, "fake")
    job_dir = served.home / "jobs" / job_id
    seen: list[tuple[str, int, bool]] = []  # (file, lines, ends with a newline)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for name in ("success.jsonl", "errors.jsonl"):
                try:
                    data = (job_dir / name).read_bytes()
                except FileNotFoundError:
                    continue
                seen.append((name, data.count(b"\n"), data.endswith(b"\n")))

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        assert served.wait(job_id)["status"] == "completed"
        wait_for(lambda: ("success.jsonl", 1999, True) in seen, 30, "a look at the finished files")
    finally:
        stop.set()
        reader.join(timeout=10)
    assert seen, "the reader never saw an output file"
    assert set(seen) <= {("success.jsonl", 1999, True), ("errors.jsonl", 1, True)}
