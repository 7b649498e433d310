"""The slot allocator: the pool of free slots, and slots split into sub-slots by class.

Every slot has a 24-byte slot-info entry (``format.SLOT_INFO``).  A slot is free (on the
pool, or never used: at or above ``high_water``), a table segment, or a record slot of one
class, split into ``SLOT_SIZE // CLASS_SIZES[class]`` equal sub-slots whose use is a bitmap
in its slot info.  Each class keeps a doubly linked list of its slots that have a free
sub-slot (its "partial" list), so taking and giving back a sub-slot is O(1); a slot whose
last sub-slot is given back returns to the pool, where any class (or the table) can take it.

Like the hash table, all of this is derived from the records themselves: after a crash the
engine rebuilds it (``Engine.recover``).  Nothing per record lives in Python; the counters
here (pool head, high-water mark, list heads) are a few integers, written to the superblock
on a clean close.
"""

from __future__ import annotations

import io
import os
import struct

from .errors import CorruptStoreError
from .format import (
    CLASS_COUNT,
    CLASS_SIZES,
    KIND_FREE,
    SLOT_INFO,
    SLOT_SIZE,
)

__all__ = ["Slots", "PER_SLOT"]

#: sub-slots per slot, by class
PER_SLOT = tuple(SLOT_SIZE // size for size in CLASS_SIZES)

_U16 = struct.Struct("<H")        # one u16 field of an entry: used (2), prev (4), next (6)
_KIND_USED = struct.Struct("<BxH")  # an entry's kind and used
_BITMAP = 8                         # where an entry's bitmap starts
# Stores into the map are slice assignments of packed bytes, never ``pack_into``: that
# zeroes its target before it writes the fields, so a kill in between would leave a kind
# of 0 (a free slot: recovery would lose the records in it) that the file never held.
_pack_info = SLOT_INFO.pack
_pack_u16 = _U16.pack
_unpack_info = SLOT_INFO.unpack_from
_ZERO_SLOT = bytes(SLOT_SIZE)


def _damaged(slot: int) -> CorruptStoreError:
    """The slot info disagrees with itself (damage): never write past the slot.  Not a
    clean refusal: the store repairs (rebuilds this info) before its next use."""
    return CorruptStoreError(f"the slot info of slot {slot} is damaged; the store rebuilds "
                             "it from the records at its next use: try again")


class Slots:
    """Slot info, the pool and the partial lists of one open store."""

    high_water: int           #: slots [0, high_water) have been used since the last clear
    pool_head: int            #: 1 + first slot on the pool, 0 if none
    pool_count: int
    heads: list[int]          #: per class: 1 + first slot on its partial list, 0 if none
    #: the file while records go in through the map (``take_record`` writes a never-used
    #: slot's pages first, ``_zero``), else None; once closed it names no file at all
    zero_file: io.FileIO | None = None

    def __init__(self, info_offset: int, slots_offset: int) -> None:
        self.info_offset = info_offset
        self.slots_offset = slots_offset
        self.slot_count = 0
        self.high_water = self.pool_head = self.pool_count = 0
        self.heads = [0] * CLASS_COUNT

    def attach(self, mm: object, slot_count: int) -> None:
        """Use the map *mm* (a new one after every growth), now *slot_count* slots long."""
        self.mm = mm
        self.slot_count = slot_count

    # ----------------------------------------------------------------- slot info

    def info(self, slot: int) -> tuple[int, int, int, int, int, bytes]:
        """(kind, depth, used, prev, next, bitmap) of *slot*."""
        return _unpack_info(self.mm, self.info_offset + SLOT_INFO.size * slot)  # type: ignore[arg-type]

    def kind(self, slot: int) -> int:
        return self.mm[self.info_offset + SLOT_INFO.size * slot]  # type: ignore[index, no-any-return]

    def set_info(self, slot: int, kind: int, depth: int = 0, used: int = 0, prev: int = 0,
                 nxt: int = 0, bitmap: int = 0) -> None:
        off = self.info_offset + SLOT_INFO.size * slot
        self.mm[off:off + SLOT_INFO.size] = _pack_info(  # type: ignore[index]
            kind, depth, used, prev, nxt, bitmap.to_bytes(16, "little"))

    def set_depth_used(self, slot: int, depth: int, used: int) -> None:
        off = self.info_offset + SLOT_INFO.size * slot
        self.mm[off + 1] = depth  # type: ignore[index]
        self.mm[off + 2:off + 4] = _pack_u16(used)  # type: ignore[index]

    def add_used(self, slot: int, delta: int) -> int:
        """Count *delta* more entries in segment *slot* (its depth unchanged); the new count."""
        off = self.info_offset + SLOT_INFO.size * slot + 2
        used: int = _U16.unpack_from(self.mm, off)[0] + delta  # type: ignore[arg-type]
        self.mm[off:off + 2] = _pack_u16(used)  # type: ignore[index]
        return used

    def used(self, slot: int) -> int:
        return _U16.unpack_from(self.mm, self.info_offset + SLOT_INFO.size * slot + 2)[0]  # type: ignore[arg-type, no-any-return]

    # ----------------------------------------------------------------- whole slots

    def free_slots(self) -> int:
        """Slots any class or the table could take now, without growing the file."""
        return self.pool_count + self.slot_count - self.high_water

    def take_slot(self) -> int:
        """A free slot (from the pool, else the first never used).  The caller sets its
        info and made sure there is one (``free_slots() > 0``)."""
        if self.pool_head:
            slot = self.pool_head - 1
            self.pool_head = _U16.unpack_from(self.mm, self.info_offset + SLOT_INFO.size * slot + 6)[0]  # type: ignore[arg-type]
            self.pool_count -= 1
            return slot
        if self.high_water < self.slot_count:
            self.high_water += 1
            return self.high_water - 1
        raise AssertionError("no free slot: the caller must grow or refuse first")

    def _zero(self, file: io.FileIO, slot: int) -> None:
        """Write a never-used slot's pages (zeros, as they read already) with one ``pwrite``
        before the first record goes into it through the map.  Its blocks are allocated
        but never written: on ext4 the first store into each of its pages then costs a
        major fault (the page read in, ``MADV_RANDOM`` reading no more) and a write fault.
        On ext4 the zeros took a create's median to 0.73x to 0.94x of what it was from
        1 to 9.5 KiB and at 16 KiB, none at 100 B and 12 KiB (docs/design.md).  The
        bytes of a free slot mean nothing, to readers (they retry: a change is running)
        and to recovery alike."""
        try:
            os.pwrite(file.fileno(), _ZERO_SLOT, self.slots_offset + slot * SLOT_SIZE)
        except (OSError, ValueError):  # ValueError: closed
            pass  # only a speed-up: the stores through the map write these pages anyway

    def give_slot(self, slot: int) -> None:
        """Put *slot* on the pool."""
        self.set_info(slot, KIND_FREE, nxt=self.pool_head)
        self.pool_head = slot + 1
        self.pool_count += 1

    # ----------------------------------------------------------------- sub-slots

    def take_record(self, cls: int) -> int:
        """The file offset of a free sub-slot of class *cls* (taking a slot from the pool if
        the class has no partial slot).  The caller made sure one can be had."""
        head = self.heads[cls]
        if head:
            slot = head - 1
            info = self.info_offset + SLOT_INFO.size * slot
            kind, _, used, prev, nxt, bitmap = _unpack_info(self.mm, info)  # type: ignore[arg-type]
            bits = int.from_bytes(bitmap, "little")
        else:
            fresh = not self.pool_head  # the slot will come from above the high-water mark
            slot = self.take_slot()
            if fresh and self.zero_file is not None and not self.kind(slot):
                self._zero(self.zero_file, slot)  # (not one whose info says it is used: that is damage)
            kind, used, prev, nxt, bits = cls + 1, 0, 0, 0, 0
            if PER_SLOT[cls] > 1:  # it has free sub-slots: it goes on the partial list
                self.heads[cls] = slot + 1
        index = (~bits & (bits + 1)).bit_length() - 1   # the lowest clear bit
        if index >= PER_SLOT[cls] or (kind != cls + 1):
            raise _damaged(slot)
        used += 1
        if head and used < PER_SLOT[cls]:  # the common case: it stays partial; as give_record
            self.mm[info + 2:info + 4] = _pack_u16(used)  # type: ignore[index]
            self.mm[info + _BITMAP + (index >> 3)] |= 1 << (index & 7)  # type: ignore[index]
            return self.slots_offset + slot * SLOT_SIZE + index * CLASS_SIZES[cls]
        return self._taken(cls, slot, used, prev, nxt, bits, index)

    def take_record_in(self, cls: int, slot: int) -> int:
        """The file offset of a free sub-slot of *slot*, a slot on class *cls*'s partial
        list (``Engine.gather`` chooses where a record goes)."""
        kind, _, used, prev, nxt, bitmap = self.info(slot)
        bits = int.from_bytes(bitmap, "little")
        index = (~bits & (bits + 1)).bit_length() - 1
        if index >= PER_SLOT[cls] or kind != cls + 1:
            raise _damaged(slot)
        return self._taken(cls, slot, used + 1, prev, nxt, bits, index)

    def _taken(self, cls: int, slot: int, used: int, prev: int, nxt: int, bits: int, index: int) -> int:
        """``take_record``'s end where the slot's whole entry is written: sub-slot *index*
        of *slot* is taken, which now has *used* taken; its offset."""
        bits |= 1 << index
        if used == PER_SLOT[cls] and PER_SLOT[cls] > 1:  # full now: off the partial list
            self._unlink(cls, slot, prev, nxt)
            prev = nxt = 0
        self.set_info(slot, cls + 1, 0, used, prev, nxt, bits)
        return self.slots_offset + slot * SLOT_SIZE + index * CLASS_SIZES[cls]

    def partial_slots(self, cls: int, limit: int | None = None) -> list[tuple[int, int]]:
        """(sub-slots taken, slot) of every slot on class *cls*'s partial list (or of its
        first *limit*), in list order, each once: a list that loops (damaged links: slot
        info has no checksum) stops where it comes back.  O(its length)."""
        found: list[tuple[int, int]] = []
        seen: set[int] = set()
        head = self.heads[cls]
        while head and head not in seen and head <= self.slot_count and len(found) != limit:
            seen.add(head)
            _, _, used, _, nxt, _ = self.info(head - 1)
            found.append((used, head - 1))
            head = nxt
        return found

    def give_record(self, offset: int) -> None:
        """Give back the sub-slot at *offset*; a slot left empty returns to the pool."""
        slot, within = divmod(offset - self.slots_offset, SLOT_SIZE)
        info = self.info_offset + SLOT_INFO.size * slot
        mm = self.mm
        kind, used = _KIND_USED.unpack_from(mm, info)  # type: ignore[arg-type]
        cls = kind - 1
        if 0 <= cls < CLASS_COUNT and 1 < used < PER_SLOT[cls]:
            # The common case: the slot stays on its partial list.  Two fields change, so
            # write just those, not the whole entry.
            bit = within // CLASS_SIZES[cls]
            mm[info + 2:info + 4] = _pack_u16(used - 1)  # type: ignore[index]
            mm[info + _BITMAP + (bit >> 3)] &= ~(1 << (bit & 7))  # type: ignore[index]
            return
        if used == 1 and 0 <= cls < CLASS_COUNT and PER_SLOT[cls] == 1:
            self.give_slot(slot)  # a whole-slot record: its slot was on no partial list
            return
        kind, _, used, prev, nxt, bitmap = self.info(slot)
        if not 0 <= cls < CLASS_COUNT:
            raise AssertionError(f"slot {slot} is not a record slot (kind {kind})")
        bits = int.from_bytes(bitmap, "little") & ~(1 << (within // CLASS_SIZES[cls]))
        used -= 1
        per = PER_SLOT[cls]
        if used == 0:
            if per > 1 and used + 1 < per:  # it was on the partial list
                self._unlink(cls, slot, prev, nxt)
            self.give_slot(slot)
            return
        if used + 1 == per:  # it was full: back on the partial list, at its head
            prev, nxt = 0, self.heads[cls]
            if nxt:
                self._set_link(nxt - 1, 4, slot + 1)  # its prev
            self.heads[cls] = slot + 1
        self.set_info(slot, kind, 0, used, prev, nxt, bits)

    def _set_link(self, slot: int, field: int, value: int) -> None:
        """Set *slot*'s prev (*field* 4) or next (6)."""
        at = self.info_offset + SLOT_INFO.size * slot + field
        self.mm[at:at + 2] = _pack_u16(value)  # type: ignore[index]

    def _unlink(self, cls: int, slot: int, prev: int, nxt: int) -> None:
        if prev:
            self._set_link(prev - 1, 6, nxt)  # its next
        else:
            self.heads[cls] = nxt
        if nxt:
            self._set_link(nxt - 1, 4, prev)  # its prev

    def slots_needed(self, records_per_class: dict[int, int]) -> int:
        """Whole slots that taking these records (``{class: count}``) would take from the
        pool, after the free sub-slots of the classes' partial slots.  Walks each partial
        list only as far as it must."""
        needed = 0
        for cls, count in records_per_class.items():
            head = self.heads[cls]
            while head and count > 0:
                _, _, used, _, nxt, _ = self.info(head - 1)
                count -= PER_SLOT[cls] - used
                head = nxt
            if count > 0:
                needed += -(-count // PER_SLOT[cls])
        return needed

