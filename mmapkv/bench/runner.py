"""The timed run: all stores of a group open at once, taking turns, every call timed alone."""

from __future__ import annotations

import array
import gc
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .machine import (
    _faults,
    _page_cache_drops,
    scheduling_stalls,
)
from .peers import Adapter, BenchError
from .workloads import BATCH, OPS, encode_json

__all__ = ["percentiles", "Group", "CHUNK", "OPEN_REPEATS", "PERCENTILES"]

CHUNK = 500                 # operations per store per turn of the round-robin
OPEN_REPEATS = 20           # opens of each store, interleaved
PERCENTILES = (("median_ns", 0.5), ("p90_ns", 0.9), ("p99_ns", 0.99), ("p999_ns", 0.999))

_perf = time.perf_counter_ns


# --------------------------------------------------------------------------- statistics


def percentiles(samples: Sequence[int] | array.array[int]) -> dict[str, int]:
    """Nearest-rank percentiles (each one an observed value) of nanosecond *samples*.

    >>> p = percentiles(range(1, 1001))
    >>> p["median_ns"], p["p99_ns"], p["max_ns"], p["count"], p["mean_ns"]
    (500, 990, 1000, 1000, 500)
    """
    s = sorted(samples)
    n = len(s)
    if not n:
        return {"count": 0}
    out = {"count": n, "min_ns": s[0]}
    for name, q in PERCENTILES:
        out[name] = s[max(0, math.ceil(q * n) - 1)]
    out["max_ns"] = s[-1]
    out["mean_ns"] = round(sum(s) / n)  # beside the percentiles: issue 13 asks for mean ratios too
    return out


# --------------------------------------------------------------------------- the timed run


def _rotated(items: list[Adapter], turn: int) -> list[Adapter]:
    k = turn % len(items) if items else 0
    return items[k:] + items[:k]


def _stride(n: int, cap: int | None) -> int:
    """Time every *stride*-th call so that at most *cap* of *n* are timed."""
    return 1 if not cap or n <= cap else math.ceil(n / cap)


