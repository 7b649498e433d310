"""pytest fixtures for ``RedisStore``: one real ``redis-server`` per session, a namespace of
its own for each test, and a way to make time pass on the server without sleeping.

Where ``redis-server`` is not on ``PATH``, or redis-py is not installed, every test that asks
for a server is skipped with a reason naming the package to install (``MMAPKV_REQUIRE_REDIS=1``
makes that a failure: CI sets it once it has installed both).  Imported by
``tests/conftest.py`` and ``fuzz/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv.redis_server import LocalRedis, missing

__all__ = ["redis_server", "redis_namespace", "redis_store", "redis_client", "age_namespace",
           "skip_without_redis", "new_namespace"]

_NAMES = itertools.count()

#: shift every TTL of a namespace's keys back by ARGV[2] milliseconds: for those keys it is
#: as if that much time had passed (one whose expiry moves into the past is deleted by the
#: server at once, as it deletes an expired key).  One script: no key is left out.
_AGE = """
local cursor = "0"
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    local at = redis.call("PEXPIRETIME", key)
    if at > 0 then redis.call("PEXPIREAT", key, at - tonumber(ARGV[2])) end
  end
until cursor == "0"
return 0
"""


def skip_without_redis() -> None:
    """Skip the calling test unless both redis-py and ``redis-server`` are here; with
    ``MMAPKV_REQUIRE_REDIS=1`` (CI, once it installed them), fail instead."""
    why = missing()
    if why and os.environ.get("MMAPKV_REQUIRE_REDIS"):
        pytest.fail(f"MMAPKV_REQUIRE_REDIS is set, but {why}")
    if why:
        pytest.skip(why)


def new_namespace() -> str:
    """A namespace no other test of this run uses."""
    return f"t{os.getpid()}-{next(_NAMES)}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """A ``redis-server`` on a free loopback port, in a temporary directory, for the session;
    stopped (and its directory removed) at the end, also after failures."""
    skip_without_redis()
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[Any]:
    """A raw redis-py client of the session's server: for checks behind the store's back."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def redis_namespace() -> str:
    return new_namespace()


@pytest.fixture
def redis_store(redis_server: LocalRedis, redis_namespace: str) -> Iterator[mmapkv.RedisStore]:
    """A ``RedisStore`` on the session's server in a namespace of its own; its keys are
    removed afterwards."""
    store = mmapkv.RedisStore(redis_server.url, namespace=redis_namespace)
    yield store
    store.close()
    with mmapkv.RedisStore(redis_server.url, namespace=redis_namespace) as cleaner:
        cleaner.clear()


def age_namespace(client: Any, namespace: str, seconds: float) -> None:
    """Make *seconds* pass for the TTLs of *namespace*'s keys, on the server, now."""
    pattern = namespace.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?") \
        .replace("[", "\\[").replace("]", "\\]") + ":*"
    client.eval(_AGE, 0, pattern, round(seconds * 1000))
