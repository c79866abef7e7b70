"""Scale-out on Dask (``batchinfer.runtime.scaleout``): the configuration check, the shared-storage chunk
run and the stop marker on their own, then jobs on a real Dask cluster (a scheduler and workers, as
subprocesses) whose chunk files are on an S3-compatible server (moto's): a job spread over the
workers, a cancel that reaches the chunks already on them, a worker killed mid-job."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchinfer.engines.configs import EngineContext, OpenAIEngineConfig
from batchinfer.errors import JobError
from batchinfer.runtime.executors import ChunkWork, ThreadChunks, chunk_executor
from batchinfer.runtime.scaleout import STOP_POLL_S, DaskChunks, SharedStop, _mirror_result, run_chunk_at
from batchinfer.settings import Settings
from batchinfer.tasks.infer import infer_chunk
from batchinfer.testing.engines import EchoEngine, Flag
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.s3 import S3Server
from batchinfer.testing.served import (
    ServeProcess,
    free_port,
    prompt_texts,
    read_jsonl,
    serve_env,
    wait_for,
    write_prompts,
)
from tests.pipeline.test_chunk_run import write_chunk

PROMPTS = 200
CHUNK_SIZE = 20
DASK = str(Path(sys.executable).with_name("dask"))


# --- without a cluster --------------------------------------------------------------------------


def test_a_dask_address_without_shared_storage_fails_the_job_naming_both_variables() -> None:
    with pytest.raises(JobError) as caught:
        chunk_executor(Settings(dask_address="tcp://127.0.0.1:8786", shared_storage=None), "job", infer_chunk)
    assert "BATCHINFER_DASK_ADDRESS" in caught.value.message
    assert "BATCHINFER_SHARED_STORAGE" in caught.value.message


def test_without_a_dask_address_chunks_run_on_threads_and_with_one_on_dask(tmp_path: Path) -> None:
    assert isinstance(chunk_executor(Settings(dask_address=None), "job", infer_chunk), ThreadChunks)
    settings = Settings(dask_address="tcp://127.0.0.1:8786", shared_storage=tmp_path.as_uri())
    assert isinstance(chunk_executor(settings, "job", infer_chunk), DaskChunks)


def test_a_chunk_on_shared_storage_runs_once_and_is_reused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write_chunk(shared / "input-00000.jsonl", [(1, "a"), (2, "please fail"), (4, "b")])
    input_url, result_url = (
        (shared / "input-00000.jsonl").as_uri(),
        (shared / "result-00000-k.jsonl").as_uri(),
    )
    engine = EchoEngine()
    model = OpenAIEngineConfig(id="echo", base_url="http://127.0.0.1:9/v1", model="echo")
    work = ChunkWork(0, input_url, result_url, model, EngineContext(cache_dir=tmp_path))

    first = run_chunk_at(work, engine)
    again = run_chunk_at(work, engine)

    assert (first.succeeded, first.failed, first.reused) == (2, 1, False)
    assert (again.succeeded, again.failed, again.reused) == (2, 1, True)
    assert engine.calls == [[1, 2, 4]]  # the second run found the uploaded result
    assert [r["line"] for r in read_jsonl(shared / "result-00000-k.jsonl")] == [1, 2, 4]
    assert sorted(p.name for p in shared.iterdir()) == ["input-00000.jsonl", "result-00000-k.jsonl"]


def test_the_job_dir_decides_which_result_the_worker_finds(tmp_path: Path) -> None:
    local, shared = tmp_path / "result-local.jsonl", tmp_path / "shared" / "result.jsonl"
    local.write_text('{"line": 1}\n')
    _mirror_result(local, shared.as_uri())  # an earlier run's result goes up, for the worker to reuse
    assert shared.read_text() == '{"line": 1}\n'
    local.unlink()  # the flow dropped it (model unreachable): a resume must ask the model again
    _mirror_result(local, shared.as_uri())
    assert not shared.exists()


def test_a_chunk_on_a_worker_stops_once_its_jobs_stop_marker_is_up(tmp_path: Path) -> None:
    marker = tmp_path / "job" / "stop"
    local = Flag()
    stop = SharedStop(marker.as_uri(), local)
    assert not stop.is_set()
    marker.parent.mkdir()
    marker.write_text("cancelled")
    wait_for(stop.is_set, 10 * STOP_POLL_S, "the marker seen")  # at its next look, an interval on
    marker.unlink()
    assert stop.is_set()  # seen once: set for good
    assert SharedStop((tmp_path / "none").as_uri(), Flag(True)).is_set()  # its own process's stop counts


# --- on a real cluster, shared storage on S3 -----------------------------------------------------


def _start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own handle
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process and what it started (a worker's nanny starts the worker); kill if stuck."""
    if proc.poll() is not None:
        return
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@dataclass
class Cluster:
    address: str
    s3: S3Server
    env: dict[str, str]  # a job's environment: the session's Prefect server, this cluster
    workers: dict[str, subprocess.Popen[bytes]]
    data: Path

    def run(self, *args: str, **env: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "batchinfer.cli", "run", *args]
        env = {**self.env, **env}
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, models_file: Path, served: ServeProcess
) -> Iterator[Cluster]:
    """A Dask scheduler and two workers that record their task runs on the session's Prefect
    server (and take the models' concurrency slots there), an S3-compatible server for the chunk
    files, and the environment of a job that sends its chunks to them."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    home, data = tmp / "home", tmp / "data"
    for directory in (home, data):
        directory.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        _start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            tmp / "scheduler.log",
        )
    ]
    with S3Server().running() as s3:
        try:
            extra = {"PREFECT_API_URL": served.prefect_api_url, **s3.env}
            worker_env = serve_env(tmp / "worker-home", models_file, roots=[data, home], **extra)
            worker_env["PREFECT_HOME"] = str(tmp / "worker-prefect")
            workers = {}
            for name in ("worker-a", "worker-b"):
                argv = [DASK, "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "2"]
                workers[name] = _start([*argv, "--no-dashboard"], tmp / f"{name}.log", worker_env)
            procs += workers.values()
            with Client(address, timeout=30) as client:
                client.wait_for_workers(2, timeout=60)
            job_env = serve_env(
                home,
                models_file,
                roots=[data, home],
                BATCHINFER_DASK_ADDRESS=address,
                BATCHINFER_SHARED_STORAGE=s3.url("shared"),
                BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE),
                **extra,
            )
            yield Cluster(address, s3, job_env, workers, data)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _finished(run: subprocess.Popen[str], timeout_s: float = 180) -> dict[str, Any]:
    stdout, stderr = run.communicate(timeout=timeout_s)
    assert run.returncode == 0, stderr[-4000:]
    return dict(json.loads(stdout))


@pytest.mark.e2e
def test_a_job_spreads_its_chunks_over_the_dask_workers_through_s3(
    cluster: Cluster, limited_openai: FakeOpenAIServer
) -> None:
    """Model ``fake-limited`` (max_concurrency 4): its limit is a Prefect global concurrency limit
    that the job holds on the Prefect server while its chunks run on the workers."""
    from distributed import Client

    texts = prompt_texts("dask-scaleout", PROMPTS)
    job = _finished(
        cluster.run(str(write_prompts(cluster.data, "dask-scaleout", texts)), "--model", "fake-limited")
    )

    assert job["status"] == "completed", job
    assert job["metadata"]["request_counts"] == {"total": PROMPTS, "completed": PROMPTS, "failed": 0}
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == list(range(1, PROMPTS + 1))
    assert [r["generations"][0]["text"] for r in success] == [f"echo: {t}" for t in texts]
    assert all(limited_openai.prompts[t] == 1 for t in texts)  # every line answered exactly once
    assert limited_openai.max_in_flight <= 4  # the model's limit held across both workers

    with cluster.s3.activate():
        import s3fs

        chunks = s3fs.S3FileSystem(skip_instance_cache=True).ls(
            cluster.s3.url("shared", job["job_id"], "chunks")
        )
    names = [Path(key).name for key in chunks]
    chunk_count = PROMPTS // CHUNK_SIZE
    assert len([n for n in names if n.startswith("input-")]) == chunk_count
    assert len([n for n in names if n.startswith("result-")]) == chunk_count
    with Client(cluster.address, timeout=30) as client:  # both workers ran chunks, all of them together
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(n >= 1 for n in executed.values()), executed


@pytest.mark.e2e
def test_a_cancel_reaches_the_chunks_already_on_the_workers_within_seconds(
    cluster: Cluster, slow_openai: FakeOpenAIServer
) -> None:
    # Two chunks of 3000 lines, one a worker, each ~10 s at the slow server: a chunk on a worker
    # outlives the cancel by far unless the cancel reaches it.
    tag, lines = "dask-cancel", 6000
    prompts = write_prompts(cluster.data, tag, prompt_texts(tag, lines))
    run = cluster.run(str(prompts), "--model", "fake-slow", "--max-tokens", "8", BATCHINFER_CHUNK_SIZE="3000")
    try:
        wait_for(lambda: slow_openai.sent(tag) >= 200, 120, "the job's first requests on the workers")
        run.send_signal(signal.SIGINT)  # Ctrl-C: `run` stops its job as for a cancel
        signalled = time.monotonic()
        last_request = _last_change(lambda: slow_openai.sent(tag), quiet_s=2.0, limit_s=20.0)
        wait_for(lambda: run.poll() is not None, 60, "run to stop")
    finally:
        run.kill()
    assert last_request - signalled < 5.0, (
        f"requests went on {last_request - signalled:.1f} s after the cancel"
    )
    assert slow_openai.sent(tag) < lines


def _last_change(count: Callable[[], int], quiet_s: float, limit_s: float) -> float:
    """When ``count`` last changed, once it has not for ``quiet_s`` (or ``limit_s`` passed)."""
    seen, changed, start = count(), time.monotonic(), time.monotonic()
    while time.monotonic() - changed < quiet_s and time.monotonic() - start < limit_s:
        time.sleep(0.05)
        if (now := count()) != seen:
            seen, changed = now, time.monotonic()
    return changed


@pytest.mark.e2e
def test_a_worker_killed_mid_job_costs_only_its_chunk_and_every_line_is_answered_once(
    cluster: Cluster, slow_openai: FakeOpenAIServer
) -> None:
    tag, lines = "dask-kill", 1200
    texts = prompt_texts(tag, lines)
    run = cluster.run(
        str(write_prompts(cluster.data, tag, texts)), "--model", "fake-slow", "--max-tokens", "8"
    )
    wait_for(lambda: slow_openai.sent(tag) >= 200, 120, "the job's first requests on the workers")
    _stop(cluster.workers["worker-b"], signal.SIGKILL)  # the machine is gone, nanny and all
    job = _finished(run, timeout_s=240)
    assert job["status"] == "completed", job
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == list(range(1, lines + 1))
    assert [r["generations"][0]["text"] for r in success] == [f"echo: {t}" for t in texts]
