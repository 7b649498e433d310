"""Issue 14: what only ``RedisStore`` has to prove, against a real ``redis-server``.

The API itself is tested on both backends by the conformance suites (test_store.py,
test_mapping.py, test_bad_input.py, fuzz/).  Here: the constructor's arguments, redis-py
as an optional dependency, namespaces, the server's own faults (stopped, hung, killed in the
middle of a batch, out of memory), other processes racing for a key, and the documented
differences (values stored as the codec's bytes, foreign keys, stats).  Every server these
tests start is stopped by the test, also when it fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv import codec
from mmapkv.redis_server import LocalRedis
from redis_fixtures import new_namespace, skip_without_redis

SHORT_TIMEOUT = 0.5   # seconds: the socket_timeout of the fault tests


@pytest.fixture
def own_server() -> Iterator[LocalRedis]:
    """A server of this test's own, which it may stop, hang or kill."""
    skip_without_redis()
    with LocalRedis() as server:
        yield server


@pytest.fixture
def aof_server() -> Iterator[LocalRedis]:
    """A server that logs every write and fsyncs before it answers (``appendfsync always``)."""
    skip_without_redis()
    with LocalRedis(appendonly=True, appendfsync="always") as server:
        yield server


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize("kwargs, text", [
    ({"namespace": ""}, "namespace"),
    ({"namespace": "a:b"}, "':'"),
    ({"namespace": "a\0b"}, "NUL"),
    ({"namespace": 5}, "namespace"),
    ({"namespace": "\ud800"}, "Unicode"),
    ({"socket_timeout": 0}, "socket_timeout"),
    ({"socket_timeout": -1}, "socket_timeout"),
    ({"socket_timeout": float("nan")}, "socket_timeout"),
    ({"socket_timeout": float("inf")}, "socket_timeout"),
    ({"socket_timeout": True}, "socket_timeout"),
    ({"socket_timeout": "5"}, "socket_timeout"),
    ({"socket_timeout": 1e10}, "socket_timeout"),      # more than a socket takes
    ({"socket_timeout": 10 ** 400}, "socket_timeout"),  # more than a float holds
])
def test_bad_constructor_arguments(redis_server: LocalRedis, kwargs: dict[str, Any], text: str) -> None:
    """A bad namespace or timeout is InvalidArgumentError (ValueError and TypeError) naming it,
    before anything is sent."""
    with pytest.raises(mmapkv.InvalidArgumentError) as info:
        mmapkv.RedisStore(redis_server.url, **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert text in str(info.value)


@pytest.mark.parametrize("target, text", [
    ("http://127.0.0.1:6379", "redis://"),
    ("127.0.0.1:6379", "redis://"),
    ("", "redis://"),
    (6379, "int"),
    (None, "NoneType"),
    (object(), "object"),
    ("redis://[::1/0", "bad Redis URL"),                    # urlsplit refuses it
    ("redis://:hunter2@[::1/0", "bad Redis URL: Invalid"),  # ... and the password is not shown
])
def test_bad_url_or_client(redis_server: LocalRedis, target: Any, text: str) -> None:
    with pytest.raises(mmapkv.InvalidArgumentError, match=re.escape(text)) as info:
        mmapkv.RedisStore(target)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("where, text", [
    ("a..b", "is not a host name"),                      # an empty label: IDNA refuses it
    ("x" * 64 + ".example", "is not a host name"),       # a label past 63 characters
    ("h\ud800st", "is not a host name"),
    ("{server}?protocol=9", "protocol must be 2 or 3"),
    ("{server}?encoding=latin-1", "encoding is 'latin-1'"),
    ("{server}?encoding=nonesuch", "encoding is 'nonesuch'"),
])
def test_a_url_no_connection_could_use_is_refused_before_connecting(redis_server: LocalRedis, where: str,
                                                                     text: str) -> None:
    """A host name ``getaddrinfo`` cannot look up (redis-py raised a bare UnicodeError at
    the first call), a protocol redis-py lacks, an encoding other than UTF-8 (every value
    read garbled): a bad URL, InvalidArgumentError, not a server that is down."""
    server = redis_server.url.split("://", 1)[1]
    url = "redis://" + (where.format(server=server) if "{server}" in where else where + ":6379/0")
    with pytest.raises(mmapkv.InvalidArgumentError, match=re.escape(text)):
        mmapkv.RedisStore(url, socket_timeout=2)


def test_a_client_decoding_other_than_strict_utf8_is_refused(redis_server: LocalRedis) -> None:
    """A client of the caller's that decodes replies as latin-1 read every non-ASCII value
    garbled, with no error; one with ``encoding_errors='replace'`` would change bytes that
    are not UTF-8.  Both are refused; UTF-8 by any of its names is taken."""
    import redis

    for kwargs, text in [({"decode_responses": True, "encoding": "latin-1"}, "encoding is 'latin-1'"),
                         ({"encoding": "utf-16"}, "encoding is 'utf-16'"),
                         ({"decode_responses": True, "encoding_errors": "replace"}, "encoding_errors='replace'")]:
        client = redis.Redis.from_url(redis_server.url, **kwargs)
        try:
            with pytest.raises(mmapkv.InvalidArgumentError, match=re.escape(text)):
                mmapkv.RedisStore(client, namespace="enc")
        finally:
            client.close()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, encoding="UTF8")
    store = mmapkv.RedisStore(client, namespace="enc")
    try:
        store.set("k", {"name": "Zoë"})
        assert store.read("k") == {"name": "Zoë"} and list(store.items()) == [("k", {"name": "Zoë"})]
        assert store.pop("k") == {"name": "Zoë"} and len(store) == 0
    finally:
        store.close()
        client.close()


