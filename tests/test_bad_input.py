"""Bad input: every public method against every kind of wrong argument.

Each row of the table calls one method with one wrong argument and names the exception it
must raise: the exact class (all are ``MmapKVError`` subclasses; argument errors are also
``ValueError`` and ``TypeError``, a missing key also ``KeyError``), and a piece of text
its message must contain (the key, limit or path involved).  After each call the store
must be unchanged: the same keys with the same values, and the file byte for byte (on
``RedisStore``, issue 14: the same keys, values and absolute expiries on the server).
"""

from __future__ import annotations

import copy
import datetime
import decimal
import errno
import gc
import fractions
import math
import os
import pickle
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

import mmapkv
from fault_child import write_report
from mmapkv import codec, transfer
from mmapkv.format import MAX_FILE_SIZE, Geometry

SMALLEST = Geometry.smallest_max_size()
PRESENT: dict[str, dict[str, Any]] = {"present": {"v": 1}, "ключ": {"list": [1, 2], "big": 2 ** 70}, "gone-soon": {"x": None}}

Call = Callable[[mmapkv.Store], Any]


def _circular_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


def _circular_list() -> dict[str, Any]:
    loop: list[Any] = []
    loop.append(loop)
    return {"l": loop}


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


class ShortSaying(str):
    """A str subclass whose len() lies: its text is what is stored and counted."""

    def __len__(self) -> int:
        return 3


class HidingItems(dict):  # type: ignore[type-arg]
    """A dict subclass whose items() shows nothing; orjson writes what it holds."""

    def items(self) -> Any:
        return iter([])


class HidingItems2(list):  # type: ignore[type-arg]
    """A list subclass whose iteration shows nothing; orjson writes what it holds."""

    def __iter__(self) -> Any:
        return iter([])


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrReprRaises(str):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class FspathOf:
    """A path-like object whose ``__fspath__`` returns *what*."""

    def __init__(self, what: Any) -> None:
        self.what = what

    def __fspath__(self) -> Any:
        return self.what


BAD_KEYS: list[tuple[str, Any, str]] = [
    ("str-subclass-saying-3-of-100", ShortSaying("x" * 100), "got 100"),
    ("empty", "", "1 to 32"),
    ("33-ascii", "k" * 33, "1 to 32"),
    ("33-multibyte", "🔑" * 33, "1 to 32"),
    ("lone-surrogate", "a\ud800", "surrogate"),
    ("int", 5, "int"),
    ("None", None, "NoneType"),
    ("bytes", b"key", "bytes"),
    ("bytearray", bytearray(b"key"), "bytearray"),
    ("float", 1.5, "float"),
    ("bool", True, "bool"),
    ("tuple", ("k",), "tuple"),
    ("list", ["k"], "list"),
    ("object", object(), "object"),
]

BAD_VALUES: list[tuple[str, Any, type[Exception], str]] = [
    ("list", [1, 2], mmapkv.InvalidValueError, "dict"),
    ("str", "text", mmapkv.InvalidValueError, "dict"),
    ("None", None, mmapkv.InvalidValueError, "dict"),
    ("int", 5, mmapkv.InvalidValueError, "dict"),
    ("tuple", ("a", 1), mmapkv.InvalidValueError, "dict"),
    ("nan", {"x": math.nan}, mmapkv.InvalidValueError, "nan"),
    ("inf", {"x": [math.inf]}, mmapkv.InvalidValueError, "inf"),
    ("-inf", {"x": {"y": -math.inf}}, mmapkv.InvalidValueError, "inf"),
    ("set", {"x": {1, 2}}, mmapkv.InvalidValueError, "set"),
    ("frozenset", {"x": frozenset()}, mmapkv.InvalidValueError, "frozenset"),
    ("bytes", {"x": b"raw"}, mmapkv.InvalidValueError, "bytes"),
    ("bytearray", {"x": bytearray(2)}, mmapkv.InvalidValueError, "bytearray"),
    ("object", {"x": object()}, mmapkv.InvalidValueError, "object"),
    ("complex", {"x": 1j}, mmapkv.InvalidValueError, "complex"),
    ("decimal", {"x": decimal.Decimal("1.5")}, mmapkv.InvalidValueError, "Decimal"),
    ("datetime", {"x": datetime.datetime(2024, 1, 1)}, mmapkv.InvalidValueError, "datetime"),
    ("int-key", {1: "one"}, mmapkv.InvalidValueError, "key"),
    ("None-key", {"a": {None: 1}}, mmapkv.InvalidValueError, "key"),
    ("bool-key", {True: 1}, mmapkv.InvalidValueError, "key"),
    ("float-key", {1.5: 1}, mmapkv.InvalidValueError, "key"),
    ("tuple-key", {(1, 2): 1}, mmapkv.InvalidValueError, "key"),
    # a message shows a key, never fails to: an int past repr's 4,300 digits, a repr that
    # raises, one a million characters long (the message stays short)
    ("huge-int-key", {10 ** 5000: 1}, mmapkv.InvalidValueError, "an int of 16,610 bits"),
    ("nested-huge-int-key", {"a": [{10 ** 5000: 1}]}, mmapkv.InvalidValueError, "['a'][0] has the key an int"),
    ("key-whose-repr-raises", {ReprRaises(): 1}, mmapkv.InvalidValueError, "key a ReprRaises"),
    ("key-with-a-long-repr", {("x" * 10 ** 6,): 1}, mmapkv.InvalidValueError, "key ('xxx"),
    ("str-subclass-path-whose-repr-raises", {StrReprRaises("a"): {"b": math.nan}}, mmapkv.InvalidValueError,
     "[a StrReprRaises]['b'] holds nan"),
    ("too-deep", _deep(300), mmapkv.InvalidValueError, "deeper"),
    ("circular-dict", _circular_dict(), mmapkv.InvalidValueError, "deeper"),
    ("circular-list", _circular_list(), mmapkv.InvalidValueError, "deeper"),
    ("surrogate-text", {"x": "\udc80"}, mmapkv.InvalidValueError, "Unicode"),
    ("surrogate-key", {"\ud800": 1}, mmapkv.InvalidValueError, "Unicode"),
    ("16385-ascii", {"p": "a" * (16_384 - 8 + 1)}, mmapkv.ValueTooLargeError, "16,384"),
    ("16385-multibyte", {"p": "é" * 8188 + "a"}, mmapkv.ValueTooLargeError, "16,384"),
    ("big-ints", {"n": [2 ** 200] * 300}, mmapkv.ValueTooLargeError, "16,384"),
    ("huge", {"p": "x" * 10 ** 6}, mmapkv.ValueTooLargeError, "16,384"),
    ("dict-subclass-hiding-nan", HidingItems(x=math.nan), mmapkv.InvalidValueError, "nan"),
    ("list-subclass-hiding-bytes", {"l": HidingItems2([b"x"])}, mmapkv.InvalidValueError, "bytes"),
]

