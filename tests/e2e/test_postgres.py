"""PostgreSQL as the Prefect database, the setup README recommends for shared deployments.

A throwaway cluster (``scripts/postgres-for-tests.sh``, Debian's ``postgresql`` package) serves as the
database of a ``batchinfer serve`` of its own, which runs a job end to end. The test skips, saying why,
where PostgreSQL is not installed and cannot be installed (not root, no apt-get, no repository).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl, serve_env, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


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