def test_a_password_in_the_query_is_never_shown(own_server: LocalRedis) -> None:
    """``?password=`` (the usual form for a ``unix://`` socket; redis-py reads it) is hidden
    like ``user:password@``: in ``url``, ``repr``, ``stats()`` and error messages."""
    import redis

    admin = redis.Redis.from_url(own_server.url)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    url = f"redis://127.0.0.1:{own_server.port}/0?password=s3cret"
    store = mmapkv.RedisStore(url, namespace="pw", socket_timeout=SHORT_TIMEOUT)
    store.set("a", {"n": 1})  # the password was used: the server asks for it
    shown = [store.url, repr(store), store.stats().url]
    own_server.stop()
    for call in (lambda: store.read("a"), lambda: mmapkv.RedisStore(url, socket_timeout=SHORT_TIMEOUT)):
        with pytest.raises(mmapkv.StoreUnavailableError) as info:
            call()
        shown.append(str(info.value))
    store.close()
    assert all("s3cret" not in text and "password=***" in text for text in shown), shown


def test_unreachable_server_is_a_clear_error_at_once(own_server: LocalRedis) -> None:
    """Nothing listening: StoreUnavailableError (an OSError) naming the server, at once,
    with no retries; the password of the URL is never shown."""
    url = f"redis://:hunter2@127.0.0.1:{own_server.port}/0"
    own_server.stop()
    started = time.monotonic()
    with pytest.raises(mmapkv.StoreUnavailableError) as info:
        mmapkv.RedisStore(url, socket_timeout=SHORT_TIMEOUT)
    assert time.monotonic() - started < SHORT_TIMEOUT + 1
    assert isinstance(info.value, OSError)
    assert f"127.0.0.1:{own_server.port}" in str(info.value) and "hunter2" not in str(info.value)
    assert isinstance(info.value.__cause__, Exception)  # the redis-py error, chained


@pytest.mark.parametrize("version, works", [("7.0.15", True), ("7.2-rc1", True), ("8.0", True),
                                            ("6.2.14", False), ("unknown", False)])
def test_the_servers_version_is_checked(redis_server: LocalRedis, version: str, works: bool) -> None:
    """A server older than 7.0, or one whose version cannot be read, is StoreUnavailableError
    naming the version (a suffix such as "-rc1" was a bare ValueError)."""
    import redis

    class Reporting(redis.Redis):  # type: ignore[misc]  # the server, with another version
        def info(self, section: Any = None, *args: Any, **kwargs: Any) -> Any:
            answer = super().info(section, *args, **kwargs)
            return {**answer, "redis_version": version} if section == "server" else answer

    client = Reporting.from_url(redis_server.url)
    try:
        if works:
            mmapkv.RedisStore(client, namespace=new_namespace()).close()
        else:
            with pytest.raises(mmapkv.StoreUnavailableError, match=f"runs Redis {version}; .* needs Redis 7.0"):
                mmapkv.RedisStore(client)
    finally:
        client.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_dies_with_the_process_not_with_a_thread() -> None:
    """LocalRedis asks Linux to stop its server when the process dies; off the main thread
    it does not ask, since Linux would stop it when that thread ended (prctl(2))."""
    from mmapkv import redis_server

    in_thread: list[Any] = []
    worker = threading.Thread(target=lambda: in_thread.append(redis_server._die_with_parent()))
    worker.start()
    worker.join(30)
    assert in_thread == [None]
    assert callable(redis_server._die_with_parent())


