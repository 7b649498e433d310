"""What the benchmark does to every store: its operations, seeded JSON records, and codecs."""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable
from typing import Any

__all__ = ["OPS", "SIZES", "BATCH", "POOL", "make_record", "encode_json", "make_pool"]

OPS = ("create", "read_hit", "read_miss", "set", "delete", "batch_create", "open")
SIZES = {"100B": 100, "1KiB": 1024, "10KiB": 10240}
BATCH = 100                 # keys per batch_create call
POOL = 1_000                # distinct records per value size (key i stores record i % POOL)


_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey x-ray yankee "
          "zulu order invoice shipped pending returned priority customer warehouse Zoë José "
          "Müller Ærø naïve café").split()
_CITIES = ("Lisbon", "Zürich", "Osaka", "Nairobi", "Montréal", "Oslo", "Lima", "Austin")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def make_record(rng: random.Random, target: int) -> dict[str, Any]:
    """A realistic JSON record (nested objects, lists, strings, ints, floats, bools, null)
    whose compact JSON text is about *target* bytes.

    >>> rec = make_record(random.Random(7), 100)
    >>> sorted(rec), 90 <= len(encode_json(rec)) <= 110
    (['active', 'bio', 'id', 'name', 'score', 'tags'], True)
    """
    rec: dict[str, Any] = {
        "id": rng.randrange(10**9),
        "name": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS).title()}",
        "active": rng.random() < 0.8,
        "score": round(rng.uniform(0, 100), 2),
        "tags": [rng.choice(_WORDS) for _ in range(2)],
    }
    if target > 200:
        rec["email"] = f"{rng.choice(_WORDS).lower()}.{rng.randrange(1000)}@example.com"
        rec["created"] = f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T" \
                         f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
        rec["address"] = {"street": f"{rng.randrange(1, 999)} {_text(rng, 2)}", "city": rng.choice(_CITIES),
                          "zip": f"{rng.randrange(10000, 99999)}", "geo": [round(rng.uniform(-90, 90), 5),
                                                                          round(rng.uniform(-180, 180), 5)]}
        rec["prefs"] = {"lang": rng.choice(["en", "fr", "de", "ja"]), "newsletter": rng.random() < 0.5,
                        "theme": None, "limits": {"daily": rng.randrange(100), "burst": rng.randrange(10)}}
        rec["events"] = []
    size = len(encode_json(rec))
    while target > 200 and size < target - 160:
        event = {"at": 1_700_000_000 + rng.randrange(10**7), "kind": rng.choice(_WORDS),
                 "amount": round(rng.uniform(1, 500), 2), "qty": rng.randrange(1, 9),
                 "ok": rng.random() < 0.9, "note": _text(rng, rng.randrange(1, 5))}
        rec["events"].append(event)
        size += len(encode_json(event)) + 1  # and a comma
    # Pad with a text field so the sizes are comparable from record to record.
    rec["bio"] = ""
    missing = target - len(encode_json(rec))
    if missing > 0:
        rec["bio"] = (_text(rng, missing // 4 + 2) + " " * missing)[:missing].rstrip() or "x"
    return rec


def encode_json(value: Any) -> bytes:
    """mmapkv's definition of a value's size: compact UTF-8 JSON, non-ASCII unescaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_POOLS: dict[tuple[str, int], list[dict[str, Any]]] = {}


def make_pool(size_name: str, seed: int, count: int = POOL) -> list[dict[str, Any]]:
    """*count* (at most ``POOL``) seeded records of about ``SIZES[size_name]`` bytes."""
    pool = _POOLS.get((size_name, seed))
    if pool is None:
        rng = random.Random(f"{seed}:{size_name}")
        pool = _POOLS[size_name, seed] = [make_record(rng, SIZES[size_name]) for _ in range(POOL)]
    return pool[:count]


# --------------------------------------------------------------------------- codecs


def _codecs() -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """The (encode, decode) pairs the byte-storing peers run with."""
    from .. import codec as mm_codec

    mm_encode, mm_decode = mm_codec.encode, mm_codec.decode
    dumps, loads = json.dumps, json.loads
    pdumps, ploads = pickle.dumps, pickle.loads
    return {
        # What a user of stdlib json writes: the defaults.
        "json": (lambda v: dumps(v).encode("utf-8"), loads),
        # mmapkv's codec, rules included (our records never need its big-int flag).
        "mmapkv": (lambda v: mm_encode(v)[0], lambda b: mm_decode(b, 0)),
        "pickle": (lambda v: pdumps(v, pickle.HIGHEST_PROTOCOL), ploads),
    }
