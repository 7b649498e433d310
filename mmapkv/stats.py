"""``python -m mmapkv.stats [PATH] [--json]``: a read-only report on a store file.

The file is opened with a shared lock and a read-only map (``Engine(readonly=True,
create=False)``): no recovery, no flag written, not a byte changed.  A store that another
process holds, a missing file and a file that is not a store each get a one-line message
naming the path and exit code 4.  As with ``mmapkv``, Ctrl-C exits 130 and a reader that
goes away early (``| head``) 141, without a traceback.

Fields of the report (``--json`` prints them as one JSON object; sizes in bytes, times
in unix seconds):

``path``                 absolute path of the store file
``format_version``       the superblock's format version
``clean_close``          true if the last holder closed the file cleanly; false after a
                         crash (the next writer rebuilds the table and slot info from
                         the records; until then the figures below may be stale)
``now``                  the time expiries were judged against
``file_size``            bytes in the file now
``max_size``             the file's ceiling, fixed at creation
``file_used_percent``    ``file_size`` as a percentage of ``max_size``
``slot_size``            bytes a slot takes in the file (the unit of the file)
``max_value_bytes``      the largest value a key can hold (16,384)
``capacity``             slots in the file now
``max_capacity``         slots the file holds at its ceiling
``high_water``           slots below this index have been used since the last clear
``record_slots``         slots split into sub-slots of one class (or holding one record)
``segment_slots``        slots holding the hash table's segments
``free_slots``           slots any class or the table can take: on the pool, or never used
``live_keys``            committed records that have not expired
``expired_keys``         committed records past their expiry, not yet reclaimed
``pending_records``      records of a batch that never committed (only after a crash)
``classes``              one object per sub-slot size that holds a slot: ``size``,
                         ``per_slot``, ``slots``, ``used`` and ``free`` sub-slots, ``fill``
                         (used / (used + free))
``table_depth``          the directory's global depth: it has 2**depth entries (after a
                         crash, at least that: it is written at a clean close)
``table_segments``       segments (2,048 positions each)
``table_capacity``       positions in the table
``table_entries``        occupied positions
``load_factor``          ``table_entries / table_capacity``
``probe_mean``           mean probe length of the entries (null when there are none);
                         an entry's probe length is its Robin Hood distance from home + 1
``probe_max``            longest probe length (null when there are none)
``probe_histogram``      list of ``{"min", "max", "count"}``: entries whose probe length
                         is in ``[min, max]``; buckets 1, 2, 3-4, 5-8, ... up to the max
``value_bytes_min``      smallest value of a live key, in bytes of JSON (null if none)
``value_bytes_median``   lower median of the same (null if none)
``value_bytes_max``      largest (null if none)
``value_histogram``      list of ``{"min", "max", "count"}`` over live keys' value sizes:
                         0-64, 65-256, 257-1024, 1025-4096, 4097-16384
``keys_with_ttl``        live keys that carry an expiry
``next_expiry``          the earliest expiry among live keys (null if none)
``bad_expiries``         live keys whose expiry is not a finite time (NaN or infinite,
                         which no mmapkv writes: a damaged record, ``mmapkv verify`` says
                         which); counted in ``live_keys`` and ``keys_with_ttl`` too, but
                         not in ``next_expiry``

``record_slots + segment_slots + free_slots == capacity``; ``live_keys + expired_keys +
pending_records`` is the sum of the classes' ``used``.

Cost: one pass over the slot info, the taken sub-slots' headers and the table's segments,
O(capacity + records); values are not read.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from .engine import Engine
from .errors import MmapKVError
from .format import (
    CLASS_COUNT,
    CLASS_SIZES,
    KIND_SEGMENT,
    MAX_VALUE_BYTES,
    RECORD_HEADER,
    SEGMENT_ENTRIES,
    SLOT_SIZE,
    STATE_LIVE,
    STATE_PENDING,
    VERSION,
)
from .slots import PER_SLOT
from .table import HOME_OF_ENTRY, SEGMENT_MASK
from .locking import absolute_path
from .store import default_path

__all__ = ["collect", "render", "main", "ProgressBar", "describe_error", "run_tool",
           "EXIT_UNAVAILABLE", "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE"]

PROG = "python -m mmapkv.stats"
EXIT_UNAVAILABLE = 4     # the same code ``mmapkv`` uses when a store cannot be opened
EXIT_INTERRUPTED = 130   # 128 + SIGINT, what a shell reports
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what `head` leaves other tools with

Progress = Callable[[int, int], None]

# Value-size buckets: powers of four up to a full slot.
_VALUE_BUCKETS = [(0, 64), (65, 256), (257, 1024), (1025, 4096), (4097, MAX_VALUE_BYTES)]
_PROGRESS_EVERY = 256  # slots between progress callbacks: a callback per slot costs ~10%


def collect(path: str | os.PathLike[str] | None = None, *, now: float | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Scan the store at *path* (default: :func:`mmapkv.default_path`) and return the report.

    Opens the file read-only under a shared lock and changes nothing.  *now* (default
    ``time.time()``) decides which entries count as expired.  *progress*, if given, is
    called as ``progress(done, total)`` while the slots are scanned.

    :raises StoreLockedError: another process holds the store.
    :raises CorruptStoreError: no file at *path*, or it is not an mmapkv store.
    """
    path = absolute_path(os.fspath(path)) if path is not None else default_path()
    engine = Engine(path, readonly=True, create=False)
    try:
        return _report(engine, time.time() if now is None else now, progress)
    finally:
        engine.close()


