"""What a user writes, type-checked with ``mypy --strict`` by tests/test_typing.py."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypedDict

import mmapkv


class User(TypedDict):
    name: str
    langs: list[str]


def cache_users(store: mmapkv.Store, users: dict[str, User]) -> list[str]:
    for key, user in users.items():
        store.set(key, user, ttl=3600)          # a TypedDict is a JSON object
        store.create(f"copy:{key}", user)
    store.update(users)
    store["plain"] = {"name": "Bob", "langs": []}
    missing: dict[str, Any] | None = store.get("nope")
    found: dict[str, Any] = store.get("plain", {})    # a dict default: never None
    either: dict[str, Any] | int = store.get("plain", 0)
    popped: dict[str, Any] | None = store.pop("plain", None)
    remaining: int | None = store.ttl("copy:a")
    names = [value["name"] for value in store.values()]
    for key, value in store.items():
        names.append(f"{key}={value.get('name')}")
    assert missing is None and found is not None and either is not None and popped is not None
    assert remaining is None or remaining > 0
    return names


def share_users(store: mmapkv.RedisStore, users: dict[str, User]) -> int:
    """The same calls on Redis (issue 14) type-check the same way."""
    for key, user in users.items():
        store.set(key, user, ttl=3600)
    store.batch_create([(f"copy:{key}", user) for key, user in users.items()], ttl=60)
    store.update(users)
    found: dict[str, Any] = store.get("plain", {})
    popped: dict[str, Any] | None = store.pop("plain", None)
    remaining: int | None = store.ttl("copy:a")
    assert found is not None and (popped is None or popped) and (remaining is None or remaining > 0)
    entries = list(store.items_with_expiry())
    store.restore_entries(entries, replace=True)
    stats: mmapkv.RedisStats = store.stats()
    return stats.live_keys


def count(store: MutableMapping[str, dict[str, Any]]) -> int:
    """Code written against the mapping interface takes either store."""
    return len(store)


def open_store(url: str | None) -> int:
    store: mmapkv.Store | mmapkv.RedisStore = (
        mmapkv.RedisStore(url, namespace="app", socket_timeout=2.5) if url else mmapkv.Store())
    with store:
        return count(store)
