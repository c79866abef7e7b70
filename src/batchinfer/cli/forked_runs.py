"""The fork server, opt-in (``BATCHINFER_FORK_FLOW_RUNS``): ``serve``'s flow runs forked from a
process that has already imported what a job needs, instead of a fresh Python that imports Prefect
and the flow first (about a second of a one-prompt job's two, docs/performance.md).

It changes nothing of Prefect's. Prefect's runner starts a flow it was handed as an object
(``Runner.add_flow``) in a process of ``multiprocessing``'s *spawn* method, and which program spawn
runs is ``multiprocessing.set_executable``'s to say. Here it is a small launcher that passes the
spawned process's pipe to the fork server; the server forks a child that reads the flow run from
that pipe as a spawned Python would (``multiprocessing.spawn.spawn_main``), and the launcher stands
for that child to the runner: it passes the runner's signals on and exits with the child's code.
Without the fork server, the launcher becomes that spawned Python (exec), so nothing depends on it.

That the runner spawns such runs is how Prefect 3.7 to 3.9 work, not a promise: the fork server is
used only on the releases it was written for (``WRITTEN_FOR``); on another, ``serve`` says so in one
line and its runner starts flow runs Prefect's own way.

A flow run's process receives its flow pickled. A flow that its module defines is pickled as that
reference (``flows_by_reference``, in the runner only), so the run executes the module's own flow:
by value, cloudpickle would copy the function without the names its string annotations need.
"""

from __future__ import annotations

import contextlib
import copyreg
import importlib
import multiprocessing
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from prefect import Flow

WRITTEN_FOR = ((3, 7), (3, 10))  # [from, to): Prefect releases whose runner spawns add_flow's runs
# What a job's process imports: Prefect (through the flow), the HTTP engine, and pyarrow (gather).
FLOW_RUN_PRELOAD = ("batchinfer.flows.batch_job", "batchinfer.engines.openai_compat", "pyarrow.parquet")

LAUNCHER = """#!{python} -S
# multiprocessing's spawned Python, as batchinfer's fork server provides it (batchinfer.cli.forked_runs)
import os, re, signal, socket, sys
if "--multiprocessing-fork" not in sys.argv:  # a resource tracker, say: the real Python
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
prog = sys.argv[sys.argv.index("-c") + 1]
fds = [int(re.search(name + r"=(\\d+)", prog).group(1)) for name in ("tracker_fd", "pipe_handle")]
server = socket.socket(socket.AF_UNIX)
try:
    server.connect({address!r})
    socket.send_fds(server, [b"spawn"], [*fds, 1, 2])
    replies = server.makefile("rb")
    child = int(replies.readline())  # the child's pid, then its exit code
except (OSError, ValueError):  # no fork server: spawn as Python would
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, lambda signum, frame: os.kill(child, signum))
code = int(replies.readline() or -signal.SIGKILL)  # none: the fork server has gone
if code >= 0:
    sys.exit(code)
if code != -signal.SIGKILL:  # the child died of a signal: so does its stand-in
    signal.signal(-code, signal.SIG_DFL)
os.kill(os.getpid(), -code)
"""


def written_for(prefect_version: str) -> bool:
    major_minor = tuple(int(part) for part in prefect_version.split(".")[:2])
    return WRITTEN_FOR[0] <= major_minor < WRITTEN_FOR[1]


def fork_server_notice(prefect_version: str) -> str | None:
    """Why the fork server cannot be used with this Prefect (one line), or None."""
    if written_for(prefect_version):
        return None
    (a, b), (c, d) = WRITTEN_FOR
    return (
        f"BATCHINFER_FORK_FLOW_RUNS is ignored: the fork server was written for Prefect {a}.{b} to "
        f"{c}.{d - 1}, and this is Prefect {prefect_version}; jobs start Prefect's own way."
    )


def start_fork_server(folder: Path) -> subprocess.Popen[bytes]:
    """Start the fork server (it ends when this process does: its stdin is our pipe) and have this
    process's spawned processes come from it. Call before the runner starts."""
    address = str(folder / "fork-server.sock")
    argv = [sys.executable, "-m", __name__, address]
    server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdout is not None
    server.stdout.readline()  # "ready": it has imported FLOW_RUN_PRELOAD and listens
    launcher = folder / "spawned-python"
    launcher.write_text(LAUNCHER.format(python=sys.executable, address=address), encoding="utf-8")
    launcher.chmod(0o700)
    multiprocessing.set_executable(str(launcher))
    flows_by_reference()
    return server


def flows_by_reference() -> None:
    """From now on, this process pickles a module's flows as references to them."""
    from prefect import Flow

    copyreg.pickle(Flow, _reduce_flow)


def serve_forks(address: str) -> None:
    """The fork server: for each launcher that connects, fork a child and tell the launcher its pid,
    then its exit code; until stdin closes (the runner has gone)."""
    for module in FLOW_RUN_PRELOAD:
        importlib.import_module(module)
    exits, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # it wakes select() through the pipe
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen()
    launchers: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while sys.stdin not in (ready := select.select([listener, exits, sys.stdin], [], [])[0]):
        if exits in ready:
            os.read(exits, 4096)
            _report_exits(launchers)
        if listener in ready:
            launcher, _ = listener.accept()
            _, fds, _, _ = socket.recv_fds(launcher, 64, 4)
            child = os.fork()
            if child == 0:
                for inherited in (listener, *launchers.values()):
                    inherited.close()
                os.close(exits)
                os.close(wake)
                _run_flow_run(launcher, fds)
            for fd in fds:
                os.close(fd)
            launchers[child] = launcher
            launcher.sendall(b"%d\n" % child)


def _report_exits(launchers: dict[int, socket.socket]) -> None:
    while launchers:
        child, status = os.waitpid(-1, os.WNOHANG)
        if child == 0:
            return
        launcher = launchers.pop(child)
        with contextlib.suppress(OSError):  # a launcher that has gone took its child along
            launcher.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
        launcher.close()


def _run_flow_run(launcher: socket.socket, fds: list[int]) -> NoReturn:
    """In the forked child: be the spawned Python (the pipe brings its working directory, sys.path
    and the flow run), with the launcher's stdout and stderr."""
    from multiprocessing.spawn import spawn_main

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    tracker_fd, pipe_fd, out, err = fds
    os.dup2(out, 1)
    os.dup2(err, 2)
    # The launcher is the runner's handle on this process: if it is killed, so is this.
    threading.Thread(target=_die_with, args=(launcher,), daemon=True).start()
    sys.argv = [sys.argv[0], "--multiprocessing-fork"]
    code = 1
    try:
        spawn_main(pipe_handle=pipe_fd, tracker_fd=tracker_fd)  # ends in sys.exit(its exit code)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def _die_with(launcher: socket.socket) -> None:
    try:
        launcher.recv(1)  # returns when the launcher has gone (it never sends)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def _import_flow(module: str, name: str) -> Flow[..., Any]:
    flow: Flow[..., Any] = getattr(importlib.import_module(module), name)
    return flow


def _reduce_flow(flow: Flow[..., Any]) -> Any:
    """A flow its module holds under its function's name, as that reference; any other flow
    (one made in ``__main__``, say) as Prefect and cloudpickle would pickle it."""
    module, name = flow.fn.__module__, flow.fn.__name__
    if getattr(sys.modules.get(module), name, None) is flow:
        return _import_flow, (module, name)
    return flow.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


if __name__ == "__main__":
    serve_forks(sys.argv[1])
