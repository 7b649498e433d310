"""API conformance: every call, error, limit and TTL rule of issue 2, in the four
``make_store`` configurations of ``Store`` (fresh/reopened x 1 GiB/small ceiling) and on
``RedisStore`` (issue 14: the two backends cannot drift apart).  Tests of what only a file
has (its size, its ceiling, reopening it) use ``make_file_store``."""

from __future__ import annotations

import decimal
import json
import sys
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol

import pytest

import mmapkv
from mmapkv import (
    CorruptStoreError,
    FormatVersionError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    KeyExpiredError,
    KeyNotFoundError,
    MmapKVError,
    StoreClosedError,
    StoreFullError,
    StoreLockedError,
    StoreUnavailableError,
    ValueTooLargeError,
)
from mmapkv.codec import MAX_DEPTH, MAX_TIME
from mmapkv.engine import Engine
from mmapkv import table as table_module
from mmapkv.format import CLASS_SIZES, KIND_SEGMENT, SLOT_SIZE, Geometry

from conftest import expired_error, slot_of, where

MakeStore = Callable[..., Any]  # a Store or a RedisStore
MakeFileStore = Callable[..., mmapkv.Store]


class FakeClock(Protocol):
    """The shape of conftest's ``clock`` fixture (not imported: conftest is not a module)."""

    now: float

    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4  # the same ceiling as conftest's "small"

LIMIT = 16_384
EMPTY_VALUE_BYTES = len(b'{"k":""}')  # == 8


