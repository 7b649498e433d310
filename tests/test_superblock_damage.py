"""A damaged superblock field is survived where the file itself says what it must be.

Version 3's superblock (``format.py``): the counters from offset 64 on are derived from the
records, trusted only when CLEAN is set and the checksum holds; ``file_size``, ``seq_limit``,
``batch_commit`` and ``floor_seq`` are written in place and trusted after a crash, as is the
hash seed.  One flipped bit anywhere in it but the magic number, the version and the ceiling
must leave every key readable, ``len`` right and ``verify()`` clean, in a file closed cleanly
and in one dropped as after a crash; those three are refused, and the file left as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from fault_child import child_env
from mmapkv import format as fmt
from mmapkv.format import SUPERBLOCK, SUPERBLOCK_FIELDS

REFUSED = ("magic", "version", "max_size")  # nothing else says what the file is
#: one value size per sub-slot class, 160 B to the whole slot
VALUE_SIZES = (20, 150, 250, 400, 550, 900, 1150, 1800, 2400, 3900, 4900, 9900, 16_000)


def _fields() -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of each superblock field, walked from ``format.SUPERBLOCK``."""
    out: dict[str, tuple[int, int]] = {}
    names, offset = iter(SUPERBLOCK_FIELDS), 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", SUPERBLOCK.format.lstrip("<")):
        sizes = [int(count)] if code == "s" else [struct.calcsize("<" + code)] * int(count or 1)
        for size in sizes:
            out[next(names)] = (offset, size)
            offset += size
    return out


FIELDS = _fields()


@pytest.fixture(autouse=True)
def _remove_the_store(store_path: str) -> Iterator[None]:
    """The disk is shared: some 150 stores of a few MB each would outlive the run."""
    yield
    if os.path.exists(store_path):
        os.unlink(store_path)


def test_the_fields_are_where_format_says() -> None:
    assert sum(size for _, size in FIELDS.values()) == SUPERBLOCK.size == 176
    assert [FIELDS[name][0] for name in ("flags", "file_size", "seq_limit", "batch_commit",
                                         "floor_seq", "checksum")] == \
        [fmt.SB_FLAGS, fmt.SB_FILE_SIZE, fmt.SB_SEQ_LIMIT, fmt.SB_BATCH_COMMIT, fmt.SB_FLOOR_SEQ,
         fmt.SB_CHECKSUM]


def value(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "y" * VALUE_SIZES[i % len(VALUE_SIZES)]}


def _populate(path: str, *, crashed: bool = False) -> dict[str, Any]:
    """50 keys in every class (deletes, a batch and TTLs among them); returns what is live.
    *crashed*: a second session writes more and is dropped without a close."""
    expected: dict[str, Any] = {}
    with mmapkv.Store(path) as store:
        for i in range(40):
            store.create(f"k{i}", value(i), ttl=mmapkv.MAX_TTL if i % 5 == 0 else None)
            expected[f"k{i}"] = value(i)
        for i in range(0, 40, 7):
            store.delete(f"k{i}")
            del expected[f"k{i}"]
    store = mmapkv.Store(path)
    batch = {f"b{i}": value(i) for i in range(40, 50)}
    store.batch_create(batch)
    expected.update(batch)
    if crashed:
        engine, store._engine = store._engine, None
        assert engine is not None
        engine._release()
    else:
        store.close()
    return expected


