"""What a user writes, type-checked with ``mypy --strict`` by tests/test_typing.py."""

from __future__ import annotations

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