def test_without_redis_py(tmp_path: Any) -> None:
    """``import mmapkv`` works without redis-py, loads nothing of RedisStore until asked, and
    making one says what to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["redis"] = None          # as if redis-py were not installed
        import mmapkv
        assert "mmapkv.redis_store" not in sys.modules
        try:
            mmapkv.RedisStore("redis://127.0.0.1:1/0")
        except mmapkv.StoreUnavailableError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'pip install "mmapkv[redis]"' in done.stdout


def test_a_client_of_your_own(redis_server: LocalRedis) -> None:
    """A ``redis.Redis`` client is used as it is, even one that decodes replies to str, and
    close() leaves it open for its owner."""
    import redis

    namespace = new_namespace()
    for decode in (False, True):
        client = redis.Redis.from_url(redis_server.url, decode_responses=decode)
        store = mmapkv.RedisStore(client, namespace=namespace)
        assert store.url == redis_server.url
        store.set("k", {"decoded": decode, "big": 2 ** 70})
        assert store.read("k") == {"decoded": decode, "big": 2 ** 70}
        assert store.keys() == ["k"] and dict(store.items()) == {"k": store.read("k")}
        store.close()
        assert client.ping() is True  # still open
        with pytest.raises(mmapkv.StoreClosedError):
            store.read("k")
        client.delete(f"{namespace}:k")
        client.close()


# ------------------------------------------------------------------ what is stored


def test_values_are_the_codecs_exact_bytes(redis_store: mmapkv.RedisStore, redis_client: Any) -> None:
    """The server holds the very bytes Store would write (so the limits agree), under
    ``<namespace>:<key>``, with Redis's own TTL."""
    value = {"name": "Zoë", "n": [1, 2.5, None], "big": -(2 ** 64)}
    redis_store.create("ключ", value, ttl=100)
    name = f"{redis_store.namespace}:ключ".encode()
    assert redis_client.get(name) == codec.encode(value)[0]
    assert 99_000 < redis_client.pttl(name) <= 100_000
    redis_client.set(f"{redis_store.namespace}:raw", b'{"n":18446744073709551617}')
    assert redis_store.read("raw") == {"n": 18446744073709551617}  # read exactly, not as a float


def test_namespaces_isolate_stores(redis_server: LocalRedis) -> None:
    """Two namespaces on one server never see each other's keys, even when one's name is
    a glob pattern that would match the other (SCAN's MATCH is escaped)."""
    with mmapkv.RedisStore(redis_server.url, namespace="iso*") as star, \
            mmapkv.RedisStore(redis_server.url, namespace="iso-x") as other, \
            mmapkv.RedisStore(redis_server.url, namespace="iso[x]\\?") as brackets:
        star.create("a", {"ns": "star"})
        other.create("a", {"ns": "other"})
        other.create("b", {"ns": "other"})
        brackets.create("a", {"ns": "brackets"})
        assert star.read("a") == {"ns": "star"} and other.read("a") == {"ns": "other"}
        assert star.keys() == ["a"] and sorted(other.keys()) == ["a", "b"] and brackets.keys() == ["a"]
        assert len(star) == 1 and len(other) == 2 and "b" not in star
        with pytest.raises(mmapkv.KeyNotFoundError):
            star.read("b")
        star.clear()
        assert len(star) == 0 and sorted(other.keys()) == ["a", "b"] and len(brackets) == 1
        assert star.stats().live_keys == 0 and other.stats().live_keys == 2
        other.clear()
        brackets.clear()


def test_foreign_keys_under_the_namespace(redis_store: mmapkv.RedisStore, redis_client: Any) -> None:
    """Keys mmapkv could not have written (too long, not UTF-8, not a string, not a JSON
    object) are reported by verify() and by the reads that meet them; keys/len skip the
    names that are not keys; clear() removes them all."""
    ns = redis_store.namespace
    redis_store.create("good", {"v": 1})
    redis_client.set(f"{ns}:{'k' * 40}", b"{}")
    redis_client.set(f"{ns}:".encode() + b"\xff\xfe", b"{}")
    redis_client.hset(f"{ns}:hash", "f", "v")
    redis_client.set(f"{ns}:list", b"[1, 2]")
    redis_client.set(f"{ns}:text", b"not json")
    # the hash is another program's: listed by no walk, so popitem never stops at it
    assert sorted(redis_store.keys()) == ["good", "list", "text"] and len(redis_store) == 3
    assert sorted(redis_store) == ["good", "list", "text"] and redis_store.stats().live_keys == 3
    problems = redis_store.verify()
    assert len(problems) == 5, problems
    assert any("hash" in p and "hash, not a string" in p for p in problems)
    for key in ("hash", "list", "text"):
        with pytest.raises(mmapkv.CorruptStoreError) as info:
            redis_store.read(key)
        assert redis_store.namespace in str(info.value)
    redis_store.clear()
    assert redis_client.keys(f"{ns}:*") == [] and redis_store.verify() == []


