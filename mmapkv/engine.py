"""The file engine: superblock, on-disk hash table and slots, mapped into memory.

It knows bytes, not dicts, and it does not lock: ``Store`` serialises every call.
Nothing per key lives in Python memory; a lookup reads the table entries it probes
and the header of the slot that matches.

Crash model (see docs/design.md): the slots are the truth and the table is an index
derived from them.  A slot is written whole (state word and checksum, then the body) with
one pwrite; a write cut short fails its checksum.  A delete is one write of the state word.
Counters live in Python while the store is open and reach the superblock only on a clean
close, so after a crash (the superblock's CLEAN flag unset) ``recover`` rebuilds the table
and counters from the slots.

Interrupts: an exception can land between any two bytecodes of a change (Ctrl-C's
``KeyboardInterrupt``, ``MemoryError``...).  ``Store`` runs every change inside
``with engine.change():``; one that ends by any exception but a clean refusal leaves
``busy`` set, and the next use calls ``repair``: exactly the recovery a crash gets, so an
interrupted change is, in this process too, all there or not there at all.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import stat
import sys
from typing import Iterator

import portalocker
from xxhash import xxh3_64_intdigest

from .errors import (
    CorruptStoreError,
    DiskFullError,
    FormatVersionError,
    InvalidArgumentError,
    MmapKVError,
    StoreAccessError,
    StoreFullError,
    StoreLockedError,
)
from .format import (
    BODY_HEADER,
    BODY_OFFSET,
    FINGERPRINT_SHIFT,
    FLAG_CLEAN,
    KEY_OFFSET,
    MAGIC,
    MAX_FILE_SIZE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PAGE_SIZE,
    SB_BATCH_COMMIT,
    SB_CHECKSUM,
    SB_FILE_SIZE,
    SB_FLAGS,
    SLOT_HEADER,
    SLOT_MASK,
    SLOT_STRIDE,
    STATE_FREE,
    STATE_LIVE,
    STATE_PENDING,
    SUPERBLOCK,
    VALUE_OFFSET,
    VERSION,
    Geometry,
)
from .locking import lock_file, unlock_file
from .tempfiles import remove_abandoned, temporary_path

__all__ = ["Engine", "DamagedEntry", "fingerprint", "CLEAN_FAILURES"]

if sys.byteorder != "little":  # the table is read through a native u64 memoryview
    raise ImportError("mmapkv's file format is little-endian; this machine is big-endian")

_KEY_PAD = bytes(MAX_KEY_BYTES)
_COMMIT = SLOT_HEADER.__class__("<IIQ")  # state, next_free, checksum: a slot's first 16 bytes
_FREE = SLOT_HEADER.__class__("<II")     # state, next_free
_U32 = SLOT_HEADER.__class__("<I")
_unpack_header = SLOT_HEADER.unpack_from
_U64 = SLOT_HEADER.__class__("<Q")
_SEARCH_LIMIT = 3  # open attempts when the path is replaced under us (by compact)

#: Errors a change raises only after putting everything back as it was: they leave the
#: engine usable.  Any other exception inside a change makes the next use repair first.
CLEAN_FAILURES: tuple[type[BaseException], ...] = (StoreFullError, StoreAccessError)


class DamagedEntry(CorruptStoreError):
    """A stored entry failed its checksum; ``index`` is its table position (or -1)."""

    def __init__(self, message: str, index: int, slot: int) -> None:
        super().__init__(message)
        self.index, self.slot = index, slot


def fingerprint(key: bytes) -> int:
    """The part of ``xxh3_64(key)`` a table entry keeps; its low bits give the home position."""
    return xxh3_64_intdigest(key) >> FINGERPRINT_SHIFT


def reserve(fd: int, size: int) -> None:
    """Make the file *size* bytes with its blocks allocated, so writes through the map
    can never hit a full disk (which would be a SIGBUS, not an exception)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # pragma: no cover - macOS and Windows: sparse, documented in docs/design.md
        os.ftruncate(fd, size)


