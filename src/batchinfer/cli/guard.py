"""``python -m batchinfer.cli.guard PARENT_PID MODULE [ARGS ...]``: ``python -m MODULE ARGS`` in a process
that ends, with everything it started, as soon as PARENT_PID does, however it dies (``kill -9``
included). ``serve`` starts its Prefect server and its runner this way, so neither they nor the
runner's flow-run processes outlive it, and ``run`` its temporary Prefect server.

A thread notices within half a second that the parent has gone (this process has a new parent
then), kills this process's descendants (psutil), then this process.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import threading
import time

import psutil

POLL_S = 0.5


def end_family() -> None:
    """Kill every descendant of this process, then this process (no cleanup: nobody is left to
    read its results; a new ``serve`` marks the jobs it ran as interrupted)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    end_family()


def main() -> None:
    parent, module, *args = sys.argv[1:]
    threading.Thread(target=_watch, args=(int(parent),), name="watch-parent", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
