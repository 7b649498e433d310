"""The on-disk hash table: extendible hashing over segments of 2,048 entries.

A directory of ``2**depth`` u16 slot numbers maps the low ``depth`` bits of a key's
fingerprint to a segment: a slot holding 2,048 u64 entries (``format`` says how an entry
packs a fingerprint and a record's offset).  Inside a segment, entries sit in Robin Hood
order from their home position (fingerprint bits 17 to 27), wrapping at the segment's end,
and a delete shifts the following entries back (no tombstones).  A lookup reads one
directory entry and, nearly always, one page of one segment.

A segment that reaches ``SPLIT_AT`` entries splits before the next insert (the fuzz suite
lowers it, to drive the table through many splits in a few steps): its entries are
shared with a new segment by the next fingerprint bit (the directory doubles first if the
segment already used every bit it has).  Growth is one segment at a time, about 1,000
entries moved, a few milliseconds, never a rehash of the whole table.  At the file's
ceiling with no free slot, a segment may fill past ``SPLIT_AT`` up to ``SEGMENT_FULL``.
Deletes shrink it the same way: two buddy segments holding under ``SPLIT_AT // 4``
entries together merge into one (``merge``), and the emptied slot goes back to the pool.

The table is derived from the records: after a crash the engine rebuilds it, whole
(``partition`` and ``build``) when the free slots allow, else insert by insert.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import compress

from .format import (
    FINGERPRINT_SHIFT,
    HOME_SHIFT,
    KIND_SEGMENT,
    SEGMENT_ENTRIES,
    SEGMENT_FULL,
    SLOT_SIZE,
    SPLIT_AT,
)
from .slots import Slots

__all__ = ["Table", "HOME_OF_ENTRY", "SEGMENT_MASK", "SEGMENT_STRIDE"]

SEGMENT_MASK = SEGMENT_ENTRIES - 1
HOME_OF_ENTRY = FINGERPRINT_SHIFT + HOME_SHIFT   # an entry's home: (entry >> 42) & mask
SEGMENT_STRIDE = SLOT_SIZE // 8                  # u64s from one slot to the next
_ZEROS = memoryview(bytes(8 * SEGMENT_ENTRIES)).cast("Q")


class Table:
    """The directory and segments of one open store (over the map of ``attach``)."""

    depth: int  #: global depth: the directory has 2**depth entries

    def __init__(self, slots: Slots, slots_offset: int, max_depth: int) -> None:
        self.slots = slots
        self.q0 = slots_offset // 8
        self.max_depth = max_depth
        self.depth = 0
        self.dmask = 0
        self.segment_count = 0
        #: free slots a split by choice (of a segment past SPLIT_AT, not yet at
        #: SEGMENT_FULL) must leave: those the writes in hand must have (``needs``'s
        #: *must* and their records' slots, set by ``Engine.room_for``); each split they
        #: force, and each slot a record takes, uses one up
        self.reserve = 0

    def attach(self, q: memoryview, directory: memoryview) -> None:
        """Use *q* (the whole map as u64s) and *directory* (the directory region as u16s)."""
        self.q = q
        self.dir = directory

    def set_depth(self, depth: int) -> None:
        self.depth = depth
        self.dmask = (1 << depth) - 1

    # ----------------------------------------------------------------- layout

    def base(self, segment: int) -> int:
        """Index in ``q`` of the first entry of the segment in slot *segment*."""
        return self.q0 + segment * SEGMENT_STRIDE

    def segment_of(self, fp: int) -> int:
        return self.dir[fp & self.dmask]  # type: ignore[no-any-return,unused-ignore]

    def depth_agrees(self, segment: int, index: int, depth: int) -> bool:
        """Whether *depth*, the local depth slot info gives *segment* (no checksum covers
        it), is the directory's, around the directory entry *index* that names it: the
        entries past that depth name it too, its sibling run does not."""
        directory = self.dir
        return not (depth > self.depth or (depth < self.depth and directory[index ^ 1 << depth] != segment)
                    or (depth and directory[index ^ 1 << (depth - 1)] == segment))

    def run_names(self, segment: int, index: int, depth: int) -> bool:
        """Whether every directory entry of the run of local *depth* that holds *index* names
        *segment*: a damaged entry elsewhere in the run sends some fingerprints to another
        segment, which a walk by runs would not notice (``depth_agrees`` looks at two
        entries).  O(entries of the run)."""
        run = self.dir[index & ((1 << depth) - 1):1 << self.depth:1 << depth].tolist()
        return run.count(segment) == len(run)

    def segments(self) -> list[int]:
        """Every segment's slot, once each, in directory order."""
        return list(dict.fromkeys(self.dir[:1 << self.depth].tolist()))

    def new(self) -> None:
        """An empty table: depth 0, one segment (the caller made sure a slot is free)."""
        segment = self._new_segment(0)
        self.set_depth(0)
        self.dir[0] = segment

    def _new_segment(self, depth: int) -> int:
        segment = self.slots.take_slot()
        self.slots.set_info(segment, KIND_SEGMENT, depth)
        self.segment_count += 1
        base = self.base(segment)
        self.q[base:base + SEGMENT_ENTRIES] = _ZEROS
        return segment

    # ----------------------------------------------------------------- changes

    def insert(self, fp: int, entry: int) -> int:
        """Add *entry* (whose fingerprint is *fp*); return its position in ``q``.  Splits a
        full segment first when a slot is free.  The caller checked room (``needs``)."""
        slots = self.slots
        while True:
            segment = self.dir[fp & self.dmask]
            used = slots.used(segment)
            if used < SPLIT_AT:
                break
            depth = slots.info(segment)[1]
            free = slots.free_slots()
            forced = used >= SEGMENT_FULL
            if free and (free > self.reserve or forced) and (depth < self.depth or self.depth < self.max_depth):
                if forced and self.reserve:
                    self.reserve -= 1
                self.split(segment, fp)
                continue
            if forced:
                raise AssertionError(f"segment in slot {segment} is full; room was not checked")
            break
        return self.add_to(segment, entry)

    def add_to(self, segment: int, entry: int) -> int:
        """Place *entry* in *segment* (which has room) and count it; its position in ``q``."""
        position = self.place(self.q0 + segment * SEGMENT_STRIDE, entry)  # base(), inline
        self.slots.add_used(segment, 1)
        return position

    def place(self, base: int, entry: int) -> int:
        """Robin Hood insert of *entry* into the segment at *base*; its final position."""
        q = self.q
        i = (entry >> HOME_OF_ENTRY) & SEGMENT_MASK
        distance = 0
        position = -1
        for _ in range(SEGMENT_ENTRIES):
            current = q[base + i]
            if not current:
                q[base + i] = entry
                return base + i if position < 0 else position
            current_distance = (i - (current >> HOME_OF_ENTRY)) & SEGMENT_MASK
            if current_distance < distance:  # Robin Hood: the richer entry moves on
                q[base + i] = entry
                if position < 0:
                    position = base + i
                entry, distance = current, current_distance
            i = (i + 1) & SEGMENT_MASK
            distance += 1
        raise AssertionError("a segment has no empty position")

    def delete(self, position: int) -> None:
        """Remove the entry at *position*: backward-shift the entries after it; then merge
        its segment with its buddy if the two are nearly empty (``merge``)."""
        q = self.q
        segment, i = divmod(position - self.q0, SEGMENT_STRIDE)
        base = position - i
        fp = q[position] >> FINGERPRINT_SHIFT
        while True:
            j = (i + 1) & SEGMENT_MASK
            entry = q[base + j]
            if not entry or not (j - (entry >> HOME_OF_ENTRY)) & SEGMENT_MASK:
                q[base + i] = 0
                break
            q[base + i] = entry
            i = j
        if self.slots.add_used(segment, -1) < SPLIT_AT // 4 and self.segment_count > 1:
            self.merge(segment, fp)

    def merge(self, segment: int, fp: int) -> None:
        """Fold *segment* (the one *fp* maps to) and its buddy, the segment of the same
        local depth whose run differs in the last bit of it, into one while their entries
        together number under ``SPLIT_AT // 4``, and give the emptied slot back to the
        pool; then try again one level up.  Without it a store kept its peak of segments
        for good: room the file had to hold values, and a walk's time over empty segments.
        A merged segment holds under a quarter of what splits one, so a key added and
        removed at the edge never makes the two alternate.  O(entries moved)."""
        slots, q, directory = self.slots, self.q, self.dir
        while True:
            _, depth, used, *_ = slots.info(segment)
            if not depth:
                return
            bit = 1 << (depth - 1)
            index = fp & self.dmask
            buddy = directory[index ^ bit]
            if buddy == segment:
                return
            _, buddy_depth, buddy_used, *_ = slots.info(buddy)
            # The common answer first, in the fewest calls: a delete from a segment under a
            # quarter asks every time, and its buddy is mostly too full (1.6 us of 7.7 each)
            if buddy_depth != depth or used + buddy_used >= SPLIT_AT // 4:
                return  # the buddy's run is split finer, or the two together are too many
            if not (self.depth_agrees(segment, index, depth) and self.depth_agrees(buddy, index ^ bit, depth)):
                return  # a damaged depth byte: a merge by it would leave a segment unnamed
            keep, gone = (segment, buddy) if used >= buddy_used else (buddy, segment)
            keep_base, gone_base = self.base(keep), self.base(gone)
            for entry in filter(None, q[gone_base:gone_base + SEGMENT_ENTRIES].tolist()):
                self.place(keep_base, entry)
            slots.set_depth_used(keep, depth - 1, used + buddy_used)
            for index in range(fp & (bit - 1), 1 << self.depth, bit):  # both runs, every copy
                directory[index] = keep
            slots.give_slot(gone)
            self.segment_count -= 1
            segment = keep

    def split(self, segment: int, fp: int) -> None:
        """Share the entries of *segment* (the one *fp* maps to) with a new segment by the
        fingerprint bit after its local depth.  O(entries of one segment)."""
        slots, q = self.slots, self.q
        depth = slots.info(segment)[1]
        if depth == self.depth:  # every directory bit in use: double the directory
            n = 1 << self.depth
            self.dir[n:2 * n] = self.dir[:n]
            self.set_depth(self.depth + 1)
        base = self.base(segment)
        entries = [e for e in q[base:base + SEGMENT_ENTRIES].tolist() if e]
        q[base:base + SEGMENT_ENTRIES] = _ZEROS
        sibling = self._new_segment(depth + 1)
        bit = 1 << depth
        sibling_base = self.base(sibling)
        moved = 0
        for entry in entries:
            if (entry >> FINGERPRINT_SHIFT) & bit:
                self.place(sibling_base, entry)
                moved += 1
            else:
                self.place(base, entry)
        slots.set_depth_used(segment, depth + 1, len(entries) - moved)
        slots.set_depth_used(sibling, depth + 1, moved)
        for index in range((fp & (bit - 1)) | bit, 1 << self.depth, bit << 1):
            self.dir[index] = sibling

    def split_crowded(self) -> None:
        """Split the segments past ``SPLIT_AT`` while slots are free: after a rebuild that
        split only where it had to (``reserve`` held every slot back), as roomy a table as
        one grown insert by insert."""
        slots = self.slots
        while slots.free_slots():
            crowded = [s for s in self.segments() if slots.used(s) >= SPLIT_AT
                       and (slots.info(s)[1] < self.depth or self.depth < self.max_depth)]
            if not crowded:
                return
            for segment in crowded:
                if not slots.free_slots():
                    return
                base = self.base(segment)
                entry = next(e for e in self.q[base:base + SEGMENT_ENTRIES].tolist() if e)
                self.split(segment, entry >> FINGERPRINT_SHIFT)

    def buckets(self, count: int) -> list[array[int]]:
        """Empty buckets for about *count* entries, to be dealt in by the low bits of their
        fingerprints (``len(buckets) - 1`` masks them) for ``partition``: about
        ``SPLIT_AT // 2`` entries each, at most 4,096 of them."""
        return [array("Q") for _ in range(1 << min(self.max_depth, 12, (count // SPLIT_AT).bit_length()))]

    def partition(self, buckets: list[array[int]]) -> list[tuple[int, int, array[int]]]:
        """The segments of a table holding the entries of *buckets* (``buckets``', filled),
        as ``(directory prefix, local depth, entries)``: every one holding ``SPLIT_AT`` or
        more split while fingerprint bits remain, which is what inserting them one at a
        time and then ``split_crowded`` give with slots enough.  Recovery builds its table
        from this (``build``) rather than by inserts: those moved each entry once more at
        every level it split, 1.06 million ``place`` calls for 300,000 keys.

        A bucket is split further, or merged back with its neighbours, as the counts say.
        O(entries + buckets)."""
        bits = len(buckets).bit_length() - 1
        sizes = [len(bucket) for bucket in buckets]
        groups: list[tuple[int, int, array[int]]] = []
        # A stack, not nested recursive functions: those are a reference cycle that kept
        # this table, its map and so the file's lock alive after an interrupted open
        todo: list[tuple[int, int, array[int] | None]] = [(0, 0, None)]  # None: above the buckets
        while todo:
            prefix, depth, group = todo.pop()
            if group is None:
                if depth == bits:  # (taken out: its halves, once split, are all that is kept)
                    group, buckets[prefix] = buckets[prefix], array("Q")
                elif sum(sizes[prefix::1 << depth]) >= SPLIT_AT:
                    todo += [(prefix | 1 << depth, depth + 1, None), (prefix, depth + 1, None)]
                    continue
                else:  # would not have split: its buckets are one segment
                    group = array("Q")
                    for bucket in buckets[prefix::1 << depth]:
                        group.extend(bucket)
                    groups.append((prefix, depth, group))
                    continue
            if len(group) < SPLIT_AT or depth >= self.max_depth:
                groups.append((prefix, depth, group))
                continue
            bit = 1 << depth << FINGERPRINT_SHIFT
            todo += [(prefix | 1 << depth, depth + 1, array("Q", [e for e in group if e & bit])),
                     (prefix, depth + 1, array("Q", [e for e in group if not e & bit]))]
        return groups

    def build(self, groups: list[tuple[int, int, array[int]]]) -> bool:
        """Make the table of *groups* (``partition``'s): a segment each, its entries laid
        out in Robin Hood order in one pass, and the directory naming each from its prefix.
        False, and nothing done, if there are fewer free slots than groups or a group
        would pass ``SEGMENT_FULL`` (out of fingerprint bits)."""
        if len(groups) > self.slots.free_slots() or any(len(group) >= SEGMENT_FULL for _, _, group in groups):
            return False
        self.segment_count = 0
        self.set_depth(max(depth for _, depth, _ in groups))
        for prefix, depth, group in groups:
            segment = self._new_segment(depth)
            self.slots.set_depth_used(segment, depth, len(group))
            self._lay_out(self.base(segment), group)
            for index in range(prefix, 1 << self.depth, 1 << depth):
                self.dir[index] = segment
        return True

    def _lay_out(self, base: int, group: array[int]) -> None:
        """Write *group* into the empty segment at *base*: in order of home position, each
        entry at its home or just after the one before, which is Robin Hood order.  Those
        carried past the end wrap to the start, and the pass runs again with the entries
        there starting after them, until the wrapped ones fit before the first."""
        ordered = sorted(group, key=_home_first)
        carry = 0
        while True:
            positions = []
            after = carry
            for entry in ordered:
                home = (entry >> HOME_OF_ENTRY) & SEGMENT_MASK
                after = home if home > after else after
                positions.append(after)
                after += 1
            if after - SEGMENT_ENTRIES <= carry:
                break
            carry = after - SEGMENT_ENTRIES
        q = self.q
        for entry, position in zip(ordered, positions):
            q[base + (position & SEGMENT_MASK)] = entry

    def segment_with_room(self, fp: int) -> int:
        """The segment *fp* maps to, or -1 if it would split before taking another entry."""
        segment: int = self.dir[fp & self.dmask]
        return segment if self.slots.used(segment) < SPLIT_AT else -1

    def needs(self, fps: Sequence[int]) -> tuple[int, int]:
        """Slots that adding entries for *fps* would want for splits, and the slots it
        must have: the splits without which some segment would pass ``SEGMENT_FULL``,
        counted on the fingerprints themselves (``_forced_splits``).  Counting each
        split as 512 entries of room asked a fresh table for N/512 slots where N/700 do,
        so a full store's keys did not fit a new file of its own ceiling (``compact``)."""
        # Counted per segment, the fingerprints kept only for a segment that passes
        # SEGMENT_FULL, in arrays: a compact's million keys all go to one segment of an
        # empty table, and lists of them were most of its memory (63 bytes a key)
        directory, dmask = self.dir, self.dmask
        adds = Counter(map(directory.__getitem__, map(dmask.__and__, fps)))  # (C loops, no frame)
        want = must = 0
        half = SPLIT_AT // 2
        for segment, new in adds.items():
            total = self.slots.used(segment) + new
            if total > SPLIT_AT:
                want += -(-total // half) - 1
            if total > SEGMENT_FULL:
                base = self.base(segment)
                group = array("Q", [e >> FINGERPRINT_SHIFT for e in self.q[base:base + SEGMENT_ENTRIES].tolist() if e])
                group.extend(compress(fps, map(segment.__eq__, map(directory.__getitem__, map(dmask.__and__, fps)))))
                must += _forced_splits(group, self.slots.info(segment)[1], self.max_depth)
        return want, must


def _home_first(entry: int) -> int:
    """A sort key: home position, then the entry (so one fingerprint's entries are next
    to each other)."""
    return ((entry >> HOME_OF_ENTRY) & SEGMENT_MASK) << 64 | entry


def _forced_splits(fps: array[int], depth: int, max_depth: int) -> int:
    """How many splits a segment of local *depth* holding entries of these fingerprints
    must have so that none passes ``SEGMENT_FULL``, splitting only where it must (a split
    shares a segment's entries by the fingerprint bit after its depth); a count no file
    has room for if the bits run out (``max_depth``).

    Every run of the fingerprint order (a prefix of the low bits) holding more than
    ``SEGMENT_FULL`` of them splits once.  So this counts the fingerprints by their low
    bits once, in C, at a level deep enough that no run there is crowded, and adds the
    counts up a level at a time to find the crowded runs above.  (Splitting arrays in
    generator frames a level at a time took 0.45 s of a 200,000-key ``update``.)
    O(len(fps)), plus O(runs) per level."""
    if len(fps) <= SEGMENT_FULL:
        return 0
    if depth:  # runs of the bits from *depth* up: a split shares by bit *depth* alone, whatever
        # the bits below say (a damaged entry's may differ: a review, a full segment then)
        fps = array("Q", map(depth.__rrshift__, fps))
    bits = max(0, max_depth - depth)  # the bits a split may still use
    level = min(bits, (len(fps) // SEGMENT_FULL).bit_length() + 1)
    while True:
        counts = Counter(map(((1 << level) - 1).__and__, fps))
        if max(counts.values()) <= SEGMENT_FULL:
            break
        if level >= bits:
            return 1 << 40  # a run crowded with every bit used: it cannot split
        level += 1  # a run still crowded here (uneven fingerprints): count deeper
    splits = 0
    while level:
        level -= 1
        mask = (1 << level) - 1
        above: Counter[int] = Counter()
        for run, count in counts.items():
            above[run & mask] += count
        counts = above
        splits += sum(count > SEGMENT_FULL for count in counts.values())
    return splits
