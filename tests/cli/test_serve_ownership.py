"""`serve` owns its Prefect server and its data dir: it never attaches to a Prefect server it did not
start, its children end when it dies (even by `kill -9`, leaving nothing for the next one to clean
up), and of two `serve`s of one home exactly one runs, the other refused while it lives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from batchinfer.cli.children import OWNER_FILE, claim_home
from batchinfer.cli.preflight import DEFAULT_PREFECT_PORT, listens_on, port_free, prefect_port
from batchinfer.errors import ConfigError
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, free_port, serve_env, user_prompt, wait_for, write_jsonl


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _family(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    top = psutil.Process(proc.pid)
    return [top, *top.children(recursive=True)]


def _home_with_model(root: Path, model_id: str, base_url: str) -> tuple[Path, Path]:
    home = root / model_id
    home.mkdir()
    models = [{"id": model_id, "engine": "openai", "base_url": base_url, "model": "fake-model"}]
    models_file = home / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    return home, models_file


def _submit(serve: ServeProcess, model: str, prompts: Path) -> str:
    return str(
        serve.submit_ok({"model": model, "prompt_file_path": {"type": "filepath", "value": str(prompts)}})[
            "job_id"
        ]
    )


@pytest.mark.e2e
def test_two_serves_of_different_homes_on_the_same_ports_each_run_their_own_jobs_and_kill_9_leaves_nothing(
    tmp_path: Path, fake_openai: FakeOpenAIServer, slow_openai: FakeOpenAIServer, prefect_db_template: Path
) -> None:
    ports = {"port": free_port(), "prefect_port": free_port()}  # the second takes them after kill -9
    home_a, models_a = _home_with_model(tmp_path, "model-a", slow_openai.base_url)
    first = ServeProcess(
        home_a, serve_env(home_a, models_a, [tmp_path]), **ports, database_template=prefect_db_template
    ).start()
    assert first.proc is not None
    prompts = write_jsonl(tmp_path / "a.jsonl", [user_prompt(f"kill-9 {i}") for i in range(3000)])
    job_a = _submit(first, "model-a", prompts)
    wait_for(lambda: first.status(job_a).json()["status"] == "running", 90, "job A running")
    family = _family(first.proc)
    assert len(family) >= 4, f"expected serve, a Prefect server, a runner and a flow run: {family}"

    first.proc.kill()  # kill -9: no handler of serve's runs
    _, alive = psutil.wait_procs(family, timeout=15)
    assert alive == [], f"left running after kill -9: {[p.pid for p in alive]}"
    assert not _listening(ports["port"]) and not _listening(ports["prefect_port"])

    home_b, models_b = _home_with_model(tmp_path, "model-b", fake_openai.base_url)
    second = ServeProcess(
        home_b, serve_env(home_b, models_b, [tmp_path]), **ports, database_template=prefect_db_template
    ).start()
    try:
        job_b = _submit(second, "model-b", write_jsonl(tmp_path / "b.jsonl", [user_prompt("b")]))
        assert second.wait(job_b)["status"] == "completed"
        assert second.status(job_a).status_code == 404, "the second serve sees the first one's jobs"
        assert (
            second.submit(
                {"model": "model-a", "prompt_file_path": {"type": "filepath", "value": str(prompts)}}
            ).status_code
            == 422
        )
        assert [job["job_id"] for job in second.jobs().json()["data"]] == [job_b]
    finally:
        second.stop()


def test_serve_picks_another_prefect_port_when_4200_is_taken_and_refuses_a_taken_one_asked_for() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past old connections' TIME_WAIT
        try:  # hold 4200, unless something on this machine already does: taken either way
            holder.bind(("127.0.0.1", DEFAULT_PREFECT_PORT))
            holder.listen()
        except OSError:
            pass
        chosen = prefect_port(None)
        assert chosen != DEFAULT_PREFECT_PORT and port_free("127.0.0.1", chosen)
        with pytest.raises(ConfigError, match=f"Port {DEFAULT_PREFECT_PORT} .*--prefect-port"):
            prefect_port(DEFAULT_PREFECT_PORT)


def test_a_server_is_trusted_only_when_the_process_we_started_is_the_one_listening() -> None:
    with socket.socket() as ours:
        ours.bind(("127.0.0.1", 0))
        ours.listen()
        port = ours.getsockname()[1]
        assert listens_on(os.getpid(), port)
        assert not listens_on(os.getppid(), port), "another process answering on the port is not ours"
    assert not listens_on(os.getpid(), port)


# A serve's claim on a home, in a process of its own: it waits for the file ``go`` (so that several
# claim at the same moment), then says whether it won, and holds the home for a while if it did.
CLAIM = """
import sys, time
from pathlib import Path
from batchinfer.cli.children import claim_home
from batchinfer.errors import ConfigError
home, go, hold_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with claim_home(home, "http://127.0.0.1:1"):
        print("won", flush=True)
        time.sleep(hold_s)
except ConfigError:
    print("refused", flush=True)
"""


def _claimants(home: Path, go: Path, n: int, hold_s: float) -> list[subprocess.Popen[str]]:
    argv = [sys.executable, "-c", CLAIM, str(home), str(go), str(hold_s)]
    claimants = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for claimant in claimants:
        assert claimant.stdout is not None and claimant.stdout.readline().strip() == "ready"
    return claimants


@pytest.mark.slow
def test_of_serves_claiming_a_home_at_the_same_moment_exactly_one_wins(tmp_path: Path) -> None:
    claimants = _claimants(tmp_path, tmp_path / "go", 6, hold_s=3)
    (tmp_path / "go").touch()
    outcomes = sorted(c.stdout.readline().strip() for c in claimants if c.stdout is not None)
    for claimant in claimants:
        claimant.wait(timeout=30)
    assert outcomes == ["refused"] * 5 + ["won"]


def test_a_home_is_refused_while_its_serve_lives_and_free_again_once_it_is_killed(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    (holder,) = _claimants(tmp_path, tmp_path / "go", 1, hold_s=120)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "won"
        refused = pytest.raises(ConfigError, match=f"Another batchinfer serve \\(pid {holder.pid}")
        with refused, claim_home(tmp_path, "http://127.0.0.1:2"):
            pass
    finally:
        holder.kill()  # kill -9: no handler of its runs, the operating system lets go of its lock
        holder.wait()
    with claim_home(tmp_path, "http://127.0.0.1:1") as me:
        assert me.pid == os.getpid()
        refused = pytest.raises(ConfigError, match=f"Another batchinfer serve \\(pid {me.pid}")
        with refused, claim_home(tmp_path, "http://127.0.0.1:2"):
            pass
    assert not (tmp_path / OWNER_FILE).exists()


@pytest.mark.slow
def test_a_guarded_child_ends_as_soon_as_its_parent_is_killed() -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'batchinfer.cli.guard', str(os.getpid()),"
        " 'http.server', '0', '--bind', '127.0.0.1'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    # The guard starts watching before it runs the module: once the module listens, it watches.
    wait_for(lambda: any(c.status == psutil.CONN_LISTEN for c in child.net_connections()), 30, "listening")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _, alive = psutil.wait_procs([child], timeout=5)
    assert alive == []
