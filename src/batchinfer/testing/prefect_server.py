"""A real Prefect server on 127.0.0.1 for end-to-end tests, and the ``prefect`` CLI pointed at it.

The server runs ``prefect server start`` in a subprocess with its own PREFECT_HOME and SQLite
database under ``home``, so a test never touches ``~/.prefect`` or another test's server. Commands
(``prefect deploy``) and long-lived processes (``prefect worker start``) get the same environment.

Migrating a fresh database costs a server ~10 s of CPU. With ``database_template``, the first
server saves a copy of its database as it comes up (schema and block types only, nothing of any
test yet), holding a lock on it so that servers in other processes wait for it, and later servers
start from that copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx
from filelock import FileLock

from batchinfer.cli.children import end_process_trees
from batchinfer.settings import Settings
from batchinfer.testing.served import free_port, seed_database

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

PREFECT = [sys.executable, "-m", "prefect"]
# A fresh SQLite database takes 15-25 s to migrate on a busy 2-core machine.
STARTUP_TIMEOUT_S = 120.0
WORKER_GRACE_S = 5.0


@dataclass
class PrefectServer:
    """``prefect server start`` on a free port; use as a context manager."""

    home: Path
    server_env: dict[str, str] = field(default_factory=dict)  # extra settings for the server only
    database_template: Path | None = None  # a migrated database to start from, or to save (see above)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def database(self) -> Path:
        """The SQLite file, where ``Settings.prefect_env`` puts it."""
        return self.home / "prefect" / "prefect.db"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server: the caller's, without any
        PREFECT_* or BATCHINFER_* setting of its own, plus this server's URL and home."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHINFER_"))}
        env.update(Settings(home=self.home).prefect_env())  # the same defaults `serve` uses
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_UI_ENABLED="false",  # nothing to look at in a test; starts faster
            PREFECT_CLI_PROMPT="false",
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        template = self.database_template
        if template is not None and not template.exists():
            with FileLock(f"{template}.lock"):  # the first makes it; the others wait, then copy it
                if not template.exists():
                    return self._start(timeout_s, save_to=template)
        if template is not None:
            seed_database(template, self.database.parent)
        return self._start(timeout_s)

    def _start(self, timeout_s: float, save_to: Path | None = None) -> PrefectServer:
        argv = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = self._popen(argv, self.env(**self.server_env), "prefect-server")
        try:
            self._wait_until_healthy(self.proc, timeout_s)
            if save_to is not None:
                snapshot_database(self.database, save_to)
        except BaseException:  # never leave a server behind when the fixture fails
            self.stop()
            raise
        return self

    def _wait_until_healthy(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with {proc.returncode}: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.25)
        raise RuntimeError(f"the Prefect server did not answer in {timeout_s:.0f} s: {self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.api_url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args: str, cwd: Path | None = None, timeout_s: float = 120.0, **env: str) -> str:
        """Run ``prefect <args>`` against this server; its output, or RuntimeError if it failed."""
        done = subprocess.run(
            [*PREFECT, *args],
            env=self.env(**env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def spawn(self, name: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start ``prefect <args>`` in the background (a worker); stopped with the server."""
        proc = self._popen([*PREFECT, *args], self.env(**env), name, cwd=cwd)
        self.background.append(proc)
        return proc

    def client(self) -> PrefectClient:
        """A Prefect client for this server, whatever PREFECT_API_URL this process was started with."""
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(self.api_url)

    def _popen(
        self, argv: list[str], env: dict[str, str], name: str, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it for its lifetime
        # A session of its own, so that a Ctrl-C meant for pytest reaches us first and we stop it.
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the background processes (workers, with their flow runs), then the server. In that
        order: a worker told to stop while its server is gone retries the server for a minute. A
        worker gets a few seconds: one whose flow run is still ending waits on it for half a minute."""
        end_process_trees(reversed(self.background), min(timeout_s, WORKER_GRACE_S))
        self.background.clear()
        if self.proc is not None:
            end_process_trees([self.proc], timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return "".join(
            f"\n--- {log.name}\n" + log.read_text(errors="replace")[-chars:]
            for log in sorted(self.home.glob("*.log"))
        )

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def snapshot_database(database: Path, target: Path) -> None:
    """Copy a live SQLite database consistently (the backup API), and atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(partial)) as copy,
    ):
        source.backup(copy)
    partial.replace(target)
