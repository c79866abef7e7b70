"""A model's per-minute limits across every job and process, as Prefect rate limits.

``max_requests_per_minute`` and ``max_tokens_per_minute`` each become a global concurrency limit
whose slots decay (Prefect's rate limits): ``batchinfer-requests-per-minute-<id>`` decays at the
limit's rate a second, and holds a second's worth, as a hosted API's slice of its minute does. Each
process running a job of the model takes grants of a quarter second's worth from it
(``engines.pacing.RatePacer``) and spends them evenly, so every process together stays within what
the server allows, at a few Prefect API calls a second per process. The limits are upserted from the
models file when a job starts, as the model's concurrency limit is (``model_limits``).

A Prefect server on SQLite answers 503 to an increment whose write meets another one (a grant for
another process, a job's own state changes), and Prefect's client would wait 2 s before it asks
again. A job whose grant met the other job's last writes so stalled for those 2 s with nobody else
to use the limit: two jobs got 0.73-0.99 of it in bench/pacing. So a grant's client hands such an
answer back at once (an httpx response hook, passed in through ``get_client``'s ``httpx_settings``),
and the grant is asked for again.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.pacing import RateKind, grant_size

if TYPE_CHECKING:
    import httpx

INCREMENT_PATH = "/v2/concurrency_limits/increment"  # where Prefect's client asks for slots
SLICE_S = 1.0  # the burst a limit allows: a second's worth, as hosted APIs slice their minute


def rate_limit_name(model_id: str, kind: RateKind) -> str:
    return f"batchinfer-{kind}-per-minute-" + re.sub(r"[^A-Za-z0-9_.-]", "-", model_id)


def per_minute_limits(config: OpenAIEngineConfig) -> dict[RateKind, int]:
    limits: dict[RateKind, int | None] = {
        "requests": config.max_requests_per_minute,
        "tokens": config.max_tokens_per_minute,
    }
    return {kind: value for kind, value in limits.items() if value}


def ensure_rate_limits(config: OpenAIEngineConfig) -> PrefectGrants | None:
    """Create or update the model's rate limits in Prefect; grants from them (None: it has none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limits = per_minute_limits(config)
    if not limits:
        return None  # most models: no Prefect call at all
    names: dict[RateKind, str] = {}
    decays: dict[RateKind, float] = {}
    with get_client(sync_client=True) as client:
        for kind, per_minute in limits.items():
            name = names[kind] = rate_limit_name(config.id, kind)
            size = max(grant_size(per_minute), math.ceil(per_minute / 60 * SLICE_S))
            decay = decays[kind] = per_minute / 60
            try:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=size, slot_decay_per_second=decay)
                )
            except ObjectNotFound:
                # Another job may make it first: it has the same figures.
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=size, slot_decay_per_second=decay)
                    )
    return PrefectGrants(names, decays)


@dataclass
class PrefectGrants:
    """``engines.pacing.Grants`` from Prefect's rate limits: ``take`` blocks until granted.

    It reads the limit (its slots after decay) and asks once the grant would fit, having waited
    exactly as long as the missing slots take to decay, rather than asking and sleeping a fixed time
    after each refusal (two jobs sharing a limit got 0.82 of it so in bench/pacing). Prefect's own
    ``rate_limit`` waits the Retry-After its server gives, which adds every slot denied so far to
    the wait (measured in a unit test: two processes at 0.8 of the limit). A refusal (423) or a
    write the server could not make just then (503, ``GrantContended``) is read again at once."""

    names: dict[RateKind, str]
    decay: dict[RateKind, float]
    _client: Any = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def take(self, kind: RateKind, amount: int) -> None:
        with self._lock:
            client = self._connected()
            while True:
                limit = client.read_global_concurrency_limit_by_name(self.names[kind])
                short = amount - (limit.limit - limit.active_slots)
                if short <= 0 and self._granted(client, kind, amount):
                    return
                time.sleep(max(short, 1) / self.decay[kind])

    def _connected(self) -> Any:
        # One client for the life of the process's engine (a job's process, a worker).
        if self._client is None:
            from prefect.client.orchestration import get_client

            hooks = {"response": [contended_grant]}
            self._client = get_client(sync_client=True, httpx_settings={"event_hooks": hooks})
            self._client.__enter__()
        return self._client

    def _granted(self, client: Any, kind: RateKind, amount: int) -> bool:
        import httpx

        try:
            client.increment_concurrency_slots([self.names[kind]], amount, mode="rate_limit")
        except GrantContended:  # the server wrote something else just then
            return False
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # another process took them first
                raise
            return False
        return True


class GrantContended(Exception):
    """An increment the Prefect server could not write just then (503): ask again, not in 2 s."""


def contended_grant(response: httpx.Response) -> None:
    """A grant client's response hook: a 503 to an increment raises, which Prefect's client passes
    on at once rather than retrying after its back-off. Every other answer goes on as usual."""
    if response.status_code == 503 and response.request.url.path.endswith(INCREMENT_PATH):
        raise GrantContended(f"{response.request.url} answered 503")
