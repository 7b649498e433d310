"""Issue 11: overwrite, TTL control and the whole ``MutableMapping`` interface, with
Python's ``dict`` as the model of every mapping method; on ``Store`` and on ``RedisStore``
(issue 14), except the tests of what only a file has."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import ItemsView, Iterator, MutableMapping, ValuesView
from typing import Any

import pytest

import mmapkv
from conftest import FakeClock, age_namespace, expired_error
from mmapkv import InvalidArgumentError, InvalidTTLError, KeyNotFoundError

MISSING = object()


@pytest.fixture
def file_store(tmp_path: Any, clock: FakeClock) -> Iterator[mmapkv.Store]:
    with mmapkv.Store(os.path.join(tmp_path, "map.mmapkv"), clock=clock) as s:
        yield s


@pytest.fixture(params=["store", "redis"])
def store(request: Any, tmp_path: Any, clock: FakeClock) -> Iterator[Any]:
    """A ``Store`` on a fresh file, or a ``RedisStore`` on a fresh namespace (where moving
    ``clock`` ages the namespace's TTLs on the server)."""
    if request.param == "store":
        yield request.getfixturevalue("file_store")
        return
    redis_store = request.getfixturevalue("redis_store")
    client = request.getfixturevalue("redis_client")
    clock.listeners.append(lambda seconds: age_namespace(client, redis_store.namespace, seconds))
    yield redis_store


def outcome(call: Any) -> Any:
    """What a call returned, or the built-in exception class it raised."""
    try:
        return ("ok", call())
    except KeyError:
        return ("KeyError", None)


def test_store_is_a_mutable_mapping(store: Any) -> None:
    assert isinstance(store, MutableMapping)
    assert isinstance(store.items(), ItemsView) and isinstance(store.values(), ValuesView)
    with pytest.raises(TypeError):
        hash(store)  # compares by content, as dict does: not hashable


@pytest.mark.parametrize("seed", range(4))
def test_every_mapping_method_behaves_as_dict_does(store: Any, seed: int) -> None:
    """A seeded walk of every method, on the store and on a dict side by side; after each
    step the two agree on every key and value (and on ==)."""
    rng = random.Random(seed)
    model: dict[str, dict[str, Any]] = {}
    keys = [f"k{i}" for i in range(12)] + ["ключ", "🔑"]

    def value() -> dict[str, Any]:
        return {"n": rng.randrange(1000), "pad": "é" * rng.choice([0, 10, 300, 3000])}

    for step in range(300):
        key, v = rng.choice(keys), value()
        op = rng.choice(["get", "getitem", "setitem", "delitem", "pop", "pop-default", "popitem",
                         "setdefault", "update-map", "update-pairs", "update-kwargs", "in",
                         "clear" if step % 60 == 59 else "get"])
        where = f"step {step}: {op} {key!r}"
        if op == "get":
            assert store.get(key) == model.get(key), where
            assert store.get(key, {"d": 1}) == model.get(key, {"d": 1}), where
        elif op == "getitem":
            assert outcome(lambda: store[key]) == outcome(lambda: model[key]), where
        elif op == "setitem":
            store[key] = v
            model[key] = v
        elif op == "delitem":
            def delete(m: Any) -> None:
                del m[key]
            assert outcome(lambda: delete(store)) == outcome(lambda: delete(model)), where
        elif op == "pop":
            assert outcome(lambda: store.pop(key)) == outcome(lambda: model.pop(key)), where
        elif op == "pop-default":
            assert store.pop(key, None) == model.pop(key, None), where
        elif op == "popitem":
            got = outcome(store.popitem)
            if model:
                assert got[0] == "ok" and model.pop(got[1][0]) == got[1][1], where
            else:
                assert got == ("KeyError", None), where
        elif op == "setdefault":
            assert store.setdefault(key, v) == model.setdefault(key, v), where
        elif op == "update-map":
            batch = {rng.choice(keys): value() for _ in range(3)}
            store.update(batch)
            model.update(batch)
        elif op == "update-pairs":
            pairs = [(rng.choice(keys), value()) for _ in range(3)]  # a repeated key: the last wins
            store.update(pairs)
            model.update(pairs)
        elif op == "update-kwargs":
            store.update({key: v}, extra=value())
            model.update({key: v}, extra=store["extra"])
        elif op == "in":
            assert (key in store) == (key in model), where
        else:
            store.clear()
            model.clear()
        assert len(store) == len(model), where
        assert sorted(store) == sorted(model) and sorted(store.keys()) == sorted(model), where
        assert dict(store.items()) == model and store == model, where
        assert sorted(map(str, store.values())) == sorted(map(str, model.values())), where
    assert store.verify() == []


def test_set_is_an_upsert_that_replaces_the_ttl(store: Any, clock: FakeClock) -> None:
    store.set("k", {"v": 1}, ttl=10)
    assert store.ttl("k") == 10
    store.set("k", {"v": 2})  # ttl=None: never expires now
    assert store.read("k") == {"v": 2} and store.ttl("k") is None
    store.set("k", {"v": 3}, ttl=5)
    clock.advance(5)
    with pytest.raises(KeyNotFoundError) as info:
        store.read("k")
    assert type(info.value) is expired_error(store)
    store.set("k", {"v": 4})  # over an expired key
    assert store.read("k") == {"v": 4} and len(store) == 1 and store.verify() == []


def test_replace_only_a_live_key_and_keeps_its_ttl(store: Any, clock: FakeClock) -> None:
    with pytest.raises(KeyNotFoundError):
        store.replace("k", {"v": 1})
    store.create("k", {"v": 1}, ttl=100)
    clock.advance(40)
    store.replace("k", {"v": 2})
    assert store.read("k") == {"v": 2} and store.ttl("k") == 60  # the same expiry
    store.replace("k", {"v": 3}, ttl=5)
    assert store.ttl("k") == 5
    store.replace("k", {"v": 4}, ttl=None)
    assert store.ttl("k") is None
    store.expire("k", 1)
    clock.advance(1)
    with pytest.raises(KeyNotFoundError) as info:
        store.replace("k", {"v": 5})
    assert type(info.value) is expired_error(store)
    assert "k" not in store


def test_ttl_expire_persist(store: Any, clock: FakeClock) -> None:
    store.create("k", {"v": 1})
    assert store.ttl("k") is None
    assert store.persist("k") is False
    store.expire("k", 30)
    clock.advance(10.5)
    assert store.ttl("k") == 20  # rounded up: never 0 while the key lives
    assert store.persist("k") is True and store.ttl("k") is None
    store.expire("k", 2)
    clock.advance(2)
    for call in (lambda: store.ttl("k"), lambda: store.expire("k", 5), lambda: store.persist("k")):
        with pytest.raises(KeyNotFoundError) as info:
            call()
        assert type(info.value) is expired_error(store)
    for call in (lambda: store.ttl("no"), lambda: store.expire("no", 5), lambda: store.persist("no")):
        with pytest.raises(KeyNotFoundError):
            call()
    store.create("j", {"v": 1})
    for bad in (None, 0, -1, 1.5, True, "5"):
        with pytest.raises(InvalidTTLError):
            store.expire("j", bad)
    assert store.ttl("j") is None


def test_ttls_survive_reopen(tmp_path: Any, clock: FakeClock) -> None:
    path = os.path.join(tmp_path, "ttl.mmapkv")
    with mmapkv.Store(path, clock=clock) as s:
        s.set("a", {"v": 1}, ttl=100)
        s.create("b", {"v": 2}, ttl=50)
        s.persist("b")
        s.create("c", {"v": 3})
        s.expire("c", 70)
    clock.advance(20)
    with mmapkv.Store(path, clock=clock) as s:
        assert (s.ttl("a"), s.ttl("b"), s.ttl("c")) == (80, None, 50)
        assert s.verify() == []


def test_update_is_all_or_nothing(store: Any) -> None:
    store.update({"a": {"v": 1}, "b": {"v": 2}})
    before = dict(store.items())
    size = os.path.getsize(store.path) if isinstance(store, mmapkv.Store) else 0
    bad: list[Any] = [{"a": {"v": 9}, "c": {"v": 3}, "d": {"nan": float("nan")}},   # a bad value
                      [("a", {"v": 9}), ("x",)],                                      # a bad pair
                      [("a", {"v": 9}), (1, {"v": 1})],                               # a bad key
                      {"a": {"v": 9}, "big": {"x": "y" * 20_000}}]                    # too large
    for items in bad:
        with pytest.raises(mmapkv.MmapKVError):
            store.update(items)
        assert dict(store.items()) == before
        if isinstance(store, mmapkv.Store):
            assert os.path.getsize(store.path) == size
    with pytest.raises(InvalidArgumentError):
        store.update(42)
    assert store.verify() == []


def test_batch_create_takes_entry_dicts(store: Any, clock: FakeClock) -> None:
    store.batch_create([{"key": "a", "value": {"v": 1}, "ttl": 10}, {"key": "b", "value": {"v": 2}}])
    assert store.ttl("a") == 10 and store.ttl("b") is None and store.read("b") == {"v": 2}
    with pytest.raises(InvalidArgumentError):
        store.batch_create([{"key": "c", "value": {"v": 3}, "extra": 1}])
    with pytest.raises(mmapkv.KeyExistsError):  # create-only, as before
        store.batch_create([{"key": "a", "value": {"v": 3}}])
    assert sorted(store) == ["a", "b"]


def test_clear_survives_reopen_and_crash(tmp_path: Any, clock: FakeClock) -> None:
    path = os.path.join(tmp_path, "clear.mmapkv")
    with mmapkv.Store(path, clock=clock) as s:
        s.update({f"k{i}": {"i": i} for i in range(500)})
        s.clear()
        assert len(s) == 0 and list(s) == [] and s.verify() == []
        s["after"] = {"v": 1}
        crashed = os.path.join(tmp_path, "crashed.mmapkv")
        with open(path, "rb") as src, open(crashed, "wb") as dst:  # a kill -9 right now
            dst.write(src.read())
    for p in (path, crashed):
        with mmapkv.Store(p, clock=clock) as s:
            assert dict(s.items()) == {"after": {"v": 1}} and s.verify() == []


def test_readers_never_see_a_key_missing_during_sets(store: Any) -> None:
    """A reader thread sees the old value or the new one while another thread
    overwrites the key (and others, growing the file): never a missing key."""
    store.set("hot", {"n": 0})
    stop = threading.Event()
    seen: list[Any] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(store.read("hot")["n"])
            except KeyError as exc:  # the failure this test exists to catch
                seen.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 3000):
            store.set("hot", {"n": n, "pad": "x" * (n % 5000)})
            if n % 3 == 0:
                store.set(f"other{n}", {"n": n})
    finally:
        stop.set()
        thread.join()
    assert not [s for s in seen if isinstance(s, Exception)]
    assert seen == sorted(seen)  # and never an older value after a newer one
    assert store.read("hot")["n"] == 2999 and store.verify() == []


