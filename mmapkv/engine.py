"""The file engine: superblock, slots, records and the hash table, mapped into memory.

It knows bytes, not dicts, and it does not lock: ``Store`` serialises every change.
Nothing per key lives in Python memory; a lookup reads one directory entry, the table
entries it probes and the header of the record that matches.  ``slots.py`` allocates
slots and sub-slots, ``table.py`` is the hash table; this module joins them and owns the
crash model.

Crash model (docs/design.md): the records are the truth; the table, the slot info and the
counters are derived from them.  A record is written whole with one copy into the map
(state word and checksum first); a write cut short fails its checksum.  A delete is one
write that zeroes the state word and the checksum.  The derived structures change in the
map while the store is open and reach the superblock's counters on a clean close; after a
crash (CLEAN unset) ``recover`` rebuilds them from the records.  Four superblock words are
written in place and trusted after a crash: ``file_size``, ``seq_limit`` (sequence numbers
never repeat), ``batch_commit`` (which pending records are committed) and ``floor_seq``
(clear()).

Interrupts: an exception can land between any two bytecodes of a change (Ctrl-C's
``KeyboardInterrupt``, ``MemoryError``...).  ``Store`` runs every change inside
``with engine.change():``; one that ends by any exception but a clean refusal leaves
``changes`` non-zero, and the next use calls ``repair``: exactly the recovery a crash gets.
"""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
import secrets
import stat
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, repeat

import portalocker
from xxhash import xxh3_64_intdigest

from . import legacy
from .errors import (
    CorruptStoreError,
    DiskFullError,
    FormatVersionError,
    InvalidArgumentError,
    MmapKVError,
    StoreAccessError,
    StoreFullError,
    StoreLockedError,
    system_error,
)
from .format import (
    BODY_OFFSET,
    CLASS_BY_UNITS,
    CLASS_COUNT,
    CLASS_SIZES,
    FINGERPRINT_SHIFT,
    FLAG_CLEAN,
    HOME_SHIFT,
    KEY_OFFSET,
    KIND_FREE,
    KIND_SEGMENT,
    MAGIC,
    MAX_FILE_SIZE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PAGE_SIZE,
    RECORD_FIELDS,
    RECORD_HEADER,
    SB_BATCH_COMMIT,
    SB_CHECKSUM,
    SB_FILE_SIZE,
    SB_LAYOUT_CHECKSUM,
    SB_FLAGS,
    SB_FLOOR_SEQ,
    SB_SEQ_LIMIT,
    SLOT_INFO,
    SEGMENT_ENTRIES,
    SLOT_SIZE,
    STATE_FREE,
    STATE_LIVE,
    STATE_PENDING,
    SUPERBLOCK,
    UNIT,
    UNIT_MASK,
    VERSION,
    Geometry,
    class_for,
)
from .forks import ForkRegistry
from .locking import lock_file, opened, sync_directory, unlock_file
from .slots import PER_SLOT, Slots
from .table import HOME_OF_ENTRY, SEGMENT_MASK, SEGMENT_STRIDE, Table
from .tempfiles import remove_abandoned, temporary_path, unlink_if_there

__all__ = ["Engine", "DamagedEntry", "CLEAN_FAILURES", "create_file", "reserve", "append_key"]

if sys.byteorder != "little":  # the table is read through native u64/u16 memoryviews
    raise ImportError("mmapkv's file format is little-endian; this machine is big-endian")

_HEAD = RECORD_HEADER.__class__("<IIQ")    # state, reserved, checksum: a record's first 16 bytes
_BODY = RECORD_HEADER.__class__("<QdHBB")  # seq .. value_flags, as written at BODY_OFFSET
_U32 = RECORD_HEADER.__class__("<I")
# Every store into the map is a slice assignment of bytes packed beforehand (a memcpy:
# each byte goes from its old value straight to its new one), never ``pack_into``, which
# zeroes its target before it writes the fields: a kill in between would leave a 0 the
# file never held, a committed record's state word read as FREE, a slot's kind as free
# (its records lost), a superblock word as 0.
_LIVE = _U32.pack(STATE_LIVE)
_LIVE_FIRST = _LIVE[0]  # a sub-slot whose first byte is not this holds no LIVE record
#: what freeing a record writes over its first 16 bytes: state FREE and no checksum.  The
#: old bytes after them may stay valid; were the state word alone cleared, a later write
#: into the sub-slot cut short after its new state word (a kill mid-copy) would make them
#: a record again (a deleted key back after a crash).
_FREED = bytes(_HEAD.size)
_U64 = RECORD_HEADER.__class__("<Q")
_unpack_record = RECORD_HEADER.unpack_from
#: per class, the ``expires_at`` of every sub-slot of a slot, in one unpack: what a sweep
#: reads (a record's own header, its key, only for the sub-slots that have an expiry)
_EXPIRES_AT = struct.calcsize(RECORD_HEADER.format[:1 + RECORD_FIELDS.index("expires_at")])
_SLOT_EXPIRIES = tuple(struct.Struct("<" + f"{_EXPIRES_AT}xd{size - _EXPIRES_AT - 8}x" * per)
                       for size, per in zip(CLASS_SIZES, PER_SLOT))
_SEARCH_LIMIT = 3        # open attempts when the path is replaced under us (by compact)
_SEQ_RESERVE = 1 << 16   # sequence numbers reserved on disk at a time (one superblock write)
# No sequence number reaches this (a billion writes a second for 146 years): a field at or
# past it is damage, and near 2**64 the next reservation would not fit its u64.
_SEQ_CEILING = 1 << 62
_HALF = (1 << 32) - 1  # each half of layout_checksum (docs/format.md)
_GATHER_AHEAD = 256      # records a gathering pass may move beyond what its write needs
#: Partial slots of a class a gathering pass reads first; the whole list only if those
#: cannot give what the write lacks.  Reading a list of 35,000 slots in Python took up to
#: 105 ms a pass, and a create that gathered at a 1 GiB ceiling up to 851 ms.
_GATHER_WALK = 2048

#: Errors a change raises only after putting everything back as it was: they leave the
#: engine usable.  Any other exception inside a change makes the next use repair first.
CLEAN_FAILURES: tuple[type[BaseException], ...] = (StoreFullError, StoreAccessError)

# A version field above this is damage, not a newer mmapkv: "upgrade mmapkv" would mislead.
_NEWEST_PLAUSIBLE_VERSION = 255


class DamagedEntry(CorruptStoreError):
    """A stored entry failed its checksum (or the table pointed at no record)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def reserve(fd: int, size: int, start: int = 0) -> None:
    """Make the file *size* bytes with its blocks from *start* on allocated, so writes
    through the map can never hit a full disk (which would be a SIGBUS, not an exception)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, start, size - start)
    else:  # pragma: no cover - macOS and Windows: sparse, documented in docs/design.md
        os.ftruncate(fd, size)


def _superblock(geometry: Geometry, *, flags: int, file_size: int, seed: int, seq_limit: int,
                batch_commit: int, floor_seq: int, high_water: int, pool_head: int,
                pool_count: int, live_count: int, ttl_count: int, depth: int,
                next_expiry: float, next_seq: int, heads: list[int], segments: int) -> bytes:
    """The superblock's bytes, checksum included."""
    head = SUPERBLOCK.pack(MAGIC, VERSION, flags, geometry.max_size, file_size, seed, seq_limit,
                           batch_commit, floor_seq, high_water, pool_head, pool_count,
                           live_count, ttl_count, depth, next_expiry, next_seq, *heads,
                           segments, 0, 0)
    return head[:SB_CHECKSUM] + _U64.pack(xxh3_64_intdigest(head[:SB_CHECKSUM])) + head[SB_CHECKSUM + 8:]