BAD_TTLS: list[tuple[str, Any]] = [
    ("zero", 0), ("negative", -1), ("very-negative", -10 ** 20), ("past-max", mmapkv.MAX_TTL + 1),
    ("2**100", 2 ** 100), ("float-1.0", 1.0), ("float", 1.5), ("nan", math.nan), ("inf", math.inf),
    ("True", True), ("False", False), ("str", "10"), ("bytes", b"1"),
    ("decimal", decimal.Decimal(10)), ("list", [10]), ("10**5000", 10 ** 5000),
]


def rows() -> list[Any]:
    """(id, call, exception class, text in the message)."""
    table: list[Any] = []
    for name, key, text in BAD_KEYS:
        for method, call in [
            ("create", lambda s, k=key: s.create(k, {"v": 1})),
            ("read", lambda s, k=key: s.read(k)),
            ("get", lambda s, k=key: s.get(k, {})),
            ("delete", lambda s, k=key: s.delete(k)),
            ("in", lambda s, k=key: k in s),
            ("batch-key", lambda s, k=key: s.batch_create([("fine", {}), (k, {"v": 1})])),
        ]:
            table.append(pytest.param(call, mmapkv.InvalidKeyError, text, id=f"{method}-key-{name}"))
    for name, value, exc, text in BAD_VALUES:
        table.append(pytest.param(lambda s, v=value: s.create("new", v), exc, text,
                                  id=f"create-value-{name}"))
        table.append(pytest.param(lambda s, v=value: s.batch_create({"fine": {}, "new": v}), exc, text,
                                  id=f"batch-value-{name}"))
    for name, ttl in BAD_TTLS:
        table.append(pytest.param(lambda s, t=ttl: s.create("new", {"v": 1}, ttl=t),
                                  mmapkv.InvalidTTLError, "ttl", id=f"create-ttl-{name}"))
        table.append(pytest.param(lambda s, t=ttl: s.batch_create({"new": {}}, ttl=t),
                                  mmapkv.InvalidTTLError, "ttl", id=f"batch-default-ttl-{name}"))
        table.append(pytest.param(lambda s, t=ttl: s.batch_create([("fine", {}), ("new", {}, t)]),
                                  mmapkv.InvalidTTLError, "ttl", id=f"batch-item-ttl-{name}"))
    table += [
        # a str subclass's own repr is never what a message shows: the text's is
        pytest.param(lambda s: s.create(StrReprRaises("present"), {}), mmapkv.KeyExistsError, "'present'",
                     id="create-existing-str-subclass-whose-repr-raises"),
        pytest.param(lambda s: s.read(StrReprRaises("absent")), mmapkv.KeyNotFoundError, "'absent'",
                     id="read-missing-str-subclass-whose-repr-raises"),
        pytest.param(lambda s: s.batch_create([("q", {}), (StrReprRaises("q"), {})]), mmapkv.KeyExistsError,
                     "'q' appears twice", id="batch-twice-str-subclass-whose-repr-raises"),
        pytest.param(lambda s: s.create("present", {"v": 2}), mmapkv.KeyExistsError, "'present'",
                     id="create-existing"),
        pytest.param(lambda s: s.read("absent"), mmapkv.KeyNotFoundError, "'absent'", id="read-missing"),
        pytest.param(lambda s: s.delete("absent"), mmapkv.KeyNotFoundError, "'absent'", id="delete-missing"),
        pytest.param(lambda s: s.delete("🔑absent"), mmapkv.KeyNotFoundError, "🔑absent",
                     id="delete-missing-multibyte"),
    ]
    for name, items in [("int", 5), ("None", None), ("str", "ab"), ("bytes", b"ab"), ("float", 1.5),
                        ("object", object())]:
        table.append(pytest.param(lambda s, i=items: s.batch_create(i), mmapkv.InvalidArgumentError,
                                  "items", id=f"batch-items-{name}"))
    for name, keys in [("int", 5), ("str", "ab"), ("bytes", b"ab"), ("object", object())]:
        # refused by the call itself, not at the first next() of what it returns
        table.append(pytest.param(lambda s, k=keys: s.items_with_expiry(k), mmapkv.InvalidArgumentError,
                                  "keys must be an iterable", id=f"items-with-expiry-keys-{name}"))
    for name, items in [("list-item", [["new", {}]]), ("1-tuple", [("new",)]),
                        ("4-tuple", [("new", {}, None, 1)]), ("str-item", [("fine", {}), "new"]),
                        ("dict-item", [{"new": {}}]), ("None-item", [None]),
                        ("generator-bad-last", [("fine", {}), ("new", {}), 7])]:
        # a new generator for each call: the row runs once per backend
        table.append(pytest.param(lambda s, i=items, g=name.startswith("generator"): s.batch_create(
            (x for x in i) if g else i), mmapkv.InvalidArgumentError, "batch item", id=f"batch-shape-{name}"))
    table += [
        pytest.param(lambda s: s.batch_create([("twice", {}), ("other", {}), ("twice", {})]),
                     mmapkv.KeyExistsError, "twice", id="batch-duplicate"),
        pytest.param(lambda s: s.batch_create({"fine": {}, "present": {}}), mmapkv.KeyExistsError,
                     "present", id="batch-existing"),
        pytest.param(lambda s: s.batch_create({"fine": {}, 7: {}}), mmapkv.InvalidKeyError, "int",
                     id="batch-mapping-int-key"),
        pytest.param(lambda s: s.batch_create([("fine", {})] * 0 + [("a", {}), ("b", [])]),
                     mmapkv.InvalidValueError, "dict", id="batch-bad-value-last"),
    ]
    return table


