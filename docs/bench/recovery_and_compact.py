"""What recovery after a crash and ``compact`` cost at N small keys.

``python docs/bench/recovery_and_compact.py [N]`` (default 1,000,000) writes N keys of ~40 B
in batches and leaves the process without closing the store, as a kill would. It then times
the open of a copy (which recovers: reads every record and builds a new table), and a
``compact`` of a store that lost a quarter of its keys to deletes, with tracemalloc's peak
over the compact (tracemalloc slows it several times: its time is taken on a second copy,
untraced). Run it with PYTHONPATH naming the code to measure, one version after the other.
The files go in a temporary directory, removed at the end (about 2 x 300 MB at a million).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import mmapkv
from mmapkv import transfer


def write(path: str, n: int, delete_every: int = 0) -> None:
    """N keys at *path*, and every *delete_every*-th deleted; left unclosed (a crash)."""
    pid = os.fork()
    if pid == 0:  # a child, so that its exit leaves the file as a kill would
        store = mmapkv.Store(path)
        for start in range(0, n, 20_000):
            store.batch_create({f"k{j}": {"v": j, "name": "x" * 20} for j in range(start, min(n, start + 20_000))})
        for j in range(0, n if delete_every else 0, delete_every or 1):
            del store[f"k{j}"]
        os._exit(0)
    os.waitpid(pid, 0)


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as where:
        crashed, copy = os.path.join(where, "crashed"), os.path.join(where, "copy")
        write(crashed, n)
        shutil.copyfile(crashed, copy)
        os.unlink(crashed)
        wall, cpu = time.perf_counter(), time.process_time()
        store = mmapkv.Store(copy)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"recovery of {len(store):,} keys: {wall:.2f} s ({cpu:.2f} s CPU)")
        store.close()
        os.unlink(copy)
        write(crashed, n, delete_every=4)
        with mmapkv.Store(crashed):
            pass  # recovered and closed: the compacts below start clean
        for traced in (False, True):
            shutil.copyfile(crashed, copy)
            with mmapkv.Store(copy) as store:
                if traced:
                    tracemalloc.start()
                wall = time.perf_counter()
                _, _, keys = transfer.compact(store)
                wall = time.perf_counter() - wall
                if traced:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    print(f"compact of {keys:,} keys: heap peak {peak / 2**20:.1f} MiB ({peak / keys:.0f} B a key)")
                else:
                    print(f"compact of {keys:,} keys: {wall:.2f} s")
            os.unlink(copy)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