def create_file(path: str, max_size: int, *, in_place: bool = False) -> bool:
    """Write a new, empty, clean store at *path* unless something is there already.
    Returns True if this call made it.

    The file is built under a temporary name (locked, magic number first, see
    ``tempfiles``) and linked into place, so a crash never leaves a half-initialised file
    at *path*, and an existing file is never overwritten.  ``in_place=True`` builds it at
    *path* itself, which must be a fresh temporary name (compact uses it).
    """
    geometry = Geometry(max_size)
    tmp = path if in_place else temporary_path(path, "create")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    made = False
    try:
        try:  # a fresh name: nobody else can hold it, so this fails only on a broken system
            portalocker.lock(fd, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except (portalocker.LockException, OSError) as exc:
            raise StoreAccessError(getattr(exc, "errno", None) or errno.EIO,
                                   f"cannot lock the new file {tmp}: {exc}") from None
        header = SUPERBLOCK.pack(MAGIC, VERSION, FLAG_CLEAN, max_size, geometry.initial_size,
                                 0, 0, 0, 0, math.inf, 1, 0, 0)
        header = header[:SB_CHECKSUM] + _U64.pack(xxh3_64_intdigest(header[:SB_CHECKSUM]))
        os.pwrite(fd, header, 0)
        try:
            reserve(fd, geometry.initial_size)
        except OSError as exc:
            raise DiskFullError(exc.errno, f"cannot create {path}: {exc.strerror}") from None
        os.fsync(fd)
        if in_place:
            made = True
        else:
            try:
                os.link(tmp, path)
                made = True
            except FileExistsError:
                pass  # another process created it first: use theirs
            except FileNotFoundError:
                pass  # a cleaner took our temporary file for abandoned: the caller retries
    finally:
        os.close(fd)
        if not in_place or not made:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name itself survives power loss
    finally:
        os.close(dir_fd)
    return made


class Engine:
    """One open store file.  Not thread-safe on its own: ``Store`` holds a lock around it."""

    # Counters: exact while open; written to the superblock by a clean close.
    file_size: int
    slot_count: int
    high_water: int
    free_head: int
    live_count: int
    ttl_count: int
    next_expiry: float
    next_seq: int

    def __init__(self, path: str, *, max_size: int | None = None, readonly: bool = False,
                 durable: bool = False, lock_timeout: float = 0.0, create: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self.durable = durable
        self.was_clean = False
        #: open change brackets; non-zero outside a change means one was interrupted
        self.changes = 0
        #: set by compact just before it renames its new file over this one
        self.successor: Engine | None = None
        self._fd = -1
        self._mapped = False
        self._fd = self._open_and_lock(max_size, lock_timeout, create)
        try:
            self._load(max_size)
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------- opening

    def _open_and_lock(self, max_size: int | None, lock_timeout: float, create: bool) -> int:
        try:
            return self._open_and_lock_path(max_size, lock_timeout, create)
        except MmapKVError:
            raise
        except OSError as exc:
            raise StoreAccessError(exc.errno, f"cannot open the store {self.path}: "
                                   f"{exc.strerror or exc}") from None

    def _open_and_lock_path(self, max_size: int | None, lock_timeout: float, create: bool) -> int:
        path = self.path
        if os.path.isdir(path):
            raise InvalidArgumentError(f"{path} is a directory; give the path of a store file")
        if os.path.exists(path) and not os.path.isfile(path):  # open() of a FIFO would block
            raise InvalidArgumentError(f"{path} is not a regular file")
        if os.path.islink(path) and not os.path.exists(path):
            raise InvalidArgumentError(f"{path} is a symbolic link to {os.readlink(path)}, "
                                       "which does not exist")
        flags = (os.O_RDONLY if self.readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(_SEARCH_LIMIT):
            if create and not self.readonly and not os.path.exists(path):
                parent = os.path.dirname(path)
                if parent:
                    os.makedirs(parent, mode=0o700, exist_ok=True)
                create_file(path, MAX_FILE_SIZE if max_size is None else max_size)
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if create and not self.readonly:
                    continue  # removed between create and open: make it again
                raise StoreAccessError(errno.ENOENT, f"no store at {path}") from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise InvalidArgumentError(f"{path} is not a regular file")
                if lock_file(fd, path, shared=self.readonly, timeout=lock_timeout):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise StoreLockedError(f"{path} keeps being replaced while opening it; try again")

    def _load(self, max_size: int | None) -> None:
        fd, path = self._fd, self.path
        actual = os.fstat(fd).st_size
        head = os.pread(fd, SUPERBLOCK.size, 0)
        if len(head) < SUPERBLOCK.size or head[:8] != MAGIC:
            raise CorruptStoreError(f"{path} is not an mmapkv store (no mmapkv magic number "
                                    f"in its first bytes; {actual:,} bytes long); it was left untouched")
        (_, version, flags, stored_max, file_size, hwm, free_head, live, ttl, next_expiry,
         next_seq, _batch, checksum) = SUPERBLOCK.unpack(head)
        if version > VERSION:
            raise FormatVersionError(f"{path} has mmapkv format version {version}; this mmapkv "
                                     f"reads version {VERSION} (upgrade mmapkv to open it)")
        if version == 1:  # unaligned slots; no release wrote it (docs/format.md)
            raise FormatVersionError(f"{path} has mmapkv format version 1, a development format "
                                     f"this mmapkv no longer reads (it reads version {VERSION})")
        if version != VERSION:
            raise CorruptStoreError(f"{path} has format version {version}, which no mmapkv wrote")
        if not (Geometry.smallest_max_size() <= stored_max <= MAX_FILE_SIZE):
            raise CorruptStoreError(f"{path}: superblock max_size {stored_max} is out of range")
        if max_size is not None and max_size != stored_max:
            raise InvalidArgumentError(
                f"{path} was created with max_size={stored_max:,}; it cannot be opened with "
                f"max_size={max_size:,} (leave max_size=None, or compact into a new file)")
        geometry = self.geometry = Geometry(stored_max)
        clean = bool(flags & FLAG_CLEAN) and xxh3_64_intdigest(head[:SB_CHECKSUM]) == checksum
        if not clean and not geometry.is_valid_size(file_size) and geometry.is_valid_size(actual):
            file_size = actual  # a damaged size field: the file's own size is one it can have
        if not geometry.is_valid_size(file_size):
            raise CorruptStoreError(f"{path}: superblock file size {file_size:,} is not one "
                                    f"this store can have")
        if actual < file_size:
            raise CorruptStoreError(f"{path} is truncated: {actual:,} bytes, its superblock says "
                                    f"{file_size:,}")
        if actual > file_size:
            if clean:
                raise CorruptStoreError(f"{path} is {actual:,} bytes, its superblock says {file_size:,}")
            if not self.readonly:  # a growth that did not finish before a crash: undo it
                os.ftruncate(fd, file_size)
        self._map(file_size)
        self.slot_count = geometry.slot_count(file_size)
        if clean and not (hwm <= self.slot_count and free_head <= hwm and ttl <= live <= hwm):
            clean = False
        self.was_clean = clean
        self.high_water, self.free_head, self.live_count = hwm, free_head, live
        self.ttl_count, self.next_expiry, self.next_seq = ttl, next_expiry, next_seq
        if self.readonly:
            return
        self._dirty = False
        if not clean:
            self.recover()
            remove_abandoned(path)  # what a process killed while compacting left beside it

    def mark_dirty(self) -> None:
        """Clear CLEAN on disk (if not done yet this session): the next open recovers."""
        if not self._dirty:
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Before the first change of a session: clear CLEAN on disk, so that a crash
        from here on makes the next open recover.  Deferred from open to here because
        the msync costs milliseconds on a busy disk, and a session that only reads
        never pays it."""
        _U32.pack_into(self._mm, SB_FLAGS, 0)
        self._mm.flush(0, PAGE_SIZE)
        self._dirty = True

    def _map(self, size: int) -> None:
        access = mmap.ACCESS_READ if self.readonly else mmap.ACCESS_WRITE
        mm = mmap.mmap(self._fd, size, access=access)
        if hasattr(mmap, "MADV_RANDOM"):
            # No readahead: what is resident tracks what lookups touch (docs/design.md).
            mm.madvise(mmap.MADV_RANDOM)
        g = self.geometry
        self._mm = mm
        self._mapped = True
        self._view = memoryview(mm)
        self._table_bytes = self._view[g.table_offset:g.table_offset + 8 * g.table_capacity]
        self._table = self._table_bytes.cast("Q")
        self.file_size = size
        self._mask = g.table_capacity - 1
        self._slots_offset = g.slots_offset

    def _unmap(self) -> None:
        if not self._mapped:
            return
        self._mapped = False  # first: an interrupt below must not leave a closed map "mapped"
        for view in (self._table, self._table_bytes, self._view):
            view.release()
        try:
            self._mm.close()
        except BufferError:  # a view escaped (in a traceback?); the GC unmaps it later
            pass

    # ----------------------------------------------------------------- closing

    def close(self, *, release_lock: bool = True) -> None:
        """Write the counters, mark the file clean, sync it, unmap, unlock and close.

        ``release_lock=False`` is for a forked child: the lock belongs to the parent,
        and ``flock`` locks are shared across fork, so the child must not unlock.
        After an interrupted change the file is left marked unclean, so the next open
        recovers it, as after a crash.
        """
        if self._mapped and not self.readonly and release_lock and self._dirty and not self.changes:
            self.mark_clean()
        self._release(release_lock)

    def mark_clean(self) -> None:
        """Sync everything, then write the counters and the CLEAN flag to the superblock
        and sync it: an open now needs no recovery.  The next change clears it again."""
        self._mm.flush()
        header = SUPERBLOCK.pack(MAGIC, VERSION, FLAG_CLEAN, self.geometry.max_size,
                                 self.file_size, self.high_water, self.free_head,
                                 self.live_count, self.ttl_count, self.next_expiry,
                                 self.next_seq, _U64.unpack_from(self._mm, SB_BATCH_COMMIT)[0], 0)
        self._mm[:SB_CHECKSUM] = header[:SB_CHECKSUM]
        _U64.pack_into(self._mm, SB_CHECKSUM, xxh3_64_intdigest(header[:SB_CHECKSUM]))
        self._mm.flush(0, PAGE_SIZE)
        self._dirty = False

    def _release(self, release_lock: bool = True) -> None:
        self._unmap()
        if self._fd >= 0:
            if release_lock:
                unlock_file(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # The last word on the file descriptor (and so the lock) when a close was itself
        # interrupted: without it the lock would outlive the Store in this process.
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
            self._fd = -1

    def flush(self) -> None:
        """msync the whole map: what was written survives power loss from here on."""
        self._mm.flush()

    # ----------------------------------------------------------------- interrupts

    def change(self) -> Engine:
        """The bracket every change runs in: ``with engine.change(): ...``.

        Nesting is counted.  A clean exit, or one of ``CLEAN_FAILURES`` (raised only after
        everything was put back), closes the bracket; any other exception leaves it open,
        which the engine reads as "interrupted: repair before the next use".
        """
        return self

    def __enter__(self) -> None:
        self.changes += 1

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None or issubclass(exc_type, CLEAN_FAILURES):
            self.changes -= 1

    @property
    def busy(self) -> bool:
        """True outside a change if one was interrupted: call ``repair`` before use."""
        return self.changes > 0

    def repair(self) -> None:
        """Bring the store back to a consistent state after an interrupted change.

        The same as opening after a crash: reload the superblock and, unless nothing was
        changed since the file was last clean, rebuild the table, free list and counters
        from the slots (``recover``).  O(slots) then.  Interrupted itself, it simply runs
        again at the next use.
        """
        next_seq = self.next_seq
        self._unmap()
        self._load(None)
        self.next_seq = max(self.next_seq, next_seq)  # sequence numbers never repeat
        self.changes = 0

    def _changed(self) -> None:
        if self.durable:
            self._mm.flush()

    # ----------------------------------------------------------------- lookups

    def find(self, key: bytes, fp: int) -> int:
        """Table index of *key* (whose ``fingerprint`` is *fp*), or -1.  The hot path."""
        table, mask, mm = self._table, self._mask, self._mm
        i = fp & mask
        distance = 0
        while True:
            entry = table[i]
            if not entry:
                return -1
            if entry >> FINGERPRINT_SHIFT == fp:
                slot = (entry & SLOT_MASK) - 1
                if slot >= self.slot_count:
                    raise CorruptStoreError(f"{self.path}: table entry {i} points past the last slot")
                off = self._slots_offset + slot * SLOT_STRIDE + KEY_OFFSET
                if mm[off:off + len(key)] == key and mm[off - 4] == len(key):
                    return i
            # Robin Hood: every entry after ours sits no closer to its home than we would.
            if (i - (entry >> FINGERPRINT_SHIFT)) & mask < distance:
                return -1
            i = (i + 1) & mask
            distance += 1

    def slot_at(self, index: int) -> int:
        return (self._table[index] & SLOT_MASK) - 1

    def get(self, key: bytes, fp: int) -> tuple[memoryview, int, float] | None:
        """Find *key* and return its value bytes (a view into the map: decode it before
        the next write), codec flags and expiry, after checking the slot's checksum; or
        None.  The read hot path: ``find`` and the slot read fused into one loop.

        :raises DamagedEntry: the entry fails its checksum (``recover`` drops it).
        """
        table, mask, mm = self._table, self._mask, self._mm
        i = fp & mask
        distance = 0
        while True:
            entry = table[i]
            if not entry:
                return None
            if entry >> FINGERPRINT_SHIFT == fp:
                slot = (entry & SLOT_MASK) - 1
                if slot >= self.slot_count:
                    raise CorruptStoreError(f"{self.path}: table entry {i} points past the last slot")
                off = self._slots_offset + slot * SLOT_STRIDE
                state, _, checksum, _, expires, vlen, klen, flags, _ = _unpack_header(mm, off)
                if klen == len(key) and mm[off + KEY_OFFSET:off + KEY_OFFSET + klen] == key:
                    view = self._view
                    end = off + VALUE_OFFSET + vlen
                    if state != STATE_LIVE or vlen > MAX_VALUE_BYTES or \
                            xxh3_64_intdigest(view[off + BODY_OFFSET:end]) != checksum:
                        raise DamagedEntry(f"{self.path}: slot {slot} fails its checksum", i, slot)
                    return view[off + VALUE_OFFSET:end], flags, expires
            if (i - (entry >> FINGERPRINT_SHIFT)) & mask < distance:
                return None
            i = (i + 1) & mask
            distance += 1

    def expires_at(self, index: int) -> float:
        """The expiry of the entry at table *index* (0.0 = never)."""
        if not self.ttl_count:  # no entry has one: skip reading the slot
            return 0.0
        slot = (self._table[index] & SLOT_MASK) - 1
        expires: float = SLOT_HEADER.unpack_from(self._mm, self._slots_offset + slot * SLOT_STRIDE)[4]
        return expires

    # ----------------------------------------------------------------- writes

    def free_slots(self) -> int:
        """Slots that could take a key now, without growing the file."""
        return self.slot_count - self.live_count

    def insert(self, key: bytes, fp: int, data: bytes, flags: int, expires: float,
               state: int = STATE_LIVE, seq: int = 0) -> int:
        """Write an entry into a free slot (the caller made sure there is one) and, if it is
        LIVE, index it.  Returns the slot.  The caller checked the key is absent."""
        if not self._dirty:
            self._mark_dirty()
        free_head, high_water = self.free_head, self.high_water
        slot = self._pop_free_slot()
        off = self._slots_offset + slot * SLOT_STRIDE
        if not seq:
            seq = self.next_seq
            self.next_seq += 1
        body = BODY_HEADER.pack(seq, expires, len(data), len(key), flags, 0) + \
            key + _KEY_PAD[len(key):] + data
        # The whole slot, state word and checksum first, goes in with one pwrite, not
        # through the map: a write fault on a slot's page costs more than the syscall.
        # It needs no second, committing write: a slot whose write is cut short (a kill
        # mid-syscall, a crash before writeback) fails its checksum, and recovery frees it.
        slot_bytes = _COMMIT.pack(state, 0, xxh3_64_intdigest(body)) + body
        try:
            written = os.pwrite(self._fd, slot_bytes, off)
        except OSError as exc:
            if self._landed(slot_bytes, off):  # the error came after the write
                self.changes += 1  # it is on disk but counted nowhere: leave it to repair
            else:
                self.free_head, self.high_water = free_head, high_water  # the slot stays FREE
            raise self._write_error(exc) from None
        if written != len(slot_bytes):
            # A full disk mid-write: put back the free-list link the write began to
            # overwrite (the slot's header was (FREE, the new free_head)), so it stays free.
            try:
                os.pwrite(self._fd, _FREE.pack(STATE_FREE, self.free_head), off)
            except OSError as exc:
                self.changes += 1  # the slot is half written: leave the store to repair
                raise self._write_error(exc) from None
            self.free_head, self.high_water = free_head, high_water
            raise self._write_error(OSError(errno.ENOSPC, f"short write ({written} of "
                                                          f"{len(slot_bytes)} bytes)"))
        self.live_count += 1
        if expires:
            self.ttl_count += 1
            if expires < self.next_expiry:
                self.next_expiry = expires
        if state == STATE_LIVE:
            self._table_insert(fp << FINGERPRINT_SHIFT | (slot + 1))
            self._changed()
        return slot

    def _landed(self, slot_bytes: bytes, off: int) -> bool:
        """After an error around a slot write: did any of it reach the file?  pwrite
        writes nothing when it fails, but an exception can come just after it returned."""
        try:
            return os.pread(self._fd, BODY_OFFSET, off) == slot_bytes[:BODY_OFFSET]
        except OSError:
            return True  # cannot tell: assume the worst, and repair

    def _write_error(self, exc: OSError) -> MmapKVError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(exc.errno, f"cannot write to {self.path}: {exc.strerror or exc}")
        return StoreAccessError(exc.errno, f"cannot write to {self.path}: {exc.strerror or exc}")

    def begin_batch(self) -> int:
        """The sequence number every PENDING slot of one batch carries."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def commit_batch(self, seq: int, written: list[tuple[int, int]]) -> None:
        """Commit a batch's PENDING slots, given as (slot, fingerprint) pairs: one write of
        ``batch_commit`` makes all of them survive a crash, then each is made LIVE."""
        if self.durable:
            self._mm.flush()  # the slots reach the disk before the commit that names them
        self.set_batch_commit(seq)
        for slot, fp in written:
            self.commit_pending(slot, fp)
        self._changed()

    def abort_batch(self, written: list[tuple[int, int]]) -> None:
        """Give back the PENDING slots of a batch that will not commit."""
        for slot, _ in written:
            self._free_slot(slot)

    def commit_pending(self, slot: int, fp: int) -> None:
        """Turn a PENDING slot of a committed batch LIVE and index it."""
        _U32.pack_into(self._mm, self._slots_offset + slot * SLOT_STRIDE, STATE_LIVE)
        self._table_insert(fp << FINGERPRINT_SHIFT | (slot + 1))

    def set_batch_commit(self, seq: int) -> None:
        """The one write that commits a batch: its PENDING slots carry this sequence."""
        if not self._dirty:
            self._mark_dirty()
        _U64.pack_into(self._mm, SB_BATCH_COMMIT, seq)
        self._changed()

    def remove(self, index: int) -> None:
        """Drop the entry at table *index* and free its slot."""
        if not self._dirty:
            self._mark_dirty()
        slot = (self._table[index] & SLOT_MASK) - 1
        self._table_delete(index)
        self._free_slot(slot)
        self._changed()

    def _free_slot(self, slot: int) -> None:
        off = self._slots_offset + slot * SLOT_STRIDE
        if self.ttl_count and _unpack_header(self._mm, off)[4]:
            self.ttl_count -= 1
        _FREE.pack_into(self._mm, off, STATE_FREE, self.free_head)
        self.free_head = slot + 1
        self.live_count -= 1

    def _pop_free_slot(self) -> int:
        if self.free_head:
            slot = self.free_head - 1
            state, next_free = _FREE.unpack_from(self._mm, self._slots_offset + slot * SLOT_STRIDE)
            if state != STATE_FREE or next_free > self.high_water:
                raise CorruptStoreError(f"{self.path}: the free list is damaged at slot {slot}; "
                                        "run `python -m mmapkv compact`")
            self.free_head = next_free
            return slot
        if self.high_water < self.slot_count:
            self.high_water += 1
            return self.high_water - 1
        raise AssertionError("no free slot: the caller must grow or sweep first")

    def _table_insert(self, entry: int) -> None:
        table, mask = self._table, self._mask
        i = (entry >> FINGERPRINT_SHIFT) & mask
        distance = 0
        for _ in range(mask + 1):
            current = table[i]
            if not current:
                table[i] = entry
                return
            current_distance = (i - (current >> FINGERPRINT_SHIFT)) & mask
            if current_distance < distance:  # Robin Hood: the richer entry moves on
                table[i] = entry
                entry, distance = current, current_distance
            i = (i + 1) & mask
            distance += 1
        raise CorruptStoreError(f"{self.path}: the hash table has no empty position")

    def _table_delete(self, index: int) -> None:
        """Backward-shift deletion: pull the following entries one step home."""
        table, mask = self._table, self._mask
        i = index
        while True:
            j = (i + 1) & mask
            entry = table[j]
            if not entry or (j - (entry >> FINGERPRINT_SHIFT)) & mask == 0:
                table[i] = 0
                return
            table[i] = entry
            i = j

    # ----------------------------------------------------------------- growth

    def grow(self) -> bool:
        """Double the file (up to the ceiling).  False if it is at the ceiling already.

        The new space is allocated before it is mapped, and a failure leaves the file and
        the map as they were.
        """
        new_size = self.geometry.grown_size(self.file_size)
        if new_size <= self.file_size:
            return False
        if not self._dirty:
            self._mark_dirty()
        old_size = self.file_size
        try:
            reserve(self._fd, new_size)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, old_size)
            except OSError:
                pass
            raise DiskFullError(
                exc.errno, f"cannot grow {self.path} from {old_size:,} to {new_size:,} bytes: "
                f"{exc.strerror}; free disk space, or delete keys to make room") from None
        self._unmap()
        self._map(new_size)
        self.slot_count = self.geometry.slot_count(new_size)
        _U64.pack_into(self._mm, SB_FILE_SIZE, new_size)
        self._changed()
        return True

    # ----------------------------------------------------------------- scans

    def iter_slots(self) -> Iterator[tuple[int, int, float, bytes]]:
        """(slot, state, expires_at, key) for every LIVE slot, in slot order."""
        mm, base = self._mm, self._slots_offset
        for slot in range(self.high_water):
            off = base + slot * SLOT_STRIDE
            state = _U32.unpack_from(mm, off)[0]
            if state == STATE_LIVE:
                header = SLOT_HEADER.unpack_from(mm, off)
                klen = header[6]
                yield slot, state, header[4], mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]

    def is_indexed(self, slot: int, key: bytes) -> bool:
        """True if the table leads from *key* to *slot*: a damaged key byte breaks this
        (its fingerprint no longer matches), without reading the value."""
        index = self.find(key, fingerprint(key))
        return index >= 0 and self.slot_at(index) == slot

    def is_intact(self, slot: int) -> bool:
        """True if the LIVE *slot* passes its checksum (what ``get`` checks before a read)."""
        off = self._slots_offset + slot * SLOT_STRIDE
        _, _, checksum, _, _, vlen, _, _, _ = _unpack_header(self._mm, off)
        return vlen <= MAX_VALUE_BYTES and \
            xxh3_64_intdigest(self._view[off + BODY_OFFSET:off + VALUE_OFFSET + vlen]) == checksum

    def index_of_slot(self, slot: int, key: bytes) -> int:
        index = self.find(key, fingerprint(key))
        if index < 0 or self.slot_at(index) != slot:
            raise CorruptStoreError(f"{self.path}: slot {slot} is live but not in the table")
        return index

    def sweep(self, now: float) -> int:
        """Free every entry expired at *now*; recompute ``next_expiry``.  O(slots)."""
        freed = 0
        next_expiry = math.inf
        for slot, _, expires, key in self.iter_slots():  # removal moves no slot
            if not expires:
                continue
            if expires <= now:
                self.remove(self.index_of_slot(slot, key))
                freed += 1
            elif expires < next_expiry:
                next_expiry = expires
        self.next_expiry = next_expiry
        return freed

    def recover(self) -> None:
        """Rebuild the table, the free list and the counters from the slots themselves.

        Runs on open after a crash.  A LIVE slot (or a PENDING one from the last committed
        batch) whose checksum holds is kept; anything else is freed.  Should one key be
        live twice, the newer write (higher seq) wins.  O(slots + bytes of live values).
        """
        mm, view, base = self._mm, self._view, self._slots_offset
        if not self._dirty:
            self._mark_dirty()
        self._table_bytes[:] = bytes(len(self._table_bytes))
        batch = _U64.unpack_from(mm, SB_BATCH_COMMIT)[0]
        live = bytearray(self.slot_count)  # 1 = kept
        top = max_seq = 0
        for slot in range(self.slot_count):
            off = base + slot * SLOT_STRIDE
            state, _, checksum, seq, _, vlen, klen, _, _ = SLOT_HEADER.unpack_from(mm, off)
            if state == STATE_FREE:
                continue
            ok = (state == STATE_LIVE or (state == STATE_PENDING and seq == batch)) and \
                vlen <= MAX_VALUE_BYTES and 1 <= klen <= MAX_KEY_BYTES and \
                xxh3_64_intdigest(view[off + BODY_OFFSET:off + VALUE_OFFSET + vlen]) == checksum
            if not ok:
                _U32.pack_into(mm, off, STATE_FREE)
                continue
            if state == STATE_PENDING:
                _U32.pack_into(mm, off, STATE_LIVE)
            key = mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]
            fp = fingerprint(key)
            index = self.find(key, fp)
            if index >= 0:  # the same key twice: keep the newer write
                other = self.slot_at(index)
                other_seq = SLOT_HEADER.unpack_from(mm, base + other * SLOT_STRIDE)[3]
                if other_seq > seq:
                    _U32.pack_into(mm, off, STATE_FREE)
                    continue
                _U32.pack_into(mm, base + other * SLOT_STRIDE, STATE_FREE)
                live[other] = 0
                self._table[index] = fp << FINGERPRINT_SHIFT | (slot + 1)
            else:
                self._table_insert(fp << FINGERPRINT_SHIFT | (slot + 1))
            live[slot] = 1
            top = slot + 1
            max_seq = max(max_seq, seq)
        self.high_water, self.free_head = top, 0
        self.live_count = self.ttl_count = 0
        self.next_expiry = math.inf
        for slot in range(top - 1, -1, -1):
            off = base + slot * SLOT_STRIDE
            if not live[slot]:
                _FREE.pack_into(mm, off, STATE_FREE, self.free_head)
                self.free_head = slot + 1
                continue
            self.live_count += 1
            expires = SLOT_HEADER.unpack_from(mm, off)[4]
            if expires:
                self.ttl_count += 1
                self.next_expiry = min(self.next_expiry, expires)
        # Never reuse a sequence number: not one a surviving slot carries, and not the
        # committed batch's, or a later batch cut short would be taken for that one.
        self.next_seq = max(self.next_seq, max_seq + 1, batch + 1)
        mm.flush()

    def check(self) -> list[str]:
        """Every broken invariant of the file, as sentences; empty when all hold.

        1. each table entry points at a LIVE slot inside the file whose checksum holds
           and whose key hashes to the entry's fingerprint;
        2. Robin Hood order: no entry is further from home than the one after it allows,
           and no empty position lies between an entry and its home;
        3. every LIVE slot is indexed exactly once, and none lies at or past high_water;
        4. the free list holds FREE slots below high_water, no cycle, and with the LIVE
           slots accounts for every slot below high_water;
        5. live_count, ttl_count and next_expiry agree with the slots.
        """
        problems: list[str] = []
        mm, view, base, mask, table = self._mm, self._view, self._slots_offset, self._mask, self._table
        indexed: dict[int, int] = {}
        for i in range(mask + 1):
            entry = table[i]
            if not entry:
                continue
            fp, slot = entry >> FINGERPRINT_SHIFT, (entry & SLOT_MASK) - 1
            if not 0 <= slot < self.slot_count:
                problems.append(f"table[{i}] points at slot {slot}, outside the file")
                continue
            if slot in indexed:
                problems.append(f"slot {slot} is indexed twice (table[{indexed[slot]}], table[{i}])")
            indexed[slot] = i
            off = base + slot * SLOT_STRIDE
            state, _, checksum, _, _, vlen, klen, _, _ = SLOT_HEADER.unpack_from(mm, off)
            if state != STATE_LIVE:
                problems.append(f"table[{i}] points at slot {slot}, which is not LIVE")
                continue
            if vlen > MAX_VALUE_BYTES or xxh3_64_intdigest(view[off + BODY_OFFSET:off + VALUE_OFFSET + vlen]) != checksum:
                problems.append(f"slot {slot} fails its checksum")
                continue
            if fingerprint(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]) != fp:
                problems.append(f"table[{i}] has a fingerprint that is not its key's (slot {slot})")
            distance = (i - fp) & mask
            if distance:
                before = table[(i - 1) & mask]
                if not before:
                    problems.append(f"table[{i}] is {distance} from home with an empty position before it")
                elif ((i - 1 - (before >> FINGERPRINT_SHIFT)) & mask) + 1 < distance:
                    problems.append(f"table[{i}] breaks Robin Hood order")
        live = ttl = 0
        next_expiry = math.inf
        for slot in range(self.slot_count):
            off = base + slot * SLOT_STRIDE
            state = _U32.unpack_from(mm, off)[0]
            if state == STATE_LIVE:
                if slot >= self.high_water:
                    problems.append(f"slot {slot} is LIVE at or past high_water {self.high_water}")
                if slot not in indexed:
                    problems.append(f"slot {slot} is LIVE but not in the table")
                live += 1
                expires = SLOT_HEADER.unpack_from(mm, off)[4]
                if expires:
                    ttl += 1
                    next_expiry = min(next_expiry, expires)
            elif state != STATE_FREE:
                problems.append(f"slot {slot} has state {state:#x} outside a batch")
        free, seen, slot_plus_one = 0, set(), self.free_head
        while slot_plus_one:
            slot = slot_plus_one - 1
            if slot in seen or slot >= self.high_water:
                problems.append(f"the free list loops or runs past high_water at slot {slot}")
                break
            seen.add(slot)
            state, slot_plus_one = _FREE.unpack_from(mm, base + slot * SLOT_STRIDE)
            if state != STATE_FREE:
                problems.append(f"slot {slot} is on the free list but not FREE")
            free += 1
        if free + live != self.high_water:
            problems.append(f"{free} free + {live} live slots != high_water {self.high_water}")
        if live != self.live_count:
            problems.append(f"live_count is {self.live_count}, the slots hold {live}")
        if ttl != self.ttl_count:
            problems.append(f"ttl_count is {self.ttl_count}, the slots hold {ttl}")
        if next_expiry < self.next_expiry:
            problems.append(f"next_expiry {self.next_expiry} is after an entry's expiry {next_expiry}")
        return problems