def _histogram(values: list[int], bounds: list[tuple[int, int]]) -> list[dict[str, int]]:
    counts = [0] * len(bounds)
    for v in values:
        for n, (_, high) in enumerate(bounds):
            if v <= high:
                counts[n] += 1
                break
    return [{"min": low, "max": high, "count": c} for (low, high), c in zip(bounds, counts)]


def _probe_buckets(longest: int) -> list[tuple[int, int]]:
    """1, 2, 3-4, 5-8, ...: exact where nearly all entries are, coarse in the tail."""
    bounds, low = [], 1
    while low <= longest:
        high = max(low, 2 * (low - 1))
        bounds.append((low, high))
        low = high + 1
    return bounds


def _report(engine: Engine, now: float, progress: Progress | None) -> dict[str, Any]:
    """The figures, read defensively: a file that was not closed cleanly may hold stale
    slot info and table entries (recovery, which a read-only open does not run, would
    rebuild them), and a damaged one anything at all."""
    g, slots, mm = engine.geometry, engine.slots, engine._mm
    capacity = engine.slot_count
    # After a crash the superblock's high-water mark is from the last clean close: the
    # slots above it may hold records since, so look at every slot then.
    high_water = min(slots.high_water, capacity) if engine.was_clean else capacity
    live = expired = pending = 0
    value_sizes: list[int] = []
    ttl_keys = bad_expiries = 0
    next_expiry = math.inf
    classes: dict[int, list[int]] = {}
    segment_slots: list[int] = []
    deepest = record_slots = last_used = 0
    for slot in range(high_water):
        if progress is not None and slot % _PROGRESS_EVERY == 0:
            progress(slot, capacity)
        kind, depth, used, _, _, bitmap = slots.info(slot)
        if kind:
            last_used = slot + 1
        if kind == KIND_SEGMENT:
            segment_slots.append(slot)
            deepest = max(deepest, depth)
            continue
        if not 1 <= kind <= CLASS_COUNT:
            continue
        record_slots += 1
        cls = kind - 1
        size = CLASS_SIZES[cls]
        bits = int.from_bytes(bitmap, "little") & ((1 << PER_SLOT[cls]) - 1)
        taken = bin(bits).count("1")
        entry = classes.setdefault(cls, [0, 0])
        entry[0] += 1
        entry[1] += taken
        base = g.slots_offset + slot * SLOT_SIZE
        while bits:
            low = bits & -bits
            bits ^= low
            state, _, _, _, expires, vlen, _, _ = RECORD_HEADER.unpack_from(mm, base + (low.bit_length() - 1) * size)
            if state == STATE_PENDING:
                pending += 1
            elif state == STATE_LIVE:
                if expires and expires <= now:
                    expired += 1
                    continue
                live += 1
                value_sizes.append(vlen)
                if expires:
                    ttl_keys += 1
                    if math.isfinite(expires):
                        next_expiry = min(next_expiry, expires)
                    else:  # only damage writes these; JSON has no NaN or infinity
                        bad_expiries += 1
    if progress is not None:
        progress(capacity, capacity)

    # Probe lengths straight from the on-disk table: distance from home + 1.  After a
    # crash the superblock's depth is the last clean close's (it is written at close), and
    # a directory read that deep misses every segment split off since: walk the slots that
    # say they are segments then, and take the directory's depth as the deepest of theirs
    # (a split that doubles the directory gives both halves its new depth), or the last
    # clean close's if deeper (merges since made every segment shallower than the
    # directory, which keeps its depth): a lower bound, exact unless both happened.
    if engine.was_clean:
        segments, depth = engine.table.segments(), engine.table.depth
    else:
        segments, depth = segment_slots, max(deepest, engine.table.depth)
    probes: list[int] = []
    q = engine._q
    for segment in segments:
        if not 0 <= segment < capacity:
            continue
        base = engine.table.base(segment)
        probes += [((i - (e >> HOME_OF_ENTRY)) & SEGMENT_MASK) + 1
                   for i, e in enumerate(q[base:base + SEGMENT_ENTRIES].tolist()) if e]
    table_capacity = len(segment_slots) * SEGMENT_ENTRIES
    value_sizes.sort()
    return {
        "path": engine.path,
        "format_version": VERSION,
        "clean_close": engine.was_clean,
        "now": now,
        "file_size": engine.file_size,
        "max_size": g.max_size,
        "file_used_percent": round(100 * engine.file_size / g.max_size, 2),
        "slot_size": SLOT_SIZE,
        "max_value_bytes": MAX_VALUE_BYTES,
        "capacity": capacity,
        "max_capacity": g.max_slots,
        "high_water": high_water if engine.was_clean else last_used,
        "record_slots": record_slots,
        "segment_slots": len(segment_slots),
        "free_slots": capacity - record_slots - len(segment_slots),
        "live_keys": live,
        "expired_keys": expired,
        "pending_records": pending,
        "classes": [{"size": CLASS_SIZES[cls], "per_slot": PER_SLOT[cls], "slots": n, "used": used,
                     "free": n * PER_SLOT[cls] - used,
                     "fill": round(used / (n * PER_SLOT[cls]), 3)}
                    for cls, (n, used) in sorted(classes.items())],
        "table_depth": depth,
        "table_segments": len(segment_slots),
        "table_capacity": table_capacity,
        "table_entries": len(probes),
        "load_factor": round(len(probes) / table_capacity, 4) if table_capacity else 0.0,
        "probe_mean": round(sum(probes) / len(probes), 3) if probes else None,
        "probe_max": max(probes) if probes else None,
        "probe_histogram": _histogram(probes, _probe_buckets(max(probes, default=0))),
        "value_bytes_min": value_sizes[0] if value_sizes else None,
        "value_bytes_median": statistics.median_low(value_sizes) if value_sizes else None,
        "value_bytes_max": value_sizes[-1] if value_sizes else None,
        "value_histogram": _histogram(value_sizes, _VALUE_BUCKETS) if value_sizes else [],
        "keys_with_ttl": ttl_keys,
        "next_expiry": next_expiry if math.isfinite(next_expiry) else None,
        "bad_expiries": bad_expiries,
    }


