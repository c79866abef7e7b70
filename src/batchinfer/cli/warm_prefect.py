"""The local Prefect server that ``batchinfer run`` keeps warm between runs.

Without ``PREFECT_API_URL``, ``run`` needs a Prefect server, and starting one costs 10-25 s (a fresh
database takes longer). So the first run starts one that outlives it, and later runs on the same
data dir use it: ``python -m batchinfer.cli.warm_prefect`` (the keeper) runs ``prefect server
start`` under the guard, records it in ``prefect-server.json`` in the data dir, and stops it, and
itself, once no job has run on it for ``BATCHINFER_LOCAL_SERVER_IDLE_S`` seconds. The user is told
when it starts, ``batchinfer server`` shows it and ``batchinfer server stop`` stops it.
``BATCHINFER_LOCAL_SERVER_IDLE_S=0`` gives each run a temporary server that stops with it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import psutil

from batchinfer.cli.children import Supervisor
from batchinfer.cli.local_prefect import STARTUP_TIMEOUT_S, http_ok, start_prefect_server, wait_until
from batchinfer.cli.prefect_env import PrefectSetup
from batchinfer.cli.preflight import free_port, listens_on
from batchinfer.pipeline.jobfiles import atomic_write
from batchinfer.settings import Settings

STATE_FILE = "prefect-server.json"  # the warm server, while its keeper lives
USED_FILE = "prefect-server.used"  # touched when a run starts and ends: its mtime is the last use
LOCK_FILE = "prefect-server.lock"  # one run at a time decides whether to start a server
IDLE_POLL_S = 5.0
USE_TOUCH_S = 30.0  # how often a running job marks the server used


@dataclass(frozen=True)
class WarmServer:
    """A warm Prefect server, as its keeper recorded it."""

    pid: int  # the keeper
    started: float  # the keeper's create time: a reused pid does not match
    url: str
    port: int
    server_pid: int  # the process that runs ``prefect server start`` (under the guard)

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False

    def answers(self) -> bool:
        """Alive, answering, and the one listening on its port: nothing else is ever used."""
        return self.alive() and http_ok(self.url + "/health")() and listens_on(self.server_pid, self.port)


def read_warm(home: Path) -> WarmServer | None:
    try:
        return WarmServer(**json.loads((home / STATE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def mark_used(home: Path) -> None:
    (home / USED_FILE).touch()


@contextlib.contextmanager
def using(home: Path) -> Iterator[None]:
    """Mark the server used now, every ``USE_TOUCH_S`` while inside, and at the end."""
    done = threading.Event()

    def touch() -> None:
        while not done.wait(USE_TOUCH_S):
            mark_used(home)

    mark_used(home)
    toucher = threading.Thread(target=touch, name="warm-prefect-use", daemon=True)
    toucher.start()
    try:
        yield
    finally:
        done.set()
        mark_used(home)


def warm_prefect_url(settings: Settings, prefect: PrefectSetup) -> str:
    """The API URL of this data dir's warm Prefect server, started first if there is none."""
    home = settings.home
    with _locked(home / LOCK_FILE):
        warm = read_warm(home)
        if warm is not None and warm.answers():
            mark_used(home)
            return warm.url
        return _start_keeper(settings, prefect, dict(os.environ))


def _start_keeper(settings: Settings, prefect: PrefectSetup, env: dict[str, str]) -> str:
    home, idle_s = settings.home, settings.local_server_idle_s
    log = home / "logs" / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"Starting a local Prefect server: {prefect.why_a_server_of_our_own()}.", file=sys.stderr, flush=True
    )
    argv = [sys.executable, "-m", __name__, "--port", str(free_port()), "--idle-s", str(idle_s)]
    with open(log, "ab") as out:  # a session of its own: it outlives this run, and its terminal
        keeper = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )

    def ready() -> bool:
        warm = read_warm(home)
        return warm is not None and warm.pid == keeper.pid and warm.answers()

    wait_until(ready, STARTUP_TIMEOUT_S + 10, "The local Prefect server", keeper, log)
    url = read_warm(home).url  # type: ignore[union-attr]
    print(
        f"Started a local Prefect server at {url.removesuffix('/api')} (the UI too) for this and later "
        f"runs; it stops after {idle_s / 60:g} min without a job, or now with `batchinfer server stop` "
        "(BATCHINFER_LOCAL_SERVER_IDLE_S=0: a temporary server for each run).",
        file=sys.stderr,
        flush=True,
    )
    return url


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stop_warm(home: Path, grace_s: float = 20.0) -> WarmServer | None:
    """Stop this data dir's warm server (its keeper stops it); the one stopped, or None."""
    warm = read_warm(home)
    if warm is None or not warm.alive():
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(warm.pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error):
        psutil.Process(warm.pid).wait(grace_s)
    return warm


def server_command(action: str, settings: Settings) -> int:
    """``batchinfer server [status|stop]``."""
    home = settings.home
    if action == "stop":
        stopped = stop_warm(home)
        print(f"Stopped the local Prefect server at {stopped.url}." if stopped else _NONE.format(home))
        return 0
    warm = read_warm(home)
    if warm is None or not warm.alive():
        print(_NONE.format(home))
        return 0
    try:
        idle = time.time() - (home / USED_FILE).stat().st_mtime
    except OSError:
        idle = 0.0
    left = max(0.0, settings.local_server_idle_s - idle)
    print(
        f"Local Prefect server: {warm.url.removesuffix('/api')} (pid {warm.pid}); last used "
        f"{idle / 60:.0f} min ago, stops in {left / 60:.0f} min unless used; `batchinfer server stop` "
        "stops it now."
    )
    return 0


_NONE = "No local Prefect server is running for {}."


# -- the keeper ----------------------------------------------------------------------------------


def keep(port: int, idle_s: float, settings: Settings) -> int:
    """Run the server until it has been idle for ``idle_s`` (or SIGTERM); remove the record."""
    home = settings.home
    supervisor = Supervisor()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    me: WarmServer | None = None
    try:
        url = start_prefect_server(supervisor, port, dict(os.environ), home / "logs" / "prefect-server.log")
        server = supervisor.children[0][1]
        me = WarmServer(os.getpid(), psutil.Process().create_time(), url, port, server.pid)
        with atomic_write(home / STATE_FILE) as handle:
            handle.write(json.dumps(asdict(me)))
        mark_used(home)
        while server.poll() is None and not _idle(home, idle_s):
            time.sleep(IDLE_POLL_S)
        return 0
    except SystemExit:
        return 0
    finally:
        if me is not None and read_warm(home) == me:
            (home / STATE_FILE).unlink(missing_ok=True)
        supervisor.stop_all()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _idle(home: Path, idle_s: float) -> bool:
    """No run has used the server for ``idle_s``: a run touches ``USED_FILE`` while it lasts, so a
    run that was killed stops counting once that long has passed."""
    try:
        last_used = (home / USED_FILE).stat().st_mtime
    except OSError:
        last_used = 0.0
    return time.time() - last_used > idle_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep a local Prefect server for `batchinfer run`.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    args = parser.parse_args(argv)
    return keep(args.port, args.idle_s, Settings())


if __name__ == "__main__":
    sys.exit(main())
