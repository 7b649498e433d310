"""Threads: 8+ threads mixing every operation on shared and private keys.

Each thread owns some private keys, for which it keeps an exact model, and all threads
fight over a few shared keys.  Every call may raise only the exceptions documented for it
in that situation (for a shared key that another thread may have created or deleted:
``KeyExistsError`` / ``KeyNotFoundError``; near the small ceiling: ``StoreFullError``).
At the end the store must hold exactly the private models, and for each shared key the
acknowledged creates and deletes must alternate (creates - deletes is 0 or 1, matching
presence) with the value of an acknowledged create; ``verify()`` passes, during the run
and after a reopen.
"""

from __future__ import annotations

import collections
import os
import random
import sys
import threading
from typing import Any

import pytest

import mmapkv
from fault_child import make_value, write_report
from mmapkv.format import Geometry

THREADS = 8
OPS = int(os.environ.get("MMAPKV_THREAD_OPS", "1500"))
SHARED = [f"shared{i}" for i in range(6)] + ["общий", "🔑"]
MAX_SIZE = Geometry.smallest_max_size() * 4  # 33 slots: growth, and sometimes full


class Shared:
    """What the threads acknowledged on the shared keys (under a lock of its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempted: dict[str, list[Any]] = collections.defaultdict(list)
        self.created: dict[str, list[Any]] = collections.defaultdict(list)
        self.deleted: collections.Counter[str] = collections.Counter()


def worker(store: mmapkv.Store, tid: int, seed: int, shared: Shared, private: dict[str, Any],
           problems: list[str], counts: collections.Counter[str]) -> None:
    """One thread's seeded mix of operations, checked as it goes."""
    rng = random.Random(seed * 1000 + tid)
    mine = [f"t{tid}-{i}" for i in range(4)]  # 8 x 4 + 8 shared > 33 slots

    def value(key: str, n: int) -> dict[str, Any]:
        return make_value(key, tid * 100_000 + n, rng.choice([150, 150, 2000, 16384]))

    def attempt(key: str, v: dict[str, Any]) -> None:
        with shared.lock:
            shared.attempted[key].append(v)

    def fail(message: str) -> None:
        problems.append(f"seed={seed} thread={tid}: {message}")

    for n in range(OPS):
        op = rng.choice(["create", "read", "delete", "batch", "get", "in", "len", "keys",
                         "s-create", "s-create", "s-delete", "s-read", "s-batch", "stats", "verify"])
        key = rng.choice(mine)
        skey = rng.choice(SHARED)
        try:
            if op == "create":
                v = value(key, n)
                try:
                    store.create(key, v)
                except mmapkv.KeyExistsError:
                    if key not in private:
                        fail(f"KeyExistsError for absent private {key}")
                except mmapkv.StoreFullError:
                    counts["full"] += 1
                else:
                    if key in private:
                        fail(f"create of existing private {key} succeeded")
                    private[key] = v
            elif op == "read":
                try:
                    got = store.read(key)
                    if got != private.get(key):
                        fail(f"read {key}: {got!r:.80} != model")
                except mmapkv.KeyNotFoundError as exc:
                    if key in private or type(exc) is not mmapkv.KeyNotFoundError:
                        fail(f"{type(exc).__name__} for private {key}")
            elif op == "delete":
                try:
                    store.delete(key)
                except mmapkv.KeyNotFoundError:
                    if key in private:
                        fail(f"KeyNotFoundError deleting present private {key}")
                else:
                    if key not in private:
                        fail(f"delete of absent private {key} succeeded")
                    private.pop(key, None)
            elif op == "batch":
                keys = rng.sample(mine, rng.randint(1, len(mine)))
                items = {k: value(k, n) for k in keys}
                try:
                    store.batch_create(items)
                except mmapkv.KeyExistsError:
                    if not any(k in private for k in keys):
                        fail(f"batch KeyExistsError with none of {keys} present")
                except mmapkv.StoreFullError:
                    counts["full"] += 1
                else:
                    if any(k in private for k in keys):
                        fail(f"batch over existing private keys {keys} succeeded")
                    private.update(items)
            elif op == "get":
                if store.get(key, "missing") != private.get(key, "missing"):
                    fail(f"get {key} disagrees with the model")
            elif op == "in":
                if (key in store) != (key in private):
                    fail(f"`in` {key} disagrees with the model")
            elif op == "len":
                if not 0 <= len(store) <= 160 * Geometry(MAX_SIZE).max_slots:
                    fail("len out of range")
            elif op == "keys":
                listed = store.keys()
                if len(listed) != len(set(listed)):
                    fail("keys() listed a key twice")
                for k in mine:  # only this thread changes its own keys
                    if (k in listed) != (k in private):
                        fail(f"keys() and the model disagree on {k}")
            elif op == "s-create":
                v = {"t": tid, "n": n, "key": skey}
                attempt(skey, v)
                try:
                    store.create(skey, v)
                except (mmapkv.KeyExistsError, mmapkv.StoreFullError) as exc:
                    if type(exc) not in (mmapkv.KeyExistsError, mmapkv.StoreFullError):
                        raise
                else:
                    with shared.lock:
                        shared.created[skey].append(v)
            elif op == "s-delete":
                try:
                    store.delete(skey)
                except mmapkv.KeyNotFoundError as exc:
                    if type(exc) is not mmapkv.KeyNotFoundError:
                        raise
                else:
                    with shared.lock:
                        shared.deleted[skey] += 1
            elif op == "s-read":
                try:
                    got = store.read(skey)
                except mmapkv.KeyNotFoundError as exc:
                    if type(exc) is not mmapkv.KeyNotFoundError:
                        raise
                else:
                    with shared.lock:
                        if got not in shared.attempted[skey]:
                            fail(f"read {skey} gave a value nobody wrote: {got!r:.80}")
            elif op == "s-batch":
                pair = rng.sample(SHARED, 2)
                items = {k: {"t": tid, "n": n, "key": k, "batch": True} for k in pair}
                for k, v in items.items():
                    attempt(k, v)
                try:
                    store.batch_create(items)
                except (mmapkv.KeyExistsError, mmapkv.StoreFullError) as exc:
                    if type(exc) not in (mmapkv.KeyExistsError, mmapkv.StoreFullError):
                        raise
                else:
                    with shared.lock:
                        for k, v in items.items():
                            shared.created[k].append(v)
            elif op == "stats":
                stats = store.stats()
                if stats.live_keys > stats.table_capacity or stats.capacity > stats.max_capacity \
                        or stats.free_slots > stats.capacity:
                    fail(f"stats inconsistent: {stats}")
            elif op == "verify":
                broken = store.verify()
                if broken:
                    fail(f"verify() mid-run: {broken[:3]}")
            counts["operations"] += 1
        except Exception as exc:  # anything not handled above is undocumented
            fail(f"{op}: undocumented {type(exc).__name__}: {exc}")
            counts["undocumented"] += 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_threads_mixing_all_operations(tmp_path: Any, seed: int) -> None:
    """The final state is what the acknowledged operations imply; no undocumented error."""
    path = os.path.join(tmp_path, "threads.mmapkv")
    store = mmapkv.Store(path, max_size=MAX_SIZE)
    shared = Shared()
    privates: list[dict[str, Any]] = [{} for _ in range(THREADS)]
    problems: list[str] = []
    tallies: list[collections.Counter[str]] = [collections.Counter() for _ in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings
    try:
        threads = [threading.Thread(target=worker, args=(store, t, seed, shared, privates[t],
                                                         problems, tallies[t]))
                   for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert problems == [], problems[:10]
    counts = sum(tallies, collections.Counter())
    assert counts["operations"] == THREADS * OPS
    expected: dict[str, Any] = {}
    for private in privates:
        expected.update(private)
    for key in SHARED:
        balance = len(shared.created[key]) - shared.deleted[key]
        assert balance in (0, 1), f"seed={seed}: {key}: {len(shared.created[key])} creates, " \
                                  f"{shared.deleted[key]} deletes acknowledged"
        if balance:
            got = store.read(key)
            assert got in shared.created[key], f"seed={seed}: {key} holds an unacknowledged value"
            expected[key] = got
        else:
            assert key not in store
    for attempt in range(2):  # as left by the threads, then after a reopen
        assert store.verify() == []
        assert sorted(store.keys()) == sorted(expected)
        assert len(store) == len(expected)
        for key, value in expected.items():
            assert store.read(key) == value
        store.close()
        store = mmapkv.Store(path)
    store.close()
    write_report("fault_threads", {"runs": 1, "threads per run": str(THREADS), "thread operations": counts["operations"],
                                   "errors other than the documented ones": counts["undocumented"],
                                   "full refusals": counts["full"]})
