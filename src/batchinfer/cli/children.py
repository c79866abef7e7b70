"""The processes ``serve`` starts, and who owns a data dir.

* ``Supervisor`` starts each child under ``batchinfer.cli.guard`` (it dies with ``serve``, however
  ``serve`` dies) in a session of its own, and stops them all, descendants included (psutil).
* ``claim_home`` makes ``serve`` the one owner of its ``BATCHINFER_HOME``: a lock on ``serve.lock``
  there (filelock), taken without waiting, so of two ``serve``s started at once exactly one wins, and
  held until ``serve`` ends; the operating system lets go of it when ``serve`` dies, ``kill -9``
  included. ``serve.json`` beside it names the owner for the one refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from batchinfer.errors import ConfigError
from batchinfer.pipeline.jobfiles import atomic_write

LOCK_FILE = "serve.lock"
OWNER_FILE = "serve.json"


@dataclass
class Supervisor:
    """Owns child processes, each in its own session so that a terminal's Ctrl-C reaches us first."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, module_argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
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
        self.children.append(proc)
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every child and every descendant of theirs (``end_process_trees``)."""
        end_process_trees(self.children, grace_s)
        self.children.clear()


def end_process_trees(procs: Iterable[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM each process and every descendant of theirs (a flow run may be in a session of its
    own), then SIGKILL whatever is left after ``grace_s``; reap them, so no zombie is left behind."""
    procs = list(procs)
    family: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(proc.pid)
            family += [top, *top.children(recursive=True)]
    end_processes(family, grace_s)
    for proc in procs:
        proc.poll()


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
    """The ``serve`` that owns a data dir, as ``serve.json`` names it."""

    pid: int
    url: str


@contextlib.contextmanager
def claim_home(home: Path, url: str) -> Iterator[Owner]:
    """Own ``home`` while inside (see the module docstring), or a ConfigError naming its owner."""
    lock = FileLock(home / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"Another batchinfer serve ({_owner(home)}) is using {home}; stop it first, or give this one "
            "its own BATCHINFER_HOME."
        ) from None
    me = Owner(os.getpid(), url)
    try:
        with atomic_write(home / OWNER_FILE) as handle:
            handle.write(json.dumps(asdict(me)))
        yield me
    finally:
        (home / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


def _owner(home: Path) -> str:
    try:
        owner = Owner(**json.loads((home / OWNER_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # it holds the lock, and is about to say who it is
        return "starting"
    return f"pid {owner.pid}, {owner.url}"
