"""Limits and growth: slots doubling up to the ceiling, StoreFullError only when neither a
sub-slot of the record's class nor a free slot is left, the slots size classes strand and
compact repacking them, max_size rules, and the default location with the module-level
functions."""

from __future__ import annotations

import array
import errno
import hashlib
import os
import random
import stat
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmapkv
from conftest import FakeClock, slot_of, table_shape
from mmapkv import InvalidArgumentError, StoreFullError, codec, transfer
from mmapkv import engine as engine_module
from mmapkv import table as table_module
from mmapkv.format import CLASS_SIZES, FINGERPRINT_SHIFT, KEY_OFFSET, MAX_FILE_SIZE, SLOT_SIZE, Geometry, class_for
from mmapkv.slots import PER_SLOT, Slots

SMALLEST = Geometry.smallest_max_size()


def ceiling_of(slots: int) -> int:
    """The smallest ceiling (in pages) whose file holds *slots* slots."""
    size = SMALLEST
    while Geometry(size).max_slots < slots:
        size += 4096
    return size

GROWTH_MAX_SIZE = 4 << 20  # 8 initial slots, four doublings, then clamped at 204 slots
WHOLE = {"pad": "x" * 12_000}   # a record over 10,240 bytes: one whole slot per key
SMALL = {"pad": "x" * 90}       # a 160-byte record: 128 keys per slot
MEDIUM = {"pad": "x" * 180}     # a 256-byte record: 80 keys per slot
THREE_KB = {"pad": "y" * 3_000}  # a 4,096-byte record: 5 keys per slot


def value_for(i: int) -> dict[str, Any]:
    """A value of varying size (up to ~16 KB, so of many classes), unique per *i*."""
    return {"i": i, "pad": "é" * (i * 97 % 8000)}


def class_size(key: str, value: dict[str, Any]) -> int:
    """The sub-slot size the record of *key* and *value* takes."""
    return CLASS_SIZES[class_for(KEY_OFFSET + len(key.encode()) + len(codec.encode(value)[0]))]


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def expected_sizes(max_size: int) -> list[int]:
    """Every size the file takes on its way to the ceiling, per Geometry.grown_size."""
    g = Geometry(max_size)
    sizes = [g.initial_size]
    while g.grown_size(sizes[-1]) != sizes[-1]:
        sizes.append(g.grown_size(sizes[-1]))
    return sizes


def full_size(max_size: int) -> int:
    g = Geometry(max_size)
    return g.file_size(g.max_slots)


@pytest.fixture
def path(tmp_path: Any) -> Iterator[str]:
    p = os.path.join(tmp_path, "grow.mmapkv")
    yield p
    if os.path.exists(p):  # the disk is shared: do not leave megabytes behind
        os.unlink(p)


def fill(store: mmapkv.Store, count: int, start: int = 0,
         value: Any = value_for) -> list[int]:
    """Create keys k<start>..; return the file size after each create."""
    sizes = []
    for i in range(start, start + count):
        store.create(f"k{i}", value(i) if callable(value) else value)
        size = os.path.getsize(store.path)
        assert size <= store.stats().max_size
        sizes.append(size)
    return sizes


def fill_until_full(store: mmapkv.Store, value: dict[str, Any], prefix: str = "f") -> list[str]:
    """Create keys <prefix>0.. holding *value* until StoreFullError, which must come only
    at the ceiling; return the keys created."""
    keys: list[str] = []
    while True:
        key = f"{prefix}{len(keys):05d}"
        try:
            store.create(key, value)
        except StoreFullError:
            assert os.path.getsize(store.path) == full_size(store.stats().max_size)
            return keys
        keys.append(key)


# --------------------------------------------------------------------- growth

def test_growth_doubles_slots_up_to_the_ceiling(path: str) -> None:
    """With one whole slot per key, the file starts at 8 slots, doubles exactly when the
    slots run out (the table's segment takes one), takes exactly the sizes
    Geometry.grown_size gives, and ends clamped at the ceiling's slot count."""
    sizes = expected_sizes(GROWTH_MAX_SIZE)
    g = Geometry(GROWTH_MAX_SIZE)
    assert [g.slot_count(s) for s in sizes] == [8, 16, 32, 64, 128, 204]
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        assert os.path.getsize(path) == g.initial_size
        seen = fill(store, g.max_slots - 1, value=WHOLE)
        assert sorted(set(seen)) == sizes
        assert seen == sorted(seen)  # never shrinks
        for i, size in enumerate(seen):  # create i made i + 1 records, plus the segment
            assert g.slot_count(size) >= i + 2
            if i and size != seen[i - 1]:
                assert g.slot_count(seen[i - 1]) == i + 1  # it was full
        stats = store.stats()
        assert stats.file_size == full_size(GROWTH_MAX_SIZE) == os.path.getsize(path)
        assert stats.capacity == stats.max_capacity == g.max_slots == len(store) + 1
        assert stats.free_slots == 0
        assert store.verify() == []


def test_growth_remaps_in_place(path: str) -> None:
    """A growth extends the map it has (mremap: no unmapping of the pages written through
    it, which paused a create for 192 ms in the 1 GiB fill), so the engine keeps the same
    mmap object across every doubling, and what it held reads back after each."""
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        engine = store._engine
        assert engine is not None
        mm = engine._mm
        sizes = fill(store, Geometry(GROWTH_MAX_SIZE).max_slots - 1, value=WHOLE)
        assert sorted(set(sizes)) == expected_sizes(GROWTH_MAX_SIZE)  # it grew, five times
        assert store._engine is engine and engine._mm is mm and len(mm) == sizes[-1]
        assert all(store.read(f"k{i}") == WHOLE for i in range(len(sizes)))
        assert store.verify() == []


def test_growth_while_a_view_is_held_maps_anew(path: str) -> None:
    """mremap is refused while a view of the map is held outside the engine (a lock-free
    reader caught mid-read holds one): the growth then makes a new map, and the view held
    still reads the old bytes."""
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        engine = store._engine
        assert engine is not None
        store.create("k0", WHOLE)
        found = engine.get(b"k0", engine.fingerprint(b"k0"))
        assert found is not None
        held, old = found[0], engine._mm
        start = os.path.getsize(path)
        fill(store, 20, start=1, value=WHOLE)
        assert os.path.getsize(path) > start
        assert engine._mm is not old and not old.closed  # unmapped when the view goes
        assert codec.decode(held, 0) == WHOLE
        held.release()
        assert all(store.read(f"k{i}") == WHOLE for i in range(21)) and store.verify() == []


def test_a_paused_walk_with_expiries_holds_no_view_of_the_map(path: str) -> None:
    """``items_with_expiry`` suspended at a yield keeps no view of the map (it kept the
    last record's), so a growth meanwhile still resizes the map in place rather than
    mapping the file a second time until the walk moves on."""
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        engine = store._engine
        assert engine is not None
        store.create("k0", WHOLE)
        walk = store.items_with_expiry(["k0", "k1"])
        assert next(walk) == ("k0", WHOLE, None)
        mm, start = engine._mm, os.path.getsize(path)
        fill(store, 20, start=1, value=WHOLE)
        assert os.path.getsize(path) > start
        assert engine._mm is mm
        assert next(walk) == ("k1", WHOLE, None)


@pytest.mark.parametrize("map_writes", [True, False])
def test_growth_reserves_the_new_part_only_when_the_rest_is_allocated(
        path: str, monkeypatch: pytest.MonkeyPatch, map_writes: bool) -> None:
    """A growth allocates only the blocks it adds when the session's first change reserved
    the whole file (records then go through the map); otherwise it allocates from 0, which
    fills any hole a sparse copy left."""
    from mmapkv import engine as eng

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here: growth uses ftruncate")
    calls: list[tuple[int, int]] = []
    real = os.posix_fallocate
    monkeypatch.setattr(eng.os, "posix_fallocate",
                        lambda fd, offset, length: calls.append((offset, length)) or real(fd, offset, length))
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        engine = store._engine
        assert engine is not None
        store.create("k0", WHOLE)
        engine._map_writes = map_writes
        old = os.path.getsize(path)
        calls.clear()
        fill(store, 20, start=1, value=WHOLE)
        assert os.path.getsize(path) > old
        new = Geometry(GROWTH_MAX_SIZE).grown_size(old)
        assert calls[0] == ((old, new - old) if map_writes else (0, new))  # the first growth
        assert all(store.read(f"k{i}") == WHOLE for i in range(21))


