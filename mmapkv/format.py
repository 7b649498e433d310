"""The on-disk format: every byte offset, size and magic number lives here.

``docs/format.md`` describes the same layout in prose; ``tests/test_format.py`` checks
that the two agree.  The file is little-endian throughout::

    offset 0                 4096                 slots_offset                file_size
           +-----------------+--------------------+-----------+-----------+---
           | superblock      | hash table         | slot 0    | slot 1    | ...
           | (one page)      | table_capacity x 8 | 20,480 B  | 20,480 B  |
           +-----------------+--------------------+-----------+-----------+---

Superblock (first 80 bytes of page 0; the rest of the page is zero)::

     0  8s  magic          b"\\x89MKV\\r\\n\\x1a\\n"
     8  u32 version        2 (1 had unaligned 16,552-byte slots)
    12  u32 flags          bit 0 CLEAN: closed cleanly, counters below are exact
    16  u64 max_size       the ceiling in bytes; fixed at creation
    24  u64 file_size      bytes currently in the file
    32  u32 high_water     slots [0, high_water) have been used; the rest are untouched
    36  u32 free_head      1 + first slot of the free list, 0 if the list is empty
    40  u32 live_count     committed entries, expired ones not yet reclaimed included
    44  u32 ttl_count      committed entries that carry an expiry
    48  f64 next_expiry    no committed entry expires before this (inf if none)
    56  u64 next_seq       sequence number for the next write
    64  u64 batch_commit   sequence of the last committed batch
    72  u64 checksum       xxh3_64 of bytes [0, 72); valid only when CLEAN is set

Hash table: ``table_capacity`` (a power of two) little-endian u64 entries, 0 = empty.
An entry is ``fingerprint << 20 | (slot + 1)`` where ``fingerprint = xxh3_64(key) >> 20``;
its home position is ``fingerprint & (table_capacity - 1)``.  Robin Hood linear probing,
backward-shift deletion (no tombstones).  The table holds at most half as many entries as
it has positions, because it is sized for the most slots the ceiling allows.

Slot (``SLOT_STRIDE`` = 20,480 bytes, five pages: header, key, value, then padding, so that
every slot starts on a page and a value of up to 3,928 bytes is read from one page)::

     0  u32 state          0 FREE, "LIVE" committed, "PEND" written by an open batch
     4  u32 next_free      1 + next slot on the free list (FREE slots only), 0 = end
     8  u64 checksum       xxh3_64 of bytes [16, 168 + value_len) of this slot
    16  u64 seq            write sequence number (newest wins in recovery)
    24  f64 expires_at     unix time in seconds; 0.0 = never expires
    32  u32 value_len      bytes of JSON text at offset 168
    36  u8  key_len        bytes of UTF-8 key at offset 40
    37  u8  value_flags    bit 0 CODEC_STDLIB: decode with stdlib json (big integers)
    38  u16 reserved       0
    40  128s key           UTF-8, zero padded
   168  value              up to 16,384 bytes of compact UTF-8 JSON
 16552  padding            to the next page; never written
"""

from __future__ import annotations

import math
import struct

__all__ = [
    "MAGIC", "VERSION", "PAGE_SIZE", "SUPERBLOCK", "SUPERBLOCK_FIELDS", "FLAG_CLEAN",
    "SLOT_HEADER", "SLOT_FIELDS",
    "SLOT_STRIDE", "KEY_OFFSET", "VALUE_OFFSET", "BODY_OFFSET", "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES", "STATE_FREE", "STATE_LIVE", "STATE_PENDING", "CODEC_STDLIB",
    "FINGERPRINT_SHIFT", "SLOT_MASK", "MAX_FILE_SIZE", "INITIAL_SLOTS", "Geometry",
]

MAGIC = b"\x89MKV\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation
VERSION = 2
PAGE_SIZE = 4096