ROWS = rows()
COUNTS = {"bad inputs tried": 0, "errors other than the documented ones": 0}


@pytest.fixture
def file_store(tmp_path: Any) -> Any:
    with mmapkv.Store(os.path.join(tmp_path, "s.mmapkv"), max_size=SMALLEST * 4) as store:
        store.batch_create(PRESENT)
        store.create("ttl", {"t": 1}, ttl=3600)
        yield store


@pytest.fixture(params=["store", "redis"])
def store(request: Any) -> Any:
    """The same keys in a ``Store`` or in a ``RedisStore``'s own namespace."""
    if request.param == "store":
        return request.getfixturevalue("file_store")
    store = request.getfixturevalue("redis_store")
    store.batch_create(PRESENT)
    store.create("ttl", {"t": 1}, ttl=3600)
    return store


def snapshot(store: Any) -> tuple[dict[str, Any], Any]:
    """The keys and values, and the file's bytes (for Redis: each key's absolute expiry)."""
    if isinstance(store, mmapkv.RedisStore):
        return {k: store.read(k) for k in store.keys()}, sorted(store.items_with_expiry(), key=str)
    with open(store.path, "rb") as f:
        data = f.read()
    return {k: store.read(k) for k in store.keys()}, data


def check_error(exc: BaseException, expected: type[Exception], text: str) -> None:
    COUNTS["bad inputs tried"] += 1
    if type(exc) is not expected:
        COUNTS["errors other than the documented ones"] += 1
    assert type(exc) is expected, f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, mmapkv.MmapKVError)
    assert len(str(exc)) < 500, f"a message of {len(str(exc)):,} characters"
    if issubclass(expected, (mmapkv.InvalidKeyError, mmapkv.InvalidValueError, mmapkv.InvalidTTLError,
                             mmapkv.InvalidArgumentError)):
        assert isinstance(exc, ValueError) and isinstance(exc, TypeError)
    if issubclass(expected, mmapkv.KeyNotFoundError):
        assert isinstance(exc, KeyError)
    assert re.search(re.escape(text), str(exc), re.IGNORECASE), f"message {str(exc)!r} lacks {text!r}"


@pytest.mark.parametrize("call, expected, text", ROWS)
def test_wrong_argument(store: Any, call: Call, expected: type[Exception], text: str) -> None:
    """The documented exception, a message naming what was wrong, and nothing changed."""
    before = snapshot(store)
    with pytest.raises(Exception) as info:
        call(store)
    check_error(info.value, expected, text)
    after = snapshot(store)
    assert after[0] == before[0], "the keys or values changed"
    assert after[1] == before[1], "the file's bytes (the expiries) changed"
    assert store.verify() == []


def _directory(tmp: str) -> str:
    return tmp


def _fifo(tmp: str) -> str:
    path = os.path.join(tmp, "fifo")
    os.mkfifo(path)
    return path


def _not_a_store(tmp: str) -> str:
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("these are my notes, not a store\n" * 10)
    return path


def _dangling(tmp: str) -> str:
    path = os.path.join(tmp, "link.mmapkv")
    os.symlink(os.path.join(tmp, "nowhere", "x.mmapkv"), path)
    return path


def _link_loop(tmp: str) -> str:
    path, other = os.path.join(tmp, "loop1"), os.path.join(tmp, "loop2")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def _other_ceiling(tmp: str) -> str:
    path = os.path.join(tmp, "made.mmapkv")
    mmapkv.Store(path, max_size=SMALLEST).close()
    return path