def test_small_records_share_slots_before_the_file_grows(path: str) -> None:
    """160-byte records fill the 7 record slots of a new file, 128 to a slot, before the
    first doubling: the file grows on the 897th create, not the 8th."""
    g = Geometry(GROWTH_MAX_SIZE)
    assert class_size("k0", SMALL) == 160
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        seen = fill(store, 7 * 128 + 1, value=SMALL)
        assert set(seen[:-1]) == {g.initial_size}
        assert seen[-1] == g.grown_size(g.initial_size)
        assert store.verify() == []


def test_a_never_used_slot_is_written_whole_before_its_first_record(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records go into the map; a slot above the high-water mark is written first, zeros
    and whole, with one pwrite (its preallocated pages then need no major fault each:
    ``Slots._zero``).  Not a slot from the pool (written before), not the next record of
    a partial slot, not a slot whose info says it is used (damage: left for the checks
    that refuse it), and nothing where records go in with pwrite."""
    writes: list[tuple[int, int]] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        writes.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    with mmapkv.Store(path) as store:
        store.create("first", {"v": 1})       # the session's first change: slot 1 started
        engine = store._engine
        assert engine is not None and engine._map_writes
        monkeypatch.setattr(os, "pwrite", pwrite)
        hw = engine.slots.high_water
        slot_start = engine.geometry.slots_offset + hw * SLOT_SIZE
        # garbage where the next new slot is, as a session before a clear may leave
        os.pwrite(engine._fd, b"\xee" * SLOT_SIZE, slot_start)
        writes.clear()
        store.create("big", {"pad": "y" * 3000})  # a class of its own: a new slot
        assert writes == [(slot_start, SLOT_SIZE)]
        with open(path, "rb") as f:
            f.seek(slot_start)
            kept = f.read(SLOT_SIZE)
        record_end = KEY_OFFSET + 3 + len(codec.encode({"pad": "y" * 3000})[0])
        assert kept[record_end:] == bytes(SLOT_SIZE - record_end)  # the garbage is gone
        writes.clear()
        store.create("big2", {"pad": "z" * 3000})  # the same slot's next sub-slot
        store.delete("big"), store.delete("big2")   # the slot goes back to the pool
        store.create("big3", {"pad": "w" * 3000})  # and is taken from it
        assert writes == []
        # a slot above the high-water mark whose info says it is used
        hw = engine.slots.high_water
        engine.slots.set_info(hw, 1 + class_for(KEY_OFFSET + 5 + 9000))
        store.create("other", {"pad": "q" * 9000})
        assert writes == []
        assert store.read("other") == {"pad": "q" * 9000}
        engine._map_writes = False                 # as where blocks could not be reserved
        engine.slots.zero_file = None
        store.create("small", {"pad": "s" * 600})
        assert [length for _, length in writes] != [SLOT_SIZE] and writes  # the record only
        assert store.verify() == []


def test_a_failed_zeroing_of_a_new_slot_changes_nothing_but_speed(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zeros are a speed-up only: if their pwrite fails (or the file is closed
    under it), the record still goes in through the map, and reads back."""
    def refused(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EIO, "injected")

    with mmapkv.Store(path) as store:
        store.create("first", {"v": 1})
        monkeypatch.setattr(os, "pwrite", refused)
        store.create("big", {"pad": "y" * 3000})
        assert store.read("big") == {"pad": "y" * 3000} and store.verify() == []
    slots = Slots(0, 0)
    with open(path, "rb", buffering=0) as closed:
        pass
    slots._zero(closed, 0)  # a closed file: nothing written, nothing raised


def test_expired_records_are_reused_before_the_file_grows(path: str) -> None:
    """A create that finds no room in the file's slots first reclaims expired records
    (room already paid for), and grows the file only if that is not enough."""
    clock = FakeClock(1_000.0)
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE, clock=clock) as store:
        for i in range(7 * 128):  # the 7 record slots of a new file, full of 160-byte records
            store.create(f"k{i}", SMALL, ttl=10 if i % 2 else None)
        assert os.path.getsize(path) == g.initial_size and store.stats().free_slots == 0
        clock.advance(10)  # every other key expires
        store.create("after", SMALL)
        assert os.path.getsize(path) == g.initial_size  # no growth: an expired sub-slot took it
        assert len(store) == 7 * 128 // 2 + 1 and store.verify() == []
        for i in range(7 * 128 // 2 - 1):  # the rest of the reclaimed room, still without growing
            store.create(f"again{i}", SMALL)
        assert os.path.getsize(path) == g.initial_size
        store.create("one-more", SMALL)
        assert os.path.getsize(path) == g.grown_size(g.initial_size)


def test_store_full_at_ceiling(path: str) -> None:
    """At the ceiling with every slot taken, a create of any class is StoreFullError naming
    the path and the ceiling and saying deleting makes room; a delete frees a whole slot,
    which a class that had none can take and fill, without growth."""
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        fill(store, g.max_slots - 1, value=WHOLE)
        for value in (WHOLE, SMALL, THREE_KB):
            with pytest.raises(StoreFullError) as info:
                store.create("overflow", value)
            message = str(info.value)
            assert path in message and f"{GROWTH_MAX_SIZE:,}" in message
            assert "delete keys" in message and "other sizes" not in message
            assert "sub-slot for 1 more" in message and "table segment" not in message
        assert "overflow" not in store
        assert len(store) == g.max_slots - 1
        assert all(store.read(f"k{i}") == WHOLE for i in range(g.max_slots - 1))
        assert store.verify() == []
        store.delete("k17")  # its slot goes to the pool
        for i in range(128):  # the small class takes it and fills all 128 sub-slots
            store.create(f"s{i}", SMALL)
        for value in (SMALL, WHOLE):
            with pytest.raises(StoreFullError):
                store.create("overflow", value)
        store.delete("s0")
        store.delete("s1")
        store.batch_create({"b1": SMALL, "b2": SMALL})  # the two freed sub-slots
        with pytest.raises(StoreFullError):
            store.batch_create({"b3": SMALL})
        assert os.path.getsize(path) == full_size(GROWTH_MAX_SIZE)
        assert len(store) == g.max_slots - 2 + 128
        assert store.verify() == []


def test_batch_that_does_not_fit_writes_nothing(path: str) -> None:
    """A batch bigger than the room left is StoreFullError with nothing written; a batch of
    exactly the room left (across several doublings) commits whole."""
    g = Geometry(GROWTH_MAX_SIZE)
    room = g.max_slots - 1  # whole-slot records; one slot is the table's
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        with pytest.raises(StoreFullError):
            store.batch_create({f"b{i}": WHOLE for i in range(room + 1)})
        assert len(store) == 0
        fill(store, 10, value=WHOLE)
        with pytest.raises(StoreFullError):
            store.batch_create([(f"b{i}", WHOLE) for i in range(room - 9)])
        assert len(store) == 10 and sorted(store.keys()) == sorted(f"k{i}" for i in range(10))
        assert store.verify() == []
        store.batch_create([(f"b{i}", WHOLE) for i in range(room - 10)])
        assert len(store) == room
        assert os.path.getsize(path) == full_size(GROWTH_MAX_SIZE)
        assert store.read(f"b{room - 11}") == WHOLE
        assert store.verify() == []


def test_batch_that_does_not_fit_does_not_grow_the_file(path: str) -> None:
    """Version 2 checked the fit first: a refused batch left the file as it was."""
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        with pytest.raises(StoreFullError) as info:
            store.batch_create({f"b{i}": WHOLE for i in range(g.max_slots)})
        assert os.path.getsize(path) == g.initial_size
        # not "full at its ceiling", as it said: the file is far below it
        assert str(info.value).startswith(f"{path} has no room for {g.max_slots:,} more keys even at "
                                          f"its {GROWTH_MAX_SIZE:,}-byte ceiling (0 keys in 8 of the "
                                          f"{g.max_slots:,} slots it may have;")


# --------------------------------------------------------------------- stranded sub-slots

def half_emptied(store: mmapkv.Store) -> tuple[list[str], int, int]:
    """Fill *store* with 160-byte records to its ceiling, then delete every other key: the
    class has free sub-slots in every slot, and no slot is free.  Returns the keys kept,
    the number deleted and the file size."""
    keys = fill_until_full(store, SMALL)
    for key in keys[::2]:
        store.delete(key)
    assert store.stats().free_slots == 0
    assert store.verify() == []
    return keys[1::2], len(keys[::2]), os.path.getsize(store.path)


def test_a_write_at_the_ceiling_gathers_a_class_to_free_slots(path: str) -> None:
    """Issue 12: at the ceiling, with one class's slots half empty and no slot free, a
    create of another class moves that class's records together until their slots give
    whole slots back (it was StoreFullError naming `mmapkv compact`, and an 8 MiB store
    95 % emptied took 10 values of 4 KB, not 1,915).  The file never grows; every kept key
    reads back, in process and after a reopen; when the creates are refused at last, the
    class sits in as few slots as its records need, as compact would leave it, and the
    message no longer sends anyone to compact.  A pass walks the class's whole partial
    list, so it frees slots for later writes too: fewer passes than slots freed."""
    max_size = ceiling_of(17)  # two table segments, the rest 160-byte records
    assert class_size("big", THREE_KB) == 4096 and class_size("f00000", SMALL) == 160
    passes: list[int] = []
    real_gather = engine_module.Engine.gather

    def counted(self: Any, *args: Any) -> int:
        freed: int = real_gather(self, *args)
        passes.append(freed)
        return freed

    with mmapkv.Store(path, max_size=max_size) as store:
        kept, _, size = half_emptied(store)
        slots_before = store._engine.class_usage()[160][0]  # type: ignore[union-attr]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(engine_module.Engine, "gather", counted)
            bigs = fill_until_full(store, THREE_KB, prefix="big")
        usage = store._engine.class_usage()  # type: ignore[union-attr]
        assert usage[160][0] == -(-len(kept) // PER_SLOT[0]) < slots_before
        assert 0 < len([freed for freed in passes if freed]) < sum(passes) == slots_before - usage[160][0]
        assert len(bigs) == usage[4096][1] > 0
        with pytest.raises(StoreFullError) as info:
            store.create("one-more", THREE_KB)
        assert "compact" not in str(info.value)
        assert os.path.getsize(path) == size
        assert all(store.read(key) == SMALL for key in kept)
        assert all(store.read(key) == THREE_KB for key in bigs)
        assert store.verify() == []
    with mmapkv.Store(path) as store:
        assert len(store) == len(kept) + len(bigs)
        assert all(store.read(key) == SMALL for key in kept)
        assert store.verify() == []


def test_a_class_without_a_slot_to_give_back_is_left_as_it_is(path: str) -> None:
    """Gathering frees a slot only where a class's free sub-slots add up to a whole slot:
    with fewer, the create is refused, saying how many sub-slots of other sizes are free
    and that they cannot make a slot, and nothing moved (every record at its offset)."""
    max_size = ceiling_of(17)
    with mmapkv.Store(path, max_size=max_size) as store:
        keys = fill_until_full(store, SMALL)
        for key in keys[:PER_SLOT[0] - 1:3]:  # 43 free sub-slots, spread over one slot
            store.delete(key)
        engine = store._engine
        assert engine is not None
        offsets = sorted(off for off, _, _, _ in engine.iter_records())
        with pytest.raises(StoreFullError) as info:
            store.create("big", THREE_KB)
        assert "(43 sub-slots of other sizes are free, too few in any size to give a slot back)" in str(info.value)
        assert sorted(off for off, _, _, _ in engine.iter_records()) == offsets
        assert store.verify() == []


def test_free_sub_slots_of_the_same_class_are_used_at_the_ceiling(path: str) -> None:
    """At the ceiling with no slot free, creates of the class whose sub-slots are free
    succeed, as many as are free, without growth; then StoreFullError."""
    max_size = ceiling_of(17)
    with mmapkv.Store(path, max_size=max_size) as store:
        kept, free, size = half_emptied(store)
        for i in range(free):
            store.create(f"again{i}", SMALL)
        assert os.path.getsize(path) == size
        with pytest.raises(StoreFullError) as info:
            store.create("one-more", SMALL)
        assert "other sizes" not in str(info.value)
        assert len(store) == len(kept) + free
        assert store.read(f"again{free - 1}") == SMALL
        assert store.verify() == []


def test_deleting_keys_gives_their_table_segments_back(tmp_path: Any) -> None:
    """The table's segments merge as keys go: a store filled with small values and emptied
    held its peak of segments for good, so it took fewer 10 KB values than a new store of
    its ceiling (688 against 814 at 8 MiB), and a walk read every empty segment."""
    ten_kb = {"p": "x" * 10_000}
    with mmapkv.Store(str(tmp_path / "new"), max_size=GROWTH_MAX_SIZE) as new:
        fresh = len(fill_until_full(new, ten_kb))
    with mmapkv.Store(str(tmp_path / "s"), max_size=GROWTH_MAX_SIZE) as store:
        engine = store._engine
        assert engine is not None
        keys = fill_until_full(store, SMALL, prefix="small")
        assert engine.table.segment_count > 8
        for key in keys:
            store.delete(key)
        assert engine.table.segment_count == 1 and store.verify() == []
        assert len(fill_until_full(store, ten_kb, prefix="big")) == fresh
        assert store.verify() == []


def test_segments_merge_below_a_quarter_of_a_split(path: str) -> None:
    """Two buddy segments merge when their entries together fall under SPLIT_AT // 4 (256),
    not before: far from where one splits (1,024), so one key added and removed at the edge
    never splits and merges in turn."""
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None
        store.batch_create({f"k{i}": {} for i in range(1100)})
        assert engine.table.segment_count == 2
        for i in range(1100 - 256):
            store.delete(f"k{i}")
        assert engine.table.segment_count == 2
        store.delete(f"k{1100 - 256}")
        assert engine.table.segment_count == 1 and engine.table.depth == 1  # the directory stays
        assert len(store) == 255 and all(store.read(f"k{i}") == {} for i in range(845, 1100))
        store.create("back", {})
        assert engine.table.segment_count == 1 and store.verify() == []


# --------------------------------------------------------------------- reopening

def test_nothing_lost_after_reopen(path: str) -> None:
    """After growth, deletes and a clean close, reopening shows every key with its value at
    the same file size, and filling goes on from there to the ceiling."""
    max_size = SMALLEST * 8
    with mmapkv.Store(path, max_size=max_size) as store:
        fill(store, 40)
        assert len({class_size(f"k{i}", value_for(i)) for i in range(40)}) >= 5
        for i in range(0, 40, 5):
            store.delete(f"k{i}")
        size = os.path.getsize(path)
        assert size > Geometry(max_size).initial_size
    with mmapkv.Store(path) as store:  # max_size=None: the file's own ceiling
        assert store.stats().max_size == max_size
        assert os.path.getsize(path) == size
        assert len(store) == 32
        for i in range(40):
            if i % 5:
                assert store.read(f"k{i}") == value_for(i)
            else:
                assert f"k{i}" not in store
        assert store.verify() == []
        more = fill_until_full(store, WHOLE)
        assert os.path.getsize(path) == full_size(max_size)
    with mmapkv.Store(path, max_size=max_size) as store:
        assert os.path.getsize(path) == full_size(max_size)
        assert len(store) == 32 + len(more)
        assert store.read("k1") == value_for(1) and store.read(more[-1]) == WHOLE
        assert store.verify() == []


def test_reopen_with_other_max_size_is_refused(path: str) -> None:
    """Reopening with a different max_size is InvalidArgumentError naming both sizes, and the
    file is left as it was; the same max_size is fine."""
    with mmapkv.Store(path, max_size=SMALLEST * 4) as store:
        store.create("a", {"v": 1})
    before = sha256(path)
    for other in (SMALLEST * 8, MAX_FILE_SIZE, SMALLEST):
        with pytest.raises(InvalidArgumentError) as info:
            mmapkv.Store(path, max_size=other)
        assert f"{SMALLEST * 4:,}" in str(info.value)
        assert f"{other:,}" in str(info.value)
        assert path in str(info.value)
    assert sha256(path) == before
    with mmapkv.Store(path, max_size=SMALLEST * 4) as store:
        assert store.read("a") == {"v": 1}


def test_default_ceiling_is_1_gib(path: str) -> None:
    """Without max_size the ceiling is exactly 1 GiB, and 1 GiB may be given explicitly."""
    with mmapkv.Store(path) as store:
        assert store.stats().max_size == MAX_FILE_SIZE == 1_073_741_824
        assert store.stats().max_capacity == Geometry(MAX_FILE_SIZE).max_slots
    with mmapkv.Store(path, max_size=MAX_FILE_SIZE) as store:
        assert store.stats().file_size == Geometry(MAX_FILE_SIZE).initial_size


@pytest.mark.parametrize(
    "max_size",
    [MAX_FILE_SIZE + 1, 2 * MAX_FILE_SIZE, SMALLEST - 1, 0, -1, 1.5 * SMALLEST, "1000000",
     True],
)
def test_max_size_out_of_range(path: str, max_size: Any) -> None:
    """max_size above 1 GiB, below the smallest layout, or not an int is
    InvalidArgumentError naming the limit, and no file is created."""
    with pytest.raises(InvalidArgumentError) as info:
        mmapkv.Store(path, max_size=max_size)
    assert isinstance(info.value, ValueError)
    assert f"{MAX_FILE_SIZE:,}" in str(info.value)
    assert not os.path.exists(path)


def test_max_size_bounds_accepted(tmp_path: Any) -> None:
    """The smallest layout and exactly 1 GiB are valid ceilings; the smallest never grows."""
    for max_size in (SMALLEST, MAX_FILE_SIZE):
        p = os.path.join(tmp_path, f"{max_size}.mmapkv")
        with mmapkv.Store(p, max_size=max_size) as store:
            store.create("a", {})
            assert store.stats().max_size == max_size
            assert os.path.getsize(p) <= max_size
    p = os.path.join(tmp_path, f"{SMALLEST}.mmapkv")
    with mmapkv.Store(p) as store:
        # 8 slots: the table's segment, the 160-byte slot of "a", six whole-slot records
        assert len(fill_until_full(store, WHOLE)) == Geometry(SMALLEST).max_slots - 2
        assert os.path.getsize(p) == Geometry(SMALLEST).initial_size
    os.unlink(os.path.join(tmp_path, f"{MAX_FILE_SIZE}.mmapkv"))


# --------------------------------------------------------------------- locations

def test_missing_parent_directories_are_created(tmp_path: Any) -> None:
    """A path whose parent directories do not exist is created, file mode 0600."""
    p = os.path.join(tmp_path, "a", "b", "c", "store.mmapkv")
    with mmapkv.Store(p) as store:
        store.create("x", {"v": 1})
    assert os.path.isfile(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    with mmapkv.Store(p) as store:
        assert store.read("x") == {"v": 1}


def test_directory_path_is_refused(tmp_path: Any) -> None:
    """A path that is a directory is InvalidArgumentError naming it; nothing is created in it."""
    d = os.path.join(tmp_path, "dir")
    os.mkdir(d)
    with pytest.raises(InvalidArgumentError) as info:
        mmapkv.Store(d)
    assert d in str(info.value)
    assert os.listdir(d) == []


def test_dangling_symlink_is_not_reported_as_locked(tmp_path: Any) -> None:
    """A path that is a symlink to a missing file either creates the store or gives a clear
    InvalidArgumentError; it is never StoreLockedError (nobody holds it)."""
    link = os.path.join(tmp_path, "link.mmapkv")
    os.symlink(os.path.join(tmp_path, "missing", "target.mmapkv"), link)
    try:
        mmapkv.Store(link).close()
    except InvalidArgumentError:
        pass


@pytest.mark.parametrize("bad", ["", "a\0b", 5, b"/tmp/x"])
def test_bad_path_type(bad: Any) -> None:
    """An empty path, one with NUL, or a non-path object is InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError):
        mmapkv.Store(bad)


@pytest.fixture
def data_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """XDG_DATA_HOME pointing at a not-yet-existing directory; the module's default store
    reset before and closed after."""
    home = os.path.join(tmp_path, "xdg", "share")
    monkeypatch.setenv("XDG_DATA_HOME", home)
    monkeypatch.setattr(mmapkv, "_default_store", None)
    yield home
    if mmapkv._default_store is not None:
        mmapkv._default_store.close()


def test_default_location(data_home: str) -> None:
    """Store() creates <XDG_DATA_HOME>/mmapkv/default.mmapkv, mode 0600, parents included."""
    expected = os.path.join(data_home, "mmapkv", "default.mmapkv")
    assert not os.path.exists(data_home)
    assert mmapkv.default_path() == expected
    with mmapkv.Store() as store:
        assert store.path == expected
        store.create("hello", {"n": 1})
    assert os.path.isfile(expected)
    assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
    with mmapkv.Store(None) as store:
        assert store.read("hello") == {"n": 1}


def test_module_level_call_while_the_default_store_opens(data_home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mmapkv.read from inside the opening of the default store (a signal handler landing
    there): ReentrantCallError, where it waited forever for its own thread's lock; the
    outer call then opens the store and completes."""
    real_store, inner_errors = mmapkv.Store, []

    def opening(*args: Any, **kwargs: Any) -> mmapkv.Store:
        try:
            mmapkv.read("any")
        except BaseException as exc:
            inner_errors.append(exc)
        return real_store(*args, **kwargs)

    monkeypatch.setattr(mmapkv, "Store", opening)
    outer = threading.Thread(target=lambda: mmapkv.create("outer", {"v": 1}), daemon=True)
    outer.start()
    outer.join(30)
    if outer.is_alive():
        pytest.fail("the call from inside the opening waits for the lock its own thread holds")
    assert [type(e) for e in inner_errors] == [mmapkv.ReentrantCallError], inner_errors
    assert mmapkv.read("outer") == {"v": 1}


def test_module_level_functions(data_home: str) -> None:
    """mmapkv.create/read/delete work on the default store and persist there."""
    mmapkv.create("mod", {"v": [1, 2]})
    mmapkv.create("mod-ttl", {"v": 2}, ttl=3600)
    assert mmapkv.read("mod") == {"v": [1, 2]}
    with pytest.raises(mmapkv.KeyExistsError):
        mmapkv.create("mod", {"v": 3})
    mmapkv.delete("mod")
    with pytest.raises(mmapkv.KeyNotFoundError):
        mmapkv.read("mod")
    with pytest.raises(mmapkv.KeyNotFoundError):
        mmapkv.delete("mod")
    store = mmapkv._default_store
    assert store is not None
    assert store.path == os.path.join(data_home, "mmapkv", "default.mmapkv")
    assert store.keys() == ["mod-ttl"]
    assert store.verify() == []
    store.close()
    assert mmapkv.read("mod-ttl") == {"v": 2}  # reopened on the next use
    mmapkv._default_store.close()  # type: ignore[union-attr]
    with mmapkv.Store() as again:
        assert again.keys() == ["mod-ttl"]


# ------------------------------------------------------------------ the table's room at the ceiling


def _fill_with_small_values(path: str) -> dict[str, dict[str, Any]]:
    """A store of GROWTH_MAX_SIZE filled with ~100 B values until it refuses one."""
    values: dict[str, dict[str, Any]] = {}
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        try:
            while True:
                key = f"k{len(values):08d}"
                store.create(key, SMALL)
                values[key] = SMALL
        except StoreFullError:
            pass
    return values


def test_a_full_store_compacts_and_its_keys_fit_a_new_one_at_once(tmp_path: Any) -> None:
    """The keys one full store holds fit a new store of the same ceiling in one go: its
    compact (which StoreFullError's message names), and a restore_entries or batch_create
    of all of them into an empty store.  All three said "do not fit": the room check
    counted each split of a table segment as 512 entries of room, where splits only where
    they must give about 700 (tables.py, needs)."""
    path = str(tmp_path / "full.mmapkv")
    values = _fill_with_small_values(path)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        for key in list(values)[::128]:  # a hole in each slot: only compact gives it back
            store.delete(key)
            del values[key]
        entries = list(store.items_with_expiry())
        transfer.compact(store)
        assert len(store) == len(values) and store.verify() == []
        assert all(store.read(key) == value for key, value in values.items())
    for how in ("restore_entries", "batch_create"):
        with mmapkv.Store(str(tmp_path / how), max_size=GROWTH_MAX_SIZE) as fresh:
            if how == "restore_entries":
                fresh.restore_entries(entries)
            else:
                fresh.batch_create([(key, value) for key, value, _ in entries])
            assert len(fresh) == len(values) and fresh.verify() == []


EDGE_SEED = 1  # a seed whose keys set the scene (on the code before the fix: AssertionError)


def test_a_batch_at_the_ceiling_keeps_the_slot_a_segment_must_have(tmp_path: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One free slot at the ceiling, which a batch's keys need to split segment A (past
    SEGMENT_FULL otherwise); the batch also passes segment B over SPLIT_AT, and B's split
    by choice took that slot first: the batch raised Python's AssertionError, its commit
    already written (the next call found all its keys there).  Now a split by choice
    leaves the slots the inserts must have, and the batch goes in."""
    path = str(tmp_path / "edge.mmapkv")
    # a hash seed of the test's own: which key lands in which segment is then the same each run
    monkeypatch.setattr(engine_module, "secrets", types.SimpleNamespace(randbits=lambda bits: EDGE_SEED))
    store = mmapkv.Store(path, max_size=ceiling_of(40))
    engine = store._engine
    assert engine is not None
    names = (f"s{n}" for n in range(10**9))

    def key_in(index: int) -> str:  # a key of the segment directory entry *index* names
        return next(k for k in names if engine.fingerprint(k.encode()) & engine.table.dmask == index)

    def used(index: int) -> int:
        return engine.slots.used(engine.table.dir[index])

    while engine.table.segment_count < 2:
        store.create(next(names), SMALL)
    wholes = []
    try:
        while True:
            wholes.append(f"whole{len(wholes)}")
            store.create(wholes[-1], WHOLE)
    except StoreFullError:
        wholes.pop()

    def grow(half: int, target: int) -> None:
        while used(half) < target:
            key = key_in(half)
            try:
                store.create(key, SMALL)
            except StoreFullError:
                store.delete(wholes.pop())
                store.create(key, SMALL)

    def records() -> int:  # slots the batch's 70 records take, beyond the partial slot's room
        return engine.slots.slots_needed({class_for(KEY_OFFSET + 6 + len(codec.encode(SMALL)[0])): 70})

    for _ in range(20):  # deleting a whole-slot key may take an entry from A or B: again
        grow(0, 1745)
        grow(1, 1005)
        while engine.slots.free_slots() < records() + 1:
            store.delete(wholes.pop())
        if used(0) >= 1745 and used(1) >= 1005:
            break
    batch = {**{key_in(1): SMALL for _ in range(20)}, **{key_in(0): SMALL for _ in range(50)}}
    # A + 50 passes SEGMENT_FULL (one split it must have), B + 20 passes SPLIT_AT (one it may)
    assert used(0) + 50 > 1792 and used(1) + 20 > 1024 and engine.slots.free_slots() == records() + 1
    assert engine.table.needs([engine.fingerprint(k.encode()) for k in batch])[1] == 1
    before = len(store)
    store.batch_create(batch)
    assert len(store) == before + 70 and store.verify() == []
    store.close()


def _splits_by_halving(fps: list[int], depth: int, max_depth: int, full: int) -> int:
    """The model: split every group over *full* by the next bit, a level at a time."""
    splits, crowded = 0, [fps] if len(fps) > full else []
    while crowded:
        if depth >= max_depth:
            return 1 << 40
        bit, halves = 1 << depth, []
        for group in crowded:
            splits += 1
            halves += [half for half in ([fp for fp in group if fp & bit], [fp for fp in group if not fp & bit])
                       if len(half) > full]
        crowded = halves
        depth += 1
    return splits


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, (1 << 39) - 1), max_size=200), st.integers(0, 6), st.integers(0, 10),
       st.integers(1, 6), st.integers(0, 4), st.lists(st.integers(0, (1 << 39) - 1), max_size=3))
def test_forced_splits_counts_the_runs_a_halving_would_split(
        fps: list[int], shared_bits: int, max_depth: int, full: int, depth: int, foreign: list[int]) -> None:
    """``_forced_splits`` (counts of runs, in C) gives the count that splitting each
    crowded group in two by the next bit gives, including "no bits left" (a small
    ``SEGMENT_FULL``, and fingerprints sharing low bits, so that splits go deep).  A
    segment of local depth d holds fingerprints alike in their low d bits, but a damaged
    entry's may not be (*foreign*): a split goes by bit d alone all the same, and the
    count must too (a review: counted by every low bit, a full segment raised)."""
    fps = [fp & ~((1 << max(shared_bits, depth)) - 1) for fp in fps] + foreign
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table_module, "SEGMENT_FULL", full)
        got = table_module._forced_splits(array.array("Q", fps), depth, max_depth)
    assert got == _splits_by_halving(fps, depth, max_depth, full)


def test_a_split_by_choice_leaves_the_slots_a_forced_one_needs(tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``Table.insert`` splits a segment past SPLIT_AT by choice only while more slots are
    free than ``reserve`` (the splits the inserts in hand must have, which ``room_for``
    sets); a segment at SEGMENT_FULL splits anyway, using one of them up.  (Small limits,
    so that a dozen entries show it.)"""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)
    monkeypatch.setattr(table_module, "SEGMENT_FULL", 14)
    store = mmapkv.Store(str(tmp_path / "t.mmapkv"))
    engine = store._engine
    assert engine is not None
    table, free = engine.table, engine.slots.free_slots()
    rng = random.Random(5)

    def insert(count: int) -> None:
        for _ in range(count):
            fp = rng.getrandbits(64) >> FINGERPRINT_SHIFT  # one segment at first: depth 0
            table.insert(fp, fp << FINGERPRINT_SHIFT | 1)

    with engine.change():
        table.reserve = free      # every free slot is spoken for
        insert(12)                # past SPLIT_AT: no split by choice
        assert table.segment_count == 1 and engine.slots.free_slots() == free
        insert(3)                 # a 15th entry would pass SEGMENT_FULL: split it must
        assert table.segment_count == 2 and table.reserve == free - 1
        table.reserve = 0         # nothing spoken for: splits by choice again
        insert(10)
        assert table.segment_count > 2
    engine.changes = 0  # the entries point at no records: drop the store unclosed
    engine._release()
    store._engine = None


def test_compact_of_a_store_whose_segment_grew_past_split_at_at_the_ceiling(tmp_path: Any) -> None:
    """At the ceiling the one table segment grew to 1,124 entries (no slot to split it
    into); compact's new file splits it by choice while it writes the records, and those
    splits spent slots the records still needed: AssertionError "no free slot" (the old
    file stood).  room_for now holds back the records' slots too."""
    wholes = 1014
    path = str(tmp_path / "c.mmapkv")
    with mmapkv.Store(path, max_size=ceiling_of(2 + wholes)) as store:
        values = {f"s{i}": {"i": i} for i in range(110)}
        for i in range(10):
            store.create(f"s{i}", values[f"s{i}"])
        for i in range(wholes):
            store.create(f"w{i}", WHOLE)
        for i in range(10, 110):
            store.create(f"s{i}", values[f"s{i}"])
        engine = store._engine
        assert engine is not None
        assert engine.slots.free_slots() == 0 and engine.table.segment_count == 1
        transfer.compact(store)
        assert store.verify() == [] and len(store) == 110 + wholes
        assert all(store.read(key) == value for key, value in values.items())


def _small_limits(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Segments that split at 8 entries and hold at most 14, in a file of a fixed hash seed."""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)
    monkeypatch.setattr(table_module, "SEGMENT_FULL", 14)
    monkeypatch.setattr(engine_module, "secrets", types.SimpleNamespace(randbits=lambda bits: seed))


def test_recovery_of_a_full_store_splits_only_where_it_must_first(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A full store (no free slot) whose table is as the writes left it; recovery (after an
    interrupted change, or a crash) rebuilt the table splitting by choice in slot order,
    spent the spare slots on segments the old table never split, and a segment it had to
    split then had none: AssertionError, at the repair and at every open after it."""
    _small_limits(monkeypatch, 1)
    path = str(tmp_path / "r.mmapkv")
    store = mmapkv.Store(path, max_size=SMALLEST)
    engine = store._engine
    assert engine is not None
    names = (f"k{n}" for n in range(10**9))
    made: dict[str, dict[str, Any]] = {}

    def create(side: int, value: dict[str, Any]) -> str:
        key = next(k for k in names if engine.fingerprint(k.encode()) & 1 == side)
        store.create(key, value)
        made[key] = value
        return key

    medium = {"pad": "b" * 150}  # one 320-byte sub-slot class: 64 to a slot
    create(0, {"v": 1})  # and a 160-byte one, started before the store fills
    for _ in range(12):
        create(1, medium)
    try:
        while True:
            create(1, WHOLE)
    except StoreFullError:
        pass
    side_a = engine.table.dir[0]
    while engine.slots.used(side_a) < 13:
        create(0, {"v": 1})
    assert engine.slots.free_slots() == 0 and store.verify() == []
    engine.changes += 1  # an interrupted change: the next call repairs, as an open after a crash
    assert len(store) == len(made) and store.verify() == []
    store.close()
    with mmapkv.Store(path) as again:
        assert {key: again.read(key) for key in made} == made


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2047), st.integers(2020, 2047), st.integers(0, 20)),
                max_size=table_module.SEGMENT_FULL - 1))