def test_popitem_and_items_pass_another_programs_hash(redis_store: mmapkv.RedisStore,
                                                      redis_client: Any) -> None:
    """A hash under the namespace with a name mmapkv could have written is not a key of the
    store: items() does not stop at it and popitem() empties the store around it (it
    raised CorruptStoreError at the hash on every call, and never reached the others)."""
    ns = redis_store.namespace
    redis_client.hset(f"{ns}:h", "x", "1")
    redis_store.update({f"k{i}": {"i": i} for i in range(20)})
    assert dict(redis_store.items()) == {f"k{i}": {"i": i} for i in range(20)}
    popped = dict(redis_store.popitem() for _ in range(20))
    assert popped == {f"k{i}": {"i": i} for i in range(20)}
    with pytest.raises(mmapkv.KeyNotFoundError, match="empty"):
        redis_store.popitem()
    with pytest.raises(mmapkv.CorruptStoreError):
        redis_store.read("h")  # by name it is still reported
    assert redis_client.hget(f"{ns}:h", "x") == b"1"  # and left as it was


def test_a_decoding_client_lists_around_a_name_that_is_not_utf8(redis_server: LocalRedis,
                                                                  redis_client: Any) -> None:
    """Through a ``decode_responses=True`` client, a name under the namespace that is not
    UTF-8 is skipped by the walks, reported by verify() and removed by clear() (all of
    them raised CorruptStoreError: one such name spoiled the whole SCAN reply), and
    verify() measures values in bytes, not characters."""
    import redis

    namespace = new_namespace()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = mmapkv.RedisStore(client, namespace=namespace)
    store.create("k", {"v": 1})
    redis_client.set(f"{namespace}:".encode() + b"\xff", b"{}")
    wide = '{"t":"' + "\u00e9" * 9_000 + '"}'  # 9,008 characters, 18,008 bytes
    redis_client.set(f"{namespace}:wide", wide.encode())
    assert sorted(store.keys()) == ["k", "wide"] and len(store) == 2 and sorted(store) == ["k", "wide"]
    problems = store.verify()
    assert len(problems) == 2, problems
    assert any("\\xff" in p for p in problems) and any("18,008 bytes" in p for p in problems)
    store.clear()
    assert redis_client.keys(f"{namespace}:*") == []
    store.close()
    client.close()


def test_stats(redis_store: mmapkv.RedisStore) -> None:
    redis_store.batch_create({"a": {}, "b": {}, "c": {}}, ttl=60)
    redis_store.create("d", {})
    stats = redis_store.stats()
    assert isinstance(stats, mmapkv.RedisStats)
    assert (stats.live_keys, stats.keys_with_ttl) == (4, 3) and stats.live_keys == len(redis_store)
    assert stats.namespace == redis_store.namespace and stats.url == redis_store.url
    assert stats.server_version.split(".")[0] >= "7" and stats.max_value_bytes == 16_384
    assert stats.used_memory > 0 and stats.max_memory == 0
    assert stats.aof_enabled is False and stats.appendfsync in ("always", "everysec", "no")


# ------------------------------------------------------------------ the server's faults


def test_stopped_server_every_call_fails_within_the_timeout(own_server: LocalRedis) -> None:
    """A server that is hung (SIGSTOP) or gone: every call raises StoreUnavailableError within
    ``socket_timeout``, and the store works again once the server is back."""
    store = mmapkv.RedisStore(own_server.url, namespace="faults", socket_timeout=SHORT_TIMEOUT)
    store.create("k", {"v": 1})
    calls = {
        "read": lambda: store.read("k"), "get": lambda: store.get("k"), "in": lambda: "k" in store,
        "create": lambda: store.create("n", {}), "set": lambda: store.set("k", {}),
        "delete": lambda: store.delete("k"), "batch": lambda: store.batch_create({"x": {}}),
        "update": lambda: store.update({"x": {}}), "ttl": lambda: store.ttl("k"),
        "persist": lambda: store.persist("k"), "len": lambda: len(store), "keys": store.keys,
        "items": lambda: list(store.items()), "stats": store.stats, "clear": store.clear,
        "pop": lambda: store.pop("k", None), "popitem": store.popitem,
    }
    for how in ("hung", "gone"):
        if how == "hung":
            os.kill(own_server.pid, signal.SIGSTOP)
        else:
            own_server.stop(keep_files=True)
        try:
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(mmapkv.StoreUnavailableError) as info:
                    call()
                took = time.monotonic() - started
                # one try: a retry would take a second timeout (the bound leaves a loaded
                # machine all the rest of that second timeout)
                assert took < 2 * SHORT_TIMEOUT, f"{how} {name} took {took:.2f} s"
                assert own_server.url.split("//")[1].split("/")[0] in str(info.value), name
        finally:
            if how == "hung":
                os.kill(own_server.pid, signal.SIGCONT)
        if how == "gone":
            own_server.start()
    store.create("back", {"v": 2})  # the pool reconnects by itself
    store.batch_create({"b1": {}, "b2": {}})  # the restarted server lost its scripts: sent again
    assert store.read("back") == {"v": 2} and sorted(store.keys()) == ["b1", "b2", "back"]
    assert store.persist("b1") is False
    store.close()


