"""``python -m mmapkv.bench``: the options, the order of the tests, and where results go."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .ceiling import FILL_SIZES, empty_store_bytes, fill_pool, fill_to_ceiling
from .chart import draw_chart
from .goals import evaluate_goals
from .machine import machine_info
from .memory import measure_heap_at_scale, measure_memory, measure_resident
from .peers import ADAPTERS, JSONFILE_MAX_N, BenchError, JsonFileAdapter, available, stop_servers
from .report import format_markdown, format_table
from .runner import CHUNK, OPEN_REPEATS, Group, _timer_overhead
from .workloads import BATCH, POOL, SIZES, make_pool

__all__ = ["main"]

FULL_NS = (1_000, 10_000, 50_000)
QUICK_NS = (1_000,)
QUICK_SIZES = ("1KiB",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmapkv.bench",
                                description="Benchmark mmapkv against py-lmdb, diskcache, sqlitedict, "
                                            "dbm.dumb, a dict, a JSON file and mmapkv's RedisStore.")
    p.add_argument("--quick", action="store_true",
                   help=f"N={QUICK_NS[0]:,}, values {' and '.join(QUICK_SIZES)}, a small ceiling for the "
                        "fill test: seconds, for CI")
    p.add_argument("--n", type=int, nargs="+", metavar="N",
                   help=f"numbers of keys (default {', '.join(f'{x:,}' for x in FULL_NS)})")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), help="value sizes")
    p.add_argument("--stores", nargs="+", metavar="FAMILY",
                   help="only these (" + ", ".join(c.family for c in ADAPTERS) + "); mmapkv always runs")
    p.add_argument("--out", default=os.path.join("docs", "bench"),
                   help="directory for results.json and latency.png (default docs/bench)")
    p.add_argument("--tmp", help="directory for the stores' files (default: a new temporary one)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--fill-max-size", type=int,
                   help="ceiling of the fill-to-full test (default 1 GiB; 16 MiB with --quick)")
    p.add_argument("--resident-n", type=int, help="values read for the resident-memory test "
                                                   "(default 50,000; the largest N with --quick)")
    p.add_argument("--fill-sizes", nargs="+", choices=list(FILL_SIZES), default=list(FILL_SIZES),
                   help="value sizes of the fill-to-ceiling tests (default: all; the first one's "
                        "latencies are charted and judged for pauses)")
    p.add_argument("--heap-n", type=int, help="creates before the Python heap is measured at scale "
                                               "(default 1,000,000; 10,000 with --quick)")
    p.add_argument("--no-fill", action="store_true", help="skip the fill-to-ceiling tests")
    p.add_argument("--no-memory", action="store_true", help="skip the memory and resident tests")
    p.add_argument("--report", metavar="RESULTS_JSON",
                   help="run nothing: print the Markdown tables of docs/benchmarks.md from a results file")
    return p


def main(argv: Sequence[Any] | None = None) -> int:
    """Run the benchmark; print the table; write results.json and latency.png.  Exit code."""
    args = _parser().parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.report:
        try:
            with open(args.report, encoding="utf-8") as f:
                print(format_markdown(json.load(f)))
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: cannot report on {args.report}: {exc}", file=sys.stderr)
            return 1
        return 0
    started = time.time()
    ns = sorted(set(args.n)) if args.n else list(QUICK_NS if args.quick else FULL_NS)
    if any(x < BATCH for x in ns):
        print(f"error: --n must be at least {BATCH}", file=sys.stderr)
        return 2
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    families = None
    if args.stores:
        unknown = set(args.stores) - {c.family for c in ADAPTERS}
        if unknown:
            print(f"error: unknown store(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        families = ["mmapkv", *args.stores]
    if args.tmp:
        os.makedirs(args.tmp, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="mmapkv-bench-", dir=args.tmp)
    notes: list[str] = []
    results: dict[str, Any] = {
        "argv": list(sys.argv[1:] if argv is None else map(os.fspath, argv)), "quick": args.quick,
        "machine": machine_info(), "seed": args.seed, "chunk": CHUNK, "batch_keys": BATCH,
        "timer_overhead_ns": _timer_overhead(), "groups": [], "notes": notes,
    }
    try:
        classes = available(families, notes)
        if args.quick:
            notes.append("quick run: small N and sizes; not the published configuration")
        for n in ns:
            for size in sizes:
                pool = make_pool(size, args.seed, min(POOL, n))
                group = Group(classes, os.path.join(tmp, f"n{n}-{size}"), n, size, pool, args.seed,
                              args.quick)
                _progress(started, f"N={n:,} {size}: {', '.join(a.name for a in group.adapters)}")
                group.run()
                results["groups"].append(group.summary())
                _fault_notes(results["groups"][-1], notes)
        if JsonFileAdapter in classes and min(ns) > JSONFILE_MAX_N:
            notes.append(f"jsonfile skipped: it runs only at N <= {JSONFILE_MAX_N:,}")
        fill_lat = None
        if not args.no_fill:
            fill_size = args.fill_max_size or ((16 << 20) if args.quick else None)
            _progress(started, f"filling one store to its ceiling ({fill_size or 1 << 30:,} B)")
            results["fills"] = {}
            for size in args.fill_sizes:
                _progress(started, f"  {size} values, then py-lmdb and diskcache for the same records")
                summary, latencies = fill_to_ceiling(tmp, fill_size, fill_pool(size, args.seed),
                                                     open_repeats=5 if args.quick else OPEN_REPEATS)
                results["fills"][size] = summary
                if fill_lat is None:  # the first size is the one charted and judged for pauses
                    results["fill"], fill_lat = summary, latencies
                del latencies
        if not args.no_memory:
            mem_n = max(ns)
            _progress(started, f"memory after {mem_n:,} creates, one interpreter per store")
            results["memory"] = measure_memory(classes, mem_n, tmp, args.seed)
            heap_n = args.heap_n or (10_000 if args.quick else 1_000_000)
            _progress(started, f"mmapkv's heap after {heap_n:,} creates of 100 B values")
            results["memory_at_scale"] = measure_heap_at_scale(heap_n, tmp, args.seed)
            resident_n = args.resident_n or (max(ns) if args.quick else 50_000)
            _progress(started, f"resident pages after reading {resident_n:,} values")
            results["resident"] = measure_resident(resident_n, tmp, args.seed, 5 if args.quick else OPEN_REPEATS)
        results["empty_store_bytes"] = empty_store_bytes(tmp)
        _progress(started, "chart and results")
        results["goals"] = evaluate_goals(results)
        try:
            results["machine"]["loadavg_end"] = os.getloadavg()
        except OSError:
            pass
        results["seconds"] = round(time.time() - started, 1)
        os.makedirs(args.out, exist_ok=True)
        why = draw_chart(results, fill_lat, os.path.join(args.out, "latency.png"))
        if why:
            notes.append(why)
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, sort_keys=False)
            f.write("\n")
        print(format_table(results))
        print(f"\nwrote {os.path.join(args.out, 'results.json')} in {results['seconds']} s")
        return 0
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_servers()  # a redis-server of the RedisStore peer, if a failure left it running
        _remove_later(tmp)


def _remove_later(path: str) -> None:
    """Delete the stores' files in a detached ``rm`` when possible: freeing the big
    mmapkv files can take minutes on some file systems, and nobody needs to wait."""
    rm = shutil.which("rm")
    if rm and os.name == "posix":
        subprocess.Popen([rm, "-rf", "--", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    else:  # pragma: no cover
        shutil.rmtree(path, ignore_errors=True)


def _fault_notes(group: dict[str, Any], notes: list[str]) -> None:
    """Say where disk reads (major faults) were part of what was timed."""
    where = f"N={group['n']:,} {group['value_size']}"
    if group.get("page_cache_dropped_during_run"):
        notes.append(f"{where}: another process dropped the page cache (drop_caches) during this group")
    for name, store in group["stores"].items():
        for op in ("read_hit", "read_miss"):  # writes fault in fresh pages by design
            p = store["ops"].get(op)
            if p and p.get("major_faults", 0) > p["count"] // 100:
                notes.append(f"{where}: {name} {op} had {p['major_faults']:,} major page faults in "
                             f"{p['count']:,} calls: pages read back from disk, not from the page cache")


def _progress(started: float, what: str) -> None:
    print(f"[{time.time() - started:7.1f} s] {what}", file=sys.stderr, flush=True)
