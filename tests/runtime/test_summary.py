"""The end-of-job summary the Prefect UI shows: phase times, the table's rows, the markdown."""

from __future__ import annotations

from pathlib import Path

from batchinfer.pipeline.jobfiles import JobLayout, JobProgress
from batchinfer.runtime.summary import PhaseClock, outputs_markdown, summary_rows


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_phase_clock_adds_up_the_time_spent_in_each_phase() -> None:
    clock = Clock()
    phases = PhaseClock(clock=clock)
    phases.enter("Validating")
    clock.now = 1.5
    phases.enter("Inferring")
    clock.now = 11.5
    phases.stop()
    phases.stop()  # a second stop adds nothing
    assert phases.seconds == {"Validating": 1.5, "Inferring": 10.0}


def test_the_table_has_counts_timings_throughput_and_tokens() -> None:
    progress = JobProgress(
        total=1000,
        completed=990,
        failed=10,
        chunks=10,
        chunks_done=10,
        prompt_tokens=5000,
        completion_tokens=20000,
    )
    rows = {
        r["metric"]: r["value"]
        for r in summary_rows(progress, {"Validating": 1.0, "Inferring": 4.0}, "Inferring")
    }
    assert rows["lines"] == 1000 and rows["succeeded"] == 990 and rows["failed"] == 10
    assert rows["chunks"] == "10 of 10"
    assert rows["validating s"] == 1.0 and rows["inferring s"] == 4.0 and rows["total s"] == 5.0
    assert rows["lines/s (inference)"] == 250.0
    assert rows["completion tokens/s (inference)"] == 5000.0
    assert rows["prompt tokens"] == 5000


def test_a_job_that_never_inferred_shows_zero_throughput_not_an_error() -> None:
    rows = {r["metric"]: r["value"] for r in summary_rows(JobProgress(), {"Validating": 0.2}, "Inferring")}
    assert rows["lines/s (inference)"] == 0.0


def test_the_markdown_names_both_output_files_and_how_the_job_ended(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "job")
    progress = JobProgress(
        completed=3, failed=1, outputs_ready=True, error_code="cancelled", error_message="Cancelled: …"
    )
    text = outputs_markdown("job-1", "llama", layout, progress)
    assert str(layout.success) in text and str(layout.errors) in text
    assert "`cancelled`" in text and "job_status?job_id=job-1" in text


def test_without_outputs_the_markdown_says_none_were_written(tmp_path: Path) -> None:
    text = outputs_markdown("job-1", "llama", JobLayout(tmp_path), JobProgress())
    assert "No output files" in text


def test_the_markdown_shows_the_first_rows_of_the_results_table_without_breaking_on_a_pipe(
    tmp_path: Path,
) -> None:
    layout = JobLayout(tmp_path / "job")
    rows = [
        {"line": 1, "status": "succeeded", "text": "a | b\nc"},
        {"line": 2, "status": "failed", "text": None},
    ]
    text = outputs_markdown("job-1", "llama", layout, JobProgress(outputs_ready=True), rows)
    assert str(layout.results) in text
    assert "| line | status | text |" in text
    assert "| 1 | succeeded | a \\| b c |" in text and "| 2 | failed |  |" in text