def json_size(value: dict[str, Any]) -> int:
    """The compact UTF-8 JSON length the issue defines, computed without the library."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def sized_value(size: int, ch: str = "x") -> dict[str, Any]:
    """A value ``{"k": ...}`` whose compact UTF-8 JSON is exactly *size* bytes, built
    mostly from *ch* (multi-byte characters allowed; ASCII 'x' pads the remainder)."""
    width = len(json.dumps(ch, ensure_ascii=False).encode("utf-8")) - 2
    count, rest = divmod(size - EMPTY_VALUE_BYTES, width)
    value = {"k": ch * count + "x" * rest}
    assert json_size(value) == size
    return value


def reopen(store: Any, make_store: MakeStore, **kwargs: Any) -> Any:
    """Close *store* cleanly and open the same file (or namespace) again (same clock, same
    config)."""
    store.close()
    return make_store(**kwargs)


def assert_absent(store: Any, key: str) -> None:
    """*key* is not visible through any read path."""
    assert key not in store
    assert key not in store.keys()
    assert store.get(key) is None
    with pytest.raises(KeyNotFoundError):
        store.read(key)


# --------------------------------------------------------------------- basics

def test_create_read_roundtrip(make_store: MakeStore) -> None:
    """create then read returns an equal value; the key is in/len/keys."""
    store = make_store()
    value = {"name": "Ada", "langs": ["en", "fr"], "n": 3, "f": 1.5, "ok": True, "none": None}
    store.create("user:1", value)
    assert store.read("user:1") == value
    assert "user:1" in store
    assert len(store) == 1
    assert store.keys() == ["user:1"]
    assert list(store) == ["user:1"]
    assert store.verify() == []


def test_read_returns_new_dict_each_call(make_store: MakeStore) -> None:
    """read returns a fresh, equal object every time; mutating it changes nothing stored."""
    store = make_store()
    value = {"list": [1, 2, {"x": "y"}], "inner": {"a": 1}}
    store.create("k", value)
    first, second = store.read("k"), store.read("k")
    assert first == second == value
    assert first is not second
    assert first["list"] is not second["list"]
    assert first["inner"] is not second["inner"]
    first["inner"]["a"] = 999
    first["list"].append("extra")
    value["inner"]["a"] = 42  # the caller's object is not shared either
    assert store.read("k") == {"list": [1, 2, {"x": "y"}], "inner": {"a": 1}}


def test_create_existing_key_raises_and_keeps_old_value(make_store: MakeStore) -> None:
    """A second create of a live key is KeyExistsError naming the key; the first value stays."""
    store = make_store()
    store.create("dup", {"v": 1})
    with pytest.raises(KeyExistsError) as info:
        store.create("dup", {"v": 2})
    assert "dup" in str(info.value)
    assert where(store) in str(info.value)
    assert store.read("dup") == {"v": 1}
    assert len(store) == 1
    assert store.verify() == []


def test_delete(make_store: MakeStore) -> None:
    """delete removes the key everywhere; a second delete is KeyNotFoundError; the name
    can be created again with a new value."""
    store = make_store()
    store.create("a", {"v": 1})
    store.create("b", {"v": 2})
    store.delete("a")
    assert_absent(store, "a")
    assert len(store) == 1
    assert store.keys() == ["b"]
    with pytest.raises(KeyNotFoundError) as info:
        store.delete("a")
    assert not isinstance(info.value, KeyExpiredError)
    assert "'a'" in str(info.value)
    store.create("a", {"v": 3})
    assert store.read("a") == {"v": 3}
    assert store.verify() == []


def test_read_missing_key(make_store: MakeStore) -> None:
    """read of a never-created key is KeyNotFoundError (a KeyError) naming the key."""
    store = make_store()
    with pytest.raises(KeyError) as info:
        store.read("ghost")
    assert isinstance(info.value, KeyNotFoundError)
    assert not isinstance(info.value, KeyExpiredError)
    assert "ghost" in str(info.value)
    assert str(info.value) == info.value.args[0]  # not KeyError's quoted repr


def test_get(make_store: MakeStore) -> None:
    """get returns the value, or the default (None unless given) for a missing key."""
    store = make_store()
    store.create("here", {"v": 1})
    assert store.get("here") == {"v": 1}
    assert store.get("here", {"d": 0}) == {"v": 1}
    assert store.get("missing") is None
    sentinel = object()
    assert store.get("missing", sentinel) is sentinel
    with pytest.raises(InvalidKeyError):
        store.get("")  # a bad key is still an error, not the default


def test_get_miss_raises_nothing_inside(make_file_store: MakeStore, clock: FakeClock) -> None:
    """Issue 13: a ``get`` miss builds no exception, not even one caught inside it.  Every
    frame the call enters is traced, and an "exception" event is what a raise in any of
    them gives; the same trace sees the one that ``read`` raises, so it can fail."""
    store = make_file_store()
    store.create("lives", {"v": 1}, ttl=10)
    store.create("other", {"v": 2})
    raised: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception":
            raised.append(f"{arg[0].__name__} in {frame.f_code.co_name}")
        return tracer

    def traced(call: Callable[[], Any]) -> list[str]:
        raised.clear()
        sys.settrace(tracer)
        try:
            call()
        except KeyNotFoundError:
            pass
        finally:
            sys.settrace(None)
        return list(raised)

    assert traced(lambda: store.get("missing")) == []
    assert traced(lambda: store.get("lives")) == []
    clock.advance(10)
    assert traced(lambda: store.get("lives")) == []  # expired: the default, no exception
    assert traced(lambda: store.read("missing"))[0].startswith("KeyNotFoundError in ")
    assert traced(lambda: store.read("lives"))[0].startswith("KeyExpiredError")


def test_read_that_found_nothing_stays_a_miss(make_file_store: MakeStore, clock: FakeClock) -> None:
    """``read`` looks a second time only to name its error.  A key a writer stores between
    the two looks does not turn the miss into a value (the read happened at its first
    look); an expired key is named as expired."""
    store = make_file_store()
    store.create("old", {"v": 0}, ttl=5)
    clock.advance(5)
    looked = store.get

    def writer_lands_after_the_look(key: str, default: Any = None) -> Any:
        value = looked(key, default)
        if key == "late":
            store.create(key, {"v": 1})
        return value

    store.get = writer_lands_after_the_look
    with pytest.raises(KeyNotFoundError) as info:
        store.read("late")
    assert type(info.value) is KeyNotFoundError and "'late'" in str(info.value)
    with pytest.raises(KeyExpiredError):
        store.read("old")
    del store.get
    assert store.read("late") == {"v": 1}


def test_len_keys_in_track_creates_and_deletes(make_store: MakeStore) -> None:
    """len, keys and ``in`` agree with a model over a mix of creates and deletes."""
    store = make_store()
    model: dict[str, dict[str, Any]] = {}
    for i in range(30):
        key = f"key-{i}"
        store.create(key, {"i": i})
        model[key] = {"i": i}
        if i % 3 == 2:
            victim = f"key-{i - 1}"
            store.delete(victim)
            del model[victim]
    assert len(store) == len(model)
    assert sorted(store.keys()) == sorted(model)
    assert all(isinstance(k, str) for k in store.keys())
    for i in range(30):
        assert (f"key-{i}" in store) == (f"key-{i}" in model)
    for key, value in model.items():
        assert store.read(key) == value
    assert store.verify() == []


def test_keys_is_a_snapshot(make_store: MakeStore) -> None:
    """keys() returns a list that later writes do not change."""
    store = make_store()
    store.create("a", {})
    keys = store.keys()
    store.create("b", {})
    assert keys == ["a"]
    assert sorted(store.keys()) == ["a", "b"]


def test_similar_keys_are_distinct(make_store: MakeStore) -> None:
    """Prefixes, NUL characters and case make different keys."""
    store = make_store()
    names = ["ab", "a", "abc", "a\x00", "a\x00b", "AB", "é", "e\u0301"]
    for i, name in enumerate(names):
        store.create(name, {"i": i})
    for i, name in enumerate(names):
        assert store.read(name) == {"i": i}
    assert sorted(store.keys()) == sorted(names)
    store.delete("a")
    assert "a" not in store and "ab" in store and "a\x00" in store
    assert store.verify() == []


def test_data_survives_reopen(make_store: MakeStore) -> None:
    """Values, deletions and counts are the same after a clean close and reopen."""
    store = make_store()
    for i in range(20):
        store.create(f"k{i}", {"i": i, "s": "é" * i})
    for i in range(0, 20, 4):
        store.delete(f"k{i}")
    store = reopen(store, make_store)
    if isinstance(store, mmapkv.Store):
        assert store._engine is not None and store._engine.was_clean
    assert len(store) == 15
    for i in range(20):
        if i % 4 == 0:
            assert_absent(store, f"k{i}")
        else:
            assert store.read(f"k{i}") == {"i": i, "s": "é" * i}
    assert store.verify() == []


def test_stats(make_file_store: MakeFileStore) -> None:
    """stats() is a dataclass whose sizes and counts match the file and the keys."""
    import dataclasses
    import os

    store = make_file_store()
    store.create("a", {"v": 1})
    store.create("b", {"v": 2}, ttl=100)
    stats = store.stats()
    assert dataclasses.is_dataclass(stats)
    assert stats.path == store.path
    assert stats.file_size == os.path.getsize(store.path)
    assert stats.live_keys == 2 == len(store)
    assert stats.keys_with_ttl == 1
    assert stats.capacity >= 2
    assert stats.max_size in (SMALL_MAX_SIZE, mmapkv.MAX_FILE_SIZE)
    assert stats.max_value_bytes == LIMIT
    assert stats.slot_size == 20_480
    assert stats.format_version == 3
    assert stats.capacity >= stats.free_slots + 2  # a table segment and a record slot
    assert stats.table_segments >= 1 and stats.table_capacity == 2048 * stats.table_segments
    assert stats.load_factor == 2 / stats.table_capacity


def test_path_is_absolute_and_pathlike_accepted(tmp_path: Any, clock: FakeClock) -> None:
    """Store accepts os.PathLike; .path is the absolute str path of the file."""
    import os

    target = tmp_path / "p.mmapkv"
    with mmapkv.Store(target, clock=clock) as store:
        assert store.path == str(target)
        assert os.path.isabs(store.path)
        store.create("x", {})
    assert os.path.exists(target)


@pytest.mark.parametrize("clock_arg", [None, 5, "time"])
def test_clock_must_be_callable(tmp_path: Any, clock_arg: Any) -> None:
    """A clock that cannot be called is InvalidArgumentError at construction."""
    import os

    with pytest.raises(InvalidArgumentError):
        mmapkv.Store(os.path.join(tmp_path, "c.mmapkv"), clock=clock_arg)


# --------------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "cls, bases",
    [
        (KeyExistsError, (MmapKVError,)),
        (KeyNotFoundError, (MmapKVError, KeyError)),
        (KeyExpiredError, (KeyNotFoundError, KeyError, MmapKVError)),
        (InvalidKeyError, (MmapKVError, ValueError, TypeError)),
        (InvalidValueError, (MmapKVError, ValueError, TypeError)),
        (ValueTooLargeError, (InvalidValueError, ValueError, MmapKVError)),
        (InvalidTTLError, (MmapKVError, ValueError, TypeError)),
        (InvalidArgumentError, (MmapKVError, ValueError, TypeError)),
        (StoreFullError, (MmapKVError,)),
        (StoreLockedError, (MmapKVError, OSError)),
        (StoreUnavailableError, (MmapKVError, OSError)),
        (StoreClosedError, (MmapKVError,)),
        (mmapkv.ReentrantCallError, (MmapKVError, RuntimeError)),
        (CorruptStoreError, (MmapKVError, OSError)),
        (FormatVersionError, (CorruptStoreError, MmapKVError)),
    ],
)
def test_error_hierarchy(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    """Each error is importable from mmapkv and subclasses MmapKVError and its builtin."""
    assert getattr(mmapkv, cls.__name__) is cls
    assert cls.__name__ in mmapkv.__all__
    for base in bases:
        assert issubclass(cls, base), (cls, base)
    assert issubclass(cls, Exception)


def test_closed_store_refuses_everything(make_store: MakeStore) -> None:
    """After close every method raises StoreClosedError naming the path (the server); close
    is idempotent."""
    store = make_store()
    store.create("a", {"v": 1})
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.create("b", {}),
        lambda: store.read("a"),
        lambda: store.get("a"),
        lambda: store.delete("a"),
        lambda: store.batch_create({"c": {}}),
        lambda: "a" in store,
        lambda: len(store),
        lambda: store.keys(),
        lambda: list(store),
        lambda: store.set("a", {}),
        lambda: store.ttl("a"),
        lambda: store.update({"d": {}}),
        lambda: store.clear(),
        lambda: store.stats(),
        lambda: store.verify(),
    ]
    if isinstance(store, mmapkv.Store):
        calls.append(lambda: store.flush())  # RedisStore has none: the server's config decides
    for call in calls:
        with pytest.raises(StoreClosedError) as info:
            call()
        assert where(store) in str(info.value)
    assert where(store)  # the path (the server) stays known


def test_closed_store_refuses_empty_batch(make_store: MakeStore) -> None:
    """Even an empty batch on a closed store raises StoreClosedError, as close() documents."""
    store = make_store()
    store.close()
    with pytest.raises(StoreClosedError):
        store.batch_create([])


def test_context_manager_closes(make_store: MakeStore) -> None:
    """``with Store(...)`` returns the store and closes it on exit, also on an exception."""
    with make_store() as store:
        assert isinstance(store, (mmapkv.Store, mmapkv.RedisStore))
        store.create("a", {"v": 1})
    with pytest.raises(StoreClosedError):
        store.read("a")
    with pytest.raises(RuntimeError):
        with make_store() as again:
            assert again.read("a") == {"v": 1}
            raise RuntimeError("boom")
    with pytest.raises(StoreClosedError):
        again.read("a")
    with make_store() as third:  # the lock was released both times
        assert third.read("a") == {"v": 1}
        assert third.verify() == []


# --------------------------------------------------------------------- keys

@pytest.mark.parametrize("key", ["a", "x" * 32, "𝄞" * 32, "é" * 32, "中" * 32, "a b\tc", "\x00"])
def test_valid_keys(make_store: MakeStore, key: str) -> None:
    """Keys of 1 to 32 code points are accepted, whatever their UTF-8 length (up to 128 B)."""
    store = make_store()
    store.create(key, {"key": key})
    assert store.read(key) == {"key": key}
    assert key in store
    assert store.keys() == [key]
    store.delete(key)
    assert key not in store
    assert store.verify() == []


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("", "32"),
        ("x" * 33, "32"),
        ("𝄞" * 33, "32"),
        ("\ud800", "surrogate"),
        ("ok\udfffok", "surrogate"),
        (7, "int"),
        (b"bytes", "bytes"),
        (None, "NoneType"),
        (("a",), "tuple"),
    ],
)
def test_invalid_keys(make_store: MakeStore, key: Any, fragment: str) -> None:
    """Every key-taking method rejects a bad key with InvalidKeyError (ValueError and
    TypeError) whose message names the limit or the problem; nothing is written."""
    store = make_store()
    calls: list[Callable[[], object]] = [
        lambda: store.create(key, {"v": 1}),
        lambda: store.read(key),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: key in store,
        lambda: store.batch_create([(key, {"v": 1})]),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
        assert fragment in str(info.value)
    assert len(store) == 0
    assert store.verify() == []


def test_too_long_key_message_names_key(make_store: MakeStore) -> None:
    """The message for a 33-character key shows the key and the 32-character limit."""
    store = make_store()
    with pytest.raises(InvalidKeyError) as info:
        store.create("k" * 33, {})
    assert "k" * 33 in str(info.value) and "32" in str(info.value) and "33" in str(info.value)


# --------------------------------------------------------------------- values

@pytest.mark.parametrize("ch", ["x", "é", "中", "😀", '"', "\n"])
def test_value_size_limit_exact(make_store: MakeStore, ch: str) -> None:
    """16,384 bytes of compact UTF-8 JSON is accepted and read back; 16,385 is
    ValueTooLargeError naming the limit; escapes and multi-byte characters count as bytes."""
    store = make_store()
    at_limit = sized_value(LIMIT, ch)
    store.create("at", at_limit)
    assert store.read("at") == at_limit
    over = sized_value(LIMIT + 1, ch)
    with pytest.raises(ValueTooLargeError) as info:
        store.create("over", over)
    assert isinstance(info.value, InvalidValueError) and isinstance(info.value, ValueError)
    assert "16,384" in str(info.value) or "16384" in str(info.value)
    assert "over" not in store
    assert len(store) == 1
    assert store.verify() == []


def test_value_size_limit_with_big_integer(make_store: MakeStore) -> None:
    """The limit is the same for values that need the stdlib codec (ints beyond 64 bits)."""
    store = make_store()
    for size, ok in ((LIMIT, True), (LIMIT + 1, False)):
        value: dict[str, Any] = {"n": 2**70, "k": ""}
        value["k"] = "x" * (size - json_size(value))
        assert json_size(value) == size
        if ok:
            store.create("big", value)
            assert store.read("big") == value
        else:
            with pytest.raises(ValueTooLargeError):
                store.create("big2", value)
    assert len(store) == 1
    assert store.verify() == []


def test_empty_value(make_store: MakeStore) -> None:
    """The empty object ``{}`` is a valid value."""
    store = make_store()
    store.create("e", {})
    assert store.read("e") == {}
    assert store.verify() == []


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"x": float("nan")}, "nan"),
        ({"x": float("inf")}, "inf"),
        ({"x": [1, float("-inf")]}, "inf"),
        ({1: "int key"}, "key"),
        ({"ok": {(1, 2): "tuple key"}}, "key"),
        ({None: 1}, "key"),
        ({"x": {1, 2}}, "set"),
        ({"x": b"bytes"}, "bytes"),
        ({"x": bytearray(b"b")}, "bytearray"),
        ({"x": object()}, "object"),
        ({"x": uuid.UUID(int=5)}, "UUID"),
        ({"x": decimal.Decimal("1.5")}, "Decimal"),
        ({"x": 1j}, "complex"),
        ({"x": "\ud800"}, "Unicode"),
        ({"\udc00": 1}, "Unicode"),
        ({"x": "\ud800", "n": 2**70}, "Unicode"),
        ([1, 2], "dict"),
        ("{}", "dict"),
        (None, "dict"),
    ],
)
def test_invalid_values(make_store: MakeStore, value: Any, fragment: str) -> None:
    """Non-JSON values are InvalidValueError (ValueError and TypeError) and write nothing."""
    store = make_store()
    with pytest.raises(InvalidValueError) as info:
        store.create("bad", value)
    assert not isinstance(info.value, ValueTooLargeError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert fragment in str(info.value)
    assert "bad" not in store
    assert len(store) == 0
    assert store.verify() == []


def test_too_deep_value_rejected(make_store: MakeStore) -> None:
    """A self-referencing value is rejected cleanly (no RecursionError, nothing written)."""
    store = make_store()
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidValueError):
        store.create("loop", loop)
    assert len(store) == 0
    assert store.verify() == []


def test_value_nested_to_the_depth_limit_with_a_big_integer(make_store: MakeStore) -> None:
    """255 levels of nesting (``MAX_DEPTH``, the outermost dict being level 1) are allowed
    on the full check's path too, which a big integer forces (orjson cannot write it);
    one level more is InvalidValueError.  Were the full check off by one, a value the fast
    path stores would be refused as soon as it held a number past 64 bits."""
    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {"n": 2**70}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    store = make_store()
    assert MAX_DEPTH == 255
    store.create("deep", nested(MAX_DEPTH))
    assert store.read("deep") == nested(255)
    with pytest.raises(InvalidValueError, match="nested deeper than 255"):
        store.create("deeper", nested(256))
    assert "deeper" not in store and len(store) == 1
    assert store.verify() == []


def test_tuples_become_lists(make_store: MakeStore) -> None:
    """Tuples are stored as JSON arrays and read back as lists."""
    store = make_store()
    store.create("t", {"t": (1, (2, "three")), "l": [(), ("a",)]})
    got = store.read("t")
    assert got == {"t": [1, [2, "three"]], "l": [[], ["a"]]}
    assert type(got["t"]) is list and type(got["t"][1]) is list
    assert store.verify() == []


@pytest.mark.parametrize(
    "number",
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**70, -(2**70), 10**100,
     10**4300 - 1, -(10**4300 - 1), 2**14_283],
)
def test_integers_roundtrip_exactly(make_store: MakeStore, number: int) -> None:
    """Integers of up to 4,300 digits come back as the same int (not a float), also after
    reopen."""
    store = make_store()
    store.create("n", {"n": number, "nested": [number, {"m": number}] if abs(number) < 10**100 else []})
    store = reopen(store, make_store)
    got = store.read("n")
    assert got == {"n": number, "nested": [number, {"m": number}] if abs(number) < 10**100 else []}
    assert type(got["n"]) is int and got["n"] == number
    assert store.verify() == []


@pytest.mark.parametrize("limit", [None, 20_000], ids=["default-limit", "limit-raised"])
def test_an_int_past_4300_digits_is_refused_whatever_the_process_allows(make_store: MakeStore,
                                                                       limit: int | None) -> None:
    """Python reads at most 4,300 digits by default: a value stored by a process that
    raised its limit could not be read by any other (CorruptStoreError, "not JSON")."""
    store = make_store()
    old_limit = sys.get_int_max_str_digits()
    if limit is not None:
        sys.set_int_max_str_digits(limit)
    try:
        for number in (10**4300, -(10**4300), 2**14_290, 10**5000):
            with pytest.raises(InvalidValueError, match="more than 4,300 digits"):
                store.create("n", {"a": [number]})
    finally:
        sys.set_int_max_str_digits(old_limit)
    assert "n" not in store and len(store) == 0


def test_a_value_this_process_cannot_read_is_refused_by_every_call_and_kept(make_store: MakeStore) -> None:
    """A stored int of 2,000 digits, in a process that lowered its own limit to 1,000
    (``sys.set_int_max_str_digits``): every call that returns the value raises
    CorruptStoreError, as ``read`` does, and keeps it (``pop`` and ``popitem`` included,
    which on Redis take it from the server first)."""
    store = make_store()
    number = 10**2000
    store.create("big", {"n": number}, ttl=1000)
    old_limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        calls: list[Callable[[], object]] = [
            lambda: store.read("big"), lambda: store.get("big"), lambda: store.pop("big"),
            lambda: store.pop("big", None), store.popitem, lambda: list(store.items_with_expiry()),
            lambda: list(store.items()), lambda: list(store.values()), lambda: store.setdefault("big", {"a": 1})]
        for call in calls:
            with pytest.raises(CorruptStoreError, match="'big'"):
                call()
    finally:
        sys.set_int_max_str_digits(old_limit)
    assert store.read("big") == {"n": number} and store.ttl("big") == 1000 and len(store) == 1


def test_scalar_types_roundtrip(make_store: MakeStore) -> None:
    """bool stays bool, None stays None, floats keep their value."""
    store = make_store()
    value = {"t": True, "f": False, "n": None, "x": 0.1, "big": 1e308, "tiny": 5e-324,
             "neg": -2.5, "list": [True, 1, 1.0, None]}
    store.create("s", value)
    got = store.read("s")
    assert got == value
    assert got["t"] is True and got["f"] is False and got["n"] is None
    assert type(got["list"][0]) is bool and type(got["list"][1]) is int
    assert type(got["list"][2]) is float
    assert store.verify() == []


def test_nested_unicode_roundtrip(make_store: MakeStore) -> None:
    """Non-ASCII keys and strings at any depth, NULs and astral characters survive."""
    store = make_store()
    value = {"ключ": {"emoji": "😀🎉", "list": ["𝄞", {"中文": "文字", "nul": "a\x00b"}]},
             "quote\"back\\slash": "\u2028\u2029\t\n", "": "empty key"}
    store.create("ünï", value)
    store = reopen(store, make_store)
    assert store.read("ünï") == value
    assert store.verify() == []


def test_str_subclass_key_and_value(make_store: MakeStore) -> None:
    """A str subclass is accepted as a key and inside a value (read back as plain str)."""

    class Name(str):
        pass

    store = make_store()
    store.create(Name("sub"), {Name("k"): Name("v")})
    assert store.read("sub") == {"k": "v"}
    assert "sub" in store
    assert store.verify() == []


def test_a_dict_subclass_is_stored_as_what_it_holds_by_either_codec(make_store: MakeStore) -> None:
    """stdlib ``json``, the codec of a value with an int beyond 64 bits, writes a dict
    subclass by calling its own ``items()``.  What is stored is the dict's contents, as
    orjson writes them and the check reads them: an ``items()`` that says otherwise (a
    non-``str`` key, the dict itself, so nesting without end) changes nothing."""

    class Saying(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            return [(1, "int key"), ("self", self)]

    store = make_store()
    store.create("small", Saying(n=1))
    store.create("big", Saying(n=2**70, inner=[Saying(m=2)], t=(Saying(),)))
    assert store.read("small") == {"n": 1}
    assert store.read("big") == {"n": 2**70, "inner": [{"m": 2}], "t": [{}]}


# --------------------------------------------------------------------- TTL arguments

@pytest.mark.parametrize(
    "ttl, fragment",
    [
        (True, "bool"),
        (False, "bool"),
        (1.0, "float"),
        (10.5, "float"),
        ("10", "str"),
        (0, "0"),
        (-1, "-1"),
        (mmapkv.MAX_TTL + 1, str(mmapkv.MAX_TTL + 1)),
        (2**64, str(2**64)),
    ],
)
def test_invalid_ttl(make_store: MakeStore, ttl: Any, fragment: str) -> None:
    """Bad TTLs are InvalidTTLError (ValueError and TypeError) in create and batch_create,
    and write nothing."""
    store = make_store()
    calls: list[Callable[[], object]] = [
        lambda: store.create("k", {}, ttl=ttl),
        lambda: store.batch_create({"k": {}}, ttl=ttl),
        lambda: store.batch_create([("k", {}, ttl)]),
        lambda: store.batch_create([("k0", {}), ("k", {}, ttl)]),
    ]
    for call in calls:
        with pytest.raises(InvalidTTLError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
        assert fragment in str(info.value)
    assert len(store) == 0
    assert store.verify() == []


def test_valid_ttls(make_store: MakeStore, clock: FakeClock) -> None:
    """None (never), 1 and the largest TTL are accepted."""
    store = make_store()
    store.create("none", {}, ttl=None)
    store.create("one", {}, ttl=1)
    store.create("max", {}, ttl=mmapkv.MAX_TTL)
    clock.advance(10**6)
    assert "none" in store and "max" in store and "one" not in store
    assert store.verify() == []


# --------------------------------------------------------------------- TTL behaviour

def test_ttl_boundary(make_file_store: MakeFileStore, clock: FakeClock) -> None:
    """ttl=10: readable at +9.999 s; at +10 s read raises KeyExpiredError, delete raises
    KeyNotFoundError, the key is gone from in/len/keys/get, and the name can be reused.
    (A millisecond from the boundary: a Redis server's clock runs meanwhile, so
    ``test_expired_key`` below is the version both backends run.)"""
    store = make_file_store()
    start = clock.now
    store.create("t", {"v": 1}, ttl=10)
    store.create("forever", {"v": 2})
    clock.now = start + 9.999
    assert store.read("t") == {"v": 1}
    assert "t" in store and len(store) == 2 and sorted(store.keys()) == ["forever", "t"]
    with pytest.raises(KeyExistsError):
        store.create("t", {"v": 9})
    clock.now = start + 10
    with pytest.raises(KeyExpiredError) as info:
        store.read("t")
    assert isinstance(info.value, KeyNotFoundError) and isinstance(info.value, KeyError)
    assert "'t'" in str(info.value)
    assert "t" not in store
    assert store.keys() == ["forever"]
    assert store.get("t") is None
    assert store.get("t", "dflt") == "dflt"
    assert len(store) == 1
    with pytest.raises(KeyNotFoundError):
        store.delete("t")
    store.create("t", {"v": 3})  # no TTL this time
    clock.advance(10**6)
    assert store.read("t") == {"v": 3}
    assert len(store) == 2
    assert store.verify() == []


def test_expired_key(make_store: MakeStore, clock: FakeClock) -> None:
    """An expired key is gone from every read path and its name can be reused.  Reading it
    raises what each backend documents: ``Store`` still holds the entry and says
    ``KeyExpiredError``; Redis has deleted it, so ``KeyNotFoundError`` and not its
    subclass (code that catches ``KeyNotFoundError`` handles both)."""
    store = make_store()
    store.create("t", {"v": 1}, ttl=100)
    store.create("forever", {"v": 2})
    clock.advance(90)
    assert store.read("t") == {"v": 1} and store.ttl("t") == 10
    with pytest.raises(KeyExistsError):
        store.create("t", {"v": 9})
    clock.advance(10)
    with pytest.raises(KeyNotFoundError) as info:
        store.read("t")
    assert type(info.value) is expired_error(store)
    assert isinstance(info.value, KeyError) and "'t'" in str(info.value)
    if isinstance(store, mmapkv.Store):
        assert isinstance(info.value, KeyExpiredError)
    else:
        assert not isinstance(info.value, KeyExpiredError)
    for call in (lambda: store.ttl("t"), lambda: store.expire("t", 5), lambda: store.persist("t"),
                 lambda: store.replace("t", {"v": 3}), lambda: store.pop("t")):
        with pytest.raises(KeyNotFoundError) as info:
            call()
        assert type(info.value) is expired_error(store)
    assert "t" not in store and store.keys() == ["forever"] and len(store) == 1
    assert store.get("t") is None and store.get("t", "dflt") == "dflt"
    with pytest.raises(KeyNotFoundError):
        store.delete("t")
    store.create("t", {"v": 3})  # no TTL this time
    clock.advance(10**6)
    assert store.read("t") == {"v": 3} and len(store) == 2
    assert store.verify() == []


def test_expired_key_can_be_created_again_without_reading_first(make_store: MakeStore,
                                                                 clock: FakeClock) -> None:
    """create over an expired (never swept) entry replaces it; the new TTL counts from now."""
    store = make_store()
    store.create("t", {"v": 1}, ttl=5)
    clock.advance(5)
    store.create("t", {"v": 2}, ttl=5)
    clock.advance(4)
    assert store.read("t") == {"v": 2}
    assert len(store) == 1
    clock.advance(1)
    assert "t" not in store
    store.batch_create({"t": {"v": 3}})  # a batch may reuse an expired name as well
    assert store.read("t") == {"v": 3}
    assert len(store) == 1
    assert store.verify() == []


def test_delete_of_expired_key(make_store: MakeStore, clock: FakeClock) -> None:
    """delete of an expired key raises KeyNotFoundError (as KeyExpiredError) and frees it."""
    store = make_store()
    store.create("t", {}, ttl=3)
    clock.advance(3)
    with pytest.raises(KeyNotFoundError):
        store.delete("t")
    with pytest.raises(KeyNotFoundError):
        store.delete("t")
    assert len(store) == 0
    assert store.stats().keys_with_ttl == 0
    assert store.verify() == []


def test_ttl_survives_reopen(make_file_store: MakeFileStore, clock: FakeClock) -> None:
    """The expiry is absolute and stored in the file: it holds across close and reopen."""
    make_store = make_file_store
    store = make_store()
    start = clock.now
    store.create("short", {"v": 1}, ttl=10)
    store.create("long", {"v": 2}, ttl=1000)
    store.create("never", {"v": 3})
    store = reopen(store, make_store)
    clock.now = start + 9.999
    assert store.read("short") == {"v": 1}
    store = reopen(store, make_store)
    clock.now = start + 10
    with pytest.raises(KeyExpiredError):
        store.read("short")
    assert sorted(store.keys()) == ["long", "never"]
    store = reopen(store, make_store)
    assert "short" not in store and len(store) == 2
    clock.now = start + 1000
    store = reopen(store, make_store)
    assert store.keys() == ["never"] and len(store) == 1
    assert store.read("never") == {"v": 3}
    assert store.verify() == []


@pytest.mark.parametrize("value", [{}, {"v": "x" * 3000}], ids=["small", "3KB"])
def test_len_reclaims_keys_written_after_a_sweep(make_file_store: MakeFileStore, clock: FakeClock,
                                                 value: dict[str, Any]) -> None:
    """After its first sweep a store visits only the slots whose bound on their records'
    expiries has passed: a key written later, expiring before its slot's others, must
    lower that bound; so must keys in the slots the file gains by growing afterwards."""
    store = make_file_store()
    store.create("late", value, ttl=100)
    store.create("first", value, ttl=1)
    clock.advance(1)
    assert len(store) == 1  # a sweep: it reads the slots and notes their expiries
    store.create("early", value, ttl=5)  # beside "late", expiring before it
    clock.advance(5)
    assert len(store) == 1 and store.stats().keys_with_ttl == 1
    size = store.stats().file_size
    fill = 0
    while store.stats().file_size == size:  # into slots that did not exist at the sweep
        store.create(f"fill{fill}", value, ttl=5)
        fill += 1
    store.create("kept", value)
    assert len(store) == fill + 2
    clock.advance(5)
    assert len(store) == 2 and sorted(store) == ["kept", "late"]
    assert store.stats().keys_with_ttl == 1 and store.verify() == []


def _sweep_slots_read(monkeypatch: Any) -> list[int]:
    """The slots sweeps read from now on (``Engine._sweep_slot``'s calls), in order."""
    visited: list[int] = []
    sweep_slot = Engine._sweep_slot

    def counted(engine: Engine, slot: int, *args: Any) -> float:
        visited.append(slot)
        return sweep_slot(engine, slot, *args)

    monkeypatch.setattr(Engine, "_sweep_slot", counted)
    return visited


def test_a_sweep_reads_only_the_slots_whose_expiries_passed(store_path: str, clock: FakeClock,
                                                            monkeypatch: Any) -> None:
    """Keys that expire in the order they were written (a cache with one TTL) cost each
    sweep after the first only the slots they are in, not the whole file."""
    per_slot, slots = 128, 20  # the smallest class: 128 records of 160 bytes a slot
    with mmapkv.Store(store_path, clock=clock) as store:
        for i in range(slots * per_slot):
            store.create(f"k{i}", {}, ttl=10 + i // per_slot)
        visited = _sweep_slots_read(monkeypatch)
        clock.advance(10)
        assert len(store) == (slots - 1) * per_slot
        assert len(visited) >= slots  # the first reads every record slot
        visited.clear()
        clock.advance(1)
        assert len(store) == (slots - 2) * per_slot
        assert 1 <= len(visited) <= 2, visited
        assert store.verify() == []


def test_a_stale_live_header_in_a_free_sub_slot_never_deletes_a_key(store_path: str, clock: FakeClock) -> None:
    """A sweep reads every sub-slot's expiry field, free ones too, and lets the bitmap
    decide (``_sweep_slot``).  A slot that held one whole-slot record and is reused by the
    160-byte class has, in its free sub-slots, whatever that record's value held: here
    bytes that look like a LIVE record of the key ``victim``, expired long ago.  The sweep
    must not take them for a record (without the bitmap check it deleted ``victim``, a key
    with no TTL)."""
    victim = "v" * 32  # 32 bytes: its key-length byte is ' ', printable, so JSON leaves it as is
    at = CLASS_SIZES[0] * 100  # sub-slot 100 of the 160-byte class
    # record: 36-byte header, key "carrier" (7 bytes), then '{"p":"' + text
    text_start = 36 + len("carrier") + len('{"p":"')
    fake = ("LIVE" + "AAAA" + "A" * 8 + "A" * 8 + "AAAAAAA@"  # state, reserved, checksum, seq, expires ~34.5
            + "AA" + " " + "A" + victim)                       # value_len, key_len 32, flags, key
    carrier = {"p": "a" * (at - text_start) + fake}
    with mmapkv.Store(store_path, clock=clock) as store:
        store.create("carrier", carrier)
        slot = slot_of(store, "carrier")
        engine = store._engine
        assert engine is not None and engine.slots.kind(slot) == len(CLASS_SIZES)  # a whole slot
        base = engine._slots_offset + slot * SLOT_SIZE
        assert bytes(engine._mm[base + at:base + at + 4]) == b"LIVE"
        store.delete("carrier")          # the slot goes back to the pool, its bytes stay
        store.create("e", {}, ttl=1)     # the 160-byte class takes that slot
        store.create(victim, {"v": 1})   # no TTL
        assert slot_of(store, "e") == slot == slot_of(store, victim)
        clock.now += 2
        assert len(store) == 1           # the first sweep: every record slot, "e" expired
        assert store.read(victim) == {"v": 1}
        assert store.verify() == []


def test_a_slot_reused_by_a_table_segment_is_not_swept_as_records(store_path: str, clock: FakeClock, monkeypatch: Any) -> None:
    """A slot whose bound was noted by a sweep, then freed and taken by a table segment,
    is visited by the next sweep: its kind (a segment's, 255) must send it to ``inf``, not
    to ``_sweep_slot`` as a class of records (IndexError, and the store repaired)."""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)  # segments split after a few keys
    with mmapkv.Store(store_path, clock=clock) as store:
        engine = store._engine
        assert engine is not None
        store.create("small", {}, ttl=1000)                # a partial slot of the 160-byte class
        store.create("big", {"p": "x" * 16_000}, ttl=100)  # a whole slot
        store.create("e", {}, ttl=1)
        slot = slot_of(store, "big")
        clock.now += 1
        assert len(store) == 2                       # the first sweep notes big's bound
        store.delete("big")                          # its slot back to the pool
        segments = engine.table.segment_count
        i = 0
        while engine.table.segment_count == segments:  # a split takes a slot: the pool's first
            store.create(f"k{i}", {})
            i += 1
        assert engine.slots.kind(slot) == KIND_SEGMENT
        clock.now += 200
        assert len(store) == i + 1                    # a sweep visits the slot, whose bound passed
        assert store.verify() == []


def test_a_second_len_at_the_same_instant_reads_no_slot(store_path: str, clock: FakeClock, monkeypatch: Any) -> None:
    """A slot's new bound is its earliest expiry still to come: one that expires at the
    sweep's instant is gone after it, so a second len() at the same instant sweeps nothing
    (a bound that kept it made every call at that instant read the slot again)."""
    with mmapkv.Store(store_path, clock=clock) as store:
        store.create("a", {}, ttl=1)
        store.create("b", {}, ttl=5)
        clock.now += 1
        assert len(store) == 1
        visited = _sweep_slots_read(monkeypatch)
        assert len(store) == 1 and visited == []


def test_a_freed_slot_is_read_by_one_sweep_only(store_path: str, clock: FakeClock, monkeypatch: Any) -> None:
    """A slot whose records were all deleted after a sweep noted its bound is visited by
    the next sweep once its bound passes; it has no records, so its bound becomes ``inf``
    and the sweeps after it never read it again (a bound left as it was kept
    ``next_expiry`` in the past: every len() swept, and read the slot, again)."""
    with mmapkv.Store(store_path, clock=clock) as store:
        store.create("late", {}, ttl=1000)
        store.create("e", {}, ttl=1)
        store.create("big", {"p": "x" * 16_000}, ttl=10)  # a whole slot of its own
        slot = slot_of(store, "big")
        clock.now += 1
        assert len(store) == 2                # the first sweep notes big's slot's bound
        store.delete("big")                   # the slot is free now; its bound stays
        visited = _sweep_slots_read(monkeypatch)
        clock.now += 20
        assert len(store) == 1 and store.stats().keys_with_ttl == 1
        assert slot not in visited            # free: no records to read
        engine = store._engine
        assert engine is not None and engine.next_expiry > clock.now
        clock.now += 1
        assert len(store) == 1 and visited == []


def test_a_ttl_record_written_with_pwrite_is_counted_and_swept(store_path: str, clock: FakeClock) -> None:
    """Where the file's blocks could not be reserved, records go in with pwrite
    (``_write_at``'s second path); it counts a TTL record as the map path does
    (``_count_expiry``: ttl_count, next_expiry, the slot's bound), so the key is swept
    once it expires and stats() counts it meanwhile."""
    with mmapkv.Store(store_path, clock=clock) as store:
        store.create("kept", {})
        store.create("e", {}, ttl=1)
        clock.now += 1
        assert len(store) == 1                   # the bounds are built
        engine = store._engine
        assert engine is not None
        engine._map_writes = False               # as on a file whose blocks could not be reserved
        store.create("t", {}, ttl=5)
        assert store.stats().keys_with_ttl == 1
        clock.now += 5
        assert len(store) == 1 and sorted(store) == ["kept"]
        assert store.verify() == []


def test_len_sweeps_in_steps_letting_the_lock_go_between(store_path: str, clock: FakeClock,
                                                        monkeypatch: Any) -> None:
    """Keys that expired together are reclaimed a step at a time (``Engine.sweep_step``
    records), each step a hold of the lock of its own: a million of them kept every other
    thread waiting 13 s for one len()."""
    monkeypatch.setattr(Engine, "sweep_step", 100)
    steps: list[tuple[int, bool]] = []
    real_sweep = Engine.sweep
    with mmapkv.Store(store_path, clock=clock) as store:

        def step(engine: Engine, now: float, limit: int | None = None) -> bool:
            done = real_sweep(engine, now, limit)
            steps.append((store._lock_depth(), done))
            return done

        monkeypatch.setattr(Engine, "sweep", step)
        store.batch_create({f"t{i}": {} for i in range(1000)}, ttl=10)  # 8 slots of 128
        store.create("kept", {}, ttl=1000)
        clock.advance(10)
        assert len(store) == 1
        # a step a slot, and the last finds none left and recomputes next_expiry
        assert [done for _, done in steps] == [False] * 8 + [True], steps
        assert {depth for depth, _ in steps} == {1}  # no hold around them all
        assert store.stats().keys_with_ttl == 1 and store.verify() == []


def test_len_ends_while_another_thread_writes_keys_already_expired(store_path: str, clock: FakeClock,
                                                                   monkeypatch: Any) -> None:
    """len() reads the clock once and sweeps a step at a time, letting go of the lock
    between steps.  A thread whose clock is behind can write, between those steps, records
    already expired by len()'s time: after two whole passes len() sweeps the rest in one
    hold and returns, rather than chase them for good."""
    monkeypatch.setattr(Engine, "sweep_step", 100)
    with mmapkv.Store(store_path, clock=clock) as store:
        store.batch_create({f"t{i}": {} for i in range(1000)}, ttl=10)
        store.create("kept", {})
        clock.advance(10)
        between_steps = 0

        def other_thread_writes(_: float) -> None:
            nonlocal between_steps
            between_steps += 1
            assert between_steps < 100, "len() is still sweeping what is written behind it"
            now = clock.now
            clock.now = now - 20  # the writer's clock, behind len()'s
            store.create(f"late{between_steps}", {}, ttl=1)
            clock.now = now

        monkeypatch.setattr(mmapkv.store, "time", SimpleNamespace(sleep=other_thread_writes))
        assert len(store) == 1
        assert between_steps >= 2  # it did let go between steps, and others wrote meanwhile
        assert store.verify() == []


def test_len_s_last_sweep_starts_at_the_first_slot(store_path: str, clock: FakeClock, monkeypatch: Any) -> None:
    """After two whole passes len() sweeps the rest in one hold, from the first slot: a
    write's own sweep step between len()'s steps may leave the cursor past records
    already expired by len()'s time, and len() counted them (a review)."""
    monkeypatch.setattr(Engine, "sweep_step", 100)
    with mmapkv.Store(store_path, clock=clock) as store:
        engine = store._engine
        assert engine is not None
        store.batch_create({f"t{i}": {} for i in range(1000)}, ttl=10)
        store.create("kept", {})
        clock.advance(10)
        passes = written = 0
        behind: list[tuple[int, int]] = []
        real_sweep = Engine.sweep

        def counting(self: Engine, now: float, limit: int | None = None) -> bool:
            nonlocal passes
            done = real_sweep(self, now, limit)
            passes += done
            return done

        def meanwhile(_: float) -> None:  # another thread, its clock behind len()'s
            nonlocal written
            now = clock.now
            clock.now = now - 20
            written += 1
            store.create(f"early{written}", {}, ttl=1)  # already expired: len() goes round again
            if passes >= 2 and not behind:
                with engine.change():  # a write's step at a ceiling: the cursor stops mid-file
                    real_sweep(engine, now, 1)
                store.create("early-b", {}, ttl=1)
                behind.append((slot_of(store, "early-b"), engine._sweep_from))
            clock.now = now

        monkeypatch.setattr(Engine, "sweep", counting)
        monkeypatch.setattr(mmapkv.store, "time", SimpleNamespace(sleep=meanwhile))
        assert len(store) == 1
        assert behind and behind[0][0] < behind[0][1]  # early-b was behind the cursor
        assert engine.live_count == 1 and store.verify() == []


def test_a_write_sweeps_only_until_it_has_room(store_path: str, clock: FakeClock, monkeypatch: Any) -> None:
    """A write at the ceiling reclaims expired keys a step at a time and stops as soon as
    its record fits (it swept all of them, in one call, however many: 1.9 s for 63,000 in
    a 16 MiB store); len() reclaims the rest."""
    monkeypatch.setattr(Engine, "sweep_step", 1)
    store = mmapkv.Store(store_path, max_size=Geometry.smallest_max_size(), clock=clock)
    whole = {"pad": "y" * 12_000}  # a record of a whole slot
    created = 0
    try:
        while True:
            store.create(f"w{created}", whole, ttl=10)
            created += 1
    except mmapkv.StoreFullError:
        pass
    assert created >= 3
    clock.advance(10)
    store.create("new", whole)
    engine = store._engine
    assert engine is not None
    left = [f"w{i}" for i in range(created) if engine.find(f"w{i}".encode(), engine.fingerprint(f"w{i}".encode())) >= 0]
    assert len(left) == created - 1  # one step, one slot: room for the one record
    assert store.stats().live_keys == 1 and store.stats().keys_with_ttl == 0
    assert all(engine.find(k.encode(), engine.fingerprint(k.encode())) < 0 for k in left)
    assert store.read("new") == whole and store.verify() == []
    store.close()


def test_a_write_sweeps_behind_where_the_last_step_stopped(store_path: str, clock: FakeClock,
                                                          monkeypatch: Any) -> None:
    """A write's sweep that resumes where an earlier step stopped, and reaches the last
    slot with keys expired behind it (they expired since that part was read), goes round
    from the first slot: it stopped there, and a create the file had room for was refused
    with StoreFullError (a review of the stepped sweep)."""
    monkeypatch.setattr(Engine, "sweep_step", 1)
    whole = {"v": "x" * 15_000}  # a record of a whole slot
    with mmapkv.Store(store_path, max_size=Geometry.smallest_max_size(), clock=clock) as store:
        store.set("A", whole, ttl=20)  # the first slot, expiring last
        store.set("B", whole, ttl=10)
        store.set("C", whole, ttl=10)
        filled = 0
        with pytest.raises(StoreFullError):
            while True:
                store.set(f"fill{filled}", whole)
                filled += 1
        clock.advance(15)  # B and C expired: each of two writes sweeps one step, past them
        store.set("N1", whole)
        store.set("N2", whole)
        clock.advance(10)  # A too, behind where the steps stopped
        store.set("N3", whole)
        assert store.read("N3") == whole and "A" not in store
        assert len(store) == filled + 3 and store.verify() == []


def test_batch_ttls(make_store: MakeStore, clock: FakeClock) -> None:
    """batch ttl= applies to 2-tuples and mappings; a 3-tuple's own ttl wins (None = never)."""
    store = make_store()
    start = clock.now
    store.batch_create([("default", {}), ("own", {}, 20), ("forever", {}, None)], ttl=5)
    store.batch_create({"m1": {}, "m2": {}}, ttl=5)
    clock.now = start + 4.5
    assert len(store) == 5
    clock.now = start + 5
    assert sorted(store.keys()) == ["forever", "own"]
    clock.now = start + 20
    assert store.keys() == ["forever"]
    assert len(store) == 1
    assert store.verify() == []


def test_expired_slots_are_reclaimed(make_file_store: MakeFileStore, clock: FakeClock) -> None:
    """A store filled to its ceiling with TTL keys takes as many new keys once they expire."""
    make_store = make_file_store
    store = make_store(max_size=SMALL_MAX_SIZE)
    capacity = 0
    while True:  # how many keys of this size fit depends on their class: fill to the ceiling
        try:
            store.create(f"old{capacity}", {"i": capacity}, ttl=60)
        except StoreFullError:
            break
        capacity += 1
    assert capacity > store.stats().max_capacity  # several small values share a slot
    with pytest.raises(StoreFullError):
        store.create("one-more", {})
    size = store.stats().file_size
    store = reopen(store, make_store, max_size=SMALL_MAX_SIZE)
    clock.advance(60)
    for i in range(capacity):
        store.create(f"new{i}", {"i": i})
    assert len(store) == capacity
    assert store.stats().file_size == size
    assert all(store.read(f"new{i}") == {"i": i} for i in range(capacity))
    with pytest.raises(StoreFullError):
        store.create("one-more", {})
    assert store.verify() == []


def test_expired_slots_reclaimed_by_batch(make_file_store: MakeFileStore, clock: FakeClock) -> None:
    """A batch into a full store of expired keys reclaims them too."""
    store = make_file_store(max_size=SMALL_MAX_SIZE)
    capacity = store.stats().max_capacity
    store.batch_create({f"old{i}": {} for i in range(capacity)}, ttl=1)
    clock.advance(1)
    store.batch_create({f"new{i}": {"i": i} for i in range(capacity)})
    assert len(store) == capacity
    assert store.read(f"new{capacity - 1}") == {"i": capacity - 1}
    assert store.verify() == []


# --------------------------------------------------------------------- absolute expiries (issue 14)

def _now(store: Any, clock: FakeClock) -> float:
    """The time a store's expiries are measured against: its clock, or the server's."""
    return clock.now if isinstance(store, mmapkv.Store) else time.time()


def test_items_with_expiry_give_absolute_expiries(make_store: MakeStore, clock: FakeClock) -> None:
    """items_with_expiry() gives each live key's value and absolute expiry (None without a
    TTL), of every key or of the keys asked for (missing and expired ones skipped)."""
    store = make_store()
    now = _now(store, clock)
    store.create("a", {"v": 1}, ttl=100)
    store.create("b", {"v": [2]})
    store.create("c", {"v": 3}, ttl=50)
    store.create("gone", {"v": 4}, ttl=10)
    clock.advance(10)
    got = {key: (value, expires) for key, value, expires in store.items_with_expiry()}
    assert sorted(got) == ["a", "b", "c"]
    assert got["b"] == ({"v": [2]}, None)
    assert got["a"][0] == {"v": 1} and got["c"][0] == {"v": 3}
    if isinstance(store, mmapkv.Store):  # exactly what the file holds
        assert (got["a"][1], got["c"][1]) == (now + 100, now + 50)
    else:  # the server's clock: set a few ms after `now`, and aged 10 s by the test
        assert got["a"][1] is not None and got["c"][1] is not None
        # (c was set two round trips after a: 10 ms apart and more on a loaded machine)
        assert abs(got["a"][1] - (now + 90)) < 2 and abs(got["a"][1] - got["c"][1] - 50) < 1
    assert [k for k, _, _ in store.items_with_expiry(["c", "nope", "gone", "b"])] == ["c", "b"]
    with pytest.raises(InvalidKeyError):
        list(store.items_with_expiry(["ok", ""]))


def test_restore_entries_takes_an_expiry_another_clock_set_max_ttl_ahead(
        make_store: MakeStore, clock: FakeClock) -> None:
    """An expiry set MAX_TTL ahead by a clock a little ahead of this store's (a clock stepped
    back, a server a few ms behind) is more than MAX_TTL away here: it was refused, and with
    it the whole restore or copy, every other key included."""
    store = make_store()
    now = _now(store, clock)
    entries = [("far", {"v": 1}, now + mmapkv.MAX_TTL + 5), ("near", {"v": 2}, now + 60)]
    assert store.restore_entries(entries) == 2
    assert store.read("far") == {"v": 1} and store.read("near") == {"v": 2}
    assert store.ttl("far") in (mmapkv.MAX_TTL + 5, mmapkv.MAX_TTL + 6)  # Redis: to the ms


def test_restore_entries_keeps_absolute_expiries(make_store: MakeStore, clock: FakeClock) -> None:
    """restore_entries() writes (key, value, expires_at) entries all or nothing, each
    expiring at the instant given (not a fresh TTL); past ones are skipped; a live key
    refuses the whole batch unless replace=True."""
    store = make_store()
    now = _now(store, clock)
    store.create("live", {"old": True})
    entries = [("a", {"v": 1}, now + 100.5), ("b", {"v": 2}, None), ("past", {"v": 3}, now - 1)]
    assert store.restore_entries(entries) == 2
    assert store.read("a") == {"v": 1} and store.ttl("a") == 101 and store.ttl("b") is None
    assert "past" not in store
    with pytest.raises(KeyExistsError) as info:
        store.restore_entries([("new", {}, None), ("live", {"old": False}, None)])
    assert "live" in str(info.value)
    assert "new" not in store and store.read("live") == {"old": True}
    assert store.restore_entries([("new", {}, None), ("live", {"old": False}, now + 50)], replace=True) == 2
    assert store.read("live") == {"old": False} and store.ttl("live") == 50
    before = {k: store.read(k) for k in store.keys()}
    for bad, error in [([("x", {}, "soon")], InvalidTTLError), ([("x", {}, float("nan"))], InvalidTTLError),
                       ([("x", {}, -1)], InvalidTTLError), ([("x", {}, MAX_TIME + mmapkv.MAX_TTL + 1)], InvalidTTLError),
                       ([("x", {}, 10 ** 400)], InvalidTTLError),  # was Python's OverflowError
                       ([("x", {}, None), ("x", {}, None)], KeyExistsError), ([("x", {})], InvalidArgumentError),
                       ([("x", [1], None)], InvalidValueError), ([("", {}, None)], InvalidKeyError), (42, InvalidArgumentError),
                       ({"x": {}}, InvalidArgumentError)]:
        with pytest.raises(error):
            store.restore_entries([("fine", {}, None), *bad] if isinstance(bad, list) else bad)
        assert {k: store.read(k) for k in store.keys()} == before
    with pytest.raises(mmapkv.InvalidArgumentError, match="replace"):  # "no" was taken for True
        store.restore_entries([("live", {"old": None}, None)], replace="no")  # type: ignore[arg-type]
    assert {k: store.read(k) for k in store.keys()} == before
    assert store.verify() == []


@pytest.mark.parametrize("zero", [0, 0.0])
def test_restore_entries_refuses_an_expiry_of_zero(make_store: MakeStore, zero: float) -> None:
    """expires_at=0 is not unix time 0 made to mean "never": the file writes 0.0 for no
    expiry, so an entry accepted with 0 would be stored without one, forever."""
    store = make_store()
    with pytest.raises(InvalidTTLError):
        store.restore_entries([("k", {"v": 1}, zero)])
    assert len(store) == 0 and "k" not in store


def test_restore_entries_skips_an_entry_that_expires_now(make_file_store: MakeFileStore,
                                                         clock: FakeClock) -> None:
    """An entry whose expiry is exactly the clock's time has expired (as a key does at
    now == expires): kept, it would be written only to be unreadable.  One a second later
    is kept.  (A file store: a Redis server's clock moves on meanwhile.)"""
    store = make_file_store()
    assert store.restore_entries([("k", {}, clock.now)]) == 0
    assert len(store) == 0 and store.keys() == []
    assert store.restore_entries([("k", {}, clock.now + 1)]) == 1
    assert store.read("k") == {} and store.ttl("k") == 1
    assert store.verify() == []


def test_bad_entries_are_refused_before_a_clock_is_read(make_store: MakeStore) -> None:
    """restore_entries() checks every entry before it reads the time, as batch_create()
    checks before it writes: on a closed store a bad entry is still InvalidKeyError
    (RedisStore asked its server for the time first, so it said StoreClosedError, or
    StoreUnavailableError after a timeout when the server was down)."""
    store = make_store()
    store.close()
    for call in (lambda: store.restore_entries([("ok", {}, None), ("", {}, None)]),
                 lambda: store.batch_create([("ok", {}), ("", {})])):
        with pytest.raises(InvalidKeyError):
            call()
    with pytest.raises(mmapkv.StoreClosedError):
        store.restore_entries([("ok", {}, None)])


# --------------------------------------------------------------------- batch

def test_batch_mapping(make_store: MakeStore) -> None:
    """A mapping creates every key with its value."""
    store = make_store()
    items = {f"m{i}": {"i": i} for i in range(10)}
    store.batch_create(items)
    assert sorted(store.keys()) == sorted(items)
    for key, value in items.items():
        assert store.read(key) == value
    assert store.verify() == []


def test_batch_tuples(make_store: MakeStore) -> None:
    """A list or generator of 2- and 3-tuples creates every key."""
    store = make_store()
    store.batch_create([("a", {"v": 1}), ("b", {"v": 2}, 100)])
    store.batch_create((f"g{i}", {"i": i}) for i in range(5))
    assert store.read("a") == {"v": 1} and store.read("b") == {"v": 2}
    assert all(store.read(f"g{i}") == {"i": i} for i in range(5))
    assert len(store) == 7
    assert store.stats().keys_with_ttl == 1
    assert store.verify() == []


@pytest.mark.parametrize("empty", [{}, [], (), iter([])])
def test_empty_batch(make_store: MakeStore, empty: Any) -> None:
    """An empty batch is accepted and changes nothing."""
    store = make_store()
    store.create("a", {})
    store.batch_create(empty)
    assert store.keys() == ["a"]
    assert store.verify() == []


def test_batch_duplicate_key_writes_nothing(make_store: MakeStore) -> None:
    """A key given twice in one batch is KeyExistsError naming it; nothing is written."""
    store = make_store()
    with pytest.raises(KeyExistsError) as info:
        store.batch_create([("a", {}), ("twice", {"n": 1}), ("b", {}), ("twice", {"n": 2})])
    assert "twice" in str(info.value)
    assert len(store) == 0 and store.keys() == []
    assert store.verify() == []


def test_batch_existing_key_writes_nothing(make_store: MakeStore) -> None:
    """A batch holding a live key is KeyExistsError; the other keys are not written and the
    existing value is untouched."""
    store = make_store()
    store.create("live", {"old": True})
    with pytest.raises(KeyExistsError) as info:
        store.batch_create({"new1": {}, "new2": {}, "live": {"old": False}, "new3": {}})
    assert "live" in str(info.value)
    assert store.keys() == ["live"]
    assert store.read("live") == {"old": True}
    assert store.verify() == []


@pytest.mark.parametrize(
    "bad_item, error",
    [
        (("", {}), InvalidKeyError),
        (("x" * 33, {}), InvalidKeyError),
        ((5, {}), InvalidKeyError),
        (("k", {"x": float("nan")}), InvalidValueError),
        (("k", [1]), InvalidValueError),
        (("k", sized_value(LIMIT + 1)), ValueTooLargeError),
        (("k", {}, 0), InvalidTTLError),
        (("k", {}, 1.5), InvalidTTLError),
        (["k", {}], InvalidArgumentError),
        (("k",), InvalidArgumentError),
        (("k", {}, 1, "extra"), InvalidArgumentError),
        ("kv", InvalidArgumentError),
        (None, InvalidArgumentError),
    ],
)
def test_batch_invalid_item_writes_nothing(make_store: MakeStore, bad_item: Any,
                                           error: type[Exception]) -> None:
    """One bad item anywhere in a batch raises its error and nothing at all is written."""
    store = make_store()
    store.create("before", {})
    items = [("a", {"v": 1}), ("b", sized_value(LIMIT)), bad_item, ("c", {"v": 3})]
    with pytest.raises(error):
        store.batch_create(items)
    assert store.keys() == ["before"]
    assert len(store) == 1
    assert store.verify() == []


@pytest.mark.parametrize("items", ["ab", b"ab", 42, None])
def test_batch_items_not_iterable_of_tuples(make_store: MakeStore, items: Any) -> None:
    """items that are not a mapping nor an iterable of tuples are InvalidArgumentError."""
    store = make_store()
    with pytest.raises(InvalidArgumentError):
        store.batch_create(items)
    assert len(store) == 0
    assert store.verify() == []


def test_large_batch(make_store: MakeStore) -> None:
    """No arbitrary cap: a batch of many keys (more than the initial slots) commits whole."""
    store = make_store()
    count = min(store.stats().max_capacity, 200) if isinstance(store, mmapkv.Store) else 200
    store.batch_create([(f"b{i}", {"i": i}) for i in range(count)])
    assert len(store) == count
    assert store.read(f"b{count - 1}") == {"i": count - 1}
    store = reopen(store, make_store)
    assert len(store) == count
    assert store.verify() == []
