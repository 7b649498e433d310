"""``Store``: the public API over one store file (validation, expiry, locking)."""

from __future__ import annotations

import errno
import math
import os
import struct
import threading
import time
from collections.abc import (Callable, ItemsView, Iterable, Iterator, Mapping, MutableMapping, Sequence,
                             ValuesView)
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, overload

import orjson
import platformdirs
from xxhash import xxh3_64_intdigest

from . import codec
from .engine import CLEAN_FAILURES, DamagedEntry, Engine, append_key
from .forks import ForkRegistry
from .locking import absolute_path, names_file, recursion_count
from .tempfiles import remove_abandoned
from .views import Items, Values
from .errors import (
    CorruptStoreError,
    InvalidArgumentError,
    InvalidValueError,
    KeyExistsError,
    KeyExpiredError,
    KeyNotFoundError,
    ReentrantCallError,
    StoreAccessError,
    StoreClosedError,
    StoreFullError,
    StoreLockedError,
    system_error,
)
from .format import (
    CLASS_SIZES,
    FINGERPRINT_SHIFT,
    KEY_OFFSET,
    MAX_FILE_SIZE,
    MAX_VALUE_BYTES,
    RECORD_HEADER,
    SEGMENT_ENTRIES,
    SLOT_SIZE,
    STATE_LIVE,
    STATE_PENDING,
    VERSION,
    Geometry,
    class_for,
)

__all__ = ["Store", "StoreStats", "default_path", "MAX_KEY_LENGTH", "MAX_TTL"]

MAX_KEY_LENGTH = codec.MAX_KEY_LENGTH
MAX_TTL = codec.MAX_TTL
DEFAULT_FILENAME = "default.mmapkv"

_decode = codec.decode
_encode = codec.encode
_key_bytes = codec.key_bytes   # the rules of keys and TTLs live in codec, shared with RedisStore
_check_ttl = codec.check_ttl
_loads = orjson.loads
_xxh3 = xxh3_64_intdigest


def default_path() -> str:
    """Where ``Store()`` keeps its file: the user's data directory, per platformdirs.

    On Linux that is ``$XDG_DATA_HOME/mmapkv/default.mmapkv`` (``~/.local/share/...``).

    :raises StoreAccessError: no absolute home directory is known (``HOME`` unset in a
        process whose user has no home, say): give the store a path.
    """
    try:
        directory = platformdirs.user_data_dir("mmapkv", appauthor=False)
    except RuntimeError:  # platformdirs 4 when it cannot tell the home directory
        directory = ""
    # platformdirs 3 answers "~/.local/share" (or a relative HOME's) instead: a store there
    # would land under the working directory, a different one from each directory.
    if not os.path.isabs(directory):
        raise StoreAccessError(errno.ENOENT, "no user data directory for the default store: HOME (or "
                               "XDG_DATA_HOME) is unset or not an absolute path; give the store a path")
    return os.path.join(directory, DEFAULT_FILENAME)


@dataclass(frozen=True)
class StoreStats:
    """What ``Store.stats()`` reports.  Sizes in bytes, counts in keys or slots."""

    path: str
    format_version: int
    file_size: int
    max_size: int
    slot_size: int            #: bytes a slot takes in the file (the unit of the file)
    max_value_bytes: int      #: largest value a key can hold
    capacity: int             #: slots in the file now
    max_capacity: int         #: slots the file holds at its ceiling
    free_slots: int           #: slots any class or the table can take without growing
    live_keys: int            #: unexpired keys (what ``len()`` says)
    keys_with_ttl: int
    table_segments: int
    table_capacity: int       #: positions in the hash table (2,048 per segment)
    load_factor: float        #: stored entries / table positions
    durable: bool


# Stores are let go of in a forked child: the parent's map and descriptor dropped, its lock kept.
_OPEN_STORES: ForkRegistry[Store] = ForkRegistry(lambda store: store._disown())


_T = TypeVar("_T")
_MISSING: Any = object()
_KEEP: Any = object()   # replace(): keep the key's TTL
_GONE: Any = object()
_ABSENT: Any = object()   # read: get's default, never a stored value
#: what a read without the lock may meet when a writer changes the map under it: a record
#: half rewritten (its checksum fails), a released view or closed map after a growth, a
#: view whose sub-slot was reused before stdlib ``json`` (in Python) decoded it: any text,
#: so its ValueError or RecursionError
_TORN = (DamagedEntry, ValueError, IndexError, BufferError, struct.error, RecursionError)


