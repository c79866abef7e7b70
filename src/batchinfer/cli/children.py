"""The processes ``serve`` starts, and who owns a data dir.

* ``Supervisor`` starts each child under ``batchinfer.cli.guard`` (it dies with ``serve``, however
  ``serve`` dies) in a session of its own, and stops them all, descendants included.
* ``claim_home`` makes ``serve`` the one owner of its ``BATCHINFER_HOME``: ``serve.json`` there names
  the live ``serve`` and the token its children carry in their environment. A second ``serve`` on
  the same home is refused while the first lives; after a ``kill -9`` the next one ends whatever
  still carries the dead one's token (a flow run whose runner was killed too, say).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from batchinfer.errors import ConfigError
from batchinfer.pipeline.jobfiles import atomic_write

OWNER_FILE = "serve.json"
TOKEN_ENV = "BATCHINFER_SERVE_TOKEN"  # in every child's environment: which serve it belongs to


class Supervisor:
    """Owns child processes, each in its own session so their whole group can be stopped."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, module_argv: list[str], env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """``python -m <module_argv>`` under the guard, its output appended to ``log``; its stdin is
        a pipe from us (the runner waits for a line there)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "batchinfer.cli.guard", str(os.getpid()), *module_argv]
        with open(log, "ab") as out:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child's process group, then SIGKILL whatever is left after ``grace_s``.

        Descendants are collected first because Prefect's runner starts each flow run in a new
        session of its own, out of reach of the runner's process group."""
        family: list[psutil.Process] = []
        for _, proc in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(proc.pid)
                family += [top, *top.children(recursive=True)]
        for _, proc in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end_processes(family, grace_s)
        for _, proc in self.children:
            proc.poll()  # reap, so no zombie is left behind
        self.children.clear()


def end_processes(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM ``processes``, then SIGKILL those still alive after ``grace_s``."""
    for member in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for straggler in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            straggler.kill()
    psutil.wait_procs(alive, timeout=5)


@dataclass(frozen=True)
class Owner:
    """The ``serve`` that owns a data dir, as ``serve.json`` records it."""

    pid: int
    started: float  # the process's create time: a pid reused by another process does not match
    token: str
    url: str

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False


def _read_owner(path: Path) -> Owner | None:
    try:
        return Owner(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # none, or not ours to read: nobody to clean up after
        return None


def processes_with_token(token: str) -> list[psutil.Process]:
    """This user's processes whose environment carries ``token`` (``TOKEN_ENV``)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(TOKEN_ENV) == token:
                found.append(process)
    return found


@contextlib.contextmanager
def claim_home(home: Path, url: str) -> Iterator[Owner]:
    """Own ``home`` while inside (see the module docstring); yields this serve's ``Owner``."""
    path = home / OWNER_FILE
    previous = _read_owner(path)
    if previous is not None and previous.alive():
        raise ConfigError(
            f"Another batchinfer serve (pid {previous.pid}, {previous.url}) is using {home}; stop it "
            "first, or give this one its own BATCHINFER_HOME."
        )
    if previous is not None and (leftovers := processes_with_token(previous.token)):
        print(f"Ending {len(leftovers)} process(es) left by a serve that was killed.", flush=True)
        end_processes(leftovers, grace_s=5)
    me = Owner(os.getpid(), psutil.Process().create_time(), uuid.uuid4().hex, url)
    with atomic_write(path) as handle:
        handle.write(json.dumps(asdict(me)))
    try:
        yield me
    finally:
        if _read_owner(path) == me:
            path.unlink(missing_ok=True)
