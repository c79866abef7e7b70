"""PostgreSQL as the Prefect database, the setup README recommends for shared deployments.

A throwaway cluster (``scripts/postgres-for-tests.sh``, Debian's ``postgresql`` package) serves as the
database of a ``batchinfer serve`` of its own, which runs a job end to end. The test skips, saying why,
where PostgreSQL is not installed and cannot be installed (not root, no apt-get, no repository).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, free_port, read_jsonl, serve_env, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parents[2] / "scripts" / "postgres-for-tests.sh"
UNAVAILABLE = 3  # the script's exit status for "PostgreSQL cannot be had here"
# A first install of the package takes ~30-60 s; a cluster starts in a few seconds.
SCRIPT_TIMEOUT_S = 300


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
    )


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster for this module, stopped and removed at its end."""
    if shutil.which("bash") is None:
        pytest.skip("PostgreSQL test needs bash to run scripts/postgres-for-tests.sh")
    # Not under pytest's tmp_path: that is a 0700 directory of root's, which the `postgres` user that
    # owns the cluster could not enter.
    workdir = tempfile.mkdtemp(prefix="batchinfer-pg-")
    started = _script("start", workdir, str(free_port()))
    try:
        if started.returncode == UNAVAILABLE:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, f"PostgreSQL did not start:\n{started.stderr}"
        yield started.stdout.strip().splitlines()[-1]
    finally:
        _script("stop", workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_served(
    postgres_url: str, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> Iterator[tuple[ServeProcess, Path]]:
    """``batchinfer serve`` whose Prefect server keeps its state in PostgreSQL; and its data dir."""
    models = tmp_path / "models.yaml"
    fake = {"id": "fake", "engine": "openai", "base_url": fake_openai.base_url, "model": "fake-model"}
    models.write_text(yaml.safe_dump({"models": [fake]}), encoding="utf-8")
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    env = serve_env(home, models, roots=[data, home], PREFECT_API_DATABASE_CONNECTION_URL=postgres_url)
    process = ServeProcess(home=home, env=env).start()
    try:
        yield process, data
    finally:
        process.stop()


async def _flow_run_state(postgres_url: str, flow_run_id: str) -> str | None:
    """The flow run's state type as stored in PostgreSQL: proof that Prefect really wrote there."""
    import asyncpg  # installed with prefect, which uses it for PostgreSQL

    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        state = await connection.fetchval(
            "SELECT state_type FROM flow_run WHERE id = $1", uuid.UUID(flow_run_id)
        )
    finally:
        await connection.close()
    return None if state is None else str(state)


def test_a_job_runs_to_completion_with_postgresql_as_the_prefect_database(
    postgres_url: str, postgres_served: tuple[ServeProcess, Path]
) -> None:
    served, data = postgres_served
    prompts = [user_prompt(f"postgres question {i}") for i in range(12)]
    path = write_jsonl(data / "postgres.jsonl", prompts)
    body = {"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(path)}}
    job = served.wait(served.submit_ok(body)["job_id"], timeout_s=180)

    assert job["status"] == "completed", job
    success = read_jsonl(job["success_file_path"]["value"])
    assert read_jsonl(job["error_file_path"]["value"]) == []
    assert [(r["line"], r["generations"][0]["text"]) for r in success] == [
        (i + 1, f"echo: {prompt[0]['text']}") for i, prompt in enumerate(prompts)
    ]
    # The job's flow run lives in PostgreSQL, and no SQLite database was made on the side.
    assert asyncio.run(_flow_run_state(postgres_url, job["job_id"])) == "COMPLETED"
    assert not list(served.home.rglob("*.db")), "Prefect fell back to SQLite"
