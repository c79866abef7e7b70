"""Beyond one machine, for real: ``batchinfer serve`` on machine A hands its jobs to a process work pool
(``BATCHINFER_WORK_POOL``) whose worker runs on machine B, and every job's files live on an
S3-compatible server (``BATCHINFER_OUTPUT_URL``), with the Prefect server's state in PostgreSQL.

The two machines are two homes and two working directories that share no path: A's disk never holds
a job's outputs, yet A answers for every job (status, results, cancel, resume, retry) from the
Prefect API and the store alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from batchinfer.cli.children import end_process_trees
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.s3 import S3Server
from batchinfer.testing.served import ServeProcess, prompt_texts, serve_env, wait_for, write_prompts

pytestmark = pytest.mark.e2e
POOL = "machine-b-pool"


@dataclass
class Machines:
    a: ServeProcess  # serve: the API and the Prefect server, no runner
    b: subprocess.Popen[bytes]  # a worker of the pool, in its own home and working directory
    s3: S3Server
    data: Path  # where prompt files are, readable from both (as a shared mount would be)

    def fsspec_read(self, url: str) -> list[dict[str, object]]:
        import json

        import fsspec

        with self.s3.activate(), fsspec.open(url, "r") as handle:
            return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def machines(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    slow_openai: FakeOpenAIServer,
    fake_openai: FakeOpenAIServer,
) -> Iterator[Machines]:
    root = tmp_path_factory.mktemp("two-machines")
    data, home_a, home_b, cwd_b = root / "data", root / "a", root / "b", root / "b-cwd"
    for directory in (data, home_a, home_b, cwd_b):
        directory.mkdir()
    models = data / "models.yaml"
    entries = [
        {"id": "fake", "engine": "openai", "base_url": fake_openai.base_url, "model": "fake-model"},
        {"id": "fake-slow", "engine": "openai", "base_url": slow_openai.base_url, "model": "fake-model"},
        {
            "id": "fake-faults",
            "engine": "openai",
            "base_url": fake_openai.base_url,
            "model": "fake-model",
            "max_retries": 0,
            "timeout_s": 5,
        },
    ]
    models.write_text(yaml.safe_dump({"models": entries}), encoding="utf-8")
    with S3Server().running() as s3:
        env_a = serve_env(
            home_a,
            models,
            roots=[data],
            PREFECT_API_DATABASE_CONNECTION_URL=postgres_url,
            BATCHINFER_WORK_POOL=POOL,
            BATCHINFER_OUTPUT_URL=s3.url("jobs"),
            BATCHINFER_CHUNK_SIZE="100",
            **s3.env,
        )
        a = ServeProcess(home=home_a, env=env_a).start()
        try:
            env_b = serve_env(home_b, models, roots=[data], PREFECT_API_URL=a.prefect_api_url, **s3.env)
            env_b["PREFECT_WORKER_QUERY_SECONDS"] = "1"
            argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", "machine-b"]
            with open(root / "worker-b.log", "ab") as log:
                b = subprocess.Popen(argv, env=env_b, cwd=cwd_b, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield Machines(a, b, s3, data)
            finally:
                # A worker stopped while its last flow run ends can wait on it for half a minute.
                end_process_trees([b], grace_s=10)
        finally:
            a.stop()


def submit(machines: Machines, model: str, tag: str, lines: int) -> str:
    prompts = write_prompts(machines.data, tag, prompt_texts(tag, lines))
    body = {"model": model, "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
    return str(machines.a.submit_ok(body)["job_id"])


def no_outputs_on_a(machines: Machines, job_id: str) -> None:
    left = [p for p in machines.a.home.rglob("*") if job_id in str(p) and p.is_file()]
    assert left == [], f"machine A holds files of job {job_id}: {left}"


def test_a_job_submitted_to_a_runs_on_b_and_its_outputs_are_on_the_store(machines: Machines) -> None:
    tag, lines = "two-machines", 250
    job_id = submit(machines, "fake", tag, lines)
    job = machines.a.wait(job_id, timeout_s=240)
    assert job["status"] == "completed", job
    success = job["success_file_path"]
    assert success["type"] == "uri" and success["value"] == machines.s3.url("jobs", job_id, "success.jsonl")
    records = machines.fsspec_read(success["value"])
    assert [r["line"] for r in records] == list(range(1, lines + 1))
    assert [r["generations"][0]["text"] for r in records] == [f"echo: {t}" for t in prompt_texts(tag, lines)]  # type: ignore[index]
    results = job["metadata"]["results_file_path"]["value"]
    with machines.s3.activate():
        assert list(pd.read_parquet(results)["line"]) == list(range(1, lines + 1))
    no_outputs_on_a(machines, job_id)


def test_a_cancel_keeps_the_finished_lines_on_the_store_and_a_resume_sends_only_the_rest(
    machines: Machines, slow_openai: FakeOpenAIServer
) -> None:
    tag, lines = "two-machines-cancel", 1500
    job_id = submit(machines, "fake-slow", tag, lines)
    wait_for(lambda: slow_openai.sent(tag) >= 300, 180, "the job's first requests from machine B")
    assert machines.a.cancel(job_id).status_code == 200
    cancelled = machines.a.wait(job_id, timeout_s=120)
    assert cancelled["metadata"]["error"]["code"] == "cancelled", cancelled
    kept = machines.fsspec_read(cancelled["success_file_path"]["value"])
    assert 0 < len(kept) < lines
    assert machines.a.resume(job_id).status_code == 200
    done = machines.a.wait(job_id, timeout_s=240)
    assert done["status"] == "completed", done
    assert [r["line"] for r in machines.fsspec_read(done["success_file_path"]["value"])] == list(
        range(1, lines + 1)
    )
    # The lines kept before the cancel were not sent again (one in flight at the cancel may be).
    texts = prompt_texts(tag, lines)
    assert all(slow_openai.prompts[texts[r["line"] - 1]] == 1 for r in kept)  # type: ignore[index,operator]
    no_outputs_on_a(machines, job_id)


def test_retry_failed_reruns_only_the_failed_lines_from_the_store(
    machines: Machines, fake_openai: FakeOpenAIServer
) -> None:
    tag, lines = "two-machines-retry", 60
    texts = [f"{t} [fault:503]" if i % 6 == 0 else t for i, t in enumerate(prompt_texts(tag, lines))]
    prompts = machines.data / f"{tag}.jsonl"
    prompts.write_text("".join(f'[{{"role": "user", "text": "{t}"}}]\n' for t in texts))
    body = {"model": "fake-faults", "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
    job_id = str(machines.a.submit_ok(body)["job_id"])
    job = machines.a.wait(job_id, timeout_s=240)
    failed = machines.fsspec_read(job["error_file_path"]["value"])
    assert len(failed) == lines // 6
    try:
        fake_openai.faults = False  # the server recovers
        before = {t: fake_openai.prompts[t] for t in texts}
        retried = httpx.post(
            machines.a.url + "/batch_inference/retry_failed", json={"job_id": job_id}, timeout=30
        )
        assert retried.status_code == 200, retried.text
        wait_for(lambda: any(fake_openai.prompts[t] > before[t] for t in texts), 120, "the retry's requests")
        done = machines.a.wait(job_id, timeout_s=240)
    finally:
        fake_openai.faults = True
    assert done["status"] == "completed" and machines.fsspec_read(done["error_file_path"]["value"]) == []
    resent = {t for t in texts if fake_openai.prompts[t] > before[t]}
    assert resent == {t for t in texts if "[fault:503]" in t}
    no_outputs_on_a(machines, job_id)
