"""`batchinfer run` without PREFECT_API_URL keeps a local Prefect server warm: the first run starts
it and says so, later runs use it without waiting for one, `batchinfer server` shows it, `batchinfer
server stop` ends it with everything it started, and it ends by itself once idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from batchinfer.cli import warm_prefect
from batchinfer.testing.served import prompt_texts, seed_database, serve_env, wait_for, write_prompts

pytestmark = pytest.mark.e2e


def _run(tmp: Path, env: dict[str, str], tag: str) -> subprocess.CompletedProcess[str]:
    prompts = write_prompts(tmp, tag, prompt_texts(tag, 20))
    argv = [sys.executable, "-m", "batchinfer.cli", "run", str(prompts), "--model", "fake"]
    argv += ["--max-tokens", "8", "--output-dir", str(tmp / f"out-{tag}")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "completed"
    return done


def _server(env: dict[str, str], *action: str) -> str:
    argv = [sys.executable, "-m", "batchinfer.cli", "server", *action]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _family(home: Path) -> list[psutil.Process]:
    """The warm server's processes, and its watcher's."""
    warm = warm_prefect.read_warm(home / "prefect")  # the Prefect home: Prefect's own record is there
    assert warm is not None, "no warm server running"
    server = psutil.Process(warm.pid)
    return [server, *server.children(recursive=True), *_watchers(home)]


def _watchers(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if "batchinfer.cli.warm_prefect" in argv and str(home / "prefect") in argv:
            found.append(process)
    return found


def _warm_env(tmp: Path, models_file: Path, template: Path, idle_s: int) -> tuple[Path, dict[str, str]]:
    home = tmp / "home"
    seed_database(template, home / "prefect")
    env = serve_env(home, models_file, roots=[tmp])
    env["BATCHINFER_LOCAL_SERVER_IDLE_S"] = str(idle_s)
    return home, env


def test_the_second_run_uses_the_first_runs_server_until_server_stop_ends_it(
    tmp_path: Path, models_file: Path, prefect_db_template: Path
) -> None:
    home, env = _warm_env(tmp_path, models_file, prefect_db_template, idle_s=600)
    first = _run(tmp_path, env, "warm-first")
    assert "Started a local Prefect server" in first.stderr and "batchinfer server stop" in first.stderr
    family = _family(home)
    shown = _server(env)
    assert str(family[0].pid) in shown and "stops in 10 min" in shown
    started = time.monotonic()
    second = _run(tmp_path, env, "warm-second")
    assert "Starting" not in second.stderr, "the second run started a server of its own"
    assert time.monotonic() - started < 30
    assert _family(home)[0].pid == family[0].pid

    assert "Stopped the local Prefect server" in _server(env, "stop")
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left running: {alive}"
    assert warm_prefect.read_warm(home / "prefect") is None
    assert "No local Prefect server" in _server(env)


def test_a_warm_server_stops_by_itself_once_no_run_has_used_it_for_the_idle_time(
    tmp_path: Path, models_file: Path, prefect_db_template: Path
) -> None:
    home, env = _warm_env(tmp_path, models_file, prefect_db_template, idle_s=2)
    _run(tmp_path, env, "warm-idle")
    family = _family(home)
    wait_for(lambda: not any(p.is_running() for p in family), 30, "the idle server to stop")
    assert warm_prefect.read_warm(home / "prefect") is None


@pytest.mark.parametrize(("idle_s", "every_s"), [(1800, warm_prefect.USE_TOUCH_S), (2, 0.5)])
def test_a_running_job_marks_the_server_used_well_within_the_idle_time(idle_s: float, every_s: float) -> None:
    assert warm_prefect.touch_every(idle_s) == every_s


def test_a_job_that_outlasts_a_short_idle_time_keeps_marking_the_server_used(tmp_path: Path) -> None:
    used = tmp_path / warm_prefect.USED_FILE
    with warm_prefect.using(tmp_path, idle_s=0.4):
        first = used.stat().st_mtime_ns
        wait_for(lambda: used.stat().st_mtime_ns != first, 10, "the job to mark the server used again")


def test_a_server_is_idle_only_when_no_run_has_touched_it_for_the_idle_time(tmp_path: Path) -> None:
    assert warm_prefect._idle(tmp_path, 60)  # never used
    warm_prefect.mark_used(tmp_path)
    assert not warm_prefect._idle(tmp_path, 60)
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / warm_prefect.USED_FILE, (an_hour_ago, an_hour_ago))
    assert warm_prefect._idle(tmp_path, 60)
