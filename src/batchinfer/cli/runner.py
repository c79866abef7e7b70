"""The runner process of ``batchinfer serve``: registers the deployment and runs its flow runs.

Started as ``python -m batchinfer.cli.runner``. Each flow run executes in a process of its own.
The flow is given to the runner as the object (``add_flow``), so Prefect starts a run from it
directly rather than as ``python -m prefect.engine``, which would import the flow again; with
``fork_flow_runs`` that process is forked from one that has imported it already (``forked_runs``).
"""

from __future__ import annotations

import asyncio
import logging

from batchinfer.cli.forked_runs import flows_by_reference, fork_flow_runs
from batchinfer.control.names import DEPLOYMENT_NAME
from batchinfer.settings import Settings

logger = logging.getLogger(__name__)


def main() -> None:
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from batchinfer.flows.batch_job import batch_job

    settings = Settings()
    flows_by_reference()
    if settings.fork_flow_runs:
        fork_flow_runs()
    runner = Runner(
        name=DEPLOYMENT_NAME,
        limit=settings.max_concurrent_jobs,
        # Prefect polls every 10 s by default; a job should start within a couple of seconds.
        # One cheap API query each half second is a fair price for that.
        query_seconds=settings.runner_poll_seconds,
    )
    runner.add_flow(
        batch_job,
        name=DEPLOYMENT_NAME,
        # The flow is found by module path, so any working directory (or a worker) can load it.
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["batchinfer"],
        description="Batch inference jobs submitted through the batchinfer adapter.",
    )
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:  # serve stopping us: not an error
        logger.info("Runner stopping on %s", type(exc).__name__)


if __name__ == "__main__":
    main()
