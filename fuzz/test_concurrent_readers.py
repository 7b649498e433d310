"""Issue 13: readers without the lock, against hypothesis-drawn programs of writes.

Hypothesis draws a program of writes (``set``, ``create``, ``replace``, ``delete``,
``update``, ``batch_create``, ``expire``/``persist``, ``clear``, deleting every key,
``compact``) over a few keys, with values of every size class, in a file small enough to
double and fill up, at the format's ``SPLIT_AT`` or at 4 (the table's segments split and
merge). The main thread runs it while reader threads ``get`` the same keys without
pause, with the GIL handed over every few microseconds so that readers land inside the
writes' bytecodes.

Every value names its key and version and carries a check field derived from both, and
the writer keeps, per key, what it acknowledged last (the version stored, or that the key
is gone) and how many removals (``delete``, ``clear``) of it it has begun. A reader notes
both before its ``get``; then

* a value must be whole and of its key (never torn or another key's),
* never older than the version acknowledged before the read began (never stale after ack),
* and ``None`` only if the key was gone at the note or a removal of it began since: an
  overwrite, a TTL change and a compact never show a missing key;
* ``key in store``, asked after the ``get``, is False under the same condition only.

Any exception in a reader fails the run. (It does: with ``set`` written as ``delete`` then
``create``, the naive upsert, readers see the key missing within the first examples.)
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import mmapkv
from fuzz.conftest import PROFILE_NAME
from mmapkv import table as table_module
from mmapkv import transfer
from mmapkv.format import Geometry

PROFILE = settings.get_profile(PROFILE_NAME)
KEYS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "ключ", "🔑" * 8, "k" * 32]
PADS = [0, 40, 200, 900, 3000, 7000, 8100]  # 2-byte characters of padding: every size class
READERS = 3

op: st.SearchStrategy[tuple[str, Any, int]] = st.one_of(
    st.tuples(st.sampled_from(["set", "create", "replace", "delete", "expire", "persist"]),
              st.sampled_from(KEYS), st.sampled_from(PADS)),
    st.tuples(st.sampled_from(["update", "batch_create"]),
              st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True), st.sampled_from(PADS)),
    st.tuples(st.sampled_from(["clear", "compact", "delete_all"]), st.just([]), st.just(0)),
)


def value_of(key: str, version: int, pad: int) -> dict[str, Any]:
    return {"key": key, "version": version, "check": f"{key}:{version * 7919}", "pad": "é" * pad}


class Writer:
    """Runs the program and keeps, per key, (removals begun, version acknowledged or -1)."""

    def __init__(self, store: mmapkv.Store) -> None:
        self.store = store
        self.version = 0
        self.removals = {key: 0 for key in KEYS}
        self.acked = {key: (0, -1) for key in KEYS}   # (removals begun then, version or -1)
        self.present: dict[str, int] = {}

    def run(self, name: str, keys: Any, pad: int) -> None:
        store = self.store
        touched = KEYS if name in ("clear", "compact", "delete_all") else ([keys] if isinstance(keys, str) else keys)
        for key in touched if name in ("delete", "clear", "delete_all") else ():
            self.removals[key] += 1  # announced first: a reader that misses the key knows why
        self.version += 1
        v = self.version
        after = dict(self.present)
        try:
            if name == "set":
                store.set(keys, value_of(keys, v, pad))
                after[keys] = v
            elif name == "create":
                store.create(keys, value_of(keys, v, pad))
                after[keys] = v
            elif name == "replace":
                store.replace(keys, value_of(keys, v, pad))
                after[keys] = v
            elif name == "delete":
                store.delete(keys)
                after.pop(keys)
            elif name == "expire":
                store.expire(keys, 10 ** 6)  # a record rewritten, the value the same
            elif name == "persist":
                store.persist(keys)
            elif name == "update":
                store.update({key: value_of(key, v, pad) for key in keys})
                after.update({key: v for key in keys})
            elif name == "batch_create":
                store.batch_create({key: value_of(key, v, pad) for key in keys})
                after.update({key: v for key in keys})
            elif name == "clear":
                store.clear()
                after = {}
            elif name == "delete_all":  # one delete at a time: emptied segments merge
                for key in sorted(self.present):
                    store.delete(key)
                after = {}
            else:
                transfer.compact(store)
        except (mmapkv.KeyExistsError, mmapkv.KeyNotFoundError, mmapkv.StoreFullError):
            after = dict(self.present)  # refused: nothing changed
        self.present = after
        for key in touched:
            self.acked[key] = (self.removals[key], after.get(key, -1))


@settings(PROFILE, max_examples=min(PROFILE.max_examples, 30))
@given(program=st.lists(op, min_size=5, max_size=60), seed=st.integers(0, 2 ** 16),
       split_at=st.sampled_from([table_module.SPLIT_AT, 4, 8]))
def test_readers_never_see_torn_stale_or_missing_values(program: list[Any], seed: int, split_at: int) -> None:
    """*split_at* 4 or 8: the twelve keys split the table's segments and merge them again
    while the readers look (under SPLIT_AT // 4 entries: 1, when a pair is empty, or 2)."""
    real_split_at, table_module.SPLIT_AT = table_module.SPLIT_AT, split_at
    try:
        _readers_against(program, seed)
    finally:
        table_module.SPLIT_AT = real_split_at


def _readers_against(program: list[Any], seed: int) -> None:
    tmp = tempfile.mkdtemp(prefix="mmapkv-readers-")
    store = mmapkv.Store(os.path.join(tmp, "r.mmapkv"), max_size=Geometry.smallest_max_size() * 4)
    writer = Writer(store)
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader(n: int) -> None:
        rng = random.Random(seed + n)
        try:
            while not stop.is_set():
                key = rng.choice(KEYS)
                removals_then, version_then = writer.acked[key]
                value = store.get(key)
                reads[0] += 1
                if value is None:
                    if version_then >= 0 and writer.removals[key] == removals_then:
                        failures.append(f"{key} missing; version {version_then} acknowledged, no removal since")
                elif value.get("key") != key or value.get("check") != f"{key}:{value.get('version', 0) * 7919}":
                    failures.append(f"a torn or wrong value for {key}: {str(value)[:80]}")
                elif value["version"] < version_then:
                    failures.append(f"{key}: version {value['version']} after {version_then} was acknowledged")
                if key not in store and version_then >= 0 and writer.removals[key] == removals_then:
                    failures.append(f"`in` missed {key}; version {version_then} acknowledged, no removal since")
        except Exception as exc:  # noqa: BLE001 - any exception in a reader is the failure
            failures.append(f"reader: {type(exc).__name__}: {exc}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(2e-6)  # hand the GIL over mid-write, not every 5 ms
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for t in threads:
        t.start()
    try:
        for name, keys, pad in program:
            writer.run(name, keys, pad)
            if failures:
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
    try:
        assert not failures, failures[:5]
        assert store.verify() == []
        assert {k: v["version"] for k, v in store.items()} == writer.present
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