def test_setdefault_of_a_stored_key_does_not_look_at_the_default(store: Any) -> None:
    """As dict.setdefault: the default counts only for a missing key.  A stored key's value
    came back only with a default that could have been stored (None, a list and a NaN were
    refused for a key that needed none of them)."""
    store["a"] = {"v": 1}
    for default in [None, [], {"x": float("nan")}, {"v": 2}]:
        assert store.setdefault("a", default) == {"v": 1}
    assert store.setdefault("a") == {"v": 1}
    assert dict(store.items()) == {"a": {"v": 1}}
    with pytest.raises(mmapkv.InvalidValueError):
        store.setdefault("b", [])  # missing: the default is checked, nothing written
    assert "b" not in store


def test_in_items_answers_like_dict(store: Any) -> None:
    """ItemsView's own `in` unpacked the probe (TypeError, ValueError for anything but a
    pair); dict's says False.  A key that could never be stored raises, as `in` does."""
    store["a"] = {"v": 1}
    assert ("a", {"v": 1}) in store.items()
    for probe in [5, ("a",), ("a", {"v": 1}, 0), ["a", {"v": 1}], ("a", {"v": 2}), ("b", {"v": 1})]:
        assert probe not in store.items()
    with pytest.raises(mmapkv.InvalidKeyError):
        (1, {"v": 1}) in store.items()