def test_server_killed_during_a_batch_keeps_all_or_none(aof_server: LocalRedis) -> None:
    """kill -9 of the server (AOF, ``appendfsync always``) while a large batch_create is in
    flight: after a restart the batch is there whole or not at all, and a batch the client
    saw succeed is there whole.  Each round kills at another point: while the command is
    sent, once the AOF starts to grow, once half the batch's bytes are in it (the server
    writes it in pieces), and after the reply."""
    size = 20_000
    outcomes = []
    for round_ in range(4):  # 0: sending, 1: the AOF grows, 2: after the reply, 3: AOF half written
        namespace = f"batch{round_}"
        store = mmapkv.RedisStore(aof_server.url, namespace=namespace, socket_timeout=30)
        store.create("before", {"v": 1})
        batch = {f"k{i}": {"i": i, "pad": "x" * 200} for i in range(size)}
        result: list[Any] = []
        sending = threading.Event()
        original = store._eval

        def announce(*args: Any, _original: Any = original) -> Any:
            sending.set()
            return _original(*args)

        store._eval = announce  # type: ignore[method-assign]

        def run() -> None:
            try:
                store.batch_create(batch)
                result.append("ok")
            except mmapkv.StoreUnavailableError as exc:
                result.append(exc)

        aof = os.path.join(aof_server.directory, "appendonlydir")
        grown_from = sum(os.path.getsize(os.path.join(aof, f)) for f in os.listdir(aof))
        worker = threading.Thread(target=run)
        worker.start()
        assert sending.wait(30)
        if round_ in (1, 3):  # wait (bounded) until the server is writing the batch to the AOF
            grown_by = 1 if round_ == 1 else size * 250 // 2
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and worker.is_alive() and \
                    sum(os.path.getsize(os.path.join(aof, f)) for f in os.listdir(aof)) < grown_from + grown_by:
                pass
        elif round_ == 2:
            worker.join(60)  # the reply came: the kill lands after it
        aof_server.kill()
        worker.join(60)
        assert not worker.is_alive() and len(result) == 1
        aof_server.start()
        store.close()
        with mmapkv.RedisStore(aof_server.url, namespace=namespace) as after:
            keys = set(after.keys())
            assert "before" in keys
            written = keys - {"before"}
            assert len(written) in (0, size), f"round {round_}: {len(written)} of {size} keys survived"
            if result[0] == "ok":
                assert len(written) == size, f"round {round_}: an acknowledged batch was lost"
            if written:
                assert after.read(f"k{size - 1}") == batch[f"k{size - 1}"]
            outcomes.append(("ok" if result[0] == "ok" else "lost reply", "all" if written else "none"))
            after.clear()
    assert ("ok", "all") in outcomes  # round 2 at least saw its reply


def test_out_of_memory_is_store_full_and_writes_nothing(own_server: LocalRedis) -> None:
    """A server at its maxmemory (noeviction) refuses writes: StoreFullError, and a batch
    is refused whole; reads, deletes and TTL changes go on."""
    import redis

    store = mmapkv.RedisStore(own_server.url, namespace="oom")
    store.create("t", {}, ttl=600)
    client = redis.Redis.from_url(own_server.url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 2_000_000)
    client.config_set("maxmemory-policy", "noeviction")
    written = 0
    with pytest.raises(mmapkv.StoreFullError) as info:
        while written < 10_000:
            store.create(f"k{written}", {"pad": "x" * 10_000})
            written += 1
    assert "maxmemory" in str(info.value) and written > 10
    before = len(store)
    with pytest.raises(mmapkv.StoreFullError):
        store.batch_create({f"b{i}": {"pad": "y" * 1000} for i in range(100)})
    assert len(store) == before and "b0" not in store
    assert store.read("k0") == {"pad": "x" * 10_000}
    store.expire("t", 50)  # TTL changes allocate nothing, so they go on, as Redis's own do
    assert store.persist("t") is True and store.ttl("t") is None
    # A refused write says what Store says first: the server refuses SET NX before it
    # looks whether the key exists (StoreFullError for an existing key, a missing one)
    with pytest.raises(mmapkv.KeyExistsError, match="'k1'"):
        store.create("k1", {})
    with pytest.raises(mmapkv.KeyExistsError, match="'k2'"):
        store.batch_create({"new": {}, "k2": {}})
    with pytest.raises(mmapkv.KeyExistsError, match="'k3'"):
        store.restore_entries([("new", {}, None), ("k3", {}, None)])
    with pytest.raises(mmapkv.KeyNotFoundError, match="'missing'"):
        store.replace("missing", {})
    assert store.setdefault("k4", {"other": 1}) == {"pad": "x" * 10_000}
    with pytest.raises(mmapkv.StoreFullError):
        store.setdefault("missing", {"pad": "z" * 10_000})
    # and the reads of a copy go on (a MULTI is refused whole, GET included)
    assert [(k, v) for k, v, _ in store.items_with_expiry(["k5", "missing", "t"])] == [
        ("k5", {"pad": "x" * 10_000}), ("t", {})]
    assert sum(1 for _ in store.items_with_expiry()) == len(store)
    store.delete("k0")
    client.close()
    store.close()


