"""Operating jobs end to end, against `batchinfer serve`: cancel, list, a model's concurrency held
across jobs, and what the Prefect UI shows of a job (names, tags, artifacts), read back through
Prefect's REST API as the UI reads it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchinfer.control.notifications import TERMINAL_STATE_TYPES
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, prompt_texts, read_jsonl, wait_for, write_prompts
from batchinfer.testing.webhooks import Receiver

pytestmark = pytest.mark.e2e


def _submit(served: ServeProcess, path: Path, model: str) -> str:
    body = {
        "model": model,
        "prompt_file_path": {"type": "filepath", "value": str(path)},
        "options": {"max_tokens": 16},
    }
    return str(served.submit_ok(body)["job_id"])


def _job(served: ServeProcess, job_id: str) -> dict[str, Any]:
    return dict(served.status(job_id).json())


def _lines_done(served: ServeProcess, job_id: str) -> int:
    counts = _job(served, job_id)["metadata"]["request_counts"]
    return int(counts["completed"]) + int(counts["failed"])


def _prefect(served: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, served.prefect_api_url + path, json=body, timeout=30)
    assert response.status_code < 300, response.text
    return response.json()


# ---- cancel ----------------------------------------------------------------------------------


def test_a_cancelled_job_stops_within_seconds_keeps_every_finished_line_and_resumes_the_rest(
    served: ServeProcess, data_dir: Path, slow_openai: FakeOpenAIServer
) -> None:
    texts = prompt_texts("cancel-me", 3000)  # ~10 s at the slow server: cancelled part-way
    job_id = _submit(served, write_prompts(data_dir, "cancel-me", texts), "fake-slow")
    wait_for(lambda: _lines_done(served, job_id) >= 200, 60, "200 lines done")
    assert served.job_processes(job_id), "the job runs in a process of its own under serve"

    asked = time.monotonic()
    response = served.cancel(job_id)
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == job_id
    job = served.wait(job_id, timeout_s=60)
    stopped_s = time.monotonic() - asked
    print(f"cancel -> failed(cancelled) in {stopped_s:.2f} s")

    assert job["status"] == "failed"
    assert job["metadata"]["error"]["code"] == "cancelled", (job["metadata"], served.log_tail(8000))
    assert "resume" in job["metadata"]["error"]["message"]
    sent_at_end = sum(slow_openai.prompts[t] for t in texts)
    success = read_jsonl(job["success_file_path"]["value"])
    errors = read_jsonl(job["error_file_path"]["value"])
    # Every line is in exactly one file, in order; the answered ones kept their answers.
    assert sorted(r["line"] for r in success + errors) == list(range(1, len(texts) + 1))
    assert all(r["generations"][0]["text"] == f"echo: {texts[r['line'] - 1]}" for r in success)
    assert {r["error"]["code"] for r in errors} == {"cancelled"}
    assert 200 <= len(success) < len(texts)
    # Nothing more reaches the model: the job's process has ended, and the model has answered
    # every request it had.
    wait_for(lambda: not served.job_processes(job_id), 30, "the job's process to end")
    wait_for(lambda: slow_openai.in_flight == 0, 30, "the model to answer what it had")
    assert sum(slow_openai.prompts[t] for t in texts) == sent_at_end

    assert served.resume(job_id).status_code == 200
    resumed = served.wait(job_id, timeout_s=120)
    assert resumed["status"] == "completed", (resumed["metadata"], served.log_tail())
    answers = read_jsonl(resumed["success_file_path"]["value"])
    assert [r["generations"][0]["text"] for r in answers] == [f"echo: {t}" for t in texts]
    # The lines answered before the cancel were not sent again.
    assert all(slow_openai.prompts[texts[r["line"] - 1]] == 1 for r in success)


def test_cancelling_an_ended_job_is_409_and_an_unknown_or_malformed_job_id_404_or_422(
    served: ServeProcess, data_dir: Path
) -> None:
    job_id = _submit(served, write_prompts(data_dir, "cancel-ended", prompt_texts("ce", 3)), "fake")
    assert served.wait(job_id)["status"] == "completed"

    ended = served.cancel(job_id)
    assert ended.status_code == 409
    assert ended.json()["detail"][0]["loc"] == ["query", "job_id"]
    assert "already ended" in ended.json()["detail"][0]["msg"]
    assert served.cancel("6a1f0c7e-0000-4000-8000-000000000000").status_code == 404
    assert served.cancel("not-a-uuid").status_code == 422
    assert _job(served, job_id)["status"] == "completed"  # a refused cancel changed nothing


# ---- list ------------------------------------------------------------------------------------


def test_the_job_list_is_paged_newest_first_and_filters_by_status_and_model(
    served: ServeProcess, data_dir: Path
) -> None:
    ids = [
        _submit(served, write_prompts(data_dir, f"listed-{i}", prompt_texts(f"listed {i}", 2)), "fake")
        for i in range(3)
    ]
    for job_id in ids:
        served.wait(job_id)

    first = served.jobs(model="fake", status="completed", limit=2).json()
    second = served.jobs(model="fake", status="completed", limit=2, offset=2).json()
    assert [j["job_id"] for j in first["data"]] == ids[::-1][:2]  # newest first
    assert first["has_more"] is True and first["limit"] == 2 and first["offset"] == 0
    assert first["total"] >= 3 and second["data"][0]["job_id"] == ids[0]
    assert all(j["status"] == "completed" for j in first["data"] + second["data"])

    assert served.jobs(model="fake-limited-none").json() == {
        "data": [],
        "total": 0,
        "limit": 20,
        "offset": 0,
        "has_more": False,
    }
    listed_failed = {j["job_id"] for j in served.jobs(status="failed", limit=200).json()["data"]}
    assert not listed_failed & set(ids)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "done"}, "status"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset")],
)
def test_a_bad_list_query_is_422_naming_the_parameter(
    served: ServeProcess, params: dict[str, Any], field: str
) -> None:
    response = served.jobs(**params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


# ---- a model's max_concurrency across jobs ------------------------------------------------------


def test_a_models_max_concurrency_holds_across_two_jobs_running_at_once(
    served: ServeProcess, data_dir: Path, limited_openai: FakeOpenAIServer
) -> None:
    limited_openai.reset()
    files = [write_prompts(data_dir, f"limited-{i}", prompt_texts(f"limited {i}", 300)) for i in range(2)]
    ids = [_submit(served, path, "fake-limited") for path in files]
    both_inferring = threading.Event()

    def watch() -> None:
        while not both_inferring.is_set():
            jobs = [_job(served, job_id) for job_id in ids]
            if all(j["metadata"]["state"]["name"] == "Inferring" for j in jobs):
                both_inferring.set()
            if any(j["status"] in ("completed", "failed") for j in jobs):
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    jobs = [served.wait(job_id, timeout_s=180) for job_id in ids]
    watcher.join(timeout=5)

    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert both_inferring.is_set(), "the two jobs never ran at the same time"
    # Each job alone keeps 4 requests in flight (2 chunks x 2 slots); at once, they still share 4.
    print(f"max in flight at the model server: {limited_openai.max_in_flight}")
    assert limited_openai.max_in_flight == 4
    limit = _prefect(served, "GET", "/v2/concurrency_limits/batchinfer-model-fake-limited")
    assert limit["limit"] == 4 and limit["active"] is True and limit["active_slots"] == 0


# ---- what the Prefect UI shows ------------------------------------------------------------------


def test_the_prefect_ui_shows_the_job_named_tagged_with_its_tasks_and_summary_artifacts(
    served: ServeProcess, data_dir: Path
) -> None:
    texts = prompt_texts("ui", 120)  # 3 chunks of 50
    path = write_prompts(data_dir, "ui-story", texts)
    job_id = _submit(served, path, "fake")
    job = served.wait(job_id)
    assert job["status"] == "completed"

    run = _prefect(served, "GET", f"/flow_runs/{job_id}")
    assert run["name"] == "fake · ui-story.jsonl"
    assert "model:fake" in run["tags"]
    wait_for(lambda: len(_task_names(served, job_id)) == 5, 30, "the 5 task runs recorded by the server")
    assert _task_names(served, job_id) == [
        "gather",
        "infer-chunk-0000",
        "infer-chunk-0001",
        "infer-chunk-0002",
        "validate",
    ]

    artifacts = _prefect(
        served, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [job_id]}}}
    )
    by_type = {a["type"]: a for a in artifacts}
    assert set(by_type) == {"progress", "table", "markdown"}
    assert by_type["progress"]["data"] == 100.0
    table = {row["metric"]: row["value"] for row in json.loads(by_type["table"]["data"])}
    assert table["lines"] == 120 and table["succeeded"] == 120 and table["failed"] == 0
    assert table["chunks"] == "3 of 3" and table["lines/s (inference)"] > 0
    assert table["completion tokens"] == job["metadata"]["usage"]["completion_tokens"] > 0
    markdown = by_type["markdown"]["data"]
    assert job["success_file_path"]["value"] in markdown
    assert job["error_file_path"]["value"] in markdown


# ---- notifications ---------------------------------------------------------------------------


def test_serve_with_a_webhook_url_posts_each_finished_job_once_with_its_status(
    served: ServeProcess, data_dir: Path, job_webhook: Receiver
) -> None:
    done = _submit(served, write_prompts(data_dir, "notified", prompt_texts("notified", 3)), "fake")
    failed = _submit(served, write_prompts(data_dir, "notified-down", prompt_texts("nd", 2)), "fake-down")
    assert served.wait(done)["status"] == "completed" and served.wait(failed)["status"] == "failed"

    job_webhook.wait_for_jobs([done, failed], timeout_s=60)
    # The automation calls once per terminal state a job enters, and each entered exactly one.
    for job_id in (done, failed):
        states = _prefect(served, "GET", f"/flow_run_states/?flow_run_id={job_id}")
        assert [s["type"] for s in states].count("COMPLETED" if job_id == done else "FAILED") == 1, states
        assert len([s for s in states if s["type"] in TERMINAL_STATE_TYPES]) == 1, states
    (completed,), (failure,) = job_webhook.for_job(done), job_webhook.for_job(failed)
    assert completed.body["status"] == "completed" and completed.body["state"]["type"] == "COMPLETED"
    assert failure.body["status"] == "failed" and failure.body["state"]["message"]


def _task_names(served: ServeProcess, job_id: str) -> list[str]:
    runs = _prefect(served, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [job_id]}}})
    return sorted(r["name"] for r in runs)
