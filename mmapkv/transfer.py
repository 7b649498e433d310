"""Whole-store operations behind the command line: dump, restore, compact, slot checks.

They live in the package so they may use ``Store`` internals: each runs under the store's
lock, reads records straight from the map (the records are the truth; the table is an
index) and writes through the engine, so a dump keeps every value's exact JSON bytes and a
restore keeps each entry's absolute expiry.  ``convert_v2`` turns a store of format
version 2 into the current format (``mmapkv compact`` runs it).

The dump format is JSON Lines, one entry per line, in file order::

    {"key":"user:1","value":{"name":"Ada"},"expires_at":1700000060.0}
    {"key":"config","value":{"debug":false},"expires_at":null}

``expires_at`` is unix time in seconds (a float), or ``null`` for a key without a TTL.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import IO, Any, TypeGuard

from xxhash import xxh3_64_intdigest

from . import codec
from .engine import Engine, create_file
from .errors import (
    CorruptStoreError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    MmapKVError,
    StoreAccessError,
    StoreFullError,
    StoreLockedError,
    system_error,
)
from .format import (
    BODY_OFFSET,
    KEY_OFFSET,
    MAX_FILE_SIZE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    RECORD_HEADER,
    STATE_LIVE,
    STATE_PENDING,
    SPLIT_AT,
    VERSION as FORMAT_VERSION,
    Geometry,
    class_for,
)
from .legacy import V2Entry, read_v2
from .slots import PER_SLOT
from .locking import lock_file, names_file, opened, sync_directory
from .store import Store
from .tempfiles import remove_abandoned, temporary_path, unlink_if_there

__all__ = [
    "Entry", "DumpResult", "RestoreResult", "InvalidDumpError",
    "dump", "dump_v2", "restore", "compact", "convert_v2", "check_records", "loads",
]

Progress = Callable[[int, int], None]

_PROGRESS_EVERY = 64     # items between progress callbacks
_FIELDS = frozenset(("key", "value", "expires_at"))


class InvalidDumpError(MmapKVError, ValueError):
    """A line of a dump is not an entry ``restore`` can read (or the input changed)."""


@dataclass(frozen=True)
class Entry:
    """One committed record, read straight from the map after its checksum was checked."""

    offset: int        #: where the record is in the file
    key: bytes
    data: bytes        #: the value's compact UTF-8 JSON text, exactly as stored
    flags: int         #: codec flags (``format.CODEC_STDLIB``)
    expires_at: float  #: unix seconds; 0.0 = never
    seq: int           #: write sequence number: the newer of two copies wins


@dataclass(frozen=True)
class DumpResult:
    written: int   #: entries written
    expired: int   #: entries left out because they had expired
    corrupt: int   #: entries left out because they failed their checksum


@dataclass(frozen=True)
class RestoreResult:
    restored: int  #: entries written to the store
    existing: int  #: entries skipped because the key was stored (``skip_existing``)
    expired: int   #: entries skipped because their ``expires_at`` had passed


def _engine(store: Store) -> Engine:
    """The store's engine, ready (closed check, repair after an interrupt); lock held."""
    return store._use()


def _read_record(engine: Engine, off: int) -> Entry | str | None:
    """The record at *off* if it is LIVE and intact, a sentence if it is LIVE and broken,
    None if it is not LIVE."""
    mm, view = engine._mm, engine._view
    state, _, checksum, seq, expires, vlen, klen, flags = RECORD_HEADER.unpack_from(mm, off)
    if state != STATE_LIVE:
        return None
    end = off + KEY_OFFSET + klen + vlen
    if vlen > MAX_VALUE_BYTES or klen > MAX_KEY_BYTES or \
            xxh3_64_intdigest(view[off + BODY_OFFSET:end], off) != checksum:
        return f"the record at offset {off} fails its checksum"  # Engine.check's words
    if not klen:
        return f"the record at offset {off} has an empty key"
    return Entry(off, bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen]),
                 bytes(mm[off + KEY_OFFSET + klen:end]), flags, expires, seq)


def _skipper(skip_corrupt: bool, on_skip: Callable[[str], None] | None,
             skipped: list[str]) -> Callable[[str], None] | None:
    """What ``_entries`` calls for a broken entry: None (raise) unless *skip_corrupt*."""
    if not skip_corrupt:
        return None

    def skip(problem: str) -> None:
        skipped.append(problem)
        if on_skip is not None:
            on_skip(problem)

    return skip