def test_a_call_from_inside_a_call_runs(redis_store: mmapkv.RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """scaling.md: a signal handler's call while its thread is inside a call runs (redis-py's
    pool gives it a connection of its own), where ``Store`` refuses it with
    ``ReentrantCallError``.  The call is made from inside the client's own ``get``, where
    a handler would land."""
    store = redis_store
    store.set("outer", {"v": 1})
    client, inner = store._client, []
    real_get = client.get

    def get(name: bytes) -> Any:
        inner.append(store.set("inner", {"v": 2}))
        return real_get(name)

    monkeypatch.setattr(client, "get", get)
    assert store.read("outer") == {"v": 1} and inner == [None]
    monkeypatch.undo()
    assert store.read("inner") == {"v": 2}


def test_a_close_from_another_thread_is_store_closed_for_the_calls_it_cuts(
        redis_server: LocalRedis, redis_namespace: str) -> None:
    """close() pulls the connections from under calls other threads have running: redis-py
    then raised what it met (ValueError "I/O operation on closed file", AttributeError),
    Python's own errors, where the docs promise StoreClosedError after close."""
    foreign: list[str] = []
    for _ in range(20):
        store = mmapkv.RedisStore(redis_server.url, namespace=redis_namespace)
        store.set("big", {"v": "x" * 16_000})
        busy = [threading.Event() for _ in range(3)]

        def reader(busy: threading.Event) -> None:
            calls = 0
            while True:
                try:
                    store.get("big")
                    store.keys()
                    calls += 1
                    if calls == 20:  # in its stride: the close lands inside a call
                        busy.set()
                except mmapkv.StoreClosedError:
                    return
                except Exception as exc:  # noqa: BLE001  (what is under test)
                    foreign.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=reader, args=(event,)) for event in busy]
        for thread in threads:
            thread.start()
        for event in busy:
            assert event.wait(30)
        store.close()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    with mmapkv.RedisStore(redis_server.url, namespace=redis_namespace) as store:
        store.clear()
    assert foreign == [], foreign[:5]


# ------------------------------------------------------------------ many clients


RACER = textwrap.dedent("""
    import sys, mmapkv
    url, namespace, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = mmapkv.RedisStore(url, namespace=namespace)
    print("ready", flush=True)
    for round_ in range(rounds):
        sys.stdin.readline()                       # all racers start each round together
        try:
            store.create(f"race{round_}", {"winner": sys.argv[4]})
            outcome = "won"
        except mmapkv.KeyExistsError:
            outcome = "exists"
        try:
            store.batch_create({f"b{round_}-{i}": {"by": sys.argv[4]} for i in range(50)})
            batch = "won"
        except mmapkv.KeyExistsError:
            batch = "exists"
        print(outcome, batch, flush=True)
""")


def test_processes_racing_to_create_a_key_exactly_one_wins(redis_server: LocalRedis) -> None:
    """Four processes create the same key (and the same batch) at once, 25 times: each time
    exactly one wins, the others get KeyExistsError, and the stored value is the winner's;
    the losing batches wrote nothing."""
    racers, rounds, namespace = 4, 25, new_namespace()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, redis_server.url, namespace, str(rounds), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in range(racers)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        with mmapkv.RedisStore(redis_server.url, namespace=namespace) as store:
            for round_ in range(rounds):
                for p in procs:
                    assert p.stdin is not None
                    p.stdin.write("go\n")
                    p.stdin.flush()
                answers = [p.stdout.readline().split() for p in procs]  # type: ignore[union-attr]
                winners = [n for n, (outcome, _) in enumerate(answers) if outcome == "won"]
                assert len(winners) == 1, (round_, answers)
                assert store.read(f"race{round_}") == {"winner": str(winners[0])}
                batch_winners = [n for n, (_, batch) in enumerate(answers) if batch == "won"]
                assert len(batch_winners) == 1, (round_, answers)
                assert {v["by"] for k, v in store.items() if k.startswith(f"b{round_}-")} == \
                    {str(batch_winners[0])}
            assert len(store) == rounds * 51
            store.clear()
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(30)
    assert [p.returncode for p in procs] == [0] * racers


