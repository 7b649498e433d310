"""``python -m mmapkv`` (and the ``mmapkv`` command): look at and look after a store from a shell.

Commands, each with ``--help`` and all but ``copy`` with ``--path`` (default:
:func:`mmapkv.default_path`)::

    get KEY                    print the value as JSON
    create KEY JSON [--ttl N]  store a JSON object (JSON "-" reads it from stdin)
    set KEY JSON [--ttl N]     store it whether or not the key exists
    ttl KEY                    seconds left, or "none"
    expire KEY SECONDS         set a TTL
    persist KEY                remove the TTL
    delete KEY                 remove a key
    keys [--prefix P]          list the live keys, sorted
    stats [--json]             the report of ``python -m mmapkv.stats``
    dump [FILE] [--force]      JSON Lines: key, value, expires_at (stdout by default)
    restore FILE               the reverse ("-" reads stdin); all or nothing
    verify                     check every slot and the table; exit 1 on any problem
    compact                    rewrite into the smallest file that holds the live keys
    copy SRC DEST [--replace]  copy every key, TTLs kept, between store files and Redis
    demo                       create a key with a 60 s TTL, read it back, print stats

Exit codes:

==  ================================================================================
0   success
1   a check failed: ``verify`` found problems
2   usage error (bad arguments; from argparse)
3   the data given is wrong: key not found (or expired), key exists, invalid key,
    value, TTL, JSON text or dump line, an input/output FILE that cannot be opened,
    a dump FILE that exists already (``--force`` replaces it) or is the store, a bad
    Redis URL, or keys that ``copy`` would overwrite (``--replace`` does)
4   the store is unavailable: held by another process, missing, not a store,
    corrupt, full, the file system refused, or a Redis server is unreachable
70  internal error (a bug: please report it; ``MMAPKV_TRACEBACK=1`` shows the traceback)
130 interrupted (Ctrl-C)
141 stdout was closed early (``mmapkv dump | head``)
==  ================================================================================

``dump FILE`` writes a temporary file beside FILE and renames it into place only once
the dump is complete, so a failed or interrupted dump leaves no partial file, and an
existing FILE is replaced (with ``--force``) or left as it was; never emptied.  Devices
and FIFOs (``/dev/null``, a named pipe) are written to directly.

Errors are one line on stderr, ``mmapkv: error: ...``, never a traceback (a ``copy`` stopped
part way first says how many keys it copied, and that the copy is incomplete).  Commands that
walk the whole store draw a progress bar on stderr when it is a terminal.  A character
that stdout's encoding cannot hold (``PYTHONIOENCODING=ascii``) is written as a JSON
``\\uXXXX`` escape, so ``get`` and ``dump`` print valid JSON of the same text in any
encoding; ``keys`` prints the same escapes.  Input JSON is read as UTF-8 (UTF-16 and UTF-32 are
refused).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import stat
import sys
import time
import uuid
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

from . import __version__, migrate, stats, transfer
from .errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    KeyNotFoundError,
    MmapKVError,
    system_error,
)
from .codec import MAX_TTL, check_ttl
from .format import VERSION as FORMAT_VERSION
from .legacy import is_v2
from .stats import ProgressBar, describe_error, path_argument, shown_default_path
from .stats import plural as _plural
from .locking import absolute_path
from .store import Store, default_path

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = [
    "main", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_USAGE", "EXIT_DATA", "EXIT_UNAVAILABLE",
    "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE",
]

PROG = "mmapkv"
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_UNAVAILABLE = stats.EXIT_UNAVAILABLE
EXIT_INTERNAL = 70       # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED = stats.EXIT_INTERRUPTED
EXIT_BROKEN_PIPE = stats.EXIT_BROKEN_PIPE

DEMO_TTL = 60
CONFLICTS_SHOWN = 10   # keys a refused copy names before "and N more"


class InputError(Exception):
    """A command-line argument that is not what the command needs (exit 3)."""


# Errors about the user's data (exit 3); every other MmapKVError or OSError means the
# store (or the file system) is unavailable (exit 4).
_DATA_ERRORS: tuple[type[Exception], ...] = (
    KeyExistsError, KeyNotFoundError, InvalidKeyError, InvalidValueError, InvalidTTLError,
    transfer.InvalidDumpError, InputError,
)


# ------------------------------------------------------------------ helpers

def _open(path: str, *, create: bool = False) -> Store:
    """Open the store; unless *create*, a missing file is an error, not a new store."""
    if not create and not os.path.lexists(path):
        raise FileNotFoundError(2, f"no store at {absolute_path(path)}")
    return Store(path)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _left_out(problem: str) -> None:
    _warn(f"left out: {problem}")


def _v2_left_out(damaged: int) -> None:
    """Say how many entries of a version-2 file failed their checksum: they are left out
    (version 2's own recovery would have dropped them), but never silently."""
    if damaged:
        _left_out(f"{_plural(damaged, 'entry', 'entries')} of the version-2 file that "
                  f"{'fails its' if damaged == 1 else 'fail their'} checksum")


def _print_json(value: Any) -> None:
    _say(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _stdin() -> IO[bytes]:
    # Started with stdin closed (`<&-`), Python sets sys.stdin to None.  Like an input
    # FILE that cannot be opened, it is the user's input that is missing, not the store:
    # exit 3, not 4, and not argparse's 2, since the arguments themselves are right.
    if sys.stdin is None:
        raise InputError("cannot read stdin: it is closed")
    return sys.stdin.buffer


def _read_input(name: str) -> IO[bytes]:
    if name == "-":
        return _stdin()
    try:
        return open(name, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {name}: {describe_error(exc)}") from None


# ------------------------------------------------------------------ commands

def cmd_get(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        value = store.read(args.key)
    _print_json(value)
    return EXIT_OK


def _value_argument(args: argparse.Namespace) -> Any:
    # JSON text is UTF-8 (RFC 8259): read bytes, whatever encoding the locale gives stdin.
    text = _stdin().read() if args.json == "-" else args.json
    try:
        return transfer.loads(text)
    except InvalidValueError:
        raise  # JSON, but what no store holds: its own message
    except ValueError as exc:
        raise InputError(f"the value is not valid JSON: {exc}") from None


def _seconds(text: str) -> int:
    """A TTL argument: ASCII digits (not argparse's ``int``, which takes ``٣`` and makes
    ``1.5`` a usage error, exit 2, where ``0`` was exit 3), checked before any store is
    opened, so a bad one never leaves a new store behind."""
    if not text.removeprefix("-").isdigit() or not text.isascii():
        raise InvalidTTLError(f"a TTL is a whole number of seconds, not {text!r}")
    if len(text) > len(str(MAX_TTL)) + 1:  # int() of 4,301 digits is Python's ValueError
        raise InvalidTTLError(f"ttl must be 1 to {MAX_TTL:,} seconds, got {len(text):,} digits")
    seconds = int(text)
    check_ttl(seconds)  # 1 to MAX_TTL, or InvalidTTLError
    return seconds


def _ttl_option(args: argparse.Namespace) -> int | None:
    return None if args.ttl is None else _seconds(args.ttl)


def cmd_create(args: argparse.Namespace) -> int:
    value, ttl = _value_argument(args), _ttl_option(args)
    with _open(args.path, create=True) as store:
        store.create(args.key, value, ttl=ttl)
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    value, ttl = _value_argument(args), _ttl_option(args)
    with _open(args.path, create=True) as store:
        store.set(args.key, value, ttl=ttl)
    return EXIT_OK


def cmd_ttl(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        remaining = store.ttl(args.key)
    _say("none" if remaining is None else remaining)
    return EXIT_OK


def cmd_expire(args: argparse.Namespace) -> int:
    seconds = _seconds(args.seconds)
    with _open(args.path) as store:
        store.expire(args.key, seconds)
    return EXIT_OK


def cmd_persist(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        had = store.persist(args.key)
    _say("removed the TTL" if had else "no TTL to remove")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        store.delete(args.key)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        keys = store.keys()
    for key in sorted(keys):
        if key.startswith(args.prefix):
            _say(key)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with ProgressBar("scanning") as bar:
        report = stats.collect(args.path, progress=bar)
    _say(json.dumps(report, indent=2) if args.json else stats.render(report))
    return EXIT_OK


def _dump(args: argparse.Namespace, out: IO[str] | None) -> None:
    if out is None:  # started with stdout closed (`>&-`): sys.stdout is None
        raise InputError("cannot write stdout: it is closed")
    if is_v2(args.path):  # read in place: the way out for a store too full to convert
        _v2_left_out(transfer.dump_v2(absolute_path(args.path), out).corrupt)
        return
    with _open(args.path) as store, ProgressBar("dumping") as bar:
        transfer.dump(store, out, skip_corrupt=args.skip_corrupt, on_skip=_left_out, progress=bar)


def _same_file(a: str, b: str) -> bool:
    """True if the paths *a* and *b* name one file (through links, hard or symbolic)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing (or out of reach): the names they resolve to
        return os.path.realpath(a) == os.path.realpath(b)


def cmd_dump(args: argparse.Namespace) -> int:
    if args.file in (None, "-"):
        _dump(args, _named_stdout())
        return EXIT_OK
    name = args.file
    if _same_file(name, args.path):  # --force would replace the store with its own dump
        raise InputError(f"{name} is the store itself; dump to another file")

    def cannot_write(exc: OSError) -> InputError:
        return InputError(f"cannot write {name}: {exc.strerror or exc}")

    def exists() -> InputError:
        return InputError(f"{name} exists; pass --force to replace it (once the dump is complete)")

    try:  # followed as far as it goes: /dev/stdout is the file its descriptor is open on
        found: os.stat_result | None = os.stat(name)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise cannot_write(exc) from None
    if found is not None and _is_stdout(found):  # /dev/stdout, /dev/fd/1: stdout itself
        _dump(args, _named_stdout())
        return EXIT_OK
    if found is not None and (not stat.S_ISREG(found.st_mode) or _names_a_descriptor(name)):
        # /dev/null, a FIFO, a terminal: nothing to keep.  /dev/stderr and the like name a
        # descriptor's file: appended to, as through the descriptor, never replaced.
        try:
            out = open(name, "a", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise cannot_write(exc) from None
        with out:
            _dump_into(args, out, name)
        return EXIT_OK
    target = os.path.realpath(name)  # through a symbolic link, as `> FILE` writes
    if found is not None and not args.force:
        raise exists()
    # A temporary file in FILE's directory, renamed into place only once it is complete:
    # FILE is never seen half written, and a failed dump leaves it as it was.
    directory, base = os.path.split(target)
    tmp = os.path.join(directory, f".{base[:32]}.dump-{uuid.uuid4().hex[:16]}.tmp")
    try:  # opened by the file object itself: no bytecode between the open and its owner
        out = open(tmp, "x", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise cannot_write(exc) from None
    try:
        with out:
            fd = out.fileno()
            if found is not None:
                os.fchmod(fd, stat.S_IMODE(found.st_mode))  # the replacement keeps FILE's mode
            _dump_into(args, out, name, sync=True)  # on disk before it takes FILE's name
        if not args.force and os.path.lexists(target):  # it appeared while we were dumping
            raise exists()
        os.replace(tmp, target)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # renamed into place
            pass
    return EXIT_OK


def _dump_into(args: argparse.Namespace, out: IO[str], name: str, *, sync: bool = False) -> None:
    """``_dump`` into the file *name* has opened as *out*, flushed (and synced), then close
    it.  A write the system refuses (a full disk) says which file; the store's own errors
    (a missing store is a plain ``FileNotFoundError``) pass as they are."""
    try:
        _dump(args, cast(IO[str], _NamedOutput(out, name)))
        try:
            out.flush()
            if sync:
                os.fsync(out.fileno())
            out.close()
        except OSError as exc:
            raise _write_error(exc, name) from None
    except BaseException:
        with contextlib.suppress(OSError):  # its flush of what is left would fail again
            out.close()
        raise


class _NamedOutput:
    """*out* for ``transfer.dump``, whose ``write`` refused by the system names *name*."""

    def __init__(self, out: IO[str], name: str) -> None:
        self._out, self._name = out, name

    def write(self, text: str) -> int:
        try:
            return self._out.write(text)
        except OSError as exc:
            raise _write_error(exc, self._name) from None


def _named_stdout() -> IO[str] | None:
    """stdout for a dump, whose refusal (``> /dev/full``) names it; None if it is closed."""
    return None if sys.stdout is None else cast(IO[str], _NamedOutput(sys.stdout, "stdout"))


def _write_error(exc: OSError, name: str) -> Exception:
    """*exc*, met writing the file *name*: as ``DiskFullError`` or ``StoreAccessError``
    naming it; a reader gone (a closed pipe) as it is, for run_tool's exit 141."""
    return exc if isinstance(exc, BrokenPipeError) else system_error(exc, f"cannot write {name}")


def _is_stdout(found: os.stat_result) -> bool:
    """True if *found* is the file stdout is open on (a pipe, a terminal, a file)."""
    try:
        return sys.stdout is not None and os.path.samestat(found, os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no descriptor (captured), or closed
        return False


_DESCRIPTOR_NAME = re.compile(r"/dev/std(in|out|err)|/dev/fd/\d+|/proc/(self|thread-self|\d+)/fd/\d+")


def _names_a_descriptor(name: str) -> bool:
    """True for /dev/stderr, /dev/fd/N, /proc/self/fd/N: names of a process's open
    descriptors, whose file a dump must write to, not rename another over."""
    return _DESCRIPTOR_NAME.fullmatch(os.path.abspath(name)) is not None


def cmd_restore(args: argparse.Namespace) -> int:
    source = _read_input(args.file)
    name = "stdin" if args.file == "-" else args.file
    try:
        with _open(args.path, create=True) as store, ProgressBar("restoring") as bar:
            try:
                result = transfer.restore(store, source, skip_existing=args.skip_existing,
                                          name=name, progress=bar)
            except BaseException:
                store._discard()  # if we made it, it holds nothing: leave no empty store behind
                raise
    finally:
        if args.file != "-":  # stdin is not ours to close
            source.close()
    skipped = []
    if result.existing:
        skipped.append(f"{result.existing} already present")
    if result.expired:
        skipped.append(f"{result.expired} expired")
    _say(f"restored {_plural(result.restored, 'key')}"
          + (f" (skipped {', '.join(skipped)})" if skipped else ""))
    return EXIT_OK


def _new_only(found: list[str], known: list[str]) -> list[str]:
    return [p for p in found if p not in known]


def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        engine = store._engine
        assert engine is not None
        recovered = not engine.was_clean
        with ProgressBar("verifying") as bar:
            problems = transfer.check_records(store, progress=bar)
            problems += _new_only(store.verify(), problems)  # one line per fault
        slots, keys = engine.slot_count, engine.live_count
    if recovered:
        _say("note: the last close was not clean; opening rebuilt the table and counters "
              "from the slots, and dropped entries that failed their checksum")
    for problem in problems:
        _say(problem)
    if problems:
        _say(f"{store.path}: {_plural(len(problems), 'problem')} found")
        return EXIT_CHECK_FAILED
    _say(f"{store.path}: ok ({_plural(keys, 'entry', 'entries')} in {_plural(slots, 'slot')})")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    path = absolute_path(args.path)
    if is_v2(path):  # an older format: compacting is how it is converted
        with ProgressBar("converting") as bar:
            old_size, new_size, keys, damaged = transfer.convert_v2(path, progress=bar)
        _v2_left_out(damaged)
        _say(f"converted {path} from format version 2 to {FORMAT_VERSION}: "
              f"{old_size:,} -> {new_size:,} bytes, {_plural(keys, 'key')}")
        return EXIT_OK
    with _open(args.path) as store, ProgressBar("compacting") as bar:
        old_size, new_size, keys = transfer.compact(store, skip_corrupt=args.skip_corrupt,
                                                    on_skip=_left_out, progress=bar)
    _say(f"compacted {store.path}: {old_size:,} -> {new_size:,} bytes, {_plural(keys, 'key')}")
    return EXIT_OK


#: a scheme and a colon-slash: a URL, so never a file path, whatever the scheme (RedisStore
#: refuses one it does not serve: "REDIS://", "valkey://" and "redis:/host" made directories)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")


def _is_url(spec: str) -> bool:
    return _URL.match(spec) is not None


def _open_either(spec: str, namespace: str, *, create: bool) -> Store | RedisStore:
    """A store path, or a Redis URL (with *namespace*)."""
    if not _is_url(spec):
        return _open(spec, create=create)
    from .redis_store import RedisStore

    try:
        return RedisStore(spec, namespace=namespace)
    except InvalidArgumentError as exc:
        raise InputError(describe_error(exc)) from None


def _name(store: Store | RedisStore) -> str:
    return store.path if isinstance(store, Store) else f"{store.url} (namespace {store.namespace!r})"


def cmd_copy(args: argparse.Namespace) -> int:
    if _is_url(args.src) == _is_url(args.dest) and (
            (args.src, args.src_namespace) == (args.dest, args.dest_namespace) if _is_url(args.src)
            else os.path.realpath(args.src) == os.path.realpath(args.dest)):
        raise InputError("SRC and DEST are the same store")
    with _open_either(args.src, args.src_namespace, create=False) as source, \
            _open_either(args.dest, args.dest_namespace, create=True) as dest:
        copy = migrate.Copy(source, dest, replace=args.replace)
        try:
            if not args.replace:  # refuse before anything is written
                clash = copy.conflicts()
                if clash:
                    shown = ", ".join(map(repr, clash[:CONFLICTS_SHOWN]))
                    more = f" and {len(clash) - CONFLICTS_SHOWN:,} more" if len(clash) > CONFLICTS_SHOWN else ""
                    raise InputError(f"{_name(dest)} holds {len(clash):,} of the {len(copy.keys):,} keys "
                                     f"to copy: {shown}{more}; nothing was copied (--replace "
                                     "overwrites them)")
            with ProgressBar("copying") as bar:
                result = copy.run(progress=bar)
        except BaseException as exc:
            if not copy.copied and not copy.pending and isinstance(dest, Store):
                dest._discard()  # if we made it, it holds nothing: leave no empty store
            if not isinstance(exc, InputError):  # a refusal says itself that nothing was copied
                perhaps = (f", and perhaps up to {copy.pending:,} more (the batch under way when it "
                           "stopped)") if copy.pending else ""
                print(f"{PROG}: copy incomplete: copied {copy.copied:,} of {copy.listed:,} keys{perhaps}"
                      + (f" (skipped {copy.expired:,} expired)" if copy.expired else "")
                      + (f"; {_name(dest)} holds those, and `--replace` copies again over them"
                         if copy.copied or copy.pending else "; nothing was written"), file=sys.stderr)
            raise
    _say(f"copied {_plural(result.copied, 'key')} to {_name(dest)}"
          + (f" (skipped {result.expired:,} expired)" if result.expired else ""))
    return EXIT_OK


def _unused_demo_key(store: Store) -> str:
    # Loops stay out of frames with a `with` (the note above store._readable_keys).
    ns = time.time_ns()
    while f"demo:{ns}" in store:  # a coarse clock could repeat itself
        ns += 1
    return f"demo:{ns}"


def cmd_demo(args: argparse.Namespace) -> int:
    with _open(args.path, create=True) as store:
        key = _unused_demo_key(store)
        store.create(key, {"hello": "world", "created_by": "mmapkv demo"}, ttl=DEMO_TTL)
        value = store.read(key)
    _say(f"created {key} in {store.path} (expires in {DEMO_TTL} s)")
    _say(f"read {key}: {json.dumps(value, ensure_ascii=False)}")
    _say()
    return cmd_stats(argparse.Namespace(path=store.path, json=False))


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    """The argument parser (built per call, so ``--help`` shows the current default path)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Look at and look after an mmapkv store.",
        epilog="exit codes: 0 ok, 1 check failed, 2 usage, 3 bad data (key missing/exists, "
               "invalid input), 4 store unavailable")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--path", type=path_argument,  # None: default_path(), once a command runs
                        help=f"the store file (default: {shown_default_path()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("get", cmd_get, "print the value of KEY as JSON")
    p.add_argument("key", metavar="KEY")
    p = command("create", cmd_create, "store the JSON object JSON under a new KEY")
    p.add_argument("key", metavar="KEY")
    p.add_argument("json", metavar="JSON", help='a JSON object, or "-" to read it from stdin')
    p.add_argument("--ttl", metavar="N", help="expire the key N seconds from now")
    p = command("set", cmd_set, "store the JSON object JSON under KEY, replacing its value and TTL")
    p.add_argument("key", metavar="KEY")
    p.add_argument("json", metavar="JSON", help='a JSON object, or "-" to read it from stdin')
    p.add_argument("--ttl", metavar="N", help="expire the key N seconds from now")
    p = command("ttl", cmd_ttl, 'print the seconds until KEY expires, or "none"')
    p.add_argument("key", metavar="KEY")
    p = command("expire", cmd_expire, "make KEY expire N seconds from now")
    p.add_argument("key", metavar="KEY")
    p.add_argument("seconds", metavar="N")
    p = command("persist", cmd_persist, "remove the TTL of KEY")
    p.add_argument("key", metavar="KEY")
    p = command("delete", cmd_delete, "remove KEY")
    p.add_argument("key", metavar="KEY")
    p = command("keys", cmd_keys, "list the live keys, sorted")
    p.add_argument("--prefix", default="", metavar="P", help="only keys that start with P")
    p = command("stats", cmd_stats, "report on the store (read-only; python -m mmapkv.stats)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = command("dump", cmd_dump, "write every live entry as JSON Lines")
    p.add_argument("file", nargs="?", metavar="FILE", type=path_argument, help="output file (default: stdout)")
    p.add_argument("--force", action="store_true",
                   help="replace FILE if it exists (only once the dump is complete)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out entries that fail their checksum instead of stopping")
    p = command("restore", cmd_restore, "create the entries of a dump; all or nothing")
    p.add_argument("file", metavar="FILE", type=path_argument, help='a dump file, or "-" for stdin')
    p.add_argument("--skip-existing", action="store_true",
                   help="keep keys already in the store instead of stopping")
    command("verify", cmd_verify, "check every slot and the table; exit 1 on any problem")
    p = command("compact", cmd_compact,
                "rewrite the store into the smallest file that holds its live keys")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="drop entries that fail their checksum instead of stopping")
    description = "copy every key of SRC to DEST, each keeping its absolute expiry"
    p = sub.add_parser("copy", help=description, description=description + (
        "; each is a store file or a redis://, rediss:// or unix:// URL. Keys DEST holds "
        "already stop the copy before anything is written, unless --replace."))
    p.set_defaults(func=cmd_copy)
    p.add_argument("src", metavar="SRC", type=path_argument, help="a store file, or a Redis URL")
    p.add_argument("dest", metavar="DEST", type=path_argument,
                   help="a store file (made if missing), or a Redis URL")
    p.add_argument("--replace", action="store_true", help="overwrite keys DEST holds already")
    for side in ("src", "dest"):
        p.add_argument(f"--{side}-namespace", default="mmapkv", metavar="NS",
                       help=f"the namespace of a Redis {side.upper()} (default: %(default)s)")
    command("demo", cmd_demo, f"create a key with a {DEMO_TTL} s TTL, read it back, print stats")
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _say(*values: object) -> None:
    """``print`` to stdout, whose refusal (``> /dev/full``) names stdout."""
    print(*values, file=_named_stdout())


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (see the module docstring)."""
    return stats.run_tool(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2): return, don't exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if getattr(args, "path", "") is None:  # here, not in the parser: with no home, --path must still work
            args.path = default_path()
        return int(args.func(args))
    except BrokenPipeError:
        raise  # run_tool's to handle: the reader went away, the store is fine
    except _DATA_ERRORS as exc:
        _error(describe_error(exc))
        return EXIT_DATA
    except (MmapKVError, OSError) as exc:
        _error(describe_error(exc))
        return EXIT_UNAVAILABLE
    except Exception as exc:
        if os.environ.get("MMAPKV_TRACEBACK"):
            raise
        _error(f"internal error, please report it: {type(exc).__name__}: {describe_error(exc)}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
