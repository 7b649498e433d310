"""The file format: the sizes in mmapkv/format.py, the bytes of a real file read back with
``struct`` at the documented offsets, and refusing files that are not (current) stores."""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from xxhash import xxh3_64_intdigest

import mmapkv
from mmapkv import CorruptStoreError, FormatVersionError
from mmapkv import format as fmt

NOW = 1_700_000_000.0

# The layout as docs/format.md gives it, written out independently of format.py.
SUPERBLOCK = struct.Struct("<8s I I Q Q Q Q Q Q I I I I I I d Q 13I I Q Q")
SLOT_INFO = struct.Struct("<B B H H H 16s")
RECORD = struct.Struct("<I I Q Q d H B B")
KEY_AT = 36
INFO_AT_1_GIB = 4096 + 2 * 2**17            # superblock page, then 2**17 u16 directory entries
SLOTS_AT_1_GIB = 1_527_808                  # info_offset + 24 B x 52,428, rounded up to a page
EMPTY_STORE_LIMIT = 2 << 20                 # issue 12: a new empty store is at most 2 MiB


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


def superblock(data: bytes) -> dict[str, Any]:
    names = ("magic", "version", "flags", "max_size", "file_size", "hash_seed", "seq_limit",
             "batch_commit", "floor_seq", "high_water", "pool_head", "pool_count", "live_count",
             "ttl_count", "global_depth", "next_expiry", "next_seq")
    fields = SUPERBLOCK.unpack_from(data, 0)
    sb = dict(zip(names, fields))
    sb["class_heads"] = list(fields[17:30])
    sb["segments"], sb["checksum"], sb["layout_checksum"] = fields[30:]
    return sb


def slot_info(data: bytes, info_offset: int, slot: int) -> tuple[int, int, int, int, int, int]:
    """(kind, depth, used, prev, next, bitmap as an int) of *slot*."""
    *head, bitmap = SLOT_INFO.unpack_from(data, info_offset + 24 * slot)
    return (*head, int.from_bytes(bitmap, "little"))


@pytest.fixture
def path(tmp_path: Any) -> Iterator[str]:
    p = os.path.join(tmp_path, "fmt.mmapkv")
    yield p
    if os.path.exists(p):  # the disk is shared: a 1 GiB-ceiling store is 1.6 MiB
        os.unlink(p)


# --------------------------------------------------------------------- sizes

def test_struct_sizes() -> None:
    """Superblock 176 bytes, slot info 24, record header 36 with the key right after it,
    a five-page slot that holds the largest record whole."""
    assert fmt.SUPERBLOCK.size == SUPERBLOCK.size == 176
    assert struct.calcsize(fmt.SUPERBLOCK.format) == struct.calcsize(SUPERBLOCK.format)
    assert fmt.SUPERBLOCK.format.replace(" ", "") == SUPERBLOCK.format.replace(" ", "")
    assert fmt.SLOT_INFO.size == 24 and fmt.SLOT_INFO.format == SLOT_INFO.format.replace(" ", "")
    assert fmt.RECORD_HEADER.size == 36 and fmt.RECORD_HEADER.format == RECORD.format.replace(" ", "")
    assert fmt.KEY_OFFSET == KEY_AT and fmt.BODY_OFFSET == 16
    assert fmt.MAX_KEY_BYTES == 128 == 32 * 4
    assert fmt.MAX_VALUE_BYTES == 16_384
    assert fmt.PAGE_SIZE == 4096
    assert fmt.SLOT_SIZE == 20_480 == 5 * 4096 >= KEY_AT + 128 + 16_384
    assert fmt.MAX_FILE_SIZE == 1 << 30
    assert fmt.SEGMENT_ENTRIES * 8 == 16_384 <= fmt.SLOT_SIZE  # a segment fits one slot


def test_superblock_field_offsets() -> None:
    """The offsets the engine writes in place are the documented ones, and the checksum
    covers everything before it."""
    assert (fmt.SB_FLAGS, fmt.SB_FILE_SIZE, fmt.SB_SEQ_LIMIT, fmt.SB_BATCH_COMMIT,
            fmt.SB_FLOOR_SEQ, fmt.SB_CHECKSUM) == (12, 24, 40, 48, 56, 160)
    names = fmt.SUPERBLOCK_FIELDS
    assert len(names) == len(fmt.SUPERBLOCK.unpack(bytes(176)))
    assert names.index("checksum") == len(names) - 2 and names[-1] == "layout_checksum"
    assert [n for n in names if n.startswith("class_head_")] == [f"class_head_{i}" for i in range(13)]