class Group:
    """One (N, value size) configuration: all its stores, their samples and sizes."""

    def __init__(self, classes: list[type[Adapter]], root: str, n: int, size_name: str,
                 pool: list[dict[str, Any]], seed: int, quick: bool) -> None:
        self.adapters = [cls(root, codec) for cls in classes if cls.max_n is None or n <= cls.max_n
                         for codec in cls.codecs]
        self.n, self.size_name, self.pool = n, size_name, pool
        rng = random.Random(f"{seed}:{n}:{size_name}")
        ids = list(range(n))
        rng.shuffle(ids)
        self.create_order = [(f"user:{i:08d}", pool[i % len(pool)]) for i in ids]
        self.read_order = [k for k, _ in self.create_order]
        rng.shuffle(self.read_order)
        self.miss_order = [f"user:{n + i:08d}" for i in ids]
        self.delete_order = [k for k, _ in self.create_order]
        rng.shuffle(self.delete_order)
        self.expected = {f"user:{i:08d}": pool[i % len(pool)] for i in range(n)}
        self.samples: dict[str, dict[str, array.array[int]]] = {
            a.name: {op: array.array("q") for op in OPS} for a in self.adapters}
        self.usage: dict[str, tuple[int, int]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.stalls: dict[str, Any] | None = None  # the machine's, just before the threads
        self.seconds = {a.name: 0.0 for a in self.adapters}  # wall time in the phases
        # Page faults of this process while each store ran each phase (getrusage): a read
        # that faults in a page from disk is a different operation from one that does not.
        self.faults = {a.name: {op: [0, 0] for op in OPS} for a in self.adapters}
        self.drops_before = _page_cache_drops()
        self.quick = quick

    def _count_faults(self, a: Adapter, op: str, before: tuple[int, int]) -> None:
        minor, major = _faults()
        counts = self.faults[a.name][op]
        counts[0] += minor - before[0]
        counts[1] += major - before[1]

    def cap(self, a: Adapter, op: str) -> int | None:
        cap = a.caps.get(op)
        return None if cap is None else (max(cap // 10, 20) if self.quick else cap)

    # Each phase walks the same work list for every store, CHUNK items per turn.
    def _phase(self, op: str, work: list[Any], run: Callable[[Adapter, list[Any], int], None]) -> None:
        gc.collect()
        gc.disable()
        try:
            for turn, start in enumerate(range(0, len(work), CHUNK)):
                part = work[start:start + CHUNK]
                for a in _rotated(self.adapters, turn):
                    t0, f0 = time.monotonic(), _faults()
                    run(a, part, start)
                    self.seconds[a.name] += time.monotonic() - t0
                    self._count_faults(a, op, f0)
        finally:
            gc.enable()

    def run(self) -> None:
        for a in self.adapters:
            a.open()
        self._phase("create", self.create_order, self._creates)
        for a in self.adapters:
            self.usage[a.name] = a.usage()
        # Reads run on the map that wrote the values, as in a long-running process, before
        # the reopens of the open phase.  Pages idle for long can still be evicted by the
        # host (this VM runs a DAMON "pageout" scheme); the fault counts in the results say
        # when a read went to disk.  Reads from a cold file are the resident test's subject.
        self._phase("read_hit", self.read_order, self._reads)
        self._phase("read_miss", self.miss_order, self._misses)
        self._threads()
        # Overwrites of every stored key with another record (issue 11); reads are done.
        self._phase("set", self.read_order, self._sets)
        self._opens()
        self._phase("delete", self.delete_order, self._deletes)
        for a in self.adapters:
            a.destroy("batch")
            a.open()
        batches = [self.create_order[i:i + BATCH] for i in range(0, self.n, BATCH)]
        self._phase("batch_create", batches, self._batches)
        for a in self.adapters:
            a.destroy("done")

    def _creates(self, a: Adapter, part: list[tuple[str, Any]], start: int) -> None:
        out = self.samples[a.name]["create"].append
        stride = _stride(self.n, self.cap(a, "create"))
        create, perf = a.create, _perf
        if stride == 1:
            for k, v in part:
                t0 = perf()
                create(k, v)
                t1 = perf()
                out(t1 - t0)
            return
        pending = []
        for i, (k, v) in enumerate(part, start):
            if (i + 1) % stride:
                pending.append((k, v))
                continue
            if pending:
                a.fill(pending)
                pending = []
            t0 = perf()
            create(k, v)
            t1 = perf()
            out(t1 - t0)
        if pending:
            a.fill(pending)

    def _reads(self, a: Adapter, part: list[str], start: int) -> None:
        out = self.samples[a.name]["read_hit"].append
        stride = _stride(self.n, self.cap(a, "read_hit"))
        read, perf, expected = a.read, _perf, self.expected
        for i, k in enumerate(part, start):
            if (i + 1) % stride:
                continue
            t0 = perf()
            v = read(k)
            t1 = perf()
            out(t1 - t0)
            if not i % 997 and v != expected[k]:
                raise BenchError(f"{a.name}: read({k!r}) returned a different value")

    def _misses(self, a: Adapter, part: list[str], start: int) -> None:
        out = self.samples[a.name]["read_miss"].append
        stride = _stride(self.n, self.cap(a, "read_miss"))
        get, perf = a.get, _perf
        for i, k in enumerate(part, start):
            if (i + 1) % stride:
                continue
            t0 = perf()
            value = get(k)
            t1 = perf()
            if value is not None:
                raise BenchError(f"{a.name}: get of the missing key {k!r} returned a value")
            out(t1 - t0)

    def _threads(self) -> None:
        """Reads from one thread, then from four at once (issue 13): the aggregate
        throughput of each, and every read's latency.  Twice per store, the order of the
        stores reversed the second time."""
        keys = self.read_order[:min(self.n, THREAD_READS)]
        stores = [a for a in self.adapters if a.shared_reads]
        if stores:  # what a p99 of these reads can be on this machine, measured beside them
            self.stalls = scheduling_stalls()
        runs: dict[str, list[dict[str, Any]]] = {a.name: [] for a in stores}
        for turn in range(2):
            for a in (stores if turn == 0 else stores[::-1]):
                runs[a.name].append({"one": _read_threads(a, keys, 1), "four": _read_threads(a, keys, 4)})
        for name, pairs in runs.items():
            one = max((p["one"] for p in pairs), key=lambda r: r["per_s"])   # each at its best
            four = max((p["four"] for p in pairs), key=lambda r: r["per_s"])
            self.threads[name] = {"reads": len(keys), "one_thread_per_s": one["per_s"],
                                  "four_threads_per_s": four["per_s"],
                                  "ratio": round(four["per_s"] / one["per_s"], 3),
                                  "one_thread": one["latency"], "four_threads": four["latency"]}

    def _sets(self, a: Adapter, part: list[str], start: int) -> None:
        out = self.samples[a.name]["set"].append
        stride = _stride(self.n, self.cap(a, "create"))  # as costly as a create
        set_, perf, pool = a.set, _perf, self.pool
        for i, k in enumerate(part, start):
            if (i + 1) % stride:
                continue
            v = pool[(int(k[5:]) + 1) % len(pool)]
            t0 = perf()
            set_(k, v)
            t1 = perf()
            out(t1 - t0)

    def _deletes(self, a: Adapter, part: list[str], start: int) -> None:
        out = self.samples[a.name]["delete"].append
        stride = _stride(self.n, self.cap(a, "delete"))
        delete, perf = a.delete, _perf
        pending: list[str] = []
        for i, k in enumerate(part, start):
            if (i + 1) % stride:
                pending.append(k)
                continue
            if pending:
                a.drop(pending)
                pending = []
            t0 = perf()
            delete(k)
            t1 = perf()
            out(t1 - t0)
        if pending:
            a.drop(pending)

    def _batches(self, a: Adapter, part: list[list[tuple[str, Any]]], start: int) -> None:
        out = self.samples[a.name]["batch_create"].append
        batch, perf = a.batch, _perf
        for pairs in part:
            t0 = perf()
            batch(pairs)
            t1 = perf()
            out((t1 - t0) // len(pairs))  # per key, comparable with create

    def _opens(self) -> None:
        stores = [a for a in self.adapters if a.persistent]
        repeats = 5 if self.quick else OPEN_REPEATS
        gc.collect()
        gc.disable()
        try:
            for rep in range(repeats):
                for a in _rotated(stores, rep):
                    a.close()
                    f0 = _faults()
                    t0 = _perf()
                    a.open()
                    t1 = _perf()
                    self._count_faults(a, "open", f0)
                    self.samples[a.name]["open"].append(t1 - t0)
        finally:
            gc.enable()

    def summary(self) -> dict[str, Any]:
        stores: dict[str, Any] = {}
        for a in self.adapters:
            ops = {}
            for op in OPS:
                samples = self.samples[a.name][op]
                if samples:
                    ops[op] = percentiles(samples)
                    ops[op]["minor_faults"], ops[op]["major_faults"] = self.faults[a.name][op]
            apparent, allocated = self.usage.get(a.name, (0, 0))
            stores[a.name] = {"family": a.family, "codec": a.codec, "ops": ops,
                              "threads": self.threads.get(a.name),
                              "file_bytes": apparent, "disk_bytes": allocated,
                              "phase_seconds": round(self.seconds[a.name], 2)}
        mm = stores.get("mmapkv")
        if mm:  # how many times mmapkv's median a peer's median is (> 1: mmapkv is faster)
            for name, entry in stores.items():
                entry["ratio_to_mmapkv"] = {
                    op: round(p["median_ns"] / mm["ops"][op]["median_ns"], 3)
                    for op, p in entry["ops"].items() if op in mm["ops"] and mm["ops"][op].get("median_ns")}
        value_lengths = [len(encode_json(v)) for v in self.pool]
        # Bytes of key + compact JSON value stored: what "file bytes per byte stored" divides by.
        data_bytes = sum(len(k) + value_lengths[int(k[5:]) % len(self.pool)] for k, _ in self.create_order)
        drops = _page_cache_drops()
        return {"n": self.n, "value_size": self.size_name,
                "page_cache_dropped_during_run": None if drops is None or self.drops_before is None
                else drops > self.drops_before,
                "value_bytes_median": sorted(value_lengths)[len(value_lengths) // 2],
                "data_bytes": data_bytes, "batch_keys": BATCH, "stalls": self.stalls, "stores": stores}


THREAD_READS = 20_000  # reads per measurement, split among the threads


def _read_threads(a: Adapter, keys: list[str], threads: int) -> dict[str, Any]:
    """*keys* read by *threads* threads at once (each its own slice): reads per second
    over the whole, and the percentiles of every read."""
    samples = [array.array("q") for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        read, perf, out = a.read, _perf, samples[t].append
        mine = keys[t::threads]
        start.wait()
        for k in mine:
            t0 = perf()
            read(k)
            out(perf() - t0)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    gc.collect()
    gc.disable()
    try:
        start.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    merged = array.array("q")
    for part in samples:
        merged.extend(part)
    return {"per_s": round(len(keys) / elapsed), "latency": percentiles(merged)}


def _timer_overhead() -> int:
    perf = _perf
    samples = array.array("q")
    for _ in range(10_000):
        t0 = perf()
        t1 = perf()
        samples.append(t1 - t0)
    return percentiles(samples)["median_ns"]