# ------------------------------------------------------------------ rendering

def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _when(t: float, now: float) -> str:
    try:
        stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # past year 9999 or time_t: damage, or a ms clock
        stamp = f"unix time {t!r}, past the dates this tool can show"
    delta = t - now
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            return f"in {delta / seconds:.1f} {unit} ({stamp})"
    return f"in {delta:.0f} s ({stamp})"


def _bars(histogram: list[dict[str, int]], label: Callable[[int, int], str]) -> list[str]:
    top = max((b["count"] for b in histogram), default=0) or 1
    return [f"  {label(b['min'], b['max']):>16}  {b['count']:>9,}  {'#' * math.ceil(30 * b['count'] / top)}".rstrip()
            for b in histogram]


def render(r: dict[str, Any]) -> str:
    """The report from :func:`collect` as aligned lines of text."""
    lines = [
        ("path", r["path"]),
        ("format version", str(r["format_version"])),
        ("last close", "clean" if r["clean_close"] else
         "NOT clean (a crash?): the next writer rebuilds the table from the slots"),
        ("file size", f"{_bytes(r['file_size'])} ({r['file_size']:,} bytes) of a "
                      f"{_bytes(r['max_size'])} ceiling ({r['file_used_percent']:g}% used)"),
        ("slots", f"{r['capacity']:,} now, {r['max_capacity']:,} at the ceiling, of "
                  f"{r['slot_size']:,} bytes: {r['record_slots']:,} for records, {r['segment_slots']:,} "
                  f"for the table, {r['free_slots']:,} free"),
        ("live keys", f"{r['live_keys']:,}"),
        ("expired keys", f"{r['expired_keys']:,} not yet reclaimed"
                         + (f", {r['pending_records']:,} of an uncommitted batch" if r["pending_records"] else "")),
        ("hash table", f"{plural(r['table_segments'], 'segment')}, depth {r['table_depth']}, load "
                       f"{r['load_factor']:.3g} ({r['table_entries']:,} of {r['table_capacity']:,} "
                       "positions)"),
    ]
    out = [f"{name:<16} {text}" for name, text in lines]
    if r["classes"]:
        out.append(f"{'sub-slots':<16} {'size':>7} {'slots':>8} {'used':>10} {'free':>10}  fill")
        out += [f"{'':<16} {c['size']:>7,} {c['slots']:>8,} {c['used']:>10,} {c['free']:>10,}  "
                f"{100 * c['fill']:.0f}%" for c in r["classes"]]
    if r["probe_max"] is None:
        out.append(f"{'probe length':<16} - (no entries)")
    else:
        out.append(f"{'probe length':<16} mean {r['probe_mean']:.2f}, max {r['probe_max']}")
        out += _bars(r["probe_histogram"], lambda lo, hi: f"{lo}" if lo == hi else f"{lo}-{hi}")
    if r["value_bytes_max"] is None:
        out.append(f"{'value size':<16} - (no live keys)")
    else:
        out.append(f"{'value size':<16} min {r['value_bytes_min']:,} B, median "
                   f"{r['value_bytes_median']:,} B, max {r['value_bytes_max']:,} B")
        out += _bars(r["value_histogram"], lambda lo, hi: f"{lo:,}-{hi:,} B")
    ttl = f"{r['keys_with_ttl']:,}"
    if r["next_expiry"] is not None:
        ttl += f", next expiry {_when(r['next_expiry'], r['now'])}"
    if r["bad_expiries"]:
        ttl += (f"; {r['bad_expiries']:,} with an expiry that is not a time (NaN or infinite): "
                "a damaged slot, `mmapkv verify` says which")
    out.append(f"{'keys with a TTL':<16} {ttl}")
    return "\n".join(out)


