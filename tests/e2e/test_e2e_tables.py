"""End to end, tables in and tables out: Parquet and CSV prompt files submitted to `batchinfer serve`
(real Prefect server, runner, adapter; the model a deterministic server answering "echo: <prompt>"),
read back as ``results.parquet`` and through the Python client's ``read_results`` and
``submit_dataframe``."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchinfer import read_results, submit_dataframe
from batchinfer.testing.served import ServeProcess, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e

RESULT_COLUMNS = [
    "line",
    "custom_id",
    "status",
    "text",
    "generations",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
]


def _submit(served: ServeProcess, path: dict[str, str], **extra: object) -> dict:
    body = {"model": "fake", "prompt_file_path": path, "options": {"max_tokens": 64}, **extra}
    return served.wait(served.submit_ok(body)["job_id"])


def _results(job: dict) -> pa.Table:
    assert job["status"] == "completed", job
    return pq.read_table(job["metadata"]["results_file_path"]["value"])


def test_a_2000_row_parquet_job_gives_2000_result_rows_in_order_each_answering_its_own_prompt(
    served: ServeProcess, data_dir: Path
) -> None:
    n = 2000
    table = pa.table(
        {
            "prompt": [f"parquet question {i}" for i in range(n)],
            "id": pa.array(range(n), pa.int64()),
            "name": [f"name-{i}" for i in range(n)],
            "score": [i * 0.5 for i in range(n)],
        }
    )
    pq.write_table(table, data_dir / "questions.parquet", row_group_size=300)
    job = _submit(served, {"type": "filepath", "value": str(data_dir / "questions.parquet")})
    results = _results(job)
    assert results.num_rows == n
    assert results.schema.names == [*RESULT_COLUMNS, "id", "name", "score"]
    assert results.column("line").to_pylist() == list(range(1, n + 1))
    assert results.select(["id", "name", "score"]).equals(table.select(["id", "name", "score"]))
    assert results.column("text").to_pylist() == [f"echo: parquet question {i}" for i in range(n)]
    assert set(results.column("status").to_pylist()) == {"succeeded"}
    assert job["metadata"]["request_counts"] == {"total": n, "completed": n, "failed": 0}
    assert job["metadata"]["results_file_path"]["type"] == "filepath"


def test_a_messages_column_with_a_null_row_fails_that_row_in_place_and_the_rest_succeed(
    served: ServeProcess, data_dir: Path
) -> None:
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    rows = [[{"role": "user", "content": f"struct question {i}"}] for i in range(5)]
    rows[2] = None  # type: ignore[call-overload]
    table = pa.table({"messages": pa.array(rows, pa.list_(message)), "tag": list("abcde")})
    pq.write_table(table, data_dir / "messages.parquet")
    results = _results(_submit(served, {"type": "filepath", "value": str(data_dir / "messages.parquet")}))
    got = results.select(["line", "status", "text", "error_code", "tag"]).to_pylist()
    assert [(r["line"], r["status"], r["error_code"], r["tag"]) for r in got] == [
        (1, "succeeded", None, "a"),
        (2, "succeeded", None, "b"),
        (3, "failed", "missing_prompt", "c"),
        (4, "succeeded", None, "d"),
        (5, "succeeded", None, "e"),
    ]
    assert [r["text"] for r in got if r["status"] == "succeeded"] == [
        f"echo: struct question {i}" for i in (0, 1, 3, 4)
    ]


def test_a_csv_file_with_a_template_works_and_its_columns_come_back(
    served: ServeProcess, data_dir: Path
) -> None:
    source = data_dir / "papers.csv"
    source.write_text("title,abstract,year\nCats,They purr,2001\nDogs,They bark,2002\n")
    job = _submit(
        served,
        {"type": "filepath", "value": str(source)},
        prompt_template="Summarise {title} in one line: {abstract}",
        system_prompt="Be brief.",
    )
    rows = _results(job).to_pylist()
    assert [(r["text"], r["title"], r["year"]) for r in rows] == [
        ("echo: Summarise Cats in one line: They purr", "Cats", 2001),
        ("echo: Summarise Dogs in one line: They bark", "Dogs", 2002),
    ]
    assert job["metadata"]["prompt_template"] == "Summarise {title} in one line: {abstract}"


def test_a_parquet_file_sent_as_raw_bytes_works(served: ServeProcess) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["raw one", "raw two"], "k": [1, 2]}), buffer)
    value = base64.b64encode(buffer.getvalue()).decode()
    job = _submit(served, {"type": "raw_bytes", "value": value})
    assert job["input_file_path"]["value"].endswith(".parquet")
    assert _results(job).select(["text", "k"]).to_pylist() == [
        {"text": "echo: raw one", "k": 1},
        {"text": "echo: raw two", "k": 2},
    ]


def test_a_jsonl_job_has_a_results_table_too(served: ServeProcess, data_dir: Path) -> None:
    path = write_jsonl(data_dir / "plain.jsonl", [user_prompt("jsonl one"), user_prompt("jsonl two")])
    results = _results(_submit(served, {"type": "filepath", "value": str(path)}))
    assert results.schema.names == RESULT_COLUMNS
    assert results.column("text").to_pylist() == ["echo: jsonl one", "echo: jsonl two"]


def test_a_template_naming_a_missing_column_is_a_4xx_naming_it_and_the_columns(
    served: ServeProcess, data_dir: Path
) -> None:
    pq.write_table(pa.table({"title": ["a"], "body": ["b"]}), data_dir / "cols.parquet")
    response = served.submit(
        {
            "model": "fake",
            "prompt_file_path": {"type": "filepath", "value": str(data_dir / "cols.parquet")},
            "prompt_template": "{title}: {abstract}",
        }
    )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "prompt_template"] and detail["type"] == "unknown_template_field"
    assert "{abstract}" in detail["msg"] and "title, body" in detail["msg"]


def test_read_results_returns_the_rows_of_the_file_and_submit_dataframe_round_trips(
    served: ServeProcess,
) -> None:
    frame = pd.DataFrame(
        {
            "prompt": [f"frame question {i}" for i in range(30)],
            "n": range(30),
            "f": [i / 3 for i in range(30)],
        }
    )
    job = submit_dataframe("fake", frame, options={"max_tokens": 64}, base_url=served.url)
    done = served.wait(job.job_id)
    got = read_results(job.job_id, base_url=served.url)
    assert got.equals(pd.read_parquet(done["metadata"]["results_file_path"]["value"]))
    assert got["text"].tolist() == [f"echo: {p}" for p in frame["prompt"]]
    pd.testing.assert_frame_equal(got[["n", "f"]], frame[["n", "f"]])
