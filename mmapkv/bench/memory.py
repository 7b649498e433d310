"""Memory and resident pages, each measured in a fresh interpreter so its numbers are its own."""

from __future__ import annotations

import array
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from .machine import SOURCE_ROOT, _anon_kib, _faults, _mapping_rss_kib, _mincore_pages
from .peers import ADAPTERS, Adapter, BenchError
from .runner import _perf, percentiles
from .workloads import BATCH, POOL, encode_json, make_pool

__all__ = ["measure_memory", "measure_resident", "measure_heap_at_scale"]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Work done in a fresh interpreter so its memory numbers are its own."""
    kind = spec["kind"]
    if kind == "memory":
        return _memory_child(spec)
    if kind == "resident-build":
        from .. import Store

        pool = make_pool("1KiB", spec["seed"], min(POOL, spec["n"]))
        with Store(spec["path"]) as store:
            for start in range(0, spec["n"], 1000):
                store.batch_create([(f"user:{i:08d}", pool[i % len(pool)])
                                    for i in range(start, min(start + 1000, spec["n"]))])
        return {}
    if kind == "resident":
        return _resident_child(spec)
    raise ValueError(kind)


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    import tracemalloc

    cls = {c.family: c for c in ADAPTERS}[spec["family"]]
    adapter = cls(spec["tmp"], spec["codec"])
    pool = [encode_json(v) for v in make_pool(spec["size"], spec["seed"], min(POOL, spec["n"]))]
    loads = json.loads
    adapter.open()
    create, n = adapter.create, spec["n"]
    gc.collect()
    heap = spec["mode"] == "heap"
    if heap:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _anon_kib() or 0
    if "create" in adapter.caps:
        # O(n) per create (the JSON file): in batches, or tracemalloc makes it take minutes.
        for start in range(0, n, BATCH):
            adapter.fill([(f"user:{i:08d}", loads(pool[i % len(pool)]))
                          for i in range(start, min(start + BATCH, n))])
    else:
        for i in range(n):
            # A fresh object per key, as values arriving from elsewhere would be.
            create(f"user:{i:08d}", loads(pool[i % len(pool)]))
    gc.collect()
    walk: dict[str, int] = {}
    if heap:
        grown = tracemalloc.get_traced_memory()[0] - before
        if spec.get("iterate"):  # then the peak of a walk over every key (for key in store)
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            store: Iterable[str] = getattr(adapter, "store")  # the mmapkv adapter's Store
            walk["keys"] = sum(1 for _ in store)
            walk["peak_bytes"] = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    else:
        grown = ((_anon_kib() or 0) - before) * 1024
    adapter.close()
    return {"bytes": grown, "usage": adapter.usage(), **({"walk": walk} if walk else {})}


def _resident_child(spec: dict[str, Any]) -> dict[str, Any]:
    from .. import Store

    path, n = spec["path"], spec["n"]
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):  # start cold: drop the file from the page cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    cached_before = _mincore_pages(path)
    t0 = _perf()
    store = Store(path)
    cold_open = _perf() - t0
    keys = [f"user:{i:08d}" for i in range(n)]
    random.Random(5).shuffle(keys)
    read, perf, reads = store.read, _perf, array.array("q")
    f0 = _faults()
    for k in keys:
        t0 = perf()
        read(k)
        reads.append(perf() - t0)
    f1 = _faults()
    rss_kib = _mapping_rss_kib(path)
    cached_after = _mincore_pages(path)
    store.close()
    opens = array.array("q")
    for _ in range(spec["repeats"]):
        t0 = _perf()
        s = Store(path)
        opens.append(_perf() - t0)
        s.close()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    out: dict[str, Any] = {"values_read": n, "page_bytes": page, "cold_open_ns": cold_open,
                           "cold_read": {**percentiles(reads), "minor_faults": f1[0] - f0[0],
                                         "major_faults": f1[1] - f0[1]},
                           "warm_open": percentiles(opens), "file_bytes": os.path.getsize(path)}
    if rss_kib is not None:
        out["mapping_rss_bytes"] = rss_kib * 1024
        out["mapping_rss_pages_per_value"] = round(rss_kib * 1024 / page / n, 4)
    if cached_before is not None and cached_after is not None:
        out["page_cache_pages_added"] = cached_after - cached_before
        out["page_cache_pages_per_value"] = round((cached_after - cached_before) / n, 4)
    return out


def _run_child(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    code = "import json, sys; from mmapkv.bench.memory import _child; " \
           "print(json.dumps(_child(json.loads(sys.argv[1]))))"
    env = dict(os.environ)
    env["PYTHONPATH"] = SOURCE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode:
        raise BenchError(f"child {spec['kind']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure_memory(classes: list[type[Adapter]], n: int, tmp: str, seed: int) -> list[dict[str, Any]]:
    """Heap (tracemalloc) and anonymous RSS growth after *n* creates of 1 KiB values, one
    store per fresh interpreter.  Peers run with mmapkv's codec (the codec keeps nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    chosen = {cls.family: cls(tmp, "mmapkv" if "mmapkv" in cls.codecs else cls.codecs[0]) for cls in classes
              if cls.in_process}  # a server's memory is not this process's

    def one(a: Adapter, mode: str) -> dict[str, Any]:
        where = tempfile.mkdtemp(dir=tmp)
        return _run_child({"kind": "memory", "family": a.family, "codec": a.codec,
                           "n": min(n, a.max_n or n), "size": "1KiB", "seed": seed,
                           "tmp": where, "mode": mode})

    # Memory is not timing: the interpreters may run side by side.
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs = {(a.name, mode): pool.submit(one, a, mode) for a in chosen.values() for mode in ("heap", "rss")}
        out = []
        for a in chosen.values():
            heap, rss = jobs[a.name, "heap"].result(), jobs[a.name, "rss"].result()
            out.append({"store": a.name, "n": min(n, a.max_n or n), "value_size": "1KiB",
                        "heap_bytes": heap["bytes"], "anon_rss_bytes": rss["bytes"],
                        "file_bytes": rss["usage"][0], "disk_bytes": rss["usage"][1]})
    return out


def measure_heap_at_scale(n: int, tmp: str, seed: int) -> dict[str, Any]:
    """mmapkv's Python heap growth after *n* creates of ~100 B values (1,000,000 in the
    published run: millions of keys are what small slots are for), then the heap's peak
    while a ``for key in store`` walks them all (it streams: one table segment's keys at
    a time, where a list of a million keys is tens of MiB)."""
    where = tempfile.mkdtemp(dir=tmp)
    try:
        heap = _run_child({"kind": "memory", "family": "mmapkv", "codec": None, "n": n, "size": "100B",
                           "seed": seed, "tmp": where, "mode": "heap", "iterate": True})
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return {"store": "mmapkv", "n": n, "value_size": "100B", "heap_bytes": heap["bytes"],
            "file_bytes": heap["usage"][0], "walk_keys": heap["walk"]["keys"],
            "walk_peak_bytes": heap["walk"]["peak_bytes"]}


def measure_resident(n: int, tmp: str, seed: int, repeats: int) -> dict[str, Any]:
    path = os.path.join(tmp, "resident.mmapkv")
    _run_child({"kind": "resident-build", "path": path, "n": n, "seed": seed})
    return _run_child({"kind": "resident", "path": path, "n": n, "repeats": repeats})