CONSTRUCTOR_ROWS: list[Any] = [
    pytest.param(lambda tmp: {"path": 5}, mmapkv.InvalidArgumentError, "path", id="path-int"),
    pytest.param(lambda tmp: {"path": os.fsencode(os.path.join(tmp, "b"))}, mmapkv.InvalidArgumentError,
                 "path", id="path-bytes"),
    pytest.param(lambda tmp: {"path": ""}, mmapkv.InvalidArgumentError, "path", id="path-empty"),
    pytest.param(lambda tmp: {"path": FspathOf(5)}, mmapkv.InvalidArgumentError, "path", id="path-fspath-int"),
    pytest.param(lambda tmp: {"path": FspathOf(StrReprRaises(""))}, mmapkv.InvalidArgumentError, "path",
                 id="path-fspath-empty-str-whose-repr-raises"),
    pytest.param(lambda tmp: {"path": os.path.join(tmp, "a\0b")}, mmapkv.InvalidArgumentError, "NUL",
                 id="path-nul"),
    pytest.param(lambda tmp: {"path": os.path.join(tmp, "new", "a\ud800b")}, mmapkv.InvalidArgumentError,
                 "cannot name a file", id="path-lone-surrogate"),
    pytest.param(lambda tmp: {"path": _directory(tmp)}, mmapkv.InvalidArgumentError, "directory",
                 id="path-directory"),
    pytest.param(lambda tmp: {"path": _fifo(tmp)}, mmapkv.InvalidArgumentError, "regular file",
                 id="path-fifo"),
    pytest.param(lambda tmp: {"path": _dangling(tmp)}, mmapkv.InvalidArgumentError, "nowhere",
                 id="path-dangling-symlink"),
    pytest.param(lambda tmp: {"path": _link_loop(tmp)}, mmapkv.InvalidArgumentError, "loop of links",
                 id="path-symlink-loop"),
    pytest.param(lambda tmp: {"path": os.path.join(tmp, "new") + os.sep}, mmapkv.InvalidArgumentError,
                 "names a directory", id="path-trailing-separator"),
    pytest.param(lambda tmp: {"path": _not_a_store(tmp)}, mmapkv.CorruptStoreError, "not an mmapkv store",
                 id="path-not-a-store"),
    pytest.param(lambda tmp: {"path": _other_ceiling(tmp), "max_size": SMALLEST * 2},
                 mmapkv.InvalidArgumentError, "max_size", id="max-size-mismatch"),
    *[pytest.param(lambda tmp, m=m: {"max_size": m}, mmapkv.InvalidArgumentError, "max_size",
                   id=f"max-size-{name}")
      for name, m in [("float", 1.5e6), ("bool", True), ("str", "1000000"), ("negative", -1), ("zero", 0),
                      ("too-small", SMALLEST - 1), ("too-big", MAX_FILE_SIZE + 1), ("2**64", 2 ** 64),
                      ("10**5000", 10 ** 5000)]],
    *[pytest.param(lambda tmp, t=t: {"lock_timeout": t}, mmapkv.InvalidArgumentError, "lock_timeout",
                   id=f"lock-timeout-{name}")
      for name, t in [("negative", -1), ("nan", math.nan), ("inf", math.inf), ("str", "1"),
                      ("bool", True), ("None", None), ("10**400", 10 ** 400)]],
    *[pytest.param(lambda tmp, d=d: {"durable": d}, mmapkv.InvalidArgumentError, "durable",
                   id=f"durable-{name}")
      for name, d in [("str-no", "no"), ("int", 1), ("None", None)]],
    *[pytest.param(lambda tmp, c=c: {"clock": c}, mmapkv.InvalidArgumentError, "clock", id=f"clock-{name}")
      for name, c in [("int", 5), ("None", None), ("str", "time")]],
]


@pytest.mark.parametrize("make, expected, text", CONSTRUCTOR_ROWS)
def test_wrong_constructor_argument(tmp_path: Any, make: Callable[[str], dict[str, Any]],
                                    expected: type[Exception], text: str) -> None:
    """Store(...) with a wrong argument raises its documented error and creates or changes
    no file."""
    tmp = str(tmp_path)
    kwargs = make(tmp)
    kwargs.setdefault("path", os.path.join(tmp, "new.mmapkv"))
    before = {name: open(os.path.join(tmp, name), "rb").read() for name in os.listdir(tmp)
              if os.path.isfile(os.path.join(tmp, name))}
    with pytest.raises(Exception) as info:
        mmapkv.Store(**kwargs)
    check_error(info.value, expected, text)
    after = {name: open(os.path.join(tmp, name), "rb").read() for name in os.listdir(tmp)
             if os.path.isfile(os.path.join(tmp, name))}
    assert after == before, "a file was created or changed"
    assert not os.path.exists(os.path.join(tmp, "new")), "a directory was made"


def test_second_open_is_locked(file_store: mmapkv.Store) -> None:
    """Store() on a file another Store holds: StoreLockedError naming the path; the holder's
    data and file are unchanged."""
    store = file_store
    before = snapshot(store)
    with pytest.raises(Exception) as info:
        mmapkv.Store(store.path)
    check_error(info.value, mmapkv.StoreLockedError, store.path)
    assert isinstance(info.value, OSError)
    assert snapshot(store) == before


