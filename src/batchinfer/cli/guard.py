"""``python -m batchinfer.cli.guard PARENT_PID MODULE [ARGS ...]``: ``python -m MODULE ARGS`` in a process
that ends, with everything it started, as soon as PARENT_PID does, however it dies (``kill -9``
included). ``serve`` starts its Prefect server and its runner this way, so neither they nor the
runner's flow-run processes outlive it.

Two ways of noticing, because either alone can miss: the kernel's parent-death signal (Linux
``PR_SET_PDEATHSIG``, delivered at once), and a thread that watches the parent id (anywhere, within
half a second). Either one kills this process's descendants, then this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import runpy
import signal
import sys
import threading
import time
from types import FrameType

import psutil

PR_SET_PDEATHSIG = 1
# A signal no Prefect code handles, so the kernel's notice reaches our handler, not theirs.
PARENT_DIED = signal.SIGUSR2
POLL_S = 0.5


def end_family() -> None:
    """Kill every descendant of this process, then this process (no cleanup: nobody is left to
    read its results; a new ``serve`` marks the jobs it ran as interrupted)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(1)


def _on_parent_death(signum: int, frame: FrameType | None) -> None:
    end_family()


def _ask_kernel() -> None:
    """Have Linux send ``PARENT_DIED`` when the parent dies (elsewhere: nothing; the thread watches)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    end_family()


def watch_parent(parent: int) -> None:
    signal.signal(PARENT_DIED, _on_parent_death)
    _ask_kernel()
    if os.getppid() != parent:  # it died before the kernel was asked: nobody would tell us
        end_family()
    threading.Thread(target=_watch, args=(parent,), name="watch-parent", daemon=True).start()


def main() -> None:
    parent, module, *args = sys.argv[1:]
    watch_parent(int(parent))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
