"""Torn and corrupt files: damage never turns into wrong data, a foreign exception or a
dead interpreter; files that are not stores are refused and left byte for byte as they were.

A store is populated (big and small values, unicode keys, big integers, deletions, a batch)
and closed cleanly, or dropped as after a crash.  Copies of it are then damaged, seeded:
random bit flips, zeroed ranges, truncation at random offsets, or all three, aimed at the
superblock, the hash table, slot headers, keys, values, or anywhere.  A child process
(``fault_child.py check``) opens each copy and reads every key with ``read``, ``get`` and
``in``, then ``keys``, ``len`` and ``verify``: every outcome must be an ``MmapKVError``
subclass or the exact stored value.  The child must exit normally (a segfault or SIGBUS
shows as a signal exit code; the last ``case`` line names the file that killed it).

``MMAPKV_FAULT_CASES`` sets the number of damaged copies per kind and state (default 250).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from typing import Any

import pytest

import mmapkv
from fault_child import child_command, child_env, make_value, write_report
from mmapkv.format import KEY_OFFSET, SLOT_STRIDE, VALUE_OFFSET, VERSION, Geometry

CASES = int(os.environ.get("MMAPKV_FAULT_CASES", "250"))
MAX_SIZE = Geometry.smallest_max_size() * 4
GEOMETRY = Geometry(MAX_SIZE)


def populate(directory: str, crashed: bool) -> tuple[str, dict[str, Any]]:
    """A store with 24 live keys of varied values (after deletes and a batch); returns its
    path and the expected contents.  *crashed*: dropped without a clean close."""
    path = os.path.join(directory, "pristine.mmapkv")
    expected: dict[str, Any] = {}
    store = mmapkv.Store(path, max_size=MAX_SIZE)
    for i in range(20):
        key = ["k", "ключ", "🔑", "键"][i % 4] + str(i)
        value = make_value(key, i, [200, 16384, 1000, 9000][i % 4])
        store.create(key, value)
        expected[key] = value
    for key in ["k0", "🔑2", "k8"]:
        store.delete(key)
        del expected[key]
    batch = {f"batch{i}": {"i": i, "big": 10 ** 30 + i, "f": i / 7, "l": [None, True, "é"]}
             for i in range(7)}
    store.batch_create(batch)
    expected.update(batch)
    store.create("ttl", {"far": "future"}, ttl=mmapkv.MAX_TTL)
    expected["ttl"] = {"far": "future"}
    if crashed:
        engine, store._engine = store._engine, None
        engine._release()  # type: ignore[union-attr]
    else:
        store.close()
    return path, expected


def regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth aiming at: superblock, table, each used slot's header, key, value."""
    high_water = struct.unpack_from("<I", data, 32)[0] or 30
    out = [(0, 80), (0, 4096), (GEOMETRY.table_offset, GEOMETRY.table_offset + 8 * GEOMETRY.table_capacity)]
    for slot in range(high_water):
        off = GEOMETRY.slot_offset(slot)
        out += [(off, off + KEY_OFFSET), (off + KEY_OFFSET, off + VALUE_OFFSET),
                (off + VALUE_OFFSET, off + VALUE_OFFSET + 400)]
    out.append((0, len(data)))
    return [(a, min(b, len(data))) for a, b in out if a < len(data)]


def damage(data: bytes, kind: str, rng: random.Random) -> tuple[bytes, list[str]]:
    """A damaged copy of *data* and a description of what was done to it."""
    buf = bytearray(data)
    spots = regions(data)
    done: list[str] = []
    kinds = ["flip", "zero", "truncate"] if kind == "mixed" else [kind]
    for what in kinds:
        if what == "flip":
            for _ in range(rng.choice([1, 1, 2, 3, 8])):
                lo, hi = rng.choice(spots)
                at, bit = rng.randrange(lo, hi), rng.randrange(8)
                buf[at] ^= 1 << bit
                done.append(f"flip byte {at} bit {bit}")
        elif what == "zero":
            for _ in range(rng.choice([1, 1, 2, 3])):
                lo, hi = rng.choice(spots)
                at = rng.randrange(lo, hi)
                length = rng.choice([1, 2, 4, 8, 16, 64, 512, 4096])
                buf[at:at + length] = bytes(len(buf[at:at + length]))
                done.append(f"zero {length} bytes at {at}")
        else:
            lo, hi = rng.choice(spots)
            at = rng.randrange(lo, hi) if rng.random() < 0.8 else rng.randrange(len(buf))
            del buf[at:]
            done.append(f"truncate at {at}")
    return bytes(buf), done


def run_checker(directory: str, files: list[str], expected: dict[str, Any]) -> dict[str, Any]:
    """Run ``fault_child.py check`` over *files*; fail with the culprit if it dies."""
    expected_path = os.path.join(directory, "expected.json")
    with open(expected_path, "w") as f:
        json.dump(expected, f)
    proc = subprocess.run(child_command("check", {"files": files, "expected": expected_path}),
                          capture_output=True, env=child_env(), timeout=600)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line]
    last_case = next((e["case"] for e in reversed(lines) if e["ev"] == "case"), None)
    assert proc.returncode == 0, (
        f"the checker died with exit code {proc.returncode} on case {last_case} "
        f"({files[last_case] if last_case is not None else '-'}):\n{proc.stderr.decode()[-3000:]}")
    assert lines and lines[-1]["ev"] == "done"
    done: dict[str, Any] = lines[-1]
    return done


