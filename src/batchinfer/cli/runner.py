"""The runner process of ``batchinfer serve``: registers the deployment and runs its flow runs.

Started as ``python -m batchinfer.cli.runner``. Each flow run executes in a subprocess of this one.
"""

from __future__ import annotations

from batchinfer.control.names import DEPLOYMENT_NAME
from batchinfer.settings import Settings


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
    settings = Settings()
    serve(
        deployment,
        limit=settings.max_concurrent_jobs,
        # Prefect polls every 10 s by default; a job should start within a couple of seconds.
        # One cheap API query each half second is a fair price for that.
        query_seconds=settings.runner_poll_seconds,
    )


if __name__ == "__main__":
    main()
