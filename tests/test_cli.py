"""`batchinfer run`: one job in the foreground; prints the final BatchInference as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchinfer.testing.served import ServeProcess, read_jsonl, user_prompt, write_jsonl


def _run_cli(served: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    # Against the session's Prefect server, so the test does not pay for an ephemeral one.
    env = {**served.env, "PREFECT_API_URL": served.prefect_api_url}
    return subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
def test_run_completes_a_job_and_prints_the_batch_inference_as_json(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = write_jsonl(data_dir / "cli.jsonl", [user_prompt(f"cli {i}") for i in range(40)])
    out = data_dir / "cli-out"
    result = _run_cli(served, str(prompts), "--model", "fake", "--max-tokens", "8", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert job["success_file_path"]["value"] == str(out / "success.jsonl")
    assert [r["generations"][0]["text"] for r in read_jsonl(out / "success.jsonl")] == [
        f"echo: cli {i}" for i in range(40)
    ]
    assert "40/40" in result.stderr  # the progress bar's last frame


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "nope"], "Unknown model 'nope'"),
        (["--model", "fake", "--top-p", "3"], "top_p"),
        (["--model", "fake", "--num-generations", "0"], "num_generations"),
    ],
)
def test_run_refuses_a_bad_request_with_exit_code_2_and_a_clear_message(
    served: ServeProcess, data_dir: Path, args: list[str], needle: str
) -> None:
    prompts = write_jsonl(data_dir / "cli-bad.jsonl", [user_prompt("x")])
    result = _run_cli(served, str(prompts), *args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_run_refuses_a_missing_file_naming_it(served: ServeProcess, data_dir: Path) -> None:
    result = _run_cli(served, str(data_dir / "absent.jsonl"), "--model", "fake")
    assert result.returncode == 2
    assert "absent.jsonl" in result.stderr and "Traceback" not in result.stderr
