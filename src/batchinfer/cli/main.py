"""The ``batchinfer`` command.

``serve`` (Prefect server + runner + HTTP API), ``run`` (one job in the foreground), ``resume``,
``cancel`` and ``retry`` (a job, through Prefect); ``status``, ``jobs`` and ``results`` (through a running
``serve``); ``validate`` (a dry run), ``models``, ``server`` (``run``'s warm Prefect server), and
``keys`` (the API keys of ``serve``'s users).
Flags are in ``cli_args``.

Every mistake ends the command with one line on stderr that says how to fix it, and a non-zero exit:
2 for something given wrong (a flag, a file, a model, a setting), 1 for something that failed or is
not there (a job that failed, a server that does not answer). It is found before any server starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from pydantic import ValidationError

from batchinfer.cli.args import build_parser
from batchinfer.errors import BatchInferError, ConfigError, EngineError, RequestError
from batchinfer.settings import Settings, env_name

# Commands that start or talk to Prefect: Prefect's environment is set up for them (prefect_env).
_PREFECT_COMMANDS = frozenset({"serve", "run", "resume", "cancel", "retry"})


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def load_settings() -> Settings:
    """``Settings()``, or one ``ConfigError`` line naming each variable that is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{env_name(str(error['loc'][0]))}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ConfigError(f"{'; '.join(problems)}. Fix or unset the variable.") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except RequestError as exc:  # what the API answers with a 4xx: the same words here
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (ConfigError, EngineError) as exc:  # EngineError here: the models file (catalog)
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except BatchInferError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `batchinfer jobs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:  # before a command set up its own handling (run does, once it runs)
        print("Interrupted.", file=sys.stderr)
        return 128 + signal.SIGINT


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("status", "jobs", "results"):
        from batchinfer.cli.jobs import jobs_command, results_command, status_command

        command = {"status": status_command, "jobs": jobs_command, "results": results_command}
        return command[args.command](args)
    settings = load_settings()
    if args.command == "models":
        from batchinfer.cli.jobs import models_command

        return models_command(args, settings)
    if args.command == "keys":
        from batchinfer.cli.keys import keys_command

        return keys_command(args, settings)
    if args.command == "server":
        from batchinfer.cli.prefect_env import apply_prefect_env
        from batchinfer.cli.warm_prefect import server_command

        return server_command(args.action, settings, apply_prefect_env(settings).home)
    if args.command == "validate":
        from batchinfer.cli.validate import validate_command

        return validate_command(args, settings)
    return _prefect_command(args, settings)


def _prefect_command(args: argparse.Namespace, settings: Settings) -> int:
    """The commands that start or talk to Prefect. Each checks what it was given first, then sets up
    Prefect's environment (``prefect_env.apply_prefect_env``, which creates the data dir)."""
    assert args.command in _PREFECT_COMMANDS
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.command == "serve":
        from batchinfer.cli.serve import serve_from_cli

        return serve_from_cli(args, settings)
    if args.command in ("resume", "cancel", "retry"):
        from batchinfer.cli.resume import job_action_from_cli

        action = "retry-all" if args.command == "retry" and args.all else args.command
        return job_action_from_cli(action, args.job_id, args.prefect_api_url, settings)
    from batchinfer.cli.run import run_in_foreground

    return run_in_foreground(args, settings)