class TickingClock:
    """A clock one second later at every reading: a key with a TTL expires between being
    listed and being read, the race a real clock loses now and then."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_in_values_skips_a_key_that_expires_meanwhile(tmp_path: Any) -> None:
    """ValuesView's own `in` read each listed key with [], which raised KeyExpiredError
    for one that expired after the listing (and KeyNotFoundError for one deleted)."""
    with mmapkv.Store(os.path.join(tmp_path, "s"), clock=TickingClock()) as store:
        store["stays"] = {"v": 0}
        store.set("goes", {"v": 1}, ttl=2)
        assert {"v": 2} not in store.values()
        store.set("goes", {"v": 1}, ttl=2)
        assert {"v": 0} in store.values()


def test_expire_refusing_a_non_int_does_not_offer_none(store: Any) -> None:
    """expire() refuses None (persist() removes a TTL), so its message must not offer it."""
    store["a"] = {"v": 1}
    with pytest.raises(InvalidTTLError) as caught:
        store.expire("a", 1.5)
    assert "must be an int number of seconds" in str(caught.value) and "None" not in str(caught.value)
    with pytest.raises(InvalidTTLError, match="must be None or an int"):
        store.set("a", {"v": 2}, ttl=1.5)


def test_setdefault_without_a_default_is_refused(store: Any) -> None:
    """dict.setdefault(k) stores None; a store holds JSON objects only: a clear refusal,
    nothing written."""
    with pytest.raises(mmapkv.InvalidValueError):
        store.setdefault("k")
    assert "k" not in store and len(store) == 0