def test_threads_share_one_store(redis_store: mmapkv.RedisStore) -> None:
    """Eight threads on one RedisStore (redis-py's pool): every create lands once, every
    read sees what its thread wrote."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(200):
                redis_store.create(f"t{t}-{i}", {"t": t, "i": i})
                assert redis_store.read(f"t{t}-{i}") == {"t": t, "i": i}
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(redis_store) == 1600


def test_a_forked_child_may_use_its_parents_store(redis_store: mmapkv.RedisStore) -> None:
    """Unlike Store (one process), a RedisStore goes on working in a forked child: redis-py's
    pool opens the child's own connections (docs/scaling.md)."""
    redis_store.create("parent", {"v": 1})
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            redis_store.create("child", {"pid": os.getpid()})
            code = 0 if redis_store.read("parent") == {"v": 1} else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_store.read("child") == {"pid": pid} and redis_store.read("parent") == {"v": 1}


def test_a_replacing_restore_at_maxmemory_is_store_full_not_key_exists(own_server: LocalRedis) -> None:
    """At its maxmemory the server refuses the batch script before it looks at a key;
    ``_write_batch`` asks which key is stored only for a batch that refuses stored keys
    ("check").  A restore with replace=True over a stored key is refused for room
    (StoreFullError), never KeyExistsError: the key being there is no error for it."""
    import redis

    store = mmapkv.RedisStore(own_server.url, namespace="oom")
    client = redis.Redis.from_url(own_server.url)
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 2_000_000)
        client.config_set("maxmemory-policy", "noeviction")
        written = 0
        with pytest.raises(mmapkv.StoreFullError):
            while written < 10_000:
                store.create(f"k{written}", {"pad": "x" * 10_000})
                written += 1
        with pytest.raises(mmapkv.KeyExistsError, match="'k1'"):  # without replace: as Store says
            store.restore_entries([("new", {}, None), ("k1", {}, None)])
        with pytest.raises(mmapkv.StoreFullError):
            store.restore_entries([("new", {"pad": "z" * 10_000}, None), ("k1", {}, None)], replace=True)
        assert "new" not in store and store.read("k1") == {"pad": "x" * 10_000}
    finally:
        client.close()
        store.close()


def test_a_decoding_client_reading_a_binary_value_is_corrupt_store(own_server: LocalRedis) -> None:
    """Through a ``decode_responses=True`` client, a value under the namespace that is not
    UTF-8 makes redis-py raise UnicodeDecodeError; ``_server`` turns it into
    CorruptStoreError (an MmapKVError naming the cause), for every call that reads it.
    The scripts' replies come as bytes, which the decoder refuses as not UTF-8; ``pop``
    and ``popitem`` put the value back."""
    import redis

    raw = redis.Redis.from_url(own_server.url)
    client = redis.Redis.from_url(own_server.url, decode_responses=True)
    store = mmapkv.RedisStore(client, namespace="bin")
    try:
        raw.set(b"bin:k", b'{"v":"\xff"}', ex=1000)
        for call in (lambda: store.read("k"), lambda: store.get("k"), lambda: list(store.items_with_expiry(["k"])),
                     lambda: store.pop("k"), store.popitem):
            with pytest.raises(mmapkv.CorruptStoreError, match="not (valid )?UTF-8"):
                call()
            assert raw.get(b"bin:k") == b'{"v":"\xff"}' and 990 < raw.ttl(b"bin:k") <= 1000
    finally:
        store.close()
        client.close()
        raw.close()


def test_text_nested_past_pythons_stack_is_corrupt_store_and_pop_keeps_it(own_server: LocalRedis) -> None:
    """Another program's value nested 200,000 deep, with a run of 19 digits (which sends
    it to stdlib ``json``): ``RecursionError`` came out bare, and ``pop`` had deleted the
    value first.  Now CorruptStoreError from every read, and the value stays."""
    import redis

    raw = redis.Redis.from_url(own_server.url)
    store = mmapkv.RedisStore(own_server.url, namespace="deep")
    text = b'{"a":' + b"[" * 200_000 + b"1234567890123456789" + b"]" * 200_000 + b"}"
    try:
        raw.set(b"deep:k", text)
        for call in (lambda: store.read("k"), lambda: store.get("k"), lambda: store.pop("k"), store.popitem):
            with pytest.raises(mmapkv.CorruptStoreError, match="nested too deep"):
                call()
            assert raw.get(b"deep:k") == text
    finally:
        store.close()
        raw.delete(b"deep:k")
        raw.close()


