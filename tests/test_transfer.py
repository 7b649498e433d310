"""``mmapkv.transfer``: dump, restore and compact on a ``Store`` with a fake clock."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

import mmapkv
from mmapkv import transfer
from mmapkv.errors import (
    CorruptStoreError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    StoreFullError,
)
from mmapkv.format import Geometry

SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4

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
    (b"[1, 2]", transfer.InvalidDumpError, "line 2 is not an entry"),
    (b'{"key": "x"}', transfer.InvalidDumpError, "line 2 is not an entry"),
    (b'{"key": "x", "value": {}, "extra": 1}', transfer.InvalidDumpError, "line 2 is not an entry"),
    (b'{"key": "", "value": {}}', InvalidKeyError, "line 2: key must be 1 to 32"),
    (b'{"key": 5, "value": {}}', InvalidKeyError, "line 2: key must be a str"),
    (b'{"key": "x", "value": [1]}', InvalidValueError, "line 2: value must be a dict"),
    (b'{"key": "x", "value": {"n": NaN}}', InvalidValueError, "line 2: value"),
    (b'{"key": "x", "value": {}, "expires_at": "soon"}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": true}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": -1}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "x", "value": {}, "expires_at": 1e300}', InvalidTTLError, "line 2: expires_at"),
    (b'{"key": "ok", "value": {}}', KeyExistsError, "line 2: key 'ok' appeared already on line 1"),
])
def test_restore_rejects_bad_lines_and_writes_nothing(tmp_path: Any, clock: Any, line: bytes,
                                                      error: type[Exception], match: str) -> None:
    data = b'{"key":"ok","value":{},"expires_at":null}\n' + line + b"\n"
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        with pytest.raises(error, match=match):
            transfer.restore(b, io.BytesIO(data), name="d")
        assert len(b) == 0 and b.verify() == []


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
    slots = Geometry(SMALL_MAX_SIZE).max_slots
    data = b"".join(b'{"key":"k%d","value":{}}\n' % i for i in range(slots + 1))
    with mmapkv.Store(tmp_path / "b", clock=clock, max_size=SMALL_MAX_SIZE) as b:
        b.create("mine", {})
        with pytest.raises(StoreFullError):
            transfer.restore(b, io.BytesIO(data))
        assert b.keys() == ["mine"] and b.verify() == []
        assert transfer.restore(b, io.BytesIO(data[:data.index(b'{"key":"k%d"' % (slots - 1))])).restored == slots - 1
        assert len(b) == slots and b.verify() == []


def test_restore_grows_the_file(tmp_path: Any, clock: Any) -> None:
    data = b"".join(b'{"key":"k%d","value":{"i":%d}}\n' % (i, i) for i in range(100))
    with mmapkv.Store(tmp_path / "b", clock=clock) as b:
        assert transfer.restore(b, io.BytesIO(data)).restored == 100
        assert len(b) == 100 and b.read("k77") == {"i": 77} and b.verify() == []


# ------------------------------------------------------------------ compact

def test_compact_shrinks_and_keeps_every_live_key(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        for i in range(300):
            store.create(f"k{i}", {"i": i, "pad": "y" * (i % 50)}, ttl=1000 + i if i % 3 == 0 else None)
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
        smallest = Geometry(mmapkv.MAX_FILE_SIZE).initial_size
        while Geometry(mmapkv.MAX_FILE_SIZE).slot_count(smallest) < 30:
            smallest *= 2
        assert new_size == smallest  # the smallest size growth can produce that holds 30
        store.create("after", {"still": "usable"})  # and the store goes on: it grows again
        for i in range(40):
            store.create(f"more{i}", {})
        assert store.verify() == []
    assert os.listdir(tmp_path) == ["s"]  # no temporary file left behind
    with mmapkv.Store(path, clock=clock) as store:
        assert len(store) == 71 and store.read("k0") == {"i": 0, "pad": ""}
        assert store.verify() == []


def test_compact_picks_the_smallest_size_that_holds_the_keys(tmp_path: Any, clock: Any) -> None:
    g = Geometry(SMALL_MAX_SIZE)  # 8, 16, then 33 slots at the ceiling
    sizes = [g.initial_size, 2 * g.initial_size, SMALL_MAX_SIZE]
    assert [g.slot_count(size) for size in sizes] == [8, 16, 33]
    with mmapkv.Store(tmp_path / "s", clock=clock, max_size=SMALL_MAX_SIZE) as store:
        for i in range(33):
            store.create(f"k{i}", {})
        for keep, size in ((16, sizes[1]), (9, sizes[1]), (8, sizes[0]), (0, sizes[0])):
            for key in store.keys()[keep:]:
                store.delete(key)
            assert transfer.compact(store)[1:] == (size, keep)
            assert len(store) == keep and store.verify() == []


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


def test_compact_of_an_empty_store(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "s", clock=clock, max_size=SMALL_MAX_SIZE) as store:
        for i in range(20):
            store.create(f"k{i}", {})
        for i in range(20):
            store.delete(f"k{i}")
        old, new, keys = transfer.compact(store)
        assert keys == 0 and new == Geometry(SMALL_MAX_SIZE).initial_size < old
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
        with pytest.raises(OSError, match="No space"):
            transfer.compact(store)
        monkeypatch.undo()
        assert os.stat(path).st_ino == inode and os.listdir(tmp_path) == ["s"]
        assert entries(store) == want and store.verify() == []
        store.create("more", {})


# ------------------------------------------------------------------ corruption

def flip_value_byte(path: str, marker: bytes) -> None:
    """Flip one byte inside the stored value that contains *marker* (a closed store)."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(marker) + 1
        f.seek(at)
        f.write(bytes([data[at] ^ 0x20]))