def test_a_segment_laid_out_at_once_is_the_one_inserts_make(homes: list[int]) -> None:
    """``Table._lay_out`` writes a segment's entries in one pass, in order of home.  Each
    position then holds an entry of the same home as inserting them one at a time in
    Robin Hood order leaves there (which positions a cluster covers, and the order of
    homes in it, do not depend on the order of inserts), clusters wrapping past the end
    included; and every entry is there once."""
    def segment(fill: Callable[[table_module.Table, list[int]], None]) -> list[int]:
        table = table_module.Table(None, 0, 17)  # type: ignore[arg-type]  # no slot info needed
        q = memoryview(bytearray(8 * table_module.SEGMENT_ENTRIES)).cast("Q")
        table.attach(q, memoryview(bytearray(2)).cast("H"))
        fill(table, entries)
        return q.tolist()

    entries = [((home << table_module.HOME_SHIFT | n) << FINGERPRINT_SHIFT) | (n + 1) for n, home in enumerate(homes)]
    inserted = segment(lambda table, group: [table.place(0, entry) for entry in group] and None)
    laid_out = segment(lambda table, group: table._lay_out(0, array.array("Q", group)))
    home_of = table_module.HOME_OF_ENTRY
    assert [e >> home_of & 2047 if e else -1 for e in laid_out] == [e >> home_of & 2047 if e else -1 for e in inserted]
    assert sorted(filter(None, laid_out)) == sorted(entries)


