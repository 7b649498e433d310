"""mmapkv alone: one store filled to its ceiling, and the probe counts of its hash table."""

from __future__ import annotations

import array
import gc
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from typing import Any

from .runner import _perf, percentiles
from .workloads import encode_json

__all__ = ["table_probes", "fill_to_ceiling"]


def table_probes(path: str, miss_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Probe counts of the on-disk table of the store at *path* (closed or open).

    A hit reads ``distance from home + 1`` entries; a miss reads entries until an empty
    one or one closer to its home than the search is (Robin Hood's early exit).
    """
    from ..engine import fingerprint
    from ..format import FINGERPRINT_SHIFT, SUPERBLOCK, Geometry

    with open(path, "rb") as f:
        head = SUPERBLOCK.unpack(f.read(SUPERBLOCK.size))
        g = Geometry(head[3])
        f.seek(g.table_offset)
        table = array.array("Q")
        table.frombytes(f.read(8 * g.table_capacity))
    if sys.byteorder != "little":  # pragma: no cover
        table.byteswap()
    mask = g.table_capacity - 1
    hits = [((i - (e >> FINGERPRINT_SHIFT)) & mask) + 1 for i, e in enumerate(table) if e]
    misses = []
    for key in miss_keys:
        fp = fingerprint(key.encode("utf-8"))
        i, distance = fp & mask, 0
        while True:
            e = table[i]
            if not e or ((i - (e >> FINGERPRINT_SHIFT)) & mask) < distance:
                break
            i, distance = (i + 1) & mask, distance + 1
        misses.append(distance + 1)

    def stats(xs: list[int]) -> dict[str, Any]:
        if not xs:
            return {"count": 0}
        s = sorted(xs)
        return {"count": len(s), "mean": round(sum(s) / len(s), 4),
                "p99": s[math.ceil(0.99 * len(s)) - 1], "max": s[-1]}

    return {"entries": len(hits), "table_capacity": g.table_capacity,
            "load": round(len(hits) / g.table_capacity, 4), "hit": stats(hits), "miss": stats(misses)}


def fill_to_ceiling(tmp: str, max_size: int | None, pool: list[dict[str, Any]]) -> tuple[dict[str, Any], array.array[int]]:
    """Create keys into one fresh store until it is full; time every create.

    Returns the summary and the raw latencies (for the chart).  With the default ceiling
    this writes about 1 GiB.
    """
    from .. import Store, StoreFullError

    path = os.path.join(tmp, "fill.mmapkv")
    if hasattr(os, "sync"):
        # Start from a quiet disk: the groups before leave gigabytes of dirty pages, and the
        # first create's one-page msync (the session's crash barrier) would queue behind them.
        os.sync()
    store = Store(path, max_size=max_size)
    latencies = array.array("q")
    growths = []
    size = store.stats().file_size
    create, perf = store.create, _perf
    full_ns = None
    gc.collect()
    gc.disable()
    started = time.monotonic()
    try:
        i = 0
        while True:
            key = f"fill:{i:09d}"
            t0 = perf()
            try:
                create(key, pool[i % len(pool)])
            except StoreFullError:
                full_ns = perf() - t0
                break
            t1 = perf()
            latencies.append(t1 - t0)
            new_size = store.stats().file_size
            if new_size != size:
                growths.append({"create_index": i, "from_bytes": size, "to_bytes": new_size, "ns": t1 - t0})
                size = new_size
            i += 1
    finally:
        gc.enable()
    elapsed = time.monotonic() - started
    stats = store.stats()
    # Reads at the highest load the store allows.
    rng = random.Random(11)
    sample = [f"fill:{rng.randrange(len(latencies)):09d}" for _ in range(min(20_000, len(latencies)))]
    read, reads = store.read, array.array("q")
    gc.disable()
    try:
        for k in sample:
            t0 = perf()
            read(k)
            reads.append(perf() - t0)
    finally:
        gc.enable()
    probes = table_probes(path, (f"miss:{i:09d}" for i in range(20_000)))
    store.close()
    order = sorted(range(len(latencies)), key=latencies.__getitem__, reverse=True)[:10]
    summary = {
        "max_size": stats.max_size, "keys": len(latencies), "file_bytes": stats.file_size,
        "value_bytes_median": sorted(len(encode_json(v)) for v in pool)[len(pool) // 2],
        "seconds": round(elapsed, 2), "create": percentiles(latencies),
        "store_full_error_ns": full_ns, "growths": growths,
        "slowest": [{"create_index": j, "ns": latencies[j]} for j in order],
        "first_create_ns": latencies[0] if latencies else None,  # it msyncs the superblock page
        "read_hit_at_full_load": percentiles(reads), "probes": probes,
    }
    return summary, latencies
