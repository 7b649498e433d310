"""``mmapkv.transfer``: dump, restore and compact on a ``Store`` with a fake clock."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from typing import Any

import portalocker
import pytest

import mmapkv
from mmapkv import codec, locking, transfer
from mmapkv.errors import (
    CorruptStoreError,
    DiskFullError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    StoreFullError,
)
from mmapkv.format import (CLASS_SIZES, KEY_OFFSET, KIND_SEGMENT, MAX_VALUE_BYTES, SB_LAYOUT_CHECKSUM, SLOT_SIZE,
                           Geometry, class_for)
from mmapkv.slots import PER_SLOT

SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4
#: a value that takes a whole slot: each key of it adds one slot to the file
WHOLE_SLOT = {"k": "x" * (MAX_VALUE_BYTES - 10)}

VALUES: dict[str, dict[str, Any]] = {
    "plain": {"name": "Ada", "langs": ["en", "fr"]},
    "ünïcødé:ключ": {"text": "Zoë \u2028 \U0001f600", "nested": {"a": [1, {"b": None}]}},
    "big": {"n": 2 ** 100, "neg": -(2 ** 70)},
    "floats": {"x": 0.1, "y": 1e-300, "z": -0.0, "w": 12345.678901234567},
    "empty": {},
    "full": {"k": "x" * (16_384 - 8)},
}


def entries(store: mmapkv.Store) -> dict[str, tuple[Any, float]]:
    """key -> (value, expires_at) for every live entry, read back through the dump.

    Split on a newline only: str.splitlines() would also split at the U+2028 a value holds."""
    out = io.StringIO()
    transfer.dump(store, out)
    rows = [json.loads(line) for line in out.getvalue().split("\n") if line]
    return {r["key"]: (r["value"], r["expires_at"]) for r in rows}


def fill(store: mmapkv.Store) -> None:
    for n, (key, value) in enumerate(VALUES.items()):
        store.create(key, value, ttl=100 * (n + 1) if n % 2 else None)


def dumped(store: mmapkv.Store) -> bytes:
    out = io.StringIO()
    transfer.dump(store, out)
    return out.getvalue().encode("utf-8")


def padded(length: int) -> dict[str, str]:
    """A value whose compact JSON is exactly *length* bytes (at least 8)."""
    return {"p": "x" * (length - 8)}


def class_values() -> dict[str, dict[str, str]]:
    """Values at both ends of every sub-slot class (a record is header + key + value), from
    10 bytes of JSON to 16,384: ``{key: value}``."""
    out: dict[str, dict[str, str]] = {}
    for cls, size in enumerate(CLASS_SIZES):
        low = CLASS_SIZES[cls - 1] + 1 if cls else KEY_OFFSET + 4 + 10
        for end, record in (("l", low), ("h", size)):
            key = f"c{cls:02d}{end}"
            value = padded(min(record - KEY_OFFSET - len(key), MAX_VALUE_BYTES))
            assert class_for(KEY_OFFSET + len(key) + len(codec.encode(value)[0])) == cls
            out[key] = value
    return out


def smallest_size(records: list[int], max_size: int = mmapkv.MAX_FILE_SIZE) -> int:
    """The smallest file size growth can produce that holds records of these sizes, packed
    by class, beside the table's one segment."""
    g = Geometry(max_size)
    per_class = Counter(class_for(size) for size in records)
    slots = 1 + sum(-(-count // PER_SLOT[cls]) for cls, count in per_class.items())
    size = g.initial_size
    while g.slot_count(size) < slots:
        size = g.grown_size(size)
    return size


# ------------------------------------------------------------------ dump

def test_dump_format(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        store.create("a", {"x": 1})
        store.create("b", {"y": [1, 2]}, ttl=60)
        out = io.StringIO()
        result = transfer.dump(store, out)
    assert result == transfer.DumpResult(written=2, expired=0, corrupt=0)
    assert out.getvalue() == (
        '{"key":"a","value":{"x":1},"expires_at":null}\n'
        f'{{"key":"b","value":{{"y":[1,2]}},"expires_at":{clock.now + 60!r}}}\n')


def test_dump_leaves_out_expired(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        store.create("short", {}, ttl=5)
        store.create("long", {}, ttl=50)
        clock.advance(5)  # expiry is inclusive: at expires_at the key is gone
        out = io.StringIO()
        assert transfer.dump(store, out) == transfer.DumpResult(1, 1, 0)
    assert [json.loads(line)["key"] for line in out.getvalue().split("\n") if line] == ["long"]


# ------------------------------------------------------------------ restore

def test_round_trip_gives_an_identical_store(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        fill(a)
        a.delete("empty")
        original = dumped(a)
        want = entries(a)
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        result = transfer.restore(b, io.BytesIO(original))
        assert result == transfer.RestoreResult(restored=len(VALUES) - 1, existing=0, expired=0)
        assert dumped(b) == original  # same keys, value bytes and expiries, same order
        assert entries(b) == want
        for key, (value, _) in want.items():
            assert b.read(key) == value
        assert b.verify() == []
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:  # and it was committed to the file
        assert dumped(b) == original
        clock.advance(200)  # the absolute expiry holds: the first TTL key (ttl=200) is gone
        assert "ünïcødé:ключ" not in b and "plain" in b


def test_round_trip_across_every_class(tmp_path: Any, clock: Any) -> None:
    """Values from 10 bytes of JSON to 16,384, at both ends of every sub-slot class, some
    with a TTL: the dump restores to the same entries (value bytes, absolute expiry)."""
    values = class_values()
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        for n, (key, value) in enumerate(values.items()):
            a.create(key, value, ttl=60 * n if n % 3 else None)
        engine = a._engine
        assert engine is not None and sorted(engine.class_usage()) == list(CLASS_SIZES)
        original, want = dumped(a), entries(a)
    assert len(want) == 2 * len(CLASS_SIZES)
    clock.advance(30)  # absolute expiries: restoring later does not move them
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, io.BytesIO(original)).restored == len(values)
        assert dumped(b) == original and entries(b) == want
        for key, value in values.items():
            assert b.read(key) == value
        engine = b._engine
        assert engine is not None and sorted(engine.class_usage()) == list(CLASS_SIZES)
        assert b.verify() == [] and transfer.check_records(b) == []


def test_restore_skips_expired_entries(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        fill(a)  # TTLs 200, 400, 600 on the odd entries
        original = dumped(a)
    clock.advance(400)
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        result = transfer.restore(b, io.BytesIO(original))
        assert result == transfer.RestoreResult(restored=len(VALUES) - 2, existing=0, expired=2)
        assert sorted(b.keys()) == sorted(set(VALUES) - {"ünïcødé:ключ", "floats"})
        assert entries(b)["full"][1] == 1_700_000_000.0 + 600  # kept, absolute


def test_restore_takes_a_dump_whose_expiry_is_more_than_max_ttl_ahead(tmp_path: Any, clock: Any) -> None:
    """A key created with ttl=MAX_TTL, dumped after the clock stepped back a second: its
    expiry is MAX_TTL + 1 s ahead now.  restore refused that line, and so the whole dump."""
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        a.create("far", {"v": 1}, ttl=mmapkv.MAX_TTL)
        a.create("other", {"v": 2})
        clock.now = clock() - 1
        original = dumped(a)
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, io.BytesIO(original)).restored == 2
        assert b.read("far") == {"v": 1} and b.ttl("far") == mmapkv.MAX_TTL + 1 and b.read("other") == {"v": 2}


def test_restore_refuses_existing_keys_and_writes_nothing(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        fill(a)
        original = dumped(a)
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        b.create("big", {"mine": True})
        with pytest.raises(KeyExistsError, match=r"line 3: key 'big' already exists"):
            transfer.restore(b, io.BytesIO(original), name="dump.jsonl")
        assert b.keys() == ["big"] and b.read("big") == {"mine": True}
        assert b.verify() == []
        result = transfer.restore(b, io.BytesIO(original), skip_existing=True)
        assert result == transfer.RestoreResult(restored=len(VALUES) - 1, existing=1, expired=0)
        assert b.read("big") == {"mine": True} and len(b) == len(VALUES)
        assert b.verify() == []


def test_restore_replaces_an_expired_key(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        b.create("k", {"old": 1}, ttl=5)
        clock.advance(10)
        line = b'{"key":"k","value":{"new":2},"expires_at":null}\n'
        assert transfer.restore(b, io.BytesIO(line)).restored == 1
        assert b.read("k") == {"new": 2} and len(b) == 1 and b.verify() == []


@pytest.mark.parametrize("line, error, match", [
    (b"not json", transfer.InvalidDumpError, "line 2 is not JSON"),
    (b"[1, 2]", transfer.InvalidDumpError, "line 2 is not an entry: it reads as a Python list"),
    (b'{"key": "x"}', transfer.InvalidDumpError, 'line 2 is not an entry: it has no "value"'),
    (b'{}', transfer.InvalidDumpError, 'line 2 is not an entry: it has no "key" and no "value"'),
    (b'{"key": "x", "value": {}, "extra": 1}', transfer.InvalidDumpError,
     'line 2 is not an entry: it has \'extra\' besides "key", "value" and "expires_at"'),
    (b'{"key": "", "value": {}}', InvalidKeyError, "line 2: key must be 1 to 32"),
    (b'{"key": 5, "value": {}}', InvalidKeyError, "line 2: key must be a str"),
    (b'{"key": "x", "value": [1]}', InvalidValueError, "line 2: value must be a dict"),
    (b'{"key": "x", "value": {"n": NaN}}', InvalidValueError, "line 2: value"),
    (b'{"key": "x", "value": {}, "expires_at": "soon"}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": true}', InvalidTTLError,
     "line 2: expires_at must be null or unix time in seconds, got true$"),  # JSON's word, not True
    # an int of more digits than Python reads by default: the message names where it is
    (b'{"key": "x", "value": {}, "expires_at": 1' + b"0" * 5_000 + b"}", InvalidTTLError,
     "line 2: expires_at must be null or unix time in seconds, got an int of 5,001 digits$"),
    (b'{"key": -1' + b"0" * 5_000 + b', "value": {}}', InvalidKeyError, "line 2: key must be a str, not int$"),
    (b'{"key": "x", "value": {"a": [1' + b"0" * 5_000 + b']}}', InvalidValueError,
     "line 2: value holds an int of more than 4,300 digits"),
    (b'[1' + b"0" * 5_000 + b']', transfer.InvalidDumpError, "line 2 is not an entry: it reads as a Python list"),
    (b'{"key": "x", "value": {}, "expires_at": -1}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": 1e300}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": 1' + b"0" * 400 + b"}", InvalidTTLError,
     "line 2: expires_at"),  # an int past a float's range: was Python's OverflowError
    (b'{"key": "ok", "value": {}}', KeyExistsError, "line 2: key 'ok' appeared already on line 1"),
])
def test_restore_rejects_bad_lines_and_writes_nothing(tmp_path: Any, clock: Any, line: bytes,
                                                      error: type[Exception], match: str) -> None:
    data = b'{"key":"ok","value":{},"expires_at":null}\n' + line + b"\n"
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        with pytest.raises(error, match=match):
            transfer.restore(b, io.BytesIO(data), name="d")
        assert len(b) == 0 and b.verify() == []


ENTRY_LINE = '{"key":"k","value":{"x":"ü"},"expires_at":null}'


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"])
def test_loads_takes_utf8_only(encoding: str) -> None:
    """json.loads(bytes) guesses UTF-16 and UTF-32 too; input is UTF-8 (RFC 8259, docs/cli.md)."""
    with pytest.raises(ValueError, match="UTF-8"):
        transfer.loads(ENTRY_LINE.encode(encoding))


def test_loads_reads_utf8_and_ignores_a_leading_byte_order_mark() -> None:
    want = {"key": "k", "value": {"x": "ü"}, "expires_at": None}
    assert transfer.loads(ENTRY_LINE.encode()) == transfer.loads(ENTRY_LINE) == want
    assert transfer.loads(ENTRY_LINE.encode("utf-8-sig")) == want  # as RFC 8259 allows
    with pytest.raises(ValueError, match="not UTF-8: invalid start byte at byte 25"):
        transfer.loads(ENTRY_LINE.encode("latin-1"))


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_restore_of_a_dump_in_utf16_or_utf32_writes_nothing(tmp_path: Any, clock: Any, encoding: str) -> None:
    """One line without its newline used to be restored (json.loads took its encoding)."""
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        with pytest.raises(transfer.InvalidDumpError, match="d line 1 is not JSON: .*UTF-8"):
            transfer.restore(b, io.BytesIO(ENTRY_LINE.encode(encoding)), name="d")
        assert len(b) == 0
        assert transfer.restore(b, io.BytesIO(ENTRY_LINE.encode("utf-8-sig"))).restored == 1


def test_restore_blank_lines_and_missing_expiry(tmp_path: Any, clock: Any) -> None:
    data = b'\n{"key":"a","value":{"x":1}}\n\n'
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, io.BytesIO(data)).restored == 1
        assert b.read("a") == {"x": 1}


class Pipe(io.BytesIO):
    """Reads like stdin from a pipe: once, no seeking."""

    def seekable(self) -> bool:
        return False

    def seek(self, *args: Any) -> int:
        raise io.UnsupportedOperation("not seekable")


def test_restore_from_a_pipe(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "a", clock=clock) as a:
        fill(a)
        original = dumped(a)
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, Pipe(original)).restored == len(VALUES)
        assert dumped(b) == original


class Changing(io.BytesIO):
    """A file that someone rewrites between restore's two passes."""

    def __init__(self, first: bytes, second: bytes) -> None:
        super().__init__(first)
        self.second: bytes | None = second
        self.lines_left = first.count(b"\n")

    def __next__(self) -> bytes:
        self.lines_left -= 1
        return super().__next__()

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.second is not None and self.lines_left < 0:  # rewinding after one full read
            second, self.second = self.second, None
            self.truncate(0)
            super().seek(0)
            self.write(second)
        return super().seek(offset, whence)


def test_restore_input_changed_between_passes_writes_nothing(tmp_path: Any, clock: Any) -> None:
    first = b"".join(b'{"key":"k%d","value":{}}\n' % i for i in range(10))
    second = first.replace(b'"k7"', b'"other"')
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        b.create("mine", {}, ttl=50)
        with pytest.raises(transfer.InvalidDumpError, match="changed while"):
            transfer.restore(b, Changing(first, second))
        assert b.keys() == ["mine"] and len(b) == 1
        assert b.verify() == []  # the seven slots written before the change were given back
        assert transfer.restore(b, io.BytesIO(first)).restored == 10 and b.verify() == []


def test_restore_that_does_not_fit_writes_nothing(tmp_path: Any, clock: Any) -> None:
    g = Geometry(SMALL_MAX_SIZE)
    fits = g.max_slots - 2  # one slot is the table's segment, one holds "mine"
    line = b'{"key":"k%%d","value":%s}\n' % json.dumps(WHOLE_SLOT).encode()
    data = b"".join(line % i for i in range(fits + 1))
    with mmapkv.Store(tmp_path / "b", clock=clock, max_size=SMALL_MAX_SIZE) as b:
        b.create("mine", {})
        with pytest.raises(StoreFullError):
            transfer.restore(b, io.BytesIO(data))
        assert b.keys() == ["mine"] and b.verify() == []
        assert transfer.restore(b, io.BytesIO(data[:data.index(b'{"key":"k%d"' % fits)])).restored == fits
        assert len(b) == fits + 1 and b.verify() == []
        assert b.stats().file_size == g.file_size(g.max_slots) and b.stats().free_slots == 0


def test_restore_grows_the_file(tmp_path: Any, clock: Any) -> None:
    data = b"".join(b'{"key":"k%d","value":{"i":%d}}\n' % (i, i) for i in range(100))
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, io.BytesIO(data)).restored == 100
        assert len(b) == 100 and b.read("k77") == {"i": 77} and b.verify() == []


# ------------------------------------------------------------------ compact

def test_compact_shrinks_and_keeps_every_live_key(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        for i in range(300):  # ~1 KiB values, 20 to a slot: the file grows to 16 slots
            store.create(f"k{i}", {"i": i, "pad": "y" * (900 + i % 50)},
                         ttl=1000 + i if i % 3 == 0 else None)
        for i in range(300):
            if i % 10:
                store.delete(f"k{i}")  # 30 keys stay ...
        store.create("short", {"gone": True}, ttl=5)
        clock.advance(5)  # ... and one has expired
        want = entries(store)
        assert len(want) == 30
        inode, before = os.stat(path).st_ino, os.path.getsize(path)
        old_size, new_size, keys = transfer.compact(store)
        assert (old_size, keys) == (before, 30)
        assert new_size < old_size and new_size == os.path.getsize(path)
        assert os.stat(path).st_ino != inode  # a new file took the old one's name
        assert entries(store) == want and store.verify() == []
        records = [KEY_OFFSET + len(key.encode()) + len(codec.encode(value)[0])
                   for key, (value, _) in want.items()]
        assert new_size == smallest_size(records)  # the smallest size growth can produce that holds them
        store.create("after", {"still": "usable"})  # and the store goes on: it grows again
        for i in range(40):
            store.create(f"more{i}", WHOLE_SLOT)
        assert store.verify() == []
    assert os.listdir(tmp_path) == ["s"]  # no temporary file left behind
    with mmapkv.Store(path, clock=clock) as store:
        assert len(store) == 71 and store.read("k0") == {"i": 0, "pad": "y" * 900}
        assert store.verify() == []


def test_compact_picks_the_smallest_size_that_holds_the_keys(tmp_path: Any, clock: Any) -> None:
    g = Geometry(SMALL_MAX_SIZE)  # the slot count doubles from 8, then the ceiling's
    sizes = [g.initial_size]
    while g.grown_size(sizes[-1]) > sizes[-1]:
        sizes.append(g.grown_size(sizes[-1]))
    assert [g.slot_count(size) for size in sizes] == [8, 16, 32, g.max_slots]

    def smallest_for(keys: int) -> int:  # a slot per key and one for the table
        return next(size for size in sizes if g.slot_count(size) >= keys + 1)

    full = g.max_slots - 1
    with mmapkv.Store(tmp_path / "s", clock=clock, max_size=SMALL_MAX_SIZE) as store:
        for i in range(full):  # a slot each, and one for the table: the file is full
            store.create(f"k{i}", WHOLE_SLOT)
        assert store.stats().file_size == sizes[3] and store.stats().free_slots == 0
        for keep in (full, 31, 16, 15, 8, 7, 0):
            for key in store.keys()[keep:]:
                store.delete(key)
            assert transfer.compact(store)[1:] == (smallest_for(keep), keep)
            assert len(store) == keep and store.verify() == []


def test_compact_repacks_sub_slots(tmp_path: Any, clock: Any) -> None:
    """Deletes leave free sub-slots spread over a class's slots; compact packs the live
    records into as few slots as their classes allow."""
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        for i in range(4 * 128):  # four full slots of 160-byte sub-slots
            store.create(f"k{i}", {"i": i})
        for i in range(40):  # two full slots of 1,024-byte sub-slots
            store.create(f"b{i}", {"i": i, "pad": "z" * 880})
        for i in range(4 * 128):
            if i % 4:
                store.delete(f"k{i}")
        for i in range(1, 40, 2):
            store.delete(f"b{i}")
        engine = store._engine
        assert engine is not None
        assert engine.class_usage() == {160: (4, 128, 384), 1024: (2, 20, 20)}
        want = entries(store)
        transfer.compact(store)
        engine = store._engine
        assert engine is not None
        assert engine.class_usage() == {160: (1, 128, 0), 1024: (1, 20, 0)}
        assert entries(store) == want and store.verify() == []


def test_compact_keeps_the_hash_seed_and_every_entry(tmp_path: Any, clock: Any) -> None:
    """Keys hash with the file's own seed, which compact carries over, and every key keeps
    its value bytes and its absolute expiry, in every class."""
    path = str(tmp_path / "s")
    values = class_values()
    with mmapkv.Store(path, clock=clock) as store:
        for n, (key, value) in enumerate(values.items()):
            store.create(key, value, ttl=100 + n if n % 2 else None)
        engine = store._engine
        assert engine is not None
        seed, want = engine.seed, entries(store)
        clock.advance(50)  # a compact later keeps the expiries where they were
        transfer.compact(store)
        engine = store._engine
        assert engine is not None and engine.seed == seed
        assert entries(store) == want and store.verify() == []
        for key, value in values.items():
            assert store.read(key) == value
    with mmapkv.Store(path, clock=clock) as store:  # and the new file says so itself
        engine = store._engine
        assert engine is not None and engine.seed == seed and engine.was_clean
        assert entries(store) == want


LOST_RECORD_DAMAGES = ["bitmap bit", "kind 0", "kind 200", "another kind", "a segment's kind"]


def _slot_info_loses_k7(tmp_path: Any, damage: str) -> tuple[str, dict[str, Any]]:
    """A store of 40 small keys whose slot info then loses the record of "k7": its bitmap
    bit cleared, or its slot's kind byte made free (0), meaningless (200), another
    class's or a table segment's (which a repair trusted).  The table still leads to
    every record.  The layout checksum is zeroed too, as in a file an older mmapkv
    closed: an open would otherwise see the damage and recover before any of these
    defences ran (``test_layout_damage_in_a_clean_file_is_recovered_before_any_write``)."""
    path = str(tmp_path / "s")
    values = {f"k{i}": {"i": i} for i in range(40)}
    with mmapkv.Store(path) as store:
        store.batch_create(values)
        engine = store._engine
        assert engine is not None
        off = engine.record_offset(engine.find(b"k7", engine.fingerprint(b"k7")))
        slot = engine.slot_of(off)
        at = engine.slots.info_offset + 24 * slot  # docs/format.md, "Slot info entry"
        cls = class_for(KEY_OFFSET + 2 + len(codec.encode(values["k7"])[0]))
        bit = (off - engine._slots_offset - slot * 20_480) // CLASS_SIZES[cls]
        in_slot = sum(1 for o, _, _, _ in engine.iter_records() if engine.slot_of(o) == slot)
    with open(path, "r+b") as f:
        f.seek(SB_LAYOUT_CHECKSUM)
        f.write(bytes(8))
        if damage == "bitmap bit":
            f.seek(at + 8 + bit // 8)
            byte = f.read(1)[0]
            f.seek(at + 8 + bit // 8)
            f.write(bytes([byte & ~(1 << bit % 8)]))
        else:
            f.seek(at)
            f.write(bytes([{"kind 0": 0, "kind 200": 200, "another kind": cls + 3,
                            "a segment's kind": KIND_SEGMENT}[damage]]))
    assert in_slot > 1  # a kind byte loses more than one
    return path, values


@pytest.mark.parametrize("damage", LOST_RECORD_DAMAGES)
def test_slot_info_that_lost_a_record_loses_no_key_to_a_dump_or_compact(tmp_path: Any,
                                                                      damage: str) -> None:
    """read() follows the table and still returns such records, so dump and compact must
    too: they walked the slot info alone and exited 0 without them."""
    path, values = _slot_info_loses_k7(tmp_path, damage)
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None
        assert sum(1 for _ in engine.iter_records()) < 40  # the walk of the slot info misses some
        assert store.read("k7") == values["k7"]
        assert {key: value for key, (value, _) in entries(store).items()} == values
        transfer.compact(store)
        assert store.verify() == [] and len(store) == 40
        assert all(store.read(key) == value for key, value in values.items())


@pytest.mark.parametrize("damage", LOST_RECORD_DAMAGES)
def test_slot_info_that_lost_a_record_loses_no_key_to_writes_or_a_repair(tmp_path: Any,
                                                                       damage: str) -> None:
    """keys() lists such a record (it listed only what the slot info showed); a create
    never takes its sub-slot (a cleared bit handed it out, and the create overwrote the
    live value: "k7" gone, the table indexing one record twice), but raises
    CorruptStoreError so that the store repairs; and the repair, which rebuilds the slot
    info from the records, keeps it (it freed every slot whose kind was not a record
    class, and read one of another class at the wrong boundaries)."""
    path, values = _slot_info_loses_k7(tmp_path, damage)
    made: dict[str, Any] = {}
    refused = 0
    with mmapkv.Store(path) as store:
        assert sorted(store.keys()) == sorted(values)
        for i in range(150):
            try:
                store.create(f"n{i}", {"i": i})
                made[f"n{i}"] = {"i": i}
            except CorruptStoreError:
                refused += 1
        assert refused <= 1 and len(made) >= 149
        engine = store._engine
        assert engine is not None
        with engine.change():  # what opening after a crash, or any repair, runs
            engine.recover()
        assert store.verify() == []
        assert {key: store.read(key) for key in sorted(store.keys())} == {**values, **made}


def test_compact_a_store_with_a_long_name(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / ("n" * 200))  # the store itself can be made; compact's temp must fit too
    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {"x": 1})
        assert transfer.compact(store)[2] == 1
        assert store.read("a") == {"x": 1} and os.listdir(tmp_path) == ["n" * 200]


def test_compact_keeps_the_lock(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / "s")
    code = f"""if True:
        import mmapkv
        try:
            mmapkv.Store({path!r})
        except mmapkv.StoreLockedError:
            print("locked")
    """
    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {})
        transfer.compact(store)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stdout == "locked\n", done.stderr


def test_compact_through_a_symbolic_link_rewrites_its_target(tmp_path: Any, clock: Any) -> None:
    """Opened through a symbolic link, compact builds the new file beside the link's target
    and renames it over the target: the link stays a link.  It used to rename over the link,
    which left a regular file there and the target as a second, stale copy."""
    os.mkdir(tmp_path / "real")
    target, link = str(tmp_path / "real" / "s"), str(tmp_path / "link")
    mmapkv.Store(target, clock=clock).close()
    os.symlink(os.path.join("real", "s"), link)  # relative, as `ln -s` makes it
    with mmapkv.Store(link, clock=clock) as store:
        for i in range(20):
            store.create(f"k{i}", WHOLE_SLOT)
        for i in range(10):
            store.delete(f"k{i}")
        want = entries(store)
        inode = os.stat(target).st_ino
        old, new, keys = transfer.compact(store)
        assert keys == 10 and new < old
        assert store.path == link  # what the user gave, which still names the store
        assert os.readlink(link) == os.path.join("real", "s")
        assert os.stat(target).st_ino != inode and is_locked(target)
        assert store._engine is not None and os.path.samestat(os.fstat(store._engine._fd), os.stat(target))
        assert entries(store) == want and store.verify() == []
        store.create("more", {})
    assert sorted(os.listdir(tmp_path)) == ["link", "real"] and os.listdir(tmp_path / "real") == ["s"]
    with mmapkv.Store(target, clock=clock) as store:
        assert set(entries(store)) == set(want) | {"more"}


NOBODY = 65534  # uid and gid of nobody / nogroup


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root gives files away")
def test_compact_keeps_the_owner_and_group(tmp_path: Any, clock: Any) -> None:
    """The new file used to belong to whoever ran compact (root, say, from a cron job),
    which locked the store's real owner out of a 0600 file."""
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {})
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o640)
        inode = os.stat(path).st_ino
        transfer.compact(store)
        after = os.stat(path)
        assert after.st_ino != inode  # a new file
        assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (NOBODY, NOBODY, 0o640)


@pytest.mark.parametrize("group_allowed", [True, False])
def test_compact_keeps_what_it_may_of_the_owner(tmp_path: Any, clock: Any, monkeypatch: Any,
                                                 group_allowed: bool) -> None:
    """Not root: giving the file away is refused, so compact keeps the group if it may,
    and otherwise goes on, the new file then being the caller's."""
    path = str(tmp_path / "s")
    calls: list[tuple[int, int]] = []
    fchown = os.fchown

    def refusing(fd: int, uid: int, gid: int) -> None:
        calls.append((uid, gid))
        if uid != -1 or not group_allowed:
            raise PermissionError(1, "Operation not permitted")
        fchown(fd, uid, gid)

    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {})
        old = os.stat(path)
        monkeypatch.setattr(os, "fchown", refusing)
        transfer.compact(store)
        monkeypatch.undo()
        assert calls == [(old.st_uid, old.st_gid), (-1, old.st_gid)]
        assert os.stat(path).st_ino != old.st_ino and store.read("a") == {}


def test_compact_of_an_empty_store(tmp_path: Any, clock: Any) -> None:
    initial = Geometry(SMALL_MAX_SIZE).initial_size
    with mmapkv.Store(tmp_path / "s", clock=clock, max_size=SMALL_MAX_SIZE) as store:
        assert transfer.compact(store) == (initial, initial, 0)  # never below the initial size
        for i in range(20):
            store.create(f"k{i}", WHOLE_SLOT)
        for i in range(20):
            store.delete(f"k{i}")
        old, new, keys = transfer.compact(store)
        assert keys == 0 and new == initial < old
        assert store.stats().max_size == SMALL_MAX_SIZE and store.verify() == []


def test_compact_failure_leaves_the_old_file(tmp_path: Any, clock: Any, monkeypatch: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        for i in range(20):
            store.create(f"k{i}", {"i": i})
        want = entries(store)
        inode = os.stat(path).st_ino

        def fail(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(DiskFullError, match=f"cannot compact {path}: No space") as caught:
            transfer.compact(store)
        monkeypatch.undo()
        assert caught.value.errno == 28
        assert os.stat(path).st_ino == inode and os.listdir(tmp_path) == ["s"]
        assert entries(store) == want and store.verify() == []
        store.create("more", {})


def is_locked(path: str) -> bool:
    """True if some open file description holds a lock on the file at *path*."""
    with open(path, "rb") as f:
        try:
            portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.LockException:
            return True
        portalocker.unlock(f)
        return False


def test_an_interrupt_just_after_the_rename_keeps_the_new_file_locked(
        tmp_path: Any, clock: Any, monkeypatch: Any) -> None:
    """Ctrl-C landing on the bytecode after ``os.replace`` returned (modelled by a replace
    that renames, then raises) is inside compact's ``try``: its handler used to release the
    new file, which the path already named, so until the next call repaired, no process
    held the store's lock and a rival could open it.  The new file must stay locked, and
    the next call take it over."""
    path = str(tmp_path / "s")
    replace = os.replace

    def replace_then_interrupt(src: str, dst: str) -> None:
        replace(src, dst)
        raise KeyboardInterrupt

    with mmapkv.Store(path, clock=clock) as store:
        for i in range(20):
            store.create(f"k{i}", {"i": i})
        store.delete("k0")
        want = entries(store)
        inode = os.stat(path).st_ino
        monkeypatch.setattr(os, "replace", replace_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            transfer.compact(store)
        monkeypatch.undo()
        assert os.stat(path).st_ino != inode  # renamed: the path names the new file
        assert is_locked(path)
        assert entries(store) == want and store.verify() == []  # the next call takes it over
        assert store._engine is not None and os.path.samestat(os.fstat(store._engine._fd), os.stat(path))
        store.create("more", {})
    assert os.listdir(tmp_path) == ["s"]


def test_a_store_closed_after_an_interrupt_past_the_rename_lets_go_of_the_new_file(
        tmp_path: Any, clock: Any, monkeypatch: Any) -> None:
    """Ctrl-C just after compact's rename, then the Store closed (or dropped) without a
    call to repair it, while the KeyboardInterrupt's traceback is kept (a log, a test):
    the new file stayed open and locked through the old engine, and the next Store on
    the path was refused as "in use" for as long as the traceback lived."""
    path = str(tmp_path / "s")
    replace = os.replace

    def replace_then_interrupt(src: str, dst: str) -> None:
        replace(src, dst)
        raise KeyboardInterrupt

    store = mmapkv.Store(path, clock=clock)
    for i in range(20):
        store.create(f"k{i}", {"i": i})
    store.delete("k0")
    want = entries(store)
    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as kept:
        transfer.compact(store)
    monkeypatch.undo()
    store.close()
    assert kept.value.__traceback__ is not None  # still holding the compact's frames
    assert not is_locked(path)
    with mmapkv.Store(path, clock=clock) as again:
        assert entries(again) == want and again.verify() == []
    assert os.listdir(tmp_path) == ["s"]


@pytest.mark.parametrize("at_the_path", ["another file", "nothing"])
def test_compact_refuses_when_another_program_moved_the_store(tmp_path: Any, clock: Any,
                                                              at_the_path: str) -> None:
    """Another program moves the store aside (``mv``) while it is open, and maybe puts its
    own file at the path: compact renamed its new file over that file (the user's data
    gone), or put the store at a path it had left.  It refuses, changing nothing, and the
    Store goes on in its own file."""
    path, moved = str(tmp_path / "s"), str(tmp_path / "moved")
    with mmapkv.Store(path, clock=clock) as store:
        for i in range(20):
            store.create(f"k{i}", {"i": i})
        store.delete("k0")
        want = entries(store)
        os.rename(path, moved)
        if at_the_path == "another file":
            with open(path, "wb") as f:
                f.write(b"precious user data\n")
        with pytest.raises(mmapkv.StoreAccessError, match="no longer names the file"):
            transfer.compact(store)
        if at_the_path == "another file":
            with open(path, "rb") as f:
                assert f.read() == b"precious user data\n"
            assert sorted(os.listdir(tmp_path)) == ["moved", "s"]
        else:
            assert os.listdir(tmp_path) == ["moved"]
        assert entries(store) == want and store.verify() == []
        store.create("more", {})
    with mmapkv.Store(moved, clock=clock) as store:
        assert set(entries(store)) == set(want) | {"more"}


def test_a_repair_keeps_its_own_file_when_another_store_took_its_path(tmp_path: Any, clock: Any) -> None:
    """The store's file moved aside and another store put at the path, then a change
    interrupted: the repair opened whatever the path named, so the Store went on in the
    other store (holding its lock).  It repairs its own file."""
    from interrupts import interrupt_at

    path, moved = str(tmp_path / "s"), str(tmp_path / "moved")
    with mmapkv.Store(path, clock=clock) as store:
        store.create("mine", {"v": 1})
        os.rename(path, moved)
        with mmapkv.Store(path) as other:
            other.create("theirs", {"v": 2})
        with open(path, "rb") as f:
            theirs = f.read()
        engine = store._engine
        assert engine is not None
        for step in range(1, 10_000):  # the first point inside the change's bracket
            interrupt_at(lambda: store.create(f"n{step}", {"v": 3}), step, KeyboardInterrupt)
            if engine.changes:
                break
        assert engine.changes, "no interrupt left a change open"
        assert store.read("mine") == {"v": 1} and "theirs" not in store  # repaired, our file
        assert store._engine is engine and store.verify() == []
        assert not is_locked(path)
    with open(path, "rb") as f:
        assert f.read() == theirs


# ------------------------------------------------------------------ corruption

def flip_value_byte(path: str, marker: bytes) -> None:
    """Flip one byte inside the stored value that contains *marker* (a closed store)."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(marker) + 1
        f.seek(at)
        f.write(bytes([data[at] ^ 0x20]))


def test_corrupt_record_is_found_and_can_be_left_out(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        store.create("good", {"v": "fine"})
        store.create("bad", {"v": "marker-value"})
        engine = store._engine
        assert engine is not None
        bad = engine.record_offset(engine.find(b"bad", engine.fingerprint(b"bad")))
    flip_value_byte(path, b"marker-value")
    problem = f"the record at offset {bad} fails its checksum"
    with mmapkv.Store(path, clock=clock) as store:
        assert transfer.check_records(store) == [problem]
        with pytest.raises(CorruptStoreError, match=problem):
            transfer.dump(store, io.StringIO())
        with pytest.raises(CorruptStoreError, match=problem):
            transfer.compact(store)
        out, skipped = io.StringIO(), []
        assert transfer.dump(store, out, skip_corrupt=True, on_skip=skipped.append) == \
            transfer.DumpResult(1, 0, 1)
        assert skipped == [problem] and '"good"' in out.getvalue()
        assert transfer.compact(store, skip_corrupt=True, on_skip=skipped.append)[2] == 1
        assert skipped == [problem] * 2
        assert store.keys() == ["good"] and store.verify() == [] and transfer.check_records(store) == []


def test_check_records_is_clean_on_a_good_store(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        fill(store)
        for key, value in class_values().items():
            store.create(key, value)
        assert transfer.check_records(store) == []


def test_dump_of_a_forged_record_that_is_not_utf8(tmp_path: Any, clock: Any) -> None:
    """A record whose checksum holds but whose key is not UTF-8 (only a forged file has one):
    dump raises CorruptStoreError, or with skip_corrupt leaves it out, as check_records
    reports it."""
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        store.create("good", {"v": 1})
        engine = store._engine
        assert engine is not None
        with engine.change():  # past Store's validation: what a forged file holds
            engine.room_for([64], [engine.fingerprint(b"\xff")])
            engine.insert(b"\xff", engine.fingerprint(b"\xff"), b'{"v":2}', 0, 0.0)
        assert "not UTF-8" in transfer.check_records(store)[0]
        skipped: list[str] = []
        assert transfer.dump(store, io.StringIO(), skip_corrupt=True, on_skip=skipped.append).corrupt == 1
        assert len(skipped) == 1
        with pytest.raises(CorruptStoreError):
            transfer.dump(store, io.StringIO())


def test_progress_is_reported(tmp_path: Any, clock: Any) -> None:
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))

    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        fill(store)
        for run in (lambda: transfer.dump(store, io.StringIO(), progress=progress),
                    lambda: transfer.check_records(store, progress=progress),
                    lambda: transfer.compact(store, progress=progress)):
            calls.clear()
            run()
            assert calls and calls[-1][0] == calls[-1][1]
            assert all(0 <= d <= t for d, t in calls)
        calls.clear()
        with mmapkv.Store(tmp_path / "t", clock=clock) as other:
            transfer.restore(other, io.BytesIO(dumped(store)), progress=progress)
        assert calls and calls[-1][0] == calls[-1][1]


def test_a_restore_that_meets_lost_slot_info_leaves_the_store_to_repair(tmp_path: Any) -> None:
    """A restore handed a sub-slot the slot info lost (a cleared bitmap bit) raises
    CorruptStoreError as a create does, and the store repairs at its next call: restore
    caught the error as bad input, closed its change, and the slot info stayed wrong."""
    path, values = _slot_info_loses_k7(tmp_path, "bitmap bit")
    lines = b"".join(b'{"key":"new%d","value":{"v":%d},"expires_at":null}\n' % (i, i) for i in range(40))
    with mmapkv.Store(path) as store:
        with pytest.raises(CorruptStoreError, match="lost the live record"):
            transfer.restore(store, io.BytesIO(lines))
        assert store.read("k7") == values["k7"]  # the next call repairs
        assert store.verify() == []
        transfer.restore(store, io.BytesIO(lines))
        assert store.verify() == [] and len(store) == 80
        assert all(store.read(key) == value for key, value in values.items())


class _OsWhoseDirectorySync:
    """``os`` for the locking module (``sync_directory``), but opening or syncing a
    directory fails."""

    def __init__(self, fails: str, error: OSError) -> None:
        self.fails, self.error = fails, error

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if self.fails == "open" and os.path.isdir(path):
            raise self.error
        return os.open(path, flags, *args, **kwargs)

    def fsync(self, fd: int) -> None:
        if self.fails == "fsync" and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise self.error
        os.fsync(fd)


@pytest.mark.parametrize("fails", ["open", "fsync"])
def test_a_directory_that_cannot_be_synced_after_a_compact(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    """After its rename, a compact syncs the directory: EIO there was Python's bare
    ``OSError`` from a compact that had happened, and a directory one may write but not
    read (mode 0o300) made every compact raise ``PermissionError`` (a review).  Now the
    first is ``StoreAccessError`` saying the store was compacted, the second goes without
    the sync (as a new store's name does, and SQLite), and the store is the compacted one."""
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path) as store:
        for i in range(20):
            store.create(f"k{i}", {"i": i})
        monkeypatch.setattr(locking, "os", _OsWhoseDirectorySync(fails, OSError(5, "injected EIO")))
        with pytest.raises(mmapkv.StoreAccessError, match="was compacted, but its directory could not be") as info:
            transfer.compact(store)
        assert info.value.errno == 5
        if fails == "open":  # a directory that cannot be read cannot be opened at all
            monkeypatch.setattr(locking, "os", _OsWhoseDirectorySync(fails, PermissionError(13, "denied")))
            transfer.compact(store)
        monkeypatch.undo()
        assert dict(store.items()) == {f"k{i}": {"i": i} for i in range(20)}
        assert store.verify() == []


@pytest.mark.parametrize("first_copy", ["before the others", "after the others"])
def test_compact_keeps_the_newer_of_two_copies_the_table_does_not_both_name(tmp_path: Any, first_copy: str) -> None:
    """``compact`` keeps a key's record by the table, which names one per key; a second
    LIVE copy the table does not name (only damage leaves one) sends the choice to a dict
    of every key, which keeps the newer copy: the named one where the other is older, the
    other where it is newer, whichever the walk met first."""
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path) as store:
        for i in range(100):
            store.create(f"k{i}", {"n": i})  # sequence numbers 1 to 100, in order
        if first_copy == "before the others":
            store.delete("k0")  # a free sub-slot there: the walk meets a copy before any key
        engine = store._engine
        assert engine is not None
        # the first copy the walk meets is the one that wins
        newer = engine.write_record(b"k7", b'{"n":-7}', 0, 0.0, seq=engine.next_seq + 1_000)
        older = engine.write_record(b"k5", b'{"n":-5}', 0, 0.0, seq=1)  # older than k5's
        engine.write_record(b"k9", b'{"n":-9}', 0, 0.0, seq=1)
        named = engine.record_offset(engine.find(b"k7", engine.fingerprint(b"k7")))
        assert (newer < named) == (first_copy == "before the others") and newer < older
        transfer.compact(store)
        start = 1 if first_copy == "before the others" else 0
        assert {key: store[key] for key in store} == {f"k{i}": {"n": -7 if i == 7 else i} for i in range(start, 100)}
        assert store.verify() == []


@pytest.mark.parametrize("expired_copy", ["the table's", "the other"])
def test_compact_keeps_no_older_copy_where_the_newer_expired(tmp_path: Any, expired_copy: str) -> None:
    """Of two copies of a key (damage), recovery keeps the newer, expired or not; compact's
    choice skipped expired copies first, so where the newer had expired it brought back
    the older copy's value, a value the key no longer had (a review, read in the code)."""
    now = [1_000.0]
    with mmapkv.Store(str(tmp_path / "s.mmapkv"), clock=lambda: now[0]) as store:
        for i in range(20):
            store.create(f"k{i}", {"n": i})
        if expired_copy == "the table's":
            store.set("k7", {"n": 70}, ttl=10)  # the named copy, newest, expires at 1,010
        engine = store._engine
        assert engine is not None
        newest = engine.next_seq + 1_000
        if expired_copy == "the table's":  # an older, live copy the table does not name
            engine.write_record(b"k7", b'{"n":-7}', 0, 0.0, seq=1)
        else:  # a newer copy, expired, the table does not name
            engine.write_record(b"k7", b'{"n":-7}', 0, 1_005.0, seq=newest)
        now[0] = 1_020.0
        transfer.compact(store)
        assert {key: store[key] for key in store} == {f"k{i}": {"n": i} for i in range(20) if i != 7}
        assert store.verify() == []


def test_a_record_two_damaged_table_entries_name_is_copied_once(tmp_path: Any) -> None:
    """A record whose bitmap bit was lost, and which two table entries name (damage on
    damage), is one record: ``keys()``, ``dump`` and ``compact`` reach it through the
    table and give it once.  ``compact`` wrote it twice (a review): two LIVE records and
    two entries of one key in the new file, which verify() did not see and keys() then
    reported as a damaged entry."""
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path) as store:
        for i in range(20):
            store.create(f"k{i}", {"n": i})
        engine = store._engine
        assert engine is not None
        fp = engine.fingerprint(b"k3")
        off = engine.record_offset(engine.find(b"k3", fp))
        slot, within = divmod(off - engine._slots_offset, SLOT_SIZE)
        kind, depth, used, prev, nxt, bitmap = engine.slots.info(slot)
        lost_bit = int.from_bytes(bitmap, "little") & ~(1 << within // CLASS_SIZES[kind - 1])
        engine.slots.set_info(slot, kind, depth, used, prev, nxt, lost_bit)
        engine.table.insert(fp, engine._entry(fp, off))  # a second entry naming the record
        assert sorted(store.keys()) == sorted(f"k{i}" for i in range(20))
        out = io.StringIO()
        transfer.dump(store, out)
        assert sorted(json.loads(line)["key"] for line in out.getvalue().splitlines()) == \
            sorted(f"k{i}" for i in range(20))
        assert transfer.compact(store)[2] == 20
        assert len(store) == 20 and store.verify() == []
        assert {key: store[key] for key in store.keys()} == {f"k{i}": {"n": i} for i in range(20)}