def _keys_by_low_bits(engine: engine_module.Engine, bits: int, wanted: dict[int, int]) -> list[str]:
    """Keys whose fingerprints' low *bits* are each of *wanted*'s, as many as it says."""
    keys: list[str] = []
    left = dict(wanted)
    for n in range(10**6):
        low = engine.fingerprint(f"k{n}".encode()) & ((1 << bits) - 1)
        if left.get(low):
            left[low] -= 1
            keys.append(f"k{n}")
            if not any(left.values()):
                return keys
    raise AssertionError("no such keys")


@pytest.mark.parametrize("split_at, layout", [
    (8, "600 keys"),                  # a table of depth 7: buckets split further and merged back
    (table_module.SPLIT_AT, "20,000 keys"),
    (8, "two halves of 8"),           # a half of exactly SPLIT_AT by the bucket counts splits
    (8, "two eighths of 8"),          # a bucket of exactly SPLIT_AT entries splits
])
def test_recovery_builds_the_table_inserts_and_splits_would(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                             split_at: int, layout: str) -> None:
    """Recovery builds its table whole (``Table.partition`` and ``build``) where slots
    are free: the same segments, depths and counts as inserting every entry and then
    splitting the crowded segments, which it did before (and still does at the ceiling),
    moving each entry again at every level it split."""
    monkeypatch.setattr(table_module, "SPLIT_AT", split_at)
    path = str(tmp_path / "r.mmapkv")
    store = mmapkv.Store(path)
    engine = store._engine
    assert engine is not None
    if layout.endswith(" keys"):
        names = [f"k{n}" for n in range(int(layout.split()[0].replace(",", "")))]
    elif layout == "two halves of 8":
        names = _keys_by_low_bits(engine, 1, {0: 8, 1: 8})
    else:
        names = _keys_by_low_bits(engine, 3, {0: 8, 4: 8})
    keys = len(names)
    store.batch_create({key: {"n": n} for n, key in enumerate(names)})
    built: list[list[tuple[int, int]]] = []
    real_build, answers = table_module.Table.build, []

    def build(table: table_module.Table, groups: Any, whole: bool) -> bool:
        answers.append(real_build(table, groups) if whole else False)
        return answers[-1]

    real_split, splits = table_module.Table.split, [0, 0]

    def split(table: table_module.Table, segment: int, fp: int) -> None:
        splits[whole] += 1
        real_split(table, segment, fp)

    monkeypatch.setattr(table_module.Table, "split", split)
    for whole in (True, False):
        monkeypatch.setattr(table_module.Table, "build", lambda table, groups: build(table, groups, whole))
        engine.changes += 1  # an interrupted change: the next call repairs, as an open after a crash
        assert len(store) == keys and store.verify() == []
        built.append(table_shape(engine))
    assert answers == [True, False]  # built whole, then by inserts
    assert splits[True] == 0 and splits[False] >= 3  # partition left split_crowded nothing to do
    monkeypatch.setattr(engine_module.Engine, "whole_table_limit", 0)  # inserted as found
    engine.changes += 1
    assert len(store) == keys and store.verify() == []
    built.append(table_shape(engine))
    assert answers == [True, False]  # no build asked for
    assert built[0] == built[1] == built[2] and len(built[0]) >= 4
    assert all(used < split_at for _, used in built[0])
    assert store.read(names[7]) == {"n": 7}
    store.close()


