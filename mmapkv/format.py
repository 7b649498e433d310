"""The on-disk format: every byte offset, size and magic number lives here.

``docs/format.md`` describes the same layout in prose; ``tests/test_format_doc.py`` checks
that the two agree.  The file is little-endian throughout::

    0            4096          dir_offset+dir_size   info_offset+info_size      file_size
    +------------+-------------+---------------------+-----------+-----------+---
    | superblock | directory   | slot info           | slot 0    | slot 1    | ...
    | one page   | 2**D_max    | 24 B per slot the   | 20,480 B  | 20,480 B  |
    |            | x u16       | ceiling allows      |           |           |
    +------------+-------------+---------------------+-----------+-----------+---

The slot (five pages) is the unit of the file.  A slot holds one of three things:

* a **record class**: the slot is split into equal sub-slots of one size (160 bytes to the
  whole slot), each holding one record (header, key, value);
* a **table segment**: 2,048 u64 hash-table entries (16 KiB; the last page is unused);
* nothing: it is on the pool of free slots, or above the high-water mark.

Slot info (24 bytes per slot, in a region sized for the ceiling) says which, and keeps the
allocation state of the sub-slots.  The hash table is extendible hashing: the directory maps
the low ``global_depth`` bits of a key's fingerprint to a segment; a segment that fills up
splits in two, so the table grows a segment at a time, never by a whole rehash.

Superblock (first 176 bytes of page 0; the rest of the page is zero)::

     0  8s  magic          b"\\x89MKV\\r\\n\\x1a\\n"
     8  u32 version        3
    12  u32 flags          bit 0 CLEAN: closed cleanly; the fields from 64 on are exact
    16  u64 max_size       the ceiling in bytes; fixed at creation
    24  u64 file_size      bytes in the file now (written at every growth)
    32  u64 hash_seed      keys hash as xxh3_64(key, hash_seed); random per file
    40  u64 seq_limit      every sequence number used so far is below this
    48  u64 batch_commit   sequence number of the last committed batch
    56  u64 floor_seq      records with a lower sequence number are gone (clear())
    64  u32 high_water     every slot in use is below it
    68  u32 pool_head      1 + first slot of the free-slot pool, 0 if it is empty
    72  u32 pool_count     slots on the pool
    76  u32 live_count     LIVE records, expired ones not yet reclaimed included
    80  u32 ttl_count      LIVE records that carry an expiry
    84  u32 global_depth   the directory uses 2**global_depth entries
    88  f64 next_expiry    no LIVE record expires before this (a bound; inf if none)
    96  u64 next_seq       sequence number for the next write
   104  13 x u32 class_heads  1 + first slot of each class's partial list, 0 if none
   156  u32 segments       table segments
   160  u64 checksum       xxh3_64 of bytes [0, 160); valid only when CLEAN is set
   168  u64 layout_checksum  low half xxh3_64(directory in use), high half xxh3_64(slot
                           info), each mod 2**32 and 1 if 0 (docs/format.md); 0 = none

Slot info entry (``SLOT_INFO``, 24 bytes, at ``info_offset + 24 * slot``)::

     0  u8  kind           0 free, 1..13 record class kind-1, 255 table segment
     1  u8  depth          a segment's local depth
     2  u16 used           sub-slots taken (record class), entries (segment)
     4  u16 prev           1 + previous slot on its class's partial list, 0 = none
     6  u16 next           1 + next slot on its class's partial list or on the pool
     8  16s bitmap         bit j set: sub-slot j is taken

Record (``RECORD_HEADER``, 36 bytes, at the start of a sub-slot)::

     0  u32 state          0 FREE, "LIVE" committed, "PEND" written by an open batch
     4  u32 reserved       0
     8  u64 checksum       xxh3_64 of bytes [16, 36 + key_len + value_len), seed: the
                           record's offset in the file (a record copied elsewhere fails)
    16  u64 seq            write sequence number (the newest copy of a key wins)
    24  f64 expires_at     unix time in seconds; 0.0 = never expires
    32  u16 value_len      bytes of JSON text after the key
    34  u8  key_len        bytes of UTF-8 key at offset 36
    35  u8  value_flags    bit 0 CODEC_STDLIB: decode with stdlib json (big integers)
    36  key, then value

Table entry (u64, 0 = empty): ``fingerprint << 25 | unit`` where
``fingerprint = xxh3_64(key, hash_seed) >> 25`` (39 bits) and the record's offset is
``slots_offset + 32 * (unit - 1)``.  A fingerprint's low ``global_depth`` bits pick the
directory entry; bits 17 to 27 give its home position in the segment.  Robin Hood linear
probing within the segment (wrapping at 2,048), backward-shift deletion (no tombstones).
"""