@pytest.mark.parametrize("call, expected, text", [
    (lambda s: s.batch_create([("fine", {})] + [(f"k{i}", {"x": i}) for i in range(50)] + [("bad", {"x": math.nan})]),
     mmapkv.InvalidValueError, "key 'bad': value['x'] holds nan"),
    (lambda s: s.batch_create({"fine": {}, "big": {"p": "x" * 20_000}}), mmapkv.ValueTooLargeError,
     "key 'big': value is 20,008 bytes"),
    (lambda s: s.batch_create([("fine", {}, 5), ("bad", {}, 0)]), mmapkv.InvalidTTLError, "key 'bad': ttl"),
    (lambda s: s.batch_create({"fine": {}, "bad": {}}, ttl=-1), mmapkv.InvalidTTLError, "ttl must"),
    (lambda s: s.update({"fine": {}, "bad": {"x": {1, 2}}}), mmapkv.InvalidValueError, "key 'bad': value['x']"),
    (lambda s: s.restore_entries([("fine", {}, None), ("bad", {"x": math.inf}, None)]), mmapkv.InvalidValueError,
     "key 'bad': value['x'] holds inf"),
    (lambda s: s.restore_entries([("fine", {}, None), ("bad", {}, "soon")]), mmapkv.InvalidTTLError, "key 'bad': "),
    (lambda s: s.batch_create([("fine", {}), (1, 10 ** 5000, 2, 3)]), mmapkv.InvalidArgumentError,
     "got a tuple"),
], ids=["batch-value", "batch-too-large", "batch-item-ttl", "batch-default-ttl", "update-value",
        "restore-value", "restore-expiry", "batch-item-unprintable"])
def test_a_batch_says_which_key_is_bad(store: Any, call: Call, expected: type[Exception], text: str) -> None:
    """In a batch of many items, the error names the key whose value or TTL is bad (a
    default TTL is no one key's), and the batch writes nothing."""
    before = snapshot(store)
    with pytest.raises(Exception) as info:
        call(store)
    check_error(info.value, expected, text)
    assert snapshot(store) == before


def _enter(store: Any) -> None:
    with store:
        pass


@pytest.mark.parametrize("method", ["create", "read", "get", "delete", "batch_create", "in", "len",
                                    "keys", "iter", "stats", "flush", "verify", "with"])
def test_closed_store(store: Any, method: str) -> None:
    """Every method of a closed store raises StoreClosedError naming the path (the server);
    close() stays idempotent and the file (the namespace) is unchanged."""
    before = snapshot(store)
    if isinstance(store, mmapkv.RedisStore) and method == "flush":
        assert not hasattr(store, "flush")  # durability is the server's config (docs/scaling.md)
        return
    store.close()
    calls: dict[str, Call] = {
        "create": lambda s: s.create("new", {}), "read": lambda s: s.read("present"),
        "get": lambda s: s.get("present"), "delete": lambda s: s.delete("present"),
        "batch_create": lambda s: s.batch_create({"new": {}}), "in": lambda s: "present" in s,
        "len": len, "keys": lambda s: s.keys(), "iter": lambda s: list(s), "stats": lambda s: s.stats(),
        "flush": lambda s: s.flush(), "verify": lambda s: s.verify(), "with": _enter}
    with pytest.raises(Exception) as info:
        calls[method](store)
    check_error(info.value, mmapkv.StoreClosedError, store.path if isinstance(store, mmapkv.Store) else store.url)
    store.close()
    if isinstance(store, mmapkv.RedisStore):
        with mmapkv.RedisStore(store.url, namespace=store.namespace) as again:
            assert snapshot(again) == before
        return
    with open(store.path, "rb") as f:
        assert f.read()[4096:] == before[1][4096:]  # the close itself only rewrote the superblock
    with mmapkv.Store(store.path) as again:
        assert {k: again.read(k) for k in again.keys()} == before[0]


COPIES: dict[str, Call] = {
    **{f"pickle-{protocol}": lambda s, p=protocol: pickle.dumps(s, protocol=p)
       for protocol in range(pickle.HIGHEST_PROTOCOL + 1)},
    "copy": copy.copy, "deepcopy": copy.deepcopy,
    "deepcopy-inside": lambda s: copy.deepcopy({"config": [s]}),
}


@pytest.mark.parametrize("how", list(COPIES))
def test_copy_or_pickle_is_refused(store: Any, how: str) -> None:
    """A store cannot be copied or pickled: InvalidArgumentError (a TypeError, as Python's
    own refusals are) saying so, and the store goes on unchanged.  A shallow copy used to
    be made, sharing the map: when it was collected, its finaliser closed the original,
    whose next read raised a ValueError of Python's own."""
    before = snapshot(store)
    with pytest.raises(Exception) as info:
        COPIES[how](store)
    check_error(info.value, mmapkv.InvalidArgumentError, "cannot be copied or pickled")
    del info
    gc.collect()  # what would have closed the original
    assert snapshot(store) == before
    store.create("after", {"ok": True})
    assert store.read("after") == {"ok": True}


def test_empty_batch_on_closed_store(store: Any) -> None:
    """batch_create([]) on a closed store raises StoreClosedError like every other method."""
    store.close()
    with pytest.raises(mmapkv.StoreClosedError):
        store.batch_create([])


