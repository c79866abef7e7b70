"""``serve`` handing its jobs to a Prefect work pool (``BATCHINFER_WORK_POOL``) instead of running
them with a runner of its own: the batch job's deployment is bound to the pool, and whichever of
the pool's workers polls first runs each job, on any machine that reaches the Prefect API.

The deployment's entrypoint is the flow's module path, so a worker needs batchinfer installed (and
the models file, and access to the prompt files and the job's store), not a copy of any folder. The
adapter then needs nothing from those machines but the Prefect API and the store that
``BATCHINFER_OUTPUT_URL`` names: it reads every job's files there.
"""

from __future__ import annotations

from typing import Any

from batchinfer.control.names import DEPLOYMENT_NAME

PROCESS_POOL = "process"


def deploy_to_work_pool(pool: str, options: dict[str, Any]) -> None:
    """The batch job's deployment (``options``: its name, tags, description), bound to ``pool``; a
    process pool of that name is made first if there is none."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    from batchinfer.flows.batch_job import batch_job

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type=PROCESS_POOL))
    deployment = batch_job.to_deployment(
        entrypoint_type=EntrypointType.MODULE_PATH, work_pool_name=pool, **options
    )
    deployment.apply()


def worker_command(pool: str) -> str:
    """What to run on each machine that is to take the pool's jobs."""
    return (
        f"PREFECT_API_URL=<this server's Prefect API> PREFECT_WORKER_QUERY_SECONDS=1 "
        f"prefect worker start --pool {pool}   (deployment {DEPLOYMENT_NAME!r})"
    )