def _entries(engine: Engine, skip: Callable[[str], None] | None,
             progress: Progress | None, total: int) -> Iterator[Entry]:
    """Every intact LIVE record: in file order, then any the table points at that the slot
    info lost (``Engine.unlisted_records``), so no key ``read`` returns is left out.  A
    broken one raises ``CorruptStoreError``, or with *skip* given, is passed over after
    ``skip(problem)``.  *progress* counts slots."""
    done = visited = 0
    for off, _, _, _ in engine.iter_records():
        visited += 1
        slot = engine.slot_of(off)
        if progress is not None and slot - done >= _PROGRESS_EVERY:
            done = slot
            progress(slot, total)
        got = _read_record(engine, off)
        if got is not None and _intact(got, engine, skip):
            yield got
    for off in engine.unlisted_records(visited):
        got = _read_record(engine, off) if off + RECORD_HEADER.size <= engine.file_size else \
            f"a table entry points past the end of the file (offset {off})"
        if got is not None and _intact(got, engine, skip):
            yield got


def _intact(got: Entry | str, engine: Engine, skip: Callable[[str], None] | None) -> TypeGuard[Entry]:
    """True for an Entry; for a broken record's sentence, ``skip`` it (False) or raise."""
    if not isinstance(got, str):
        return True
    if skip is None:
        raise CorruptStoreError(f"{engine.path}: {got}; `mmapkv verify` lists every problem, "
                                "and skip_corrupt=True (--skip-corrupt) leaves such entries out")
    skip(got)
    return False


# ------------------------------------------------------------------ dump

def dump(store: Store, out: IO[str], *, skip_corrupt: bool = False,
         on_skip: Callable[[str], None] | None = None,
         progress: Progress | None = None) -> DumpResult:
    """Write every unexpired entry of *store* to *out* as JSON Lines, in slot order.

    Values are written as the exact JSON text stored (no decode and re-encode), so
    integers beyond 64 bits and float digits survive.  The store's lock is held
    throughout, so the dump is one consistent snapshot.  O(slots + bytes of values).

    With *skip_corrupt*, an entry that fails its checksum is left out, and *on_skip*
    (if given) is called with a sentence saying which.

    >>> import io, tempfile, os
    >>> with tempfile.TemporaryDirectory() as where, \\
    ...         Store(os.path.join(where, "s"), clock=lambda: 1000.0) as store:
    ...     store.create("user:1", {"name": "Ada"}, ttl=60)
    ...     out = io.StringIO()
    ...     dump(store, out)
    ...     print(out.getvalue(), end="")
    DumpResult(written=1, expired=0, corrupt=0)
    {"key":"user:1","value":{"name":"Ada"},"expires_at":1060.0}

    :raises CorruptStoreError: an entry fails its checksum (unless *skip_corrupt*).
    """
    corrupt: list[str] = []
    skip = _skipper(skip_corrupt, on_skip, corrupt)
    with store._lock:
        engine = _engine(store)
        total = engine.slots.high_water
        written, expired = _write_lines(_entries(engine, skip, progress, total), out,
                                        store._clock(), skip, engine.path)
        if progress is not None:
            progress(total, total)
    return DumpResult(written, expired, len(corrupt))


def dump_v2(path: str, out: IO[str], *, now: float | None = None) -> DumpResult:
    """``dump`` for a store of format version 2, read in place and not changed: the way
    out for one ``convert_v2`` cannot fit under the ceiling.  Entries that fail their
    checksum are left out and counted in ``corrupt``."""
    file = opened(path, readonly=True)  # owns the descriptor and the lock on it (locking.opened)
    try:
        if not lock_file(file.fileno(), path, shared=True):
            raise StoreLockedError(f"{path} was replaced while reading it; try again")
        _, entries, damaged = read_v2(path)
        written, expired = _write_lines(
            (Entry(0, e.key, e.data, e.flags, e.expires_at, e.seq) for e in entries), out,
            time.time() if now is None else now, None, path)
    finally:
        file.close()
    return DumpResult(written, expired, damaged)


def _write_lines(entries: Iterable[Entry], out: IO[str], now: float,
                 skip: Callable[[str], None] | None, path: str) -> tuple[int, int]:
    """Write the unexpired *entries* as dump lines; (written, expired)."""
    written = expired = 0
    for entry in entries:
        if entry.expires_at and entry.expires_at <= now:
            expired += 1
            continue
        try:
            key, value = entry.key.decode("utf-8"), entry.data.decode("utf-8")
        except UnicodeDecodeError:  # checksum held, so the writer was wrong: treat as corrupt
            problem = f"the record at offset {entry.offset} holds text that is not UTF-8"
            if skip is None:
                raise CorruptStoreError(f"{path}: {problem}") from None
            skip(problem)
            continue
        expires = json.dumps(entry.expires_at) if entry.expires_at else "null"
        out.write(f'{{"key":{json.dumps(key, ensure_ascii=False)},"value":{value},'
                  f'"expires_at":{expires}}}\n')
        written += 1
    return written, expired


