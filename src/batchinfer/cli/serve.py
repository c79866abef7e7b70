"""``batchinfer serve``: a Prefect server (unless ``PREFECT_API_URL`` is set), a runner for the
deployment, and the HTTP adapter, in one command. Ctrl-C or SIGTERM stops all of it."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING

from batchinfer.cli.children import Supervisor, claim_home
from batchinfer.cli.forked_runs import fork_server_notice
from batchinfer.cli.keys import access_line, keys_required
from batchinfer.cli.local_prefect import (
    STARTUP_TIMEOUT_S,
    LocalServer,
    http_ok,
    launch_prefect_server,
    wait_until,
)
from batchinfer.cli.prefect_env import PREFECT_SOURCES, PrefectSetup, apply_prefect_env, use_api_url
from batchinfer.cli.preflight import DEFAULT_PREFECT_PORT, check_prefect_api, prefect_port, require_free_port
from batchinfer.errors import ConfigError
from batchinfer.settings import Settings, env_name

if TYPE_CHECKING:
    from batchinfer.engines.catalog import ModelCatalog


def bind_refusal(host: str, settings: Settings) -> str | None:
    """Why ``serve`` must not bind the adapter to ``host``, or None: beyond loopback, anyone who can
    reach the port could submit jobs and read files under the allowed roots, so keys are required."""
    if is_loopback(host) or keys_required(settings):
        return None
    return (
        f"refusing to serve on {host!r} without keys: anyone who can reach it could submit jobs and "
        "read prompt files under the allowed roots. Make keys (`batchinfer keys create NAME`) or set "
        "BATCHINFER_API_TOKEN, or bind to 127.0.0.1."
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


def _mark_interrupted_jobs() -> None:
    """Fail the jobs a previous ``serve`` left running (their processes died with it), saying how
    to resume them; else they would show ``running`` forever. See ``recovery.py``.

    Only with a Prefect server of our own: on a shared one (``PREFECT_API_URL``) other runners may
    be running them, and Prefect's own zombie detection (flow-run heartbeats) is the tool there."""
    import asyncio

    from batchinfer.control.backend import mark_interrupted_jobs

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

    from batchinfer.runtime.model_limits import reset_model_limits

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

    from batchinfer.control.notifications import aensure_job_webhook

    if settings.server.webhook_url is None:
        return  # an automation set up by hand (notifications.py) is left as it is
    token = settings.server.webhook_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else None
    try:
        asyncio.run(aensure_job_webhook(settings.server.webhook_url.get_secret_value(), headers=headers))
    except Exception as exc:
        raise RuntimeError(f"could not set up the job webhook (BATCHINFER_WEBHOOK_URL): {exc}") from exc
    print("Finished jobs are posted to the webhook in BATCHINFER_WEBHOOK_URL.", flush=True)


def serve_from_cli(args: argparse.Namespace, settings: Settings) -> int:
    """``batchinfer serve``: every check first (so a refusal is immediate and leaves nothing behind),
    then ``serve``, owning the data dir while it runs."""
    from batchinfer.engines.catalog import load_catalog

    if refusal := bind_refusal(args.host, settings):
        raise ConfigError(refusal)
    catalog = load_catalog(settings.models)
    require_free_port(args.host, args.port, "--port")
    prefect = apply_prefect_env(settings)
    if prefect.api_url:
        check_prefect_api(
            prefect.api_url,
            f"start that server, or fix or unset the PREFECT_API_URL that Prefect reads ({PREFECT_SOURCES}) "
            "so that serve starts a Prefect server of its own.",
        )
    port = None if prefect.api_url else prefect_port(args.prefect_port)
    if port not in (None, args.prefect_port, DEFAULT_PREFECT_PORT):
        print(
            f"Port {DEFAULT_PREFECT_PORT} is taken (another Prefect server?); this serve's own Prefect "
            f"server uses port {port}.",
            flush=True,
        )
    with claim_home(settings.home, f"http://{args.host}:{args.port}"):
        return serve(args.host, args.port, port, settings, catalog, prefect)


