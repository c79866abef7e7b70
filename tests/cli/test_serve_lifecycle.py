"""`batchinfer serve` starts everything it needs and, on Ctrl-C or SIGTERM, stops all of it."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from batchinfer.testing.served import ServeProcess, serve_env, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_the_server_the_runner_and_a_running_job(
    tmp_path: Path, models_file: Path, prefect_db_template: Path, sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = serve_env(home, models_file, roots=[tmp_path])
    served = ServeProcess(home=home, env=env, database_template=prefect_db_template).start()
    # A job that is mid-flight when the signal arrives: its flow-run process must go too.
    prompts = write_jsonl(tmp_path / "p.jsonl", [user_prompt(f"q{i}") for i in range(2000)])
    job_id = served.submit_ok(
        {"model": "fake-slow", "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
    )["job_id"]
    deadline = time.monotonic() + 60
    while served.status(job_id).json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.proc is not None
    family = [psutil.Process(served.proc.pid), *psutil.Process(served.proc.pid).children(recursive=True)]
    assert len(family) >= 3, "expected serve, a Prefect server and a runner"

    assert served.stop(sig, timeout_s=60) == 0
    _, alive = psutil.wait_procs(family, timeout=15)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert not _port_open(served.port) and not _port_open(served.prefect_port)