def test_magic_and_constants() -> None:
    """The magic number, version, state words and the table's bit fields."""
    assert fmt.MAGIC == b"\x89MKV\r\n\x1a\n"
    assert fmt.VERSION == 3
    assert fmt.FLAG_CLEAN == 1
    assert fmt.STATE_FREE == 0
    assert fmt.STATE_LIVE == int.from_bytes(b"LIVE", "little")
    assert fmt.STATE_PENDING == int.from_bytes(b"PEND", "little")
    for a, b in ((fmt.STATE_FREE, fmt.STATE_LIVE), (fmt.STATE_LIVE, fmt.STATE_PENDING),
                 (fmt.STATE_FREE, fmt.STATE_PENDING)):
        assert bin(a ^ b).count("1") > 1  # no single flipped bit commits a record
    assert fmt.CODEC_STDLIB == 1
    assert (fmt.KIND_FREE, fmt.KIND_SEGMENT) == (0, 255)
    # a record's offset in 32-byte units, 25 bits of them: exactly the 1 GiB ceiling
    assert fmt.UNIT == 32 and fmt.UNIT_BITS == 25 and fmt.UNIT << fmt.UNIT_BITS == fmt.MAX_FILE_SIZE
    assert fmt.UNIT_MASK == 2**25 - 1 and fmt.FINGERPRINT_SHIFT == 25
    # directory bits [0, 17), home bits [17, 28): both inside the 39-bit fingerprint
    assert fmt.HOME_SHIFT == 17 and fmt.HOME_SHIFT + 11 <= 64 - fmt.FINGERPRINT_SHIFT
    assert fmt.SEGMENT_ENTRIES == 2**11
    assert (fmt.SPLIT_AT, fmt.SEGMENT_FULL) == (1024, 1792)


# --------------------------------------------------------------------- size classes