SUPERBLOCK = struct.Struct("<8sIIQQIIIIdQQQ")
SUPERBLOCK_FIELDS = ("magic", "version", "flags", "max_size", "file_size", "high_water",
                     "free_head", "live_count", "ttl_count", "next_expiry", "next_seq",
                     "batch_commit", "checksum")
SB_FLAGS = 12          # offset of the flags word
SB_FILE_SIZE = 24      # offset of file_size
SB_BATCH_COMMIT = 64   # offset of batch_commit
SB_CHECKSUM = 72       # offset of the checksum (and length of what it covers)
FLAG_CLEAN = 1

SLOT_HEADER = struct.Struct("<IIQQdIBBH")  # state .. reserved: 40 bytes
SLOT_FIELDS = ("state", "next_free", "checksum", "seq", "expires_at", "value_len", "key_len",
               "value_flags", "reserved")
BODY_OFFSET = 16       # the checksum covers the slot from here to the end of the value
BODY_HEADER = struct.Struct("<QdIBBH")     # seq .. reserved, as written at BODY_OFFSET
KEY_OFFSET = SLOT_HEADER.size
MAX_KEY_BYTES = 128    # 32 code points of at most 4 UTF-8 bytes each
VALUE_OFFSET = KEY_OFFSET + MAX_KEY_BYTES
MAX_VALUE_BYTES = 16 * 1024
# A whole number of pages: a slot's header and a small value share one page, so a read
# touches (and keeps resident) one page, not 1.3 on average as an unaligned stride did.
SLOT_STRIDE = -(-(VALUE_OFFSET + MAX_VALUE_BYTES) // PAGE_SIZE) * PAGE_SIZE

STATE_FREE = 0
STATE_LIVE = int.from_bytes(b"LIVE", "little")    # many bits apart from FREE and PEND,
STATE_PENDING = int.from_bytes(b"PEND", "little")  # so one flipped bit cannot commit a slot
CODEC_STDLIB = 1

FINGERPRINT_SHIFT = 20
SLOT_MASK = (1 << FINGERPRINT_SHIFT) - 1   # slot + 1 fits in 20 bits: up to ~1M slots

MAX_FILE_SIZE = 1 << 30  # the hard ceiling: 1 GiB
INITIAL_SLOTS = 8


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Geometry:
    """Where things are in a file of a given ceiling: all derived, nothing stored twice."""

    __slots__ = ("max_size", "table_capacity", "table_offset", "slots_offset", "initial_size",
                 "max_slots")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # Sized for the most slots the ceiling allows, at most half full: the table never
        # needs to grow or be rehashed, and a probe chain stays within one page.
        most_slots = max_size // SLOT_STRIDE
        self.table_capacity = 1 << max(4, math.ceil(math.log2(2 * max(most_slots, 1))))
        self.table_offset = PAGE_SIZE
        self.slots_offset = _round_up(PAGE_SIZE + 8 * self.table_capacity, PAGE_SIZE)
        self.initial_size = self.slots_offset + INITIAL_SLOTS * SLOT_STRIDE
        self.max_slots = self.slot_count(max_size)

    @staticmethod
    def smallest_max_size() -> int:
        """The lowest ceiling that still holds the initial layout."""
        size = PAGE_SIZE
        while Geometry(size).initial_size > size:
            size = Geometry(size).initial_size
        return size

    def slot_count(self, file_size: int) -> int:
        return max(0, (file_size - self.slots_offset) // SLOT_STRIDE)

    def slot_offset(self, slot: int) -> int:
        return self.slots_offset + slot * SLOT_STRIDE

    def grown_size(self, file_size: int) -> int:
        """The next file size: double, clamped to the ceiling."""
        return min(2 * file_size, self.max_size)

    def is_valid_size(self, file_size: int) -> bool:
        """True for the sizes growth can produce: initial * 2**k, or the ceiling."""
        if not self.initial_size <= file_size <= self.max_size:
            return False
        size = self.initial_size
        while size < file_size:
            size = self.grown_size(size)
        return size == file_size