# ------------------------------------------------------------------ restore

def loads(text: str | bytes) -> Any:
    """``json.loads``, with text nested too deeply for it raising ``ValueError``, as any
    other bad JSON does, rather than ``RecursionError``.

    Bytes must be UTF-8 (RFC 8259): ``json.loads`` would guess UTF-16 and UTF-32 too.  A
    leading UTF-8 byte order mark is ignored, as the RFC lets a parser do and as
    ``json.loads`` did, so each line of a dump written by a tool that adds one reads.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")  # strict: a byte that is not UTF-8 raises
        except UnicodeDecodeError as exc:
            raise ValueError(f"it is not UTF-8: {exc.reason} at byte {exc.start}") from None
        if "\0" in text:  # never in JSON text; ASCII as UTF-16 or UTF-32 is valid UTF-8 with them
            raise ValueError("it holds NUL bytes: JSON input must be UTF-8, not UTF-16 or UTF-32")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it nests too deeply to parse (a value may nest at most "
                         f"{codec.MAX_DEPTH} levels)") from None
    except ValueError as exc:
        if "integer string conversion" not in str(exc):  # CPython's words for int_max_str_digits
            raise
        raise InvalidValueError(f"value holds an int of more than {codec.MAX_INT_DIGITS:,} digits; "
                                f"{codec.INT_DIGITS_RULE}") from None


def _not_an_entry(obj: Any) -> str:
    """What keeps a dump line's JSON from being an entry: an object with "key" and
    "value", and "expires_at" or not, nothing else."""
    if not isinstance(obj, dict):
        return f'it reads as a Python {type(obj).__name__}, not an object with "key" and "value"'
    missing = [f'"{field}"' for field in ("key", "value") if field not in obj]
    if missing:
        return f"it has no {' and no '.join(missing)}"
    extra = sorted(obj.keys() - _FIELDS)
    return (f"it has {', '.join(map(codec.shown, extra[:3]))}{' and more' if len(extra) > 3 else ''}"
            ' besides "key", "value" and "expires_at"')


def _parse(source: IO[bytes], name: str, progress: Progress | None, done: int,
           total: int) -> Iterator[tuple[int, str, bytes, bytes, int, float]]:
    """(line number, key, key bytes, value bytes, codec flags, expires_at) per entry line."""
    for number, line in enumerate(source, 1):
        done += len(line)
        if progress is not None and number % _PROGRESS_EVERY == 0:
            progress(done, total)
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            obj = loads(line)
        except InvalidValueError as exc:  # JSON, but an int no store holds
            raise _refused_for_digits(line, where, exc) from None
        except ValueError as exc:
            raise InvalidDumpError(f"{where} is not JSON: {exc}") from None
        if not isinstance(obj, dict) or not {"key", "value"} <= obj.keys() or obj.keys() - _FIELDS:
            raise InvalidDumpError(f"{where} is not an entry: {_not_an_entry(obj)}")
        key, expires = obj["key"], obj.get("expires_at")
        try:
            kb = codec.key_bytes(key)
            data, flags = codec.encode(obj["value"])
        except (InvalidKeyError, InvalidValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        try:
            expires = codec.check_expiry(expires)
        except InvalidTTLError:
            raise _bad_expiry(where, json.dumps(expires)[:40]) from None  # as the line says it
        yield number, key, kb, data, flags, expires


def _bad_expiry(where: str, shown: str) -> InvalidTTLError:
    return InvalidTTLError(f"{where}: expires_at must be null or unix time in seconds, got {shown}")


class _LongInt(int):
    """What ``_refused_for_digits`` reads an int of too many digits as: their count."""


def _refused_for_digits(line: bytes, where: str, exc: InvalidValueError) -> MmapKVError:
    """The refusal of a dump line holding an int of more digits than any Python reads by
    default, naming the field that holds it (``loads`` knows only that the line does)."""
    def parse_int(text: str) -> int:
        digits = len(text.lstrip("-"))
        return _LongInt(digits) if digits > codec.MAX_INT_DIGITS else 0
    obj = json.loads(line.decode("utf-8-sig"), parse_int=parse_int)
    if isinstance(obj, dict) and {"key", "value"} <= obj.keys() and not obj.keys() - _FIELDS:
        if type(obj["key"]) is _LongInt:
            return InvalidKeyError(f"{where}: key must be a str, not int")
        if type(obj.get("expires_at")) is _LongInt:
            return _bad_expiry(where, f"an int of {obj['expires_at']:,} digits")
        return InvalidValueError(f"{where}: {exc}")
    return InvalidDumpError(f"{where} is not an entry: {_not_an_entry(obj)}")


def _seekable(source: IO[bytes]) -> IO[bytes]:
    """*source* itself if it can be read twice, else a temporary copy (stdin, a pipe)."""
    try:
        if source.seekable():
            return source
    except (AttributeError, OSError, ValueError):
        pass
    copy = tempfile.TemporaryFile()
    shutil.copyfileobj(source, copy)
    copy.seek(0)
    return copy


def restore(store: Store, source: IO[bytes], *, skip_existing: bool = False,
            name: str = "input", progress: Progress | None = None) -> RestoreResult:
    """Create the entries of a dump (JSON Lines, as :func:`dump` writes them) in *store*.

    Each entry keeps its absolute ``expires_at``; entries whose expiry has passed (by the
    store's clock) are skipped.  All or nothing: every line is checked first, and the
    entries are written as one batch, so an error, or a crash part way, writes nothing.
    The input is read twice (a non-seekable one is copied to a temporary file first), so
    memory holds only the set of keys, not the values.  O(lines + bytes).

    :param name: what messages call *source* (a file name).
    :raises KeyExistsError: a key is stored and unexpired (unless *skip_existing*), or a
        key appears twice in the input.
    :raises InvalidDumpError: a line is not an entry.
    :raises InvalidKeyError, InvalidValueError, InvalidTTLError: an entry's key, value or
        expires_at is not valid; the message names the line.
    :raises StoreFullError: the entries do not fit under the store's ceiling.
    """
    source = _seekable(source)
    start = source.tell()
    size = source.seek(0, os.SEEK_END) - start
    source.seek(start)
    total = 2 * size  # two passes
    now = store._clock()
    # Pass 1: validate everything and learn the keys, before touching the store.
    lines: dict[bytes, int] = {}
    sizes: dict[bytes, int] = {}  # record sizes, for the room check
    expired = 0
    for number, key, kb, data, _, expires in _parse(source, name, progress, 0, total):
        if expires and expires <= now:
            expired += 1
            continue
        if kb in lines:
            raise KeyExistsError(f"{name} line {number}: key {key!r} appeared already on line {lines[kb]}")
        lines[kb] = number
        sizes[kb] = KEY_OFFSET + len(kb) + len(data)
    with store._lock:
        engine = _engine(store)
        # The loops run in helpers, never in this frame (the note above store._readable_keys).
        skip, expired_names = _stored_conflicts(engine, lines, now, skip_existing, name, store.path)
        needed = len(lines) - len(skip)
        failure: MmapKVError | None = None
        with engine.change():
            _remove_names(engine, lines, expired_names)
            if needed:
                store._make_room(engine, *_restore_room(engine, lines, sizes, skip))
            # Pass 2: write PENDING slots of one batch, then commit them with one write,
            # exactly as Store.batch_create does: a crash before the commit drops them all,
            # and so does an interrupt (the change stays open; the next use repairs).
            seq = engine.begin_batch()
            written: list[tuple[int, int, bool]] = []
            try:
                source.seek(start)
                _write_restored(engine, _parse(source, name, progress, size, total), name, now, lines,
                                skip, seq, written)
                if len(written) != needed:
                    raise InvalidDumpError(f"{name} changed while it was being restored; nothing was restored")
            except CorruptStoreError:
                raise  # damage met while writing (slot info): the change stays open, the store repairs
            except MmapKVError as exc:  # bad input or a full disk: give the slots back
                engine.abort_batch(written)
                failure = exc
            else:
                if written:
                    engine.commit_batch(seq, written)
        if failure is not None:
            raise failure
    if progress is not None:
        progress(total, total)
    return RestoreResult(len(written), len(skip), expired)


def _stored_conflicts(engine: Engine, lines: dict[bytes, int], now: float, skip_existing: bool,
                      name: str, path: str) -> tuple[set[bytes], set[int]]:
    """The input's keys stored live (skipped, with *skip_existing*; else the first raises
    ``KeyExistsError``), and the line numbers of those stored expired."""
    skip: set[bytes] = set()
    expired_names: set[int] = set()
    for kb, number in lines.items():
        position = engine.find(kb, engine.fingerprint(kb))
        if position < 0:
            continue
        old_expiry = engine.expires_at(position)
        if old_expiry and old_expiry <= now:
            expired_names.add(number)  # its name is free again, as in Store.create
        elif skip_existing:
            skip.add(kb)
        else:
            raise KeyExistsError(
                f"{name} line {number}: key {kb.decode()!r} already exists in {path}; "
                "nothing was restored (skip_existing / --skip-existing keeps stored keys)")
    return skip, expired_names


def _remove_names(engine: Engine, lines: dict[bytes, int], numbers: set[int]) -> None:
    """Remove the stored (expired) entries of the keys on these input lines."""
    for kb, number in lines.items():
        if number in numbers:
            engine.remove(engine.find(kb, engine.fingerprint(kb)))


def _restore_room(engine: Engine, lines: dict[bytes, int], sizes: dict[bytes, int],
                  skip: set[bytes]) -> tuple[list[int], list[int]]:
    """The record sizes and fingerprints of the keys to restore: ``_make_room``'s arguments."""
    kept = [kb for kb in lines if kb not in skip]
    return [sizes[kb] for kb in kept], [engine.fingerprint(kb) for kb in kept]


