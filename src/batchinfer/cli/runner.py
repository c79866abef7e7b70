"""The runner process of ``batchinfer serve``: registers the deployment and runs its flow runs.

Started as ``python -m batchinfer.cli.runner``; each flow run executes in a process of its own.
By default only Prefect's public API: the flow is registered as a deployment whose entrypoint is its
module path (``Flow.to_deployment``, ``Runner.add_deployment``), and Prefect starts each run as
``python -m prefect.engine``, which imports the flow by that path. With ``fork_flow_runs`` the runner
is handed the flow object (``add_flow``) and its runs' processes come from the fork server
(``forked_runs``), which has imported everything already.

It imports Prefect and the flow as soon as it starts, while ``serve``'s Prefect server may still be
starting, and waits for a line on stdin before it takes any job: ``serve`` sends it once the server
answers and the jobs a previous ``serve`` left running are marked.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from batchinfer.control.names import DEPLOYMENT_NAME
from batchinfer.settings import Settings

logger = logging.getLogger(__name__)
DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "name": DEPLOYMENT_NAME,
    "tags": ["batchinfer"],
    "description": "Batch inference jobs submitted through the batchinfer adapter.",
}


def main() -> None:
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from batchinfer.cli.forked_runs import start_fork_server
    from batchinfer.flows.batch_job import batch_job

    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="batchinfer-runner-") as scratch:
        if settings.server.fork_flow_runs:  # now, so that its imports too overlap the server's start
            start_fork_server(Path(scratch))
        if not sys.stdin.readline():  # serve's go-ahead; EOF: serve has gone
            return
        # Prefect polls every 10 s by default; a job should start within a couple of seconds.
        # One cheap API query each half second is a fair price for that.
        runner = Runner(
            name=DEPLOYMENT_NAME,
            limit=settings.server.max_concurrent_jobs,
            query_seconds=settings.server.runner_poll_seconds,
        )
        # The flow is found by module path, so any working directory (or a worker) can load it.
        if settings.server.fork_flow_runs:
            runner.add_flow(batch_job, entrypoint_type=EntrypointType.MODULE_PATH, **DEPLOYMENT_OPTIONS)
        else:
            deployment = batch_job.to_deployment(
                entrypoint_type=EntrypointType.MODULE_PATH, **DEPLOYMENT_OPTIONS
            )
            runner.add_deployment(deployment)
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal) as exc:  # serve stopping us: not an error
            logger.info("Runner stopping on %s", type(exc).__name__)


if __name__ == "__main__":
    main()
