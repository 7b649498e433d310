"""The file format: the sizes in mmapkv/format.py, the bytes of a real file read back with
``struct`` at the documented offsets, and refusing files that are not (current) stores."""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
from typing import Any

import pytest
from xxhash import xxh3_64_intdigest

import mmapkv
from mmapkv import CorruptStoreError, FormatVersionError
from mmapkv import format as fmt

NOW = 1_700_000_000.0

# The layout as issue 2 and the format.py docstring give it, written out independently.
SUPERBLOCK = struct.Struct("<8sIIQQIIIIdQQQ")
SLOT_HEADER = struct.Struct("<IIQQdIBBH")
KEY_AT, VALUE_AT = 40, 168


def clock() -> float:
    return NOW


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def patch_bytes(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def path(tmp_path: Any) -> str:
    return os.path.join(tmp_path, "fmt.mmapkv")


# --------------------------------------------------------------------- sizes

def test_struct_sizes() -> None:
    """Superblock 80 bytes, slot header 40, value at 168, stride 20,480 (page-aligned), 16 KiB values."""
    assert fmt.SUPERBLOCK.size == 80
    assert fmt.SUPERBLOCK.format == SUPERBLOCK.format
    assert fmt.SLOT_HEADER.size == 40
    assert fmt.SLOT_HEADER.format == SLOT_HEADER.format
    assert fmt.KEY_OFFSET == KEY_AT
    assert fmt.MAX_KEY_BYTES == 128 == 32 * 4
    assert fmt.VALUE_OFFSET == VALUE_AT == 168
    assert fmt.MAX_VALUE_BYTES == 16_384
    assert fmt.SLOT_STRIDE == 20_480 == 5 * 4096 >= 168 + 16_384
    assert fmt.PAGE_SIZE == 4096
    assert fmt.MAX_FILE_SIZE == 1 << 30


def test_magic_and_constants() -> None:
    """The magic number, version and state words are the documented bytes."""
    assert fmt.MAGIC == b"\x89MKV\r\n\x1a\n"
    assert len(fmt.MAGIC) == 8
    assert fmt.VERSION == 2
    assert fmt.FLAG_CLEAN == 1
    assert fmt.STATE_FREE == 0
    assert fmt.STATE_LIVE == int.from_bytes(b"LIVE", "little")
    assert fmt.STATE_PENDING == int.from_bytes(b"PEND", "little")
    assert fmt.CODEC_STDLIB == 1


def test_geometry_of_1_gib() -> None:
    """The 1 GiB ceiling: 131,072 table positions, slots from 1,052,672, a ~1 MiB initial
    file (1,216,512 bytes, 8 slots) and 52,377 slots at the ceiling."""
    g = fmt.Geometry(1 << 30)
    assert g.table_capacity == 131_072
    assert g.table_offset == 4096
    assert g.slots_offset == 1_052_672 == 4096 + 8 * 131_072
    assert g.initial_size == 1_216_512 == 1_052_672 + 8 * 20_480
    assert g.max_slots == 52_377 == (2**30 - 1_052_672) // 20_480
    assert g.max_slots * 2 <= g.table_capacity  # the table is at most half full
    assert g.slot_count(g.initial_size) == 8
    assert g.slot_offset(3) == 1_052_672 + 3 * 20_480
    assert all(g.slot_offset(n) % 4096 == 0 for n in range(g.max_slots))
    assert g.grown_size(g.initial_size) == 2 * 1_216_512
    assert g.grown_size(600 << 20) == 1 << 30  # clamped
    assert g.is_valid_size(g.initial_size) and g.is_valid_size(4 * g.initial_size)
    assert g.is_valid_size(1 << 30) and not g.is_valid_size(3 * g.initial_size)


def test_smallest_max_size() -> None:
    """smallest_max_size holds exactly the initial layout (8 slots) and is a fixed point."""
    smallest = fmt.Geometry.smallest_max_size()
    g = fmt.Geometry(smallest)
    assert g.initial_size == smallest
    assert g.max_slots == fmt.INITIAL_SLOTS == 8
    assert fmt.Geometry(smallest - 1).initial_size > smallest - 1


# --------------------------------------------------------------------- real file bytes

def test_superblock_of_a_closed_store(path: str) -> None:
    """After a clean close the superblock has the magic, version 2, CLEAN, the ceiling, the
    real file size, exact counters and a valid checksum; the rest of page 0 is zero."""
    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {"v": 1})
        store.create("b", {"v": 2}, ttl=100)
        store.create("c", {"v": 3}, ttl=50)
        store.delete("a")
    data = read_bytes(path)
    (magic, version, flags, max_size, file_size, high_water, free_head, live, ttl, next_expiry,
     next_seq, _batch, checksum) = SUPERBLOCK.unpack_from(data, 0)
    assert magic == fmt.MAGIC
    assert version == 2
    assert flags & 1 == 1
    assert max_size == 1 << 30
    assert file_size == os.path.getsize(path) == len(data) == fmt.Geometry(1 << 30).initial_size
    assert high_water == 3
    assert free_head == 1  # slot 0 ("a") was freed
    assert live == 2 and ttl == 2
    assert NOW < next_expiry <= NOW + 50  # a lower bound on the earliest expiry
    assert next_seq >= 4
    assert checksum == xxh3_64_intdigest(data[:72])
    assert data[80:4096] == bytes(4096 - 80)