def test_a_sweep_during_a_batch_recounts_the_keys_it_removed(tmp_path: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch counts a stored key as an entry it replaces; making room, a sweep reads the
    clock again and removes that key (expired by then), and the batch inserted an entry the
    room check never counted: AssertionError with its commit written, and the repair after
    it failed the same way.  After a sweep the batch counts again."""
    _small_limits(monkeypatch, 5)
    now = [1000.0]
    path = str(tmp_path / "b.mmapkv")
    store = mmapkv.Store(path, max_size=SMALLEST, clock=lambda: now[0])
    engine = store._engine
    assert engine is not None
    names = (f"k{n}" for n in range(10**9))
    store.create(next(names), SMALL)  # a slot of 160-byte sub-slots, with room for the rest
    try:
        while True:
            store.create(next(names), WHOLE)
    except StoreFullError:
        pass
    side = min(engine.table.segments(), key=engine.slots.used)  # X: the emptiest segment

    def in_x() -> str:
        return next(k for k in names if engine.table.dir[engine.fingerprint(k.encode()) & engine.table.dmask] == side)

    doomed = in_x()
    store.create(doomed, SMALL, ttl=1)
    while engine.slots.used(side) < 14:
        store.create(in_x(), SMALL)
    assert engine.slots.free_slots() == 0
    real_reclaim = mmapkv.Store._reclaim_expired

    def later(self: mmapkv.Store, engine: Any, *args: Any) -> bool:
        now[0] = 1001.5  # time passes between the batch's clock and the sweep's
        return real_reclaim(self, engine, *args)

    monkeypatch.setattr(mmapkv.Store, "_reclaim_expired", later)
    fresh = in_x()
    try:
        store.restore_entries([(doomed, SMALL, None), (fresh, SMALL, None)], replace=True)
        assert store.read(doomed) == SMALL and store.read(fresh) == SMALL
    except StoreFullError:  # the split it must have has no slot: refused whole
        assert fresh not in store
    assert store.verify() == []
    store.close()


def test_recovery_then_splits_the_crowded_segments_while_slots_are_free(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery indexes with only the splits it must make (so the records always fit), then
    splits every segment past SPLIT_AT while a slot is free: the rebuilt table is as roomy
    as one grown insert by insert (docs/design.md)."""
    _small_limits(monkeypatch, 2)
    with mmapkv.Store(str(tmp_path / "r.mmapkv")) as store:
        store.batch_create({f"k{i}": {"i": i} for i in range(300)})
        engine = store._engine
        assert engine is not None
        engine.changes += 1  # an interrupted change: the next call recovers
        assert len(store) == 300 and store.verify() == []
        engine = store._engine
        assert engine is not None and engine.slots.free_slots() > 0
        assert max(engine.slots.used(s) for s in engine.table.segments()) < table_module.SPLIT_AT


def test_a_partial_list_that_loops_is_gathered_once_per_slot(path: str) -> None:
    """Slot info has no checksum: with a class's partial list damaged into a loop, the
    walk listed slots twice, and a batch at the ceiling that gathered met a slot it had
    emptied already and raised a bare KeyError (a review).  The walk stops where the
    list comes back; the batch goes in, every key reads back, and ``verify`` still
    reports the damaged list (nothing here repairs what it did not have to)."""
    with mmapkv.Store(path, max_size=ceiling_of(33)) as store:
        keys = fill_until_full(store, SMALL)
        for key in random.Random(1).sample(keys, int(len(keys) * 0.6)):
            store.delete(key)
        kept = {key: SMALL for key in keys if key in store}
        engine = store._engine
        assert engine is not None
        partial = engine.slots.partial_slots(0)
        engine.slots._set_link(partial[-1][1], 6, min(partial)[1] + 1)  # the tail's next: the emptiest
        assert len(engine.slots.partial_slots(0)) == len(partial)
        bigs = {f"big{i}": THREE_KB for i in range(20)}
        store.batch_create(bigs)
        assert all(store.read(key) == value for key, value in {**kept, **bigs}.items())
        findings = store.verify()
        assert findings and all("partial list" in finding for finding in findings), findings


def test_a_store_on_the_default_path_says_the_module_functions_hold_it(data_home: str, tmp_path: Any) -> None:
    """After mmapkv.create, Store() on the default path is locked by the store those
    functions keep open: the refusal says so (it said only "another process or Store");
    a store on any other path is refused without the note."""
    mmapkv.create("mod", {"v": 1})
    with pytest.raises(mmapkv.StoreLockedError, match="mmapkv.create, read and delete keep the default store open"):
        mmapkv.Store()
    other = os.path.join(tmp_path, "other.mmapkv")
    with mmapkv.Store(other):
        with pytest.raises(mmapkv.StoreLockedError) as info:
            mmapkv.Store(other)
    assert "default store" not in str(info.value)
    assert mmapkv.read("mod") == {"v": 1}


def test_a_refusal_for_a_table_split_says_so_and_only_so(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the ceiling with room for the record (free sub-slots of its size) but no slot to
    split its full table segment into, the refusal names the split alone: it always said
    no sub-slot was free as well.  (Small segments, so that some sixty keys fill one.)"""
    _small_limits(monkeypatch, 1)
    with mmapkv.Store(str(tmp_path / "t.mmapkv"), max_size=ceiling_of(8)) as store:
        created = 0
        with pytest.raises(StoreFullError) as info:
            while created < 10_000:
                store.create(f"k{created}", {"i": created})
                created += 1
        engine = store._engine
        assert engine is not None and engine.slots.free_slots() == 0
        assert engine.class_usage()[CLASS_SIZES[0]][2] > 0  # free sub-slots of the record's size
        assert len(store) == created and store.verify() == []
    message = str(info.value)
    assert "no slot to split a full table segment into for 1 new key;" in message
    assert "sub-slot" not in message


# Gathering and merging, from a mutation review: each test below failed with the rule its
# docstring states broken (a hand-made mutant of that line), where the tests above passed.


def test_a_gather_of_the_writes_own_class_asks_again(tmp_path: Any) -> None:
    """At the ceiling, a batch of 160-byte records one more than that class's free
    sub-slots: gathering the 160-byte class first gives slots back but spends exactly the
    free sub-slots the batch counted on, so the shortfall stays; ``gather`` must ask it
    again and go on to the 256-byte class, whose gathering does free room.  A single pass
    refused the batch with StoreFullError though a class had half its slots empty."""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        small: list[str] = []
        medium: list[str] = []
        try:
            while True:
                key = f"s{len(small):05d}"
                store.create(key, SMALL)
                small.append(key)
                key = f"m{len(medium):05d}"
                store.create(key, MEDIUM)
                medium.append(key)
        except StoreFullError:
            pass
        for key in small[::2] + medium[::2]:
            store.delete(key)
        assert engine.slots.free_slots() == 0
        free_small = engine.class_usage()[160][2]
        batch = {f"n{i:05d}": SMALL for i in range(free_small + 1)}
        store.batch_create(batch)
        kept = {key: SMALL for key in small[1::2]} | {key: MEDIUM for key in medium[1::2]} | batch
        assert len(store) == len(kept)
        assert all(store.read(key) == value for key, value in kept.items())
        assert store.verify() == []


def _by_slot(store: mmapkv.Store, keys: list[str]) -> dict[int, list[str]]:
    """*keys* by the slot their records are in."""
    by_slot: dict[int, list[str]] = {}
    for key in keys:
        by_slot.setdefault(slot_of(store, key), []).append(key)
    return by_slot


def test_exactly_a_slots_worth_of_free_sub_slots_gives_a_slot_back(tmp_path: Any) -> None:
    """``gather``'s rule: a class can give one slot back whenever its partial slots have a
    whole slot's worth of free sub-slots between them.  Two 160-byte slots half full (64
    free sub-slots each, 128 together, no other room): a 4 KB create at the ceiling moves
    one slot's records into the other and takes the freed slot.  (With ``free > per`` in
    place of ``free >= per`` it was refused.)"""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        keys = fill_until_full(store, SMALL, prefix="s")
        by_slot = _by_slot(store, keys)
        full = [slot for slot, members in sorted(by_slot.items()) if len(members) == 128]
        assert len(full) >= 2 and all(len(by_slot[slot]) == 128 for slot in full[:2])
        gone = by_slot[full[0]][:64] + by_slot[full[1]][:64]
        for key in gone:
            store.delete(key)
        assert engine.slots.free_slots() == 0 and engine.class_usage()[160][2] == 128
        store.create("big", {"pad": "y" * 3_000})  # a 4,096-byte record: a slot of its own class
        kept = [key for key in keys if key not in set(gone)]
        assert store.read("big") == {"pad": "y" * 3_000}
        assert all(store.read(key) == SMALL for key in kept) and len(store) == len(kept) + 1
        assert store.verify() == []


def _half_emptied(store: mmapkv.Store) -> list[str]:
    """160-byte records to the ceiling, every other one deleted: the keys kept."""
    keys = fill_until_full(store, SMALL, prefix="s")
    for key in keys[::2]:
        store.delete(key)
    return keys[1::2]


def _first_source(store: mmapkv.Store, kept: list[str]) -> str:
    """A kept key in the slot a gathering pass empties first (emptiest, then lowest)."""
    engine = store._engine
    assert engine is not None
    first = sorted(engine.slots.partial_slots(0))[0][1]
    return next(key for key in kept if slot_of(store, key) == first)


def test_a_gather_never_moves_a_record_that_fails_its_checksum(tmp_path: Any) -> None:
    """A slot holding a record that fails its checksum is left where it is: moving it
    (a fresh checksum over the damaged bytes) would make the damage read back as a value."""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        kept = _half_emptied(store)
        victim = _first_source(store, kept)
        kb = victim.encode()
        off = engine.record_offset(engine.find(kb, engine.fingerprint(kb)))
        at = bytes(engine._mm[off:off + 160]).index(b"xxxx") + 1
        engine._mm[off + at] = ord("y")   # a flipped byte in the value: still JSON
        assert not engine.is_intact(off)
        store.create("big", {"pad": "y" * 3_000})  # gathers the 160-byte class
        with pytest.raises(mmapkv.CorruptStoreError):
            store.read(victim)


def test_a_gather_never_moves_a_live_record_the_table_does_not_point_at(tmp_path: Any) -> None:
    """A LIVE record of a key whose entry points at another record (an older copy: a lost
    free, or a forged file) is not the key's value: a gather that moved it pointed the
    key's entry at the copy, and the key read back its old value."""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        kept = _half_emptied(store)
        first = sorted(engine.slots.partial_slots(0))[0][1]
        for key in [key for key in kept if slot_of(store, key) == first][:10]:
            store.delete(key)  # *first* the emptiest: the first source
        # an older copy of a key that lives in the fullest slot, written into *first*
        last = sorted(engine.slots.partial_slots(0))[-1][1]  # the fullest: a target, never a source
        other = next(key for key in kept if slot_of(store, key) == last)
        kb = other.encode()
        with engine.change():
            head, engine.slots.heads[0] = engine.slots.heads[0], first + 1
            stale = engine.write_record(kb, b'{"pad":"stale"}', 0, 0.0)
            engine.slots.heads[0] = head  # the list as it was (*first* stays partial)
        assert engine.slot_of(stale) == first
        assert sorted(engine.slots.partial_slots(0))[0][1] == first
        store.create("big", {"pad": "y" * 3_000})  # gathers the 160-byte class
        assert store.read(other) == SMALL


