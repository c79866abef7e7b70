"""Job notifications: a webhook that Prefect calls, through an automation, when a job ends.

End to end against a real Prefect server (whose trigger and action services run the automation),
real jobs of the batch flow, and a loopback HTTP receiver standing in for the user's endpoint.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchinfer.control.notifications import (
    PAYLOAD_TEMPLATE,
    aensure_job_webhook,
    aremove_job_webhook,
    ensure_job_webhook,
    remove_job_webhook,
)
from batchinfer.testing.fake_openai import FakeOpenAIServer
from batchinfer.testing.prefect_server import PrefectServer
from batchinfer.testing.served import user_prompt, write_jsonl
from batchinfer.testing.webhooks import Receiver, webhook_receiver

NOTIFY_TIMEOUT_S = 60.0
SECRET_HEADER = {"Authorization": "Bearer webhook-token"}

# Runs each prompt file given as an argument as a job, one after the other, in one process (one
# interpreter start), and prints each job's id and final state type.
RUN_JOBS = """
import json, sys
from batchinfer.contract import Path
from batchinfer.flows.batch_job import batch_job
for value in sys.argv[1:]:
    state = batch_job(model="fake", prompt_file=Path(type="filepath", value=value), return_state=True)
    print(json.dumps({"id": str(state.state_details.flow_run_id), "type": state.type.value}), flush=True)
