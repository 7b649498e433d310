"""mmapkv alone, then beside its peers: stores filled to the 1 GiB ceiling, and the probes
of the hash table at that load."""

from __future__ import annotations

import array
import gc
import heapq
import math
import os
import random
import shutil
import time
from collections.abc import Iterable
from typing import Any

from .peers import Adapter, DiskcacheAdapter, LmdbAdapter
from .runner import _perf, percentiles
from .workloads import encode_json, make_record

__all__ = ["table_probes", "fill_to_ceiling", "FILL_SIZES", "fill_pool", "empty_store_bytes"]

#: The value sizes the capacity goals name, in bytes of compact JSON.  16,300 is the largest
#: record the benchmark's generator makes that stays under the 16,384-byte limit.
FILL_SIZES = {"100B": 100, "1KiB": 1024, "16KiB": 16_300}
FILL_POOL = 200


def fill_pool(size_name: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:fill:{size_name}")
    return [make_record(rng, FILL_SIZES[size_name]) for _ in range(FILL_POOL)]


def _probe_stats(xs: list[int]) -> dict[str, Any]:
    if not xs:
        return {"count": 0}
    s = sorted(xs)
    return {"count": len(s), "mean": round(sum(s) / len(s), 4),
            "p99": s[math.ceil(0.99 * len(s)) - 1], "max": s[-1]}


def table_probes(store: Any, miss_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Probe counts of the on-disk table of the open *store*, read from its segments.

    A hit reads ``distance from home + 1`` entries of one segment; a miss reads entries
    until an empty one or one closer to its home than the search is (Robin Hood's early
    exit), the way ``Engine.find`` walks them.
    """
    from ..format import HOME_SHIFT, SEGMENT_ENTRIES
    from ..table import HOME_OF_ENTRY, SEGMENT_MASK

    engine = store._engine
    table, q = engine.table, engine._q
    hits: list[int] = []
    segments = table.segments()
    for segment in segments:
        base = table.base(segment)
        for i, e in enumerate(q[base:base + SEGMENT_ENTRIES]):
            if e:
                hits.append(((i - (e >> HOME_OF_ENTRY)) & SEGMENT_MASK) + 1)
    misses = []
    for key in miss_keys:
        fp = engine.fingerprint(key.encode("utf-8"))
        base = table.base(table.segment_of(fp))
        i, distance = (fp >> HOME_SHIFT) & SEGMENT_MASK, 0
        while True:
            e = q[base + i]
            if not e or ((i - (e >> HOME_OF_ENTRY)) & SEGMENT_MASK) < distance:
                break
            i, distance = (i + 1) & SEGMENT_MASK, distance + 1
        misses.append(distance + 1)
    capacity = len(segments) * SEGMENT_ENTRIES
    return {"entries": len(hits), "table_capacity": capacity, "segments": len(segments),
            "directory_depth": table.depth, "load": round(len(hits) / capacity, 4),
            "hit": _probe_stats(hits), "miss": _probe_stats(misses)}


def empty_store_bytes(tmp: str) -> int:
    """The size on disk of a new, empty store (created, closed)."""
    from .. import Store

    path = os.path.join(tmp, "empty.mmapkv")
    Store(path).close()
    try:
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def _peer_bytes(cls: type[Adapter], root: str, pairs: Iterable[tuple[str, Any]]) -> int | None:
    """File bytes a peer takes for the same records, written in bulk (its fastest path:
    the size is what is measured here, not the time).  None if the peer is missing."""
    if cls.missing():
        return None
    adapter = cls(root, "mmapkv")
    adapter.open()
    chunk: list[tuple[str, Any]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == 2_000:
            adapter.batch(chunk)
            chunk = []
    if chunk:
        adapter.batch(chunk)
    adapter.close()
    used = adapter.usage()[0]
    shutil.rmtree(root, ignore_errors=True)   # the disk is shared: go as we measure
    return used


def fill_to_ceiling(tmp: str, max_size: int | None, pool: list[dict[str, Any]], *,
                    peers: bool = True, open_repeats: int = 20) -> tuple[dict[str, Any], array.array[int]]:
    """Create keys into one fresh store until ``StoreFullError``; time every create.

    Then: reads and table probes at that load, reopen times of the full store, and the
    file bytes py-lmdb and diskcache take for the same records.  Returns the summary and
    the raw create latencies (for the chart).  With the default ceiling this writes about
    1 GiB, deleted before returning.
    """
    from .. import Store, StoreFullError

    path = os.path.join(tmp, "fill.mmapkv")
    if hasattr(os, "sync"):
        # Start from a quiet disk: the groups before leave gigabytes of dirty pages, and the
        # first create's one-page msync (the session's crash barrier) would queue behind them.
        os.sync()
    store = Store(path, max_size=max_size)
    engine = store._engine
    assert engine is not None
    latencies = array.array("q")
    growths = []
    size = engine.file_size
    create, perf, n_pool = store.create, _perf, len(pool)
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
                create(key, pool[i % n_pool])
            except StoreFullError:
                full_ns = perf() - t0
                break
            t1 = perf()
            latencies.append(t1 - t0)
            if engine.file_size != size:
                growths.append({"create_index": i, "from_bytes": size, "to_bytes": engine.file_size,
                                "ns": t1 - t0})
                size = engine.file_size
            i += 1
    finally:
        gc.enable()
    elapsed = time.monotonic() - started
    keys = len(latencies)
    stats = store.stats()
    rng = random.Random(11)   # reads at the highest load the store allows
    sample = [f"fill:{rng.randrange(keys):09d}" for _ in range(min(20_000, keys))]
    read, reads = store.read, array.array("q")
    gc.disable()
    try:
        for k in sample:
            t0 = perf()
            read(k)
            reads.append(perf() - t0)
    finally:
        gc.enable()
    probes = table_probes(store, (f"miss:{i:09d}" for i in range(20_000)))
    store.close()
    opens = array.array("q")
    for _ in range(open_repeats):   # the open of a full store, after a clean close
        t0 = perf()
        s = Store(path)
        opens.append(perf() - t0)
        s.close()
    file_bytes = os.path.getsize(path)
    os.unlink(path)
    value_lengths = [len(encode_json(v)) for v in pool]
    data_bytes = sum(len(f"fill:{j:09d}") + value_lengths[j % n_pool] for j in range(keys))
    peer_bytes: dict[str, int | None] = {}
    if peers:
        for cls in (LmdbAdapter, DiskcacheAdapter):
            pairs = ((f"fill:{j:09d}", pool[j % n_pool]) for j in range(keys))
            peer_bytes[cls.family] = _peer_bytes(cls, os.path.join(tmp, f"fill-{cls.family}"), pairs)
    slowest = heapq.nlargest(10, range(keys), key=latencies.__getitem__)
    summary = {
        "max_size": stats.max_size, "keys": keys, "file_bytes": file_bytes, "data_bytes": data_bytes,
        "value_bytes_median": sorted(value_lengths)[n_pool // 2],
        "seconds": round(elapsed, 2), "create": percentiles(latencies),
        "store_full_error_ns": full_ns, "growths": growths,
        "slowest": [{"create_index": j, "ns": latencies[j]} for j in slowest],
        "first_create_ns": latencies[0] if keys else None,  # it msyncs the superblock page
        "read_hit_at_full_load": percentiles(reads), "probes": probes,
        "open_full": percentiles(opens), "peer_file_bytes": peer_bytes,
    }
    return summary, latencies
