"""Whatever Prefect itself would use in a directory is what batchinfer uses: with a prefect.toml or a
.env in the working directory naming a Prefect server, `batchinfer run` and `batchinfer serve` put
their flow runs on that server and start no server of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.served import ServeProcess, prompt_texts, serve_env, write_prompts

pytestmark = pytest.mark.e2e

SOURCES = {"prefect.toml": '[api]\nurl = "{url}"\n', ".env": "PREFECT_API_URL={url}\n"}


@pytest.fixture(scope="module")
def their_prefect(
    tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path
) -> Iterator[PrefectServer]:
    """The Prefect server of a project that batchinfer is added to."""
    home = tmp_path_factory.mktemp("their-prefect")
    with PrefectServer(home, database_template=prefect_db_template) as server:
        yield server


def _project(tmp_path: Path, source: str, server: PrefectServer) -> Path:
    """A project folder whose ``source`` names ``server``; nothing else says where Prefect is."""
    project = tmp_path / "project"
    project.mkdir()
    (project / source).write_text(SOURCES[source].format(url=server.api_url), encoding="utf-8")
    return project


def _on(server: PrefectServer, job_id: str) -> bool:
    return httpx.get(f"{server.api_url}/flow_runs/{job_id}", timeout=10).status_code == 200


@pytest.mark.parametrize("source", list(SOURCES))
def test_run_puts_its_flow_run_on_the_server_named_in_the_working_directory(
    tmp_path: Path, models_file: Path, their_prefect: PrefectServer, source: str
) -> None:
    project, home = _project(tmp_path, source, their_prefect), tmp_path / "home"
    prompts = write_prompts(tmp_path, "sources-run", prompt_texts("sources-run", 3))
    argv = [
        sys.executable,
        "-m",
        "batchinfer.cli",
        "run",
        str(prompts),
        "--model",
        "fake",
        "--max-tokens",
        "8",
    ]
    env = serve_env(home, models_file, roots=[tmp_path])  # no PREFECT_* variable at all
    done = subprocess.run(argv, env=env, cwd=project, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    job = json.loads(done.stdout)
    assert job["status"] == "completed"
    assert _on(their_prefect, job["job_id"]), f"the flow run is not on the server {source} names"
    assert "Starting" not in done.stderr, "it started a Prefect server of its own"
    assert not (home / "prefect" / "prefect.db").exists(), "a Prefect database of its own"


@pytest.mark.parametrize("source", list(SOURCES))
def test_serve_runs_its_jobs_on_the_server_named_in_the_working_directory(
    tmp_path: Path, models_file: Path, their_prefect: PrefectServer, source: str
) -> None:
    project, home = _project(tmp_path, source, their_prefect), tmp_path / "home"
    home.mkdir()
    served = ServeProcess(home, serve_env(home, models_file, roots=[tmp_path]), cwd=project).start()
    try:
        assert served.proc is not None
        commands = [" ".join(p.cmdline()) for p in psutil.Process(served.proc.pid).children(recursive=True)]
        assert not [c for c in commands if "server" in c and "prefect" in c], (
            f"a server of its own: {commands}"
        )
        prompts = write_prompts(tmp_path, "sources-serve", prompt_texts("sources-serve", 3))
        job_id = served.submit_ok(
            {"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
        )["job_id"]
        assert served.wait(job_id)["status"] == "completed"
        assert _on(their_prefect, job_id), f"the flow run is not on the server {source} names"
        assert "Starting" not in (home / "serve-stdout.log").read_text(errors="replace")
    finally:
        served.stop()
