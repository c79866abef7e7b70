"""The ``batchinfer`` command: ``serve`` (server + runner + adapter), ``run`` (one job, foreground),
``resume`` (a failed, crashed or cancelled job, again under its id) and ``cancel`` (a job)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from batchinfer.errors import ConfigError, EngineError
from batchinfer.prefect_env import apply_prefect_env
from batchinfer.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchinfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the Prefect server, a runner and the HTTP adapter.")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="Adapter bind address; beyond loopback it requires BATCHINFER_API_TOKEN.",
    )
    serve.add_argument("--port", type=int, default=8000, help="Adapter port.")
    serve.add_argument(
        "--prefect-port",
        type=int,
        default=None,
        help="Port of serve's own Prefect server and UI (default: 4200, or a free port when 4200 is taken).",
    )

    run = sub.add_parser("run", help="Run one job in the foreground with a progress bar.")
    run.add_argument("prompts", help="A JSONL prompt file (a path, or a URI such as https://...).")
    run.add_argument("--model", required=True, help="A model id from the models file.")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.add_argument("--top-p", type=float)
    run.add_argument("--logprobs", action="store_true")
    run.add_argument("--num-generations", type=int, default=1)
    run.add_argument("--output-dir", help="Where success.jsonl and errors.jsonl go.")

    job_actions = {
        "resume": "Run a failed, crashed or cancelled job again under its id; finished lines are reused.",
        "cancel": "Cancel a job: it stops within seconds and writes what it finished to its output files.",
    }
    for name, help_text in job_actions.items():
        action = sub.add_parser(name, help=help_text)
        action.add_argument("job_id", help="The job id (flow run id) that submit_job returned.")
        action.add_argument(
            "--prefect-api-url",
            help="The Prefect API of the runner's server; default PREFECT_API_URL, else the local "
            "server of `batchinfer serve` (http://127.0.0.1:4200/api).",
        )

    sub.add_parser("models", help="List the model ids a job may name.")
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        from batchinfer.errors import BatchInferError
        from batchinfer.serve import serve_from_cli

        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:  # every check comes before anything starts, so a refusal leaves nothing behind
            return serve_from_cli(args, settings)
        except (ConfigError, EngineError) as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        except BatchInferError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    # Prefect reads these when it is imported: set them first, and only where the user has not.
    try:
        apply_prefect_env(settings, os.environ)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.command == "models":
        from batchinfer.catalog import load_catalog

        for model in load_catalog(settings.models).models:
            print(f"{model.id}\t{model.engine}")
        return 0
    if args.command in ("resume", "cancel"):
        from batchinfer.resume_job import job_action_from_cli, prefect_api_url

        return job_action_from_cli(args.command, args.job_id, prefect_api_url(args.prefect_api_url), settings)
    from batchinfer.run_job import run_in_foreground

    return run_in_foreground(args, settings)


if __name__ == "__main__":
    sys.exit(main())