def test_corrupt_slot_is_found_and_can_be_left_out(tmp_path: Any, clock: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path, clock=clock) as store:
        store.create("good", {"v": "fine"})
        store.create("bad", {"v": "marker-value"})
    flip_value_byte(path, b"marker-value")
    with mmapkv.Store(path, clock=clock) as store:
        problems = transfer.check_slots(store)
        assert len(problems) == 1 and "fails its checksum" in problems[0]
        with pytest.raises(CorruptStoreError, match="fails its checksum"):
            transfer.dump(store, io.StringIO())
        with pytest.raises(CorruptStoreError):
            transfer.compact(store)
        out, skipped = io.StringIO(), []
        assert transfer.dump(store, out, skip_corrupt=True, on_skip=skipped.append) == \
            transfer.DumpResult(1, 0, 1)
        assert skipped == ["slot 1 fails its checksum"] and '"good"' in out.getvalue()
        assert transfer.compact(store, skip_corrupt=True, on_skip=skipped.append)[2] == 1
        assert skipped == ["slot 1 fails its checksum"] * 2
        assert store.keys() == ["good"] and store.verify() == [] and transfer.check_slots(store) == []


def test_check_slots_is_clean_on_a_good_store(tmp_path: Any, clock: Any) -> None:
    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        fill(store)
        assert transfer.check_slots(store) == []


def test_progress_is_reported(tmp_path: Any, clock: Any) -> None:
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))

    with mmapkv.Store(tmp_path / "s", clock=clock) as store:
        fill(store)
        for run in (lambda: transfer.dump(store, io.StringIO(), progress=progress),
                    lambda: transfer.check_slots(store, progress=progress),
                    lambda: transfer.compact(store, progress=progress)):
            calls.clear()
            run()
            assert calls and calls[-1][0] == calls[-1][1]
            assert all(0 <= d <= t for d, t in calls)
        calls.clear()
        with mmapkv.Store(tmp_path / "t", clock=clock) as other:
            transfer.restore(other, io.BytesIO(dumped(store)), progress=progress)
        assert calls and calls[-1][0] == calls[-1][1]
