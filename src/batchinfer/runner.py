"""The runner process of ``batchinfer serve``: registers the deployment and runs its flow runs.

Started as ``python -m batchinfer.runner``. Each flow run executes in a subprocess of this one.
"""

from __future__ import annotations

import os

from batchinfer.api.backend import DEPLOYMENT_NAME


def main() -> None:
    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    from batchinfer.flows.batch_job import batch_job

    deployment = batch_job.to_deployment(
        name=DEPLOYMENT_NAME,
        # The flow is found by module path, so any working directory (or a worker) can load it.
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["batchinfer"],
        description="Batch inference jobs submitted through the batchinfer adapter.",
    )
    serve(
        deployment,
        limit=int(os.environ.get("BATCHINFER_MAX_CONCURRENT_JOBS", "4")),
        # Prefect polls every 10 s by default; a job should start within a couple of seconds.
        # One cheap API query each half second is a fair price for that.
        query_seconds=float(os.environ.get("BATCHINFER_RUNNER_POLL_SECONDS", "0.5")),
    )


if __name__ == "__main__":
    main()