def test_class_sizes_divide_the_slot_in_units() -> None:
    """13 increasing classes, each a multiple of 32 that divides the slot, the last the
    whole slot; every class's sub-slots fit the 128-bit bitmap; sizes that divide a page
    never straddle one."""
    sizes = fmt.CLASS_SIZES
    assert fmt.CLASS_COUNT == len(sizes) == 13
    assert list(sizes) == sorted(set(sizes))
    assert sizes[0] == 160 and sizes[-1] == fmt.SLOT_SIZE
    for size in sizes:
        assert fmt.SLOT_SIZE % size == 0, size
        assert size % fmt.UNIT == 0, size
        assert fmt.SLOT_SIZE // size <= 128, size
        per = fmt.SLOT_SIZE // size
        straddles = [j for j in range(per) if j * size // 4096 != ((j + 1) * size - 1) // 4096]
        if 4096 % size == 0:
            assert straddles == [], size
        else:
            assert straddles, size
    assert {s for s in sizes if 4096 % s == 0} == {256, 512, 1024, 2048, 4096}


def test_class_for_boundaries() -> None:
    """A record goes to the smallest class it fits: exactly a class's size fits it, one byte
    more goes to the next; a record larger than a slot is refused."""
    assert fmt.class_for(1) == 0
    for cls, size in enumerate(fmt.CLASS_SIZES):
        assert fmt.class_for(size) == cls
        if cls + 1 < fmt.CLASS_COUNT:
            assert fmt.class_for(size + 1) == cls + 1
    largest = fmt.KEY_OFFSET + fmt.MAX_KEY_BYTES + fmt.MAX_VALUE_BYTES
    assert fmt.class_for(largest) == fmt.CLASS_COUNT - 1
    with pytest.raises(ValueError):
        fmt.class_for(fmt.SLOT_SIZE + 1)


# --------------------------------------------------------------------- geometry

def test_geometry_of_1_gib() -> None:
    """The 1 GiB ceiling: a 2**17-entry directory, slot info for 52,428 slots, slots from
    1,527,808, an initial file of 8 slots and 52,354 slots at the ceiling."""
    g = fmt.Geometry(1 << 30)
    most = (1 << 30) // 20_480
    assert most == 52_428 and 2**15 < most <= 2**16
    assert g.max_depth == 17
    assert g.dir_offset == 4096
    assert g.info_offset == INFO_AT_1_GIB == 266_240
    assert g.slots_offset == SLOTS_AT_1_GIB == -(-(INFO_AT_1_GIB + 24 * most) // 4096) * 4096
    assert g.max_slots == 52_354 == ((1 << 30) - SLOTS_AT_1_GIB) // 20_480
    assert g.initial_size == 1_691_648 == SLOTS_AT_1_GIB + 8 * 20_480
    assert g.initial_size <= EMPTY_STORE_LIMIT
    assert g.slot_count(g.initial_size) == 8
    assert g.slot_offset(3) == SLOTS_AT_1_GIB + 3 * 20_480
    assert all(g.slot_offset(n) % 4096 == 0 for n in range(0, g.max_slots, 97))
    assert g.max_slots < 2**16  # a slot number fits the directory's and the lists' u16s


def test_growth_sizes() -> None:
    """Slots double from 8 and are clamped at max_slots; only those sizes are valid."""
    g = fmt.Geometry(1 << 30)
    size = g.initial_size
    slots = [g.slot_count(size)]
    while g.grown_size(size) != size:
        size = g.grown_size(size)
        slots.append(g.slot_count(size))
    assert slots == [8 * 2**k for k in range(13)] + [52_354]
    assert size == g.file_size(52_354) == 1_073_737_728 <= 1 << 30
    assert g.grown_size(g.file_size(40_000)) == size  # clamped
    assert g.is_valid_size(g.initial_size) and g.is_valid_size(g.file_size(32))
    assert g.is_valid_size(size)
    for bad in (g.file_size(24), g.file_size(9), g.initial_size + 1, 1 << 30, size + 20_480):
        assert not g.is_valid_size(bad), bad


def test_smallest_max_size() -> None:
    """smallest_max_size holds the initial 8 slots and never grows; a ceiling one slot
    smaller does not hold them."""
    smallest = fmt.Geometry.smallest_max_size()
    assert smallest == 176_128
    g = fmt.Geometry(smallest)
    assert g.max_slots == fmt.INITIAL_SLOTS == 8
    assert g.initial_size == g.file_size(8) <= smallest
    assert g.grown_size(g.initial_size) == g.initial_size
    assert fmt.Geometry(smallest - fmt.SLOT_SIZE).max_slots < 8


def test_smallest_max_size_is_the_lowest_that_holds_the_initial_layout() -> None:
    """Its docstring: "the lowest ceiling that still holds the initial layout"."""
    smallest = fmt.Geometry.smallest_max_size()
    assert fmt.Geometry(smallest - 1).max_slots < fmt.INITIAL_SLOTS


# --------------------------------------------------------------------- real file bytes

def test_new_empty_store_is_at_most_2_mib(path: str) -> None:
    """Issue 12: a new, empty store at the default 1 GiB ceiling takes at most 2 MiB, in
    size and in blocks allocated on disk."""
    mmapkv.Store(path).close()
    st = os.stat(path)
    assert st.st_size == fmt.Geometry(1 << 30).initial_size <= EMPTY_STORE_LIMIT
    assert st.st_blocks * 512 <= EMPTY_STORE_LIMIT


def test_superblock_of_a_closed_store(path: str) -> None:
    """After a clean close the superblock has the magic, version 3, CLEAN, the ceiling, the
    real file size, exact counters and a valid checksum; the rest of page 0 is zero."""
    with mmapkv.Store(path, clock=clock) as store:
        store.create("a", {"v": 1})
        store.create("b", {"v": 2}, ttl=100)
        store.create("c", {"v": 3}, ttl=50)
        store.delete("a")
    data = read_bytes(path)
    sb = superblock(data)
    assert sb["magic"] == fmt.MAGIC and sb["version"] == 3 and sb["flags"] & 1
    assert sb["max_size"] == 1 << 30
    assert sb["file_size"] == os.path.getsize(path) == len(data) == fmt.Geometry(1 << 30).initial_size
    assert (sb["batch_commit"], sb["floor_seq"]) == (0, 0)
    assert sb["high_water"] == 2  # slot 0 the table's segment, slot 1 the 160-byte records
    assert (sb["pool_head"], sb["pool_count"]) == (0, 0)
    assert (sb["live_count"], sb["ttl_count"]) == (2, 2)
    assert sb["global_depth"] == 0 and sb["segments"] == 1
    assert NOW < sb["next_expiry"] <= NOW + 50  # a lower bound on the earliest expiry
    assert sb["next_seq"] >= 4 and sb["seq_limit"] >= sb["next_seq"]
    assert sb["class_heads"] == [2] + [0] * 12  # slot 1 has free 160-byte sub-slots
    assert sb["checksum"] == xxh3_64_intdigest(data[:160])
    g = fmt.Geometry(1 << 30)
    info = xxh3_64_intdigest(data[g.info_offset:g.info_offset + 24 * g.slot_count(len(data))]) % 2**32 or 1
    directory = xxh3_64_intdigest(data[g.dir_offset:g.dir_offset + 2]) % 2**32 or 1  # depth 0: one entry
    assert sb["layout_checksum"] == info << 32 | directory
    assert data[176:4096] == bytes(4096 - 176)


def test_superblock_of_an_empty_store(tmp_path: Any) -> None:
    """A new store is created clean, with no keys, no expiry, one segment in slot 0 and a
    hash seed of its own."""
    seeds = []
    for name in ("one", "two"):
        path = os.path.join(tmp_path, name)
        mmapkv.Store(path, max_size=fmt.Geometry.smallest_max_size() * 2).close()
        data = read_bytes(path)
        sb = superblock(data)
        assert sb["magic"] == fmt.MAGIC and sb["version"] == fmt.VERSION and sb["flags"] & 1
        assert sb["max_size"] == fmt.Geometry.smallest_max_size() * 2
        assert sb["file_size"] == len(data)
        assert (sb["high_water"], sb["pool_head"], sb["pool_count"]) == (1, 0, 0)
        assert (sb["live_count"], sb["ttl_count"], sb["global_depth"], sb["segments"]) == (0, 0, 0, 1)
        assert sb["next_expiry"] == math.inf and sb["class_heads"] == [0] * 13
        g = fmt.Geometry(sb["max_size"])
        assert slot_info(data, g.info_offset, 0) == (255, 0, 0, 0, 0, 0)
        assert struct.unpack_from("<H", data, g.dir_offset)[0] == 0
        seeds.append(sb["hash_seed"])
    assert seeds[0] != seeds[1]


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


def test_record_slot_info_and_table_bytes(path: str) -> None:
    """Two small keys share slot 1's 160-byte sub-slots: their headers, keys, values and
    offset-seeded checksums, the slot's info and the table entries are where the format
    says."""
    key, value = "clé", {"name": "Zoë", "n": [1, 2]}
    with mmapkv.Store(path, clock=clock) as store:
        store.create(key, value, ttl=30)
        store.create("big", {"n": 2**70})
    data = read_bytes(path)
    g = fmt.Geometry(1 << 30)
    seed = superblock(data)["hash_seed"]
    kb = key.encode("utf-8")
    text = b'{"name":"Zo\xc3\xab","n":[1,2]}'

    off = SLOTS_AT_1_GIB + 20_480  # slot 1, sub-slot 0: the first record created
    state, reserved, checksum, seq, expires, vlen, klen, vflags = RECORD.unpack_from(data, off)
    assert state == fmt.STATE_LIVE and reserved == 0 and vflags == 0
    assert seq >= 1 and expires == NOW + 30
    assert klen == len(kb) == 4 and vlen == len(text)
    assert data[off + KEY_AT:off + KEY_AT + klen] == kb
    assert data[off + KEY_AT + klen:off + KEY_AT + klen + vlen] == text
    assert checksum == xxh3_64_intdigest(data[off + 16:off + KEY_AT + klen + vlen], off)
    assert checksum != xxh3_64_intdigest(data[off + 16:off + KEY_AT + klen + vlen], off + 160)

    off1 = off + 160  # sub-slot 1: the big integer goes through the stdlib codec
    header = RECORD.unpack_from(data, off1)
    assert header[0] == fmt.STATE_LIVE and header[4] == 0.0 and header[7] == fmt.CODEC_STDLIB
    assert header[3] > seq
    assert data[off1 + KEY_AT:off1 + KEY_AT + 3] == b"big"
    assert data[off1 + KEY_AT + 3:off1 + KEY_AT + 3 + header[5]] == b'{"n":1180591620717411303424}'

    # slot 1: class 0 (kind 1), two sub-slots taken, alone on its partial list
    assert slot_info(data, g.info_offset, 1) == (1, 0, 2, 0, 0, 0b11)
    # slot 0: the only segment, named by directory entry 0, holding both entries
    assert slot_info(data, g.info_offset, 0) == (255, 0, 2, 0, 0, 0)
    assert struct.unpack_from("<H", data, g.dir_offset)[0] == 0
    segment = struct.unpack_from("<2048Q", data, SLOTS_AT_1_GIB)
    want = {}
    for k, at in ((kb, off), (b"big", off1)):
        fp = xxh3_64_intdigest(k, seed) >> 25
        want[fp << 25 | ((at - SLOTS_AT_1_GIB) // 32 + 1)] = (fp >> 17) & 2047
    assert sorted(e for e in segment if e) == sorted(want)
    for entry, home in want.items():  # at home, or just after it if the two collided
        assert segment.index(entry) in (home, (home + 1) % 2048)


def test_whole_slot_record(path: str) -> None:
    """A value of the largest size takes a whole slot (kind 13) from its start."""
    value = {"pad": "x" * (16_384 - 10)}
    with mmapkv.Store(path) as store:
        store.create("max", value)
    data = read_bytes(path)
    g = fmt.Geometry(1 << 30)
    off = SLOTS_AT_1_GIB + 20_480
    state, _, checksum, _, _, vlen, klen, _ = RECORD.unpack_from(data, off)
    assert (state, vlen, klen) == (fmt.STATE_LIVE, 16_384, 3)
    assert checksum == xxh3_64_intdigest(data[off + 16:off + KEY_AT + 3 + 16_384], off)
    assert slot_info(data, g.info_offset, 1) == (13, 0, 1, 0, 0, 1)
    assert superblock(data)["class_heads"] == [0] * 13  # a full whole slot is on no list


def test_deleted_record_frees_its_slot_to_the_pool(path: str) -> None:
    """Deleting a slot's only record makes it FREE, drops the table entry and puts the slot
    on the pool."""
    with mmapkv.Store(path) as store:
        store.create("gone", {"v": 1})
        store.delete("gone")
    data = read_bytes(path)
    g = fmt.Geometry(1 << 30)
    assert struct.unpack_from("<I", data, SLOTS_AT_1_GIB + 20_480)[0] == fmt.STATE_FREE
    assert not any(struct.unpack_from("<2048Q", data, SLOTS_AT_1_GIB))
    sb = superblock(data)
    assert (sb["high_water"], sb["pool_head"], sb["pool_count"], sb["live_count"]) == (2, 2, 1, 0)
    assert sb["class_heads"] == [0] * 13
    assert slot_info(data, g.info_offset, 1) == (0, 0, 0, 0, 0, 0)


# --------------------------------------------------------------------- refusing files

def assert_refused_untouched(path: str, error: type[Exception] = CorruptStoreError) -> str:
    """Opening *path* raises *error* naming the path, twice (no lock left behind), and the
    file's bytes are unchanged.  Returns the message."""
    before = sha256(path)
    size = os.path.getsize(path)
    for _ in range(2):
        with pytest.raises(error) as info:
            mmapkv.Store(path)
        assert path in str(info.value)
        assert isinstance(info.value, OSError)
    assert sha256(path) == before
    assert os.path.getsize(path) == size
    return str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"0123456789", fmt.MAGIC + b"\x01\x00", fmt.MAGIC + bytes(60), b"hello world\n" * 1000,
     b"\x89PNG\r\n\x1a\n" + bytes(200_000)],
    ids=["empty", "10-bytes", "magic-then-short", "magic-then-60-bytes", "text", "png"],
)
def test_not_a_store(path: str, content: bytes) -> None:
    """Short files and files without the magic are CorruptStoreError and left untouched."""
    with open(path, "wb") as f:
        f.write(content)
    assert_refused_untouched(path)


def test_the_magic_number_alone_is_too_short_not_missing(path: str) -> None:
    """A file of exactly the 8 magic bytes was "no mmapkv magic number in its first bytes"."""
    with open(path, "wb") as f:
        f.write(fmt.MAGIC)
    message = assert_refused_untouched(path)
    assert "too short" in message and "no mmapkv magic" not in message


@pytest.mark.parametrize("version", [256, 0x01E9A035, 0xFFFFFFFF])
def test_a_version_no_mmapkv_could_have_written_is_damage(path: str, version: int) -> None:
    """Magic then garbage read as a version in the millions, refused with "upgrade mmapkv
    to open it": that is damage (CorruptStoreError, not FormatVersionError)."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", version))
    message = assert_refused_untouched(path)
    assert "upgrade" not in message and "no mmapkv wrote" in message
    with pytest.raises(CorruptStoreError) as info:
        mmapkv.Store(path)
    assert not isinstance(info.value, FormatVersionError)


def test_a_clean_store_something_appended_to_names_the_remedy(path: str) -> None:
    """Bytes appended to a cleanly closed store: refused, untouched, and the message says
    how to get the store back; doing what it says does."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\n")
    message = assert_refused_untouched(path)
    assert f"truncate -s {size} {path}" in message
    os.truncate(path, size)
    with mmapkv.Store(path) as store:
        assert store.read("a") == {"v": 1}


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


def test_future_version(path: str) -> None:
    """A version field of 4 is FormatVersionError naming the version and saying to upgrade;
    the file is left byte for byte as it was and opens clean once the version is restored."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", 4))
    message = assert_refused_untouched(path, FormatVersionError)
    assert "version 4" in message and "upgrade" in message
    patch_bytes(path, 8, struct.pack("<I", 3))
    with mmapkv.Store(path) as store:
        assert store._engine is not None and store._engine.was_clean
        assert store.read("a") == {"v": 1}


def test_a_version_3_file_that_says_version_2_is_damaged(path: str) -> None:
    """A version field turned into 2 is not taken for version 2 (whose refusal names
    `mmapkv compact`, which would convert the file into an empty store): its superblock
    is no version-2 one, so it is CorruptStoreError, naming no command, and left as it
    was.  (tests/test_convert_v2.py opens and converts a real version-2 file.)"""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", 2))
    message = assert_refused_untouched(path, CorruptStoreError)
    assert "not a version-2 store" in message and "compact" not in message
    patch_bytes(path, 8, struct.pack("<I", 3))
    with mmapkv.Store(path) as store:
        assert store.read("a") == {"v": 1}


def test_version_1_is_refused_without_a_command_that_cannot_convert_it(path: str) -> None:
    """Version 1, a development format no release wrote, is FormatVersionError; its
    message names no command (`mmapkv compact` converts version 2 only)."""
    with mmapkv.Store(path) as store:
        store.create("a", {"v": 1})
    patch_bytes(path, 8, struct.pack("<I", 1))
    message = assert_refused_untouched(path, FormatVersionError)
    assert "format version 1, a development format" in message and "mmapkv compact" not in message


def test_version_zero_is_corrupt(path: str) -> None:
    """A version below 1 is not a newer format: plain CorruptStoreError."""
    mmapkv.Store(path).close()
    patch_bytes(path, 8, struct.pack("<I", 0))
    message = assert_refused_untouched(path)
    with pytest.raises(CorruptStoreError) as info:
        mmapkv.Store(path)
    assert not isinstance(info.value, FormatVersionError)
    assert "version 0" in message


@pytest.mark.parametrize("cut", [1, fmt.SLOT_SIZE, "to-initial", "to-page", "to-superblock"])
def test_truncated_store(path: str, cut: Any) -> None:
    """A store shorter than its superblock's file_size is CorruptStoreError, untouched."""
    max_size = fmt.Geometry.smallest_max_size() * 4
    with mmapkv.Store(path, max_size=max_size) as store:
        for i in range(8):  # whole-slot records: 8 slots hold 7, so it grows to 16
            store.create(f"k{i}", {"pad": "x" * 12_000})
    recorded = superblock(read_bytes(path))["file_size"]
    assert recorded == os.path.getsize(path) > fmt.Geometry(max_size).initial_size
    new_size = {"to-initial": fmt.Geometry(max_size).initial_size, "to-page": 4096,
                "to-superblock": 100}.get(cut, recorded - cut if isinstance(cut, int) else 0)
    os.truncate(path, new_size)
    assert_refused_untouched(path)


def test_store_cut_inside_its_superblock_is_called_truncated(path: str) -> None:
    mmapkv.Store(path).close()
    os.truncate(path, 100)
    assert "truncated" in assert_refused_untouched(path)