def test_a_damaged_slots_free_sub_slots_are_not_counted_as_room(tmp_path: Any) -> None:
    """A slot with a damaged record is neither a source nor a target, so its free
    sub-slots are no room: three 160-byte slots, the damaged one 120 free, the others 1
    and 28 (29 of 128 together).  A 4 KB create at the ceiling is refused cleanly, every
    record where it was.  (Counting the damaged slot's room, a pass emptied a slot into
    sub-slots it did not have and met a slot it had left: KeyError, and a repair.)"""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        keys = fill_until_full(store, SMALL, prefix="s")
        assert engine.class_usage()[160][2] == 0
        by_slot = _by_slot(store, keys)
        a, b, c = sorted(by_slot)[:3]
        gone = by_slot[a][:120] + by_slot[b][:1] + by_slot[c][:28]
        for key in gone:
            store.delete(key)
        damaged = by_slot[a][120]
        kb = damaged.encode()
        off = engine.record_offset(engine.find(kb, engine.fingerprint(kb)))
        at = bytes(engine._mm[off:off + 160]).index(b"xxxx") + 1
        engine._mm[off + at] = ord("y")
        assert engine.slots.free_slots() == 0 and engine.class_usage()[160][2] == 149
        with pytest.raises(StoreFullError):
            store.create("big", {"pad": "y" * 3_000})
        kept = [key for key in keys if key not in set(gone) and key != damaged]
        assert all(store.read(key) == SMALL for key in kept)