@pytest.mark.parametrize("below", ["x.mmapkv", "sub/x.mmapkv"])
def test_path_below_a_regular_file(tmp_path: Any, below: str) -> None:
    """A path whose parent is a regular file: StoreAccessError (an OSError) naming the
    path, and the blocking file is left as it was."""
    blocker = os.path.join(tmp_path, "file")
    with open(blocker, "w") as f:
        f.write("x")
    with pytest.raises(Exception) as info:
        mmapkv.Store(os.path.join(blocker, below))
    check_error(info.value, mmapkv.StoreAccessError, blocker)
    assert "is not a directory" in str(info.value)  # not "File exists"
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOTDIR
    with open(blocker) as f:
        assert f.read() == "x"


def test_expired_key_errors(tmp_path: Any) -> None:
    """An expired key: read and delete raise KeyExpiredError (a KeyNotFoundError) naming it;
    get returns the default; `in` is False."""
    now = [1_700_000_000.0]
    with mmapkv.Store(os.path.join(tmp_path, "t.mmapkv"), clock=lambda: now[0]) as store:
        store.create("short", {"v": 1}, ttl=5)
        now[0] += 5
        with pytest.raises(mmapkv.KeyNotFoundError) as info:
            store.read("short")
        check_error(info.value, mmapkv.KeyExpiredError, "short")
        assert store.get("short", "gone") == "gone" and "short" not in store
        with pytest.raises(mmapkv.KeyNotFoundError) as info:
            store.delete("short")
        check_error(info.value, mmapkv.KeyExpiredError, "short")


BAD_READINGS = {"nan": math.nan, "inf": math.inf, "negative": -1.0, "far": 1e300, "str": "1700000000",
                "None": None, "bool": True, "10**5000": 10 ** 5000}
CLOCK_CALLS: dict[str, Call] = {
    "create-ttl": lambda s: s.create("new", {"v": 1}, ttl=10), "set-ttl": lambda s: s.set("present", {}, ttl=10),
    "read": lambda s: s.read("ttl"), "get": lambda s: s.get("ttl"), "in": lambda s: "ttl" in s,
    "ttl": lambda s: s.ttl("ttl"), "expire": lambda s: s.expire("present", 10), "keys": lambda s: s.keys(),
    "len": len, "delete": lambda s: s.delete("ttl"),
}


@pytest.mark.parametrize("call", list(CLOCK_CALLS))
@pytest.mark.parametrize("reading", list(BAD_READINGS))
def test_a_clock_that_says_no_time(tmp_path: Any, reading: str, call: str) -> None:
    """A clock (``Store(clock=...)``) that returns no unix time: each call that reads it
    raises InvalidArgumentError naming the reading, and nothing is written.  A NaN expiry
    used to be stored (and ``ttl`` then failed with Python's ValueError); a negative clock
    could make ``now + ttl`` 0.0, "no TTL"."""
    now: list[Any] = [1_700_000_000.0]
    with mmapkv.Store(os.path.join(tmp_path, "c.mmapkv"), clock=lambda: now[0]) as store:
        store.batch_create(PRESENT)
        store.create("ttl", {"t": 1}, ttl=3600)
        before = snapshot(store)
        now[0] = BAD_READINGS[reading]
        with pytest.raises(Exception) as info:
            CLOCK_CALLS[call](store)
        check_error(info.value, mmapkv.InvalidArgumentError, f"clock returned {codec.shown(BAD_READINGS[reading])}"[:40])
        now[0] = 1_700_000_001.0
        assert snapshot(store) == before
        assert store.verify() == []


@pytest.mark.parametrize("reading, says", [(fractions.Fraction(2001, 2), "Fraction(2001, 2), not an int or float"),
                                           (decimal.Decimal(1000), "Decimal('1000'), not an int or float"),
                                           (-1, "-1; it must return unix time in seconds, an int or float from 0")])
def test_a_clock_reading_of_another_type_says_so(tmp_path: Any, reading: Any, says: str) -> None:
    """A reading that is a number of another type (numpy's int64, a Fraction) was refused
    with "it must return unix time from 0 to ...", as if 1000 were out of range."""
    with mmapkv.Store(os.path.join(tmp_path, "c.mmapkv"), clock=lambda: reading) as store:
        with pytest.raises(mmapkv.InvalidArgumentError) as info:
            store.create("k", {"v": 1}, ttl=10)
        assert f"the store's clock returned {says}" in str(info.value)


@pytest.mark.parametrize("zero", [0.0, 0])
def test_a_clock_at_the_epoch_is_a_time(tmp_path: Any, zero: float) -> None:
    """A reading of exactly 0 (the epoch: a test's clock, a board without an RTC) is unix
    time like any other, not "no time": refusing it would fail every call that reads the
    clock, and the expiry it gives, 0 + ttl, is not 0.0 ("no TTL")."""
    with mmapkv.Store(os.path.join(tmp_path, "z.mmapkv"), clock=lambda: zero) as store:
        store.create("k", {"v": 1}, ttl=5)
        assert store.ttl("k") == 5 and store.read("k") == {"v": 1}
        assert [tuple(entry) for entry in store.items_with_expiry()] == [("k", {"v": 1}, 5.0)]
        assert store.verify() == []


def test_a_clock_of_whole_seconds_sweeps(tmp_path: Any) -> None:
    """A clock that returns an int (whole seconds) is a clock: a sweep compared its
    reading with the records' float expiries through float's methods, and int's answered
    NotImplemented, so len() raised TypeError once a TTL had passed (and every call after
    it repaired the store first).  A review found it."""
    now = [1_700_000_000]
    with mmapkv.Store(os.path.join(tmp_path, "i.mmapkv"), clock=lambda: now[0]) as store:
        for i in range(3):
            store.create(f"k{i}", {"v": i}, ttl=5 + i)
        store.create("kept", {})
        now[0] += 5
        assert len(store) == 3  # the first sweep: every record slot
        now[0] += 1
        assert len(store) == 2 and store.stats().live_keys == 2  # a later one: the due slots
        assert sorted(store) == ["k2", "kept"] and store.verify() == []


