"""Issue 13: reads take no lock, and still never see a torn, wrong or stale-after-ack value.

Reader threads read while a writer overwrites keys (each value says which key and which
version it is, and carries a check field derived from both), creates keys that grow the
file many times over, deletes, and compacts.  A reader first notes the last version the
writer acknowledged for a key, then reads it: the value must be that version or a newer one,
whole, and of that key.  Any exception other than the documented ``KeyNotFoundError`` for a
deleted key fails the test.  ``in`` and ``ttl`` read the same way: they must never miss a
hot key, nor find one never stored.
"""

from __future__ import annotations

import inspect
import os
import random
import sys
import threading
from typing import Any

import pytest

import mmapkv
from mmapkv import transfer
from mmapkv.engine import Engine
from mmapkv.format import SPLIT_AT, Geometry
from mmapkv.table import Table

HOT = [f"hot{i}" for i in range(16)]


def value_of(key: str, version: int, rng: random.Random) -> dict[str, Any]:
    pad = "é" * rng.choice([0, 40, 400, 3000, 7000])  # many size classes: records move
    return {"key": key, "version": version, "check": f"{key}:{version * 7919}", "pad": pad}


def test_readers_without_the_lock_never_see_a_torn_or_stale_value(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "lockfree.mmapkv")
    store = mmapkv.Store(path, max_size=Geometry.smallest_max_size() * 64)
    rng = random.Random(13)
    acked = {key: 0 for key in HOT}
    for key in HOT:
        store.create(key, value_of(key, 0, rng))
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader(seed: int) -> None:
        r = random.Random(seed)
        try:
            while not stop.is_set():
                key = r.choice(HOT)
                floor = acked[key]
                value = store.read(key)
                reads[0] += 1
                if value["key"] != key or value["check"] != f"{key}:{value['version'] * 7919}":
                    failures.append(f"a wrong or torn value for {key}: {str(value)[:80]}")
                elif value["version"] < floor:
                    failures.append(f"{key}: version {value['version']} after {floor} was acknowledged")
                # `in` reads the same way: a hot key is always there (an entry that Robin
                # Hood moves under the look must not make it miss), a key never stored never
                if key not in store:
                    failures.append(f"`in` missed {key}, which is always stored")
                if store.ttl(key) is not None:  # and raises nothing: it is always stored
                    failures.append(f"ttl() gave {key}, which never expires, a TTL")
                if f"never{seed}" in store:
                    failures.append(f"`in` found never{seed}, which was never stored")
        except Exception as exc:  # noqa: BLE001 - any exception is the failure
            failures.append(f"reader: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        version = 0
        for step in range(3000):
            version += 1
            key = rng.choice(HOT)
            store.set(key, value_of(key, version, rng))
            acked[key] = version
            if step % 3 == 0:  # fill: the file doubles several times under the readers
                store.create(f"fill{step}", value_of(f"fill{step}", 0, rng))
            if step % 7 == 0 and step > 100:
                store.delete(f"fill{step - 99}") if f"fill{step - 99}" in store else None
            if step % 1000 == 999:  # a compact swaps the whole file under the readers
                transfer.compact(store)
            if failures:
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert reads[0] > 100  # the readers ran alongside
    assert store.verify() == []
    store.close()


def test_reads_do_not_take_the_store_lock(tmp_path: Any) -> None:
    """A read, ``in`` and ``ttl`` complete while another thread holds the store's lock
    (which a writer does for the whole of a change), and give the answers and errors they
    give with it."""
    now = [1_000.0]
    with mmapkv.Store(os.path.join(tmp_path, "s.mmapkv"), clock=lambda: now[0]) as store:
        store.create("k", {"v": 1})
        store.create("brief", {"v": 2}, ttl=10)
        store.create("gone", {"v": 3}, ttl=5)
        now[0] += 6
        done: list[Any] = []

        def reads() -> None:
            done.extend([store.get("k"), "k" in store, "nope" in store, "gone" in store,
                         store.ttl("k"), store.ttl("brief")])
            for key in ("nope", "gone"):
                try:
                    store.ttl(key)
                except mmapkv.KeyNotFoundError as exc:  # KeyExpiredError is one
                    done.append(type(exc).__name__)

        with store._lock:
            reader = threading.Thread(target=reads)
            reader.start()
            reader.join(timeout=30)
            assert done == [{"v": 1}, True, False, False, None, 4, "KeyNotFoundError", "KeyExpiredError"]


# ------------------------------------------------------------------ schedules forced with tracers


def _line_of(function: Any, text: str) -> tuple[Any, int]:
    """(code, line number) of the first line of *function* that contains *text*."""
    lines, start = inspect.getsourcelines(function)
    return function.__code__, start + next(i for i, line in enumerate(lines) if text in line)


def _pausing(points: dict[tuple[Any, int], tuple[threading.Event, threading.Event]]) -> Any:
    """A tracer that, on reaching a point, sets its first event and waits (bounded) for its
    second: a thread switch exactly there, which a line tracer (a debugger, coverage) or a
    free-threaded interpreter can make happen in a real run."""
    def tracer(frame: Any, event: str, arg: Any) -> Any:
        point = points.get((frame.f_code, frame.f_lineno)) if event == "line" else None
        if point is not None:
            point[0].set()
            point[1].wait(10)
        return tracer
    return tracer


def _full_segment(tmp_path: Any) -> mmapkv.Store:
    """A store whose one table segment is full: the next create splits it."""
    store = mmapkv.Store(os.path.join(tmp_path, "split.mmapkv"))
    engine = store._engine
    assert engine is not None
    n = 0
    while engine.slots.used(engine.table.segment_of(0)) < SPLIT_AT:
        store.create(f"k{n}", {"n": n})
        n += 1
    return store


@pytest.mark.parametrize("gap", ["reader", "writer"])
def test_a_read_overlapping_a_split_is_not_trusted(tmp_path: Any, gap: str) -> None:
    """A lock-free read that overlaps a segment split (the segment zeroed, its entries not
    yet put back) must not return what it found there.  The seqlock's two counters leave
    a gap on each side: a reader switched out between its ``changes`` check and its
    ``generation`` read, or a writer switched out between its ``generation`` and
    ``changes`` bumps, let the read begin at the writer's new generation, and the end
    check compared only ``generation``: ``get`` said a key stored throughout was missing."""
    store = _full_segment(tmp_path)
    get_generation = _line_of(mmapkv.Store.get, "generation = engine.generation")
    get_lookup = _line_of(mmapkv.Store.get, "found = engine.get(kb, fp)")
    get_locked = _line_of(mmapkv.Store.get, "with self._lock:")
    enter_counted = _line_of(Engine.__enter__, "self.changes += 1")
    split_zeroed = _line_of(Table.split, "sibling = self._new_segment(")
    began, entered, mid_split, decided, go_on = (threading.Event() for _ in range(5))
    go_on.set()  # the reader only says it reached the lock, and goes on to wait for it
    if gap == "reader":  # reader: past `changes`, before `generation`; then the writer runs
        reader_points = {get_generation: (began, mid_split), get_locked: (decided, go_on)}
        writer_points = {split_zeroed: (mid_split, decided)}
    else:  # writer: generation bumped, changes not yet; the reader starts, then the split
        reader_points = {get_lookup: (began, mid_split), get_locked: (decided, go_on)}
        writer_points = {enter_counted: (entered, began), split_zeroed: (mid_split, decided)}
    got: list[Any] = []

    def reader() -> None:
        if gap == "writer":
            entered.wait(10)
        sys.settrace(_pausing(reader_points))
        try:
            got.append(store.get("k0"))
        finally:
            sys.settrace(None)
            decided.set()  # returned without the lock: let the writer go on

    def writer() -> None:
        if gap == "reader":
            began.wait(10)
        sys.settrace(_pausing(writer_points))
        try:
            store.create("splits", {"n": -1})
        finally:
            sys.settrace(None)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert began.is_set() and mid_split.is_set()  # the schedule happened
    assert got == [{"n": 0}]
    assert store.stats().table_segments == 2
    store.close()


@pytest.mark.parametrize("change", ["expire", "persist"])
@pytest.mark.parametrize("ask", ["in", "ttl"])
def test_a_lockfree_expiry_is_judged_by_a_clock_read_inside_its_look(tmp_path: Any, change: str,
                                                                       ask: str) -> None:
    """``in`` and ``ttl`` read the expiry without the lock, then the clock after their
    generation check: an ``expire`` or ``persist`` in between left them judging the old
    expiry by a later time, so a key alive at every instant was "expired" (``ttl`` said
    so even of a key with no TTL).  The reader's clock reading here waits for the change."""
    now = [1000.0]
    reader = threading.Event()  # set by the reader thread: its next reading waits
    reading, changed = threading.Event(), threading.Event()

    def clock() -> float:
        if threading.current_thread().name == "reader" and reader.is_set():
            reader.clear()
            reading.set()
            changed.wait(30)
        return now[0]

    with mmapkv.Store(os.path.join(tmp_path, "s"), clock=clock) as store:
        store.create("k", {"v": 1}, ttl=10)  # expires at 1010
        now[0] = 1009.0
        answers: list[Any] = []

        def ask_it() -> None:
            reader.set()
            try:
                answers.append("k" in store if ask == "in" else store.ttl("k"))
            except mmapkv.MmapKVError as exc:
                answers.append(exc)

        thread = threading.Thread(target=ask_it, name="reader")
        thread.start()
        assert reading.wait(30)
        store.expire("k", 100) if change == "expire" else store.persist("k")  # at 1009: alive
        now[0] = 1010.0  # the old expiry's instant
        changed.set()
        thread.join(30)
        expected = {"in": True, "ttl": 99 if change == "expire" else None}[ask]
        assert answers == [expected]


def test_a_stdlib_decode_of_a_reused_sub_slot_is_not_trusted(tmp_path: Any) -> None:
    """A value with an int beyond 64 bits is decoded by stdlib ``json``, in Python, so a
    writer can run between the lock-free read's checksum check and its decode.  One that
    freed the record and wrote another into its sub-slot left the view on a run of ``[``,
    and ``json`` raised ``RecursionError``, which the read did not count as torn: it
    escaped instead of the read being done again under the lock (a review)."""
    key, big = "k" * 20, {"n": 2 ** 70, "pad": "x" * 1500}
    store = mmapkv.Store(os.path.join(tmp_path, "s.mmapkv"))
    store.set(key, big)
    at_decode, written = threading.Event(), threading.Event()
    points = {_line_of(mmapkv.Store.get, "value = _loads(found[0])"): (at_decode, written)}
    got: list[Any] = []

    def reader() -> None:
        sys.settrace(_pausing(points))
        try:
            got.append(store.read(key))
        except BaseException as exc:
            got.append(exc)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=reader)
    thread.start()
    assert at_decode.wait(10)
    store.set(key, big)  # a new record; the old sub-slot, still under the reader's view, is free
    store.set("f", {"s": "[" * 2000})  # the lowest free sub-slot of its class: that one
    written.set()
    thread.join(30)
    assert got == [big]
    store.close()