# ------------------------------------------------------------------ shared with the CLI


def plural(n: int, word: str, plural: str | None = None) -> str:
    """*n* and *word*, in the plural unless *n* is 1: ``plural(1, "key") == "1 key"``."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"

class ProgressBar:
    """A one-line progress bar on *stream*, drawn only when it is a terminal.

    Call it as ``bar(done, total)``; it redraws only when the percentage changes, and
    :meth:`close` (or leaving the ``with`` block) erases it so later output starts clean.
    ``mmapkv.cli`` uses the same bar.
    """

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.label = label
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -1
        self._drawn = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        if percent == self._last:
            return
        self._last = percent
        filled = percent * self.WIDTH // 100
        text = f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d}%"
        self._drawn = len(text) - 1
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def describe_error(exc: BaseException) -> str:
    """One line for *exc*: an ``OSError``'s text and file name, anything else its ``str``."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = str(exc) or type(exc).__name__
    if "\n" in text or "\r" in text:  # one line, whatever the message held
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text  # the spaces inside a line kept: a path's own ("two  spaces.mmapkv")


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: what the output encoding cannot hold, as JSON's ``\\uXXXX``
    escapes, so that JSON output stays valid and lossless in any encoding."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return json.dumps(exc.object[exc.start:exc.end])[1:-1], exc.end