def test_a_clock_that_says_no_time_while_a_full_store_sweeps(tmp_path: Any) -> None:
    """A create into a full store reads the clock inside its change (to sweep expired keys
    first): a refused reading there fails the create, and the store is as it was."""
    now: list[Any] = [1_700_000_000.0]
    with mmapkv.Store(os.path.join(tmp_path, "f.mmapkv"), max_size=SMALLEST, clock=lambda: now[0]) as store:
        store.create("t", {"pad": "t" * 8000}, ttl=60)
        with pytest.raises(mmapkv.StoreFullError):
            for i in range(10_000):
                store.create(f"k{i}", {"pad": "x" * 8000})
        before = {k: store.read(k) for k in store.keys()}
        now[0] = math.nan
        with pytest.raises(Exception) as info:
            store.create("new", {"pad": "y" * 8000})
        check_error(info.value, mmapkv.InvalidArgumentError, "clock returned nan")
        now[0] = 1_700_000_001.0
        assert {k: store.read(k) for k in store.keys()} == before
        assert store.verify() == []


INNER_CALLS: dict[str, Call] = {
    "set": lambda s: s.set("inner", {"v": 1}), "create": lambda s: s.create("inner", {"v": 1}),
    "delete": lambda s: s.delete("present"), "update": lambda s: s.update({"inner": {}}),
    "clear": lambda s: s.clear(), "len": len, "keys": lambda s: s.keys(), "flush": lambda s: s.flush(),
    "verify": lambda s: s.verify(), "close": lambda s: s.close(),
    "compact": transfer.compact,
}


@pytest.mark.parametrize("inner", list(INNER_CALLS))
def test_a_call_from_inside_a_call_is_refused(tmp_path: Any, inner: str) -> None:
    """A call that the thread makes while it is inside another call of the same store (a
    signal handler, a finaliser, here the store's own clock, all of which Python runs
    between two bytecodes of that call): ReentrantCallError, naming the path, where it
    used to wait forever for the lock its own thread held; the outer call then completes,
    and the inner one changed nothing."""
    inner_errors: list[BaseException] = []
    reenter = [False]

    def clock() -> float:
        if reenter[0]:
            reenter[0] = False
            try:
                INNER_CALLS[inner](store)
            except BaseException as exc:  # what the handler would see
                inner_errors.append(exc)
        return 1_700_000_000.0

    store = mmapkv.Store(os.path.join(tmp_path, "r.mmapkv"), clock=clock)
    store.batch_create(PRESENT)
    before = snapshot(store)
    reenter[0] = True
    # In a thread of its own, so that a call that waits for itself fails the test, not hangs it.
    outer = threading.Thread(target=lambda: store.create("outer", {"v": 2}, ttl=60), daemon=True)
    outer.start()  # create reads the clock with the lock held
    outer.join(30)
    if outer.is_alive():  # the store stays open: the stuck thread holds its lock
        pytest.fail(f"{inner} from inside create waits for the lock its own thread holds")
    assert len(inner_errors) == 1, "the clock was not asked inside the call"
    check_error(inner_errors[0], mmapkv.ReentrantCallError, store.path)
    assert isinstance(inner_errors[0], RuntimeError)
    assert store.read("outer") == {"v": 2}
    store.delete("outer")
    assert snapshot(store)[0] == before[0]
    assert store.verify() == []
    store.close()


def test_a_read_from_inside_a_call_answers_unless_a_change_is_open(tmp_path: Any) -> None:
    """design.md: a lock-free read from inside a call (here from the clock, with the lock
    held) still answers; when the call has a change open, the read falls back to the lock
    and is refused with ReentrantCallError, as a locked call is."""
    got: list[Any] = []
    reenter = [False]

    def clock() -> float:
        if reenter[0]:
            reenter[0] = False
            try:
                got.append(store.read("t"))
            except mmapkv.MmapKVError as exc:
                got.append(exc)
        return 1_700_000_000.0

    store = mmapkv.Store(os.path.join(tmp_path, "l.mmapkv"), max_size=SMALLEST, clock=clock)
    store.create("t", {"pad": "t" * 8000}, ttl=60)
    reenter[0] = True
    store.create("outer", {"v": 1}, ttl=60)  # the clock is read before any change opens
    assert got == [{"pad": "t" * 8000}]
    with pytest.raises(mmapkv.StoreFullError):
        for i in range(10_000):
            store.create(f"k{i}", {"pad": "x" * 8000})
    reenter[0] = True
    with pytest.raises(mmapkv.StoreFullError):  # at the ceiling: the sweep reads the clock in its change
        store.create("new", {"pad": "y" * 8000})
    assert len(got) == 2, "the clock was not read inside the full store's create"
    check_error(got[1], mmapkv.ReentrantCallError, store.path)
    assert store.verify() == []
    store.close()


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    write_report("bad_input", COUNTS)


