"""Atomic outputs: a reader never sees half a success or error file, and a crash (an exception, or
SIGKILL) in the middle of writing one never leaves a file under the final name that looks complete."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchinfer.pipeline import gather as gather_module
from batchinfer.pipeline.gather import gather_outputs
from batchinfer.pipeline.jobfiles import JobLayout
from batchinfer.records import ErrorDetail, ErrorRecord, Generation, SuccessRecord, Usage, dump_record

LINES = 40


def _success(line: int, run: str) -> SuccessRecord:
    return SuccessRecord(
        line=line,
        generations=[Generation(role="assistant", text=f"{run} answer {line}")],
        usage=Usage(),
    )


@pytest.fixture
def layout(tmp_path: Path) -> JobLayout:
    """A job of LINES lines in two chunks; line 7 failed."""
    layout = JobLayout(tmp_path / "job")
    chunks = layout.work / "chunks"
    chunks.mkdir(parents=True)
    for index, lines in enumerate([range(1, 21), range(21, LINES + 1)]):
        records = [
            ErrorRecord(line=n, error=ErrorDetail(code="http_400", message="no"))
            if n == 7
            else _success(n, "new")
            for n in lines
        ]
        (chunks / f"result-{index:05d}-k.jsonl").write_text("".join(dump_record(r) + "\n" for r in records))
    return layout


def _results(layout: JobLayout) -> list[Path]:
    return sorted((layout.work / "chunks").glob("result-*.jsonl"))


@pytest.fixture(params=["no earlier outputs", "outputs of an earlier run"])
def earlier(request: pytest.FixtureRequest, layout: JobLayout) -> dict[Path, bytes | None]:
    """What a reader sees before this gather: nothing, or a complete pair from an earlier run (a
    resumed job gathers over its previous outputs)."""
    if request.param == "no earlier outputs":
        return {layout.success: None, layout.errors: None}
    layout.success.write_text(dump_record(_success(1, "old")) + "\n")
    layout.errors.write_text("")
    return {layout.success: layout.success.read_bytes(), layout.errors: b""}


def _reader_view(layout: JobLayout) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.exists() else None for p in (layout.success, layout.errors)}


def _instrumented(monkeypatch: pytest.MonkeyPatch, after_records: int, action: Callable[[], None]) -> None:
    """Run ``action()`` once gather has merged ``after_records`` records: mid-write."""
    real = gather_module.line_records
    seen = 0

    def records(path: Path) -> Iterator[tuple[int, str, bool]]:
        nonlocal seen
        for record in real(path):
            seen += 1
            if seen == after_records:
                action()
            yield record

    monkeypatch.setattr(gather_module, "line_records", records)


def test_a_reader_mid_gather_sees_the_earlier_files_whole_or_nothing(
    layout: JobLayout, earlier: dict[Path, bytes | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    views: list[dict[Path, bytes | None]] = []
    _instrumented(monkeypatch, LINES // 2, lambda: views.append(_reader_view(layout)))
    gather_outputs(layout, _results(layout), LINES)
    assert views == [earlier]
    success = [json.loads(line)["line"] for line in layout.success.read_text().splitlines()]
    assert len(success) == LINES - 1  # and afterwards: the new files, whole


def test_an_exception_mid_gather_leaves_the_earlier_files_or_none_and_no_temp_file(
    layout: JobLayout, earlier: dict[Path, bytes | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash() -> None:
        raise RuntimeError("disk on fire")

    _instrumented(monkeypatch, LINES // 2, crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        gather_outputs(layout, _results(layout), LINES)
    assert _reader_view(layout) == earlier
    assert [p.name for p in layout.root.iterdir() if p.name.endswith(".tmp")] == []


_KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from batchinfer.pipeline.jobfiles import atomic_write
with atomic_write(Path(sys.argv[1])) as out:
    out.write('{"line": 1}\\n' * 1000)
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_process_killed_mid_write_leaves_only_a_hidden_temp_file_never_the_final_name(
    tmp_path: Path,
) -> None:
    target = tmp_path / "success.jsonl"
    result = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(target)], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".success.jsonl.")
    assert leftovers[0].endswith(".tmp")