from __future__ import annotations

import math
import struct

__all__ = [
    "MAGIC", "VERSION", "PAGE_SIZE", "SUPERBLOCK", "SUPERBLOCK_FIELDS", "FLAG_CLEAN", "SB_LAYOUT_CHECKSUM",
    "SB_FLAGS", "SB_FILE_SIZE", "SB_SEQ_LIMIT", "SB_BATCH_COMMIT", "SB_FLOOR_SEQ", "SB_CHECKSUM",
    "SLOT_SIZE", "SLOT_INFO", "SLOT_INFO_FIELDS", "KIND_FREE", "KIND_SEGMENT",
    "CLASS_SIZES", "CLASS_COUNT", "CLASS_BY_UNITS", "class_for", "RECORD_HEADER", "RECORD_FIELDS",
    "BODY_OFFSET", "KEY_OFFSET", "MAX_KEY_BYTES", "MAX_VALUE_BYTES", "STATE_FREE",
    "STATE_LIVE", "STATE_PENDING", "CODEC_STDLIB", "UNIT", "UNIT_BITS", "UNIT_MASK",
    "FINGERPRINT_SHIFT", "SEGMENT_ENTRIES", "HOME_SHIFT", "SPLIT_AT", "SEGMENT_FULL",
    "MAX_FILE_SIZE", "INITIAL_SLOTS", "Geometry",
]

MAGIC = b"\x89MKV\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation
VERSION = 3
PAGE_SIZE = 4096

SUPERBLOCK = struct.Struct("<8sIIQQQQQQIIIIIIdQ13IIQQ")
SUPERBLOCK_FIELDS = ("magic", "version", "flags", "max_size", "file_size", "hash_seed",
                     "seq_limit", "batch_commit", "floor_seq", "high_water", "pool_head",
                     "pool_count", "live_count", "ttl_count", "global_depth", "next_expiry",
                     "next_seq", *(f"class_head_{i}" for i in range(13)), "segments",
                     "checksum", "layout_checksum")
SB_FLAGS = 12          # offsets of the fields written in place while the store is open
SB_FILE_SIZE = 24
SB_SEQ_LIMIT = 40
SB_BATCH_COMMIT = 48
SB_FLOOR_SEQ = 56
SB_CHECKSUM = 160      # offset of the checksum, and length of what it covers
SB_LAYOUT_CHECKSUM = 168
FLAG_CLEAN = 1

# A slot: 16 KiB of value plus its header and key, rounded up to whole pages, so that
# every slot starts a page.
SLOT_SIZE = 5 * PAGE_SIZE

SLOT_INFO = struct.Struct("<BBHHH16s")
SLOT_INFO_FIELDS = ("kind", "depth", "used", "prev", "next", "bitmap")
KIND_FREE = 0
KIND_SEGMENT = 255

# Sub-slot sizes: each divides the slot; those that divide the page keep a sub-slot in one
# page, the others (160, 320, 640, 1280, 2560, 5120, 10240) pack tighter and sometimes
# straddle.  A record goes to the smallest class it fits; the last is the whole slot.
CLASS_SIZES = (160, 256, 320, 512, 640, 1024, 1280, 2048, 2560, 4096, 5120, 10240, SLOT_SIZE)
CLASS_COUNT = len(CLASS_SIZES)

RECORD_HEADER = struct.Struct("<IIQQdHBB")
RECORD_FIELDS = ("state", "reserved", "checksum", "seq", "expires_at", "value_len", "key_len",
                 "value_flags")
BODY_OFFSET = 16       # the checksum covers the record from here to the end of its value
KEY_OFFSET = RECORD_HEADER.size
MAX_KEY_BYTES = 128    # 32 code points of at most 4 UTF-8 bytes each
MAX_VALUE_BYTES = 16 * 1024

