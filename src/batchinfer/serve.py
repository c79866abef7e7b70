"""``batchinfer serve``: a Prefect server (unless ``PREFECT_API_URL`` is set), a runner for the
deployment, and the HTTP adapter, in one command. Ctrl-C or SIGTERM stops all of it."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from batchinfer.settings import Settings

STARTUP_TIMEOUT_S = 90.0  # a fresh SQLite database takes 15-25 s to migrate on these machines


def bind_refusal(host: str, settings: Settings) -> str | None:
    """Why ``serve`` must not bind the adapter to ``host``, or None: beyond loopback, anyone who can
    reach the port could submit jobs and read files under the allowed roots, so a token is required."""
    if settings.api_token is not None or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host!r} without an API token: anyone who can reach it could submit "
        "jobs and read prompt files under the allowed roots. Set BATCHINFER_API_TOKEN (clients then "
        "send 'Authorization: Bearer <token>'), or bind to 127.0.0.1."
    )


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address (0.0.0.0 is every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback for a in addresses)


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


def _mark_interrupted_jobs() -> None:
    """Fail the jobs a previous ``serve`` left running (their processes died with it), saying how
    to resume them; else they would show ``running`` forever. See ``recovery.py``.

    Only with a Prefect server of our own: on a shared one (``PREFECT_API_URL``) other runners may
    be running them, and Prefect's own zombie detection (flow-run heartbeats) is the tool there."""
    import asyncio

    from batchinfer.api.backend import mark_interrupted_jobs

    try:
        marked = asyncio.run(mark_interrupted_jobs())
    except Exception as exc:  # never a reason not to serve: those jobs only keep a stale state
        print(f"warning: could not look for interrupted jobs: {exc}", file=sys.stderr, flush=True)
        return
    if marked:
        print(
            f"Marked {len(marked)} job(s) left running by the previous serve as failed "
            f"(interrupted); resume with `batchinfer resume <id>`: {', '.join(marked)}",
            flush=True,
        )
    _release_model_slots()


def _release_model_slots() -> None:
    """Give back the model slots that jobs of the previous serve held (``model_limits``)."""
    import asyncio

    from batchinfer.model_limits import reset_model_limits

    try:
        reset = asyncio.run(reset_model_limits())
    except Exception as exc:  # a model limit stuck full would show as jobs waiting: say so
        print(f"warning: could not reset the model concurrency limits: {exc}", file=sys.stderr, flush=True)
        return
    if reset:
        print(f"Released the model slots the previous serve's jobs held: {', '.join(reset)}", flush=True)


def _ensure_job_webhook(settings: Settings) -> None:
    """Set up (or update) the job webhook that BATCHINFER_WEBHOOK_URL asks for. A failure stops
    ``serve``: someone relying on notifications should not get a server that silently sends none."""
    import asyncio

    from batchinfer.notifications import aensure_job_webhook

    if settings.webhook_url is None:
        return  # an automation set up by hand (notifications.py) is left as it is
    token = settings.webhook_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else None
    try:
        asyncio.run(aensure_job_webhook(settings.webhook_url.get_secret_value(), headers=headers))
    except Exception as exc:
        raise RuntimeError(f"could not set up the job webhook (BATCHINFER_WEBHOOK_URL): {exc}") from exc
    print("Finished jobs are posted to the webhook in BATCHINFER_WEBHOOK_URL.", flush=True)


def serve(host: str, port: int, prefect_port: int, settings: Settings) -> int:
    from batchinfer.api.backend import DEPLOYMENT_NAME, FLOW_NAME
    from batchinfer.catalog import load_catalog

    catalog = load_catalog(settings.models)  # a broken models file fails here, before anything starts
    logs = settings.home / "logs"
    env = dict(os.environ)  # cli.main has put Prefect's defaults in it (Settings.prefect_env)
    supervisor = Supervisor()
    # A server of our own was down while we were: nothing can be running its jobs (see below).
    owns_server = not env.get("PREFECT_API_URL")
    try:
        if owns_server:
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
        os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME") if k in env})
        import uvicorn

        from batchinfer.api.app import create_app
        from batchinfer.api.backend import PrefectJobBackend

        _ensure_job_webhook(settings)  # before the runner starts, so that no job ends unnoticed
        if owns_server:  # before the runner starts: from then on a RUNNING job may be its
            _mark_interrupted_jobs()
        runner = supervisor.start(
            "runner", [sys.executable, "-m", "batchinfer.runner"], env, logs / "runner.log"
        )
        deployment_url = f"{env['PREFECT_API_URL']}/deployments/name/{FLOW_NAME}/{DEPLOYMENT_NAME}"
        wait_until(_http_ok(deployment_url), STARTUP_TIMEOUT_S, "The runner", runner, logs / "runner.log")

        app = create_app(settings, catalog, lambda: PrefectJobBackend(settings.jobs_dir))
        print(f"batchinfer is serving on http://{host}:{port} (logs: {logs})", flush=True)
        # A request stuck on a busy Prefect server must not hold up a shutdown.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
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
