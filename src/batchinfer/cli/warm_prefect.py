"""The local Prefect server that ``batchinfer run`` keeps warm between runs.

Starting a Prefect server costs 10-25 s, so the first run without an API URL starts one that outlives
it, with Prefect's own ``prefect server start --background`` (Prefect records it in ``server.pid`` in
the Prefect home; ``prefect server stop`` stops it), and later runs of that Prefect home use it. A
watcher (``python -m batchinfer.cli.warm_prefect``) stops it once no run has used it for
``BATCHINFER_LOCAL_SERVER_IDLE_S``, and ends with it. ``batchinfer server`` shows it, ``batchinfer
server stop`` stops it; ``BATCHINFER_LOCAL_SERVER_IDLE_S=0`` gives each run a temporary server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil
from filelock import FileLock

from batchinfer.cli.local_prefect import STARTUP_TIMEOUT_S, http_ok, last_line, wait_until
from batchinfer.cli.prefect_env import PrefectSetup
from batchinfer.cli.preflight import free_port, listens_on
from batchinfer.settings import Settings

PID_FILE = "server.pid"  # Prefect's record of its background server, in the Prefect home
USED_FILE = "prefect-server.used"  # touched while runs use the server: its mtime is the last use
LOCK_FILE = "prefect-server.lock"  # held by a run deciding which server to use, and by the watcher
IDLE_POLL_S = 2.0
USE_TOUCH_S = 30.0  # how often a running job marks the server used, at most


@dataclass(frozen=True)
class WarmServer:
    """The server ``prefect server start --background`` left running for a Prefect home."""

    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def answers(self) -> bool:
        """Answering, and the one listening on its port: nothing else is ever used."""
        return http_ok(self.url + "/health")() and listens_on(self.pid, self.port)


def read_warm(prefect_home: Path) -> WarmServer | None:
    """The background server Prefect recorded in ``prefect_home``, while its process runs."""
    try:
        pid = int((prefect_home / PID_FILE).read_text(encoding="utf-8"))
        argv = psutil.Process(pid).cmdline()
        return WarmServer(pid, int(argv[argv.index("--port") + 1]))
    except (OSError, ValueError, IndexError, psutil.Error):  # none, or a pid no server holds now
        return None


def mark_used(home: Path) -> None:
    (home / USED_FILE).touch()


def touch_every(idle_s: float) -> float:
    """How often a running job marks the server used: well within ``idle_s``, so that the watcher
    never finds a server idle that a job is using, however short the idle time is set."""
    return min(USE_TOUCH_S, idle_s / 4)


@contextlib.contextmanager
def using(home: Path, idle_s: float) -> Iterator[None]:
    """Mark the server used now, often enough while inside (``touch_every``), and at the end."""
    done, every_s = threading.Event(), touch_every(idle_s)

    def touch() -> None:
        while not done.wait(every_s):
            mark_used(home)

    mark_used(home)
    threading.Thread(target=touch, name="warm-prefect-use", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        mark_used(home)


def warm_prefect_url(settings: Settings, prefect: PrefectSetup) -> str:
    """The API URL of the Prefect home's warm server, started first if there is none."""
    with FileLock(prefect.home / LOCK_FILE):
        warm = read_warm(prefect.home)
        url = warm.url if warm is not None and warm.answers() else _start(settings, prefect)
        mark_used(prefect.home)
        return url


def _start(settings: Settings, prefect: PrefectSetup) -> str:
    home, idle_s = prefect.home, settings.server.local_server_idle_s
    print(f"Starting a local Prefect server: {prefect.why_a_server_of_our_own()}.", file=sys.stderr)
    (home / PID_FILE).unlink(missing_ok=True)  # of a server that is gone: Prefect would refuse to start
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = settings.home / "logs" / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    background = ["prefect", "server", "start", "--background", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        if _detached(background, env, out).wait():
            raise RuntimeError(f"The local Prefect server did not start ({last_line(log)}); see {log}")
        server = WarmServer(int((home / PID_FILE).read_text(encoding="utf-8")), port)
        wait_until(server.answers, STARTUP_TIMEOUT_S, "The local Prefect server", None, log)
        mark_used(home)  # before the watcher looks: never used would be idle
        _detached(["batchinfer.cli.warm_prefect", str(home), str(idle_s)], env, out)
    print(
        f"Started a local Prefect server at http://127.0.0.1:{port} (the UI too) for this and later "
        f"runs; it stops after {idle_s / 60:g} min without a job, or now with `batchinfer server stop` "
        "(BATCHINFER_LOCAL_SERVER_IDLE_S=0: a temporary server for each run).",
        file=sys.stderr,
    )
    return server.url


def _detached(module_argv: list[str], env: dict[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    """``python -m <module_argv>`` in a session of its own: it outlives this run, and its terminal."""
    argv = [sys.executable, "-m", *module_argv]
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
    )


def stop_warm(prefect_home: Path, grace_s: float = 20.0) -> WarmServer | None:
    """Stop the Prefect home's warm server with ``prefect server stop``; the one stopped, or None."""
    if (warm := read_warm(prefect_home)) is None:
        return None
    with contextlib.suppress(psutil.Error):
        server = psutil.Process(warm.pid)
        argv = [sys.executable, "-m", "prefect", "server", "stop"]
        subprocess.run(argv, env={**os.environ, "PREFECT_HOME": str(prefect_home)}, capture_output=True)
        _, alive = psutil.wait_procs([server], timeout=grace_s)
        for straggler in alive:  # it did not stop when asked
            straggler.kill()
    return warm


def server_command(action: str, settings: Settings, prefect_home: Path) -> int:
    """``batchinfer server [status|stop]``."""
    warm = stop_warm(prefect_home) if action == "stop" else read_warm(prefect_home)
    if warm is None:
        print(f"No local Prefect server is running for the Prefect home {prefect_home}.")
    elif action == "stop":
        print(f"Stopped the local Prefect server at {warm.url}.")
    else:
        idle = time.time() - _last_used(prefect_home)
        left = max(0.0, settings.server.local_server_idle_s - idle)
        print(
            f"Local Prefect server: {warm.url.removesuffix('/api')} (pid {warm.pid}); last used "
            f"{idle / 60:.0f} min ago, stops in {left / 60:.0f} min unless used; `batchinfer server "
            "stop` stops it now."
        )
    return 0


def _last_used(home: Path) -> float:
    try:
        return (home / USED_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _idle(home: Path, idle_s: float) -> bool:
    """No run has used the server for ``idle_s``: a run touches ``USED_FILE`` while it lasts, so a
    run that was killed stops counting once that long has passed."""
    return time.time() - _last_used(home) > idle_s


def watch(prefect_home: Path, idle_s: float) -> None:
    """The watcher: stop the warm server once it has been idle for ``idle_s``; return when it has
    gone, whoever stopped it."""
    if (warm := read_warm(prefect_home)) is None:
        return
    with contextlib.suppress(psutil.Error):
        server = psutil.Process(warm.pid)
        while server.is_running():
            with FileLock(prefect_home / LOCK_FILE):  # no run decides to use it meanwhile
                if _idle(prefect_home, idle_s):
                    stop_warm(prefect_home)
                    return
            with contextlib.suppress(psutil.TimeoutExpired):
                server.wait(IDLE_POLL_S)


if __name__ == "__main__":
    watch(Path(sys.argv[1]), float(sys.argv[2]))
