"""``batchinfer serve``: a Prefect server (unless ``PREFECT_API_URL`` is set), a runner for the
deployment, and the HTTP adapter, in one command. Ctrl-C or SIGTERM stops all of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from batchinfer.settings import Settings

STARTUP_TIMEOUT_S = 90.0  # a fresh SQLite database takes 15-25 s to migrate on these machines


class Supervisor:
    """Owns child processes, each in its own session so their whole group can be stopped."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - the child keeps it for its lifetime
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child's process group, then SIGKILL whatever is left after ``grace_s``.

        Descendants are collected first because Prefect's runner starts each flow run in a new
        session of its own, out of reach of the runner's process group."""
        import psutil

        family: list[psutil.Process] = []
        for _, proc in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(proc.pid)
                family += [top, *top.children(recursive=True)]
        for _, proc in reversed(self.children):
            _signal_group(proc, signal.SIGTERM)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.terminate()
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        for straggler in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.kill()
        psutil.wait_procs(alive, timeout=5)
        for _, proc in self.children:
            proc.poll()  # reap, so no zombie is left behind
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None,
    log: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}")
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s; see {log}")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check


def prefect_server_env(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    """Environment for a local Prefect server whose state lives in the data dir."""
    prefect_home = settings.home / "prefect"
    env = dict(base)
    env.setdefault("PREFECT_HOME", str(prefect_home))
    env.setdefault(
        "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    )
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def serve(host: str, port: int, prefect_port: int, settings: Settings) -> int:
    from batchinfer.api.backend import DEPLOYMENT_NAME, FLOW_NAME
    from batchinfer.catalog import load_catalog

    catalog = load_catalog(settings.models)  # a broken models file fails here, before anything starts
    logs = settings.home / "logs"
    env = prefect_server_env(settings, dict(os.environ))
    supervisor = Supervisor()
    try:
        if not env.get("PREFECT_API_URL"):
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{prefect_port}/api"
            argv = [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
            ]
            server = supervisor.start("prefect-server", argv, env, logs / "prefect-server.log")
            print(f"Starting the Prefect server (UI: http://127.0.0.1:{prefect_port}) ...", flush=True)
            wait_until(
                _http_ok(env["PREFECT_API_URL"] + "/health"),
                STARTUP_TIMEOUT_S,
                "The Prefect server",
                server,
                logs / "prefect-server.log",
            )
        # Prefect reads its settings when first imported: only now may this process import it.
        os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
        import uvicorn

        from batchinfer.api.app import create_app
        from batchinfer.api.backend import PrefectJobBackend

        runner = supervisor.start(
            "runner", [sys.executable, "-m", "batchinfer.runner"], env, logs / "runner.log"
        )
        deployment_url = f"{env['PREFECT_API_URL']}/deployments/name/{FLOW_NAME}/{DEPLOYMENT_NAME}"
        wait_until(_http_ok(deployment_url), STARTUP_TIMEOUT_S, "The runner", runner, logs / "runner.log")

        app = create_app(settings, catalog, lambda: PrefectJobBackend(settings.jobs_dir))
        print(f"batchinfer is serving on http://{host}:{port} (logs: {logs})", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        # SIGTERM (see cli.py) is how a service manager asks us to stop: a clean exit, like Ctrl-C.
        if exc.code == 128 + signal.SIGTERM:
            return 0
        raise
    finally:
        print("Stopping ...", flush=True)
        supervisor.stop_all()
