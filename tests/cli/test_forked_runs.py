"""How `serve`'s runner starts a job's process. By default Prefect's own way (`python -m
prefect.engine`, public API only). With BATCHINFER_FORK_FLOW_RUNS, forked from a fork server that has
imported the flow already, handed the flow as a reference to the module's own flow object, and only
on the Prefect releases the fork server was written for."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from prefect import flow

from batchinfer.cli.forked_runs import FLOW_RUN_PRELOAD, _reduce_flow, fork_server_notice
from batchinfer.testing.served import ServeProcess, prompt_texts, serve_env, wait_for, write_prompts


@pytest.mark.slow
def test_a_modules_flow_pickles_as_a_reference_to_that_very_flow() -> None:
    # In a process of its own: flows_by_reference changes how the whole process pickles flows.
    script = (
        "import cloudpickle; from batchinfer.cli.forked_runs import flows_by_reference; "
        "flows_by_reference(); from batchinfer.flows.batch_job import batch_job; "
        "data = cloudpickle.dumps(batch_job); "
        "print(len(data), cloudpickle.loads(data) is batch_job)"
    )
    size, same = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    # The module's object comes back (its annotations resolve, its state is shared), not a copy of
    # its function and everything that function refers to.
    assert same == "True"
    assert int(size) < 500


def test_a_flow_its_module_does_not_hold_pickles_as_prefect_would() -> None:
    @flow
    def made_here() -> int:
        return 1

    assert _reduce_flow(made_here) == made_here.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def test_the_fork_server_preloads_only_modules_that_exist() -> None:
    import importlib.util

    # A preload module that cannot be imported would stop the fork server: a typo here shows at once.
    assert all(importlib.util.find_spec(name) is not None for name in FLOW_RUN_PRELOAD)


@pytest.mark.parametrize(
    ("version", "used"), [("3.6.29", False), ("3.7.0", True), ("3.9.1", True), ("3.10.0", False)]
)
def test_the_fork_server_is_used_only_on_the_prefect_releases_it_was_written_for(
    version: str, used: bool
) -> None:
    notice = fork_server_notice(version)
    assert (notice is None) == used
    if notice is not None:
        assert "\n" not in notice and version in notice and "Prefect's own way" in notice


# A spawned process (multiprocessing's, as Prefect's runner makes them) once the fork server runs;
# its pid, its parent's pid, and what it told its launcher, through the fork server's launcher.
SPAWN = """
import multiprocessing, os, signal, sys, tempfile, time
from pathlib import Path
from batchinfer.cli.forked_runs import start_fork_server
server = start_fork_server(Path(tempfile.mkdtemp()))
if sys.argv[1] == "no-server":
    server.kill(); server.wait()
spawn = multiprocessing.get_context("spawn")
exits = spawn.Process(target=os._exit, args=(7,))
exits.start(); exits.join()
sleeper = spawn.Process(target=time.sleep, args=(60,))
sleeper.start()
import psutil
while sys.argv[1] == "server" and not psutil.Process(server.pid).children():
    time.sleep(0.05)
under_server = [p.pid for p in psutil.Process(server.pid).children()] if server.poll() is None else []
sleeper.terminate(); sleeper.join(10)
print(exits.exitcode, sleeper.exitcode, len(under_server))
"""


@pytest.mark.slow
def test_a_spawned_process_is_forked_by_the_fork_server_and_stands_in_for_it_to_its_parent() -> None:
    done = subprocess.run([sys.executable, "-c", SPAWN, "server"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Exit code and death by SIGTERM reach the parent as from any spawned process.
    assert done.stdout.split() == ["7", "-15", "1"]


@pytest.mark.slow
def test_without_the_fork_server_a_spawned_process_is_a_fresh_python_as_usual() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SPAWN, "no-server"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "-15", "0"]


def _job(served: ServeProcess, data_dir: Path, tag: str) -> str:
    prompts = write_prompts(data_dir, tag, prompt_texts(tag, 400))
    return str(
        served.submit_ok(
            {"model": "fake-slow", "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
        )["job_id"]
    )


def _processes(served: ServeProcess, part: str) -> list[psutil.Process]:
    assert served.proc is not None
    found = []
    for process in psutil.Process(served.proc.pid).children(recursive=True):
        try:
            if part in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.e2e
def test_by_default_a_served_job_runs_as_prefects_own_engine_process(
    tmp_path: Path, models_file: Path, prefect_db_template: Path
) -> None:
    home = tmp_path / "home"
    env = serve_env(home, models_file, roots=[tmp_path])
    served = ServeProcess(home, env, database_template=prefect_db_template).start()
    try:
        assert _processes(served, "batchinfer.cli.forked_runs") == [], "a fork server that nobody asked for"
        job_id = _job(served, tmp_path, "public-path")
        wait_for(
            lambda: bool(_processes(served, "prefect.engine")), 60, "a `python -m prefect.engine` process"
        )
        job = served.wait(job_id)
        assert job["status"] == "completed" and job["metadata"]["request_counts"]["completed"] == 400
    finally:
        served.stop()


@pytest.mark.e2e
def test_with_fork_flow_runs_a_served_job_runs_in_a_process_forked_from_the_fork_server(
    served: ServeProcess, data_dir: Path
) -> None:
    # The session's serve runs with BATCHINFER_FORK_FLOW_RUNS=true (tests/conftest.py).
    fork_servers = _processes(served, "batchinfer.cli.forked_runs")
    assert len(fork_servers) == 1, "the runner keeps one fork server, started before any job"
    job_id = _job(served, data_dir, "forked")
    # While the job runs, its process is a child of the fork server (not a fresh Python).
    wait_for(lambda: bool(fork_servers[0].children()), 60, "a job process under the fork server")
    job = served.wait(job_id)
    assert job["status"] == "completed" and job["metadata"]["request_counts"]["completed"] == 400
