"""How often a Ctrl-C during ``Store.keys()`` leaves the store's lock held (CPython 3.13).

``python docs/bench/ctrl_c_in_a_loop.py`` fires SIGALRM every 0.37 ms at 3,000 calls of
``keys()`` on a store of 300 expired entries (so that ``keys()`` skips each one) and raises
``KeyboardInterrupt`` from the handler, as Ctrl-C's does.  After each interrupted call it
checks whether the store's lock is still held (and releases it to go on).  Before
``keys()`` moved its loop out of its ``with self._lock:`` frame, CPython 3.13.0 left the lock
held after 55 and 73 of 3,000 interrupts (two runs): the loop's backward jump for a
skipped entry lies outside the frame's exception table (python/cpython#130279), so the
``with`` never released it, and the next call would have waited forever.  3.11.7 and 3.12.1: 0.  See
``tests/test_backward_jumps.py``, which checks every loop of the package in the bytecode.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

import mmapkv

CALLS = 3000


def main() -> None:
    directory = tempfile.mkdtemp()
    now = [1_700_000_000.0]
    store = mmapkv.Store(os.path.join(directory, "s.mmapkv"), clock=lambda: now[0])
    try:
        store.batch_create({f"k{i}": {"v": i} for i in range(300)}, ttl=10)
        now[0] += 100  # every key expired
        armed = [False]

        def interrupt(signum: int, frame: FrameType | None) -> None:
            if armed[0]:  # only inside the call, never in this loop's own bookkeeping
                armed[0] = False
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.00037)
        interrupted = held = 0
        for _ in range(CALLS):
            try:
                armed[0] = True
                store.keys()
                armed[0] = False
            except KeyboardInterrupt:
                interrupted += 1
                if store._lock.locked():
                    held += 1
                    store._lock.release()
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(f"CPython {sys.version.split()[0]}: {interrupted:,} of {CALLS:,} keys() calls interrupted, "
              f"the lock left held after {held}")
    finally:
        store.close()
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
