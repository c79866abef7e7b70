"""batchinfer from Python: the client (sync and async) against `batchinfer serve`, and the flow itself.

    python examples/programmatic.py [PROMPT_FILE ...] [--model ID] [--part client|async|flow|all]

The client parts need a running `batchinfer serve`, found at BATCHINFER_URL (default
http://127.0.0.1:8000; BATCHINFER_API_TOKEN if it wants one). The flow part needs no server of ours:
it runs the job in this process, recorded on the Prefect server at PREFECT_API_URL, or on a temporary
one that Prefect starts (~15 s); it reads BATCHINFER_MODELS and BATCHINFER_HOME like `serve` does.

Each part imports what it uses, so that each README snippet stands alone, and so that the client
parts never load Prefect.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib

DEFAULT_PROMPTS = str(pathlib.Path(__file__).with_name("prompts.jsonl"))
DEFAULT_MODEL = "smollm2-135m"  # the embedded default model


# [readme:answers]
def print_answers(success_file: str) -> None:
    """Print each answer next to its input line number.

    `success_file_path` is a path on the server's disk. Reading it here works because this script
    and `batchinfer serve` run on the same machine; elsewhere, share BATCHINFER_HOME's disk.
    """
    import json

    with open(success_file, encoding="utf-8") as records:
        for raw in records:
            record = json.loads(raw)
            print(f"line {record['line']}: {record['generations'][0]['text']}")


# [/readme:answers]


# [readme:submit]
def submit_and_wait(model: str, prompt_file: str) -> None:
    """Submit a job to `batchinfer serve`, wait until it ends, print its answers."""
    from batchinfer import job_status, submit_job, wait_for_job

    # prompt_file: a local path, a URI ("s3://...", "https://..."), or the JSONL content as bytes.
    job = submit_job(model, prompt_file, options={"max_tokens": 48, "temperature": 0})
    print(f"submitted job {job.job_id}: {job_status(job.job_id).status.value}")

    job = wait_for_job(job.job_id, timeout_s=600, poll_s=0.5)
    print(f"job {job.job_id} {job.status.value}: {job.metadata['request_counts']}")
    if job.success_file_path is not None:
        print_answers(job.success_file_path.value)


# [/readme:submit]


# [readme:async]
async def submit_and_wait_async(model: str, prompt_files: list[str]) -> None:
    """The same with the async client: every file a job, submitted and awaited concurrently."""
    import asyncio

    from batchinfer import AsyncBatchInferClient
    from batchinfer.contract import Options

    options = Options(max_tokens=48, temperature=0)
    async with AsyncBatchInferClient() as client:  # one connection pool for every call
        jobs = await asyncio.gather(
            *(client.submit_job(model, path, options=options) for path in prompt_files)
        )
        done = await asyncio.gather(
            *(client.wait_for_job(job.job_id, timeout_s=600, poll_s=0.5) for job in jobs)
        )
    for job in done:
        print(f"job {job.job_id} {job.status.value}: {job.metadata['request_counts']}")
        if job.success_file_path is not None:
            print_answers(job.success_file_path.value)


# [/readme:async]


# [readme:flow]
def run_flow_in_process(model: str, prompt_file: str) -> None:
    """Run the job's Prefect flow right here, called with Python objects."""
    import os

    from batchinfer.contract import Options, Path
    from batchinfer.flows.batch_job import batch_job

    result = batch_job(
        model=model,
        prompt_file=Path(type="filepath", value=os.path.abspath(prompt_file)),
        options=Options(max_tokens=48, temperature=0),
    )
    # The flow returns where it wrote the outputs, and its counts; it raises if the job failed.
    print(f"flow run completed: {result['request_counts']}")
    print_answers(os.path.join(result["job_dir"], "success.jsonl"))


# [/readme:flow]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("prompt_files", nargs="*", default=[DEFAULT_PROMPTS], metavar="PROMPT_FILE")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a model id (default {DEFAULT_MODEL})")
    parser.add_argument("--part", choices=["client", "async", "flow", "all"], default="all")
    args = parser.parse_args(argv)
    first = args.prompt_files[0]
    if args.part in {"client", "all"}:
        print("== client")
        submit_and_wait(args.model, first)
    if args.part in {"async", "all"}:
        print("== async client")
        asyncio.run(submit_and_wait_async(args.model, args.prompt_files))
    if args.part in {"flow", "all"}:
        print("== flow in process")
        run_flow_in_process(args.model, first)


if __name__ == "__main__":
    main()
