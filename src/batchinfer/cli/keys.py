"""``batchinfer keys``: make, list, rotate and revoke the API keys of ``serve``'s users
(``control.keys``).

A new key is printed once, alone on the last line, so a script can take it with ``tail -n 1``;
only its SHA-256 is kept. ``serve`` reads the keys at every request: no restart is needed.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from batchinfer.control.keys import KeyRecord, KeyStore, Quota
from batchinfer.errors import RequestError
from batchinfer.settings import Settings


def keys_command(args: argparse.Namespace, settings: Settings) -> int:
    store = KeyStore(settings.keys_path)
    if args.action == "create":
        return _create(store, args)
    if args.action == "list":
        return _list(store)
    if args.action == "rotate":
        return _rotate(store, args.name)
    if not store.revoke(args.name):
        raise RequestError(
            f"No key named {args.name!r} that is not revoked already; `batchinfer keys list` shows them.",
            field="name",
        )
    print(f"Revoked key {args.name!r}: serve refuses it from its next request on.")
    return 0


def keys_required(settings: Settings) -> bool:
    """Whether ``serve`` asks every request for a key: there is a token, or a key (even revoked)."""
    if settings.security.api_token is not None:
        return True
    # Looked at without making it: a refused serve leaves no trace in BATCHINFER_HOME.
    return settings.keys_path.exists() and KeyStore(settings.keys_path).any_keys()


def access_line(settings: Settings) -> str:
    """What ``serve`` says at start about who may use it."""
    if keys_required(settings):
        return "Access: every request needs a key (`batchinfer keys list`; the API token is an admin key)."
    return (
        "Access: open, with no keys and no BATCHINFER_API_TOKEN (loopback only); "
        "`batchinfer keys create NAME` makes keys, and from then on every request needs one."
    )


def _create(store: KeyStore, args: argparse.Namespace) -> int:
    quota = Quota(
        max_enqueued_requests=args.max_enqueued_requests,
        max_enqueued_tokens=args.max_enqueued_tokens,
        max_running_jobs=args.max_running_jobs,
    )
    record, key = store.create(args.name, admin=args.admin, quota=quota)
    print(f"Made {_role(record)} key {record.name!r}{_quotas(record)}. Keep it: it is shown once, here.")
    print("Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
    print(key)
    return 0


def _rotate(store: KeyStore, name: str) -> int:
    rotated = store.rotate(name)
    if rotated is None:
        raise RequestError(f"No key named {name!r}; `batchinfer keys list` shows them.", field="name")
    record, key = rotated
    print(f"New secret for {_role(record)} key {record.name!r}: the old one is refused from now on.")
    print("Keep it: it is shown once, here.")
    print(key)
    return 0


def _list(store: KeyStore) -> int:
    records = store.records()
    if not records:
        print("No keys: serve is open to anyone who reaches it (loopback only). `batchinfer keys create`.")
        return 0
    print(f"{'NAME':<20} {'KEY':<16} {'ROLE':<6} {'CREATED':<20} {'REVOKED':<20} QUOTAS")
    for record in records:
        revoked = _when(record.revoked_at) if record.revoked_at else "-"
        quotas = _quotas(record).removeprefix(" (").removesuffix(")") or "-"
        print(
            f"{record.name:<20} {record.shown + '...':<16} {_role(record):<6} "
            f"{_when(record.created_at):<20} {revoked:<20} {quotas}"
        )
    return 0


def _role(record: KeyRecord) -> str:
    return "admin" if record.admin else "user"


def _quotas(record: KeyRecord) -> str:
    set_ = {name: value for name, value in record.quota.model_dump().items() if value is not None}
    return f" ({', '.join(f'{name} {value}' for name, value in set_.items())})" if set_ else ""


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
