"""Benchmark mmapkv against the stores a Python user would otherwise pick.

Run ``python -m mmapkv.bench`` (``pip install -e ".[bench]"`` first for the peers); ``--quick``
is the few-second version CI runs.  It prints a table and writes ``results.json`` and
``latency.png`` to ``--out`` (default ``docs/bench``); ``docs/benchmarks.md`` shows them.

Method, in short (the long version is in ``docs/benchmarks.md``):

* Every operation is timed on its own with ``time.perf_counter_ns`` and reported as
  percentiles (median, p99, ...), which the goals judge by; the mean is recorded beside
  them, but it hides the tail and is pulled around by a shared machine's noise and by a
  peer's own periodic spikes (py-lmdb's page reclaims, diskcache's checkpoints).
* All stores of one (N, value size) group are open at once and take turns: chunks of
  ``CHUNK`` operations, round-robin, with the order rotated each turn.  Whatever the
  machine does meanwhile hits every store alike, so the *ratios* between stores are what
  to read; absolute numbers move from run to run.
* The cyclic garbage collector is paused while timing (and run between phases), so the
  garbage of one store does not land in the timings of the next one.
* Every store gives mmapkv's semantics where they matter for the time: ``create``
  refuses an existing key, a read of a missing key raises ``KeyError``, a batch is all
  or nothing.  Peers that store bytes run twice, with stdlib ``json`` and with mmapkv's
  own codec, so the engines can be compared apart from the codec.
* Designs whose every call is O(n) (the JSON file, ``dbm.dumb``'s delete) would take
  hours at full size; for them a spread-out sample of the calls is timed and the ones
  in between are done in bulk, untimed (``Adapter.caps``; ``count`` in the results says
  how many calls were timed).

Peers are imported lazily: a missing one is skipped with a note, so this package imports
(and its doctests run) without the ``bench`` extra.

>>> import random
>>> from mmapkv.bench.workloads import encode_json
>>> percentiles([5, 1, 4, 2, 3])["median_ns"]
3
>>> len(encode_json(make_record(random.Random(1), 1024))) in range(1014, 1035)
True
"""

from .cli import main
from .peers import ADAPTERS
from .runner import percentiles
from .workloads import OPS, SIZES, make_record

__all__ = ["main", "make_record", "percentiles", "ADAPTERS", "OPS", "SIZES"]