def _write_restored(engine: Engine, parsed: Iterable[tuple[int, str, bytes, bytes, int, float]], name: str,
                    now: float, lines: dict[bytes, int], skip: set[bytes], seq: int,
                    written: list[tuple[int, int, bool]]) -> None:
    """Pass 2 of ``restore``: write the input's entries PENDING under *seq*, appending each
    one's (offset, fingerprint, False) to *written* as it goes."""
    for number, _, kb, data, flags, expires in parsed:
        if (expires and expires <= now) or kb in skip:
            continue
        if lines.get(kb) != number:
            raise InvalidDumpError(f"{name} changed while it was being restored; nothing was restored")
        off = engine.write_record(kb, data, flags, expires, STATE_PENDING, seq)
        written.append((off, engine.fingerprint(kb), False))


# ------------------------------------------------------------------ compact

def compact(store: Store, *, skip_corrupt: bool = False,
            on_skip: Callable[[str], None] | None = None,
            progress: Progress | None = None) -> tuple[int, int, int]:
    """Rewrite *store* into the smallest file that holds its unexpired keys.

    Expired and deleted entries are dropped; every live key keeps its value bytes and
    absolute expiry, and records are packed into as few slots as their classes allow (what
    repacks sub-slots that deletes left free).  Crash-safe: the new file is built, locked
    and synced under a temporary name in the same directory, then renamed over the old one
    with ``os.replace``, so the path always names a complete store, and some file at the
    path is locked by us at every instant.  Through a symbolic link, the file it names is
    the one rewritten, and the link stays.  Returns ``(old_size, new_size, keys)``.
    O(slots + bytes of live values).

    :raises CorruptStoreError: an entry fails its checksum (unless *skip_corrupt*, which
        leaves it out and calls *on_skip* with a sentence saying which); the old file
        is untouched.
    :raises DiskFullError: the disk has no room for the new file; the old file stands.
    """
    with store._lock:
        old = _engine(store)
        now = store._clock()
        # The rewrite replaces the file itself: through a symbolic link, its target, so the
        # link stays.  store.path keeps the name the user gave, which still names the store.
        path = os.path.realpath(store.path)
        # Pass 1: where each live key's record is (the newer copy, should there be two).
        total = 2 * max(old.slots.high_water, 1)
        # The loops run in helpers, never in this frame (the note above store._readable_keys).
        offsets, sizes, fps = _live_records(old, _entries(old, _skipper(skip_corrupt, on_skip, []), progress, total),
                                            now)
        remove_abandoned(path)  # what an earlier, killed compact left
        # From here until the switch a kill leaves a temporary file beside the store:
        # marking the store unclean makes the next open recover and remove it.
        old.mark_dirty()
        with old.change():  # an interrupt before the switch: the next use sorts it out
            tmp = temporary_path(path, "compact")
            new = _temporary_store(tmp, old.geometry.max_size, durable=old.durable, seed=old.seed)
            try:
                _take_owner_and_mode(old._fd, new._fd)
                _fill(new, ((_read_record(old, off), size) for off, size in zip(offsets, sizes)), sizes,
                      fps, progress, total // 2, total)
                new.mark_clean()  # counters written, flagged clean, synced
                os.fsync(new._fd)  # the file's size and blocks, not only the mapped pages
                _refuse_if_moved(path, old._fd, f"{store.path} no longer names the file this Store has "
                                 "open", "compacted")
                old.successor = new  # Store._repair takes it over if we stop past the rename
                os.replace(tmp, path)  # the commit point: from here the path names the new file
            except BaseException as exc:
                if _abandon(new, tmp):  # else past the rename: Store._repair takes new over
                    old.successor = None
                    _raise_access_error(exc, f"cannot compact {store.path}")
                raise
            new.path = store.path
            store._engine = new
        old_size = old.file_size
        # The old inode is unlinked: unmap and unlock it without syncing pages nobody reads.
        old.successor = None
        old._release()
        _sync_directory(path, f"{store.path} was compacted")
        if progress is not None:
            progress(total, total)
        return old_size, new.file_size, len(offsets)


def _temporary_store(tmp: str, max_size: int, *, durable: bool = False,
                     seed: int | None = None) -> Engine:
    """A new, empty store at the fresh temporary name *tmp*, open and locked, for a
    rewrite to fill and rename over the old file.  If it cannot be made or opened (no
    file descriptor left, say), nothing is left at *tmp* and ``StoreAccessError`` (or
    ``DiskFullError``) says why."""
    try:
        create_file(tmp, max_size, in_place=True, seed=seed)  # O_EXCL: never another's file
    except OSError as exc:
        _raise_access_error(exc, f"cannot create {tmp}")
        raise
    try:
        return Engine(tmp, durable=durable, create=False)
    except BaseException:
        unlink_if_there(tmp)
        raise


def _take_owner_and_mode(old_fd: int, new_fd: int) -> None:
    """Give the new file of a rewrite the owner, group and permissions of the old one,
    so that whoever could use the store still can, whoever runs the rewrite."""
    old = os.fstat(old_fd)
    try:
        os.fchown(new_fd, old.st_uid, old.st_gid)
    except PermissionError:  # not root: only root gives a file away
        try:
            os.fchown(new_fd, -1, old.st_gid)  # the owner may, if a member of the group
        except PermissionError:
            # Refused too: the file stays ours, the user who could write the store's
            # directory (so could replace the file anyway); the old group loses access.
            pass
    os.fchmod(new_fd, stat.S_IMODE(old.st_mode))  # after the chown, which may clear set-id bits


def _refuse_if_moved(path: str, fd: int, what: str, doing: str) -> None:
    """Before a rewrite renames its new file over *path*: refuse if *path* no longer names
    the old file (*fd*), which another program moved, replaced or deleted meanwhile (a
    rewrite of 1 GiB takes seconds).  The rename would put the store over its file, or at
    a path it had left."""
    if not names_file(path, fd):
        raise StoreAccessError(errno.ESTALE, f"{what} (another program moved, replaced or deleted "
                               f"it): it was not {doing}, and what is at that path now was left as it is")


def _abandon(new: Engine, tmp: str) -> bool:
    """After an exception inside a rewrite: drop *new* and its file at *tmp* (nothing to
    write or sync), and return True; unless the rename has put it at its path already (an
    interrupt just after ``os.replace`` returned): then keep it open and locked, since
    the path must name a file locked by us at every instant, and return False."""
    try:  # the temporary name, not the path: another program may have put a file there
        renamed = not names_file(tmp, new._fd)
    except OSError:
        renamed = True  # cannot tell: keep it locked and the failure unclean; the repair looks again
    if renamed:
        return False
    new._release()
    unlink_if_there(tmp)
    return True


def _raise_access_error(exc: BaseException, doing: str) -> None:
    """If *exc* is an ``OSError`` of the system's own (``EMFILE``, ``ENOSPC``...), raise
    its ``MmapKVError`` instead: every error of a rewrite is one, and the old file's change
    bracket closes cleanly on it."""
    if isinstance(exc, OSError) and not isinstance(exc, MmapKVError):
        raise system_error(exc, doing) from None


LiveRecords = tuple["array[int]", "array[int]", "array[int]"]  # offsets, sizes, fingerprints


def _live_records(engine: Engine, entries: Iterator[Entry], now: float) -> LiveRecords:
    """Each unexpired key's record, in file order: its offset, size and fingerprint.

    The table names the record ``read`` returns, and a record it names is its key's only
    one, so nothing but three arrays is kept: 20 bytes a key, where a dict of every key
    took 262 (tracemalloc's peak over 300,000 keys).  A record it does not name can be there
    only by damage (recovery leaves one record a key): from the first such record on, the
    choice is ``_newest_records``'."""
    offsets, sizes, fps = array("Q"), array("I"), array("Q")
    expired = array("Q")  # named records past their expiry: a key's newest, should there be two
    for entry in entries:
        fp = engine.fingerprint(entry.key)
        try:
            position = engine.find(entry.key, fp)
            named = position >= 0 and engine.record_offset(position) == entry.offset
        except CorruptStoreError:  # a table entry out of the file: the table is no witness
            named = False
        if not named:
            return _newest_records(engine, chain([entry], entries), now, (offsets, sizes, fps), expired)
        if not (entry.expires_at and entry.expires_at <= now):
            offsets.append(entry.offset)
            sizes.append(KEY_OFFSET + len(entry.key) + len(entry.data))
            fps.append(fp)
        else:
            expired.append(entry.offset)
    if any(map(int.__gt__, offsets, offsets[1:])):  # records the slot info lost come last
        return _in_file_order(offsets, sizes, fps)
    return offsets, sizes, fps


def _newest_records(engine: Engine, entries: Iterable[Entry], now: float, chosen_so_far: LiveRecords,
                    expired_so_far: array[int]) -> LiveRecords:
    """``_live_records`` where a key may have two records (damage): the newer of them
    (higher sequence number), kept if it is unexpired, by a dict of every key.  An expired
    newer record leaves its key out: an older one is a value the key no longer had."""
    mm = engine._mm
    chosen: dict[bytes, tuple[int, int, int]] = {}  # key: (seq, offset, size; 0: expired)
    for off, size in chain(zip(chosen_so_far[0], chosen_so_far[1]), zip(expired_so_far, repeat(0))):
        _, _, _, seq, _, _, klen, _ = RECORD_HEADER.unpack_from(mm, off)
        chosen[bytes(mm[off + KEY_OFFSET:off + KEY_OFFSET + klen])] = (seq, off, size)
    for entry in entries:
        previous = chosen.get(entry.key)
        if previous is None or entry.seq > previous[0]:
            alive = not (entry.expires_at and entry.expires_at <= now)
            chosen[entry.key] = (entry.seq, entry.offset,
                                 KEY_OFFSET + len(entry.key) + len(entry.data) if alive else 0)
    kept = [(key, off, size) for key, (_, off, size) in chosen.items() if size]
    return _in_file_order(array("Q", [off for _, off, _ in kept]), array("I", [size for _, _, size in kept]),
                          array("Q", [engine.fingerprint(key) for key, _, _ in kept]))


def _in_file_order(offsets: array[int], sizes: array[int], fps: array[int]) -> LiveRecords:
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    return (array("Q", map(offsets.__getitem__, order)), array("I", map(sizes.__getitem__, order)),
            array("Q", map(fps.__getitem__, order)))


def _fill(new: Engine, entries: Iterable[tuple[Entry | str | None, int]], sizes: Sequence[int],
          fps: Sequence[int], progress: Progress | None, done: int, total: int) -> None:
    """Insert *entries* (checked already) into the empty store *new*, growing it first."""
    with new.change():
        if not new.room_for(sizes, fps):
            raise StoreFullError(f"{new.path}: {len(sizes):,} entries do not fit under the ceiling")
        _insert_all(new, entries, len(sizes), progress, done, total)


def _insert_all(new: Engine, entries: Iterable[tuple[Entry | str | None, int]], count: int,
                progress: Progress | None, done: int, total: int) -> None:
    # _fill's loop, in a frame of its own (the note above store._readable_keys)
    for n, (got, _) in enumerate(entries):
        if progress is not None and n % _PROGRESS_EVERY == 0:
            progress(done + n * (total - done) // max(count, 1), total)
        assert isinstance(got, Entry)  # checked in pass 1, under the same lock
        new.insert(got.key, new.fingerprint(got.key), got.data, got.flags, got.expires_at)


def _sync_directory(path: str, done: str) -> None:
    """``locking.sync_directory`` after a rename, its failure mmapkv's error saying that
    *done* ("PATH was compacted") happened all the same."""
    try:
        sync_directory(path)
    except OSError as exc:
        raise system_error(exc, f"{done}, but its directory could not be synced "
                                "(a power loss may undo it)") from None


def _ceiling_for(max_size: int, sizes: list[int]) -> int:
    """The v2 store's ceiling, or, when version 3 needs more room for the same entries
    (its table takes slots), the ceiling of the next larger file, up to 1 GiB."""
    size = min(max(max_size, Geometry.smallest_max_size()), MAX_FILE_SIZE)
    per_class = Counter(class_for(n) for n in sizes)
    slots = sum(-(-count // PER_SLOT[cls]) for cls, count in per_class.items())
    slots += -(-len(sizes) // (SPLIT_AT // 2)) + 1  # table segments, generously
    while Geometry(size).max_slots < slots and size < MAX_FILE_SIZE:
        size = min(2 * size, MAX_FILE_SIZE)
    return size


def _unexpired_v2(entries: list[V2Entry], now: float) -> tuple[list[V2Entry], list[int]]:
    """The entries unexpired at *now*, and their record sizes in the current format."""
    kept = [e for e in entries if not (e.expires_at and e.expires_at <= now)]
    return kept, [KEY_OFFSET + len(e.key) + len(e.data) for e in kept]


def convert_v2(path: str, *, now: float | None = None,
               progress: Progress | None = None) -> tuple[int, int, int, int]:
    """Convert the format-version-2 store at *path* to the current format, in place.

    Every unexpired entry keeps its key, exact value bytes and absolute expiry.  The old
    file is held under its lock throughout and replaced only once the new one is complete
    and synced (the same rename as ``compact``); an error leaves it untouched.  Returns
    ``(old_size, new_size, keys, damaged)``: *damaged* entries failed their checksum and
    were left out, as version 2's own recovery would have dropped them at its next open
    (the caller says so).  O(old file).
    """
    now = time.time() if now is None else now
    real = os.path.realpath(path)  # through a symbolic link, its target, as compact
    file = opened(real, readonly=True)  # owns the descriptor and the lock on it (locking.opened)
    fd = file.fileno()
    try:
        if not lock_file(fd, real):
            raise StoreLockedError(f"{path} was replaced while converting it; try again")
        old_size = os.fstat(fd).st_size
        max_size, entries, damaged = read_v2(real)
        entries, sizes = _unexpired_v2(entries, now)  # (the note above store._readable_keys)
        remove_abandoned(real)  # what an earlier, killed conversion left, as compact does
        tmp = temporary_path(real, "compact")
        new = _temporary_store(tmp, _ceiling_for(max_size, sizes))
        try:
            _take_owner_and_mode(fd, new._fd)
            converted = (Entry(0, e.key, e.data, e.flags, e.expires_at, e.seq) for e in entries)
            try:
                _fill(new, ((entry, 0) for entry in converted), sizes,
                      list(map(new.fingerprint, (e.key for e in entries))), progress, 0, max(len(entries), 1))
            except StoreFullError:
                raise StoreFullError(
                    f"{path}: its {len(entries):,} entries do not fit a version-{FORMAT_VERSION} "
                    f"store under the {MAX_FILE_SIZE:,}-byte ceiling (it gives the hash table "
                    "slots of its own); `mmapkv dump FILE --path` it, which reads version 2, and "
                    "restore the dump into two stores") from None
            new.mark_clean()
            os.fsync(new._fd)
            _refuse_if_moved(real, fd, f"{path} is no longer the file being converted", "converted")
            os.replace(tmp, real)
        except BaseException as exc:
            if _abandon(new, tmp):
                _raise_access_error(exc, f"cannot convert {path}")
            else:  # renamed into place, complete: no Store is there to take it over
                new._release()
            raise
        new_size = new.file_size
        new.close()
        _sync_directory(real, f"{path} was converted")
    finally:
        file.close()
    return old_size, new_size, len(entries), damaged


# ------------------------------------------------------------------ verify

def check_records(store: Store, *, progress: Progress | None = None) -> list[str]:
    """Check every committed record: checksum, key length, UTF-8 key, and a value that
    decodes as JSON.  Returns the problems as sentences (empty: all good).

    Complements :meth:`Store.verify` (the table's and the allocator's invariants), which
    never decodes values.  O(records + bytes of values).
    """
    with store._lock:
        engine = _engine(store)
        total = max(engine.slots.high_water, 1)
        problems = _record_problems(engine, progress, total)  # the loop outside this frame
        if progress is not None:
            progress(total, total)
    return problems


def _record_problems(engine: Engine, progress: Progress | None, total: int) -> list[str]:
    problems: list[str] = []
    for got in _entries(engine, problems.append, progress, total):  # a broken record: its problem
        try:
            key = got.key.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"the record at offset {got.offset} has a key that is not UTF-8: {got.key!r}")
            continue
        try:
            codec.decode(got.data, got.flags)
        except ValueError as exc:
            problems.append(f"the record at offset {got.offset} (key {key!r}) holds a value that is not "
                            f"JSON: {exc}")
    return problems
