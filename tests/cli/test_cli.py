"""The `batchinfer` command: `run` completes a job; every mistake, in every command, is one clear
line and a non-zero exit within seconds, found before any server starts; `--help` and `--version`."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batchinfer import __version__
from batchinfer.cli import main
from batchinfer.cli.args import build_parser
from batchinfer.testing.served import ServeProcess, free_port, read_jsonl, user_prompt, write_jsonl


def _cli(served: ServeProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", *args],
        env={**{k: v for k, v in served.env.items() if not k.startswith("PREFECT_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e
def test_run_completes_a_job_and_prints_the_batch_inference_as_json(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = write_jsonl(data_dir / "cli.jsonl", [user_prompt(f"cli {i}") for i in range(40)])
    out = data_dir / "cli-out"
    result = _cli(
        served,
        *("run", str(prompts), "--model", "fake", "--max-tokens", "8", "--output-dir", str(out)),
        PREFECT_API_URL=served.prefect_api_url,  # the session's server: no temporary one to pay for
    )
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert job["success_file_path"]["value"] == str(out / "success.jsonl")
    assert [r["generations"][0]["text"] for r in read_jsonl(out / "success.jsonl")] == [
        f"echo: cli {i}" for i in range(40)
    ]
    assert "40/40" in result.stderr  # the progress bar's last frame


@dataclass
class Mistake:
    """One mistake: the command line and environment (``{placeholders}`` filled in by the test),
    the exit code, and the words its one line must hold."""

    args: list[str]
    code: int
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)
    within_s: float = 15.0


NOWHERE = "http://127.0.0.1:{free}/api"  # a port nothing listens on
BAD_YAML = "models:\n  - id: x\n  engine: [\n"
BAD_FIELD = "models:\n  - id: x\n    engine: openai\n    base_url: http://h/v1\n    model: m\n"
BAD_FIELD += "    max_concurrency: 0\n"
RUN = ["run", "{prompts}", "--model", "fake"]
JOB = str(uuid.UUID(int=7))

MISTAKES = {
    "run: a prompt file that does not exist": Mistake(
        ["run", "{data}/absent.jsonl", "--model", "fake"], 2, ["absent.jsonl"]
    ),
    "run: a prompt file that cannot be read": Mistake(
        ["run", "{data}/a-folder.jsonl", "--model", "fake"], 2, ["a-folder.jsonl", "not a regular file"]
    ),
    "run: an unknown model": Mistake(
        ["run", "{prompts}", "--model", "nope"], 2, ["Unknown model 'nope'", "Known models", "fake-slow"]
    ),
    "run: a models file that is not YAML": Mistake(
        RUN, 2, ["{bad_yaml}", "line 3", "invalid YAML"], {"BATCHINFER_MODELS": "{bad_yaml}"}
    ),
    "run: a models file that fails validation": Mistake(
        RUN, 2, ["{bad_field}", "line 6", "max_concurrency"], {"BATCHINFER_MODELS": "{bad_field}"}
    ),
    "run: PREFECT_API_URL pointing at nothing": Mistake(
        RUN, 1, [NOWHERE, "PREFECT_API_URL"], {"PREFECT_API_URL": NOWHERE}, 30
    ),
    "run: --top-p out of range": Mistake([*RUN, "--top-p", "3"], 2, ["--top-p", "(0, 1]"]),
    "run: --max-error-rate out of range": Mistake(
        [*RUN, "--max-error-rate", "1.5"], 2, ["--max-error-rate", "[0, 1]"]
    ),
    "run: --num-generations out of range": Mistake(
        [*RUN, "--num-generations", "0"], 2, ["--num-generations"]
    ),
    "run: --max-tokens not a number": Mistake([*RUN, "--max-tokens", "lots"], 2, ["--max-tokens", "'lots'"]),
    "run: --num-generations over the limit": Mistake(
        [*RUN, "--num-generations", "99"], 2, ["BATCHINFER_MAX_NUM_GENERATIONS"]
    ),
    "run: a setting out of range": Mistake(RUN, 2, ["BATCHINFER_CHUNK_SIZE"], {"BATCHINFER_CHUNK_SIZE": "0"}),
    "serve: its port in use": Mistake(["serve", "--port", "{port}"], 2, ["Port {port}", "--port"]),
    "serve: its Prefect port in use": Mistake(
        ["serve", "--port", "{free}", "--prefect-port", "{prefect_port}"],
        2,
        ["{prefect_port}", "--prefect-port", "PREFECT_API_URL"],
    ),
    "serve: PREFECT_API_URL pointing at nothing": Mistake(
        ["serve", "--port", "{free}"], 1, [NOWHERE], {"PREFECT_API_URL": NOWHERE}, 30
    ),
    "serve: a models file that fails validation": Mistake(
        ["serve", "--port", "{free}"], 2, ["{bad_field}", "line 6"], {"BATCHINFER_MODELS": "{bad_field}"}
    ),
    "serve: a home another serve runs on": Mistake(
        ["serve", "--port", "{free}"],
        2,
        ["Another batchinfer serve", "BATCHINFER_HOME"],
        {"BATCHINFER_HOME": "{home}"},
    ),
    "serve: --port out of range": Mistake(["serve", "--port", "70000"], 2, ["--port", "[1, 65535]"]),
    "resume: not a job id": Mistake(["resume", "not-a-uuid"], 2, ["'not-a-uuid' is not a job id"]),
    "resume: PREFECT_API_URL pointing at nothing": Mistake(
        ["resume", JOB], 1, [NOWHERE], {"PREFECT_API_URL": NOWHERE}, 30
    ),
    "resume: an unknown job": Mistake(
        ["resume", JOB, "--prefect-api-url", "{prefect_api}"], 1, [f"No job with id '{JOB}'"]
    ),
    "cancel: not a job id": Mistake(["cancel", "12"], 2, ["'12' is not a job id"]),
    "cancel: PREFECT_API_URL pointing at nothing": Mistake(
        ["cancel", JOB, "--prefect-api-url", NOWHERE], 1, [NOWHERE]
    ),
    "cancel: an unknown job": Mistake(
        ["cancel", JOB], 1, [f"No job with id '{JOB}'"], {"PREFECT_API_URL": "{prefect_api}"}
    ),
    "retry: not a job id": Mistake(["retry", "12", "--all"], 2, ["'12' is not a job id"]),
    "retry: an unknown job": Mistake(
        ["retry", JOB, "--prefect-api-url", "{prefect_api}"], 1, [f"No job with id '{JOB}'"]
    ),
    "status: no serve at BATCHINFER_URL": Mistake(
        ["status", JOB],
        1,
        ["Nothing answers at", "batchinfer serve"],
        {"BATCHINFER_URL": "http://127.0.0.1:{free}"},
    ),
    "status: an unknown job": Mistake(
        ["status", JOB], 1, [f"No job with id '{JOB}'"], {"BATCHINFER_URL": "{url}"}
    ),
    "jobs: a status that does not exist": Mistake(["jobs", "--status", "done"], 2, ["--status", "'done'"]),
    "results: no serve at BATCHINFER_URL": Mistake(
        ["results", JOB], 1, ["Nothing answers at"], {"BATCHINFER_URL": "http://127.0.0.1:{free}"}
    ),
    "validate: a prompt file that does not exist": Mistake(
        ["validate", "{data}/absent.jsonl", "--model", "fake"], 2, ["absent.jsonl"]
    ),
    "validate: an unknown model": Mistake(
        ["validate", "{prompts}", "--model", "nope"], 2, ["Unknown model 'nope'"]
    ),
    "models: a models file that is not YAML": Mistake(
        ["models"], 2, ["{bad_yaml}", "line 3"], {"BATCHINFER_MODELS": "{bad_yaml}"}
    ),
    "an unknown command": Mistake(["serv"], 2, ["invalid choice: 'serv'", "--help"]),
}


@pytest.fixture
def placeholders(served: ServeProcess, data_dir: Path, tmp_path: Path) -> dict[str, str]:
    (data_dir / "a-folder.jsonl").mkdir(exist_ok=True)
    (tmp_path / "bad.yaml").write_text(BAD_YAML, encoding="utf-8")
    (tmp_path / "bad-field.yaml").write_text(BAD_FIELD, encoding="utf-8")
    return {
        "data": str(data_dir),
        "prompts": str(write_jsonl(data_dir / "mistakes.jsonl", [user_prompt("x")])),
        "bad_yaml": str(tmp_path / "bad.yaml"),
        "bad_field": str(tmp_path / "bad-field.yaml"),
        "free": str(free_port()),
        "port": str(served.port),
        "prefect_port": str(served.prefect_port),
        "prefect_api": served.prefect_api_url,
        "url": served.url,
        "home": str(served.home),
    }


@pytest.fixture
def in_process(served: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Ran]]:
    """``main(args)`` in this process with the served environment (no ``PREFECT_*`` of its own):
    its exit code and captured output. The environment and the SIGTERM handler a command sets up
    are put back afterwards."""
    saved_env, saved_sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)

    def run(args: list[str], env: dict[str, str]) -> Ran:
        os.environ.clear()
        os.environ.update({k: v for k, v in served.env.items() if not k.startswith("PREFECT_")}, **env)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse's mistakes
                code = int(exit_.code or 0)
        return Ran(code, stdout.getvalue(), stderr.getvalue())

    yield run
    os.environ.clear()
    os.environ.update(saved_env)
    signal.signal(signal.SIGTERM, saved_sigterm)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_is_one_clear_line_and_a_non_zero_exit_within_seconds(
    in_process: Callable[..., Ran], placeholders: dict[str, str], name: str
) -> None:
    mistake = MISTAKES[name]
    args = [arg.format(**placeholders) for arg in mistake.args]
    env = {key: value.format(**placeholders) for key, value in mistake.env.items()}
    started = time.monotonic()
    result = in_process(args, env)
    _assert_one_clear_line(result, mistake, placeholders, time.monotonic() - started)


@pytest.mark.e2e
def test_a_mistake_as_a_process_is_the_same_one_line_and_exit_code(
    served: ServeProcess, placeholders: dict[str, str]
) -> None:
    """The table runs through ``main()``; this one goes through the real entry point and stderr."""
    mistake = MISTAKES["run: an unknown model"]
    started = time.monotonic()
    result = _cli(served, *[arg.format(**placeholders) for arg in mistake.args])
    _assert_one_clear_line(result, mistake, placeholders, time.monotonic() - started)
    assert "Traceback" not in result.stderr


def _assert_one_clear_line(
    result: Ran | subprocess.CompletedProcess[str],
    mistake: Mistake,
    placeholders: dict[str, str],
    elapsed: float,
) -> None:
    assert result.returncode == mistake.code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in mistake.words:
        assert word.format(**placeholders) in lines[0]
    assert "Starting" not in result.stdout + result.stderr, "checked before any server starts"
    assert elapsed < mistake.within_s


COMMANDS = [
    "serve",
    "run",
    "resume",
    "cancel",
    "retry",
    "status",
    "jobs",
    "results",
    "validate",
    "models",
    "server",
    "keys",
]


def test_these_are_all_the_commands() -> None:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_commands_help_lists_its_environment_variables_with_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    environment = capsys.readouterr().out.split("environment:")[1]
    assert "BATCHINFER_" in environment
    assert environment.count("(default: ") == environment.count("\n  BATCHINFER_") + environment.count(
        "\n  PREFECT_"
    )


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"batchinfer {__version__}"
