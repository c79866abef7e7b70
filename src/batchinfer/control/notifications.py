"""Job notifications: a webhook called when a job ends, through a Prefect automation.

A Webhook block holds the URL (and headers, which may carry a token, stored as secrets), and an
automation calls it (``CallWebhook``) on every terminal state of a flow run of the batch job. The
Prefect server's trigger and action services do the work, so a job notifies however it was run
(``serve``, a worker of the process pool, ``batchinfer run`` against the server), and nothing of
batchinfer has to stay up for the call to go out.

Prefect is imported inside the functions only: ``import batchinfer`` stays cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from batchinfer.control.names import FLOW_NAME

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.events.schemas.automations import AutomationCore

DEFAULT_NAME = "batchinfer-job-finished"  # of the automation and of its webhook block
WEBHOOK_BLOCK_TYPE = "webhook"
# Matched on the state *type*, not on the event name (the state name): a job that `serve` finds
# interrupted ends CRASHED under the name "Interrupted", and it must notify too.
TERMINAL_STATE_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

# A Jinja template that the Prefect server renders for each call. `flow_run` is the job's flow run
# with the state the event carried (not whatever state it has by the time the action runs);
# `event` is that state-change event, whose id lets a receiver drop a repeated delivery. `status`
# is the job status of the batch inference API. `tojson` quotes names and messages safely.
PAYLOAD_TEMPLATE = """\
{
  "job_id": "{{ flow_run.id }}",
  "status": "{% if flow_run.state.type.value == 'COMPLETED' %}completed{% else %}failed{% endif %}",
  "state": {
    "type": "{{ flow_run.state.type.value }}",
    "name": {{ (flow_run.state.name or none) | tojson }},
    "message": {{ (flow_run.state.message or none) | tojson }}
  },
  "flow_run_name": {{ (flow_run.name or none) | tojson }},
  "event_id": "{{ event.id }}",
  "occurred": "{{ event.occurred.isoformat() }}"
}
"""


def job_finished_automation(name: str, webhook_block_id: UUID, flow_name: str = FLOW_NAME) -> AutomationCore:
    """The automation: on each flow run of ``flow_name`` reaching a terminal state, call the webhook."""
    from prefect.automations import CallWebhook, EventTrigger, Posture
    from prefect.events.schemas.automations import AutomationCore

    trigger = EventTrigger(
        expect={"prefect.flow-run.*"},
        match={"prefect.resource.id": "prefect.flow-run.*", "prefect.state-type": list(TERMINAL_STATE_TYPES)},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
        for_each={"prefect.resource.id"},  # each job on its own: one call per terminal state
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )
    return AutomationCore(
        name=name,
        description=f"batchinfer: POST to the {name!r} webhook block when a {flow_name} flow run ends.",
        tags=["batchinfer"],
        trigger=trigger,
        actions=[CallWebhook(block_document_id=webhook_block_id, payload=PAYLOAD_TEMPLATE)],
    )


@asynccontextmanager
async def _using(client: PrefectClient | None) -> AsyncIterator[PrefectClient]:
    """The caller's client, left open; else one for PREFECT_API_URL, closed afterwards."""
    if client is not None:
        yield client
        return
    from prefect.client.orchestration import get_client

    async with get_client() as own:
        yield own


async def aensure_job_webhook(
    url: str,
    *,
    name: str = DEFAULT_NAME,
    headers: dict[str, str] | None = None,
    flow_name: str = FLOW_NAME,
    allow_private_urls: bool = True,
    client: PrefectClient | None = None,
) -> UUID:
    """Create, or update to these values, the webhook block and the automation named ``name``;
    the automation's id. Idempotent: calling it again leaves one automation of that name.

    ``name`` must suit a block name (lowercase letters, digits, dashes). ``allow_private_urls``
    False makes Prefect refuse URLs on loopback and private addresses (its SSRF guard)."""
    from prefect.blocks.webhook import Webhook

    webhook = Webhook(
        url=url,
        headers={"Content-Type": "application/json", **(headers or {})},
        allow_private_urls=allow_private_urls,
    )
    async with _using(client) as api:
        block_id = await webhook.asave(name, overwrite=True, client=api)
        automation = job_finished_automation(name, block_id, flow_name)
        existing = await api.read_automations_by_name(name)
        if not existing:
            return await api.create_automation(automation)
        keep, *duplicates = existing  # newest first; more than one only if made by hand
        await api.update_automation(keep.id, automation)
        for duplicate in duplicates:
            await api.delete_automation(duplicate.id)
        return keep.id


async def aremove_job_webhook(name: str = DEFAULT_NAME, *, client: PrefectClient | None = None) -> bool:
    """Delete the automations and the webhook block named ``name``; False if there was none."""
    from prefect.exceptions import ObjectNotFound

    async with _using(client) as api:
        automations = await api.read_automations_by_name(name)
        for automation in automations:
            await api.delete_automation(automation.id)
        try:
            block = await api.read_block_document_by_name(name, block_type_slug=WEBHOOK_BLOCK_TYPE)
        except ObjectNotFound:
            return bool(automations)
        await api.delete_block_document(block.id)
        return True


def ensure_job_webhook(
    url: str,
    *,
    name: str = DEFAULT_NAME,
    headers: dict[str, str] | None = None,
    flow_name: str = FLOW_NAME,
    allow_private_urls: bool = True,
) -> UUID:
    """``aensure_job_webhook`` for synchronous callers (not from inside an event loop)."""
    return asyncio.run(
        aensure_job_webhook(
            url, name=name, headers=headers, flow_name=flow_name, allow_private_urls=allow_private_urls
        )
    )


def remove_job_webhook(name: str = DEFAULT_NAME) -> bool:
    """``aremove_job_webhook`` for synchronous callers (not from inside an event loop)."""
    return asyncio.run(aremove_job_webhook(name))