codecs.register_error("mmapkv.jsonescape", _json_escape)


def shown_default_path() -> str:
    """The default store's path for a ``--help``, or why there is none: the help must not
    fail where only the default path cannot be had."""
    try:
        return default_path()
    except MmapKVError as exc:
        return f"none: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"


def path_argument(text: str) -> str:
    """A command line's store path (argparse ``type=``): an empty one is a usage error,
    not the working directory (which ``os.path.abspath`` makes of it)."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty")
    return text


def run_tool(prog: str, body: Callable[[], int]) -> int:
    """Run a command line's *body* and return its exit code, made safe for a shell.

    While it runs, characters stdout's encoding cannot hold (``PYTHONIOENCODING=ascii``)
    are written as JSON ``\\uXXXX`` escapes rather than failing, unless the user chose an
    error handler.  Ctrl-C ends it with one line on stderr and :data:`EXIT_INTERRUPTED`;
    a reader that goes away (``| head``) ends it quietly with :data:`EXIT_BROKEN_PIPE`.
    """
    stdout = sys.stdout
    escape = getattr(stdout, "errors", None) == "strict" and hasattr(stdout, "reconfigure")
    if escape:
        stdout.reconfigure(errors="mmapkv.jsonescape")  # type: ignore[union-attr]
    try:
        code = body()
        if stdout is not None:  # None: started with stdout closed (`>&-`); print wrote nothing
            stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _drop_stdout(stdout)
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # what the body did not catch: stdout itself refused (/dev/full)
        if isinstance(exc, MmapKVError):
            raise
        print(f"{prog}: error: cannot write stdout: {describe_error(exc)}", file=sys.stderr)
        _drop_stdout(stdout)
        return EXIT_UNAVAILABLE
    finally:
        if escape:
            try:
                stdout.reconfigure(errors="strict")  # type: ignore[union-attr]
            except (OSError, ValueError):  # its flush met the closed pipe again
                pass


def _drop_stdout(stdout: Any) -> None:
    """Point stdout's descriptor at /dev/null: the interpreter's final flush of what is
    still buffered would fail again, with a traceback, on a pipe closed or a full device."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Print the report for ``[PATH] [--json]``; return the exit code (0, 2 usage, 4 unavailable,
    130 interrupted, 141 stdout closed early)."""
    return run_tool(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Report on an mmapkv store without changing a byte of it.")
    parser.add_argument("path", nargs="?", default=None, metavar="PATH", type=path_argument,
                        help=f"the store file (default: {shown_default_path()})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (fields in the module docstring)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with ProgressBar("scanning") as bar:
            report = collect(args.path, progress=bar)
    except (MmapKVError, OSError) as exc:
        print(f"{parser.prog}: error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
