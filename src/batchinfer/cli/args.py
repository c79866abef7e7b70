"""The ``batchinfer`` command line: its commands, their flags, and the environment each one reads.

Every ``--help`` ends with the variables its command reads and their defaults (taken from
``Settings``, so they cannot drift). A flag value out of range is refused here, before anything
starts, in one line that names the flag.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import NoReturn

from batchinfer import __version__
from batchinfer.settings import setting_field

# Variables that are not Settings fields: (name, default, meaning).
_OTHER_VARIABLES = {
    "PREFECT_API_URL": (
        "unset",
        "A Prefect server to use, wherever Prefect reads it (also .env, prefect.toml, pyproject.toml, "
        "the profile); unset everywhere: batchinfer starts its own.",
    ),
    "PREFECT_HOME": ("$BATCHINFER_HOME/prefect", "Prefect's home; the local Prefect database is inside it."),
    "BATCHINFER_URL": ("http://127.0.0.1:8000", "Where `batchinfer serve` listens."),
}
_DEFAULT_TEXTS = {"home": "~/.batchinfer", "allowed_roots": "the data dir, the working dir and the temp dir"}
_SERVER_VARIABLES = ("BATCHINFER_URL", "BATCHINFER_API_TOKEN")
_PREFECT_VARIABLES = ("PREFECT_API_URL", "PREFECT_HOME")
_JOB_VARIABLES = ("BATCHINFER_HOME", "BATCHINFER_MODELS", "BATCHINFER_CHUNK_SIZE", "BATCHINFER_THREADS")


def _default_text(field: str) -> str:
    info = setting_field(field)
    if field in _DEFAULT_TEXTS:
        return _DEFAULT_TEXTS[field]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def environment_help(names: tuple[str, ...]) -> str:
    """The ``Environment:`` section of a command's ``--help``."""
    lines = ["environment:"]
    for name in names:
        if name in _OTHER_VARIABLES:
            default, meaning = _OTHER_VARIABLES[name]
        else:
            field = name.removeprefix("BATCHINFER_").lower()
            info = setting_field(field)
            default, meaning = _default_text(field), (info.description or "").split(". ")[0].rstrip(".") + "."
        lines.append(f"  {name} (default: {default})")
        lines += textwrap.wrap(meaning, width=88, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose refusals are one line and a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`.\n")


def _bounded(
    kind: Callable[[str], float], low: float, high: float | None, *, open_low: bool = False
) -> Callable[[str], float]:
    """An argparse type: a ``kind`` number in [low, high] ((low, high] with ``open_low``)."""
    opening, top = "(" if open_low else "[", "inf)" if high is None else f"{high:g}]"
    interval = f"{opening}{low:g}, {top}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{' whole' if kind is int else ''} number"
            ) from None
        if value < low or (open_low and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a number in {interval}")
        return value

    return parse


POSITIVE_INT = _bounded(int, 1, None)
PORT = _bounded(int, 1, 65535)


def _subparser(
    sub: argparse._SubParsersAction[Parser], name: str, help_text: str, env: tuple[str, ...]
) -> Parser:
    parser: Parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=environment_help(env),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> Parser:
    parser = Parser(
        prog="batchinfer",
        description="Batch inference on Prefect 3: a JSONL file of prompts in, results out.",
    )
    parser.add_argument("--version", action="version", version=f"batchinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _add_serve(sub)
    _add_run(sub)
    _add_job_actions(sub)
    _add_server_queries(sub)
    _add_validate(sub)
    _add_local_server(sub)
    _add_keys(sub)
    models = _subparser(
        sub,
        "models",
        "List the models a job may name: engine, target, limits, price.",
        ("BATCHINFER_MODELS",),
    )
    models.add_argument("--json", action="store_true", help="Print JSON (for scripts).")
    return parser


def _add_serve(sub: argparse._SubParsersAction[Parser]) -> None:
    env = (
        "BATCHINFER_HOME",
        "BATCHINFER_MODELS",
        "BATCHINFER_API_TOKEN",
        "BATCHINFER_ALLOWED_ROOTS",
        "BATCHINFER_MAX_CONCURRENT_JOBS",
        "BATCHINFER_WEBHOOK_URL",
        *_PREFECT_VARIABLES,
    )
    serve = _subparser(
        sub, "serve", "Run a Prefect server of its own, a runner and the HTTP API, until Ctrl-C.", env
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="API bind address; beyond loopback it requires BATCHINFER_API_TOKEN (default: %(default)s).",
    )
    serve.add_argument("--port", type=PORT, default=8000, help="API port (default: %(default)s).")
    serve.add_argument(
        "--prefect-port",
        type=PORT,
        default=None,
        help="Port of serve's own Prefect server and UI (default: 4200, or a free port when 4200 is taken).",
    )


def _add_run(sub: argparse._SubParsersAction[Parser]) -> None:
    env = (
        *_JOB_VARIABLES,
        "BATCHINFER_ALLOWED_ROOTS",
        "BATCHINFER_DEFAULT_MAX_TOKENS",
        "BATCHINFER_LOCAL_SERVER_IDLE_S",
        *_PREFECT_VARIABLES,
    )
    run = _subparser(
        sub,
        "run",
        "Run one job in the foreground with a progress bar; Ctrl-C cancels it, keeping what finished.",
        env,
    )
    run.add_argument(
        "prompts",
        help="A JSONL, Parquet or CSV prompt file (a path, or a URI such as https://...).",
    )
    _add_model_and_sampling(run)
    run.add_argument("--logprobs", action="store_true", help="Return each token's log-probability.")
    run.add_argument(
        "--output-dir",
        help="Where success.jsonl, errors.jsonl and results.parquet go "
        "(default: $BATCHINFER_HOME/jobs/<job id>).",
    )
    run.add_argument(
        "--prompt-column",
        help="A table's column that holds each row's prompt (default: messages, else prompt); "
        "with --template, {prompt} in the template stands for it.",
    )
    run.add_argument(
        "--template",
        help="A table's prompts built from each row's columns, e.g. \"Summarise in one line: {abstract}\".",
    )
    run.add_argument("--system-prompt", help="A system message sent before each table row's prompt.")
    run.add_argument(
        "--max-error-rate",
        type=_bounded(float, 0, 1),
        help="Stop and fail the job (error_rate_exceeded) once more than this share of its requests "
        "failed, in [0, 1] (default: the model's max_error_rate, else none).",
    )


def _add_model_and_sampling(parser: Parser) -> None:
    parser.add_argument(
        "--model", required=True, help="A model id from the models file (`batchinfer models`)."
    )
    parser.add_argument(
        "--max-tokens",
        type=POSITIVE_INT,
        help="Most tokens per answer (default: BATCHINFER_DEFAULT_MAX_TOKENS).",
    )
    parser.add_argument("--temperature", type=_bounded(float, 0, None), help="Sampling temperature, >= 0.")
    parser.add_argument("--top-p", type=_bounded(float, 0, 1, open_low=True), help="Nucleus mass, in (0, 1].")
    parser.add_argument(
        "--num-generations", type=POSITIVE_INT, default=1, help="Answers per prompt (default: 1)."
    )


def _add_job_actions(sub: argparse._SubParsersAction[Parser]) -> None:
    actions = {
        "resume": "Run a failed, crashed or cancelled job again under its id; finished lines are reused.",
        "cancel": "Cancel a job: it stops within seconds and writes what it finished to its output files.",
        "retry": "Run an ended job again for its failed lines only (timeouts, 408, 429, 5xx, connection "
        "errors; --all: every failed inference), merging the new outcomes into its output files.",
    }
    for name, help_text in actions.items():
        action = _subparser(sub, name, help_text, ("BATCHINFER_HOME", *_PREFECT_VARIABLES))
        action.add_argument("job_id", help="The job id (a UUID, as `batchinfer jobs` lists).")
        action.add_argument(
            "--prefect-api-url",
            help="The Prefect API of the runner's server; default PREFECT_API_URL, "
            "else the local server of `batchinfer serve` (http://127.0.0.1:4200/api).",
        )
        if name == "retry":
            action.add_argument(
                "--all", action="store_true", help="Every failed inference, not only the retryable ones."
            )


def _add_server_queries(sub: argparse._SubParsersAction[Parser]) -> None:
    status = _subparser(
        sub, "status", "Show one job: status, counts, error, output files.", _SERVER_VARIABLES
    )
    status.add_argument("job_id", help="The job id.")
    status.add_argument("--json", action="store_true", help="Print the BatchInference as JSON (for scripts).")
    jobs = _subparser(sub, "jobs", "List jobs, newest first, as a table.", _SERVER_VARIABLES)
    jobs.add_argument(
        "--status", choices=["validating", "running", "completed", "failed"], help="Only jobs in this status."
    )
    jobs.add_argument("--model", help="Only jobs of this model id.")
    jobs.add_argument(
        "--limit",
        type=_bounded(int, 1, 200),
        default=20,
        help="Most jobs to show, 1-200 (default: %(default)s).",
    )
    jobs.add_argument("--json", action="store_true", help="Print the page of jobs as JSON (for scripts).")
    results = _subparser(
        sub,
        "results",
        "Print a job's results (its success file; --errors: its error file; --follow: as they finish).",
        _SERVER_VARIABLES,
    )
    results.add_argument("job_id", help="The job id.")
    results.add_argument("--errors", action="store_true", help="The error records instead of the answers.")
    results.add_argument(
        "--format",
        choices=["jsonl", "table"],
        default=None,
        help="jsonl: the records as they are; table: one row a line (default: table in a terminal, "
        "else jsonl).",
    )
    results.add_argument("--json", action="store_true", help="The same as --format jsonl.")
    results.add_argument(
        "--follow",
        action="store_true",
        help="Print the records as JSONL as they finish, in input order, until the job ends (exit 1 "
        "if it failed); works while the job runs.",
    )


def _add_local_server(sub: argparse._SubParsersAction[Parser]) -> None:
    server = _subparser(
        sub,
        "server",
        "Show the local Prefect server that `batchinfer run` keeps warm between runs; `stop` stops it.",
        ("BATCHINFER_HOME", "BATCHINFER_LOCAL_SERVER_IDLE_S"),
    )
    server.add_argument("action", nargs="?", choices=["status", "stop"], default="status")


def _add_keys(sub: argparse._SubParsersAction[Parser]) -> None:
    keys = _subparser(
        sub,
        "keys",
        "Manage the API keys of `batchinfer serve`'s users: each key sees only its own jobs, files "
        "and batches (an admin key sees all). Keys are stored hashed under BATCHINFER_HOME.",
        ("BATCHINFER_HOME",),
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    create = actions.add_parser("create", help="Make a key and print it, once, alone on the last line.")
    create.add_argument("name", help="Who the key is for: what it makes belongs to this name.")
    create.add_argument("--admin", action="store_true", help="An admin key: it sees and manages everything.")
    for quota, what in (
        ("--max-enqueued-requests", "requests its jobs that have not ended may hold"),
        ("--max-enqueued-tokens", "tokens (estimated as a hosted API counts them) its jobs may hold"),
        ("--max-running-jobs", "jobs it may have that have not ended"),
    ):
        create.add_argument(quota, type=POSITIVE_INT, metavar="N", help=f"Quota: at most N {what}.")
    actions.add_parser("list", help="The keys: name, first characters, role, quotas, created, revoked.")
    for action, what in (
        ("revoke", "Revoke a key: serve refuses it from its next request on."),
        ("rotate", "Give a key a new secret (printed once, last line); the old one is refused at once."),
    ):
        actions.add_parser(action, help=what).add_argument(
            "name", help="The key's name, as `keys list` shows it."
        )


def _add_validate(sub: argparse._SubParsersAction[Parser]) -> None:
    env = (
        "BATCHINFER_HOME",
        "BATCHINFER_MODELS",
        "BATCHINFER_MAX_LINE_BYTES",
        "BATCHINFER_MAX_LINES",
        "BATCHINFER_DEFAULT_MAX_TOKENS",
    )
    validate = _subparser(
        sub,
        "validate",
        "Dry run: check every line, count prompt tokens and the cost; sends nothing to the model.",
        env,
    )
    validate.add_argument("prompts", help="A JSONL prompt file (a path, or a URI such as https://...).")
    _add_model_and_sampling(validate)
    validate.add_argument("--json", action="store_true", help="Print the report as JSON (for scripts).")
