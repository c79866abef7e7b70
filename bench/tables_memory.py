"""Peak memory of a job on a big Parquet prompt file: validation, every chunk, gather.

    python bench/tables_memory.py [--rows 1000000] [--chunk-size 100]

A child process writes the table first (a ``prompt`` column and int, string and float columns,
written a batch at a time), so that making the data costs this process nothing. This process then
runs the job's pure pipeline on it as the flow's tasks do: ``validate_prompt_file`` (rows to chunk
files and carried columns), ``run_chunk`` for every chunk, ``gather_outputs`` (success, errors and
``results.parquet``). The model boundary is stubbed (``testing.engines.EchoEngine``): a million
requests to a model server over HTTP would measure the server, not us. Prefect is not involved;
its tasks only call these functions. Prints the time of each phase and this process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 500


def write_table(path: Path, rows: int, batch: int = 50_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("prompt", pa.string()), ("id", pa.int64()), ("tag", pa.string()), ("x", pa.float64())]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch):
            ids = range(start, min(start + batch, rows))
            columns = {
                "prompt": [f"Question number {i}: what comes after {i}?" for i in ids],
                "id": list(ids),
                "tag": [f"tag-{i % 97}" for i in ids],
                "x": [i / 7 for i in ids],
            }
            writer.write_table(pa.table(columns, schema=schema))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_pipeline(source: Path, job_dir: Path, chunk_size: int) -> dict[str, float]:
    from batchinfer.engines.base import SamplingParams
    from batchinfer.pipeline.chunk_run import ChunkFiles, run_chunk
    from batchinfer.pipeline.gather import gather_outputs
    from batchinfer.pipeline.jobfiles import JobLayout
    from batchinfer.pipeline.validation import validate_prompt_file
    from batchinfer.testing.engines import EchoEngine

    layout, seconds = JobLayout(job_dir), {}
    started = time.perf_counter()
    summary = validate_prompt_file(source, layout, SamplingParams(max_tokens=16), chunk_size)
    seconds["validate"] = time.perf_counter() - started
    engine, results = EchoEngine(), [layout.chunk_result(c.index, "bench") for c in summary.chunks]
    started = time.perf_counter()
    for chunk, result in zip(summary.chunks, results, strict=True):
        run_chunk(ChunkFiles(chunk.index, Path(chunk.input_path), result), engine)
    seconds["chunks"] = time.perf_counter() - started
    started = time.perf_counter()
    counts = gather_outputs(layout, results, summary.lines, summary.file_error)
    seconds["gather"] = time.perf_counter() - started
    assert counts.succeeded == summary.lines, counts
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100, help="As BATCHINFER_CHUNK_SIZE (default 100).")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args(argv)
    if args.write is not None:
        write_table(args.write, args.rows)
        return 0
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "prompts.parquet"
        subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--write", str(source)], check=True
        )
        import batchinfer.pipeline.gather
        import batchinfer.pipeline.validation
        import batchinfer.testing.engines  # noqa: F401  (what the imports cost, apart)

        before = peak_rss_mb()
        seconds = run_pipeline(source, Path(tmp) / "job", args.chunk_size)
        results = Path(tmp) / "job" / "results.parquet"
        rows = pq.ParquetFile(results).metadata.num_rows
        peak = peak_rss_mb()
        print(f"rows: {args.rows:,} in, {rows:,} in results.parquet ({results.stat().st_size / 1e6:.0f} MB)")
        print(f"input: {source.stat().st_size / 1e6:.0f} MB Parquet")
        print("seconds: " + ", ".join(f"{phase} {s:.1f}" for phase, s in seconds.items()))
        print(f"peak RSS: {peak:.0f} MB (after imports: {before:.0f} MB); target < {TARGET_MB} MB")
    return 0 if peak < TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