def test_the_lock_depth_is_read_where_the_lock_does_not_say_it() -> None:
    """CPython's C RLock gained ``_recursion_count`` in a 3.11 bugfix release: on Debian
    12's 3.11.2 every locked call raised AttributeError.  Without it, the depth comes from
    the count the C lock's repr prints."""
    import _thread

    from mmapkv.locking import recursion_count

    class WithoutTheMethod:  # a C RLock as 3.11.2 offers it
        def __init__(self) -> None:
            self.lock = _thread.RLock()

        def __repr__(self) -> str:
            return repr(self.lock)

    hidden = WithoutTheMethod()
    depth = recursion_count(hidden)
    seen = [depth()]
    for _ in range(2):
        hidden.lock.acquire()
        seen.append(depth())
    for _ in range(2):
        hidden.lock.release()
    assert seen == [0, 1, 2] and depth() == 0
    real = threading.RLock()
    with real, real:
        assert recursion_count(real)() == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_the_default_store_opens_can_use_it(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread of the parent holds the default store's lock (it is opening the store) when
    another forks: in the child nobody would ever release it, and mmapkv.read waited for
    good.  The child gets a fresh lock (os.register_at_fork)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    holding, done = threading.Event(), threading.Event()

    def opener() -> None:
        with mmapkv._default_lock:
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=opener)
    thread.start()
    try:
        assert holding.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: a read answers (KeyNotFoundError), or the alarm kills it
            import signal
            signal.alarm(20)
            try:
                mmapkv.read("nothing")
            except mmapkv.KeyNotFoundError:
                os._exit(0)
            except BaseException:
                os._exit(2)
            os._exit(3)
        _, status = os.waitpid(pid, 0)
    finally:
        done.set()
        thread.join(30)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_an_int_subclass_ttl_is_its_number(tmp_path: Any) -> None:
    """A TTL of an int subclass is checked and stored as the number it is: its __int__
    said -100 and the key was stored already expired after passing the check on 60."""
    class Seconds(int):
        def __int__(self) -> int:
            return -100

    with mmapkv.Store(str(tmp_path / "s"), clock=lambda: 1_000_000.0) as store:
        store.create("k", {"v": 1}, ttl=Seconds(60))
        store.set("s", {"v": 1}, ttl=Seconds(30))
        store.batch_create([("b", {"v": 1}, Seconds(20))])
        store.expire("s", Seconds(40))
        assert (store.ttl("k"), store.ttl("s"), store.ttl("b")) == (60, 40, 20)


def test_a_relative_path_after_the_working_directory_went(tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Store("rel") whose working directory was removed: StoreAccessError (an OSError), not
    Python's bare FileNotFoundError from resolving the path."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(mmapkv.StoreAccessError) as info:
        mmapkv.Store("rel.mmapkv")
    assert isinstance(info.value, OSError) and "rel.mmapkv" in str(info.value)


def test_ttl_is_never_a_second_more_than_was_set(tmp_path: Any) -> None:
    """expires is now + ttl in a float, and at some clocks the sum rounds up past the whole
    second: ttl() said 4 for a TTL of 3 set at clock 7.970975626354963 (and restoring
    that expiry MAX_TTL ahead was refused as too far)."""
    for now, ttl in [(7.970975626354963, 3), (2147483647.8033855, 17),
                     (1_760_000_000.25, mmapkv.MAX_TTL)]:
        with mmapkv.Store(str(tmp_path / f"s{now}"), clock=lambda now=now: now) as store:
            store.set("k", {}, ttl=ttl)
            assert store.ttl("k") == ttl
            entries = list(store.items_with_expiry())
            store.delete("k")
            assert store.restore_entries(entries) == 1 and store.ttl("k") == ttl


class StrReprLies(str):
    def __repr__(self) -> str:
        return "'someone else'"


class MyInt(int):
    pass


@pytest.mark.parametrize("key_type", [StrReprRaises, StrReprLies])
def test_a_batchs_error_shows_a_str_subclass_key_by_its_text(tmp_path: Any, key_type: type) -> None:
    """``about_key`` names a batch item's key by ``str.__repr__``: a str subclass's own
    ``__repr__`` neither replaces the error (one that raises) nor names another key."""
    with mmapkv.Store(str(tmp_path / "c.mmapkv")) as store:
        with pytest.raises(mmapkv.InvalidValueError, match=r"^key 'bad': value\['x'\] holds nan"):
            store.batch_create([("fine", {}), (key_type("bad"), {"x": math.nan})])
        with pytest.raises(mmapkv.InvalidTTLError, match=r"^key 'bad': "):
            store.batch_create([("fine", {}, 5), (key_type("bad"), {}, 0)])
        assert len(store) == 0


def test_an_int_subclass_past_4300_digits_is_refused(tmp_path: Any) -> None:
    """The 4,300-digit rule holds for an int subclass too (``_check_scalar``): its number
    is what is written, and no Python with the default limit could read it back."""
    with mmapkv.Store(str(tmp_path / "c.mmapkv")) as store:
        for number in (10 ** 4300, -(10 ** 4300)):
            with pytest.raises(mmapkv.InvalidValueError, match="more than 4,300 digits"):
                store.create("n", {"a": [MyInt(number)]})
            with pytest.raises(mmapkv.InvalidValueError, match="more than 4,300 digits"):
                store.create("n", {"a": MyInt(number)})
        store.create("n", {"a": MyInt(10 ** 4300 - 1)})
        assert store.read("n") == {"a": 10 ** 4300 - 1}