def test_superblock_of_an_empty_store(path: str) -> None:
    """A new store is created clean, with no keys and no expiry."""
    mmapkv.Store(path, max_size=fmt.Geometry.smallest_max_size() * 2).close()
    data = read_bytes(path)
    fields = SUPERBLOCK.unpack_from(data, 0)
    assert fields[0] == fmt.MAGIC and fields[1] == fmt.VERSION and fields[2] & 1
    assert fields[3] == fmt.Geometry.smallest_max_size() * 2
    assert fields[4] == len(data)
    assert fields[5:9] == (0, 0, 0, 0)
    assert fields[9] == math.inf


def test_store_is_marked_dirty_from_its_first_change(path: str) -> None:
    """Opening and reading leave the file byte for byte as it was (CLEAN set); from the
    first change until close the CLEAN flag is clear (a crash must recover)."""
    mmapkv.Store(path).close()
    before = read_bytes(path)
    store = mmapkv.Store(path)
    try:
        assert "k" not in store and len(store) == 0
        assert read_bytes(path) == before
        store.create("k", {"v": 1})
        flags = struct.unpack_from("<I", read_bytes(path), 12)[0]
        assert flags & 1 == 0
    finally:
        store.close()
    assert struct.unpack_from("<I", read_bytes(path), 12)[0] & 1 == 1


def test_slot_and_table_bytes(path: str) -> None:
    """A created key's slot header, key, value and checksum, and its hash table entry, are
    at the documented offsets."""
    key, value = "clé", {"name": "Zoë", "n": [1, 2]}
    with mmapkv.Store(path, clock=clock) as store:
        store.create(key, value, ttl=30)
        store.create("big", {"n": 2**70})
    data = read_bytes(path)
    g = fmt.Geometry(1 << 30)
    kb = key.encode("utf-8")
    text = b'{"name":"Zo\xc3\xab","n":[1,2]}'

    off = g.slots_offset  # slot 0: the first key created
    state, next_free, checksum, seq, expires, vlen, klen, vflags, reserved = \
        SLOT_HEADER.unpack_from(data, off)
    assert state == fmt.STATE_LIVE
    assert next_free == 0 and reserved == 0 and vflags == 0
    assert seq >= 1
    assert expires == NOW + 30
    assert klen == len(kb) == 4
    assert data[off + KEY_AT:off + KEY_AT + klen] == kb
    assert data[off + KEY_AT + klen:off + VALUE_AT] == bytes(128 - klen)
    assert vlen == len(text)
    assert data[off + VALUE_AT:off + VALUE_AT + vlen] == text
    assert checksum == xxh3_64_intdigest(data[off + 16:off + VALUE_AT + vlen])

    # the table entry: fingerprint << 20 | (slot + 1), at its home position
    fp = xxh3_64_intdigest(kb) >> 20
    home = fp & (g.table_capacity - 1)
    entry = struct.unpack_from("<Q", data, g.table_offset + 8 * home)[0]
    assert entry == fp << 20 | 1
    entries = struct.unpack_from(f"<{g.table_capacity}Q", data, g.table_offset)
    assert sorted(e for e in entries if e) == sorted([fp << 20 | 1, (xxh3_64_intdigest(b"big") >> 20) << 20 | 2])

    off1 = g.slot_offset(1)  # slot 1: the big integer goes through the stdlib codec
    header = SLOT_HEADER.unpack_from(data, off1)
    assert header[0] == fmt.STATE_LIVE and header[4] == 0.0 and header[7] == fmt.CODEC_STDLIB
    assert data[off1 + KEY_AT:off1 + KEY_AT + 3] == b"big"
    assert data[off1 + VALUE_AT:off1 + VALUE_AT + header[5]] == b'{"n":1180591620717411303424}'