def flip(path: str, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset + bit // 8)
        byte = f.read(1)[0]
        f.seek(offset + bit // 8)
        f.write(bytes([byte ^ 1 << bit % 8]))


def assert_intact(path: str, expected: dict[str, Any]) -> None:
    with mmapkv.Store(path) as store:
        assert len(store) == len(expected) and sorted(store.keys()) == sorted(expected)
        for key, want in expected.items():
            assert store.read(key) == want
        assert store.verify() == []


@pytest.mark.parametrize("bit", [0, 3, 17, 40, 63])
def test_flipped_file_size_bit_is_recovered_from_the_file(store_path: str, bit: int) -> None:
    expected = _populate(store_path)
    flip(store_path, fmt.SB_FILE_SIZE, bit)
    with mmapkv.Store(store_path) as store:
        engine = store._engine
        assert engine is not None and not engine.was_clean  # the checksum caught it: recovery ran
        assert len(store) == len(expected) and store.read("k8") == value(8)
        assert store.verify() == []


def test_a_file_size_damaged_to_a_smaller_size_a_store_can_have_cuts_nothing(store_path: str) -> None:
    """A review: in a cleanly closed file, ``file_size`` set to a smaller size a store can
    have (one byte changed) was taken for a growth cut short by a crash, and the open cut
    the file back to it: 60 of 300 keys gone, silently.  A clean close cut nothing short,
    so a superblock whose checksum fails keeps the file's own size."""
    g = fmt.Geometry(8 << 20)
    with mmapkv.Store(store_path, max_size=8 << 20) as store:
        for i in range(300):
            store.create(f"k{i}", {"p": "x" * 1000, "i": i})
    size = os.path.getsize(store_path)
    smaller = g.grown_size(g.initial_size)
    assert smaller < size and g.is_valid_size(smaller)
    with open(store_path, "r+b") as f:
        f.seek(fmt.SB_FILE_SIZE)
        f.write(struct.pack("<Q", smaller))
    with mmapkv.Store(store_path) as store:
        assert os.path.getsize(store_path) == size and len(store) == 300
        assert all(store.read(f"k{i}") == {"p": "x" * 1000, "i": i} for i in range(300))
        assert store.verify() == []


@pytest.mark.parametrize("state", ["clean", "crashed"])
@pytest.mark.parametrize("name", ["seq_limit", "batch_commit", "floor_seq", "next_seq"])
def test_a_sequence_field_near_two_to_the_64_is_survived(store_path: str, name: str, state: str) -> None:
    """A review: a sequence field filled with 0xFF made every open raise ``struct.error``
    (the next reservation, 65,536 past it, did not fit its u64), so the store could never
    be opened again.  No sequence number gets near it: recovery takes it for damage."""
    expected = _populate(store_path, crashed=state == "crashed")
    with open(store_path, "r+b") as f:
        f.seek(FIELDS[name][0])
        f.write(b"\xff" * 8)
    for _ in range(2):
        with mmapkv.Store(store_path) as store:
            store.set("after", {"v": 1})
            assert all(store.read(key) == want for key, want in expected.items())
            assert store.verify() == []


SURVIVED = [(name, bit) for name, (_, size) in FIELDS.items() if name not in REFUSED
            for bit in (0, 8 * size - 1)
            if (name, bit) != ("floor_seq", 63)]  # test_a_floor_past_every_sequence_number


@pytest.mark.parametrize("state", ["clean", "crashed"])
@pytest.mark.parametrize("name, bit", SURVIVED)
def test_a_flipped_bit_is_survived(store_path: str, name: str, bit: int, state: str) -> None:
    """Every key reads back, ``len`` and ``keys`` agree, ``verify()`` is clean, now and after
    the clean close that follows."""
    expected = _populate(store_path, crashed=state == "crashed")
    offset = FIELDS[name][0]
    flip(store_path, offset, bit)
    with open(store_path, "rb") as f:
        seed = struct.unpack_from("<Q", f.read(SUPERBLOCK.size), FIELDS["hash_seed"][0])[0]
    with mmapkv.Store(store_path) as store:
        engine = store._engine
        assert engine is not None
        # The layout checksum is outside the superblock's checksum; flipped, it no longer
        # matches the layout: the open recovers, or for the slot info's half (bits 32 to
        # 63) the first call under the lock does
        assert not engine.was_clean or name == "layout_checksum" and bit >= 32 and engine.info_to_check
        assert engine.seed == seed  # a damaged seed is the file's seed now: the table is rebuilt with it
    assert_intact(store_path, expected)
    assert_intact(store_path, expected)  # what the clean close wrote holds too


@pytest.mark.parametrize("state", ["clean", "crashed"])
@pytest.mark.parametrize("name, bit", [(name, bit) for name in REFUSED
                                       for bit in (0, 8 * FIELDS[name][1] - 1)])
def test_an_unreadable_identity_is_refused_untouched(store_path: str, name: str, bit: int,
                                                     state: str) -> None:
    """A damaged magic number, version or ceiling: the file cannot say what it is, so it is
    refused with CorruptStoreError (FormatVersionError for another version) and not changed."""
    _populate(store_path, crashed=state == "crashed")
    flip(store_path, FIELDS[name][0], bit)
    with open(store_path, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    with pytest.raises((mmapkv.CorruptStoreError, mmapkv.FormatVersionError)):
        mmapkv.Store(store_path)
    with open(store_path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before


@pytest.mark.parametrize("state", ["clean", "crashed"])
def test_a_floor_past_every_sequence_number(store_path: str, state: str) -> None:
    """floor_seq bit 63: a floor no record can be above, which the file itself (seq_limit)
    shows to be damage.  Refusing the file or keeping the records is fine; dropping all is not."""
    expected = _populate(store_path, crashed=state == "crashed")
    flip(store_path, fmt.SB_FLOOR_SEQ, 63)
    try:
        mmapkv.Store(store_path).close()
    except mmapkv.CorruptStoreError:
        return
    assert_intact(store_path, expected)


@pytest.mark.parametrize("bit", [2, 5, 8, 12, 16])
def test_a_raised_floor_in_a_cleanly_closed_file_drops_nothing(store_path: str, bit: int) -> None:
    """A floor_seq bit flipped on in a file closed cleanly, to a floor still below
    seq_limit: every record under it looked cleared, and recovery freed them (bit 16:
    all of them; ``mmapkv verify`` then said "ok (0 entries)").  CLEAN with a checksum
    that fails is damage, not a crash, so the table, exact at that close, says which
    records are live.  (In a file not closed cleanly no checksum tells a damaged floor
    from one a ``clear()`` just wrote: docs/reliability.md.)"""
    expected = _populate(store_path)
    flip(store_path, fmt.SB_FLOOR_SEQ, bit)
    with open(store_path, "rb") as f:
        head = f.read(SUPERBLOCK.size)
    floor, seq_limit = (struct.unpack_from("<Q", head, at)[0] for at in (fmt.SB_FLOOR_SEQ, fmt.SB_SEQ_LIMIT))
    assert floor < seq_limit  # else the floor is plainly damage: test_a_floor_past_every_sequence_number
    assert_intact(store_path, expected)
    assert_intact(store_path, expected)


def test_a_clean_flag_flipped_on_in_a_crashed_file(store_path: str) -> None:
    """A store closed cleanly, reopened for 25 creates (no growth) and dropped as after a
    crash; then bit 0 of flags is set.  The header is not the one a clean close wrote, so
    the open must recover: nothing acknowledged may be lost, then or after more writes."""
    with mmapkv.Store(store_path) as store:
        for i in range(10):
            store.create(f"a{i}", {"i": i})
    store = mmapkv.Store(store_path)
    for i in range(25):
        store.create(f"b{i}", value(9))  # five 4 KiB sub-slots to a slot: no growth
    engine, store._engine = store._engine, None
    assert engine is not None and engine.file_size == engine.geometry.initial_size
    engine._release()
    flip(store_path, fmt.SB_FLAGS, 0)
    expected = {**{f"a{i}": {"i": i} for i in range(10)}, **{f"b{i}": value(9) for i in range(25)}}
    with mmapkv.Store(store_path) as store:
        for i in range(50):
            store.create(f"c{i}", value(9))
            expected[f"c{i}"] = value(9)
    assert_intact(store_path, expected)


@pytest.mark.parametrize("forged", ["segments=0", "ttl_count>live_count", "segments>high_water"])
def test_a_clean_superblock_whose_counters_cannot_be_is_not_trusted(store_path: str, forged: str) -> None:
    """Counters that no store can have, under a CLEAN flag and a checksum that holds (a
    hand-made file, or a writer's bug): the open must not trust them, but recover, and
    every key still reads back."""
    from xxhash import xxh3_64_intdigest

    expected = _populate(store_path)
    with open(store_path, "r+b") as f:
        head = bytearray(f.read(SUPERBLOCK.size))
        fields = dict(zip(SUPERBLOCK_FIELDS, SUPERBLOCK.unpack(head)))
        name, value = {"segments=0": ("segments", 0),
                       "ttl_count>live_count": ("ttl_count", fields["live_count"] + 1),
                       "segments>high_water": ("segments", fields["high_water"] + 1)}[forged]
        at, size = FIELDS[name]
        head[at:at + size] = value.to_bytes(size, "little")
        head[fmt.SB_CHECKSUM:fmt.SB_CHECKSUM + 8] = struct.pack("<Q", xxh3_64_intdigest(bytes(head[:fmt.SB_CHECKSUM])))
        f.seek(0)
        f.write(head)
    with mmapkv.Store(store_path) as store:
        assert store._engine is not None and not store._engine.was_clean
    assert_intact(store_path, expected)


def _crash(store: mmapkv.Store) -> None:
    """Drop *store* as a kill -9 would: no close, no repair; the file is as it stands."""
    engine, store._engine = store._engine, None
    assert engine is not None
    engine._release()


def _lower_seq_limit(path: str) -> None:
    """seq_limit is written in place and trusted after a crash: damage it downwards."""
    with open(path, "r+b") as f:
        f.seek(fmt.SB_SEQ_LIMIT)
        f.write(struct.pack("<Q", 1))


def _seq_of(store: mmapkv.Store, key: str) -> int:
    engine = store._engine
    assert engine is not None
    kb = key.encode()
    seq: int = fmt.RECORD_HEADER.unpack_from(engine._mm, engine.record_offset(
        engine.find(kb, engine.fingerprint(kb))))[3]
    return seq


def test_a_lowered_seq_limit_never_hands_out_the_newest_records_number(store_path: str) -> None:
    """After a crash whose seq_limit was damaged downwards, recovery sets the next number
    past the newest record's: the next write got that record's own number, so two records
    of a key could tie, and recovery keep the older."""
    store = mmapkv.Store(store_path)
    store.create("a", {"v": 1})
    _crash(store)
    _lower_seq_limit(store_path)
    with mmapkv.Store(store_path) as store:
        store.create("c", {"v": 2})
        assert _seq_of(store, "c") > _seq_of(store, "a")


def test_a_lowered_seq_limit_never_hands_out_the_committed_batchs_number(
        store_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last committed batch's records were all deleted, so no record carries its number
    and only batch_commit says it was used.  Recovery must not hand it out again: a later
    batch cut short under it (its records PENDING with that number) was taken for the
    committed one after the next crash, and came back."""
    store = mmapkv.Store(store_path)
    store.create("a", {"v": 1})
    store.batch_create({"b1": {"v": 2}, "b2": {"v": 3}})
    store.delete("b1")
    store.delete("b2")
    _crash(store)
    _lower_seq_limit(store_path)
    store = mmapkv.Store(store_path)

    def cut_short(self: Any, seq: int, written: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mmapkv.engine.Engine, "commit_batch", cut_short)
    with pytest.raises(KeyboardInterrupt):
        store.batch_create({"d1": {"v": 4}, "d2": {"v": 5}})
    monkeypatch.undo()
    _crash(store)
    assert_intact(store_path, {"a": {"v": 1}})


@pytest.mark.parametrize("size", [0, 1, 2**40, 2**64 - 1])
def test_is_valid_size_refuses_sizes_outside_the_ceiling(size: int) -> None:
    assert not fmt.Geometry(fmt.MAX_FILE_SIZE).is_valid_size(size)


def _killed(code: str) -> None:
    """Run *code* in a child that is expected to kill itself with SIGKILL (a crash)."""
    done = subprocess.run([sys.executable, "-c", code], env=child_env())
    assert done.returncode == -signal.SIGKILL


@pytest.mark.parametrize("crash_at", ["_find_lost_record_slots", "_rebuild_table"])
def test_a_crash_while_recovering_from_a_raised_floor_drops_nothing(store_path: str, crash_at: str) -> None:
    """A review: the recovery of a clean file whose floor_seq was raised cleared CLEAN
    first and wrote the floor it read off the table only later; a kill -9 between them
    left an unclean file whose damaged floor the next open trusted: 7 of 10 keys gone."""
    expected = _populate(store_path)
    flip(store_path, fmt.SB_FLOOR_SEQ, 3)
    _killed(f"""if True:
        import os, signal, mmapkv
        from mmapkv.engine import Engine
        Engine.{crash_at} = lambda self, *args: os.kill(os.getpid(), signal.SIGKILL)
        mmapkv.Store({store_path!r})
    """)
    assert_intact(store_path, expected)


def test_a_crash_in_the_session_after_a_damaged_file_size_cuts_nothing(store_path: str) -> None:
    """A review: the open of a clean file whose file_size was damaged to a smaller size a
    store can have kept the file's own size but left the field on disk; a kill -9 at any
    point of that session made the next open take it for a growth cut short and cut the
    file back (5 keys and the session's create gone)."""
    g = fmt.Geometry(fmt.Geometry.smallest_max_size() * 4)
    with mmapkv.Store(store_path, max_size=g.max_size) as store:
        for i in range(40):
            store.create(f"k{i}", {"i": i, "pad": "x" * 3000})
    with open(store_path, "r+b") as f:
        f.seek(fmt.SB_FILE_SIZE)
        f.write(struct.pack("<Q", g.initial_size))
    _killed(f"""if True:
        import os, signal, mmapkv
        store = mmapkv.Store({store_path!r})
        store.create("new", {{"v": 1}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    with mmapkv.Store(store_path) as store:
        assert sorted(store.keys()) == sorted([f"k{i}" for i in range(40)] + ["new"])
        assert store.read("k39") == {"i": 39, "pad": "x" * 3000} and store.verify() == []