def test_items_with_expiry_keeps_the_milliseconds(own_server: LocalRedis) -> None:
    """``_READ_WITH_EXPIRY`` reads PEXPIRETIME (unix milliseconds): the expiry comes back
    to the millisecond, as ``restore_entries`` wrote it with PXAT, not cut to the second
    (a copy from Redis to Redis would move every expiry earlier by up to a second)."""
    store = mmapkv.RedisStore(own_server.url, namespace="ms")
    try:
        at = round(time.time() + 1000.0) + 0.25
        assert store.restore_entries([("k", {"v": 1}, at)]) == 1
        assert list(store.items_with_expiry(["k"])) == [("k", {"v": 1}, at)]
        assert [entry[2] for entry in store.items_with_expiry()] == [at]
    finally:
        store.close()


def _ctrl_c_in(function: str, line_text: str) -> Any:
    """A tracer raising KeyboardInterrupt at the first line of redis-py's *function* that
    holds *line_text* ("" for its first line): Ctrl-C exactly there."""
    import linecache

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_name != function or "redis" not in frame.f_code.co_filename:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and line_text in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
                raise KeyboardInterrupt
            return local
        return local
    return tracer


@pytest.mark.parametrize("where", ["between a command's send and its reply", "inside a connect"])
def test_ctrl_c_never_leaves_a_connection_that_reads_another_calls_reply(
        redis_store: mmapkv.RedisStore, where: str) -> None:
    """A Ctrl-C after redis-py sent a command and before it read the reply put the
    connection back in the pool with the reply unread: every later call read the reply of
    the call before it (``read("b")`` answered a's value, a ``create`` that wrote said
    ``KeyExistsError``), for good.  One inside a connect, after its socket and before its
    handshake, left a connection whose every read raised ``AttributeError`` (a review)."""
    redis_store.set("a", {"name": "a"})
    redis_store.set("b", {"name": "b"})
    if where == "inside a connect":
        redis_store._client.connection_pool.disconnect()  # type: ignore[union-attr]
        tracer = _ctrl_c_in("on_connect_check_health", "")
    else:
        tracer = _ctrl_c_in("_send_command_parse_response", "return self.parse_response")
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            redis_store.read("a")
    finally:
        sys.settrace(None)
    assert redis_store.read("b") == {"name": "b"}
    assert redis_store.read("a") == {"name": "a"}
    redis_store.create("c", {"name": "c"})
    assert redis_store.get("missing") is None and redis_store.read("c") == {"name": "c"}


def test_more_threads_than_redis_pys_default_pool(redis_store: mmapkv.RedisStore) -> None:
    """redis-py 8's pool refuses a 101st connection: 200 threads reading at once got
    ``StoreUnavailableError: ... Too many connections`` from a server that was fine."""
    redis_store.set("k", {"n": 1})
    start, errors = threading.Barrier(200), []

    def work() -> None:
        start.wait()
        for _ in range(5):
            try:
                assert redis_store.read("k") == {"n": 1}
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


def test_a_child_forked_while_a_parent_thread_holds_the_pool_lock_can_use_the_store(
        redis_store: mmapkv.RedisStore) -> None:
    """redis-py resets a pool in a forked child under the pool's lock, inherited locked if
    a thread of the parent held it at the fork: the child's first call waited forever (1
    fork in 150 with four reading threads, a review).  A child now gets a new pool."""
    redis_store.set("a", {"n": 1})
    pool = redis_store._client.connection_pool  # type: ignore[union-attr]
    held, forked = threading.Event(), threading.Event()

    def hold() -> None:
        with pool._lock:
            held.set()
            forked.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            signal.alarm(20)
            code = 0 if redis_store.read("a") == {"n": 1} else 2
        finally:
            os._exit(code)
    forked.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not use the store"


@pytest.mark.parametrize("query", ["?single_connection_client=true", "?ssl_cert_reqs=none"])
def test_a_url_option_the_connection_does_not_take_is_a_bad_url(redis_server: LocalRedis, query: str) -> None:
    """redis-py passes such an option to the connection's constructor, at the first
    connect: a bare TypeError came out of the RedisStore's."""
    with pytest.raises(mmapkv.InvalidArgumentError, match="bad Redis URL .*unexpected keyword"):
        mmapkv.RedisStore(redis_server.url + query, namespace=new_namespace())


def test_ctrl_c_with_a_client_of_the_callers_drops_its_idle_connections(redis_server: LocalRedis) -> None:
    """A client given to the constructor counts no owed replies (its connection class is
    the caller's): after a Ctrl-C between a command and its reply, the pool's idle
    connections are dropped, the one owing a reply with them (scaling.md)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    store = mmapkv.RedisStore(client, namespace=new_namespace())
    store.set("a", {"name": "a"})
    store.set("b", {"name": "b"})
    sys.settrace(_ctrl_c_in("_send_command_parse_response", "return self.parse_response"))
    try:
        with pytest.raises(KeyboardInterrupt):
            store.read("a")
    finally:
        sys.settrace(None)
    assert store.read("b") == {"name": "b"} and store.read("a") == {"name": "a"}
    store.clear()
    store.close()
    client.close()
