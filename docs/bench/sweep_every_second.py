"""What ``len()`` costs once a second while keys with a TTL expire continuously.

``python docs/bench/sweep_every_second.py [N] [one-ttl|random]`` creates N keys (default
1,000,000) of ~20 B, each with a TTL, under a clock it moves by hand: ``one-ttl`` writes them
over an hour with a TTL of 3,600 s (a cache: they expire in the order they were written),
``random`` all at once with TTLs drawn from 1 to 3,600 s. Then it moves the clock one second
at a time and times ``len()``, which sweeps the keys that expired. The first sweep after an
open reads every record slot; later ones only the slots whose expiry bound passed
(docs/design.md, "Expiry"). The store goes in a temporary directory, removed at the end.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

import mmapkv


def main(n: int, mode: str) -> None:
    now = [1_000.0]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as where:
        store = mmapkv.Store(os.path.join(where, "s.mmapkv"), clock=lambda: now[0])
        step = 3_600 / n
        for i in range(n):
            if mode == "one-ttl":
                now[0] += step
            store.create(f"k{i}", {"v": i}, ttl=3_600 if mode == "one-ttl" else rng.randint(1, 3_600))
        times = []
        for _ in range(6):
            now[0] += 1.0
            start = time.perf_counter()
            len(store)
            times.append((time.perf_counter() - start) * 1e3)
        store.close()
    print(f"{mode} {n:,} keys: len() after each second, ms:", " ".join(f"{t:.1f}" for t in times))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, sys.argv[2] if len(sys.argv) > 2 else "one-ttl")
