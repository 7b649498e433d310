"""What a create stores when another thread changes the value during the call.

``python docs/bench/mutated_while_stored.py`` makes 20,000 creates of one ``dict`` while a
second thread swaps one of its fields between ``1.0``, a NaN and an ``Enum`` member, and
counts the creates refused (the strictness pass saw the NaN or the member) and those whose
stored field is not ``1.0`` (orjson wrote a state the pass had not seen).  The switch
interval is set to 1 us and the swapping thread calls a function after each swap, so that
it gives up the GIL between swaps and not only after putting ``1.0`` back.  Three runs at
``1e2d5f6``: 7,721 refused and 1 stored as ``"red"``; 8,554 refused and 6 stored (5 as
``"red"``, 1 as ``None``, the NaN written as ``null``); 9,991 refused and none.  design.md
("Locking, threads and fork") says why mmapkv leaves this to its callers.
"""

from __future__ import annotations

import enum
import os
import shutil
import sys
import tempfile
import threading

import mmapkv

CREATES = 20_000


class Colour(enum.Enum):
    RED = "red"


def _give_up_the_gil() -> None:
    """A call: the interpreter may switch threads when it enters a function."""


def main() -> None:
    value: dict[str, object] = {"pad": list(range(200)), "x": 1.0}
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            value["x"] = float("nan")
            _give_up_the_gil()
            value["x"] = Colour.RED
            _give_up_the_gil()
            value["x"] = 1.0
            _give_up_the_gil()

    directory = tempfile.mkdtemp()
    sys.setswitchinterval(1e-6)
    swapper = threading.Thread(target=swap)
    swapper.start()
    refused = changed = 0
    try:
        with mmapkv.Store(os.path.join(directory, "s.mmapkv")) as store:
            for i in range(CREATES):
                try:
                    store.create(f"k{i}", value)
                except mmapkv.InvalidValueError:
                    refused += 1
                    continue
                stored = store.read(f"k{i}")["x"]
                if stored != 1.0:
                    changed += 1
                    print(f"k{i} stored x = {stored!r}")
    finally:
        stop.set()
        swapper.join()
        shutil.rmtree(directory)
    print(f"{CREATES:,} creates: {refused:,} refused, {changed:,} stored a field the check did not see")


if __name__ == "__main__":
    main()
