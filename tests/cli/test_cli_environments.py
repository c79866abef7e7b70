"""`batchinfer run` just works in the Prefect setups people have: their own PREFECT_HOME, a Prefect
profile naming a server, a running `prefect server start`, a read-only working directory, and a
BATCHINFER_HOME that does not exist yet. Each case runs one real job in a subprocess."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchinfer.testing.served import ServeProcess, seed_database, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    """Where one case runs: its environment (over the session's), working directory and data dir."""

    env: dict[str, str]
    cwd: Path
    home: Path


def _base(tmp_path: Path, served: ServeProcess) -> Setup:
    home = tmp_path / "bi-home"
    env = {k: v for k, v in served.env.items() if not k.startswith("PREFECT_")}
    env.update(BATCHINFER_HOME=str(home), HOME=str(tmp_path / "user"), BATCHINFER_ALLOWED_ROOTS=str(tmp_path))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return Setup(env, cwd, home)


def _own_prefect_home(tmp_path: Path, served: ServeProcess, template: Path) -> Setup:
    setup = _base(tmp_path, served)
    theirs = tmp_path / "their-prefect"
    seed_database(template, theirs)  # a Prefect user's home already holds a database
    setup.env["PREFECT_HOME"] = str(theirs)
    return setup


def _profile(tmp_path: Path, served: ServeProcess, template: Path) -> Setup:
    setup = _base(tmp_path, served)
    profiles = tmp_path / "user" / ".prefect" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(
        f'active = "work"\n[profiles.work]\nPREFECT_API_URL = "{served.prefect_api_url}"\n', encoding="utf-8"
    )
    return setup


def _running_server(tmp_path: Path, served: ServeProcess, template: Path) -> Setup:
    setup = _base(tmp_path, served)
    setup.env["PREFECT_API_URL"] = served.prefect_api_url  # what `prefect server start` tells you to set
    return setup


def _read_only_cwd(tmp_path: Path, served: ServeProcess, template: Path) -> Setup:
    setup = _base(tmp_path, served)
    seed_database(template, setup.home / "prefect")
    setup.cwd.chmod(0o555)  # effective unless the tests run as root: then "nothing written" still tells
    return setup


def _new_home(tmp_path: Path, served: ServeProcess, template: Path) -> Setup:
    setup = _base(tmp_path, served)
    setup.home = tmp_path / "not" / "yet" / "there"
    setup.env["BATCHINFER_HOME"] = str(setup.home)  # a first run ever: a fresh Prefect database too
    return setup


CASES: dict[str, Callable[[Path, ServeProcess, Path], Setup]] = {
    "a PREFECT_HOME of the user's": _own_prefect_home,
    "a Prefect profile with PREFECT_API_URL": _profile,
    "an existing `prefect server start`": _running_server,
    "a read-only working directory": _read_only_cwd,
    "a BATCHINFER_HOME that does not exist yet": _new_home,
}


def _run(setup: Setup, prompts: Path) -> subprocess.CompletedProcess[str]:
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
    return subprocess.run(argv, env=setup.env, cwd=setup.cwd, capture_output=True, text=True, timeout=180)


def _flow_run_in(database: Path, job_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT 1 FROM flow_run WHERE id = ?", (job_id,)).fetchone() is not None


def _check_where_it_ran(name: str, setup: Setup, served: ServeProcess, job: dict[str, Any], err: str) -> None:
    job_id = job["job_id"]
    on_served = httpx.get(f"{served.prefect_api_url}/flow_runs/{job_id}", timeout=10).status_code == 200
    uses_served = name in ("a Prefect profile with PREFECT_API_URL", "an existing `prefect server start`")
    assert on_served == uses_served, f"the job ran on {'the' if on_served else 'no'} existing server"
    assert ("temporary Prefect server" in err) != uses_served
    if name == "a PREFECT_HOME of the user's":
        assert _flow_run_in(Path(setup.env["PREFECT_HOME"]) / "prefect.db", job_id)
        assert not (setup.home / "prefect").exists(), "a second, disagreeing Prefect home"
    if name == "a BATCHINFER_HOME that does not exist yet":
        assert _flow_run_in(setup.home / "prefect" / "prefect.db", job_id)


@pytest.mark.parametrize("name", list(CASES))
def test_run_completes_a_job_in_an_ordinary_prefect_setup(
    tmp_path: Path, served: ServeProcess, prefect_db_template: Path, name: str
) -> None:
    setup = CASES[name](tmp_path, served, prefect_db_template)
    prompts = write_jsonl(tmp_path / "env.jsonl", [user_prompt(f"{name} {i}") for i in range(3)])
    before = sorted(p.name for p in setup.cwd.iterdir())
    result = _run(setup, prompts)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed" and job["metadata"]["request_counts"]["completed"] == 3
    assert Path(job["success_file_path"]["value"]).is_relative_to(setup.home)
    assert sorted(p.name for p in setup.cwd.iterdir()) == before, "nothing is written to the cwd"
    _check_where_it_ran(name, setup, served, job, result.stderr)
