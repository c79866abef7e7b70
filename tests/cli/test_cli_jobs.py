"""`batchinfer status`, `jobs` and `results` talk to a running `serve` (BATCHINFER_URL); `validate` is
a dry run that sends nothing to the model; `models` shows the models file. Each one reads well in
a terminal and prints JSON with `--json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.served import ServeProcess, read_jsonl, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e


def _cli(served: ServeProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in served.env.items() if not k.startswith("PREFECT_")}
    environment.update(BATCHINFER_URL=served.url, **env)
    return subprocess.run(
        [sys.executable, "-m", "batchinfer.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def finished_job(served: ServeProcess, e2e_root: Path) -> dict[str, Any]:
    """A completed job of three answers and one bad line."""
    lines = [json.dumps(user_prompt(f"jobs-cli {i}")) for i in range(3)] + ["not json"]
    prompts = e2e_root / "data" / "jobs-cli.jsonl"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = served.submit_ok({"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(prompts)}})
    return served.wait(job["job_id"])


def test_status_shows_a_job_for_a_person_and_as_json(
    served: ServeProcess, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["job_id"]
    shown = _cli(served, "status", job_id)
    assert shown.returncode == 0, shown.stderr
    for words in (
        job_id,
        "completed",
        "fake",
        "4 total, 3 succeeded, 1 failed",
        finished_job["success_file_path"]["value"],
    ):
        assert words in shown.stdout
    assert json.loads(_cli(served, "status", job_id, "--json").stdout) == finished_job


def test_jobs_lists_jobs_as_a_table_filtered_by_status_and_model(
    served: ServeProcess, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["job_id"]
    table = _cli(served, "jobs", "--status", "completed", "--model", "fake", "--limit", "200")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "JOB",
        "ID",
        "STATUS",
        "MODEL",
        "LINES",
        "SUCCEEDED",
        "FAILED",
        "CREATED",
    ]
    row = next(line for line in table.stdout.splitlines() if job_id in line)
    assert row.split()[1:6] == ["completed", "fake", "4", "3", "1"]
    page = json.loads(_cli(served, "jobs", "--model", "fake-slow", "--json").stdout)
    assert job_id not in [job["job_id"] for job in page["data"]]


def test_results_prints_the_answers_or_the_errors_as_jsonl_or_a_table(
    served: ServeProcess, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["job_id"]
    answers = _cli(served, "results", job_id, "--format", "jsonl")
    assert [json.loads(line) for line in answers.stdout.splitlines()] == read_jsonl(
        finished_job["success_file_path"]["value"]
    )
    errors = _cli(served, "results", job_id, "--errors", "--format", "table")
    assert errors.returncode == 0, errors.stderr
    row = next(line for line in errors.stdout.splitlines() if "invalid_json" in line)
    assert row.split()[0] == "4"
    table = _cli(served, "results", job_id, "--format", "table").stdout
    assert "echo: jobs-cli 2" in table and "stop" in table


def test_results_that_cannot_be_read_here_say_where_they_are(served: ServeProcess, data_dir: Path) -> None:
    prompts = write_jsonl(data_dir / "moved.jsonl", [user_prompt("moved away")])
    job = served.wait(
        served.submit_ok({"model": "fake", "prompt_file_path": {"type": "filepath", "value": str(prompts)}})[
            "job_id"
        ]
    )
    success = Path(job["success_file_path"]["value"])
    success.rename(success.with_name("elsewhere.jsonl"))  # as if on the server's disk, not this one's
    result = _cli(served, "results", job["job_id"])
    assert result.returncode == 1
    assert str(success) in result.stderr and "Traceback" not in result.stderr


def test_models_shows_each_models_engine_target_and_limits(served: ServeProcess, models_file: Path) -> None:
    table = _cli(served, "models").stdout
    row = next(line for line in table.splitlines() if line.startswith("fake-limited "))
    assert "openai" in row and "max_concurrency 4" in row
    assert "smollm2-135m" in table, "the embedded default is always there"
    listed = {m["id"]: m for m in json.loads(_cli(served, "models", "--json").stdout)}
    assert listed["tiny"]["engine"] == "transformers" and listed["tiny"]["limits"]["batch_size"] == 8


def test_models_lists_every_replica_of_a_model_and_their_count() -> None:
    from batchinfer.cli.jobs import _model_row
    from batchinfer.engines.configs import OpenAIEngineConfig

    urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    row = _model_row(OpenAIEngineConfig(id="m", base_urls=urls, model="llama", max_concurrency=8))
    assert row["serves"] == f"llama at {urls[0]}, {urls[1]}"
    assert row["limits"]["max_concurrency"] == 8 and row["limits"]["replicas"] == 2


def _with_bad_lines(path: Path, lines: int, bad: dict[int, str]) -> Path:
    rows = [bad.get(n) or json.dumps(user_prompt(f"validate line {n}")) for n in range(1, lines + 1)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


BAD_LINES = {
    17: "not json",
    1234: "[]",
    2500: '[{"role": "wizard", "text": "x"}]',
    5000: '{"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {"messages": []}}',
    7777: "42",
    9001: '[{"role": "user"}]',
    10000: '[{"role": "user", "text": 3}]',
}


def test_validate_a_10000_line_file_names_its_7_bad_lines_counts_tokens_and_sends_nothing(
    served: ServeProcess, data_dir: Path, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    prompts = _with_bad_lines(data_dir / "validate.jsonl", 10_000, BAD_LINES)
    priced = yaml.safe_load(Path(served.env["BATCHINFER_MODELS"]).read_text(encoding="utf-8"))
    priced["models"][0].update(price_per_million_input_tokens=2.0, price_per_million_output_tokens=8.0)
    (tmp_path / "priced.yaml").write_text(yaml.safe_dump(priced), encoding="utf-8")
    sent_before = fake_openai.requests_total
    result = _cli(
        served,
        "validate",
        str(prompts),
        "--model",
        "fake",
        "--max-tokens",
        "10",
        BATCHINFER_MODELS=str(tmp_path / "priced.yaml"),
    )
    assert result.returncode == 1, result.stderr  # invalid lines: not a clean file
    listed = [line for line in result.stdout.splitlines() if line.startswith("  line ")]
    assert [int(line.split()[1].rstrip(":")) for line in listed] == sorted(BAD_LINES)
    assert all(line.count(":") >= 2 for line in listed), "each bad line has its code and reason"
    assert "9,993 valid, 7 invalid" in result.stdout and "Nothing was sent to the model." in result.stdout
    assert fake_openai.requests_total == sent_before
    report = json.loads(
        _cli(
            served,
            "validate",
            str(prompts),
            "--model",
            "fake",
            "--max-tokens",
            "10",
            "--json",
            BATCHINFER_MODELS=str(tmp_path / "priced.yaml"),
        ).stdout
    )
    assert report["endpoints"] == {"/v1/chat/completions": 9993} and report["tokens"].startswith("estimated")
    assert report["prompt_tokens"] > 0 and f"{report['prompt_tokens']:,}" in result.stdout
    assert report["cost"] == pytest.approx(
        {"prompts": report["prompt_tokens"] * 2e-6, "answers_at_most": 9993 * 10 * 8e-6}
    )


def test_validate_counts_a_local_models_prompt_tokens_as_its_engine_does(
    served: ServeProcess, data_dir: Path
) -> None:
    prompts = write_jsonl(
        data_dir / "tokens.jsonl", [user_prompt(f"the cat sees {i} rivers") for i in range(4)]
    )
    job = served.wait(
        served.submit_ok(
            {
                "model": "tiny",
                "prompt_file_path": {"type": "filepath", "value": str(prompts)},
                "options": {"max_tokens": 2},
            }
        )["job_id"]
    )
    report = json.loads(_cli(served, "validate", str(prompts), "--model", "tiny", "--json").stdout)
    assert report["tokens"] == "counted with the model's tokenizer"
    assert report["prompt_tokens"] == job["metadata"]["usage"]["prompt_tokens"] > 0