def create_file(path: str, max_size: int, *, in_place: bool = False,
                seed: int | None = None) -> tuple[int, int] | None:
    """Write a new, empty, clean store at *path* unless something is there already.
    Returns the ``(st_dev, st_ino)`` of the file if this call made it, else None: a
    caller that may delete what it made tells it from a file put at *path* since.

    The file is built under a temporary name (locked, magic number first, see
    ``tempfiles``) and linked into place, so a crash never leaves a half-initialised file
    at *path*, and an existing file is never overwritten.  ``in_place=True`` builds it at
    *path* itself, which must be a fresh temporary name (compact uses it).  The new store
    has one table segment, in slot 0, and a random hash seed unless *seed* is given.
    """
    geometry = Geometry(max_size)
    tmp = path if in_place else temporary_path(path, "create")
    made: tuple[int, int] | None = None
    try:
        held = opened(tmp, new=True)
    except BaseException as exc:
        if not isinstance(exc, OSError):  # an interrupt just after the open made it: ours
            unlink_if_there(tmp)
        raise
    try:
        fd = held.fileno()
        try:  # a fresh name: nobody else can hold it, so this fails only on a broken system
            portalocker.lock(fd, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except (portalocker.LockException, OSError) as exc:
            raise StoreAccessError(getattr(exc, "errno", None) or errno.EIO,
                                   f"cannot lock the new file {tmp}: {exc}") from None
        header = _superblock(geometry, flags=FLAG_CLEAN, file_size=geometry.initial_size,
                             seed=secrets.randbits(64) if seed is None else seed, seq_limit=1, batch_commit=0,
                             floor_seq=0, high_water=1, pool_head=0, pool_count=0,
                             live_count=0, ttl_count=0, depth=0, next_expiry=math.inf,
                             next_seq=1, heads=[0] * CLASS_COUNT, segments=1)
        os.pwrite(fd, header, 0)
        try:
            reserve(fd, geometry.initial_size)
        except OSError as exc:
            raise DiskFullError(exc.errno, f"cannot create {path}: {exc.strerror}") from None
        # Slot 0 is the table's first segment (its entries are the file's zeros); the
        # directory's entry 0 already names slot 0.
        os.pwrite(fd, bytes([KIND_SEGMENT]), geometry.info_offset)
        os.fsync(fd)
        made_file = os.fstat(fd)
        if in_place:
            made = (made_file.st_dev, made_file.st_ino)
        else:
            try:
                os.link(tmp, path)
                made = (made_file.st_dev, made_file.st_ino)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except FileNotFoundError:
                pass  # a cleaner took our temporary file for abandoned: the caller retries
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # FAT and exFAT have no hard links: there is no way to put a complete file
                # at the path without a moment in which another could be overwritten
                raise StoreAccessError(exc.errno, f"cannot create the store {path}: its file system "
                                       "cannot make hard links (FAT or exFAT?), which creating a "
                                       "store needs; put the store on another file system") from None
    finally:
        # The name first, then the descriptor: closed first, an interrupt between the two
        # left the temporary name as a second link to the new store.  Should one skip the
        # close, the FileIO closes it (and lets the lock go) when it is dropped.  The
        # unlink is inline: a call into a function of ours is a place Ctrl-C lands.
        try:
            if not in_place or not made:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        finally:
            held.close()
    if not in_place:  # (a temporary file's name need not survive: its rename is synced)
        sync_directory(path)  # the new name itself survives power loss
    return made


def _a_directory(path: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{path} is a directory; give the path of a store file")


def _reversed(value: int, bits: int) -> int:
    """The low *bits* bits of *value* in reverse order."""
    return int(f"{value & ((1 << bits) - 1):0{bits}b}"[::-1], 2)


def _segment_keys(engine: Engine, segment: int, now: float, after: int) -> tuple[list[str], int, int]:
    """``Engine.scan``'s loop over one segment: its intact, unexpired keys whose place in
    the order is at *after* or later, the number of damaged entries met, and the number of
    entries met.  An entry is damaged when its record is not LIVE, fails its checksum, or
    holds a key whose fingerprint is not the entry's (a damaged key byte): what ``read``
    could not read.  An expired entry is checked too: a damaged expiry must not hide a
    damaged record.  The header is read once (``is_intact`` read it again: ``keys()`` of a
    million keys runs this a million times)."""
    table, mm, view, seed = engine.table, engine._mm, engine._view, engine.seed
    bits, slots_offset = table.max_depth, engine._slots_offset
    base = table.base(segment)
    keys: list[str] = []
    damaged = met = 0
    for entry in filter(None, table.q[base:base + SEGMENT_ENTRIES].tolist()):  # C skips the empties
        fp = entry >> FINGERPRINT_SHIFT
        if after and _reversed(fp, bits) < after:
            continue  # listed by an earlier step, when the table was split finer
        met += 1
        off = slots_offset + ((entry & UNIT_MASK) - 1) * UNIT
        try:
            state, _, checksum, _, expires, vlen, klen, _ = _unpack_record(mm, off)
        except struct.error:  # past the end of the map
            damaged += 1
            continue
        key = mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]
        if state != STATE_LIVE or xxh3_64_intdigest(key, seed) >> FINGERPRINT_SHIFT != fp \
                or not _checksum_holds(view, off, checksum, vlen, klen):
            damaged += 1
        elif not expires or now < expires:
            try:  # append_key, inline: a call per key cost keys() about a tenth
                keys.append(key.decode())
            except UnicodeDecodeError:
                damaged += 1
    return keys, damaged, met


def _checksum_holds(view: memoryview, off: int, checksum: int, vlen: int, klen: int) -> bool:
    """``Engine.is_intact`` given the record's header fields, already read."""
    return bool(vlen <= MAX_VALUE_BYTES and klen <= MAX_KEY_BYTES and
                xxh3_64_intdigest(view[off + BODY_OFFSET:off + KEY_OFFSET + klen + vlen], off) == checksum)


def append_key(keys: list[str], key: bytes) -> int:
    """Append *key* to a listing of keys; return 1 (one damaged entry) if it is not UTF-8,
    which only a forged record can hold (mmapkv writes ``str`` keys), else 0."""
    try:
        keys.append(key.decode("utf-8"))
    except UnicodeDecodeError:
        return 1
    return 0


# Every engine of this process, for a forked child to let go of their files: a Store's is
# let go by Store too, but an engine not yet a Store's (another thread inside Store(), a
# compact's new file) kept its locked descriptor in the child, and with it the lock, for
# as long as the child lived after the parent died.  Its map and descriptor are closed
# without unlocking: an ``flock`` belongs to the open file description the parent shares.
_ENGINES: ForkRegistry[Engine] = ForkRegistry(lambda engine: engine._release(release_lock=False))


class Engine:
    """One open store file.  Not thread-safe on its own: ``Store`` holds a lock around it."""

    #: recovery builds its table whole (``Table.partition``), 8 bytes of memory a record
    #: while it runs (more where a ceiling sends it back to inserts, which sorts them in a
    #: list), for a file whose record slots hold at most this many records (32 MiB of
    #: entries); past it, entry by entry as it finds them, remembering none, 2.6 times slower
    whole_table_limit = 1 << 22

    # Counters: exact while open; written to the superblock by a clean close.
    file_size: int
    slot_count: int
    live_count: int
    ttl_count: int
    next_expiry: float
    next_seq: int
    # What cleanup reads, set before __init__ runs: an interrupt can stop __init__ at any
    # bytecode, and the half-built engine is still closed (or collected) afterwards.
    _fd: int = -1
    _mapped: bool = False
    #: Records go in through the map (a copy, no syscall) once ``_mark_dirty`` has made sure
    #: every block of the file is allocated; else with ``pwrite`` (see ``_write_at``).
    _map_writes: bool = False
    #: Per slot, an expiry no record in it comes before (``inf``: none), so a sweep visits
    #: only the slots where a TTL may have passed; a bound, not exact (a deleted record's
    #: expiry stays in it until its slot's next visit).  Memory only, 8 bytes a slot: None
    #: until a sweep builds it and again after a rebuild, which may have moved any record.
    _slot_expiry: array[float] | None = None
    #: Where the next step of a sweep that stopped short resumes reading the bounds.
    _sweep_from = 0
    #: Expired records one step of a sweep frees (and the rest of the last slot it reads):
    #: about 25 ms.  A million keys that expired together took 13 s in one call, every other
    #: thread waiting; in steps, a write sweeps only until it has room, and len() lets the
    #: other threads in between steps.
    sweep_step = 2048

    def __init__(self, path: str, *, max_size: int | None = None, readonly: bool = False,
                 durable: bool = False, lock_timeout: float = 0.0, create: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self.durable = durable
        self.was_clean = False
        #: open change brackets; non-zero outside a change means one was interrupted
        self.changes = 0
        #: bumped when a change begins and when it ends: a reader that takes no lock reads
        #: it before and after, and trusts what it read only if it did not move (a seqlock)
        self.generation = 0
        #: set by compact just before it renames its new file over this one
        self.successor: Engine | None = None
        #: set by ``Store._discard`` before it deletes the file: a close then says nothing
        #: of a deletion it made itself
        self.discarded = False
        #: this open created the file it holds (not one another process made meanwhile)
        self.made = False
        #: the slot info's half of the clean close's layout_checksum, until a call checks it
        self.info_to_check = 0
        self._fd = -1
        self._file: io.FileIO | None = None  #: owns _fd (``opened``)
        self._mapped = False
        self._dirty = False
        _ENGINES.add(self)  # before it has a descriptor: a fork may come at any point
        try:
            self._open_and_lock(max_size, lock_timeout, create)  # sets _fd
            self._load_or_raise(max_size)
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------- opening

    def _open_and_lock(self, max_size: int | None, lock_timeout: float, create: bool) -> None:
        try:
            self._open_and_lock_path(max_size, lock_timeout, create)
        except MmapKVError:
            raise
        except OSError as exc:  # DiskFullError too: creating it needs room
            raise system_error(exc, f"cannot open the store {self.path}") from None

    def _open_and_lock_path(self, max_size: int | None, lock_timeout: float, create: bool) -> None:
        """Open and lock the file at the path (creating it if allowed) into ``_fd``.  The
        descriptor is ``_file``'s from its open on, so whatever exception follows,
        ``_release`` or the ``FileIO``'s finaliser closes it: returned up the stack instead,
        an interrupt just after the lock kept it open, and the store locked, for the rest
        of the process."""
        path = self.path
        try:
            os.fsencode(path)  # else each os call below raises a bare UnicodeEncodeError
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"{path!r} cannot name a file: {exc.reason}") from None
        if os.path.isdir(path):
            raise _a_directory(path)
        if os.path.exists(path) and not os.path.isfile(path):  # open() of a FIFO would block
            raise InvalidArgumentError(f"{path} is not a regular file")
        if os.path.islink(path) and not os.path.exists(path):
            try:
                os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InvalidArgumentError(f"{path} is a symbolic link that leads back to itself "
                                               "(a loop of links)") from None
            raise InvalidArgumentError(f"{path} is a symbolic link to {os.readlink(path)}, "
                                       "which does not exist")
        for _ in range(_SEARCH_LIMIT):
            made = None
            if create and not self.readonly and not os.path.exists(path):
                parent = os.path.dirname(path)
                if parent:
                    try:
                        os.makedirs(parent, mode=0o700, exist_ok=True)
                    except (FileExistsError, NotADirectoryError):  # EEXIST said "File exists"
                        raise StoreAccessError(errno.ENOTDIR, f"cannot make the directory {parent} for the "
                                               f"store {path}: a file that is not a directory is in "
                                               "its way") from None
                made = create_file(path, MAX_FILE_SIZE if max_size is None else max_size)
            try:
                self._file = opened(path, readonly=self.readonly)
            except FileNotFoundError:
                if create and not self.readonly:
                    continue  # removed between create and open: make it again
                raise StoreAccessError(errno.ENOENT, f"no store at {path}") from None
            except IsADirectoryError:  # made one since the check above
                raise _a_directory(path) from None
            self._fd = fd = self._file.fileno()
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise InvalidArgumentError(f"{path} is not a regular file")
            if lock_file(fd, path, shared=self.readonly, timeout=lock_timeout):
                self.made = made == (found.st_dev, found.st_ino)
                return
            self._fd = -1  # replaced under us: never locked, try the path again
            self._file.close()
            self._file = None
        raise StoreLockedError(f"{path} keeps being replaced while opening it; try again")

    def _load_or_raise(self, max_size: int | None) -> None:
        """``_load``, an ``OSError`` of the system's own (``EIO`` reading the superblock)
        raised as mmapkv's, with the path."""
        try:
            self._load(max_size)
        except OSError as exc:
            if isinstance(exc, MmapKVError):
                raise
            raise system_error(exc, f"cannot read the store {self.path}") from None

    def _load(self, max_size: int | None) -> None:
        fd, path = self._fd, self.path
        actual = os.fstat(fd).st_size
        head = os.pread(fd, SUPERBLOCK.size, 0)
        if head[:8] != MAGIC:
            raise CorruptStoreError(f"{path} is not an mmapkv store (no mmapkv magic number "
                                    f"in its first bytes; {actual:,} bytes long); it was left untouched")
        if len(head) < 12:
            raise CorruptStoreError(f"{path} starts with mmapkv's magic number but is only {actual:,} "
                                    "bytes long, too short for a store; it was left untouched")
        version = _U32.unpack_from(head, 8)[0]
        if version == 2:
            problem = legacy.superblock_problem(os.pread(fd, PAGE_SIZE, 0), actual)
            if problem is not None:  # compact would convert it into an empty store
                raise CorruptStoreError(f"{path} says it has mmapkv format version 2, but it is not a "
                                        f"version-2 store: {problem}; it was left untouched")
            raise FormatVersionError(
                f"{path} has mmapkv format version 2; this mmapkv reads version {VERSION}. "
                f"Convert it with `mmapkv compact --path {path}` (it keeps every key; the file "
                "is left untouched until then)")
        if version == 1:  # unaligned slots; no release wrote it (docs/format.md)
            raise FormatVersionError(f"{path} has mmapkv format version 1, a development format "
                                     f"this mmapkv no longer reads (it reads version {VERSION})")
        if VERSION < version <= _NEWEST_PLAUSIBLE_VERSION:
            raise FormatVersionError(f"{path} has mmapkv format version {version}; this mmapkv "
                                     f"reads version {VERSION} (upgrade mmapkv to open it)")
        if version != VERSION:
            raise CorruptStoreError(f"{path} has format version {version:,}, which no mmapkv wrote "
                                    "(damaged, or not an mmapkv store); it was left untouched")
        if len(head) < SUPERBLOCK.size:
            raise CorruptStoreError(f"{path} is truncated: {actual:,} bytes, shorter than its "
                                    f"{SUPERBLOCK.size}-byte superblock")
        sb = SUPERBLOCK.unpack(head)
        (_, _, flags, stored_max, file_size, seed, seq_limit, batch, floor, hwm, pool_head,
         pool_count, live, ttl, depth, next_expiry, next_seq) = sb[:17]
        heads, segments, checksum = list(sb[17:17 + CLASS_COUNT]), sb[17 + CLASS_COUNT], sb[18 + CLASS_COUNT]
        layout = sb[19 + CLASS_COUNT]
        if not (Geometry.smallest_max_size() <= stored_max <= MAX_FILE_SIZE):
            raise CorruptStoreError(f"{path}: superblock max_size {stored_max} is out of range")
        if max_size is not None and max_size != stored_max:
            raise InvalidArgumentError(
                f"{path} was created with max_size={stored_max:,}; it cannot be opened with "
                f"max_size={max_size:,} (leave max_size=None, or compact into a new file)")
        geometry = self.geometry = Geometry(stored_max)
        clean = bool(flags & FLAG_CLEAN) and xxh3_64_intdigest(head[:SB_CHECKSUM]) == checksum
        # Marking the store dirty clears CLEAN and the checksum together, so CLEAN with a
        # checksum that fails is no crash: a field of the superblock is damaged.
        damaged = bool(flags & FLAG_CLEAN) and not clean
        if not clean and not geometry.is_valid_size(file_size) and geometry.is_valid_size(actual):
            file_size = actual  # a damaged size field: the file's own size is one it can have
        elif damaged and geometry.is_valid_size(actual):
            file_size = actual  # closed cleanly, so no growth was cut short: never cut it back
        if not geometry.is_valid_size(file_size):
            raise CorruptStoreError(f"{path}: superblock file size {file_size:,} is not one "
                                    f"this store can have")
        if actual < file_size:
            raise CorruptStoreError(f"{path} is truncated: {actual:,} bytes, its superblock says "
                                    f"{file_size:,}")
        if actual > file_size:
            if clean:
                raise CorruptStoreError(
                    f"{path} is {actual:,} bytes, but it was closed cleanly at {file_size:,}: something "
                    f"other than mmapkv wrote past its end. It was left untouched; if those "
                    f"{actual - file_size:,} bytes are not wanted, `truncate -s {file_size} {path}` "
                    "makes it the store again")
            if not self.readonly:  # a growth that did not finish before a crash: undo it
                os.ftruncate(fd, file_size)
        if not self.readonly:
            self._allocate_holes(file_size)
        self.seed = seed
        self.slots = Slots(geometry.info_offset, geometry.slots_offset)
        self.table = Table(self.slots, geometry.slots_offset, geometry.max_depth)
        self._map(file_size)
        slots = self.slots
        if clean and not (hwm <= self.slot_count and pool_head <= hwm and pool_count <= hwm
                          and ttl <= live and depth <= geometry.max_depth
                          and all(h <= hwm for h in heads) and 1 <= segments <= hwm
                          and (not layout or layout & _HALF == self._directory_checksum(depth))):
            clean = False  # damaged since the clean close: recover, as after a crash
        # The slot info's half is checked by the first call that takes the lock (check_slot_info):
        # reading 1.3 MiB of it here made a cold open of a full 1 GiB store take 20 ms
        self.info_to_check = layout >> 32 if clean else 0
        self.was_clean = clean
        slots.high_water, slots.pool_head, slots.pool_count, slots.heads = hwm, pool_head, pool_count, heads
        self.table.set_depth(depth if depth <= geometry.max_depth else 0)
        self.table.segment_count = segments
        self.live_count, self.ttl_count, self.next_expiry = live, ttl, next_expiry
        self._slot_expiry = None
        self.next_seq, self.seq_limit = next_seq, seq_limit
        self.batch_commit, self.floor_seq = batch, floor
        if self.readonly:
            return
        self._dirty = False
        if not clean:
            self.recover(superblock_damaged=damaged)
            remove_abandoned(path)  # what a process killed while compacting left beside it
        elif self.made:  # what a process killed while creating the store left: no open recovers
            remove_abandoned(path)

    def _directory_checksum(self, depth: int) -> int:
        """``layout_checksum``'s low half, of the map now: the directory's entries at global
        depth *depth* (docs/format.md).  With the high half, a clean close vouches for the
        pointers that every lookup and allocation follows without another check."""
        g = self.geometry
        return xxh3_64_intdigest(self._view[g.dir_offset:g.dir_offset + 2 * (1 << depth)]) & _HALF or 1

    def _slot_info_checksum(self) -> int:
        """``layout_checksum``'s high half, of the map now: the slot info of the file's slots."""
        g = self.geometry
        return xxh3_64_intdigest(self._view[g.info_offset:g.info_offset + SLOT_INFO.size * self.slot_count]) \
            & _HALF or 1

    def check_slot_info(self) -> None:
        """Recover, as after a crash, if the slot info is not what the last clean close
        vouched for: the session's first call that takes the lock runs this, before
        anything follows the slot info (a read without the lock never does).  Call with
        the lock held."""
        if self._slot_info_checksum() != self.info_to_check:
            with self.change():
                self.recover()  # (which clears info_to_check)
        self.info_to_check = 0

    def mark_dirty(self) -> None:
        """Clear CLEAN on disk (if not done yet this session): the next open recovers."""
        if not self._dirty:
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Before the first change of a session: clear CLEAN on disk, so that a crash
        from here on makes the next open recover.  Deferred from open to here because
        the msync costs milliseconds on a busy disk, and a session that only reads
        never pays it."""
        self._mm[SB_FLAGS:SB_FLAGS + 4] = bytes(4)
        # and the checksum: one flipped bit must not make the last clean close's counters
        # look valid again after a crash
        self._mm[SB_CHECKSUM:SB_CHECKSUM + 8] = bytes(8)
        self._mm.flush(0, PAGE_SIZE)
        self._map_writes = self._blocks_reserved()
        self.slots.zero_file = self._file if self._map_writes else None
        self._dirty = True

    def _allocate_holes(self, file_size: int) -> None:
        """Allocate the holes of a file copied sparse (``cp --sparse=always``, ``rsync
        -S``), before anything goes through the map: on a full disk a store into a hole
        (on tmpfs even a read of one) is a SIGBUS, which kills the process where no
        exception handler can see it.  A disk without room for them refuses the open
        instead.  One ``fstat`` when every block is there (every store mmapkv made):
        ``SEEK_HOLE`` is asked only when fewer blocks than bytes are allocated, since on
        tmpfs it walks the file's pages (19 us at 2 MB) and on ext4 it calls a
        preallocated, never-written extent a hole, as mmapkv's growth leaves them."""
        if not self._blocks_missing(file_size):
            return
        try:
            hole = os.lseek(self._fd, 0, os.SEEK_HOLE)
        except (AttributeError, OSError):  # no SEEK_HOLE here: the first change allocates
            return
        if hole >= file_size:
            return
        try:
            reserve(self._fd, file_size)
        except OSError as exc:
            raise system_error(exc, f"cannot open {self.path}: it has holes from offset {hole:,} on "
                               "(a sparse copy?), and a store whose blocks are not all allocated "
                               "could crash the process on a full disk; allocating them failed") from None

    def _blocks_missing(self, size: int) -> bool:
        """True if fewer blocks than *size* bytes are allocated to the file (a hole)."""
        return os.fstat(self._fd).st_blocks * 512 < size

    def _blocks_reserved(self) -> bool:
        """Allocate any block of the file that is not (a copy made sparse by ``cp``, a file
        from a system without ``posix_fallocate``); True if every one now is.  Only then
        can a store into the map never meet a full disk, which would be a SIGBUS, not an
        exception.  An ``fstat`` when every block is counted already (every file mmapkv
        made, and a sparse copy once its open allocated it): ``posix_fallocate`` over a
        full 1 GiB store walks its extents for 166 ms on ext4, which every session's first
        change paid."""
        if not hasattr(os, "posix_fallocate"):
            return False
        try:
            if self._blocks_missing(self.file_size):
                os.posix_fallocate(self._fd, 0, self.file_size)
            return True
        except OSError:
            return False

    def _map(self, size: int) -> None:
        mm = self._new_map(size)
        self._mm = mm
        self._mapped = True
        self._attach(size)

    def _new_map(self, size: int) -> mmap.mmap:
        """A map of the file's first *size* bytes.  ``mmap`` duplicates the descriptor, so
        it fails when the process is out of descriptors (or of address space)."""
        access = mmap.ACCESS_READ if self.readonly else mmap.ACCESS_WRITE
        try:
            return mmap.mmap(self._fd, size, access=access)
        except OSError as exc:
            raise system_error(exc, f"cannot map {size:,} bytes of the store {self.path}") from None

    def _attach(self, size: int) -> None:
        """Point the views, the slots and the table at the map, now *size* bytes."""
        mm = self._mm
        if hasattr(mmap, "MADV_RANDOM"):
            # No readahead: what is resident tracks what lookups touch (docs/design.md).
            mm.madvise(mmap.MADV_RANDOM)
        g = self.geometry
        self._view = memoryview(mm)
        self._q = self._view.cast("Q")
        self._dir = self._view[g.dir_offset:g.dir_offset + 2 * (1 << g.max_depth)].cast("H")
        self.file_size = size
        self.slot_count = g.slot_count(size)
        self._slots_offset = g.slots_offset
        self.slots.attach(mm, self.slot_count)
        self.table.attach(self._q, self._dir)

    def _remap(self, size: int) -> None:
        """Map the file, grown to *size* bytes.  In place with ``mremap`` where it can be:
        that moves the page tables, where unmapping the old map must undo every page of it
        that was written through (32 ms at 640 MiB with one store per page, 192 ms in the
        1 GiB fill: a pause on the create that grows).  ``mremap`` is refused while a view
        of the map is held outside the engine (a lock-free reader mid-read, or a value
        view not yet decoded) and does not exist on every system: then a new map, made
        before the old one is closed, so that if it cannot be made (no descriptor left:
        ``StoreAccessError``) the old map stands as it was."""
        self._release_views()
        try:
            self._mm.resize(size)
        except (BufferError, OSError, SystemError, ValueError):
            try:
                mm = self._new_map(size)  # before the old one goes: a failure keeps it
            except BaseException:
                self._attach(self.file_size)
                raise
            self._switch_map(mm)
        self._attach(size)

    def _switch_map(self, mm: mmap.mmap) -> None:
        """Put *mm*, made while the old map still stood, in its place (``_attach`` next)."""
        self._unmap()
        self._mm = mm
        self._mapped = True

    def _release_views(self) -> None:
        for name in ("_q", "_dir", "_view"):  # an interrupted _map may not have made them all
            view = self.__dict__.get(name)
            if view is not None:
                view.release()

    def _unmap(self) -> None:
        if not self._mapped:
            return
        self._mapped = False  # first: an interrupt below must not leave a closed map "mapped"
        self._release_views()
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
            try:
                self.mark_clean()
                lost = None if self.discarded else self._lost()
            except OSError as exc:  # EIO from msync: the lock and descriptor go all the same
                self._release(release_lock)
                if isinstance(exc, MmapKVError):  # mark_clean's: the file was cut short
                    raise
                raise system_error(exc, f"cannot sync {self.path} while closing it (the next "
                                   "open recovers it, as after a crash)") from None
            if lost:
                self._release(release_lock)
                raise lost
        self._release(release_lock)

    def mark_clean(self) -> None:
        """Sync everything, then write the counters and the CLEAN flag to the superblock
        and sync it: an open now needs no recovery.  The next change clears it again.
        A file longer than the superblock says (a cut back that failed) is cut first: an
        open refuses a clean file with bytes past its end; failing, it stays unclean."""
        size = os.fstat(self._fd).st_size
        if size < self.file_size:  # never marked clean: it is not the store it says it is
            raise self._cut_short(size)
        if size > self.file_size:
            os.ftruncate(self._fd, self.file_size)
        self._mm.flush()
        slots = self.slots
        header = _superblock(
            self.geometry, flags=FLAG_CLEAN, file_size=self.file_size, seed=self.seed,
            seq_limit=self.seq_limit, batch_commit=self.batch_commit, floor_seq=self.floor_seq,
            high_water=slots.high_water, pool_head=slots.pool_head, pool_count=slots.pool_count,
            live_count=self.live_count, ttl_count=self.ttl_count, depth=self.table.depth,
            next_expiry=self.next_expiry, next_seq=self.next_seq, heads=slots.heads,
            segments=self.table.segment_count)
        layout = _U64.pack(self._slot_info_checksum() << 32 | self._directory_checksum(self.table.depth))
        header = header[:SB_LAYOUT_CHECKSUM] + layout + header[SB_LAYOUT_CHECKSUM + 8:]
        self._mm[SB_FLAGS:SB_FLAGS + 4] = b"\0\0\0\0"
        self._mm[SB_FLAGS + 4:SUPERBLOCK.size] = header[SB_FLAGS + 4:]
        self._mm[:SB_FLAGS + 4] = header[:SB_FLAGS + 4]  # CLEAN last, once the rest is there
        self._mm.flush(0, PAGE_SIZE)
        self._dirty = False

    def _release(self, release_lock: bool = True) -> None:
        # A compact interrupted past its rename and never repaired (the Store closed or
        # dropped instead) leaves its new file open and locked here: it goes too, or the
        # lock outlives the Store for as long as anything (a kept traceback) holds the
        # engine.  Its file is complete (marked clean before the rename), or it is a
        # temporary file the next open removes.
        successor, self.successor = self.successor, None
        if successor is not None:
            successor._release(release_lock)
        self._unmap()
        file = self._file
        if file is not None:
            if release_lock and not file.closed:
                unlock_file(file.fileno())  # _fd may not be set yet: an interrupted open
            # Interrupted anywhere here, the FileIO stays ours: closed, or closed by its
            # finaliser when the engine goes (the last word on the lock), never twice.
            # The number goes first: kept past the close (an interrupt between the two),
            # it may name another file by the time anything reads it (Store._repair).
            self._fd = -1
            file.close()
            self._file = None

    def flush(self) -> None:
        """msync the whole map: what was written survives power loss from here on (unless
        another program deleted the file or cut it short: then ``StoreAccessError`` says so)."""
        try:
            self._mm.flush()
            lost = self._lost()
        except OSError as exc:
            raise system_error(exc, f"cannot sync {self.path}") from None
        if lost:
            raise lost

    def _lost(self) -> StoreAccessError | None:
        """The error to raise if the open file has no name left: another program deleted
        it (or its directory), and what it holds goes when it is closed; or if another
        program cut it short.  A sync cannot keep that promise, so it must not look as if
        it had."""
        found = os.fstat(self._fd)
        if found.st_size < self.file_size:
            return self._cut_short(found.st_size)
        if found.st_nlink:
            return None
        return StoreAccessError(errno.ENOENT, f"{self.path} was deleted while this Store had it open "
                                "(by another program?): what it held is lost once it is closed")

    def _cut_short(self, size: int) -> StoreAccessError:
        """A sync's error for a file another program truncated under the map: the records
        past *size* are gone (and touching their pages raises SIGBUS)."""
        return StoreAccessError(errno.EIO, f"{self.path} was cut to {size:,} bytes while this Store had "
                                f"it open (by another program?); the store is {self.file_size:,}: what "
                                "was past the cut is lost")

    def _changed(self) -> None:
        if self.durable:
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
        self.generation += 1  # first: a reader without the lock sees a change has begun
        self.changes += 1

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # generation first, as on entry: a reader that sees ``changes`` back at 0 then
        # sees a generation other than the one it began with (see Store.get)
        self.generation += 1
        if exc_type is None or issubclass(exc_type, CLEAN_FAILURES):
            self.changes -= 1

    def repair(self) -> None:
        """Bring the store back to a consistent state after an interrupted change.

        The same as opening after a crash: reload the superblock and, unless nothing was
        changed since the file was last clean, rebuild the table, slot info and counters
        from the records (``recover``).  O(file) then.  Interrupted itself, it simply runs
        again at the next use.
        """
        self.generation += 1
        next_seq = self.next_seq
        self._unmap()
        self._load_or_raise(None)  # failing, it is left to repair at the next use again
        self.next_seq = max(self.next_seq, next_seq)  # sequence numbers never repeat
        self.generation += 1
        self.changes = 0

    # ----------------------------------------------------------------- keys

    def fingerprint(self, key: bytes) -> int:
        """The part of ``xxh3_64(key, seed)`` a table entry keeps."""
        return xxh3_64_intdigest(key, self.seed) >> FINGERPRINT_SHIFT

    def slot_of(self, offset: int) -> int:
        return (offset - self._slots_offset) // SLOT_SIZE

    def record_offset(self, position: int) -> int:
        """The file offset of the record the table entry at *position* points at."""
        return self._slots_offset + ((self._q[position] & UNIT_MASK) - 1) * UNIT

    def _entry(self, fp: int, offset: int) -> int:
        return fp << FINGERPRINT_SHIFT | ((offset - self._slots_offset) // UNIT + 1)

    # ----------------------------------------------------------------- lookups

    def find(self, key: bytes, fp: int) -> int:
        """Position (in the map as u64s) of *key*'s table entry, or -1.  No checksum."""
        q, mm, table = self._q, self._mm, self.table
        segment = self._dir[fp & table.dmask]
        if segment >= self.slot_count:
            raise CorruptStoreError(f"{self.path}: a directory entry points past the end of the file")
        base = table.q0 + segment * SEGMENT_STRIDE
        i = (fp >> HOME_SHIFT) & SEGMENT_MASK
        distance = 0
        limit = self.file_size - KEY_OFFSET
        while True:
            entry = q[base + i]
            if not entry:
                return -1
            if entry >> FINGERPRINT_SHIFT == fp:
                off = self._slots_offset + ((entry & UNIT_MASK) - 1) * UNIT
                if off > limit:
                    raise CorruptStoreError(f"{self.path}: a table entry points past the end of the file")
                if mm[off + KEY_OFFSET - 2] == len(key) and mm[off + KEY_OFFSET:off + KEY_OFFSET + len(key)] == key:
                    return base + i
            if (i - (entry >> HOME_OF_ENTRY)) & SEGMENT_MASK < distance:
                return -1
            i = (i + 1) & SEGMENT_MASK
            distance += 1

    def get(self, key: bytes, fp: int) -> tuple[memoryview, int, float] | None:
        """Find *key* and return its value bytes (a view into the map: decode it before
        the next change), codec flags and expiry, after checking the record's checksum;
        or None.  The read hot path: ``find`` and the record read fused into one loop.

        :raises DamagedEntry: the record fails its checksum (``recover`` drops it).
        """
        q, mm, table = self._q, self._mm, self.table
        segment = self._dir[fp & table.dmask]
        if segment >= self.slot_count:
            raise DamagedEntry(f"{self.path}: a directory entry points past the end of the file", -1)
        base = table.q0 + segment * SEGMENT_STRIDE
        i = (fp >> HOME_SHIFT) & SEGMENT_MASK
        distance = 0
        while True:
            entry = q[base + i]
            if not entry:
                return None
            if entry >> FINGERPRINT_SHIFT == fp:
                off = self._slots_offset + ((entry & UNIT_MASK) - 1) * UNIT
                try:
                    state, _, checksum, _, expires, vlen, klen, flags = _unpack_record(mm, off)
                except struct.error:  # past the end of the map (not Exception: a MemoryError
                    # or KeyboardInterrupt here is not damage, and must not be taken for it)
                    raise DamagedEntry(f"{self.path}: a table entry points past the end of the file",
                                       off) from None
                if klen == len(key) and mm[off + KEY_OFFSET:off + KEY_OFFSET + klen] == key:
                    view = self._view
                    end = off + KEY_OFFSET + klen + vlen
                    if state != STATE_LIVE or vlen > MAX_VALUE_BYTES or \
                            xxh3_64_intdigest(view[off + BODY_OFFSET:end], off) != checksum:
                        raise DamagedEntry(f"{self.path}: the record at offset {off} fails its "
                                           "checksum", off)
                    return view[off + KEY_OFFSET + klen:end], flags, expires
            if (i - (entry >> HOME_OF_ENTRY)) & SEGMENT_MASK < distance:
                return None
            i = (i + 1) & SEGMENT_MASK
            distance += 1

    def expires_at(self, position: int) -> float:
        """The expiry of the record the entry at *position* points at (0.0 = never)."""
        if not self.ttl_count:  # no record has one: skip reading it
            return 0.0
        expires: float = RECORD_HEADER.unpack_from(self._mm, self.record_offset(position))[4]
        return expires

    def is_intact(self, off: int) -> bool:
        """True if the record at *off* passes its checksum (what ``get`` checks)."""
        try:
            _, _, checksum, _, _, vlen, klen, _ = _unpack_record(self._mm, off)
        except struct.error:  # past the end of the map
            return False
        return _checksum_holds(self._view, off, checksum, vlen, klen)

    # ----------------------------------------------------------------- room

    def room_for(self, record_sizes: Sequence[int], fps: Sequence[int], *, grow: bool = True) -> bool:
        """Make room for new records of these sizes and table entries for these
        fingerprints: grow the file if that helps (and *grow*).  False if there is no
        room (the caller may reclaim expired records and ask again)."""
        slots = self.slots
        data, want, must = self._slots_wanted(record_sizes, fps)
        # What the writes that follow must find free: the slots their records take (each
        # taken gives one back, _take_record) and the splits their entries force
        self.table.reserve = must + data
        if not grow:
            return slots.free_slots() >= data + want
        if slots.free_slots() + self.geometry.max_slots - self.slot_count < data + must:
            return False  # not even at the ceiling: refuse before growing
        start = self.file_size
        while slots.free_slots() < data + want:
            try:
                if not self.grow():
                    break
            except DiskFullError:
                if slots.free_slots() < data + must:
                    self._give_back(start)  # the growths before it serve nothing now
                    raise
                break  # the slots table splits would like: they can wait for a fuller disk
        return slots.free_slots() >= data + must

    def _give_back(self, size: int) -> bool:
        """Shrink the file to *size* bytes after growths made for writes that are refused
        (a full disk met at a later growth): the disk space is the user's again, and the
        store is as before.  The slots past *size* are new and empty.  A new map first (not
        ``mmap.resize``, which cuts the file before it remaps, and if the remap then failed
        would leave the old map longer than the file), then the superblock, then the file:
        interrupted, the store repairs as after a crash, which cuts back a file longer than
        its superblock says.  A map that cannot be made leaves the file grown, a valid
        store.  True if it shrank."""
        if self.file_size <= size:
            return False
        try:
            mm = self._new_map(size)  # before the old one goes: a failure keeps it
        except CLEAN_FAILURES:
            return False
        self._switch_map(mm)
        self._attach(size)
        self._mm[SB_FILE_SIZE:SB_FILE_SIZE + 8] = _U64.pack(size)
        self._changed()
        self._cut_back(size)
        return True

    def _slots_wanted(self, record_sizes: Sequence[int], fps: Sequence[int]) -> tuple[int, int, int]:
        """Whole slots these records take, and the splits their entries want and must
        have (see ``room_for``)."""
        data = self.slots.slots_needed(Counter(map(class_for, record_sizes)))
        want, must = self.table.needs(fps)
        return data, max(want, must), must  # want is an estimate; it never falls below must

    def slots_wanted(self, record_sizes: Sequence[int], fps: Sequence[int]) -> tuple[int, int]:
        """The whole slots these records take, and the splits their entries must have:
        what a refusal says is missing."""
        data, _, must = self._slots_wanted(record_sizes, fps)
        return data, must

    def slots_short(self, record_sizes: list[int], fps: list[int]) -> int:
        """How many more free slots these records and their entries must have."""
        return max(0, sum(self.slots_wanted(record_sizes, fps)) - self.slots.free_slots())

    def grow(self) -> bool:
        """Double the slots (up to the ceiling).  False if the file is at its ceiling.

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
            # Only the new part when every block before it is known to be allocated: from 0
            # over a file of many dirty pages it took 105 and 127 ms (docs/design.md).
            reserve(self._fd, new_size, old_size if self._map_writes else 0)
        except OSError as exc:
            self._cut_back(old_size)
            raise DiskFullError(
                exc.errno, f"cannot grow {self.path} from {old_size:,} to {new_size:,} bytes: "
                f"{exc.strerror}; free disk space, or delete keys to make room") from None
        try:
            self._remap(new_size)
        except CLEAN_FAILURES:  # no new map: the old one stands, and so must the file
            self._cut_back(old_size)
            raise
        self._mm[SB_FILE_SIZE:SB_FILE_SIZE + 8] = _U64.pack(new_size)
        self._changed()
        return True

    def _cut_back(self, size: int) -> None:
        """Undo a growth that failed: the file back to *size* bytes.  Should that fail too,
        the file stays longer than its superblock says, which the close cuts back, or an
        open after a crash."""
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            pass

    # ----------------------------------------------------------------- writes

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        if seq >= self.seq_limit:  # reserve the next range on disk before using it
            self.seq_limit = seq + _SEQ_RESERVE
            self._mm[SB_SEQ_LIMIT:SB_SEQ_LIMIT + 8] = _U64.pack(self.seq_limit)
        return seq

    def write_record(self, key: bytes, data: bytes, flags: int, expires: float,
                     state: int = STATE_LIVE, seq: int = 0) -> int:
        """Write a record into a free sub-slot of its class (the caller made room) and
        return its offset.  Not indexed: see ``insert``, ``replace``, ``commit_batch``."""
        if not self._dirty:
            self._mark_dirty()
        off = self._take_record(class_for(KEY_OFFSET + len(key) + len(data)))
        return self._write_at(off, key, data, flags, expires, state, seq)

    def _take_record(self, cls: int) -> int:
        """``slots.take_record``, refusing a sub-slot that holds a record the table still
        indexes: its bitmap bit was lost (slot info has no checksum), and the write would
        destroy a live value.  Not a clean failure: the store repairs before its next use,
        rebuilding the slot info from the records.  One byte read on the common path."""
        slots = self.slots
        from_pool = not slots.heads[cls]  # no partial slot: a slot of the pool is taken
        off = slots.take_record(cls)
        if from_pool and self.table.reserve:
            self.table.reserve -= 1  # one of the slots room_for held back for the records
        if self._mm[off] == _LIVE_FIRST:
            self._refuse_a_live_record(off)
        return off

    def _refuse_a_live_record(self, off: int) -> None:
        """Raise if the sub-slot at *off*, just taken, holds a record the table indexes."""
        mm = self._mm
        if mm[off:off + 4] == _LIVE:
            klen = _unpack_record(mm, off)[6]
            if self.is_indexed(off, bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])):
                raise CorruptStoreError(
                    f"{self.path}: the slot info lost the live record at offset {off:,}; the store "
                    "rebuilds it from the records at its next use: try again")

    def _write_at(self, off: int, key: bytes, data: bytes, flags: int, expires: float,
                  state: int = STATE_LIVE, seq: int = 0) -> int:
        """``write_record`` into the sub-slot at *off*, just taken."""
        if not seq:
            seq = self.next_seq
            if seq < self.seq_limit:
                self.next_seq = seq + 1
            else:
                seq = self._take_seq()
        body = _BODY.pack(seq, expires, len(data), len(key), flags) + key + data
        # The whole record, state word and checksum first, goes in with one copy.  It needs
        # no second, committing write: a record whose write is cut short (a kill mid-copy,
        # a crash before writeback) fails its checksum; recovery frees it.
        record = _HEAD.pack(state, 0, xxh3_64_intdigest(body, off)) + body
        if self._map_writes:
            # Through the map: several records share a page, so the page is mostly mapped
            # for writing already and this is a memory copy, where pwrite was a syscall that
            # also updates the file's times (1.1 us of 8 at 100 B, issue 13).
            self._mm[off:off + len(record)] = record
            self.live_count += 1
            if expires:
                self._count_expiry(expires, off)
            return off
        # pwrite where blocks could not be reserved: a full disk is then an exception.
        try:
            written = os.pwrite(self._fd, record, off)
        except OSError as exc:
            if self._landed(record, off):  # the error came after the write
                self.changes += 1  # it is on disk but counted nowhere: leave it to repair
            else:
                self.slots.give_record(off)  # nothing was written: the sub-slot is free again
            raise self._write_error(exc) from None
        if written != len(record):
            # A full disk mid-write: the first bytes went in.  Free the record again.
            try:
                os.pwrite(self._fd, _FREED, off)
            except OSError as exc:
                self.changes += 1  # the record is half written: leave the store to repair
                raise self._write_error(exc) from None
            self.slots.give_record(off)
            raise self._write_error(OSError(errno.ENOSPC, f"short write ({written} of "
                                                          f"{len(record)} bytes)"))
        self.live_count += 1
        if expires:
            self._count_expiry(expires, off)
        return off

    def _count_expiry(self, expires: float, off: int) -> None:
        """Count the record just written at *off* that expires at *expires*."""
        self.ttl_count += 1
        if expires < self.next_expiry:
            self.next_expiry = expires
        bounds = self._slot_expiry
        if bounds is not None:
            slot = (off - self._slots_offset) // SLOT_SIZE
            if slot >= len(bounds):  # the file grew since the sweep that built it
                bounds.extend(repeat(math.inf, slot + 1 - len(bounds)))
            if expires < bounds[slot]:
                bounds[slot] = expires

    def _landed(self, record: bytes, off: int) -> bool:
        """After an error around a record write: did any of it reach the file?  pwrite
        writes nothing when it fails, but an exception can come just after it returned."""
        try:
            return os.pread(self._fd, BODY_OFFSET, off) == record[:BODY_OFFSET]
        except OSError:
            return True  # cannot tell: assume the worst, and repair

    def _write_error(self, exc: OSError) -> MmapKVError:
        return system_error(exc, f"cannot write to {self.path}")

    def insert(self, key: bytes, fp: int, data: bytes, flags: int, expires: float) -> int:
        """Write a new LIVE record for *key* (absent: the caller checked) and index it."""
        off = self.write_record(key, data, flags, expires)
        self.table.insert(fp, self._entry(fp, off))
        self._changed()
        return off

    def try_put(self, key: bytes, fp: int, data: bytes, flags: int, expires: float,
                position: int) -> bool:
        """A create's or a ``set``'s whole change, when the common case holds: the record's
        class has a partial slot, or the file a free slot to start one (a record of a slot's
        size takes a whole slot every time), and, for a new key, its table segment needs no
        split.
        *position* is the key's table entry (its record is replaced: ``replace``), or -1
        for a key not indexed (a new entry: ``insert``).  False, with nothing changed, when
        the case does not hold; the caller then makes room and calls ``insert`` or
        ``replace``.  The same writes in the same order as those: they are this call with
        the room check and their calls folded in, which were a third of a small create's
        time.

        It runs in a bracket of its own, ``change``'s written out (three calls fewer, as in
        ``remove_key``): a clean failure (``CLEAN_FAILURES``) closes it, any other
        exception leaves it open, and the store repairs before its next use.
        """
        cls = CLASS_BY_UNITS[(KEY_OFFSET + len(key) + len(data) + UNIT - 1) >> 5]
        slots = self.slots
        if not slots.heads[cls] and not slots.free_slots():
            return False  # no partial slot of its class, nor a slot to start one without growing
        segment = -1
        if position < 0:
            segment = self.table.segment_with_room(fp)
            if segment < 0:
                return False
        self.generation += 1
        self.changes += 1
        try:
            if not self._dirty:
                self._mark_dirty()
            off = slots.take_record(cls)
            if self._mm[off] == _LIVE_FIRST:  # _take_record's check, inline: the hot path
                self._refuse_a_live_record(off)
            off = self._write_at(off, key, data, flags, expires)
        except CLEAN_FAILURES:
            self.generation += 1
            self.changes -= 1
            raise
        entry = fp << FINGERPRINT_SHIFT | ((off - self._slots_offset) // UNIT + 1)
        if segment >= 0:
            self.table.add_to(segment, entry)
        else:  # one 8-byte store: a reader sees the old record or the new one
            old = self.record_offset(position)
            self._q[position] = entry
            self._free_record(old)
        if self.durable:
            self._mm.flush()
        self.generation += 1
        self.changes -= 1
        return True

    def replace(self, position: int, key: bytes, fp: int, data: bytes, flags: int,
                expires: float) -> int:
        """Write a new record for the key whose entry is at *position*, point the entry at
        it (one 8-byte store: a reader sees the old record or the new one), then free the
        old record.  A crash in between leaves two LIVE copies: the newer one wins."""
        old = self.record_offset(position)
        off = self.write_record(key, data, flags, expires)
        self._q[position] = self._entry(fp, off)
        self._free_record(old)
        self._changed()
        return off

    def gather(self, record_sizes: list[int], fps: list[int]) -> int:
        """Free the whole slots records of these sizes (and their entries) lack, by moving
        the records of a class's emptiest slots into the free sub-slots of its other
        partial slots; the number of slots freed.  For a write at the ceiling with no slot
        free: deletes at random leave a class's survivors a few to a slot (an 8 MiB store
        95 % emptied took 10 values of 4 KB, and 1,915 after ``compact``).  A class can give
        one slot back whenever its partial slots have a whole slot's worth of free
        sub-slots between them: the emptiest one's records fit in the others'.  A slot given
        back by the write's own class takes the free sub-slots the write counted on, so the
        shortfall is asked again until there is none or nothing can move.  Call in a change
        bracket.  O(partial slots + records moved).

        Each move is ``replace`` of a record by itself into a chosen sub-slot: the copy (a
        newer sequence number) is written, the entry pointed at it, the original freed; a
        crash between leaves both, and recovery keeps the newer.  A slot holding a record
        that is not indexed or fails its checksum is left where it is: moving it would
        give damaged bytes a good checksum."""
        if not self._dirty:
            self._mark_dirty()
        freed = 0
        while True:
            short = self.slots_short(record_sizes, fps)
            more = self._gather_slots(short) if short else 0
            if not more:
                return freed
            freed += more

    def _gather_slots(self, wanted: int) -> int:
        """``gather``'s pass: free *wanted* slots or more, class by class."""
        freed = 0
        for cls in range(CLASS_COUNT):
            if freed >= wanted:
                break
            if PER_SLOT[cls] > 1:
                freed += self._gather_class(cls, wanted - freed)
        return freed

    def _gather_class(self, cls: int, wanted: int) -> int:
        """``gather`` for one class: empty its emptiest slots into its fullest, *wanted*
        of them, then on while it has moved fewer than ``_GATHER_AHEAD`` records: the
        walk of the partial list is the pass's cost (1.7 ms over 2,758 slots, a review),
        so one pass frees slots for the writes after this one too.  It reads the first
        ``_GATHER_WALK`` slots of the list, and the whole list only if those fall short."""
        partial = self.slots.partial_slots(cls, _GATHER_WALK)
        freed = self._gather_among(cls, wanted, partial)
        if freed < wanted and len(partial) == _GATHER_WALK:
            freed += self._gather_among(cls, wanted - freed, self.slots.partial_slots(cls))
        return freed

    def _gather_among(self, cls: int, wanted: int, partial: list[tuple[int, int]]) -> int:
        """``_gather_class``'s pass over these partial slots of class *cls*."""
        per, slots = PER_SLOT[cls], self.slots
        partial.sort()  # emptiest first
        free = sum(per - used for used, _ in partial)
        room = {slot: per - used for used, slot in partial}
        freed, moved, first, last = 0, 0, 0, len(partial) - 1
        while (freed < wanted or moved < _GATHER_AHEAD) and free >= per and first < last:
            source = partial[first][1]
            first += 1
            moves = self._movable(source, cls)
            if moves is None:  # damage in it: neither a source nor a target
                free -= room.pop(source)
                continue
            for position, off in moves:
                while not room[partial[last][1]]:  # full: the next fullest
                    last -= 1
                target = partial[last][1]
                self._move(position, off, slots.take_record_in(cls, target))
                room[target] -= 1
            moved += len(moves)
            free -= per  # its free sub-slots, and those its records took
            del room[source]
            freed += 1
        return freed

    def _movable(self, slot: int, cls: int) -> list[tuple[int, int]] | None:
        """(table position, offset) of every record in *slot*, or None if one of them is
        not LIVE, not indexed or not intact."""
        mm, size = self._mm, CLASS_SIZES[cls]
        bits = int.from_bytes(self.slots.info(slot)[5], "little") & ((1 << PER_SLOT[cls]) - 1)
        base = self._slots_offset + slot * SLOT_SIZE
        moves = []
        while bits:
            low = bits & -bits
            bits ^= low
            off = base + (low.bit_length() - 1) * size
            state, _, _, _, _, _, klen, _ = _unpack_record(mm, off)
            key = bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])
            position = self.find(key, self.fingerprint(key)) if state == STATE_LIVE else -1
            if position < 0 or self.record_offset(position) != off or not self.is_intact(off):
                return None
            moves.append((position, off))
        return moves

    def _move(self, position: int, off: int, to: int) -> None:
        """Copy the record at *off*, indexed at *position*, into the sub-slot at *to*
        (just taken), point its entry at the copy and free the original."""
        mm = self._mm
        _, _, _, _, expires, vlen, klen, flags = _unpack_record(mm, off)
        key = bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])
        if mm[to] == _LIVE_FIRST:
            self._refuse_a_live_record(to)
        self._write_at(to, key, bytes(mm[off + KEY_OFFSET + klen:off + KEY_OFFSET + klen + vlen]),
                       flags, expires)
        self._q[position] = self._entry(self._q[position] >> FINGERPRINT_SHIFT, to)  # its fingerprint
        self._free_record(off)

    def remove_key(self, key: bytes, fp: int) -> float:
        """``Store.delete``'s whole engine call: find *key* and remove it, in one change.
        The expiry of the record removed (0.0: none), or -1.0 (nothing changed) if *key*
        is not indexed.

        The bracket is ``change``'s, written out (three calls fewer): any exception inside
        it leaves ``changes`` counted, so the store repairs before its next use, exactly as
        ``change`` does for a failure that is not clean (a delete has no clean failure).
        """
        position = self.find(key, fp)
        if position < 0:
            return -1.0
        expires = self.expires_at(position) if self.ttl_count else 0.0
        self.generation += 1
        self.changes += 1
        self.remove(position)
        self.generation += 1
        self.changes -= 1
        return expires

    def remove(self, position: int) -> None:
        """Drop the entry at *position* and free its record."""
        if not self._dirty:
            self._mark_dirty()
        off = self._slots_offset + ((self._q[position] & UNIT_MASK) - 1) * UNIT  # record_offset
        self.table.delete(position)
        self._free_record(off)
        if self.durable:  # _changed, inline: a delete is mostly calls
            self._mm.flush()

    def _free_record(self, off: int) -> None:
        if self.ttl_count and RECORD_HEADER.unpack_from(self._mm, off)[4]:
            self.ttl_count -= 1
        self._mm[off:off + 16] = _FREED  # the truth first, then what derives from it
        self.slots.give_record(off)
        self.live_count -= 1

    # ----------------------------------------------------------------- batches

    def begin_batch(self) -> int:
        """The sequence number every PENDING record of one batch carries."""
        if not self._dirty:
            self._mark_dirty()
        return self._take_seq()

    def commit_batch(self, seq: int, written: list[tuple[int, int, bool]]) -> None:
        """Commit a batch's PENDING records, given as (offset, fingerprint, whether it
        replaces its key's indexed record): one write of ``batch_commit`` makes all of
        them survive a crash (recovery keeps the newer of two records of a key), then
        each is made LIVE and indexed, and a replaced record freed."""
        if self.durable:
            self._mm.flush()  # the records reach the disk before the commit that names them
        self.batch_commit = seq
        self._mm[SB_BATCH_COMMIT:SB_BATCH_COMMIT + 8] = _U64.pack(seq)
        self._changed()
        mm = self._mm
        for off, fp, replaces in written:
            mm[off:off + 4] = _LIVE
            # found now, not before: the inserts before it may have moved its entry
            position = self.find(bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + mm[off + KEY_OFFSET - 2]]), fp) \
                if replaces else -1
            if position < 0:
                self.table.insert(fp, self._entry(fp, off))
            else:
                old = self.record_offset(position)
                self._q[position] = self._entry(fp, off)
                self._free_record(old)
        self._changed()

    def clear(self) -> None:
        """Forget every record: one 8-byte store of ``floor_seq`` is the commit (recovery
        frees every record below it), then the derived state is rebuilt from nothing."""
        if not self._dirty:
            self._mark_dirty()
        floor = self._take_seq()  # at most the seq_limit on disk: a valid floor
        if self.durable:
            self._mm.flush(0, PAGE_SIZE)  # the seq_limit that covers it, first
        self._mm[SB_FLOOR_SEQ:SB_FLOOR_SEQ + 8] = _U64.pack(floor)
        self._changed()
        self.recover()

    def abort_batch(self, written: list[tuple[int, int, bool]]) -> None:
        """Give back the PENDING records of a batch that will not commit."""
        for off, _, _ in written:
            self._free_record(off)

    # ----------------------------------------------------------------- scans

    def scan(self, cursor: int, now: float) -> tuple[list[str], int, int, int]:
        """One step of a walk over the keys a table segment at a time, in the order of their
        fingerprints' low ``max_depth`` bits read backwards (Redis's ``SCAN`` order, which
        extendible hashing shares: a segment holds one run of it).  *cursor* is 0 to start.
        Returns the unexpired keys of the segment at *cursor* that no earlier step listed,
        the next step's cursor (0 after the last), how many damaged entries it met and how
        many entries.

        A key stored throughout a walk is listed exactly once, whatever changes between the
        steps: a key's place in the order is fixed by its fingerprint (an overwrite keeps
        it), splits only cut the order finer, and where the table got coarser (rebuilt by a
        repair or a compact) the keys before *cursor* are left out.  O(one segment).

        :raises DamagedEntry: the directory names a slot past the end of the file, or a
            segment whose depth disagrees with it; or the segment indexes a key twice.
        """
        table = self.table
        bits, directory = table.max_depth, table.dir
        index = _reversed(cursor, bits) & table.dmask
        segment = directory[index]
        if segment >= self.slot_count:
            raise DamagedEntry(f"{self.path}: a directory entry points past the end of the file", -1)
        depth = self.slots.info(segment)[1]
        # The run the slot info claims must be the directory's: a damaged depth byte would
        # list a run twice or skip one (read and keys() never use it).
        if not table.depth_agrees(segment, index, depth):
            raise DamagedEntry(f"{self.path}: the depth of the table segment in slot {segment} "
                               "disagrees with the directory", -1)
        if not table.run_names(segment, index, depth):  # (a review: keys() listed what read lost)
            raise DamagedEntry(f"{self.path}: a directory entry in the run of the table segment "
                               f"in slot {segment} names another segment", -1)
        span = 1 << (bits - depth)
        start = cursor & -span  # where the segment's run begins: before cursor if it got coarser
        keys, damaged, met = _segment_keys(self, segment, now, cursor if cursor != start else 0)
        if len(set(keys)) != len(keys):  # an entry copied over another: one key listed twice
            raise DamagedEntry(f"{self.path}: the table segment in slot {segment} indexes a key twice", -1)
        cursor = start + span
        return keys, (0 if cursor >> bits else cursor), damaged, met

    def record_slots(self) -> Iterator[tuple[int, int]]:
        """(slot, class) of every record slot below the high-water mark."""
        kind_of = self.slots.kind
        for slot in range(self.slots.high_water):
            kind = kind_of(slot)
            if 1 <= kind <= CLASS_COUNT:
                yield slot, kind - 1

    def iter_records(self, states: tuple[int, ...] = (STATE_LIVE,)) -> Iterator[tuple[int, int, float, bytes]]:
        """(offset, state, expires_at, key) of every record whose state is in *states*,
        in file order.  Only sub-slots the slot info marks as taken are read."""
        mm, info = self._mm, self.slots.info
        for slot, cls in self.record_slots():
            bits = int.from_bytes(info(slot)[5], "little") & ((1 << PER_SLOT[cls]) - 1)
            size = CLASS_SIZES[cls]
            base = self._slots_offset + slot * SLOT_SIZE
            while bits:
                low = bits & -bits
                bits ^= low
                off = base + (low.bit_length() - 1) * size
                state, _, _, _, expires, _, klen, _ = _unpack_record(mm, off)
                if state in states:
                    yield off, state, expires, bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])

    def unlisted_records(self, visited: int) -> Iterator[int]:
        """Offsets the hash table points at that :meth:`iter_records` does not visit, given
        that a walk of it *visited* records: records the slot info lost (a damaged kind
        byte or bitmap bit; slot info has no checksum).  Reads follow the table, so a copy
        that walked the slot info alone would drop keys ``read`` still returns.  Nothing
        when the walk met all ``live_count`` records.  An offset past the end of the file
        is yielded too, for the caller to report.  O(table entries)."""
        if visited == self.live_count:
            return  # every LIVE record was met: the table can point at no other
        info, first, high_water = self.slots.info, self._slots_offset, self.slots.high_water
        yielded: set[int] = set()  # two (damaged) entries of one record: it is one record
        for off in self._entry_offsets(self.table.segments()):
            if off in yielded:
                continue
            slot, within = divmod(off - first, SLOT_SIZE)
            if slot < high_water:
                kind, _, _, _, _, bitmap = info(slot)
                cls = kind - 1
                if 0 <= cls < CLASS_COUNT:
                    sub, rest = divmod(within, CLASS_SIZES[cls])
                    if not rest and sub < PER_SLOT[cls] and int.from_bytes(bitmap, "little") >> sub & 1:
                        continue  # iter_records reads it
            yielded.add(off)
            yield off

    def _entry_offsets(self, segments: Iterable[int]) -> Iterator[int]:
        """The record offset of every entry of these table segments (by slot)."""
        first, q, base_of = self._slots_offset, self._q, self.table.base
        for segment in segments:
            base = base_of(segment)
            for entry in filter(None, q[base:base + SEGMENT_ENTRIES].tolist()):  # C skips the empties
                yield first + ((entry & UNIT_MASK) - 1) * UNIT

    def class_usage(self) -> dict[int, tuple[int, int, int]]:
        """``{sub-slot size: (slots, sub-slots taken, sub-slots free)}`` over the classes
        that hold a slot.  O(slots)."""
        usage: dict[int, list[int]] = {}
        for slot, cls in self.record_slots():
            used = self.slots.info(slot)[2]
            entry = usage.setdefault(CLASS_SIZES[cls], [0, 0, 0])
            entry[0] += 1
            entry[1] += used
            entry[2] += PER_SLOT[cls] - used
        return {size: (n, used, free) for size, (n, used, free) in sorted(usage.items())}

    def is_indexed(self, off: int, key: bytes) -> bool:
        """True if the table leads from *key* to the record at *off*: a damaged key byte
        breaks this (its fingerprint no longer matches), without reading the value."""
        position = self.find(key, self.fingerprint(key))
        return position >= 0 and self.record_offset(position) == off

    def sweep(self, now: float, limit: int | None = None) -> bool:
        """Free the records expired at *now*: all of them, or (with *limit*) one step that
        stops once it has freed *limit* or more, at the end of a slot.  True if it reached
        the last slot: ``next_expiry`` is then recomputed (a bound: no record expires
        before it); after a step that stopped short it stays passed, and the next step
        resumes where this one stopped.

        The first sweep after an open or a rebuild reads every record slot, O(slots +
        records); later ones only the slots whose ``_slot_expiry`` has passed, so keys that
        expire in the order they were written cost a sweep only their own slots (len()
        every second over a million TTL keys: 230 ms each before).  A step costs at most
        *limit* removals, plus picking the slots due, O(slots) in C."""
        now = float(now)  # a clock may say whole seconds: int.__ge__(float) is NotImplemented
        bounds = self._slot_expiry
        if bounds is None:  # every record slot due, unread
            bounds = self._slot_expiry = array("d", repeat(math.inf, self.slot_count))
            for slot, _ in self.record_slots():
                bounds[slot] = -math.inf
            self._sweep_from = 0
        start, stop = self._sweep_from, None
        expired: list[bytes] = []
        kind_of, high_water = self.slots.kind, self.slots.high_water
        # (over a copy of the bounds: the loop rewrites the ones it reads)
        for slot in compress(range(start, len(bounds)), map(now.__ge__, bounds[start:])):
            kind = kind_of(slot) if slot < high_water else KIND_FREE
            # A slot freed, or reused by a table segment since, has no records now
            bounds[slot] = self._sweep_slot(slot, kind - 1, now, expired) \
                if 1 <= kind <= CLASS_COUNT else math.inf
            if limit is not None and len(expired) >= limit:
                stop = slot + 1
                break
        for key in expired:  # removing changes the slot info the scan reads: scan first
            position = self.find(key, self.fingerprint(key))
            if position >= 0:
                self.remove(position)
        if stop is not None and stop < len(bounds):
            self._sweep_from = stop
            return False
        # A bound lowered behind this pass, by a write between its steps, keeps
        # next_expiry passed: the next sweep begins again at the first slot.
        self._sweep_from = 0
        self.next_expiry = min(bounds, default=math.inf)
        return True

    def _sweep_slot(self, slot: int, cls: int, now: float, expired: list[bytes]) -> float:
        """Add to *expired* the keys of the LIVE records in *slot* (of class *cls*) that
        expired at *now*; return the slot's new bound.  The slot's expiry fields are read
        in one unpack and the ones passed picked out in C (all of a slot's, free sub-slots'
        stale ones too: the bitmap and the state decide, and a stale one in the bound only
        brings the slot's next visit forward).  Walking every record's header in Python
        took 105 ms over 200,000 records."""
        mm, base = self._mm, self._slots_offset + slot * SLOT_SIZE
        expiries = _SLOT_EXPIRIES[cls].unpack_from(mm, base)
        if not any(expiries):  # no record of the slot has a TTL: the common slot, skipped in C
            return math.inf
        dated = list(compress(expiries, expiries))  # the set ones, and below their sub-slots
        bound = min(filter(now.__lt__, dated), default=math.inf)
        due = list(compress(compress(range(PER_SLOT[cls]), expiries), map(now.__ge__, dated)))
        if due:
            taken, size = int.from_bytes(self.slots.info(slot)[5], "little"), CLASS_SIZES[cls]
            for index in due:
                if taken >> index & 1:
                    off = base + index * size
                    state, _, _, _, _, _, klen, _ = _unpack_record(mm, off)
                    if state == STATE_LIVE:  # (a sweep never runs inside a batch: no PENDING)
                        expired.append(bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]))
        return bound

    # ----------------------------------------------------------------- recovery

    def recover(self, *, superblock_damaged: bool = False) -> None:
        """Rebuild the table, the slot info and the counters from the records themselves.

        Runs on open after a crash (and after an interrupted change).  A record is kept if
        it is LIVE (or PENDING with the last committed batch's sequence number), at or above
        ``floor_seq``, fits its sub-slot and passes its checksum; anything else is freed.
        Should one key be live twice, the newer write (higher seq) wins.  Record slots are
        told apart by their slot info (written before any record goes in); every other
        slot, old table segments included, is free.  O(file).  With *superblock_damaged*
        (CLEAN set, checksum failing: damage, not a crash), ``floor_seq`` is read off the
        old table instead of trusted.
        """
        mm, slots = self._mm, self.slots
        g = self.geometry
        seq_limit, batch, floor = (seq if seq < _SEQ_CEILING else 0 for seq in (
            _U64.unpack_from(mm, SB_SEQ_LIMIT)[0], _U64.unpack_from(mm, SB_BATCH_COMMIT)[0],
            _U64.unpack_from(mm, SB_FLOOR_SEQ)[0]))
        self.batch_commit = batch
        if floor > seq_limit:  # a floor is a sequence number already handed out: damage
            floor = 0
        kinds = bytearray(mm[g.info_offset:g.info_offset + 24 * self.slot_count:24]) \
            if self.slot_count else bytearray()
        restored = self._find_lost_record_slots(kinds)
        if superblock_damaged:  # CLEAN with a checksum that fails (_load)
            # floor_seq may be the damaged field, and one bit too high drops every record
            # below it.  The table was exact at the clean close: every record it indexes
            # was live then, every other LIVE one dead, so its oldest record's seq is a
            # floor that keeps the first and drops the second, whatever the field says.
            floor = self._indexed_floor(kinds, floor)
        if floor != _U64.unpack_from(mm, SB_FLOOR_SEQ)[0] or superblock_damaged:
            # What the damage made of the floor and the file size (_load) goes to disk
            # before CLEAN is cleared: cleared first, a crash between them left an unclean
            # file whose damaged fields the next open trusted (a floor dropping records, a
            # size cutting the file back).  A crash before the clear finds the superblock
            # still damaged (or, the damage undone, clean and right) and does this again.
            mm[SB_FLOOR_SEQ:SB_FLOOR_SEQ + 8] = _U64.pack(floor)
            if superblock_damaged:
                mm[SB_FILE_SIZE:SB_FILE_SIZE + 8] = _U64.pack(self.file_size)
            if not self._dirty:
                mm.flush(0, PAGE_SIZE)
        if not self._dirty:
            self._mark_dirty()
        if restored:
            # The kinds given back go to disk before anything below frees a slot or lays
            # the new table over the old one, the only witness to them: interrupted after
            # that, the next recovery took the damaged byte's word and the slot's records
            # were lost.  Synced: the new table's pages must not reach the disk first.
            for slot in restored:
                at = g.info_offset + SLOT_INFO.size * slot
                mm[at:at + 1] = kinds[slot:slot + 1]
            mm.flush(g.info_offset, SLOT_INFO.size * self.slot_count)
        self.info_to_check = 0  # rebuilt from the records: what the last close vouched for is moot
        self.floor_seq = floor
        record_slots = [s for s in range(self.slot_count) if 1 <= kinds[s] <= CLASS_COUNT]
        spare = [s for s in range(self.slot_count - 1, -1, -1) if not 1 <= kinds[s] <= CLASS_COUNT]
        if not spare:  # at the ceiling, and a segment's kind byte says it holds records
            spare = self._slots_without_records(record_slots)
            record_slots = sorted(set(record_slots) - set(spare))
        for slot in spare:
            slots.set_info(slot, KIND_FREE)
        # A fresh table, its segments taken from the slots no record is in.
        slots.high_water = self.slot_count
        slots.pool_head = slots.pool_count = 0
        slots.heads = [0] * CLASS_COUNT
        pool_order = list(spare)          # popped from the end: lowest slots first
        taken: list[int] = []

        def take_spare() -> int:
            if not pool_order:
                raise CorruptStoreError(
                    f"{self.path}: recovery found no slot for the table: every slot of the file "
                    "holds records, so a slot's kind byte is damaged; `mmapkv dump` cannot read it "
                    "either: restore it from a copy")
            slot = pool_order.pop()
            taken.append(slot)
            return slot

        slots.take_slot = take_spare  # type: ignore[method-assign]
        slots.free_slots = lambda: len(pool_order)  # type: ignore[method-assign]
        # Only the splits it must make while it indexes: the records fit the spare slots
        # that way, as the old table held them (a split by choice in slot order could spend
        # a slot a segment further on must have); split_crowded then uses what is left
        self.table.reserve = 1 << 62
        try:  # the loop in a method of its own: see the note above store._readable_keys
            bits, live, ttl, next_expiry, top_seq = self._rebuild_table(record_slots, kinds, floor, batch)
            self.table.split_crowded()
            self.table.reserve = 0
        finally:
            del slots.take_slot, slots.free_slots  # back to the class's own methods
        # The slot info of the record slots, the partial lists and the pool; every list
        # in ascending slot order, so that the lowest slots are taken first.
        segments = set(taken)
        high = max([s + 1 for s in taken] + [s + 1 for s in record_slots if bits.get(s)], default=0)
        partial: list[list[int]] = [[] for _ in range(CLASS_COUNT)]
        for slot in record_slots:
            cls = kinds[slot] - 1
            if bits.get(slot) and bin(bits[slot]).count("1") < PER_SLOT[cls]:
                partial[cls].append(slot)
        for cls, members in enumerate(partial):
            slots.heads[cls] = members[0] + 1 if members else 0
            for k, slot in enumerate(members):
                slots.set_info(slot, cls + 1, 0, bin(bits[slot]).count("1"),
                               members[k - 1] + 1 if k else 0,
                               members[k + 1] + 1 if k + 1 < len(members) else 0, bits[slot])
        slots.high_water = high
        for slot in range(self.slot_count - 1, -1, -1):
            if slot in segments:
                continue
            cls = kinds[slot] - 1
            if bits.get(slot) and bin(bits[slot]).count("1") == PER_SLOT[cls]:
                slots.set_info(slot, cls + 1, 0, PER_SLOT[cls], 0, 0, bits[slot])
            elif not bits.get(slot):
                if slot < high:
                    slots.give_slot(slot)
                elif kinds[slot]:
                    slots.set_info(slot, KIND_FREE)
        self.live_count, self.ttl_count, self.next_expiry = live, ttl, next_expiry
        self._slot_expiry = None
        # Never reuse a sequence number: not one a surviving record carries, not the
        # committed batch's (a later batch cut short would be taken for it), not below
        # the floor, and not one the reservation on disk may have handed out.
        self.next_seq = max(seq for seq in (self.next_seq, seq_limit, top_seq + 1, batch + 1, floor, 1)
                            if seq < _SEQ_CEILING)
        self.seq_limit = self.next_seq + _SEQ_RESERVE
        mm[SB_SEQ_LIMIT:SB_SEQ_LIMIT + 8] = _U64.pack(self.seq_limit)
        mm.flush()

    def _slots_without_records(self, record_slots: list[int]) -> list[int]:
        """Of *record_slots*, those that hold no intact record, highest first: a table
        segment whose kind byte was damaged into a record class is one.  A record starts
        at a 32-byte unit whatever its class, so only the state words there are read, and
        a LIVE or PEND one counts only if its record's checksum holds: a value's text
        ("PENDING", "DELIVERED") or a freed record's leftovers must not count."""
        return [slot for slot in reversed(record_slots) if not self._holds_a_record(slot)]

    def _holds_a_record(self, slot: int) -> bool:
        base = self.geometry.slot_offset(slot)
        units = array("I", self._mm[base:base + SLOT_SIZE])[::UNIT // 4]  # each unit's first word
        for state in (STATE_LIVE, STATE_PENDING):
            at = -1
            while True:
                try:
                    at = units.index(state, at + 1)
                except ValueError:
                    break
                if self.is_intact(base + at * UNIT):
                    return True
        return False

    def _old_table_offsets(self, kinds: bytearray) -> Iterator[int]:
        """Recovery's view of the table it is about to replace: the record offset of each
        entry of every slot *kinds* calls a segment (found through the slot info, not the
        directory, whose depth is a superblock field), within the file."""
        end = self.file_size - RECORD_HEADER.size
        segments = (slot for slot in range(self.slot_count) if kinds[slot] == KIND_SEGMENT)
        return (off for off in self._entry_offsets(segments) if off <= end)

    def _find_lost_record_slots(self, kinds: bytearray) -> list[int]:
        """Give back their class in *kinds* to record slots whose kind byte was damaged
        (slot info has no checksum; recovery frees every slot that is not a record class,
        and reads one of another class at the wrong boundaries: every record in it would
        go).  Where the old table points at an intact LIVE record, that record's size says
        its slot's class: every record is in the smallest class it fits, and a slot holds
        one class.  A kind byte damaged into a table segment's, or into a class whose size
        happens to divide the record's place, is caught too (no entry points into a
        segment).  A slot keeps its kind if any such record agrees with it (one left LIVE
        from the slot's former class by a lost write must not decide).  O(table entries),
        and a record read for each slot they point into, all of them for a damaged one.
        Returns the slots whose kind it gave back."""
        agreed: set[int] = set()  # slots an intact record of their kind's class confirmed
        found: dict[int, int] = {}  # slot: the class of its first intact record, disagreeing
        for off in self._old_table_offsets(kinds):
            slot_of, within = divmod(off - self._slots_offset, SLOT_SIZE)
            if slot_of in agreed or not self.is_intact(off):
                continue
            state, _, _, _, _, vlen, klen, _ = _unpack_record(self._mm, off)
            cls = class_for(KEY_OFFSET + klen + vlen)
            if state != STATE_LIVE or within % CLASS_SIZES[cls]:
                continue
            if kinds[slot_of] == cls + 1:
                agreed.add(slot_of)
            else:
                found.setdefault(slot_of, cls)
        restored = [slot_of for slot_of in found if slot_of not in agreed]
        for slot_of in restored:
            kinds[slot_of] = found[slot_of] + 1
        return restored

    def _indexed_floor(self, kinds: bytearray, floor: int) -> int:
        """The lowest seq of the intact LIVE records the old table points at; *floor* if it
        points at none."""
        lowest = -1
        for off in self._old_table_offsets(kinds):
            if self.is_intact(off):
                state, _, _, seq = _unpack_record(self._mm, off)[:4]
                if state == STATE_LIVE and (lowest < 0 or seq < lowest):
                    lowest = seq
        return floor if lowest < 0 else lowest

    def _rebuild_table(self, record_slots: list[int], kinds: bytearray, floor: int,
                       batch: int) -> tuple[dict[int, int], int, int, float, int]:
        """``recover``'s pass over the record slots: keep the good records, index them in a
        new table, free the rest.  Returns each slot's bitmap of kept records, the live and
        TTL counts, the next expiry and the highest sequence number kept."""
        mm, view, seed, slots_offset, table = self._mm, self._view, self.seed, self._slots_offset, self.table
        # Each kept record's table entry, dealt by fingerprint into buckets (8 bytes a
        # record) and indexed after the pass (_index); or, where the file could hold more
        # records than whole_table_limit, inserted as found, with no memory of them
        capacity = sum(PER_SLOT[kinds[slot] - 1] for slot in record_slots)
        buckets: list[array[int]] | None = None
        if capacity <= self.whole_table_limit:
            buckets = table.buckets(capacity)
        else:
            table.segment_count = 0
            table.new()
        mask = len(buckets) - 1 if buckets is not None else 0
        bits: dict[int, int] = {}
        live = ttl = 0
        next_expiry = math.inf
        top_seq = 0
        for slot in record_slots:
            cls = kinds[slot] - 1
            size = CLASS_SIZES[cls]
            base = slots_offset + slot * SLOT_SIZE
            kept = 0
            for index in range(PER_SLOT[cls]):
                off = base + index * size
                state, _, checksum, seq, expires, vlen, klen, _ = _unpack_record(mm, off)
                if state == STATE_FREE:
                    continue
                ok = (state == STATE_LIVE or (state == STATE_PENDING and seq == batch)) and \
                    seq >= floor and 1 <= klen <= MAX_KEY_BYTES and vlen <= MAX_VALUE_BYTES and \
                    KEY_OFFSET + klen + vlen <= size and \
                    xxh3_64_intdigest(view[off + BODY_OFFSET:off + KEY_OFFSET + klen + vlen], off) == checksum
                if not ok:
                    mm[off:off + 16] = _FREED
                    continue
                key = bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])
                try:
                    key.decode("utf-8")
                except UnicodeDecodeError:  # mmapkv writes only str keys: damage
                    mm[off:off + 16] = _FREED
                    continue
                if state == STATE_PENDING:
                    mm[off:off + 4] = _LIVE
                fp = xxh3_64_intdigest(key, seed) >> FINGERPRINT_SHIFT  # fingerprint(), inline
                if buckets is not None:
                    buckets[fp & mask].append(fp << FINGERPRINT_SHIFT | ((off - slots_offset) // UNIT + 1))
                else:
                    position = self.find(key, fp)
                    if position >= 0:  # the same key twice: keep the newer write
                        other = self.record_offset(position)
                        other_seq, other_expires = RECORD_HEADER.unpack_from(mm, other)[3:5]
                        if other_seq > seq:
                            mm[off:off + 16] = _FREED
                            continue
                        mm[other:other + 16] = _FREED
                        other_slot, within = divmod(other - slots_offset, SLOT_SIZE)
                        other_bit = 1 << (within // CLASS_SIZES[kinds[other_slot] - 1])
                        if other_slot == slot:
                            kept &= ~other_bit
                        else:
                            bits[other_slot] &= ~other_bit
                        live -= 1
                        ttl -= bool(other_expires)
                        self._q[position] = self._entry(fp, off)
                    else:
                        table.insert(fp, self._entry(fp, off))
                kept |= 1 << index
                live += 1
                if expires:
                    ttl += 1
                    next_expiry = min(next_expiry, expires)
                if seq > top_seq:
                    top_seq = seq
            bits[slot] = kept
        if buckets is None:
            return bits, live, ttl, next_expiry, top_seq
        dropped, dropped_ttl = self._index(buckets, bits, kinds)
        return bits, live - dropped, ttl - dropped_ttl, next_expiry, top_seq

    def _index(self, buckets: list[array[int]], bits: dict[int, int], kinds: bytearray) -> tuple[int, int]:
        """Build recovery's table of the entries in *buckets* (``Table.buckets``'), dropping
        the older copy of any key kept twice (a crash inside an overwrite leaves both LIVE),
        from *bits* too; returns how many were dropped and how many of those had a TTL.
        Built whole (``Table.build``) when the free slots hold every segment that wants
        one, the common case; else (a store at its ceiling) by inserts in slot order,
        splitting only where it must, so that the records fit the slots as the old table
        held them."""
        table = self.table
        dropped = dropped_ttl = 0
        # Before partitioning (a key's copies share a fingerprint, so a bucket): counted
        # twice, they split segments that inserts would not have (a review: 4 segments
        # for 2, and 80 fewer keys fitting at a ceiling)
        for n, bucket in enumerate(buckets):
            if len({entry >> FINGERPRINT_SHIFT for entry in bucket}) < len(bucket):
                buckets[n], gone, gone_ttl = self._newest_copies(bucket, bits, kinds)
                dropped += gone
                dropped_ttl += gone_ttl
        groups = table.partition(buckets)
        if table.build(groups):
            return dropped, dropped_ttl
        table.segment_count = 0
        table.new()
        for entry in sorted((e for _, _, group in groups for e in group), key=UNIT_MASK.__and__):
            table.insert(entry >> FINGERPRINT_SHIFT, entry)
        return dropped, dropped_ttl

    def _newest_copies(self, group: array[int], bits: dict[int, int],
                       kinds: bytearray) -> tuple[array[int], int, int]:
        """*group* less the entries of keys another entry of it holds a newer write of
        (higher sequence number), each of those records freed and cleared from *bits*;
        with the count freed and how many of them had a TTL."""
        mm = self._mm
        newest: dict[bytes, tuple[int, int]] = {}  # key: (seq, entry), keys whose fp repeats
        repeated = {fp for fp, n in Counter(e >> FINGERPRINT_SHIFT for e in group).items() if n > 1}
        kept = array("Q")
        gone = gone_ttl = 0
        for entry in group:
            if entry >> FINGERPRINT_SHIFT not in repeated:
                kept.append(entry)
                continue
            off = self._slots_offset + ((entry & UNIT_MASK) - 1) * UNIT
            _, _, _, seq, _, _, klen, _ = _unpack_record(mm, off)
            key = bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])
            other = newest.get(key)
            if other is None:
                newest[key] = seq, entry
                continue
            loser = entry if other[0] > seq else other[1]
            if loser == other[1]:
                newest[key] = seq, entry
            loser_off = self._slots_offset + ((loser & UNIT_MASK) - 1) * UNIT
            gone_ttl += bool(RECORD_HEADER.unpack_from(mm, loser_off)[4])
            gone += 1
            mm[loser_off:loser_off + 16] = _FREED
            slot, within = divmod(loser_off - self._slots_offset, SLOT_SIZE)
            bits[slot] &= ~(1 << (within // CLASS_SIZES[kinds[slot] - 1]))
        kept.extend(entry for _, entry in newest.values())
        return kept, gone, gone_ttl

    # ----------------------------------------------------------------- invariants

    def check(self) -> list[str]:
        """Every broken invariant of the file, as sentences; empty when all hold.

        1. the directory names segments only, each segment is named by exactly the
           2**(depth - local depth) directory entries its low fingerprint bits select,
           and the segment count is right;
        2. each table entry points at an aligned sub-slot of a record slot holding a
           LIVE record whose checksum holds, whose key hashes to the entry's fingerprint,
           which belongs in that segment, in Robin Hood order (no gap between an entry
           and its home); each segment's ``used`` counts its entries;
        3. every LIVE record is indexed exactly once; a sub-slot is marked taken in its
           slot's bitmap exactly when it holds a live record; ``used`` counts the bits;
        4. each class's partial list holds exactly its slots with a free sub-slot; the
           pool holds free slots below high_water, no cycle, ``pool_count`` of them; every
           slot below high_water is a record slot, a segment or on the pool;
        5. live_count, ttl_count and next_expiry agree with the records.
        """
        problems: list[str] = []
        slots, table, q, mm = self.slots, self.table, self._q, self._mm
        hw = slots.high_water
        if hw > self.slot_count:
            return [f"high_water {hw} is past the {self.slot_count} slots of the file"]
        infos = [slots.info(s) for s in range(hw)]
        # 1. directory
        size = 1 << table.depth
        directory = self._dir[:size].tolist()
        groups: dict[int, list[int]] = {}
        for index, segment in enumerate(directory):
            groups.setdefault(segment, []).append(index)
        for segment, indexes in groups.items():
            if not (segment < hw and infos[segment][0] == KIND_SEGMENT):
                problems.append(f"directory entry {indexes[0]} names slot {segment}, not a segment")
                continue
            local = infos[segment][1]
            expected = list(range(indexes[0] & ((1 << local) - 1), size, 1 << local)) \
                if local <= table.depth else []
            if indexes != expected:
                problems.append(f"segment {segment} (local depth {local}) is named by directory "
                                f"entries {indexes[:4]}..., not every {1 << local}th")
        segments = [s for s in range(hw) if infos[s][0] == KIND_SEGMENT]
        if sorted(groups) != segments and not problems:
            problems.append(f"segments {sorted(set(segments) - set(groups))} are in no directory entry")
        if table.segment_count != len(segments):
            problems.append(f"segment_count is {table.segment_count}, there are {len(segments)}")
        # 2. entries
        indexed: dict[int, int] = {}
        for segment in groups:
            if not (segment < hw and infos[segment][0] == KIND_SEGMENT):
                continue
            local = infos[segment][1]
            low = groups[segment][0] & ((1 << local) - 1)
            base = table.base(segment)
            entries = q[base:base + SEGMENT_ENTRIES].tolist()
            count = 0
            for i, entry in enumerate(entries):
                if not entry:
                    continue
                count += 1
                fp = entry >> FINGERPRINT_SHIFT
                where = f"segment {segment} entry {i}"
                if fp & ((1 << local) - 1) != low:
                    problems.append(f"{where} belongs in another segment")
                distance = (i - (entry >> HOME_OF_ENTRY)) & SEGMENT_MASK
                if distance and not entries[(i - 1) & SEGMENT_MASK]:
                    problems.append(f"{where} is {distance} from home with an empty position before it")
                elif distance:
                    before = entries[(i - 1) & SEGMENT_MASK]
                    if ((i - 1 - (before >> HOME_OF_ENTRY)) & SEGMENT_MASK) + 1 < distance:
                        problems.append(f"{where} breaks Robin Hood order")
                off = self._slots_offset + ((entry & UNIT_MASK) - 1) * UNIT
                slot, within = divmod(off - self._slots_offset, SLOT_SIZE)
                if not (0 <= slot < hw and 1 <= infos[slot][0] <= CLASS_COUNT
                        and within % CLASS_SIZES[infos[slot][0] - 1] == 0):
                    problems.append(f"{where} points at offset {off}, not a sub-slot of a record slot")
                    continue
                if off in indexed:
                    problems.append(f"the record at {off} is indexed twice")
                indexed[off] = fp
                state, _, _, _, _, _, klen, _ = _unpack_record(mm, off)
                if state != STATE_LIVE:
                    problems.append(f"{where} points at a record that is not LIVE")
                elif not self.is_intact(off):
                    problems.append(f"the record at offset {off} fails its checksum")
                elif self.fingerprint(bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])) != fp:
                    problems.append(f"{where} has a fingerprint that is not its key's")
            if count != infos[segment][2]:
                problems.append(f"segment {segment} counts {infos[segment][2]} entries, holds {count}")
        # 3. records and bitmaps; 4. lists and pool
        live = ttl = 0
        next_expiry = math.inf
        partial: list[set[int]] = [set() for _ in range(CLASS_COUNT)]
        for slot in range(hw):
            kind, _, used, _, _, bitmap = infos[slot]
            if not 1 <= kind <= CLASS_COUNT:
                continue
            cls = kind - 1
            bits = int.from_bytes(bitmap, "little")
            if bin(bits).count("1") != used or not used:
                problems.append(f"slot {slot} says {used} sub-slots are taken, its bitmap {bin(bits).count('1')}")
            if used < PER_SLOT[cls]:
                partial[cls].add(slot)
            for index in range(PER_SLOT[cls]):
                off = self._slots_offset + slot * SLOT_SIZE + index * CLASS_SIZES[cls]
                state, _, _, seq, expires, _, _, _ = _unpack_record(mm, off)
                taken = bool(bits >> index & 1)
                is_live = state == STATE_LIVE and seq >= self.floor_seq and self.is_intact(off)
                if state == STATE_PENDING and seq >= self.floor_seq and taken:
                    problems.append(f"the record at offset {off} is PENDING outside a batch")
                elif taken and state != STATE_LIVE:
                    problems.append(f"slot {slot} marks sub-slot {index} taken, it is not LIVE")
                elif is_live and not taken:
                    problems.append(f"the LIVE record at offset {off} is not marked taken")
                if taken and state == STATE_LIVE:
                    live += 1
                    if off not in indexed:
                        problems.append(f"the LIVE record at offset {off} is not in the table")
                    if expires:
                        ttl += 1
                        next_expiry = min(next_expiry, expires)
        for cls in range(CLASS_COUNT):
            seen: list[int] = []
            prev, head = 0, slots.heads[cls]
            while head:
                slot = head - 1
                if slot >= hw or slot in seen:
                    problems.append(f"class {CLASS_SIZES[cls]}'s partial list loops or leaves the file")
                    break
                kind, _, _, back, nxt, _ = infos[slot]
                if kind != cls + 1 or back != prev:
                    problems.append(f"slot {slot} on class {CLASS_SIZES[cls]}'s partial list is "
                                    f"of kind {kind} or links back to {back - 1}")
                seen.append(slot)
                prev, head = head, nxt
            if set(seen) != partial[cls] and PER_SLOT[cls] > 1:
                problems.append(f"class {CLASS_SIZES[cls]}'s partial list holds {sorted(seen)[:5]}, "
                                f"its slots with free sub-slots are {sorted(partial[cls])[:5]}")
        pooled: set[int] = set()
        head = slots.pool_head
        while head:
            slot = head - 1
            if slot >= hw or slot in pooled:
                problems.append(f"the pool loops or runs past high_water at slot {slot}")
                break
            if infos[slot][0] != KIND_FREE:
                problems.append(f"slot {slot} is on the pool but of kind {infos[slot][0]}")
            pooled.add(slot)
            head = infos[slot][4]
        if len(pooled) != slots.pool_count:
            problems.append(f"pool_count is {slots.pool_count}, the pool holds {len(pooled)}")
        for slot in range(hw):
            if infos[slot][0] == KIND_FREE and slot not in pooled:
                problems.append(f"slot {slot} is free but not on the pool")
        if len(indexed) != live:
            problems.append(f"{len(indexed)} table entries for {live} LIVE records")
        if live != self.live_count:
            problems.append(f"live_count is {self.live_count}, the records hold {live}")
        if ttl != self.ttl_count:
            problems.append(f"ttl_count is {self.ttl_count}, the records hold {ttl}")
        if next_expiry < self.next_expiry:
            problems.append(f"next_expiry {self.next_expiry} is after a record's expiry {next_expiry}")
        return problems