def test_a_gather_never_overwrites_a_live_record_whose_bit_was_lost(tmp_path: Any) -> None:
    """Slot info has no checksum: a target slot's bitmap bit of a live record lost, the
    sub-slot looks free.  A gather's move into it must refuse (``_refuse_a_live_record``,
    then a repair), not write another key's record over the live one."""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        kept = _half_emptied(store)
        target = sorted(engine.slots.partial_slots(0))[-1][1]  # the fullest: the first target
        base = engine._slots_offset + target * SLOT_SIZE
        victim = min((key for key in kept if slot_of(store, key) == target),
                     key=lambda key: engine.record_offset(engine.find(key.encode(), engine.fingerprint(key.encode()))))
        kb = victim.encode()
        index = (engine.record_offset(engine.find(kb, engine.fingerprint(kb))) - base) // CLASS_SIZES[0]
        kind, depth, used, prev, nxt, bitmap = engine.slots.info(target)
        bits = int.from_bytes(bitmap, "little")
        assert bits >> index & 1
        # bit *index* lost, and the free sub-slots below it (FREED) marked taken, so that
        # the lowest clear bit, where a move goes first, is the live record's
        engine.slots.set_info(target, kind, depth, used, prev, nxt, (bits | ((1 << index) - 1)) & ~(1 << index))
        try:
            store.create("big", {"pad": "y" * 3_000})  # gathers the 160-byte class into *target*
        except mmapkv.MmapKVError:
            pass  # noticing the damage is fine
        assert store.read(victim) == SMALL