@pytest.mark.parametrize("state", ["clean", "crashed"])
@pytest.mark.parametrize("kind", ["flip", "zero", "truncate", "mixed"])
def test_damaged_store_never_gives_wrong_data(tmp_path: Any, kind: str, state: str) -> None:
    """Every read of a damaged store is an MmapKVError or the exact value; no other
    exception; the reading process survives."""
    seed = {"flip": 11, "zero": 22, "truncate": 33, "mixed": 44}[kind] + (state == "crashed")
    rng = random.Random(seed)
    directory = str(tmp_path)
    pristine, expected = populate(directory, crashed=state == "crashed")
    with open(pristine, "rb") as f:
        data = f.read()
    files, damages = [], []
    for case in range(CASES):
        damaged, done = damage(data, kind, rng)
        path = os.path.join(directory, f"case{case}.mmapkv")
        with open(path, "wb") as f:
            f.write(damaged)
        files.append(path)
        damages.append(done)
    result = run_checker(directory, files, expected)
    context = f"seed={seed} kind={kind} state={state}"
    assert result["wrong"] == [], (
        f"{context}: wrong data: {result['wrong'][:3]}; damage: "
        f"{[damages[w['case']] for w in result['wrong'][:3]]}")
    assert result["foreign"] == [], (
        f"{context}: a non-mmapkv exception: {result['foreign'][0]['trace']}\ndamage: "
        f"{damages[result['foreign'][0]['case']]}")
    assert result["invented_keys"] == [], (
        f"{context}: keys() listed names never stored: {result['invented_keys'][:3]}")
    assert result["refused"] + result["opened"] == CASES
    assert set(result["errors"]) <= {"CorruptStoreError", "FormatVersionError", "KeyNotFoundError",
                                     "KeyExpiredError"}, result["errors"]
    if kind == "truncate":  # a store shorter than its superblock says is never opened
        assert result["opened"] == 0
    reads = len(expected) * 2
    write_report("fault_corrupt", {
        "corrupted files tried": CASES, "opened anyway": result["opened"],
        "refused at open": result["refused"], "reads exact": result["reads_exact"],
        "reads refused": result["reads_refused"], "reads tried": result["opened"] * reads,
        "wrong data": len(result["wrong"]), "errors other than the documented ones": len(result["foreign"]),
        "keys() listed names never stored": len(result["invented_keys"])})


def random_non_store(rng: random.Random, case: int) -> bytes:
    """Bytes that are not an mmapkv store: random, text, or a near miss of the header."""
    magic = b"\x89MKV\r\n\x1a\n"
    size = rng.choice([0, 1, 7, 8, 9, 79, 80, 81, 4096, rng.randrange(200_000)])
    body = rng.randbytes(size)
    style = case % 6
    if style == 1:  # text
        body = ("not a store\n" * (size // 12 + 1)).encode()[:size]
    elif style == 2:  # a truncated magic number
        body = magic[:rng.randrange(1, 8)]
    elif style == 3:  # the magic number, then garbage
        body = magic + body
    elif style == 4:  # the magic, a future version, then garbage
        body = magic + struct.pack("<I", rng.randrange(2, 2 ** 32)) + body
    elif style == 5:  # the magic and the current version with a zeroed or random superblock
        body = magic + struct.pack("<I", VERSION) + (bytes(size) if rng.random() < 0.5 else body)
    return body


def test_non_stores_are_refused_and_left_untouched(tmp_path: Any) -> None:
    """Opening a file that is not a store raises CorruptStoreError (FormatVersionError for
    a newer version) and changes none of its bytes."""
    rng = random.Random(55)
    cases = max(CASES, 60)
    files, contents = [], []
    for case in range(cases):
        body = random_non_store(rng, case)
        path = os.path.join(tmp_path, f"junk{case}")
        with open(path, "wb") as f:
            f.write(body)
        files.append(path)
        contents.append(body)
    result = run_checker(str(tmp_path), files, {})
    assert result["foreign"] == [], result["foreign"][0]["trace"]
    assert result["opened"] == 0 and result["refused"] == cases, result
    assert set(result["errors"]) <= {"CorruptStoreError", "FormatVersionError"}, result["errors"]
    for path, body in zip(files, contents):
        with open(path, "rb") as f:
            assert f.read() == body, f"{path} was changed by opening it"
    # and in this process: the exact class, a message naming the path
    with pytest.raises(mmapkv.CorruptStoreError, match="junk1"):
        mmapkv.Store(files[1])
    write_report("fault_corrupt", {"non-store files tried": cases, "non-store files refused": result["refused"]})


def test_keys_never_lists_a_damaged_name(tmp_path: Any) -> None:
    """A flipped bit in a stored key must not make keys() report a key nobody stored."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path, max_size=MAX_SIZE) as store:
        store.create("abc", {"b": 2})
    with open(path, "r+b") as f:
        f.seek(GEOMETRY.slot_offset(0) + KEY_OFFSET)
        f.write(b"`")  # "abc" -> "`bc": still valid UTF-8, checksum now fails
    with mmapkv.Store(path) as store:
        with pytest.raises(mmapkv.CorruptStoreError, match="1 entry"):
            store.keys()  # found, dropped and reported: never listed under a wrong name
        assert store.keys() == [] and len(store) == 0 and store.verify() == []


def test_checker_detects_wrong_data(tmp_path: Any) -> None:
    """The checker itself can fail: a store holding a different value is reported."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    result = run_checker(str(tmp_path), [path], {"k": {"v": 2}})
    assert len(result["wrong"]) == 2  # read and get
    shutil.rmtree(tmp_path, ignore_errors=True)
