"""What checking a value costs, and what the C alternatives to mmapkv's Python walk cost.

``python docs/bench/validators.py`` prints, for the benchmark's records of each size, the
time per value of each way to prove a value holds only exact JSON types and finite floats,
as a ratio to ``orjson.dumps`` of the same value in the same run (the work every store pays).
Rounds alternate the candidates, and each keeps its best round. Issue 13 asked whether a
compiled check, or letting orjson's output say when a walk is needed, beats the walk.

Candidates (``sound`` = accepts exactly what mmapkv's rules accept, or refers the value to
the full check):

- ``walk``: ``mmapkv.codec._plain``, what ``encode`` runs (sound);
- ``round trip``: ``orjson.loads(orjson.dumps(v)) == v``, subclasses refused by orjson
  (not sound: an ``Enum`` whose ``__eq__`` matches its value passes);
- ``marshal v1``: ``marshal.dumps(v, 1)``, which refuses every type but exact builtins,
  then a search of its bytes for the text of a NaN or an infinity (sound);
- ``pickle``, ``json (C)``: what those C serialisers cost over the same value (``json``
  with ``allow_nan=False`` still accepts subclasses and turns them into their base type);
- ``referents``: the walk one level at a time in C (``gc.get_referents``, ``map(type)``,
  ``itertools.compress``; sound on CPython 3.11);
- ``pickle check``: a C ``Pickler`` in fast mode (no memo) whose ``reducer_override`` raises,
  so it refuses every object but the exact builtins it writes itself (``None``, ``bool``,
  ``int``, ``float``, ``str``, ``bytes``, ``dict``, ``list``, ``tuple``, ``set``,
  ``frozenset``), then a search of its output for a float that is a NaN or an infinity
  (``G`` and eight big-endian bytes with every exponent bit set). Sound together with
  orjson's own refusals (subclasses with ``OPT_PASSTHROUGH_SUBCLASS``, ``bytes``, sets,
  integers beyond 64 bits), which an encode pays for anyway; ``pickle check (no search)``
  is its type check alone.
"""

from __future__ import annotations

import enum
import gc
import json
import marshal
import math
import pickle
import time
from collections.abc import Callable
import re
import uuid
from itertools import compress
from typing import Any

import orjson

from mmapkv.bench.workloads import make_pool
from mmapkv.codec import _ORJSON_OPTIONS, _PLAIN_CONTAINERS, _PLAIN_LEAVES, _plain

_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_PASSTHROUGH_SUBCLASS
_ALLOWED = _PLAIN_LEAVES | _PLAIN_CONTAINERS | {float}
_IS_CONTAINER = _PLAIN_CONTAINERS.__contains__
_IS_FLOAT = frozenset((float,)).__contains__


def round_trip(v: Any) -> bool:
    return bool(orjson.loads(orjson.dumps(v, option=_OPTIONS)) == v)


def marshal_v1(v: Any) -> bool:
    text = marshal.dumps(v, 1)  # floats as text: b"f\x03nan", b"f\x03inf", b"f\x04-inf"
    return not (b"f\x03nan" in text or b"f\x03inf" in text or b"f\x04-inf" in text)


def referents(v: Any) -> bool:
    level: Any = (v,)
    for _ in range(255):
        found = gc.get_referents(*level)
        types = [*map(type, found)]
        kinds = {*types}
        if not kinds <= _ALLOWED:
            return False
        if float in kinds:
            floats = [*compress(found, map(_IS_FLOAT, types))]
            if sum(map(float.__sub__, floats, floats)):  # NaN unless every one is finite
                return False
        if kinds.isdisjoint(_PLAIN_CONTAINERS):
            return True
        level = [*compress(found, map(_IS_CONTAINER, types))]
    return False


class _Colour(enum.Enum):
    RED = 1


class _Refused(Exception):
    pass


class _TypeCheck(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        raise _Refused  # called for every object but the exact builtins pickle writes itself


class _LastWrite:
    data = b""

    def write(self, data: bytes) -> None:  # protocol 3 has no frames: one write per dump
        self.data = data


_out = _LastWrite()
_checker = _TypeCheck(_out, 3)
_checker.fast = True  # no memo: the value is a tree (orjson refused cycles already)
_NAN_OR_INF = re.compile(rb"G[\x7f\xff][\xf0-\xff]").search


def pickle_check(v: Any) -> bool:
    try:
        _checker.dump(v)
    except _Refused:
        return False
    return _NAN_OR_INF(_out.data) is None


def pickle_types_only(v: Any) -> bool:
    try:
        _checker.dump(v)
    except _Refused:
        return False
    return True


CANDIDATES: dict[str, Callable[[Any], Any]] = {
    "orjson.dumps (the peer)": orjson.dumps,
    "walk (mmapkv)": lambda v: _plain(v, 1),
    "round trip": round_trip,
    "marshal v1": marshal_v1,
    "pickle": lambda v: pickle.dumps(v, 5),
    "json (C)": lambda v: json.dumps(v, allow_nan=False, check_circular=False,
                                     separators=(",", ":"), ensure_ascii=False),
    "referents": referents,
    "pickle check": pickle_check,
    "pickle check (no search)": pickle_types_only,
}


def main(rounds: int = 5, repeat: int = 10) -> None:
    for size in ("100B", "1KiB", "10KiB"):
        pool = make_pool(size, 1)
        assert all(check(v) for name, check in CANDIDATES.items() if name != "pickle"
                   for v in pool[:20]), "a candidate refused a valid value"
        # what orjson lets through, the pickle check must catch: a NaN, an infinity, an
        # Enum (even one whose value is JSON), a UUID
        assert not any(pickle_check({"v": [1, {"w": odd}]}) for odd in
                       (math.nan, math.inf, -math.inf, _Colour.RED, uuid.UUID(int=7)))
        best = dict.fromkeys(CANDIDATES, float("inf"))
        for _ in range(rounds):
            for name, check in CANDIDATES.items():
                t0 = time.perf_counter()
                for _ in range(repeat):
                    for v in pool:
                        check(v)
                best[name] = min(best[name], (time.perf_counter() - t0) / repeat / len(pool))
        peer = best["orjson.dumps (the peer)"]
        print(f"{size}: " + ", ".join(f"{name} {t * 1e6:.2f} us ({t / peer:.2f}x)"
                                      for name, t in best.items()))


if __name__ == "__main__":
    main()