class Store(MutableMapping[str, dict[str, Any]]):
    """A persistent key-value store in one memory-mapped file.

    Keys are ``str`` of 1 to 32 characters; values are JSON objects (``dict``) of at most
    16,384 bytes of compact UTF-8 JSON.  Any key may get a time-to-live in whole seconds.
    One process at a time may open a file; any number of threads may share the ``Store``.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as where:
    ...     with Store(os.path.join(where, "example.mmapkv")) as store:
    ...         store.create("user:1", {"name": "Ada", "langs": ["en", "fr"]})
    ...         store.read("user:1")
    {'name': 'Ada', 'langs': ['en', 'fr']}

    :param path: the store file (``str`` or ``os.PathLike``); ``None`` uses
        :func:`default_path`.  A missing file is created (mode 0600), parents included.
    :param max_size: the file's size ceiling in bytes, at most and by default 1 GiB.  It is
        fixed when the file is created; reopening with a different value is an error.
    :param durable: ``True`` msyncs after every change (survives power loss; slower).
        Otherwise a change survives a crash of the process but not of the machine
        until :meth:`flush` or :meth:`close`.
    :param lock_timeout: seconds to wait for another holder of the file to let go.
    :param clock: returns unix time in seconds; TTLs are measured with it (tests inject one).
        A reading that is not an ``int`` or ``float`` from 0 to ``codec.MAX_TIME`` fails the call that
        asked for it with ``InvalidArgumentError``.
    :raises StoreLockedError: another process or ``Store`` holds the file.
    :raises CorruptStoreError: the file is not an mmapkv store (it is left untouched).
    :raises FormatVersionError: the file is in a format version this mmapkv does not
        open (a newer one, or version 2: the message names the command that converts it).
    :raises StoreAccessError: the file or its directory cannot be made, opened or read
        (the errno is kept).
    :raises DiskFullError: no room on the disk for a new store (or for the holes of a
        sparse copy).
    :raises InvalidArgumentError: a bad *path*, *max_size* or *lock_timeout*.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_size: int | None = None,
                 durable: bool = False, lock_timeout: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine: Engine | None = None
        self._forked = False
        if path is None:
            path = default_path()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        try:
            path = os.fspath(path)
        except TypeError as exc:  # a __fspath__ that returns neither str nor bytes
            raise InvalidArgumentError(f"path: {exc}") from None
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidArgumentError(f"path must be a non-empty str without NUL, got {codec.shown(path)}")
        if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):  # abspath drops it
            raise InvalidArgumentError(f"{path} ends with {path[-1]!r}, so it names a directory; "
                                       "give the path of a store file")
        if os.path.basename(path) in (os.curdir, os.pardir):  # abspath drops these too
            raise InvalidArgumentError(f"{path} ends with {os.path.basename(path)!r}, so it names a "
                                       "directory; give the path of a store file")
        if max_size is not None:
            smallest = Geometry.smallest_max_size()
            if type(max_size) is not int or not smallest <= max_size <= MAX_FILE_SIZE:
                raise InvalidArgumentError(
                    f"max_size must be an int from {smallest:,} to {MAX_FILE_SIZE:,} bytes, got {codec.shown(max_size)}")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) \
                or not 0 <= lock_timeout <= threading.TIMEOUT_MAX:  # the longest wait a clock can time
            raise InvalidArgumentError(f"lock_timeout must be seconds from 0 to {threading.TIMEOUT_MAX:g}, "
                                       f"got {codec.shown(lock_timeout)}")
        codec.check_flag(durable, "durable")
        if not callable(clock):
            raise InvalidArgumentError("clock must be a callable returning seconds")
        try:
            self._path = absolute_path(path)
        except OSError as exc:  # a relative path, and the working directory is gone
            raise system_error(exc, f"cannot resolve the store path {path!r}") from None
        # A clock of the caller's has each reading checked; time.time's need not be.
        self._clock = clock if clock is time.time else codec.checked_clock(clock)
        # Reentrant only so that a call from inside another call of this thread (a signal
        # handler...) can be refused (_use) rather than wait for itself forever.
        self._lock = threading.RLock()
        self._lock_depth = recursion_count(self._lock)
        try:
            self._engine = Engine(self._path, max_size=max_size, durable=durable,
                                  lock_timeout=float(lock_timeout))
        except StoreLockedError as exc:
            if self._path != os.path.abspath(default_path()):
                raise
            raise StoreLockedError(f"{exc} (mmapkv.create, read and delete keep the default store open "
                                   "until the process exits: use them, or this Store, not both)") from None
        # Keys hash with the file's own seed; compact keeps it, so it never changes.
        self._seed = self._engine.seed
        self._pid = os.getpid()
        # popitem's place in a walk of the table: where its next step starts, and the keys
        # of its last step not popped yet.  A hint only: stale keys are skipped.
        self._popping: tuple[int, list[str]] = (0, [])
        _OPEN_STORES.add(self)

    # ----------------------------------------------------------------- lifecycle

    @property
    def path(self) -> str:
        """The absolute path of the store file."""
        return self._path

    def _closed(self) -> StoreClosedError:
        if self._forked:
            return StoreClosedError(
                f"this Store of {self._path} belongs to process {self._pid}; a forked child "
                "cannot use it (open the store in one process only)")
        return StoreClosedError(f"the Store of {self._path} is closed")

    def _disown(self) -> None:
        """In a forked child: drop the parent's map and file descriptor, keep its lock."""
        self._lock = threading.RLock()
        self._lock_depth = recursion_count(self._lock)
        engine, self._engine = self._engine, None
        if engine is not None:
            self._forked = True
            engine.close(release_lock=False)

    def _use(self) -> Engine:
        """The engine, ready for use; call with the lock held.

        Raises ``StoreClosedError`` after ``close`` (or in a forked child).  If a change
        was interrupted by an exception (Ctrl-C, ``MemoryError``...), repairs the store
        first, exactly as recovery after a crash would (docs/design.md, "Interrupts").
        """
        if self._lock_depth() > 1:
            raise self._reentered()
        engine = self._engine
        if engine is None:
            raise self._closed()
        if engine.changes:
            engine = self._repair(engine)
        if engine.info_to_check:  # the session's first call under the lock
            engine.check_slot_info()
        return engine

    def _reentered(self) -> ReentrantCallError:
        return ReentrantCallError(
            f"{self._path}: a Store method was called while this thread is inside another call "
            "of this store (from a signal handler, a __del__, a weakref callback or the clock?): "
            "it cannot run in the middle of that call; let the handler set a flag instead")

    def _repair(self, engine: Engine) -> Engine:
        """``_use`` after an interrupted change.  Every step may be interrupted again, so
        each leaves things for the next call to finish: the Store is switched to another
        engine by one assignment, and only once that engine is ready."""
        successor = engine.successor
        # A successor half-released (an interrupt in its _release) is never taken: its
        # map goes first and its number before its close, so either flag tells
        if (successor is not None and successor._mapped and successor._fd >= 0
                and names_file(self._path, successor._fd)):
            # A compact renamed its finished file over ours and was interrupted before it
            # switched the Store over: that file is the store now.
            successor.path = self._path
            self._engine = successor
            engine.successor = None
            engine._release()
            return successor
        if successor is not None:  # a compact stopped before its rename: drop its file
            successor._release()  # (no sync: it is deleted next)
            remove_abandoned(self._path)
            engine.successor = None
        # Our own file, whatever the path names now: a file another program put there is
        # not this store's to open
        engine.repair()
        return engine

    def _found(self, engine: Engine, key: str, kb: bytes,
               fp: int) -> tuple[memoryview, int, float] | None:
        """``engine.get`` under the lock, dropping a damaged entry: on one, recover (which
        frees every record that fails its checksum and rebuilds the table), so that ``in``,
        ``len`` and ``keys`` agree with ``read``.  If the damage was in the table only, the
        key is there again: return it; else raise ``CorruptStoreError``."""
        try:
            return engine.get(kb, fp)
        except DamagedEntry as exc:
            damaged = exc
        with engine.change():
            engine.recover()
        try:
            found = engine.get(kb, fp)
        except DamagedEntry:
            found = None
        if found is not None:
            return found
        raise CorruptStoreError(
            f"{self._path}: the entry of key {str.__repr__(key)} fails its checksum (offset {damaged.offset}) "
            "and was dropped: its value is lost; `mmapkv verify` checks the rest of the file")

    def close(self) -> None:
        """Write the counters, mark the file cleanly closed, sync it and unlock it.

        Idempotent.  After it every other method raises ``StoreClosedError``.
        """
        with self._lock:
            if self._lock_depth() > 1:
                raise self._reentered()  # closing under the call would pull its map away
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.close()

    def _discard(self) -> None:
        """Close; and delete the file first if this Store's open made it and the path still
        names it: for a store a command made and could not fill.  A file that another
        process made, or put at the path since, is never deleted.  The name goes while the
        lock is still held, so nobody opens the file meanwhile, and the close does not
        report the deletion as another program's (an interrupt after the unlink leaves
        that close to the caller's ``with``, which must not either)."""
        with self._lock:
            engine = self._engine
            if engine is not None and engine.made and names_file(self._path, engine._fd):
                engine.discarded = True
                os.unlink(self._path)
        self.close()

    def flush(self) -> None:
        """Force every change so far to disk (msync): it now survives power loss."""
        with self._lock:
            self._use().flush()

    def __enter__(self) -> Store:
        if self._engine is None:  # as a closed file refuses `with`
            raise self._closed()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A finaliser must never block: if the lock is held (by a thread that is about
        # to drop its own reference, or left held), leave the file to the FileIO that owns
        # the engine's descriptor, whose finaliser closes it: the next open then recovers.
        try:
            if self._engine is not None and os.getpid() == self._pid and \
                    self._lock.acquire(blocking=False):
                self._lock.release()
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<mmapkv.Store {self._path!r} {state}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        """Refuse ``pickle``, ``copy.copy`` and ``copy.deepcopy`` (all of them ask this).  A
        copy would share the map and the lock, and the first of the two to be collected
        would close the store under the other (or a pickle would reopen a file this
        process holds)."""
        raise InvalidArgumentError(
            f"a Store cannot be copied or pickled: it is this process's one handle on {self._path}. "
            "Share the object itself between threads; another process opens the path itself, "
            "once this one has closed it")

    # ----------------------------------------------------------------- reads

    def read(self, key: str) -> dict[str, Any]:
        """Return the value stored under *key*, as a new ``dict``.

        Cost: one hash, one directory entry, about 1.3 table probes in one segment page and
        one record read, then JSON decoding.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        :raises InvalidKeyError: *key* is not a valid key.
        :raises CorruptStoreError: the stored entry fails its checksum.
        """
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            self._raise_missing(key)
        return value  # type: ignore[no-any-return,unused-ignore]

    __getitem__ = read

    @overload
    def get(self, key: str) -> dict[str, Any] | None: ...
    @overload
    def get(self, key: str, default: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def get(self, key: str, default: _T) -> dict[str, Any] | _T: ...

    def get(self, key: str, default: Any = None) -> Any:
        """Like :meth:`read`, but return *default* for a missing or expired key (without
        building an exception: a miss costs a lookup only).

        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as where, Store(os.path.join(where, "s")) as store:
        ...     store.get("nope", {})
        {}

        The read path of ``read`` and ``[]`` too.  It takes no lock, so readers never wait
        for each other (nor queue behind one that the GIL switched out while holding a
        lock): it reads the engine's ``generation``, finds and decodes the record straight
        from the map and reads ``generation`` again.  If a change ran meanwhile (or one is
        open, or the map went away under it), what it read is not trusted and the read is
        done again under the lock, as writers do.
        """
        # The hot path: the common key is checked inline, the rest by _key_bytes.
        if type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH:
            try:
                kb = key.encode()
            except UnicodeEncodeError:
                kb = _key_bytes(key)
        else:
            kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        engine = self._engine
        if engine is not None and not engine.changes:
            generation = engine.generation
            try:
                found = engine.get(kb, fp)
                # Decoded straight from the map, no copy: orjson is C holding the GIL, so
                # no writer runs while it reads; one may run before it (or during stdlib
                # json's decode, for ints past 64 bits), which the generation check after
                # it catches, and _TORN whatever the decoder raised meanwhile.
                if found is None or (found[2] and self._clock() >= found[2]):
                    value = default  # no decoding for an expired key
                else:
                    value = _loads(found[0]) if not found[1] else _decode(found[0], found[1])
            except _TORN:
                pass  # a record or map changed under the read: the locked path decides
            else:
                # changes first: a writer between its generation bump and its changes
                # bump when the read began is still counted in changes here, or it has
                # left, bumping generation again (Engine.__enter__, __exit__)
                if not engine.changes and engine.generation == generation:
                    return value
        # `with`, not acquire() and try: an interrupt between those two would keep the lock.
        with self._lock:
            engine = self._use()
            found = self._found(engine, key, kb, fp)
            if found is None:
                return default
            data, flags, expires = bytes(found[0]), found[1], found[2]
        if expires and self._clock() >= expires:
            return default
        return self._decoded(key, data, flags)

    def _decoded(self, key: str, data: bytes | memoryview, flags: int) -> dict[str, Any]:
        """The value stored as *data*; text that passed its checksum yet does not decode
        (an int longer than this process's ``sys.set_int_max_str_digits`` allows, say) is
        ``CorruptStoreError``, from every call that returns values, and nothing changes."""
        try:
            return _loads(data) if not flags else _decode(data, flags)
        except (ValueError, RecursionError) as exc:  # (the second: stdlib json, forged text)
            raise CorruptStoreError(f"{self._path}: the value of {str.__repr__(key)} is not JSON: {exc}") from None

    def _raise_missing(self, key: str) -> NoReturn:
        """Raise what a ``read`` of *key* that found nothing raises: ``KeyExpiredError``
        if its record is still there, expired, else ``KeyNotFoundError``.  (Stored since
        the lookup: still ``KeyNotFoundError``, since the read came first.)"""
        self.ttl(key)  # raises both, as read names them
        raise self._not_found(key)

    def __contains__(self, key: object) -> bool:
        """True if *key* is stored and unexpired.  Cost: one lookup and a checksum, no
        decoding.  Like :meth:`get`, it takes no lock unless a change ran under it.

        Like ``read``, a *key* that could never be stored (not a ``str``, too long) raises
        ``InvalidKeyError`` (a ``TypeError``/``ValueError``) rather than answering False,
        and a damaged entry raises ``CorruptStoreError`` (and is dropped).
        """
        kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        seen = self._expiry_unlocked(kb, fp)
        if seen is None:
            with self._lock:  # the clock read under it too: no change between the two
                found = self._found(self._use(), str(key), kb, fp)
                return found is not None and (not found[2] or self._clock() < found[2])
        expires, now = seen
        return expires >= 0 and (not expires or now < expires)

    def _expiry_unlocked(self, kb: bytes, fp: int) -> tuple[float, float] | None:
        """(expiry of *kb*'s record (0.0: none; -1.0: no record), the clock's time if it
        has an expiry), read without the lock as :meth:`get` reads (without the decode);
        None if a change ran under the look, or is open: the caller asks again under the
        lock.  The clock is read inside the look, as ``get`` reads it: read after it, it
        could judge an expiry that an ``expire`` or ``persist`` had replaced meanwhile
        (a key never expired called expired)."""
        engine = self._engine
        if engine is not None and not engine.changes:
            generation = engine.generation
            try:
                found = engine.get(kb, fp)
            except _TORN:
                return None
            expires = -1.0 if found is None else found[2]
            now = self._clock() if expires > 0 else 0.0
            if not engine.changes and engine.generation == generation:  # as in get
                return expires, now
        return None

    def __len__(self) -> int:
        """The number of unexpired keys.

        O(1), unless a TTL has passed since the last count: then expired entries are
        reclaimed first, O(records expired) plus O(slots) to find them (in steps,
        between which other threads run).  It counts what the file records as live: an entry
        damaged on disk is counted until an operation finds it and drops it (``read``,
        ``in``, ``keys``) or recovery does; the checksums are not read for a count.
        """
        return self._reclaimed(lambda engine: engine.live_count)

    def _reclaimed(self, answer: Callable[[Engine], _T]) -> _T:
        """*answer* of the engine, under the lock, once no record expired at the clock's
        time when this began is left.  The lock is let go between the sweep's steps, so
        readers and writers are held up one step at a time (a million keys that expired
        together kept every thread waiting 13 s).

        After two whole passes the rest is swept in one hold: a pass may begin where a
        write's sweep stopped, so a second is needed, but a thread writing records already
        expired at *now* (its clock behind this one's) between the steps could otherwise
        keep this loop going for good."""
        now: float | None = None
        passes = 0
        while True:
            with self._lock:
                engine = self._use()
                if not engine.ttl_count:
                    return answer(engine)
                if now is None:
                    now = self._clock()
                if engine.next_expiry > now:
                    return answer(engine)
                whole = passes >= 2
                with engine.change():
                    if whole:  # from the first slot: a write's step may have left the cursor past some
                        engine._sweep_from = 0
                    passes += engine.sweep(now, None if whole else engine.sweep_step)
                if whole:
                    return answer(engine)
            # Let go of the GIL too: else this thread takes the lock again before a thread
            # woken by its release runs (a reader waited up to 291 ms, 17 to 126 ms with it)
            time.sleep(0)

    def keys(self) -> list[str]:  # type: ignore[override]  # a snapshot list, as documented
        """The unexpired keys, in the order iteration meets them (a snapshot list, built
        under one hold of the lock; ``for key in store`` streams them instead).  O(slots +
        bytes of values): each entry's checksum is checked, so ``keys()`` lists what
        ``read`` can read.

        :raises CorruptStoreError: entries damaged on disk were found; they are dropped
            (their values are lost), and the next call lists the intact keys.
        """
        with self._lock:
            engine = self._use()
            now = self._clock() if engine.ttl_count else 0.0
            keys, damaged, table_damaged = _readable_keys(engine, now)
            if table_damaged and not damaged:  # no value lost: the repair rebuilds the table,
                with engine.change():          # indexing again what it lost, and all are listed
                    engine.recover()
                keys, damaged, _ = _readable_keys(engine, now)
            if damaged:
                raise self._drop_damaged(engine, damaged, "call keys() again")
            return keys

    def __iter__(self) -> Iterator[str]:
        """The unexpired keys, streamed: a table segment's keys (at most 1,792) at a time,
        each step under the lock, so memory stays flat however many keys the store holds
        (``keys()`` builds the whole list) and writers wait at most one step.

        A key stored for the whole iteration is met exactly once, even if it is
        overwritten, its TTL changed or the file grown or compacted meanwhile; a key
        created or deleted meanwhile may or may not be met (``dict`` raises instead).  The
        order is the table's (by hash), not the order of creation.

        :raises CorruptStoreError: a step met entries damaged on disk; they are dropped
            (their values are lost), and a new iteration lists the intact keys.
        """
        cursor = 0
        while True:
            keys, cursor = self._scan(cursor)
            yield from keys
            if not cursor:
                return

    def _scan(self, cursor: int) -> tuple[list[str], int]:
        """One step of ``__iter__``: ``Engine.scan`` under the lock."""
        with self._lock:
            engine = self._use()
            now = self._clock() if engine.ttl_count else 0.0
            try:
                keys, cursor, damaged, _ = engine.scan(cursor, now)
            except DamagedEntry:  # the table itself: rebuilt from the records, no value lost
                with engine.change():
                    engine.recover()
                keys, cursor, damaged, _ = engine.scan(cursor, now)
            if damaged:
                raise self._drop_damaged(engine, damaged, "iterate again")
            return keys, cursor

    def _drop_damaged(self, engine: Engine, damaged: int, then: str) -> CorruptStoreError:
        """Drop the *damaged* entries a listing met (recovery frees every record that fails
        its checksum and rebuilds the table) and return the error that says so."""
        with engine.change():
            engine.recover()
        return CorruptStoreError(
            f"{self._path}: " + ("1 entry fails its checksum and was" if damaged == 1
                                 else f"{damaged} entries fail their checksums and were")
            + f" dropped (the values are lost); the other keys are intact: {then}")

    def stats(self) -> StoreStats:
        """Sizes and counts of the store; O(1) unless expired keys need reclaiming.

        See ``python -m mmapkv.stats`` for the full report (probe lengths, value sizes).
        """
        return self._reclaimed(self._stats)

    def _stats(self, engine: Engine) -> StoreStats:
        g = engine.geometry
        table_capacity = engine.table.segment_count * SEGMENT_ENTRIES
        return StoreStats(
            path=self._path, format_version=VERSION, file_size=engine.file_size,
            max_size=g.max_size, slot_size=SLOT_SIZE, max_value_bytes=MAX_VALUE_BYTES,
            capacity=engine.slot_count, max_capacity=g.max_slots,
            free_slots=engine.slots.free_slots(), live_keys=engine.live_count,
            keys_with_ttl=engine.ttl_count, table_segments=engine.table.segment_count,
            table_capacity=table_capacity, load_factor=engine.live_count / table_capacity,
            durable=engine.durable)

    def verify(self) -> list[str]:
        """Walk the whole file and return every broken invariant (empty list: all good).

        For tests and post-mortems; O(slots + table).  See ``Engine.check`` for the list.
        """
        with self._lock:
            return self._use().check()

    # ----------------------------------------------------------------- writes

    def create(self, key: str, value: Mapping[str, Any], ttl: int | None = None) -> None:
        """Store *value* under a new *key*, optionally expiring *ttl* seconds from now.

        An expired entry under the same key is replaced.  Cost: one lookup, one record
        write into a sub-slot of its size class; rarely the split of one table segment
        (about 1,000 entries moved) or a doubling of the file (no rehash).

        :raises KeyExistsError: *key* is stored and unexpired.
        :raises InvalidKeyError, InvalidValueError, ValueTooLargeError, InvalidTTLError:
            a bad argument; nothing is written.
        :raises StoreFullError: the file is at its ceiling and neither a sub-slot of the
            record's class nor a whole slot is free, even after moving the records of
            another class together to give slots back (docs/design.md).
        :raises DiskFullError: the file had to grow and the disk refused.
        """
        kb, fp, data, flags, ttl = self._prepare(key, value, ttl)
        with self._lock:
            engine = self._use()
            index = engine.find(kb, fp)
            now = self._clock() if ttl is not None or index >= 0 else 0.0
            if index >= 0:
                old_expiry = engine.expires_at(index)
                if not old_expiry or now < old_expiry:
                    raise KeyExistsError(f"key {str.__repr__(key)} already exists in {self._path}")
            expires = now + ttl if ttl is not None else 0.0
            # the common create: one engine call, in its own bracket (an expired entry
            # of the key is replaced, as by set)
            if engine.try_put(kb, fp, data, flags, expires, index):
                return
            with engine.change():
                if index >= 0:
                    engine.remove(index)
                self._make_room(engine, [KEY_OFFSET + len(kb) + len(data)], [fp])
                engine.insert(kb, fp, data, flags, expires)

    def delete(self, key: str) -> None:
        """Remove *key* and free its slot.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        :raises InvalidKeyError: *key* is not a valid key.
        """
        kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        with self._lock:
            engine = self._use()
            # The clock before the removal: a reading it refuses leaves the key stored.
            now = self._clock() if engine.ttl_count else 0.0
            # an expired key is removed too: its room is reclaimed while we are here
            expires = engine.remove_key(kb, fp)
            if expires:
                if expires < 0:
                    raise self._not_found(key)
                if now >= expires:
                    raise self._expired(key, expires)

    def batch_create(self, items: Mapping[str, Mapping[str, Any]] | Iterable[Any],
                     ttl: int | None = None) -> None:
        """Create many keys at once: all of them, or (on any error) none.

        *items* is a mapping ``{key: value}`` or an iterable of ``(key, value)`` and
        ``(key, value, ttl)`` tuples or ``{"key": ..., "value": ...[, "ttl": ...]}`` dicts;
        *ttl* applies to items that do not give their own (an item's ``None`` TTL means
        "never expires", whatever *ttl* says).
        Every item is checked before anything is written, and the batch commits with one
        write, so after a crash either all of it or none of it is there.

        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as where, Store(os.path.join(where, "s")) as store:
        ...     store.batch_create({"a": {"n": 1}, "b": {"n": 2}})
        ...     sorted(store.keys())
        ['a', 'b']

        :raises KeyExistsError: a key is stored already, or given twice.
        :raises InvalidArgumentError: an item is none of those shapes.
        :raises StoreFullError: the batch does not fit under the ceiling.
        """
        prepared = [(key, kb, _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT, data, flags, item_ttl)
                    for key, kb, data, flags, item_ttl in codec.batch_items(items, ttl)]
        self._commit_batch(prepared, overwrite=False)

    def restore_entries(self, entries: Iterable[tuple[str, Mapping[str, Any], float | None]], *,
                        replace: bool = False) -> int:
        """Write (key, value, expires_at) entries as one batch, all or nothing, each keeping
        its absolute expiry (unix seconds by this store's clock; ``None``: none): what a
        key read with :meth:`items_with_expiry` from another store needs to expire at the
        same instant here.  Entries whose expiry has passed are skipped.  Without *replace*
        a live key refuses the whole batch; with it, stored keys are overwritten.  Returns
        the number of entries written.  The same commit as :meth:`batch_create`: after a
        crash or an exception at any point, all of them are there or none.

        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as where, \\
        ...         Store(os.path.join(where, "s"), clock=lambda: 1000.0) as store:
        ...     store.restore_entries([("a", {"n": 1}, 1060.0), ("b", {"n": 2}, None),
        ...                            ("gone", {"n": 3}, 999.0)])
        ...     store.ttl("a"), store.ttl("b"), "gone" in store
        2
        (60, None, False)

        :raises KeyExistsError: a key is stored and live (without *replace*), or given twice.
        :raises InvalidArgumentError: an entry is not a (key, value, expires_at) tuple.
        :raises InvalidTTLError: an ``expires_at`` is not unix seconds before the year
            2386 (it may be more than ``MAX_TTL`` ahead: another clock set it).
        :raises StoreFullError: the entries do not fit under the ceiling.
        """
        codec.check_flag(replace, "replace")
        prepared = [(key, kb, _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT, data, flags, expires)
                    for key, kb, data, flags, expires in codec.expiring_entries(entries, self._clock)]
        self._commit_batch(prepared, overwrite=replace, absolute=True)
        return len(prepared)

    def _commit_batch(self, prepared: Sequence[tuple[str, bytes, int, bytes, int, float | None]], *,
                      overwrite: bool, absolute: bool = False) -> None:
        """Write checked (key, key bytes, fingerprint, data, flags, ttl) items as one
        batch: PENDING records, one commit write, then LIVE and indexed.  Without
        *overwrite* a live key refuses the whole batch (expired ones are replaced).  With
        *absolute*, an item's last field is its expiry in unix seconds (0.0: none), not a
        TTL."""
        with self._lock:
            engine = self._use()
            if not prepared:
                return
            now = self._clock()
            # The loops run in helpers, never in this frame (the note above _readable_keys).
            expired, stored = self._stored_keys(engine, prepared, now, overwrite)
            with engine.change():
                _remove_keys(engine, expired)
                def recount() -> tuple[list[int], list[int]]:  # a sweep's clock is later than now
                    stored.intersection_update([kb for _, kb, fp, _, _, _ in prepared if engine.find(kb, fp) >= 0])
                    return _room_wanted(prepared, stored)

                self._make_room(engine, *_room_wanted(prepared, stored), recount)
                seq = engine.begin_batch()
                written: list[tuple[int, int, bool]] = []
                try:
                    _write_pending(engine, prepared, stored, seq, now, absolute, written)
                except CLEAN_FAILURES:  # a full disk: give the slots back, change nothing
                    engine.abort_batch(written)
                    raise
                engine.commit_batch(seq, written)

    def _stored_keys(self, engine: Engine, prepared: Sequence[tuple[str, bytes, int, bytes, int, float | None]],
                     now: float, overwrite: bool) -> tuple[list[tuple[bytes, int]], set[bytes]]:
        """The batch's keys stored expired, as (key bytes, fingerprint), and those stored
        live; unless *overwrite*, a live one raises ``KeyExistsError``."""
        expired = []
        stored = set()
        for key, kb, fp, _, _, _ in prepared:
            index = engine.find(kb, fp)
            if index >= 0:
                old_expiry = engine.expires_at(index)
                if not old_expiry or now < old_expiry:
                    if not overwrite:
                        raise KeyExistsError(f"key {str.__repr__(key)} already exists in {self._path}")
                    stored.add(kb)
                else:
                    expired.append((kb, fp))
        return expired, stored

    # ----------------------------------------------------------------- overwrites

    def set(self, key: str, value: Mapping[str, Any], ttl: int | None = None) -> None:
        """Store *value* under *key* whether or not it is there (an upsert); *ttl*
        replaces the key's TTL (``None``: it never expires).

        The new record is written beside the old one, then the key's table entry is
        switched to it with one 8-byte store, then the old record is freed: a reader
        sees the old value or the new one, never neither; after a crash or an exception
        at any point exactly one of them is stored (recovery keeps the newer write).

        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as where, Store(os.path.join(where, "s")) as store:
        ...     store.set("k", {"v": 1})
        ...     store.set("k", {"v": 2}, ttl=60)
        ...     store.read("k"), store.ttl("k")
        ({'v': 2}, 60)
        """
        kb, fp, data, flags, ttl = self._prepare(key, value, ttl)
        with self._lock:
            engine = self._use()
            self._put(engine, kb, fp, data, flags, self._clock() + ttl if ttl is not None else 0.0)

    __setitem__ = set

    def replace(self, key: str, value: Mapping[str, Any], ttl: Any = _KEEP) -> None:
        """Like :meth:`set`, but only for a stored, unexpired *key*.  The key keeps its
        TTL unless *ttl* is given (``None`` removes it), as a cache refresh expects.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        """
        kb = _key_bytes(key)
        data, flags = _encode(value)
        if ttl is not _KEEP and ttl is not None:
            ttl = _check_ttl(ttl)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        with self._lock:
            engine = self._use()
            _, _, old_expiry, now = self._live_record(engine, key, kb, fp)  # checked: it may be kept
            expires = old_expiry if ttl is _KEEP else (now + ttl if ttl is not None else 0.0)
            self._put(engine, kb, fp, data, flags, expires)

    def ttl(self, key: str) -> int | None:
        """Seconds until *key* expires, rounded up (``None``: it never expires).  Like
        :meth:`get`, it takes no lock unless a change ran under it.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        """
        kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        seen = self._expiry_unlocked(kb, fp)
        if seen is None:
            with self._lock:
                _, _, expires, now = self._live_record(self._use(), key, kb, fp)
        else:
            expires, now = seen
            if expires < 0:
                raise self._not_found(key)
            self._unexpired_at(key, expires, now)
        # Rounded to 10 us first: expires is now + ttl in a float, which can round up past
        # the whole second (clock 7.97, ttl 3: 3.0000000000000004 left, "4"); alive, at least 1
        return max(1, math.ceil(round(expires - now, 5))) if expires else None

    def expire(self, key: str, ttl: int) -> None:
        """Make *key* expire *ttl* seconds from now, whatever TTL it had.  Atomic: the
        record is rewritten with its new expiry and switched to as :meth:`set` does.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        :raises InvalidTTLError: *ttl* is not a whole number of seconds from 1.
        :raises StoreFullError: at the ceiling, no sub-slot is free for the new record.
        """
        self._retime(key, _check_ttl(ttl, required=True))

    def persist(self, key: str) -> bool:
        """Remove *key*'s TTL.  True if it had one (Redis's ``PERSIST``).

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        :raises StoreFullError: at the ceiling, no sub-slot is free for the new record.
        """
        return self._retime(key, None)

    def _retime(self, key: str, ttl: int | None) -> bool:
        """Give *key* a new expiry (``None``: none); True if it had one."""
        kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        with self._lock:
            engine = self._use()
            view, flags, old_expiry, now = self._live_record(engine, key, kb, fp)
            if ttl is None and not old_expiry:
                return False  # nothing to change: write nothing
            data = bytes(view)  # a copy: making room may remap
            self._put(engine, kb, fp, data, flags, now + ttl if ttl is not None else 0.0)
            return bool(old_expiry)

    def _live_record(self, engine: Engine, key: str, kb: bytes,
                     fp: int) -> tuple[memoryview, int, float, float]:
        """(value view, codec flags, expiry, now) of a stored, unexpired *key*, checksum
        checked, with one lookup; damaged entries are dropped as ``read`` drops them.

        :raises KeyNotFoundError: *key* is not stored (``KeyExpiredError`` if it expired and
            its record is not reclaimed yet: a sweep, which ``len`` may run, reclaims it).
        """
        found = self._found(engine, key, kb, fp)
        if found is None:
            raise self._not_found(key)
        data, flags, expires = found
        return data, flags, expires, self._now_unexpired(key, expires)

    def _not_found(self, key: str) -> KeyNotFoundError:
        return KeyNotFoundError(f"key {str.__repr__(key)} is not in {self._path}")

    def _now_unexpired(self, key: str, expires: float) -> float:
        """The clock's time, unless *key*'s expiry (0.0: none) has passed by it."""
        return self._unexpired_at(key, expires, self._clock())

    def _unexpired_at(self, key: str, expires: float, now: float) -> float:
        """*now*, unless *key*'s expiry (0.0: none) has passed by it."""
        if expires and now >= expires:
            raise self._expired(key, expires)
        return now

    @staticmethod
    def _expired(key: str, expires: float) -> KeyExpiredError:
        return KeyExpiredError(f"key {str.__repr__(key)} expired at {expires:.0f} (unix time)")

    def _put(self, engine: Engine, kb: bytes, fp: int, data: bytes, flags: int, expires: float) -> None:
        """Write a record for *kb* and index it, replacing the key's entry (live or
        expired) if it has one.  Call with the lock held."""
        index = engine.find(kb, fp)
        if engine.try_put(kb, fp, data, flags, expires, index):
            return  # the common case: one engine call, in its own bracket
        with engine.change():  # try_put changed nothing: index still holds
            had = index >= 0
            if self._make_room(engine, [KEY_OFFSET + len(kb) + len(data)], [] if had else [fp]):
                index = engine.find(kb, fp)  # a sweep moved the table's entries, or took it
            if index >= 0:
                engine.replace(index, kb, fp, data, flags, expires)
                return
            if had:  # swept as expired while making room: it needs a table entry after all
                self._make_room(engine, [], [fp])
            engine.insert(kb, fp, data, flags, expires)

    # ----------------------------------------------------------------- the mapping

    __delitem__ = delete

    def items(self) -> ItemsView[str, dict[str, Any]]:
        """The unexpired (key, value) pairs, decoded one at a time as they are iterated
        (no dict of the whole store is built); keys deleted or expired meanwhile are
        skipped."""
        return Items(self)

    def values(self) -> ValuesView[dict[str, Any]]:
        """The unexpired values, decoded one at a time as they are iterated."""
        return Values(self)

    def _pairs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key in self:
            value = self.get(key, _GONE)
            if value is not _GONE:  # deleted or expired since it was listed
                yield key, value

    def items_with_expiry(self, keys: Iterable[str] | None = None
                          ) -> Iterator[tuple[str, dict[str, Any], float | None]]:
        """(key, value, absolute expiry) for every unexpired key, or for those of *keys*:
        the expiry as stored in the file, unix seconds by this store's clock (``None``: no
        TTL).  Missing and expired keys are skipped; values are decoded one at a time.
        What ``mmapkv copy`` reads, so that a copied TTL ends at the same instant rather
        than starting again.

        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as where, \\
        ...         Store(os.path.join(where, "s"), clock=lambda: 1000.0) as store:
        ...     store.create("a", {"n": 1}, ttl=60)
        ...     list(store.items_with_expiry())
        [('a', {'n': 1}, 1060.0)]

        :raises InvalidArgumentError: *keys* is not an iterable of keys (one str is not).
        """
        return self._items_with_expiry(self if keys is None else codec.keys_to_look_up(keys))

    def _items_with_expiry(self, keys: Iterable[str]) -> Iterator[tuple[str, dict[str, Any], float | None]]:
        for key in keys:
            kb = _key_bytes(key)
            fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
            with self._lock:
                engine = self._use()
                try:
                    data, flags, expires, _ = self._live_record(engine, key, kb, fp)
                except KeyNotFoundError:
                    continue  # deleted or expired since the scan listed it
                value = self._decoded(key, data, flags)  # under the lock: data is a view of the map
                del data  # not kept while suspended: a growth would map the file anew, not resize
            yield key, value, expires or None

    @overload
    def pop(self, key: str) -> dict[str, Any]: ...
    @overload
    def pop(self, key: str, default: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def pop(self, key: str, default: _T) -> dict[str, Any] | _T: ...

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove *key* and return its value; *default* (if given) for a missing or
        expired key.  Read and delete happen under one hold of the lock."""
        kb = _key_bytes(key)
        fp = _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT
        with self._lock:
            engine = self._use()
            try:
                data, flags, _, _ = self._live_record(engine, key, kb, fp)
            except KeyNotFoundError:
                if default is _MISSING:
                    raise
                return default
            value = self._decoded(key, data, flags)  # before the delete: a refusal keeps the key
            with engine.change():
                engine.remove(engine.find(kb, fp))
            return value

    def popitem(self) -> tuple[str, dict[str, Any]]:
        """Remove and return some (key, value) pair; ``KeyError`` when empty.

        It goes on from where the last ``popitem`` stopped in a walk of the table (as
        iteration walks it), so emptying a store with ``popitem`` reads each table
        segment about once, not once per key; it says "empty" only after a whole lap.
        """
        # Expired entries go first (a sweep, in steps, as len() runs it): a lap over them
        # found nothing to pop and left them all for the next call to read again.
        self._reclaimed(lambda engine: None)
        cursor, pending = self._popping
        start, laps = cursor, 0
        while True:
            while pending:
                try:
                    key = pending.pop()
                except IndexError:  # the list is shared: another thread's popitem emptied it
                    break
                value = self.pop(key, _GONE)
                if value is not _GONE:  # another thread may have taken it meanwhile
                    self._popping = (cursor, pending)
                    return key, value
            # Round to where it began; or round twice, when the table got coarser and
            # *start* now lies inside the last run, which no step begins past.
            if laps and cursor >= start or laps > 1:
                self._popping = (cursor, [])
                raise KeyNotFoundError(f"popitem(): {self._path} is empty")
            pending, cursor = self._scan(cursor)
            laps += not cursor  # the next step starts the order over

    def setdefault(self, key: str, default: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The value of *key*; if missing or expired, store *default* first (under one
        hold of the lock) and return it.  As with ``dict``, *default* counts only then:
        for a stored key it may be left out, and it is not checked.

        :raises InvalidValueError: *key* is missing and *default* is not a value to store
            (``None`` included: a store holds JSON objects only).
        """
        found = self.get(key, _ABSENT)  # lock-free, as get; checks the key
        if found is not _ABSENT:
            return found  # type: ignore[no-any-return,unused-ignore]
        if default is None:
            raise InvalidValueError("setdefault() needs a default value: a store holds JSON objects only")
        kb, fp, data, flags, _ = self._prepare(key, default, None)
        with self._lock:
            engine = self._use()
            try:
                stored, stored_flags, _, _ = self._live_record(engine, key, kb, fp)
            except KeyNotFoundError:
                self._put(engine, kb, fp, data, flags, 0.0)
                return _decode(data, flags)
            return self._decoded(key, stored, stored_flags)

    def update(self, other: Any = (), /, **kwargs: dict[str, Any]) -> None:
        """Set many keys at once, overwriting: all of them, or (on any error) none, with
        one commit like :meth:`batch_create`.  *other* is a mapping or an iterable of
        (key, value) pairs; keyword arguments are added to it, as ``dict.update`` does."""
        prepared = [(key, kb, _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT, data, flags, None)
                    for key, kb, data, flags in codec.update_pairs(other, kwargs)]
        self._commit_batch(prepared, overwrite=True)

    def clear(self) -> None:
        """Remove every key at once: one 8-byte write in the superblock (``floor_seq``)
        forgets every record written before it, then the table is rebuilt by recovery
        (O(slots + records): 0.8 s over a million keys)."""
        with self._lock:
            engine = self._use()
            with engine.change():
                engine.clear()

    # ----------------------------------------------------------------- room

    def _reclaim_expired(self, engine: Engine, room: Callable[[], bool]) -> bool:
        """Sweep expired records, a step at a time, until none is left or *room* says
        there is room; True if it swept."""
        if not engine.ttl_count:
            return False
        now = self._clock()
        swept = False
        while engine.next_expiry <= now:
            with engine.change():
                engine.sweep(now, engine.sweep_step)
            swept = True
            # Not on "done": a pass that began where the last step stopped ends at the last
            # slot with expired records behind it (next_expiry still passed); the loop goes
            # round from the first slot then, and a whole pass leaves none (the lock is held)
            if room():
                break
        return swept

    def _gather(self, engine: Engine, record_sizes: list[int], fps: list[int]) -> bool:
        """At the ceiling: free the slots these records lack by moving the records of a
        class together (``Engine.gather``); True if there is room now.  Entries keep their
        table positions, so positions found before stay good."""
        with engine.change():
            freed = engine.gather(record_sizes, fps)
        return bool(freed) and engine.room_for(record_sizes, fps)  # (no growth at the ceiling)

    def _prepare(self, key: str, value: Mapping[str, Any], ttl: int | None) -> tuple[bytes, int, bytes, int, int | None]:
        """Check a write's arguments before anything is touched: (key bytes, fingerprint,
        encoded value, codec flags, ttl)."""
        kb = _key_bytes(key)
        data, flags = _encode(value)
        if ttl is not None:
            ttl = _check_ttl(ttl)
        return kb, _xxh3(kb, self._seed) >> FINGERPRINT_SHIFT, data, flags, ttl

    def _make_room(self, engine: Engine, record_sizes: list[int], fps: list[int],
                   recount: Callable[[], tuple[list[int], list[int]]] | None = None) -> bool:
        """Ensure room for new records of these sizes (and their table entries): in the
        slots the file has, else after reclaiming expired entries (room already paid for),
        else by growing the file, else, at the ceiling, by gathering a class's records
        (``_gather``), else raise ``StoreFullError``.  True if it swept expired
        entries (table positions found before are then stale).  After a sweep, *recount*
        (if given) says the sizes and fingerprints again: the sweep reads the clock anew,
        and may have removed a key counted as stored, whose entry is then a new one."""
        if engine.room_for(record_sizes, fps, grow=False):
            return False

        roomy = False

        def room() -> bool:  # after a step of the sweep: enough reclaimed to need no growth?
            nonlocal record_sizes, fps, roomy
            if not engine.room_for(record_sizes, fps, grow=False):
                return False  # (the counts from before the step ask no more than the true ones)
            if recount is not None:  # O(batch): only when the answer may be yes
                record_sizes, fps = recount()
            roomy = engine.room_for(record_sizes, fps, grow=False)
            return roomy

        swept = self._reclaim_expired(engine, room)
        if roomy:  # counted and found room after the last step: nothing to count again
            return swept
        if swept and recount is not None:
            record_sizes, fps = recount()
        if engine.room_for(record_sizes, fps):
            return swept
        g = engine.geometry
        if engine.slot_count >= g.max_slots and self._gather(engine, record_sizes, fps):
            return swept
        if engine.slot_count < g.max_slots:  # refused before growing: too many even there
            raise StoreFullError(
                f"{self._path} has no room for {len(record_sizes):,} more keys even at its "
                f"{g.max_size:,}-byte ceiling ({engine.live_count:,} keys in "
                f"{engine.slot_count:,} of the {g.max_slots:,} slots it may have; it was not "
                "grown for a write that cannot fit); delete keys to make room")
        classes = sorted({CLASS_SIZES[class_for(size)] for size in record_sizes})
        free_elsewhere = sum(free for size, (_, _, free) in engine.class_usage().items()
                             if size not in classes)
        records, splits = engine.slots_wanted(record_sizes, fps)
        lacking = [f"no free slot or {'/'.join(map(str, classes))}-byte sub-slot for "
                   f"{len(record_sizes):,} more"] if records or not splits else []
        if splits:  # the keys' table segment is full (1,792 entries) and cannot split
            lacking.append(f"no slot to split a full table segment into for {len(fps):,} new "
                           f"key{'s' if len(fps) != 1 else ''}")
        raise StoreFullError(
            f"{self._path} is full: {engine.live_count:,} keys in {engine.slot_count:,} "
            f"slots at its {g.max_size:,}-byte ceiling, and {', nor '.join(lacking)}"
            + (f" ({free_elsewhere:,} sub-slots of other sizes are free, too few in any size "
               "to give a slot back)" if free_elsewhere and records else "") + "; delete keys to make room")


# Loops over many entries run in functions of their own, never inside a `with` or `try`
# of the frame that holds the lock or a change bracket.  CPython 3.13 leaves some of a
# loop's backward jumps out of their frame's exception table (python/cpython#130279), and
# a Ctrl-C lands exactly there: the exception then leaves the frame without running its
# `with` exits or `finally` blocks, so the lock would stay held.  In a frame of its own the
# loop has no handler to skip, and its caller's call is covered as usual
# (tests/test_backward_jumps.py checks the rule in the source, and the bytecode on 3.13+).


def _readable_keys(engine: Engine, now: float) -> tuple[list[str], int, bool]:
    """The keys ``keys()`` lists (unexpired at *now*, indexed, intact), the number of
    damaged entries met, and whether the table itself is damaged: by a walk of the table,
    the order iteration takes; by a walk of the records when that walk meets damage it
    cannot see past (the directory, a key indexed twice, or table entries that do not
    number ``live_count``: one lost or doubled)."""
    try:
        keys, damaged, met = _table_keys(engine, now)
    except DamagedEntry:
        met = -1
    if met == engine.live_count:
        return keys, damaged, False
    keys, damaged = _keys_of_records(engine, now)
    return keys, damaged, True


def _table_keys(engine: Engine, now: float) -> tuple[list[str], int, int]:
    """Every step of ``Engine.scan`` at once: the keys, damaged entries and entries."""
    keys: list[str] = []
    damaged = met = cursor = 0
    while True:
        part, cursor, bad, entries = engine.scan(cursor, now)
        keys += part
        damaged += bad
        met += entries
        if not cursor:
            return keys, damaged, met


def _keys_of_records(engine: Engine, now: float) -> tuple[list[str], int]:
    """``_readable_keys`` by a walk of the records, in file order, and the entries that
    fail their checksum: a LIVE record the table lost, which a walk of the table cannot
    see, is left out until the repair that follows indexes it again (no value is lost)."""
    keys: list[str] = []
    damaged = visited = 0
    for off, _, expires, key in engine.iter_records():
        visited += 1
        if not engine.is_intact(off):
            damaged += 1
        elif not engine.is_indexed(off, key):
            continue
        elif not expires or now < expires:
            damaged += append_key(keys, key)
    for off in engine.unlisted_records(visited):  # the table still leads to what slot info lost
        if not engine.is_intact(off):  # (past the end of the file too)
            damaged += 1
            continue
        state, _, _, _, expires, _, klen, _ = RECORD_HEADER.unpack_from(engine._mm, off)
        key = bytes(engine._mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])
        if state != STATE_LIVE or not engine.is_indexed(off, key):
            damaged += 1
        elif not expires or now < expires:
            damaged += append_key(keys, key)
    return keys, damaged


def _remove_keys(engine: Engine, entries: list[tuple[bytes, int]]) -> None:
    for kb, fp in entries:
        engine.remove(engine.find(kb, fp))


def _room_wanted(prepared: Sequence[tuple[str, bytes, int, bytes, int, float | None]],
                 stored: set[bytes]) -> tuple[list[int], list[int]]:
    """A batch's record sizes, and the fingerprints of its keys not stored (they need
    table entries): ``_make_room``'s arguments."""
    return ([KEY_OFFSET + len(kb) + len(data) for _, kb, _, data, _, _ in prepared],
            [fp for _, kb, fp, _, _, _ in prepared if kb not in stored])


def _write_pending(engine: Engine, prepared: Sequence[tuple[str, bytes, int, bytes, int, float | None]],
                   stored: set[bytes], seq: int, now: float, absolute: bool,
                   written: list[tuple[int, int, bool]]) -> None:
    """Write a batch's records PENDING under *seq*, appending each one's (offset,
    fingerprint, whether it replaces a stored key) to *written* as it goes (the caller
    gives them back if one fails)."""
    for _, kb, fp, data, flags, t in prepared:
        expires = (t or 0.0) if absolute else (now + t if t is not None else 0.0)
        off = engine.write_record(kb, data, flags, expires, STATE_PENDING, seq)
        written.append((off, fp, kb in stored))