def serve(
    host: str,
    port: int,
    prefect_port: int | None,
    settings: Settings,
    catalog: ModelCatalog,
    prefect: PrefectSetup,
) -> int:
    """Run everything until Ctrl-C or SIGTERM; ``prefect_port`` None: use ``PREFECT_API_URL``'s server."""
    supervisor = Supervisor()
    try:
        _start_prefect_and_runner(supervisor, prefect_port, settings, prefect)
        import uvicorn

        from batchinfer.api.app import create_app
        from batchinfer.control.backend import PrefectJobBackend

        app = create_app(settings, catalog, lambda: PrefectJobBackend(settings.jobs_dir))
        print(f"batchinfer is serving on http://{host}:{port} (logs: {settings.home / 'logs'})", flush=True)
        print(access_line(settings), flush=True)
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


def _hand_jobs_to_work_pool(
    pool: str, server: LocalServer | None, env: dict[str, str], settings: Settings
) -> None:
    """No runner of our own: the deployment goes to ``pool``, whose workers run the jobs wherever
    they are (``work_pool``). A job they run may outlive this serve, so none is marked interrupted."""
    from batchinfer.cli.runner import DEPLOYMENT_OPTIONS
    from batchinfer.cli.work_pool import deploy_to_work_pool

    if server is not None:
        server.wait_until_ours()
    use_api_url(env["PREFECT_API_URL"])
    _ensure_job_webhook(settings)
    deploy_to_work_pool(pool, DEPLOYMENT_OPTIONS)
    unset = "the disk of the worker that runs each (set BATCHINFER_OUTPUT_URL)"
    where = settings.scale_out.output_url or unset
    print(f"Jobs go to the workers of work pool {pool!r}; their files to {where}.", flush=True)


def _start_prefect_and_runner(
    supervisor: Supervisor, prefect_port: int | None, settings: Settings, prefect: PrefectSetup
) -> None:
    """A Prefect server of our own on ``prefect_port`` (None: the one Prefect's settings name) and the
    runner; return once the runner has registered the deployment."""
    from batchinfer.control.names import DEPLOYMENT_NAME, FLOW_NAME

    logs, env = settings.home / "logs", dict(os.environ)  # with Prefect's defaults (prefect_env)
    server = None
    if prefect_port is not None:
        why = prefect.why_a_server_of_our_own()
        print(f"Starting the Prefect server (UI: http://127.0.0.1:{prefect_port}): {why}.", flush=True)
        server = launch_prefect_server(supervisor, prefect_port, env, logs / "prefect-server.log")
        env["PREFECT_API_URL"] = server.url
    if settings.scale_out.work_pool:
        _hand_jobs_to_work_pool(settings.scale_out.work_pool, server, env, settings)
        return
    if settings.server.fork_flow_runs and (notice := fork_server_notice(version("prefect"))):
        print(notice, flush=True)
        env[env_name("fork_flow_runs")] = "false"
    # Started now, the runner imports Prefect and the flow while the server starts; it takes no job
    # before the go-ahead below.
    runner = supervisor.start(["batchinfer.cli.runner"], env, logs / "runner.log")
    if server is not None:
        server.wait_until_ours()
    use_api_url(env["PREFECT_API_URL"])
    _ensure_job_webhook(settings)  # before the runner takes jobs, so that no job ends unnoticed
    if server is not None:  # ours was down while we were: nothing can be running its jobs
        _mark_interrupted_jobs()  # before the runner takes jobs: from then on a RUNNING job may be its
    assert runner.stdin is not None
    runner.stdin.write(b"go\n")
    runner.stdin.flush()
    deployment_url = f"{env['PREFECT_API_URL']}/deployments/name/{FLOW_NAME}/{DEPLOYMENT_NAME}"
    wait_until(http_ok(deployment_url), STARTUP_TIMEOUT_S, "The runner", runner, logs / "runner.log")
