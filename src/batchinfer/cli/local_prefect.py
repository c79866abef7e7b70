"""A Prefect server of our own, for ``serve`` and for ``run``'s temporary one: ``prefect server
start`` under the guard (it dies with us), on a port checked free, and trusted only once the process
we started is the one listening there; any other server answering on that port is never used."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchinfer.cli.children import Supervisor
from batchinfer.cli.preflight import listens_on

STARTUP_TIMEOUT_S = 90.0  # a fresh SQLite database takes 15-25 s to migrate on these machines


@dataclass(frozen=True)
class LocalServer:
    """A Prefect server we started on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_until_ours(self) -> str:
        """Its API URL, once it answers and the process we started is the one listening."""
        healthy = http_ok(self.url + "/health")

        def ours() -> bool:
            return healthy() and listens_on(self.proc.pid, self.port)

        wait_until(ours, STARTUP_TIMEOUT_S, "The Prefect server", self.proc, self.log)
        return self.url


def launch_prefect_server(
    supervisor: Supervisor, port: int, env: dict[str, str], log: Path, *, ui: bool | None = None
) -> LocalServer:
    """Start ``prefect server start`` on ``port`` (``ui`` None: as Prefect's settings say)."""
    argv = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    if ui is not None:
        server_env["PREFECT_SERVER_UI_ENABLED"] = str(ui).lower()
    return LocalServer(supervisor.start(argv, server_env, log), port, log)


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} ({last_line(log)}); see {log}")
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s; see {log}")


def last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check
