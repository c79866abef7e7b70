"""End to end: deployments/prefect.yaml on a process work pool, as deployments/README.md tells an
operator to use it: create the pool, `prefect deploy`, start a worker, run a job.

A real Prefect server (its own SQLite database), real `prefect` commands, a real worker; only the
model is a double: a deterministic OpenAI-compatible server on 127.0.0.1 answering "echo: <prompt>".
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.served import read_jsonl, user_prompt, write_jsonl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
POOL = "batchinfer-process"
ON_DEMAND = "batch-inference/on-demand"
NIGHTLY = "batch-inference/nightly-example"
RUN_TIMEOUT_S = 180.0  # a loaded 2-core machine starts a flow-run process in 5-25 s


@dataclass
class Deployed:
    """A server with the pool, both deployments and one online worker; where the worker's jobs go."""

    server: PrefectServer
    jobs_dir: Path
    data_dir: Path


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAIServer, prefect_db_template: Path
) -> Iterator[Deployed]:
    home = tmp_path_factory.mktemp("deployments")
    data = home / "data"
    data.mkdir()
    models = data / "models.yaml"
    fake = {"id": "fake", "engine": "openai", "base_url": fake_openai.base_url, "model": "fake-model"}
    models.write_text(yaml.safe_dump({"models": [fake]}), encoding="utf-8")
    # No scheduler: the nightly schedule must not create runs for this test's worker, whatever the
    # clock says. The schedule itself is still stored and read back.
    server = PrefectServer(
        home=home,
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
        database_template=prefect_db_template,
    )
    with server:
        server.cli("work-pool", "create", POOL, "--type", "process")
        # The worker starts while `prefect deploy` runs: both spend seconds importing Prefect.
        server.spawn(
            "worker",
            *("worker", "start", "--pool", POOL, "--name", "test-worker"),
            PREFECT_WORKER_QUERY_SECONDS="1",  # the README's fast-pickup setting
            BATCHINFER_HOME=str(home / "batchinfer"),
            BATCHINFER_MODELS=str(models),
            BATCHINFER_ALLOWED_ROOTS=str(data),
            BATCHINFER_THREADS="1",
            HF_HUB_OFFLINE="1",
        )
        # `prefect deploy` fills `{{ $PWD }}` from its environment: a shell in the project root.
        server.cli(
            *("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)), cwd=ROOT, PWD=str(ROOT)
        )
        asyncio.run(_wait_for_online_worker(server))
        yield Deployed(server=server, jobs_dir=home / "batchinfer" / "jobs", data_dir=data)


async def _wait_for_online_worker(server: PrefectServer, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with server.client() as client:
        while time.monotonic() < deadline:
            workers = await client.read_workers_for_work_pool(POOL)
            if any(w.status is not None and w.status.value == "ONLINE" for w in workers):
                return
            await asyncio.sleep(0.25)
    raise AssertionError(f"no worker came online on {POOL} in {timeout_s:.0f} s: {server.log_tail()}")


async def _read_deployment(server: PrefectServer, name: str) -> Any:
    async with server.client() as client:
        return await client.read_deployment_by_name(name)


async def _wait_for_final_state(server: PrefectServer, flow_run_id: UUID) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    async with server.client() as client:
        while time.monotonic() < deadline:
            flow_run = await client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            await asyncio.sleep(0.25)
    raise AssertionError(f"flow run {flow_run_id} not final in {RUN_TIMEOUT_S:.0f} s: {server.log_tail()}")


async def _state_times(server: PrefectServer, flow_run_id: UUID) -> dict[str, float]:
    """When the run first entered each state type, in seconds after it was SCHEDULED."""
    async with server.client() as client:
        states = await client.read_flow_run_states(flow_run_id)
    first: dict[str, Any] = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp)
    return {kind: (at - first["SCHEDULED"]).total_seconds() for kind, at in first.items()}


def test_deploy_puts_both_deployments_on_the_process_pool_with_a_module_path_entrypoint(
    deployed: Deployed,
) -> None:
    for name in (ON_DEMAND, NIGHTLY):
        deployment = asyncio.run(_read_deployment(deployed.server, name))
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint == "batchinfer.flows.batch_job.batch_job"
        # The working directory is the project root that `prefect deploy` ran in.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]


def test_the_nightly_example_is_registered_with_its_cron_schedule_and_parameters(
    deployed: Deployed,
) -> None:
    deployment = asyncio.run(_read_deployment(deployed.server, NIGHTLY))

    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    assert schedule.active
    assert schedule.slug == "nightly"
    prompt_file = deployment.parameters["prompt_file"]
    assert prompt_file == {"type": "uri", "value": (ROOT / "examples" / "prompts.jsonl").as_uri()}
    assert Path(prompt_file["value"].removeprefix("file://")).is_file()
    assert deployment.parameters["model"] == "smollm2-135m"


def test_the_on_demand_deployment_has_no_schedule(deployed: Deployed) -> None:
    assert asyncio.run(_read_deployment(deployed.server, ON_DEMAND)).schedules == []


def test_a_worker_on_the_pool_runs_a_job_from_prefect_deployment_run_to_completion(
    deployed: Deployed, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [user_prompt(f"deployed question {i}") for i in range(7)]
    path = write_jsonl(deployed.data_dir / "deployed.jsonl", prompts)
    prompt_file = f'{{"type": "uri", "value": "{path.as_uri()}"}}'

    output = deployed.server.cli(
        *("deployment", "run", ON_DEMAND, "--param", "model=fake", "--param", f"prompt_file={prompt_file}")
    )

    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    flow_run_id = UUID(match[1])
    flow_run = asyncio.run(_wait_for_final_state(deployed.server, flow_run_id))
    assert flow_run.state.type.value == "COMPLETED", (flow_run.state, deployed.server.log_tail())
    success = read_jsonl(deployed.jobs_dir / str(flow_run_id) / "success.jsonl")
    assert [(r["line"], r["generations"][0]["text"]) for r in success] == [
        (i + 1, f"echo: {prompt[0]['text']}") for i, prompt in enumerate(prompts)
    ]
    assert read_jsonl(deployed.jobs_dir / str(flow_run_id) / "errors.jsonl") == []

    times = _state_times_or_fail(deployed.server, flow_run_id)
    with capsys.disabled():  # a figure for the README, not a pass/fail limit on a shared machine
        print(
            f"\n[deployments] worker pickup: SCHEDULED -> PENDING {times['PENDING']:.1f} s, "
            f"-> RUNNING {times['RUNNING']:.1f} s (flow-run process started), "
            f"-> COMPLETED {times['COMPLETED']:.1f} s"
        )


def _state_times_or_fail(server: PrefectServer, flow_run_id: UUID) -> dict[str, float]:
    times = asyncio.run(_state_times(server, flow_run_id))
    assert {"SCHEDULED", "PENDING", "RUNNING", "COMPLETED"} <= times.keys(), times
    assert 0 <= times["PENDING"] <= times["RUNNING"] <= times["COMPLETED"], times
    return times
