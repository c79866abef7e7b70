"""What a finished job tells the Prefect UI: a table of counts, timings, throughput and tokens, and
a markdown note saying where its outputs are. Pure: built from the job's progress and phase times;
``reporting.RunReporter.publish_summary`` turns them into artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from batchinfer.pipeline.jobfiles import JobLayout, JobProgress


@dataclass
class PhaseClock:
    """Seconds spent in each phase, in the order the job entered them."""

    clock: Any = monotonic
    seconds: dict[str, float] = field(default_factory=dict)
    _phase: str | None = None
    _since: float = 0.0

    def enter(self, phase: str) -> None:
        self.stop()
        self._phase, self._since = phase, self.clock()

    def stop(self) -> None:
        if self._phase is not None:
            self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + self.clock() - self._since
            self._phase = None


def _rate(amount: int, seconds: float) -> float:
    return round(amount / seconds, 1) if seconds > 0 else 0.0


def summary_rows(progress: JobProgress, seconds: dict[str, float], infer_phase: str) -> list[dict[str, Any]]:
    """Rows of ``{"metric", "value"}`` for the table artifact."""
    infer_s = seconds.get(infer_phase, 0.0)
    lines_done = progress.completed + progress.failed
    rows: list[tuple[str, Any]] = [
        ("lines", progress.total),
        ("succeeded", progress.completed),
        ("failed", progress.failed),
        ("blank lines skipped", progress.blank_lines),
        ("chunks", f"{progress.chunks_done} of {progress.chunks}"),
        *((f"{phase.lower()} s", round(s, 2)) for phase, s in seconds.items()),
        ("total s", round(sum(seconds.values()), 2)),
        ("lines/s (inference)", _rate(lines_done, infer_s)),
        ("prompt tokens", progress.prompt_tokens),
        ("completion tokens", progress.completion_tokens),
        ("completion tokens/s (inference)", _rate(progress.completion_tokens, infer_s)),
    ]
    return [{"metric": metric, "value": value} for metric, value in rows]


def outputs_markdown(
    job_id: str,
    model: str,
    layout: JobLayout,
    progress: JobProgress,
    first_rows: list[dict[str, Any]] | None = None,
) -> str:
    """Where the outputs are, what the job ended as, and the first rows of its results table."""
    lines = [f"# Job `{job_id}`", "", f"Model `{model}`."]
    if progress.error_code:
        lines += ["", f"**Ended `{progress.error_code}`**: {progress.error_message}"]
    if progress.outputs_ready:
        lines += [
            "",
            "| output | lines | path |",
            "|---|---|---|",
            f"| success | {progress.completed} | `{layout.success}` |",
            f"| errors | {progress.failed} | `{layout.errors}` |",
            f"| results table | {progress.completed + progress.failed} | `{layout.results}` |",
        ]
    else:
        lines += ["", "No output files were written (the job stopped before gathering)."]
    if first_rows:
        lines += ["", f"The first {len(first_rows)} rows of `results.parquet`:", "", *_table(first_rows)]
    lines += [
        "",
        f"Status over HTTP: `GET /batch_inference/job_status?job_id={job_id}`.",
    ]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as a markdown table; a ``|`` or a line break in a cell cannot break it."""
    columns = list(rows[0])

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
