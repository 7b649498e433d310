"""What writing a new slot's pages first (``Slots._zero``) does to a create's time.

``python docs/bench/fresh_slots.py [--dir DIR] [--n N] [--rounds R] SIZE...`` opens two
stores side by side in DIR (default: the system's temporary directory, on the disk a
user's store would be on), one as mmapkv runs and one whose ``Slots.zero_file`` is
cleared after its first create (so its records fault a slot's never-written pages in
one by one), and creates the same N values of about SIZE bytes of JSON in each,
alternating turns of 500 creates, the order swapped every turn.  It prints each round's
median create of both and their ratio (below 1: the zeros help).  The files are deleted
after every round.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import tempfile
import time

import mmapkv

TURN = 500


def one_round(where: str, size: int, n: int) -> tuple[float, float]:
    """The median create, in us, with and without the zeros."""
    values = [{"id": i, "pad": "x" * (size - 30)} for i in range(1000)]
    keys = [f"user:{i:09d}" for i in range(n)]
    random.Random(3).shuffle(keys)
    folder = tempfile.mkdtemp(dir=where)
    try:
        zeros, plain = mmapkv.Store(os.path.join(folder, "zeros")), mmapkv.Store(os.path.join(folder, "plain"))
        with zeros, plain:
            zeros.create("first", {}), plain.create("first", {})  # the session's first change
            assert plain._engine is not None
            plain._engine.slots.zero_file = None
            times: dict[str, list[int]] = {"zeros": [], "plain": []}
            gc.disable()
            try:
                for turn, start in enumerate(range(0, n, TURN)):
                    order = [("zeros", zeros), ("plain", plain)]
                    for name, store in order if turn % 2 else order[::-1]:
                        spent = times[name]
                        for i in range(start, min(start + TURN, n)):
                            began = time.perf_counter_ns()
                            store.create(keys[i], values[i % 1000])
                            spent.append(time.perf_counter_ns() - began)
            finally:
                gc.enable()
        medians = [sorted(spent)[len(spent) // 2] / 1000 for spent in times.values()]
        return medians[0], medians[1]
    finally:
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="+", type=int, metavar="SIZE", help="bytes of JSON per value")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes:
        for _ in range(args.rounds):
            with_zeros, without = one_round(args.dir, size, args.n)
            print(f"{size:>6} B: median create {with_zeros:7.2f} us with the zeros, {without:7.2f} us "
                  f"without: {with_zeros / without:.3f}x", flush=True)


if __name__ == "__main__":
    main()