STATE_FREE = 0
STATE_LIVE = int.from_bytes(b"LIVE", "little")    # many bits apart from FREE and PEND,
STATE_PENDING = int.from_bytes(b"PEND", "little")  # so one flipped bit cannot commit a record
CODEC_STDLIB = 1

UNIT = 32              # every class size is a multiple: a record's offset in 32-byte units
UNIT_BITS = 25         # 2**25 units of 32 bytes = 1 GiB
UNIT_MASK = (1 << UNIT_BITS) - 1
FINGERPRINT_SHIFT = UNIT_BITS   # fingerprint = xxh3_64(key, seed) >> 25: 39 bits
SEGMENT_ENTRIES = 2048
HOME_SHIFT = 17        # home position: fingerprint bits [17, 28); the directory uses bits [0, 17)
SPLIT_AT = SEGMENT_ENTRIES // 2            # a segment this full splits before the next insert
SEGMENT_FULL = SEGMENT_ENTRIES * 7 // 8    # and no insert goes past this (at the ceiling)

MAX_FILE_SIZE = 1 << 30  # the hard ceiling: 1 GiB
INITIAL_SLOTS = 8


#: the class of a record of n bytes, by n's 32-byte units (every class size is a multiple
#: of 32): one index on every create instead of a walk through the classes; ``class_for``
#: with its bounds check, ``Engine.try_put`` without (its records always fit)
CLASS_BY_UNITS = bytes(next(i for i, size in enumerate(CLASS_SIZES) if units * UNIT <= size)
                       for units in range(SLOT_SIZE // UNIT + 1))


def class_for(record_size: int) -> int:
    """The class (index into ``CLASS_SIZES``) of a record of *record_size* bytes.

    >>> [CLASS_SIZES[class_for(n)] for n in (1, 160, 161, 1070, 16548)]
    [160, 160, 256, 1280, 20480]
    """
    if 0 <= record_size <= SLOT_SIZE:
        return CLASS_BY_UNITS[(record_size + UNIT - 1) >> 5]
    raise ValueError(f"a record of {record_size} bytes does not fit a slot")


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Geometry:
    """Where things are in a file of a given ceiling: all derived, nothing stored twice."""

    __slots__ = ("max_size", "max_depth", "dir_offset", "info_offset", "slots_offset",
                 "max_slots", "initial_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # Room for the most slots the ceiling could hold, before the regions take theirs.
        most = max(1, max_size // SLOT_SIZE)
        # Directory depth: one more bit than the most segments could need, so that an
        # unlucky split never runs out of depth (segments <= slots).
        self.max_depth = max(1, math.ceil(math.log2(most)) + 1)
        self.dir_offset = PAGE_SIZE
        self.info_offset = _round_up(self.dir_offset + 2 * (1 << self.max_depth), PAGE_SIZE)
        self.slots_offset = _round_up(self.info_offset + SLOT_INFO.size * most, PAGE_SIZE)
        self.max_slots = max(0, (max_size - self.slots_offset) // SLOT_SIZE)
        self.initial_size = self.file_size(min(INITIAL_SLOTS, self.max_slots))

    @staticmethod
    def smallest_max_size() -> int:
        """The lowest ceiling that still holds the initial layout."""
        size = PAGE_SIZE
        while Geometry(size).max_slots < INITIAL_SLOTS:
            size += PAGE_SIZE
        return size

    def file_size(self, slots: int) -> int:
        return self.slots_offset + slots * SLOT_SIZE

    def slot_count(self, file_size: int) -> int:
        return max(0, (file_size - self.slots_offset) // SLOT_SIZE)

    def slot_offset(self, slot: int) -> int:
        return self.slots_offset + slot * SLOT_SIZE

    def grown_size(self, file_size: int) -> int:
        """The next file size: twice the slots, clamped to the ceiling."""
        return self.file_size(min(2 * self.slot_count(file_size), self.max_slots))

    def is_valid_size(self, file_size: int) -> bool:
        """True for the sizes growth can produce: 8 * 2**k slots, or the most that fit."""
        size = self.initial_size
        while size < file_size:
            grown = self.grown_size(size)
            if grown == size:
                return False
            size = grown
        return size == file_size
