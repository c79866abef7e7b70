"""Scale-out on Dask (``batchinfer.runtime.scaleout``): the configuration check and the shared-storage chunk
run on their own, then one job's chunk tasks on a real Dask cluster (a scheduler and two workers, as
subprocesses), their files on shared storage (a ``file://`` URL), driven through ``batchinfer serve``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from batchinfer.engines.configs import EngineContext, OpenAIEngineConfig
from batchinfer.errors import JobError
from batchinfer.runtime.executors import ChunkWork, ThreadChunks, chunk_executor
from batchinfer.runtime.scaleout import DaskChunks, _mirror_result, run_chunk_at
from batchinfer.settings import Settings
from batchinfer.tasks.infer import infer_chunk
from batchinfer.testing.engines import EchoEngine
from batchinfer.testing.fake_openai import FakeOpenAIServer
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


# --- on a real cluster --------------------------------------------------------------------------


def _start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own handle
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and what it started (a worker's nanny starts the worker); kill if stuck."""
    if proc.poll() is not None:
        return
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
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
    shared: Path
    env: dict[str, str]  # a job's environment: the session's Prefect server, this cluster


@pytest.fixture
def cluster(tmp_path: Path, models_file: Path, served: ServeProcess) -> Iterator[Cluster]:
    """A Dask scheduler and two workers that record their task runs on the session's Prefect
    server (and take the models' concurrency slots there), and the environment of a job that
    sends its chunks to them."""
    from distributed import Client

    home, data, shared = tmp_path / "home", tmp_path / "data", tmp_path / "shared"
    for directory in (home, data, shared):
        directory.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        _start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            tmp_path / "scheduler.log",
        )
    ]
    try:
        worker_env = serve_env(
            tmp_path / "worker-home",
            models_file,
            roots=[data, home],
            PREFECT_API_URL=served.prefect_api_url,
            PREFECT_HOME=str(tmp_path / "worker-prefect"),
        )
        for name in ("worker-a", "worker-b"):
            argv = [DASK, "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "2"]
            procs.append(_start([*argv, "--no-dashboard"], tmp_path / f"{name}.log", worker_env))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        job_env = serve_env(
            home,
            models_file,
            roots=[data, home],
            PREFECT_API_URL=served.prefect_api_url,
            BATCHINFER_DASK_ADDRESS=address,
            BATCHINFER_SHARED_STORAGE=shared.as_uri(),
            BATCHINFER_CHUNK_SIZE=str(CHUNK_SIZE),
        )
        yield Cluster(address, shared, job_env)
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.mark.e2e
def test_a_job_spreads_its_chunks_over_the_dask_workers(
    cluster: Cluster, tmp_path: Path, limited_openai: FakeOpenAIServer
) -> None:
    """Model ``fake-limited`` (max_concurrency 4): its limit is a Prefect global concurrency limit
    that the job holds on the Prefect server while its chunks run on the workers."""
    from distributed import Client

    texts = prompt_texts("dask-scaleout", PROMPTS)
    prompts = write_prompts(tmp_path / "data", "dask-scaleout", texts)
    run = subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", "run", str(prompts), "--model", "fake-limited"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    job = json.loads(run.stdout)

    assert job["status"] == "completed", job
    assert job["metadata"]["request_counts"] == {"total": PROMPTS, "completed": PROMPTS, "failed": 0}
    success = read_jsonl(job["success_file_path"]["value"])
    assert [r["line"] for r in success] == list(range(1, PROMPTS + 1))
    assert [r["generations"][0]["text"] for r in success] == [f"echo: {t}" for t in texts]
    assert all(limited_openai.prompts[t] == 1 for t in texts)  # every line answered exactly once
    assert limited_openai.max_in_flight <= 4  # the model's limit held across both workers

    chunks = cluster.shared / job["job_id"] / "chunks"
    chunk_count = PROMPTS // CHUNK_SIZE
    assert len(list(chunks.glob("input-*.jsonl"))) == chunk_count
    assert len(list(chunks.glob("result-*.jsonl"))) == chunk_count
    assert not list(chunks.glob(".*.tmp"))  # uploads renamed into place, none left half-done

    address = cluster.address
    # Each worker counts the tasks it executed; both must have run chunks, and all of them together.
    with Client(address, timeout=30) as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 10, "both workers")
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(n >= 1 for n in executed.values()), executed
    assert sum(executed.values()) == chunk_count, executed