"""


@dataclass
class FinishedJobs:
    completed: str
    failed: str


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notifications")


@pytest.fixture(scope="module")
def prefect_server(home: Path, prefect_db_template: Path) -> Iterator[PrefectServer]:
    with PrefectServer(home=home / "server", database_template=prefect_db_template) as server:
        yield server


@pytest.fixture(scope="module")
def finished_jobs(
    home: Path, prefect_server: PrefectServer, receiver: Receiver, fake_openai: FakeOpenAIServer
) -> FinishedJobs:
    """The webhook set up, then two jobs run to their end: one completes, one fails."""
    asyncio.run(_ensure(prefect_server, receiver.url + "/jobs", headers=SECRET_HEADER))
    data = home / "data"
    data.mkdir()
    models = data / "models.yaml"
    fake = {"id": "fake", "engine": "openai", "base_url": fake_openai.base_url, "model": "fake-model"}
    models.write_text(yaml.safe_dump({"models": [fake]}), encoding="utf-8")
    good = write_jsonl(data / "good.jsonl", [user_prompt(f"notify {i}") for i in range(3)])
    missing = data / "missing.jsonl"  # never written: that job fails

    env = prefect_server.env(
        BATCHINFER_HOME=str(home / "batchinfer"),
        BATCHINFER_MODELS=str(models),
        BATCHINFER_ALLOWED_ROOTS=str(data),
        BATCHINFER_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN_JOBS, str(good), str(missing)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["type"] for r in results] == ["COMPLETED", "FAILED"], done.stdout + done.stderr
    jobs = FinishedJobs(completed=results[0]["id"], failed=results[1]["id"])
    receiver.wait_for_jobs([jobs.completed, jobs.failed], NOTIFY_TIMEOUT_S)
    return jobs


async def _ensure(server: PrefectServer, url: str, **kwargs: Any) -> uuid.UUID:
    async with server.client() as client:
        return await aensure_job_webhook(url, client=client, **kwargs)


async def _remove(server: PrefectServer, name: str) -> None:
    async with server.client() as client:
        await aremove_job_webhook(name, client=client)


async def _automations_named(server: PrefectServer, name: str) -> list[Any]:
    async with server.client() as client:
        return await client.read_automations_by_name(name)


async def _webhook_url(server: PrefectServer, name: str) -> str:
    async with server.client() as client:
        document = await client.read_block_document_by_name(name, block_type_slug="webhook")
    return str(document.data["url"])


async def _flow_run_name(server: PrefectServer, flow_run_id: str) -> str:
    async with server.client() as client:
        return (await client.read_flow_run(uuid.UUID(flow_run_id))).name


@pytest.mark.e2e
def test_a_completed_job_posts_its_id_state_and_name_to_the_webhook(
    finished_jobs: FinishedJobs, receiver: Receiver, prefect_server: PrefectServer
) -> None:
    [post] = receiver.for_job(finished_jobs.completed)

    assert post.body["status"] == "completed"
    assert post.body["state"]["type"] == "COMPLETED"
    assert post.body["state"]["name"] == "Completed"
    expected_name = asyncio.run(_flow_run_name(prefect_server, finished_jobs.completed))
    assert post.body["flow_run_name"] == expected_name
    uuid.UUID(post.body["event_id"])
    datetime.datetime.fromisoformat(post.body["occurred"])


@pytest.mark.e2e
def test_the_webhook_is_called_with_json_and_the_headers_it_was_given(
    finished_jobs: FinishedJobs, receiver: Receiver
) -> None:
    [post] = receiver.for_job(finished_jobs.completed)

    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Authorization"] == SECRET_HEADER["Authorization"]


@pytest.mark.e2e
def test_a_failed_job_notifies_too_with_the_reason_it_failed(
    finished_jobs: FinishedJobs, receiver: Receiver
) -> None:
    [post] = receiver.for_job(finished_jobs.failed)

    assert post.body["status"] == "failed"
    assert post.body["state"]["type"] == "FAILED"
    assert "missing.jsonl" in post.body["state"]["message"]


@pytest.mark.e2e
def test_each_job_is_notified_once_not_once_per_state_change(
    finished_jobs: FinishedJobs, receiver: Receiver
) -> None:
    # Every state change of both jobs (Pending, Running, Validating, ...) had been recorded before
    # the last of these calls went out; only the terminal ones were posted.
    job_posts = [p for p in receiver.posts if p.path == "/jobs"]
    assert sorted(p.body["job_id"] for p in job_posts) == sorted(
        [finished_jobs.completed, finished_jobs.failed]
    )


@pytest.mark.e2e
def test_ensuring_the_webhook_twice_leaves_one_automation_calling_the_latest_url(
    prefect_server: PrefectServer, receiver: Receiver
) -> None:
    name = "batchinfer-test-idempotent"
    first = asyncio.run(_ensure(prefect_server, receiver.url + "/old", name=name))
    second = asyncio.run(_ensure(prefect_server, receiver.url + "/new", name=name))
    try:
        assert second == first
        [automation] = asyncio.run(_automations_named(prefect_server, name))
        assert automation.id == first
        assert asyncio.run(_webhook_url(prefect_server, name)) == receiver.url + "/new"
    finally:
        asyncio.run(_remove(prefect_server, name))


@pytest.mark.e2e
def test_the_sync_functions_use_prefect_api_url_and_remove_deletes_the_automation_and_block(
    prefect_server: PrefectServer, receiver: Receiver
) -> None:
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = "batchinfer-test-remove"
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        automation_id = ensure_job_webhook(receiver.url + "/removed", name=name)
        assert [a.id for a in asyncio.run(_automations_named(prefect_server, name))] == [automation_id]

        assert remove_job_webhook(name) is True

        assert asyncio.run(_automations_named(prefect_server, name)) == []
        with pytest.raises(ObjectNotFound):
            asyncio.run(_webhook_url(prefect_server, name))
        assert remove_job_webhook(name) is False


def test_the_payload_template_renders_valid_json_for_names_and_messages_with_quotes() -> None:
    from prefect.server.schemas.responses import FlowRunResponse
    from prefect.server.schemas.states import State, StateType
    from prefect.server.utilities.user_templates import render_user_template_sync

    flow_run = FlowRunResponse(
        id=uuid.uuid4(),
        flow_id=uuid.uuid4(),
        name='fake · "odd" <name>.jsonl',
        labels={},
        state=State(type=StateType.CRASHED, name="Interrupted", message='it said "stop"\nand left'),
    )
    event = {"id": uuid.uuid4(), "occurred": datetime.datetime.now(datetime.UTC)}

    body = json.loads(render_user_template_sync(PAYLOAD_TEMPLATE, {"flow_run": flow_run, "event": event}))

    assert body["job_id"] == str(flow_run.id)
    assert body["status"] == "failed"  # a crashed job is a failed job in the batch inference API
    assert body["state"] == {"type": "CRASHED", "name": "Interrupted", "message": 'it said "stop"\nand left'}
    assert body["flow_run_name"] == 'fake · "odd" <name>.jsonl'
    assert body["event_id"] == str(event["id"])
