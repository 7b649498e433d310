"""Reading a store of format version 2, to convert it (``mmapkv compact``).

Version 2 gave every key a whole 20,480-byte slot behind a hash table sized for the
ceiling.  This module knows just enough of it to check that a file is one and to read
its entries back: the superblock and the slot header (docs/format.md, "Version 2").  It
never writes a byte of the old file.  An entry is kept as recovery would keep it: LIVE (or
PENDING with the last committed batch's sequence number) and passing its checksum; of two
copies of one key, the newer wins.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from xxhash import xxh3_64_intdigest

from .errors import CorruptStoreError
from .format import (FLAG_CLEAN, MAGIC, MAX_FILE_SIZE, MAX_KEY_BYTES, MAX_VALUE_BYTES, PAGE_SIZE, STATE_LIVE,
                     STATE_PENDING)

__all__ = ["V2_VERSION", "V2Entry", "is_v2", "superblock_problem", "read_v2"]

V2_VERSION = 2
_SUPERBLOCK = struct.Struct("<8sIIQQIIIIdQQQ")  # magic .. checksum; batch_commit at 64
_CHECKSUM_AT = 72                                  # xxh3_64 of [0, 72), valid when CLEAN
_SLOT_HEADER = struct.Struct("<IIQQdIBBH")       # state .. reserved: 40 bytes
_SLOT_STRIDE = 20_480
_KEY_OFFSET = 40
_VALUE_OFFSET = 168
_BODY_OFFSET = 16


@dataclass(frozen=True)
class V2Entry:
    key: bytes
    data: bytes        #: the value's compact JSON text, exactly as stored
    flags: int         #: codec flags (the same bits as version 3)
    expires_at: float  #: unix seconds; 0.0 = never
    seq: int


def superblock_problem(head: bytes, size: int) -> str | None:
    """Why *head* (a file's first bytes, version 2 in its version field) and *size* (the
    file's length) are not a version-2 store's, or None if they could be.

    Conversion renames a new store over the file, so a file that only starts like one
    must not pass: a version-3 store whose version field a flipped bit turned into 2 (its
    version-2 checksum fails when it was closed cleanly, and its random hash seed is no
    slot count), or another program's file behind the same 12 bytes.
    """
    if len(head) < _SUPERBLOCK.size or size < PAGE_SIZE:
        return f"{size:,} bytes is too short for one"
    (magic, version, flags, max_size, file_size, high_water, *_, checksum) = _SUPERBLOCK.unpack_from(head, 0)
    if magic != MAGIC or version != V2_VERSION:
        return "it does not start with version 2's magic number and version"
    if file_size != size:
        return f"its superblock says {file_size:,} bytes, the file has {size:,}"
    if not PAGE_SIZE < max_size <= MAX_FILE_SIZE or size > max_size:
        return f"its max_size {max_size:,} is out of range"
    if _slots_offset(max_size) + high_water * _SLOT_STRIDE > size:
        return f"its {high_water:,} slots in use do not fit in the file"
    if flags & FLAG_CLEAN and xxh3_64_intdigest(head[:_CHECKSUM_AT]) != checksum:
        return "its superblock fails its checksum"
    return None


def is_v2(path: str) -> bool:
    """True if *path* is a regular file that starts like a version-2 store (whether the
    rest agrees is :func:`superblock_problem`'s question, which ``read_v2`` asks)."""
    if not os.path.isfile(path):  # opening a FIFO would block
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    # shorter than a version field: not version 2 (the open says what it is)
    return len(head) == 12 and head[:8] == MAGIC and struct.unpack_from("<I", head, 8)[0] == V2_VERSION


def _slots_offset(max_size: int) -> int:
    most = max(max_size // _SLOT_STRIDE, 1)
    capacity = 1 << max(4, (2 * most - 1).bit_length())
    return -(-(PAGE_SIZE + 8 * capacity) // PAGE_SIZE) * PAGE_SIZE


def read_v2(path: str) -> tuple[int, list[V2Entry], int]:
    """The ceiling (``max_size``), every intact entry of the version-2 store at *path*
    (the newest copy of each key, in slot order) and the number of entries left out for
    failing their checks (what version 2's recovery would have dropped; the caller says
    so).  The caller holds the file's lock.  O(slots)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < PAGE_SIZE:
            raise CorruptStoreError(f"{path} is too short to be a version-2 store")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            problem = superblock_problem(mm[:_SUPERBLOCK.size], size)
            if problem is not None:
                raise CorruptStoreError(f"{path} is not a version-2 mmapkv store: {problem}; "
                                        "it was left untouched")
            (_, _, _, max_size, _, _, _, _, _, _, _, batch, _) = _SUPERBLOCK.unpack_from(mm, 0)
            view = memoryview(mm)
            try:  # the loop in a function of its own: see the note above store._readable_keys
                newest, damaged = _newest_entries(mm, view, _slots_offset(max_size), size, batch)
            finally:
                view.release()
    return max_size, list(newest.values()), damaged


def _newest_entries(mm: mmap.mmap, view: memoryview, first: int, size: int,
                    batch: int) -> tuple[dict[bytes, V2Entry], int]:
    """The newest intact copy of each key in the slots from *first*, by key, and the
    number of committed entries that fail their checks."""
    newest: dict[bytes, V2Entry] = {}
    damaged = 0
    for off in range(first, size - _VALUE_OFFSET + 1, _SLOT_STRIDE):
        state, _, checksum, seq, expires, vlen, klen, flags, _ = _SLOT_HEADER.unpack_from(mm, off)
        if not (state == STATE_LIVE or (state == STATE_PENDING and seq == batch)):
            continue
        end = off + _VALUE_OFFSET + vlen
        if vlen > MAX_VALUE_BYTES or not 1 <= klen <= MAX_KEY_BYTES or end > size or \
                xxh3_64_intdigest(view[off + _BODY_OFFSET:end]) != checksum:
            damaged += 1
            continue
        key = bytes(mm[off + _KEY_OFFSET:off + _KEY_OFFSET + klen])
        if key not in newest or newest[key].seq < seq:
            newest[key] = V2Entry(key, bytes(mm[off + _VALUE_OFFSET:end]), flags, expires, seq)
    return newest, damaged
