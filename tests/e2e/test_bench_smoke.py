"""The benchmark suite runs end to end at tiny sizes, so that `make bench` cannot rot.

No timing is asserted: only that every contestant ran every prompt and reported its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED_MODES = {
    "bare aiohttp loop (first)",
    "plain httpx loop",
    "batchinfer engine alone, no Prefect",
    "batchinfer engine alone, http_client aiohttp",
    "a short Prefect script: 10 tasks, each an aiohttp loop",
    "`batchinfer run`, fresh data dir",
    "`batchinfer run`, the same again",
    "submitted to `serve` (submit -> completed)",
    "bare aiohttp loop (last)",
    "naive Prefect: a task per prompt",
}


@pytest.mark.e2e
def test_the_benchmark_runs_every_contestant_and_writes_its_results(
    tmp_path: Path, prefect_db_template: Path
) -> None:
    # Without (6), the local engines on SmolLM2: its conversions alone take minutes on 2 cores;
    # tests/engines/test_ctranslate2_engine.py holds that engine to the same answers instead.
    argv = ["--smoke", "--no-local-engines", "--prefect-db-template", str(prefect_db_template)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *argv, "--out", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    http = {r["mode"]: r for r in rows if r["benchmark"] == "http"}
    assert set(http) == EXPECTED_MODES
    for r in http.values():
        assert r["requests"] == 40 and r["requests_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["ratio_to_ceiling"] > 0 and 0 < r["first_request_s"] < r["wall_s"]
    assert [r["mode"] for r in rows if r["benchmark"] == "overhead"]
    memory = [r for r in rows if r["benchmark"] == "memory"]
    assert [r["requests"] for r in memory] == [40, 400] and memory[1]["rss_ratio_to_small"] > 0
    transformers = {r["mode"]: r for r in rows if r["benchmark"] == "transformers"}
    assert set(transformers) == {"plain generate", "batchinfer engine"}
    assert all(r["tokens_per_s"] > 0 for r in transformers.values())
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "ceiling" in result.stdout  # the printed table


def test_a_prefect_database_template_that_does_not_exist_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.run import main

    with pytest.raises(SystemExit) as exited:
        main(["--smoke", "--prefect-db-template", str(tmp_path / "missing.db"), "--out", str(tmp_path)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(
        f"--prefect-db-template {tmp_path / 'missing.db'}: no such file; give a migrated "
        "Prefect database (the test suite keeps one in .pytest_cache/d/prefect-db-templates/) "
        "or leave it out"
    )
    assert not (tmp_path / "results.json").exists()
