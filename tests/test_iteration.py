"""Iterating a Store streams its keys a table segment at a time (``Engine.scan``).

A key stored for the whole iteration is met exactly once, whatever happens between two
steps: creates that split segments, deletes, overwrites, TTL changes, a compact or a
repair that rebuilds the table coarser; keys created or deleted meanwhile may or may not
be met, and nothing else is.  Memory stays at one step's keys: ``popitem`` reads one.
"""

from __future__ import annotations

import inspect
import os
import random
import shutil
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from conftest import FakeClock
from mmapkv import engine as engine_module
from mmapkv import table as table_module
from mmapkv import transfer
from mmapkv.format import RECORD_FIELDS, RECORD_HEADER, SB_LAYOUT_CHECKSUM

SPLIT_AT = 8  # instead of 1,024: a few hundred keys make dozens of segments


@pytest.fixture
def many_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "SPLIT_AT", SPLIT_AT)


@pytest.fixture
def store(tmp_path: Any, clock: FakeClock, many_segments: None) -> Iterator[mmapkv.Store]:
    with mmapkv.Store(os.path.join(tmp_path, "s.mmapkv"), clock=clock) as opened:
        yield opened


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The cursor of every ``Engine.scan`` step from here on."""
    cursors: list[int] = []
    real_scan = engine_module.Engine.scan

    def counted(self: Any, cursor: int, now: float) -> Any:
        cursors.append(cursor)
        return real_scan(self, cursor, now)

    monkeypatch.setattr(engine_module.Engine, "scan", counted)
    return cursors


def segments(store: mmapkv.Store) -> int:
    assert store._engine is not None
    return store._engine.table.segment_count


def test_every_key_once_in_a_quiet_store(store: mmapkv.Store) -> None:
    store.batch_create({f"k{i}": {"i": i} for i in range(500)})
    assert segments(store) > 30
    listed = list(iter(store))
    assert len(listed) == 500 and set(listed) == {f"k{i}" for i in range(500)}
    assert dict(store.items()) == {f"k{i}": {"i": i} for i in range(500)}


def test_iteration_reads_the_store_as_it_goes(store: mmapkv.Store) -> None:
    """Not a snapshot: a key deleted before the walk reaches it is not met (a list of the
    keys taken at the start would still name it)."""
    store.batch_create({f"k{i}": {"i": i} for i in range(500)})
    walk = iter(store)
    first = next(walk)
    store.clear()
    rest = list(walk)
    assert len(rest) < SPLIT_AT and first not in rest  # only the first step's other keys


def test_expired_keys_are_not_met(store: mmapkv.Store, clock: FakeClock) -> None:
    store.batch_create({f"k{i}": {"i": i} for i in range(100)})
    store.batch_create({f"t{i}": {"i": i} for i in range(100)}, ttl=10)
    clock.advance(10)
    assert sorted(store) == sorted(f"k{i}" for i in range(100))


def test_a_key_is_not_met_at_its_expiry_instant(store: mmapkv.Store, clock: FakeClock) -> None:
    """At exactly now == expires the key has expired (read says so): a walk that kept it
    until the instant after (``now <= expires``) would hand iteration a key that ``read``,
    ``get`` and ``keys()`` no longer give.  The walk comes first, by ``iter`` alone:
    ``list(store)`` asks ``len`` first, which reclaims the expired entry, and nothing
    would be left for the walk to get wrong."""
    store.create("k", {}, ttl=10)
    clock.advance(10)
    assert list(iter(store)) == []
    assert store.keys() == []
    with pytest.raises(mmapkv.KeyNotFoundError):
        store.popitem()
    assert store.get("k") is None and len(store) == 0


@pytest.mark.parametrize("seed", range(12))
def test_keys_stored_throughout_are_met_exactly_once(store: mmapkv.Store, clock: FakeClock,
                                                     seed: int) -> None:
    """A seeded walk: between any two steps of an iteration, the store changes at random.
    The stable keys are overwritten and get TTLs (long ones) but are never deleted; the
    volatile ones come and go, growing and splitting the table; now and then a compact
    (after many deletes: a coarser table) or a repair rebuilds the table."""
    rng = random.Random(seed)
    stable = {f"s{i}" for i in range(rng.randint(50, 400))}
    store.batch_create({key: {"v": 0} for key in stable})
    volatile: set[str] = set()
    ever: set[str] = set(stable)
    counter = 0
    coarser = 0
    met: Counter[str] = Counter()
    for key in store:
        met[key] += 1
        for _ in range(rng.randint(0, 6)):
            roll = rng.random()
            if roll < 0.35:
                counter += 1
                new = f"v{counter}"
                store.create(new, {"v": counter})
                volatile.add(new)
                ever.add(new)
            elif roll < 0.6 and volatile:
                gone = rng.choice(sorted(volatile))
                store.delete(gone)
                volatile.discard(gone)
            elif roll < 0.8:
                store.set(rng.choice(sorted(stable)), {"v": rng.random()})
            elif roll < 0.9:
                key_ = rng.choice(sorted(stable))
                store.expire(key_, 3600) if rng.random() < 0.5 else store.persist(key_)
            elif roll < 0.95:
                before = segments(store)
                for gone in sorted(volatile):
                    store.delete(gone)
                volatile.clear()
                transfer.compact(store)
                coarser += segments(store) < before
            else:
                assert store._engine is not None
                store._engine.changes += 1  # as an interrupted change leaves it: the next call repairs
    assert all(met[key] == 1 for key in stable), {k: met[k] for k in stable if met[k] != 1}
    assert max(met.values()) == 1, [k for k, n in met.items() if n > 1]
    assert set(met) <= ever
    if seed == 0:
        assert coarser, "no compact made the table coarser: the case this test is for"
    assert store.verify() == []


def test_popitem_reads_one_step(store: mmapkv.Store, scans: list[int]) -> None:
    store.batch_create({f"k{i}": {"i": i} for i in range(500)})
    key, value = store.popitem()
    assert value == {"i": int(key[1:])} and key not in store and len(store) == 499
    assert len(scans) == 1, f"popitem walked {len(scans)} segments of {segments(store)}"


def test_popitem_over_expired_keys_reclaims_them(store: mmapkv.Store, clock: FakeClock,
                                                scans: list[int]) -> None:
    """popitem() on a store whose keys all expired reclaims them (a sweep, as len() runs)
    before it walks: a lap over them found nothing, left them in place, and every later
    call read them all again (180 to 414 ms a call over 100,000 keys)."""
    store.batch_create({f"k{i}": {"i": i} for i in range(500)}, ttl=10)
    clock.advance(10)
    for _ in range(2):
        with pytest.raises(mmapkv.KeyNotFoundError, match="empty"):
            store.popitem()
    engine = store._engine
    assert engine is not None and engine.live_count == 0 and engine.ttl_count == 0
    assert len(scans) <= 2 * segments(store), (len(scans), segments(store))
    assert store.verify() == []


def test_a_damaged_expiry_does_not_hide_a_damaged_entry(tmp_path: Any, clock: FakeClock,
                                                        many_segments: None) -> None:
    """A record whose expiry field is damaged into the past fails its checksum: keys() and
    iteration report it and drop it, as any damaged entry, and len() then agrees.  Skipping
    an expired entry before its checksum hid it, and len() counted it for good (no sweep
    looks at a slot whose bound never saw that expiry)."""
    with mmapkv.Store(os.path.join(tmp_path, "s.mmapkv"), clock=clock) as store:
        store.create("a", {"v": 1})
        store.create("b", {"v": 2}, ttl=500)  # a TTL in the store: walks read expiries
        engine = store._engine
        assert engine is not None
        off = engine.record_offset(engine.find(b"a", engine.fingerprint(b"a")))
        at = off + struct.calcsize(RECORD_HEADER.format[:1 + RECORD_FIELDS.index("expires_at")])
        engine._mm[at:at + 8] = struct.pack("<d", 5.0)
        with pytest.raises(mmapkv.CorruptStoreError, match="1 entry fails its checksum"):
            store.keys()
        assert store.keys() == ["b"] and len(store) == 1 and store.verify() == []


def test_popitem_whose_pending_keys_another_thread_took(store: mmapkv.Store) -> None:
    """popitem() keeps the keys of its last step in a list all threads share, checked and
    popped outside the lock: another thread emptying it between the two (as a line tracer
    lets one, a debugger's) made popitem raise a bare IndexError.  Forced here: the list
    is emptied just before the pop, and popitem walks on and pops a key."""
    store.batch_create({f"k{i}": {"i": i} for i in range(3)})
    store.popitem()  # the step's other keys are left pending
    code = mmapkv.Store.popitem.__code__
    pop_line = next(number for number, line in enumerate(inspect.getsourcelines(code)[0], code.co_firstlineno)
                    if "key = pending.pop()" in line)
    taken = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def on_line(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == pop_line and not taken:
                taken.extend(store._popping[1])
                store._popping[1].clear()  # what the other thread's pops leave
            return on_line
        return on_line

    sys.settrace(tracer)
    try:
        key, value = store.popitem()
    finally:
        sys.settrace(None)
    assert taken and value == {"i": int(key[1:])} and len(store) == 1


def test_a_damaged_entry_met_by_the_walk(tmp_path: Any, many_segments: None) -> None:
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.batch_create({f"k{i}": {"i": i, "marker": f"<{i}>"} for i in range(200)})
    with open(path, "r+b") as f:  # one byte of k7's value, as a bad sector would leave it
        data = f.read()
        at = data.index(b"<7>") + 1
        f.seek(at)
        f.write(b"X")
    with mmapkv.Store(path) as store:
        with pytest.raises(mmapkv.CorruptStoreError, match="1 entry fails its checksum.*iterate again"):
            list(iter(store))
        assert sorted(store) == sorted(f"k{i}" for i in range(200) if i != 7)
        assert store.verify() == []



def test_keys_lists_what_iteration_meets_in_its_order(store: mmapkv.Store, clock: FakeClock) -> None:
    """``keys()`` walks the table as iteration does (one hold of the lock): the same keys
    in the same order, as ``dict`` gives, expired ones left out by both."""
    store.batch_create({f"k{i}": {"i": i} for i in range(300)})
    store.batch_create({f"t{i}": {"i": i} for i in range(100)}, ttl=10)
    for i in range(0, 300, 7):
        store.delete(f"k{i}")
    clock.advance(10)
    assert segments(store) > 20
    listed = store.keys()
    assert listed == list(iter(store))
    assert sorted(listed) == sorted(f"k{i}" for i in range(300) if i % 7)


@pytest.mark.parametrize("how", ["lost", "doubled", "copied-over-another"])
def test_keys_finds_a_record_whose_table_entry_was_lost(tmp_path: Any, many_segments: None, how: str) -> None:
    """A table entry zeroed on disk, a key's entry copied over an empty place, or over
    another key's entry, leaves the table's entries not numbering the live records, or
    indexing a key twice: ``keys()`` then walks the records instead.  It finds the key
    the table lost, has recovery index its intact record again and lists it (a walk of
    the table alone never sees it), and lists a key whose entry is doubled once (a walk
    of the table twice).  No value was lost, so it says nothing: it said "1 entry fails
    its checksum and was dropped (the values are lost)", and a copy over another entry
    (the count still right) listed one key twice and lost the other (a review)."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.batch_create({f"k{i}": {"i": i} for i in range(200)})
        engine = store._engine
        assert engine is not None
        position = engine.find(b"k7", engine.fingerprint(b"k7"))
        base = position - (position - engine.table.q0) % table_module.SEGMENT_STRIDE
        empty = next(base + i for i in range(table_module.SEGMENT_ENTRIES) if not engine._q[base + i])
        other = next(base + i for i in range(table_module.SEGMENT_ENTRIES)
                     if engine._q[base + i] and base + i != position)
        entry = engine._q[position]
    with open(path, "r+b") as f:
        if how == "lost":
            f.seek(position * 8)
            f.write(bytes(8))
        else:  # k7's entry in its own place and in another: k7 listed twice by the table
            f.seek((empty if how == "doubled" else other) * 8)
            f.write(struct.pack("<Q", entry))
    with mmapkv.Store(path) as store:
        if how == "lost":
            assert "k7" not in store and "k7" not in list(iter(store))  # what the table says
        assert sorted(store.keys()) == sorted(f"k{i}" for i in range(200))  # each once, at once
        assert store.read("k7") == {"i": 7} and store.verify() == []


@pytest.mark.parametrize("listing", ["keys", "iteration"])
def test_a_directory_entry_naming_another_segment_is_damage(tmp_path: Any, many_segments: None,
                                                            listing: str) -> None:
    """A walk visits a segment at the first directory entry of its run; one damaged entry
    further in the run sends reads elsewhere.  The walk checks the whole run: ``keys()``
    then walks the records, and both it and iteration repair the table, so that what they
    list reads (a review: ``keys()`` listed five keys ``read`` said were not stored)."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None
        names = (f"k{i}" for i in range(100_000))
        # fingerprints ending 00 split deep; those ending 1 stay in one segment of depth 1,
        # and these end 0b0000000101: directory entry 5 leads to them
        deep, odd = [], []
        while len(deep) < 120 or len(odd) < 5:
            name = next(names)
            fp = engine.fingerprint(name.encode())
            (deep if fp & 3 == 0 else odd if fp & 1023 == 5 and len(odd) < 5 else []).append(name)
        store.update({name: {"n": name} for name in deep[:120] + odd})
        table = engine.table
        assert engine.slots.info(table.dir[1])[1] == 1 and 3 <= table.depth <= 10
        at, other = engine.geometry.dir_offset + 2 * 5, table.dir[0]  # entry 0b101: the odd run's
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<H", other))
        f.seek(SB_LAYOUT_CHECKSUM)  # as an older mmapkv's file: else the open recovers first
        f.write(bytes(8))
    with mmapkv.Store(path) as store:
        assert all(store.get(name) is None for name in odd)  # reads go where the entry says
        # no value was lost: both repair the table and list every key at once
        listed = store.keys() if listing == "keys" else list(iter(store))
        assert sorted(listed) == sorted(deep[:120] + odd)
        assert all(store.get(name) == {"n": name} for name in listed) and store.verify() == []


def test_popitem_empties_a_store_reading_each_segment_about_once(store: mmapkv.Store,
                                                                 scans: list[int]) -> None:
    """``while store: store.popitem()`` goes on from where the last one stopped, rather
    than walking from the start each time past the segments it emptied (which made
    emptying a store quadratic); keys created behind it meanwhile are still found, and it
    says "empty" only after a whole lap."""
    want = {f"k{i}": {"i": i} for i in range(500)}
    store.batch_create(want)
    popped = dict(store.popitem() for _ in range(250))
    late = {f"late{i}": {"i": i} for i in range(100)}  # many land in segments already emptied
    store.batch_create(late)
    count = segments(store)
    while True:
        try:
            key, value = store.popitem()
        except mmapkv.KeyNotFoundError:
            break
        assert key not in popped
        popped[key] = value
    assert popped == {**want, **late} and len(store) == 0
    # to the end, round to where it stopped, and one lap to find it empty: 3 laps at most
    # (starting from the beginning each time took thousands of scans)
    assert len(scans) <= 3 * count, f"{len(scans)} scans to empty {count} segments"
    with pytest.raises(mmapkv.KeyNotFoundError):
        store.popitem()


def test_popitem_finds_keys_behind_where_it_stopped(store: mmapkv.Store) -> None:
    """The keys left are all behind the place the last ``popitem`` stopped at: the next
    one must go round the end of the order to them, not say "empty"."""
    store.batch_create({f"k{i}": {"i": i} for i in range(500)})
    for _ in range(250):
        store.popitem()
    for key in list(store):
        del store[key]
    engine = store._engine
    assert engine is not None
    cursor, bits = store._popping[0], engine.table.max_depth
    assert cursor > 0

    def place(key: str) -> int:  # where the walk meets the key
        return engine_module._reversed(engine.fingerprint(key.encode()), bits)

    store.batch_create({f"late{i}": {"i": i} for i in range(100)})
    behind = {f"late{i}" for i in range(100) if place(f"late{i}") < cursor}
    for key in {f"late{i}" for i in range(100)} - behind:
        del store[key]
    assert behind and len(store) == len(behind)
    assert {store.popitem()[0] for _ in range(len(behind))} == behind
    with pytest.raises(mmapkv.KeyNotFoundError):
        store.popitem()


def test_popitem_after_the_table_got_coarser_answers(store: mmapkv.Store) -> None:
    """After ``clear()`` (or a compact) the table may be one run, and the place the last
    ``popitem`` stopped inside it: the lap then never came back past that place, and the
    next ``popitem`` looped forever.  It must say "empty", or find the keys there are."""
    store.batch_create({f"k{i}": {"i": i} for i in range(500)})
    store.popitem()
    assert store._popping[0] > 0
    store.clear()
    outcome: list[Any] = []

    def pop_twice() -> None:
        try:
            store.popitem()
        except mmapkv.KeyNotFoundError:
            outcome.append("empty")
        store.create("only", {"v": 1})
        outcome.append(store.popitem())

    worker = threading.Thread(target=pop_twice, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "popitem() looped forever"
    assert outcome == ["empty", ("only", {"v": 1})]


@pytest.mark.parametrize("wrong_by", [1, -1])
def test_a_damaged_segment_depth_is_repaired_not_walked(tmp_path: Any, wrong_by: int) -> None:
    """A segment's depth (one byte of its slot info, which no lookup reads) that disagrees
    with the directory made a walk list a run twice (too deep) or skip one (too shallow),
    silently.  The walk must notice, rebuild the table, and still meet every key once."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.batch_create({f"k{i}": {"i": i} for i in range(6000)})
        engine = store._engine
        assert engine is not None and engine.table.depth >= 2
        segment = engine.table.segments()[0]
        depth = engine.slots.info(segment)[1]
        at = engine.geometry.info_offset + 24 * segment + 1
    with open(path, "r+b") as f:
        f.seek(at)
        assert f.read(1) == bytes([depth])  # the byte the slot info keeps the depth in
        f.seek(at)
        f.write(bytes([depth + wrong_by]))
    with mmapkv.Store(path) as store:
        met = Counter(iter(store))
        assert len(met) == 6000 and max(met.values()) == 1
        assert store.verify() == []


def test_deletes_never_merge_by_a_damaged_segment_depth(tmp_path: Any, many_segments: None) -> None:
    """A segment whose depth byte reads one level too shallow looks like its neighbour's
    buddy: deletes that thinned both merged them by it, pointing the directory entries of
    the segment's real sibling at the merged one, so keys never deleted read as missing
    (and could be created again) in a store that looked clean (a review).  A merge checks
    both depths against the directory first, as a walk does."""
    path = os.path.join(tmp_path, "s.mmapkv")
    keys = [f"k{i}" for i in range(300)]
    with mmapkv.Store(path) as store:
        for key in keys:
            store.create(key, {"k": key})
        engine = store._engine
        assert engine is not None
        table = engine.table
        segment_of = {key: table.segment_of(engine.fingerprint(key.encode())) for key in keys}
        fp_of = {key: engine.fingerprint(key.encode()) for key in keys}
        depth_of = {segment: engine.slots.info(segment)[1] for segment in table.segments()}
        directory, dmask = table.dir[:1 << table.depth].tolist(), table.dmask
        info_offset = engine.geometry.info_offset
    tried = 0
    for segment, depth in depth_of.items():
        mine = [key for key in keys if segment_of[key] == segment]
        wrong = depth - 1  # one level too shallow: a neighbour of that depth looks like its buddy
        if wrong < 1 or not mine:
            continue
        buddy = directory[(fp_of[mine[0]] ^ 1 << (wrong - 1)) & dmask]
        if buddy == segment or depth_of[buddy] != wrong:
            continue
        tried += 1
        damaged = os.path.join(tmp_path, f"damaged{segment}.mmapkv")
        shutil.copyfile(path, damaged)
        with open(damaged, "r+b") as f:
            f.seek(info_offset + 24 * segment + 1)
            f.write(bytes([wrong]))
        gone = set([key for key in keys if segment_of[key] == buddy] + mine[1:])  # 1 left: they merge
        with mmapkv.Store(damaged) as store:
            for key in sorted(gone):
                store.delete(key)
            assert [key for key in keys if key not in gone and store.get(key) is None] == []
        os.unlink(damaged)
    assert tried