def test_deleted_slot_is_free(path: str) -> None:
    """A deleted key's slot is FREE and its table entry is gone."""
    with mmapkv.Store(path) as store:
        store.create("gone", {"v": 1})
        store.delete("gone")
    data = read_bytes(path)
    g = fmt.Geometry(1 << 30)
    assert struct.unpack_from("<I", data, g.slots_offset)[0] == fmt.STATE_FREE
    assert not any(struct.unpack_from(f"<{g.table_capacity}Q", data, g.table_offset))


# --------------------------------------------------------------------- refusing files

def assert_refused_untouched(path: str, error: type[Exception] = CorruptStoreError) -> None:
    """Opening *path* raises *error* naming the path, twice (no lock left behind), and the
    file's bytes are unchanged."""
    before = sha256(path)
    size = os.path.getsize(path)
    for _ in range(2):
        with pytest.raises(error) as info:
            mmapkv.Store(path)
        assert path in str(info.value)
        assert isinstance(info.value, OSError)
    assert sha256(path) == before
    assert os.path.getsize(path) == size


@pytest.mark.parametrize(
    "content",
    [b"", b"0123456789", fmt.MAGIC + b"\x01\x00", fmt.MAGIC + bytes(60), b"hello world\n" * 1000,
     b"\x89PNG\r\n\x1a\n" + bytes(200_000)],
    ids=["empty", "10-bytes", "magic-then-short", "magic-then-79-bytes", "text", "png"],
)
def test_not_a_store(path: str, content: bytes) -> None:
    """Short files and files without the magic are CorruptStoreError and left untouched."""
    with open(path, "wb") as f:
        f.write(content)
    assert_refused_untouched(path)


def test_random_2_mib_file(path: str) -> None:
    """A file of 2 MiB of random bytes is CorruptStoreError and left untouched."""
    with open(path, "wb") as f:
        f.write(random.Random(20240601).randbytes(2 << 20))
    assert_refused_untouched(path)


def test_wrong_magic(path: str) -> None:
    """A real store with one byte of its magic changed is refused and left untouched."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 1, b"X")
    assert_refused_untouched(path)
    patch_bytes(path, 1, b"M")
    with mmapkv.Store(path) as store:
        assert store.read("a") == {"v": 1}


def test_newer_version(path: str) -> None:
    """A version field of 3 is FormatVersionError naming the version; the file is left as it
    was and opens again once the version is restored."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", 3))
    assert_refused_untouched(path, FormatVersionError)
    with pytest.raises(FormatVersionError) as info:
        mmapkv.Store(path)
    assert "version 3" in str(info.value) and "upgrade" in str(info.value)
    patch_bytes(path, 8, struct.pack("<I", 2))
    with mmapkv.Store(path) as store:
        assert store._engine is not None and store._engine.was_clean
        assert store.read("a") == {"v": 1}


def test_version_1_is_refused_by_name(path: str) -> None:
    """Version 1 (the unaligned development format) is FormatVersionError saying so, and
    the file is left as it was."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", 1))
    assert_refused_untouched(path, FormatVersionError)
    with pytest.raises(FormatVersionError, match="version 1, a development format"):
        mmapkv.Store(path)


def test_version_zero_is_corrupt(path: str) -> None:
    """A version below 1 is not a newer format: plain CorruptStoreError."""
    mmapkv.Store(path).close()
    patch_bytes(path, 8, struct.pack("<I", 0))
    with pytest.raises(CorruptStoreError) as info:
        mmapkv.Store(path)
    assert not isinstance(info.value, FormatVersionError)


@pytest.mark.parametrize("cut", [1, fmt.SLOT_STRIDE, "to-initial", "to-superblock"])
def test_truncated_store(path: str, cut: Any) -> None:
    """A store shorter than its superblock's file_size is CorruptStoreError, untouched."""
    max_size = fmt.Geometry.smallest_max_size() * 4
    with mmapkv.Store(path, max_size=max_size) as store:
        for i in range(12):  # grows once: 8 -> 16 slots
            store.create(f"k{i}", {"i": i})
    recorded = SUPERBLOCK.unpack_from(read_bytes(path), 0)[4]
    assert recorded == os.path.getsize(path) > fmt.Geometry(max_size).initial_size
    if cut == "to-initial":
        new_size = fmt.Geometry(max_size).initial_size
    elif cut == "to-superblock":
        new_size = 80
    else:
        new_size = recorded - cut
    os.truncate(path, new_size)
    assert_refused_untouched(path)
