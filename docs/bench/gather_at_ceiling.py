"""Writes at the ceiling after deletes at random stranded a class's free sub-slots.

``python docs/bench/gather_at_ceiling.py [MiB ...]`` fills a store of that ceiling (default
64) with ~100 B values, deletes 95 % of them at random, then creates 4 KB values until the
store is full, and prints how many fit, their total time, the slowest and the median.
Each of those creates finds no room until a write gathers the small values' class
(``Engine.gather``, docs/design.md "Capacity and growth").  Run it with ``PYTHONPATH``
pointing at two checkouts to compare them; the store goes in ``/dev/shm`` when there is
one, and is deleted at the end.

Measured (stop 31, this 2-core machine, alternating runs): before writes gathered, 10 of
the 4 KB values fit an 8 MiB store; gathering one slot per pass, 15,050 fit 64 MiB in
4.1 s (84 s at 256 MiB); with a pass moving up to 256 records ahead, 0.44 s (3.1 s), the
slowest create 14 to 25 ms; at 1 GiB, 241,045 fit in 23.7 s, the slowest 70 ms.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import tempfile
import time

import mmapkv

SMALL = {"v": "x" * 80}       # a 160-byte record
BIG = {"pad": "y" * 3000}     # a 4,096-byte record


def run(mib: int) -> str:
    directory = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(directory, "gather.mmapkv")
    try:
        with mmapkv.Store(path, max_size=mib << 20) as store:
            count = 0
            try:
                while True:
                    store.create(f"k{count}", SMALL)
                    count += 1
            except mmapkv.StoreFullError:
                pass
            doomed = random.Random(7).sample(range(count), int(count * 0.95))
            for i in doomed:
                store.delete(f"k{i}")
            del doomed
            gc.collect()
            gc.freeze()  # this script's own objects: no full collection inside a timed create
            times: list[float] = []
            try:
                while True:
                    start = time.perf_counter()
                    store.create(f"big{len(times)}", BIG)
                    times.append(time.perf_counter() - start)
            except mmapkv.StoreFullError:
                pass
            gc.unfreeze()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)
    times.sort()
    if not times:
        return f"{mib} MiB: no 4 KB value fit"
    return (f"{mib} MiB: {len(times):,} creates of 4 KB after 95 % of {count:,} small values went: "
            f"{sum(times) * 1e3:,.0f} ms in all, slowest {times[-1] * 1e3:.1f} ms, "
            f"median {times[len(times) // 2] * 1e6:.0f} us")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["64"]:
        print(run(int(arg)))