def test_a_move_whose_write_fails_leaves_its_key_where_it_was(tmp_path: Any, monkeypatch: Any) -> None:
    """``_move`` writes the copy first, then points the entry at it, then frees the
    original.  Where records go in with pwrite (blocks not reserved), a failed write is a
    clean failure (``StoreAccessError``: no repair follows), so nothing may have changed
    before it: an entry pointed at the copy first was left on a sub-slot given back, and
    the key was gone until the file was next recovered."""
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        engine = store._engine
        assert engine is not None
        kept = _half_emptied(store)
        engine._map_writes = False  # as on a file whose blocks could not be reserved

        def failing(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        with monkeypatch.context() as patch:
            patch.setattr(engine_module.os, "pwrite", failing)
            with pytest.raises(mmapkv.StoreAccessError):
                store.create("big", {"pad": "y" * 3_000})  # its gather's first move fails
        assert engine.changes == 0  # a clean failure
        assert all(store.read(key) == SMALL for key in kept)
        assert "big" not in store and store.verify() == []


TEN_KB = {"pad": "x" * 9_000}  # a 10,240-byte record: 2 per slot


def _crowded_at_the_ceiling(store: mmapkv.Store, tens: list[str]) -> tuple[Callable[[str], int], int]:
    """*tens* of 10 KB, then 160-byte records until the store is full, and 40 of those
    deleted outside the fullest table segment (room for 40 more, too few to give a slot
    back): the segment of a key, and that fullest segment."""
    engine = store._engine
    assert engine is not None
    for key in tens:
        store.create(key, TEN_KB)
    small = fill_until_full(store, SMALL, prefix="s")
    table = engine.table

    def segment(key: str) -> int:
        return int(table.dir[engine.fingerprint(key.encode()) & table.dmask])

    target = max(table.segments(), key=engine.slots.used)
    for key in [key for key in small if segment(key) != target][:40]:
        store.delete(key)
    return segment, target


def _new_keys_of(segment: Callable[[str], int], target: int) -> Iterator[str]:
    return (name for name in (f"y{i}" for i in range(100_000)) if segment(name) == target)


def test_a_gather_frees_the_slot_a_table_split_must_have(tmp_path: Any, monkeypatch: Any) -> None:
    """``slots_short`` counts the splits the new entries must have as well as the slots
    their records take: at the ceiling, a key whose record fits a free sub-slot but whose
    table segment is full (SEGMENT_FULL) needs one slot to split into, and gathering the
    10 KB class (3 free sub-slots, 2 a slot) gives it one.  Counting the records alone,
    nothing was gathered and the create was refused ("no slot to split")."""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)
    monkeypatch.setattr(table_module, "SEGMENT_FULL", 14)
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(40)) as store:
        engine = store._engine
        assert engine is not None
        tens = [f"t{i}" for i in range(6)]
        segment, target = _crowded_at_the_ceiling(store, tens)
        by_slot = _by_slot(store, tens)
        assert sorted(map(len, by_slot.values())) == [2, 2, 2]
        for members in by_slot.values():
            store.delete(members[0])  # 3 free 10 KB sub-slots: one slot's worth and one more
        names = _new_keys_of(segment, target)
        while engine.slots.used(target) < 14:  # the target segment full, without a split
            store.create(next(names), SMALL)
        assert engine.slots.free_slots() == 0 and engine.class_usage()[10240][2] == 3
        name = next(names)
        assert engine.table.needs([engine.fingerprint(name.encode())])[1] == 1
        store.create(name, TEN_KB)
        assert store.read(name) == TEN_KB and store.verify() == []


def test_a_refusal_for_a_split_alone_says_nothing_of_sub_slots(tmp_path: Any, monkeypatch: Any) -> None:
    """At the ceiling, a 160-byte key whose record fits a free sub-slot of its size but
    whose table segment is full and cannot split is refused for the split alone: the
    note on free sub-slots of other sizes (here one 10 KB sub-slot) explains a lack of
    sub-slots, and there is none, so the message must not carry it."""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)
    monkeypatch.setattr(table_module, "SEGMENT_FULL", 14)
    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(40)) as store:
        engine = store._engine
        assert engine is not None
        segment, target = _crowded_at_the_ceiling(store, ["t0", "t1"])
        store.delete("t0" if segment("t0") != target else "t1")  # one 10 KB sub-slot free
        names = _new_keys_of(segment, target)
        while engine.slots.used(target) < 14:
            store.create(next(names), SMALL)
        usage = engine.class_usage()
        assert engine.slots.free_slots() == 0 and usage[10240][2] == 1 and usage[160][2] > 0
        with pytest.raises(StoreFullError) as info:
            store.create(next(names), SMALL)
    message = str(info.value)
    assert "no slot to split a full table segment into for 1 new key;" in message
    assert "sub-slot" not in message


def test_merging_goes_on_up_the_levels(tmp_path: Any, monkeypatch: Any) -> None:
    """``merge`` folds a segment into its buddy, then tries again one level up: a store
    emptied down to one key after its table split several levels deep is one segment
    again (a merge of one level per delete left it at its peak)."""
    monkeypatch.setattr(table_module, "SPLIT_AT", 8)  # merges under 2 entries
    with mmapkv.Store(str(tmp_path / "m.mmapkv")) as store:
        engine = store._engine
        assert engine is not None
        keys = [f"k{i}" for i in range(60)]
        for key in keys:
            store.create(key, {})
        assert engine.table.segment_count >= 6 and engine.table.depth >= 3
        for key in keys[1:]:
            store.delete(key)
        assert engine.table.segment_count == 1
        assert store.read("k0") == {} and store.verify() == []


def test_a_delete_merges_whichever_side_of_the_split_its_key_is_on(tmp_path: Any) -> None:
    """Two buddy segments at 256 entries: the delete that takes them to 255 merges them,
    whether its key is in the segment whose fingerprints have the split bit clear or in
    the one that has it set (the buddy is the directory entry differing in that bit)."""
    for side in (0, 1):
        with mmapkv.Store(str(tmp_path / f"m{side}.mmapkv")) as store:
            engine = store._engine
            assert engine is not None
            store.batch_create({f"k{i}": {} for i in range(1100)})
            assert engine.table.segment_count == 2 and engine.table.depth == 1
            keys = sorted(store.keys())
            last = next(key for key in keys if engine.fingerprint(key.encode()) & 1 == side)
            others = [key for key in keys if key != last]
            for key in others[:1100 - 256]:
                store.delete(key)
            assert len(store) == 256 and engine.table.segment_count == 2
            store.delete(last)
            assert engine.table.segment_count == 1, side
            assert store.verify() == []


@pytest.mark.parametrize("walk, whole_list", [(4, False), (1, True)])
def test_a_gather_reads_the_first_slots_of_a_long_partial_list(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                               walk: int, whole_list: bool) -> None:
    """A gathering pass reads the first ``_GATHER_WALK`` slots of a class's partial list,
    and the whole list only when those cannot give a slot back (one slot alone cannot):
    reading a list of 35,000 slots took up to 105 ms a pass at a 1 GiB ceiling."""
    monkeypatch.setattr(engine_module, "_GATHER_WALK", walk)
    walks: list[int | None] = []
    partial_slots = Slots.partial_slots

    def counted(slots: Slots, cls: int, limit: int | None = None) -> list[tuple[int, int]]:
        if cls == 0:
            walks.append(limit)
        return partial_slots(slots, cls, limit)

    with mmapkv.Store(str(tmp_path / "g.mmapkv"), max_size=ceiling_of(17)) as store:
        kept = _half_emptied(store)  # a dozen slots of the 160-byte class, 64 free in each
        monkeypatch.setattr(Slots, "partial_slots", counted)
        store.create("big", {"pad": "y" * 3_000})  # a slot of its own class: gathers the 160s
        assert walks[0] == walk and (None in walks) == whole_list, walks
        assert store.read("big") == {"pad": "y" * 3_000}
        assert all(store.read(key) == SMALL for key in kept) and store.verify() == []
