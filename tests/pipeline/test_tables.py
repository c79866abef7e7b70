"""Tables in, tables out (``pipeline.tables``, ``pipeline.results_table``): a Parquet or CSV prompt
file is validated a row a line, its other columns are carried beside the answers, and every job,
JSONL too, gets ``results.parquet`` in input order. Run here through validation, the chunks (an
echo engine at the model boundary) and gather, as a job runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from batchinfer.engines.base import SamplingParams
from batchinfer.errors import PromptTableError
from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.pipeline.results_table import FLUSH_ROWS, RESULT_SCHEMA
from batchinfer.pipeline.tables import (
    PromptTemplate,
    TableFormat,
    check_prompt_source,
    table_format,
    template_fields,
)
from batchinfer.pipeline.validation import ValidationSummary, validate_prompt_file
from batchinfer.testing.engines import EchoEngine


def run_job(
    source: Path, layout: JobLayout, prompt: PromptTemplate | None = None, chunk_size: int = 7
) -> ValidationSummary:
    summary = validate_prompt_file(source, layout, SamplingParams(), chunk_size, prompt=prompt)
    engine = EchoEngine()
    results = [layout.chunk_result(c.index, summary.input_sha256[:16]) for c in summary.chunks]
    for chunk, result in zip(summary.chunks, results, strict=True):
        run_chunk(ChunkFiles(chunk.index, Path(chunk.input_path), result), engine)
    gather_outputs(layout, results, summary.lines, summary.file_error)
    return summary


def results(layout: JobLayout) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(layout.results).to_pylist()
    return rows


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    return JobLayout(tmp_path / "job")


def test_a_parquet_file_is_known_by_its_magic_whatever_its_name_and_a_csv_by_its_name(
    tmp_path: Path,
) -> None:
    pq.write_table(pa.table({"prompt": ["hi"]}), tmp_path / "prompts.jsonl")
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    (tmp_path / "p.jsonl").write_text('[{"role": "user", "text": "hi"}]\n')
    assert table_format(tmp_path / "prompts.jsonl") is TableFormat.parquet
    assert table_format(tmp_path / "p.csv") is TableFormat.csv
    assert table_format(tmp_path / "p.jsonl") is None
    # A staged remote file loses its name: the URI's tells.
    assert table_format(tmp_path / "p.jsonl", "s3://bucket/data/p.CSV?x=1") is TableFormat.csv


def test_a_parquet_table_gives_one_result_row_per_input_row_in_order_with_its_columns_carried(
    tmp_path: Path, layout: JobLayout
) -> None:
    n = 2 * FLUSH_ROWS + 5  # more than one row group, so the carried columns are stitched across
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int32()),
            "prompt": [f"question {i}" for i in range(n)],
            "label": [f"label-{i % 7}" for i in range(n)],
            "score": [i / 4 for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1000)
    summary = run_job(tmp_path / "in.parquet", layout, chunk_size=500)
    assert (summary.lines, summary.valid) == (n, n)
    written = pq.read_table(layout.results)
    assert written.schema.names == [*RESULT_SCHEMA.names, "id", "label", "score"]
    assert written.select(["id", "label", "score"]).equals(table.select(["id", "label", "score"]))
    assert written.column("line").to_pylist() == list(range(1, n + 1))
    assert written.column("text").to_pylist() == [f"echo: question {i}" for i in range(n)]
    assert set(written.column("status").to_pylist()) == {"succeeded"}


def test_a_messages_column_of_structs_with_a_null_row_fails_that_row_in_place(
    tmp_path: Path, layout: JobLayout
) -> None:
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    messages = pa.array(
        [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}],
            None,
            [{"role": "user", "content": "three"}],
            [],
        ],
        pa.list_(message),
    )
    pq.write_table(pa.table({"messages": messages, "custom_id": ["a", "b", "c", "d"]}), tmp_path / "m.pq")
    run_job(tmp_path / "m.pq", layout)
    rows = results(layout)
    assert [(r["line"], r["custom_id"], r["status"]) for r in rows] == [
        (1, "a", "succeeded"),
        (2, "b", "failed"),
        (3, "c", "succeeded"),
        (4, "d", "failed"),
    ]
    assert [r["text"] for r in rows] == ["echo: one", None, "echo: three", None]
    assert (rows[1]["error_code"], rows[3]["error_code"]) == ("missing_prompt", "empty_messages")
    # The same records as ever in the JSONL files, the line number being the row's.
    errors = [json.loads(line) for line in layout.errors.read_text().splitlines()]
    assert [(e["line"], e["custom_id"], e["error"]["code"]) for e in errors] == [
        (2, "b", "missing_prompt"),
        (4, "d", "empty_messages"),
    ]


def test_a_messages_column_of_json_strings_is_parsed_and_a_malformed_one_is_its_row_error(
    tmp_path: Path, layout: JobLayout
) -> None:
    pq.write_table(
        pa.table({"messages": [json.dumps([{"role": "user", "content": "hi"}]), "not json"]}),
        tmp_path / "m.parquet",
    )
    run_job(tmp_path / "m.parquet", layout)
    rows = results(layout)
    assert [(r["status"], r["text"], r["error_code"]) for r in rows] == [
        ("succeeded", "echo: hi", None),
        ("failed", None, "invalid_prompt"),
    ]


def test_a_csv_file_is_read_as_a_table_with_its_columns_carried_and_typed(
    tmp_path: Path, layout: JobLayout
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt,n,city\nfirst,1,Paris\n,2,Oslo\nthird,3,Rome\n")
    run_job(source, layout)
    rows = results(layout)
    assert [(r["line"], r["status"], r["text"], r["n"], r["city"]) for r in rows] == [
        (1, "succeeded", "echo: first", 1, "Paris"),
        (2, "failed", None, 2, "Oslo"),  # an empty CSV field is a null prompt
        (3, "succeeded", "echo: third", 3, "Rome"),
    ]
    assert pq.read_schema(layout.results).field("n").type == pa.int64()


def test_a_template_builds_each_prompt_from_its_row_with_a_system_prompt_first(
    tmp_path: Path, layout: JobLayout
) -> None:
    pq.write_table(
        pa.table({"title": ["Cats", "Dogs", None], "abstract": ["purr", "bark", "x"]}), tmp_path / "t.parquet"
    )
    prompt = PromptTemplate(template="Summarise {title}: {abstract}", system_prompt="Be brief.")
    run_job(tmp_path / "t.parquet", layout, prompt)
    rows = results(layout)
    assert [r["text"] for r in rows] == ["echo: Summarise Cats: purr", "echo: Summarise Dogs: bark", None]
    assert rows[2]["error_code"] == "missing_prompt" and "'title'" in rows[2]["error_message"]
    # With a template, every column but custom_id is carried: it is the row's data.
    assert [(r["title"], r["abstract"]) for r in rows][:2] == [("Cats", "purr"), ("Dogs", "bark")]
    chunk = (layout.work / "chunks" / "input-00000.jsonl").read_text().splitlines()[0]
    assert [m["role"] for m in json.loads(chunk)["messages"]] == ["system", "user"]


def test_a_carried_column_named_like_a_result_column_is_renamed_input_name(
    tmp_path: Path, layout: JobLayout
) -> None:
    pq.write_table(pa.table({"prompt": ["a"], "text": ["the source text"]}), tmp_path / "t.parquet")
    run_job(tmp_path / "t.parquet", layout)
    (row,) = results(layout)
    assert (row["text"], row["input_text"]) == ("echo: a", "the source text")


def test_a_table_with_neither_a_messages_nor_a_prompt_column_fails_naming_both(
    tmp_path: Path, layout: JobLayout
) -> None:
    pq.write_table(pa.table({"question": ["a"], "n": [1]}), tmp_path / "t.parquet")
    summary = run_job(tmp_path / "t.parquet", layout)
    assert summary.file_error is not None and summary.file_error.code == "no_prompt_column"
    assert all(word in summary.file_error.message for word in ("'messages'", "'prompt'", "question, n"))
    assert results(layout) == []


def test_a_jsonl_job_has_a_results_table_too(tmp_path: Path, layout: JobLayout) -> None:
    source = tmp_path / "p.jsonl"
    named = {"custom_id": "x", "messages": [{"role": "user", "text": "two"}]}
    source.write_text(f'[{{"role": "user", "text": "one"}}]\n\nnot json\n{json.dumps(named)}\n')
    run_job(source, layout)
    rows = results(layout)
    assert [(r["line"], r["custom_id"], r["status"], r["text"], r["error_code"]) for r in rows] == [
        (1, None, "succeeded", "echo: one", None),
        (3, None, "failed", None, "invalid_json"),
        (4, "x", "succeeded", "echo: two", None),
    ]
    assert rows[0]["generations"] == ["echo: one"] and rows[0]["prompt_tokens"] == 3
    assert pq.read_schema(layout.results).names == RESULT_SCHEMA.names


def test_a_later_jsonl_run_in_the_same_directory_carries_no_columns_of_an_earlier_table(
    tmp_path: Path, layout: JobLayout
) -> None:
    pq.write_table(pa.table({"prompt": ["a", "b"], "n": [1, 2]}), tmp_path / "t.parquet")
    run_job(tmp_path / "t.parquet", layout)
    source = tmp_path / "p.jsonl"
    source.write_text('[{"role": "user", "text": "one"}]\n')
    run_job(source, layout)
    assert [r["text"] for r in results(layout)] == ["echo: one"]


def test_a_template_naming_a_column_the_table_lacks_is_refused_at_submit_naming_the_columns(
    tmp_path: Path,
) -> None:
    pa_csv.write_csv(pa.table({"title": ["a"], "body": ["b"]}), tmp_path / "t.csv")
    with pytest.raises(PromptTableError) as refused:
        check_prompt_source(tmp_path / "t.csv", None, PromptTemplate(template="{title}: {abstract}"))
    assert refused.value.code == "unknown_template_field" and refused.value.field == "prompt_template"
    assert "{abstract}" in refused.value.message and "title, body" in refused.value.message
    check_prompt_source(tmp_path / "t.csv", None, PromptTemplate(template="{title}: {body}"))


def test_a_template_for_a_jsonl_file_is_refused(tmp_path: Path, layout: JobLayout) -> None:
    source = tmp_path / "p.jsonl"
    source.write_text('[{"role": "user", "text": "one"}]\n')
    with pytest.raises(PromptTableError) as refused:
        check_prompt_source(source, None, PromptTemplate(system_prompt="Be brief."))
    assert refused.value.code == "template_needs_table"
    summary = run_job(source, layout, PromptTemplate(template="{x}"))  # a remote file, at run time
    assert summary.file_error is not None and summary.file_error.code == "template_needs_table"


@pytest.mark.parametrize("template", ["{}", "{0}", "{a.__class__}", "{a[0]}", "{a:{b}}", "unclosed {"])
def test_a_template_names_columns_only(template: str) -> None:
    with pytest.raises(PromptTableError) as refused:
        template_fields(template)
    assert refused.value.field == "prompt_template"


def test_template_fields_are_the_named_fields_once_each() -> None:
    assert template_fields("{a} and {b!r} and {a:>5} {{literal}}") == ["a", "b"]


def test_a_corrupt_parquet_file_fails_the_job_as_an_invalid_table(tmp_path: Path, layout: JobLayout) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    summary = run_job(tmp_path / "bad.parquet", layout)
    assert summary.file_error is not None and summary.file_error.code == "invalid_table"
