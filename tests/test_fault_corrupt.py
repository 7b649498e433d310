"""Torn and corrupt files: damage never turns into wrong data, a foreign exception or a
dead interpreter; files that are not stores are refused and left byte for byte as they were.

A store is populated (a value in every sub-slot class, 160 B to the whole slot; unicode
keys, big integers, deletions, a batch, a TTL) and closed cleanly, or dropped as after a
crash.  Copies of it are then damaged, seeded: random bit flips, zeroed ranges, truncation
at random offsets, or all three, aimed at a region of the version-3 layout read from the
file itself: the superblock, the directory, the slot-info region, the table's segments (all
of them, or the entries in use), record headers, keys, values, or anywhere.  A child process
(``fault_child.py check``) opens each copy and reads every key with ``read``, ``get`` and
``in``, then ``keys``, ``len`` and ``verify``, twice, then again after a close and reopen:
every outcome must be an ``MmapKVError`` subclass or the exact stored value.  Damage to what
is derived from the records (slot info, directory, segments) may make a read fail, drop the
entry, or, after the recovery a damaged read triggers, succeed: only wrong data is wrong.
The child must exit normally (a segfault or SIGBUS shows as a signal exit code; the last
``case`` line names the file that killed it).

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
from mmapkv.engine import Engine
from mmapkv.format import (
    CLASS_COUNT,
    CLASS_SIZES,
    KEY_OFFSET,
    KIND_SEGMENT,
    SB_FLAGS,
    MAGIC,
    MAX_KEY_BYTES,
    PAGE_SIZE,
    RECORD_FIELDS,
    RECORD_HEADER,
    SEGMENT_ENTRIES,
    SLOT_INFO,
    SLOT_SIZE,
    SUPERBLOCK,
    SUPERBLOCK_FIELDS,
    VERSION,
    Geometry,
    class_for,
)
from mmapkv.table import Table

CASES = int(os.environ.get("MMAPKV_FAULT_CASES", "250"))
MAX_SIZE = Geometry.smallest_max_size() * 4
GEOMETRY = Geometry(MAX_SIZE)
#: one value size per sub-slot class (with the keys below, up to 10 bytes): 160 B .. whole slot
VALUE_SIZES = (100, 200, 260, 450, 560, 950, 1200, 1950, 2450, 4000, 5000, 10000, 16384)
_DEPTH = SUPERBLOCK_FIELDS.index("global_depth")

#: Foreign exceptions that engine bugs raise, each pinned down by a strict-xfail test below:
#: (exception, engine function it comes out of, the test).  The damage runs report these as
#: an xfail naming the test; any other foreign exception fails them.  Delete a line when
#: its test starts to pass (strict: it then fails as XPASS).
KNOWN_BUGS: list[tuple[str, str, str]] = []


def known_bug(trace: str) -> str | None:
    """The test that pins down the engine bug behind *trace*, or None."""
    lines = trace.strip().splitlines()
    frame = [line.strip() for line in lines if line.strip().startswith("File ")][-1]
    exception = lines[-1].split(":")[0]
    for name, function, test in KNOWN_BUGS:
        if exception == name and "mmapkv/engine.py" in frame and frame.endswith(f", in {function}"):
            return test
    return None


def populate(directory: str, crashed: bool) -> tuple[str, dict[str, Any]]:
    """A store with 31 live keys, two values in each sub-slot class, closed cleanly, then
    reopened for deletes, a batch and a TTL; returns its path and the expected contents.
    *crashed*: the second session is dropped without a clean close."""
    path = os.path.join(directory, "pristine.mmapkv")
    expected: dict[str, Any] = {}
    with mmapkv.Store(path, max_size=MAX_SIZE) as store:
        for i in range(2 * CLASS_COUNT):
            key = ["k", "ключ", "🔑", "键"][i % 4] + str(i)
            value = make_value(key, i, VALUE_SIZES[i % CLASS_COUNT])
            store.create(key, value)
            expected[key] = value
    store = mmapkv.Store(path)
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


def regions(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges worth aiming at, by region of the layout.  Records and segments are
    found through the slot info, not the superblock's counters (a crash leaves those stale)."""
    g = GEOMETRY
    depth = min(SUPERBLOCK.unpack_from(data)[_DEPTH], g.max_depth)
    out: dict[str, list[tuple[int, int]]] = {
        "superblock": [(0, SUPERBLOCK.size), (0, PAGE_SIZE)],
        "directory": [(g.dir_offset, g.dir_offset + 2 * (1 << depth)), (g.dir_offset, g.info_offset)],
        "slot info": [(g.info_offset, g.slots_offset)],
        "segment": [], "table entry": [], "record header": [], "key": [], "value": [],
        "anywhere": [(0, len(data))],
    }
    for slot in range(g.slot_count(len(data))):
        at = g.info_offset + SLOT_INFO.size * slot
        kind, _, _, _, _, bitmap = SLOT_INFO.unpack_from(data, at)
        base = g.slot_offset(slot)
        if kind:
            out["slot info"].append((at, at + SLOT_INFO.size))
        if kind == KIND_SEGMENT:
            out["segment"].append((base, base + 8 * SEGMENT_ENTRIES))
            out["table entry"] += [(base + 8 * i, base + 8 * i + 8) for i in range(SEGMENT_ENTRIES)
                                   if data[base + 8 * i:base + 8 * i + 8] != bytes(8)]
        elif 1 <= kind <= CLASS_COUNT:
            size = CLASS_SIZES[kind - 1]
            bits = int.from_bytes(bitmap, "little")
            for index in range(SLOT_SIZE // size):
                if bits >> index & 1:
                    off = base + index * size
                    vlen, klen = RECORD_HEADER.unpack_from(data, off)[5:7]
                    out["record header"].append((off, off + KEY_OFFSET))
                    out["key"].append((off + KEY_OFFSET, off + KEY_OFFSET + klen))
                    out["value"].append((off + KEY_OFFSET + klen, off + KEY_OFFSET + klen + vlen))
    return {name: [(a, min(b, len(data))) for a, b in spans if a < min(b, len(data))]
            for name, spans in out.items()}


def damage(data: bytes, kind: str, rng: random.Random,
           spots: dict[str, list[tuple[int, int]]]) -> tuple[bytes, list[str]]:
    """A damaged copy of *data* and a description of what was done to it, and where.  Each
    blow picks a region (every region equally often), then a range in it."""
    buf = bytearray(data)
    done: list[str] = []

    def aim() -> tuple[str, int]:
        region = rng.choice(sorted(name for name, spans in spots.items() if spans))
        lo, hi = rng.choice(spots[region])
        return region, rng.randrange(lo, hi)

    kinds = ["flip", "zero", "truncate"] if kind == "mixed" else [kind]
    for what in kinds:
        if what == "flip":
            for _ in range(rng.choice([1, 1, 2, 3, 8])):
                region, at = aim()
                bit = rng.randrange(8)
                buf[at] ^= 1 << bit
                done.append(f"flip byte {at} bit {bit} ({region})")
        elif what == "zero":
            for _ in range(rng.choice([1, 1, 2, 3])):
                region, at = aim()
                length = rng.choice([1, 2, 4, 8, 16, 64, 512, 4096])
                buf[at:at + length] = bytes(len(buf[at:at + length]))
                done.append(f"zero {length} bytes at {at} ({region})")
        else:
            region, at = aim()
            if rng.random() >= 0.8:
                region, at = "anywhere", rng.randrange(len(buf))
            del buf[at:]
            done.append(f"truncate at {at} ({region})")
    return bytes(buf), done


def run_checker(directory: str, files: list[str], expected: dict[str, Any]) -> dict[str, Any]:
    """Run ``fault_child.py check`` over *files*; fail with the culprit if it dies or hangs."""
    expected_path = os.path.join(directory, "expected.json")
    with open(expected_path, "w") as f:
        json.dump(expected, f)
    command = child_command("check", {"files": files, "expected": expected_path})
    try:
        proc = subprocess.run(command, capture_output=True, env=child_env(), timeout=600)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # a loop that damage made endless
        stdout, stderr, code = exc.stdout or b"", exc.stderr or b"", None
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line]
    last_case = next((e["case"] for e in reversed(lines) if e["ev"] == "case"), None)
    assert code == 0, (
        f"the checker {'hung' if code is None else f'died with exit code {code}'} on case "
        f"{last_case} ({files[last_case] if last_case is not None else '-'}):\n{stderr.decode()[-3000:]}")
    assert lines and lines[-1]["ev"] == "done"
    done: dict[str, Any] = lines[-1]
    return done


def test_the_store_fills_every_class_and_the_regions_are_found(tmp_path: Any) -> None:
    """What the damage aims at is there: a record of every sub-slot class, every key's
    record, table entries for all of them, the directory and the slot info."""
    path, expected = populate(str(tmp_path), crashed=False)
    with open(path, "rb") as f:
        data = f.read()
    spots = regions(data)
    keys = {data[a:b].decode() for a, b in spots["key"]}
    assert keys == set(expected)
    assert len(spots["record header"]) == len(spots["value"]) == len(spots["table entry"]) == len(expected)
    classes = {class_for(b - a) for (a, _), (_, b) in zip(spots["record header"], spots["value"])}
    assert classes == set(range(CLASS_COUNT))
    assert spots["segment"] and spots["directory"] and len(spots["slot info"]) > CLASS_COUNT


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
    spots = regions(data)
    files, damages = [], []
    for case in range(CASES):
        damaged, done = damage(data, kind, rng, spots)
        path = os.path.join(directory, f"case{case}.mmapkv")
        with open(path, "wb") as f:
            f.write(damaged)
        files.append(path)
        damages.append(done)
    result = run_checker(directory, files, expected)
    shutil.rmtree(directory, ignore_errors=True)  # some 250 copies of a 700 KB file
    context = f"seed={seed} kind={kind} state={state}"
    assert result["wrong"] == [], (
        f"{context}: wrong data: {result['wrong'][:3]}; damage: "
        f"{[damages[w['case']] for w in result['wrong'][:3]]}")
    known = [f for f in result["foreign"] if known_bug(f["trace"])]
    foreign = [f for f in result["foreign"] if not known_bug(f["trace"])]
    assert foreign == [], (
        f"{context}: a non-mmapkv exception: {foreign[0]['trace']}\ndamage: {damages[foreign[0]['case']]}")
    assert result["invented_keys"] == [], (
        f"{context}: keys(), iteration or items() listed names never stored: {result['invented_keys'][:3]}; damage: "
        f"{[damages[k['case']] for k in result['invented_keys'][:3]]}")
    assert result["lost_by_writes"] == [], (
        f"{context}: creates lost keys that read back exactly: {result['lost_by_writes'][:3]}; damage: "
        f"{[damages[k['case']] for k in result['lost_by_writes'][:3]]}")
    assert set(result["create_refused"]) <= {"CorruptStoreError", "StoreFullError"}, (context, result["create_refused"])
    assert result["lost_by_compact"] == [], (
        f"{context}: compact lost keys that read back exactly: {result['lost_by_compact'][:3]}; damage: "
        f"{[damages[k['case']] for k in result['lost_by_compact'][:3]]}")
    assert set(result["compact_refused"]) <= {"CorruptStoreError"}, (context, result["compact_refused"])
    assert result["refused"] + result["opened"] == CASES
    assert set(result["errors"]) <= {"CorruptStoreError", "FormatVersionError", "KeyNotFoundError",
                                     "KeyExpiredError"}, (context, result["errors"])
    if kind == "truncate":  # a store shorter than its superblock says is never opened
        assert result["opened"] == 0
    write_report("fault_corrupt", {
        "corrupted files tried": CASES, "opened anyway": result["opened"],
        "refused at open": result["refused"], "reopened after the damage was read": result["reopened"],
        "reads exact": result["reads_exact"], "reads refused": result["reads_refused"],
        "reads tried": result["reads"], "wrong data": len(result["wrong"]),
        "errors other than the documented ones": len(result["foreign"]),
        "listings that named a key never stored": len(result["invented_keys"]),
        "creates refused after the damage was read": sum(result["create_refused"].values()),
        "creates that lost a key read exactly before": len(result["lost_by_writes"]),
        "compacted after the damage was read": result["compacted"],
        "compacts refused (CorruptStoreError)": sum(result["compact_refused"].values()),
        "compacts that lost a key read exactly before": len(result["lost_by_compact"])})
    if known:
        pytest.xfail(f"{context}: {len(known)} foreign exceptions from engine bugs that "
                     f"{sorted({known_bug(f['trace']) for f in known})} pin down; the first in case "
                     f"{known[0]['case']}, during {known[0]['during']}, damage {damages[known[0]['case']]}")


def random_non_store(rng: random.Random, case: int) -> bytes:
    """Bytes that are not an mmapkv store: random, text, or a near miss of the header."""
    size = rng.choice([0, 1, 7, 8, 9, 79, 80, 81, SUPERBLOCK.size - 1, SUPERBLOCK.size,
                       SUPERBLOCK.size + 1, PAGE_SIZE, rng.randrange(200_000)])
    body = rng.randbytes(size)
    style = case % 6
    if style == 1:  # text
        body = ("not a store\n" * (size // 12 + 1)).encode()[:size]
    elif style == 2:  # a truncated magic number
        body = MAGIC[:rng.randrange(1, 8)]
    elif style == 3:  # the magic number, then garbage
        body = MAGIC + body
    elif style == 4:  # the magic, a version that is not this one (1, 2, future), then garbage
        body = MAGIC + struct.pack("<I", rng.choice([1, 2, rng.randrange(VERSION + 1, 2 ** 32)])) + body
    elif style == 5:  # the magic and the current version with a zeroed or random superblock
        body = MAGIC + struct.pack("<I", VERSION) + (bytes(size) if rng.random() < 0.5 else body)
    return body


def test_non_stores_are_refused_and_left_untouched(tmp_path: Any) -> None:
    """Opening a file that is not a store raises CorruptStoreError (FormatVersionError for
    another version) and changes none of its bytes."""
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
        engine = store._engine
        assert engine is not None
        off = engine.record_offset(engine.find(b"abc", engine.fingerprint(b"abc")))
    with open(path, "r+b") as f:
        f.seek(off + KEY_OFFSET)
        assert f.read(3) == b"abc"
        f.seek(off + KEY_OFFSET)
        f.write(b"`")  # "abc" -> "`bc": still valid UTF-8, checksum now fails
    with mmapkv.Store(path) as store:
        with pytest.raises(mmapkv.CorruptStoreError, match="1 entry"):
            store.keys()  # found, dropped and reported: never listed under a wrong name
        assert store.keys() == [] and len(store) == 0 and store.verify() == []


def test_a_read_that_meets_a_damaged_value_drops_it_for_every_later_call(tmp_path: Any) -> None:
    """read() of an entry whose value fails its checksum raises CorruptStoreError once and
    drops the entry (recovery): then len, in and keys agree that it is gone, and verify is
    clean.  Without the drop, keys() raised again and len() went on counting it."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path, max_size=MAX_SIZE) as store:
        for i in range(5):
            store.create(f"k{i}", {"v": f"value number {i}"})
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(b"value number 1") + 3
        f.seek(at)
        f.write(bytes([data[at] ^ 0x20]))
    with mmapkv.Store(path) as store:
        with pytest.raises(mmapkv.CorruptStoreError, match="k1"):
            store.read("k1")
        assert len(store) == 4 and "k1" not in store
        assert sorted(store.keys()) == ["k0", "k2", "k3", "k4"] and store.verify() == []
        assert all(store.read(f"k{i}") == {"v": f"value number {i}"} for i in (0, 2, 3, 4))


@pytest.mark.parametrize("call", ["ttl", "replace", "expire", "persist"])
def test_a_damaged_expiry_is_never_read_or_kept(tmp_path: Any, call: str) -> None:
    """A bit flipped in a record's expiry fails its checksum for every call that reads
    the expiry: ``ttl()`` read it unchecked (a TTL of 100 s came back as two years), and
    ``replace()``, which keeps it, wrote it into the new record under a good checksum."""
    path, now = os.path.join(tmp_path, "s.mmapkv"), 1_700_000_000.0
    with mmapkv.Store(path, max_size=MAX_SIZE, clock=lambda: now) as store:
        for i in range(3):
            store.create(f"k{i}", {"v": i}, ttl=100)
        engine = store._engine
        assert engine is not None
        expiry_at = engine.record_offset(engine.find(b"k1", engine.fingerprint(b"k1"))) \
            + struct.calcsize(RECORD_HEADER.format[:1 + RECORD_FIELDS.index("expires_at")])
    with open(path, "r+b") as f:
        f.seek(expiry_at + 4)  # a bit of the float's exponent: about two years later
        byte = f.read(1)
        f.seek(expiry_at + 4)
        f.write(bytes([byte[0] ^ 0x02]))
    with mmapkv.Store(path, clock=lambda: now) as store:
        run = {"ttl": lambda: store.ttl("k1"), "replace": lambda: store.replace("k1", {"v": 9}),
               "expire": lambda: store.expire("k1", 5), "persist": lambda: store.persist("k1")}[call]
        with pytest.raises(mmapkv.CorruptStoreError, match="k1"):
            run()
        assert "k1" not in store and len(store) == 2 and store.verify() == []
        assert [store.ttl(f"k{i}") for i in (0, 2)] == [100, 100]


def small_store(tmp_path: Any, value: dict[str, Any]) -> tuple[str, int]:
    """A closed store holding *value* under "k"; returns its path and the record's slot."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path, max_size=MAX_SIZE) as store:
        store.create("k", value)
        engine = store._engine
        assert engine is not None
        slot = engine.slot_of(engine.record_offset(engine.find(b"k", engine.fingerprint(b"k"))))
    return path, slot


def assert_reads_exact_or_refused(path: str, value: dict[str, Any]) -> None:
    """read, in and keys each give *value* (or "k") or raise an MmapKVError."""
    with mmapkv.Store(path) as store:
        for call, want in ((lambda: store.read("k"), value), (lambda: "k" in store, True),
                           (store.keys, ["k"])):
            try:
                got = call()
            except mmapkv.MmapKVError:
                continue
            assert got == want


def test_a_directory_entry_past_the_file_is_caught(tmp_path: Any) -> None:
    """The directory (derived, trusted in a clean file) names slot 37 of an 8-slot file:
    the read must fail with an MmapKVError or, after recovery rebuilds the table, succeed."""
    path, _ = small_store(tmp_path, {"v": 1})
    with open(path, "r+b") as f:
        f.seek(GEOMETRY.dir_offset)
        f.write(struct.pack("<H", GEOMETRY.max_slots + 1))  # depth 0: the only entry
    assert_reads_exact_or_refused(path, {"v": 1})


def test_a_bitmap_bit_past_the_sub_slots_is_caught(tmp_path: Any) -> None:
    """A whole-slot record's slot info gets bitmap bit 127 set (one flipped bit): keys()
    must list "k" or raise an MmapKVError, not read 127 slots further on."""
    value = make_value("k", 1, 16384)
    path, slot = small_store(tmp_path, value)
    at = GEOMETRY.info_offset + SLOT_INFO.size * slot
    with open(path, "r+b") as f:
        f.seek(at)
        kind, _, used, _, _, bitmap = SLOT_INFO.unpack(f.read(SLOT_INFO.size))
        assert (kind, used, bitmap) == (CLASS_COUNT, 1, (1).to_bytes(16, "little"))
        f.seek(at + 8 + 15)
        f.write(b"\x80")
    assert_reads_exact_or_refused(path, value)


@pytest.mark.parametrize("kind", [KIND_SEGMENT, 1, 11], ids=["a segment's", "class 0's", "class 10's"])
def test_a_repair_gives_a_damaged_kind_byte_its_records_class(tmp_path: Any, kind: int) -> None:
    """A whole-slot record's kind byte damaged into a table segment's, or into a class
    whose size divides its place (0: every class's), before a crash: recovery took the
    byte's word for it, freed the slot or read it at the other class's boundaries, and
    the record was gone though the table still pointed at it."""
    value = make_value("k", 1, 16000)
    path, slot = small_store(tmp_path, value)
    with open(path, "r+b") as f:
        f.seek(GEOMETRY.info_offset + SLOT_INFO.size * slot)
        f.write(bytes([kind]))
        f.seek(SB_FLAGS)  # and not cleanly closed: the next open recovers
        f.write(bytes(4))
    with mmapkv.Store(path) as store:
        assert store.keys() == ["k"] and store.read("k") == value and store.verify() == []


@pytest.mark.parametrize("kind", [KIND_SEGMENT, 1, 11], ids=["a segment's", "class 0's", "class 10's"])
@pytest.mark.parametrize("stopped_in", ["_rebuild_table", "build"])
def test_a_repair_stopped_half_way_still_gives_a_damaged_kind_byte_its_class(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, kind: int, stopped_in: str) -> None:
    """As above, and the recovery that found the right class (from the old table) is
    interrupted once it has freed the spare slots (the old table's among them), or while
    it lays the new table over the old one: the kind it gave back was still only in
    memory, so the next recovery, finding no table to ask, took the damaged byte's word
    and the record was lost."""
    value = make_value("k", 1, 16000)
    path, slot = small_store(tmp_path, value)
    with open(path, "r+b") as f:
        f.seek(GEOMETRY.info_offset + SLOT_INFO.size * slot)
        f.write(bytes([kind]))
        f.seek(SB_FLAGS)  # and not cleanly closed: the next open recovers
        f.write(bytes(4))

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    owner = Engine if stopped_in == "_rebuild_table" else Table
    with monkeypatch.context() as patched:
        patched.setattr(owner, stopped_in, interrupted)
        with pytest.raises(KeyboardInterrupt):
            mmapkv.Store(path)  # (what it wrote through the map is in the file, as after a kill)
    with mmapkv.Store(path) as store:
        assert store.keys() == ["k"] and store.read("k") == value and store.verify() == []


def test_a_stray_bitmap_bit_never_lets_a_create_overwrite_another_record(tmp_path: Any) -> None:
    """Slot info is derived and may be damaged, but a write must stay inside the slot it
    was given: a record it never touched (here "whole", in the next slot) reads back."""
    path = os.path.join(tmp_path, "s.mmapkv")
    half, whole = make_value("half", 1, 9000), make_value("whole", 2, 16384)
    with mmapkv.Store(path, max_size=MAX_SIZE) as store:
        store.create("half", half)    # one of the two 10,240-byte sub-slots of its slot
        store.create("whole", whole)  # the next slot, whole
        engine = store._engine
        assert engine is not None
        offsets = [engine.record_offset(engine.find(k, engine.fingerprint(k)))
                   for k in (b"half", b"whole")]
    slot = (offsets[0] - GEOMETRY.slots_offset) // SLOT_SIZE
    assert offsets[1] == GEOMETRY.slot_offset(slot + 1)
    with open(path, "r+b") as f:  # bit 1 of the bitmap: both sub-slots taken, yet used is 1
        f.seek(GEOMETRY.info_offset + SLOT_INFO.size * slot + 8)
        f.write(b"\x03")
    new: dict[str, Any] | None = make_value("new", 3, 9000)
    with mmapkv.Store(path) as store:
        try:
            store.create("new", new)
        except mmapkv.MmapKVError:  # noticing the damage is fine
            new = None
        assert store.read("whole") == whole and store.read("half") == half
        assert new is None or store.read("new") == new


def test_a_forged_key_that_is_not_utf8_is_caught(tmp_path: Any) -> None:
    """A hostile file's record passes its checksum (seeded with its offset, so it must be
    forged where it lies) but its key is not UTF-8: keys() must not list it, or say so."""
    path, _ = small_store(tmp_path, {"v": 1})
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None and store.verify() == []  # a call under the lock first, as
        with engine.change():  # Store's own do: past Store's validation, what a forged file holds
            engine.room_for([64], [engine.fingerprint(b"\xff")])
            engine.insert(b"\xff", engine.fingerprint(b"\xff"), b'{"v":2}', 0, 0.0)
    assert_reads_exact_or_refused(path, {"v": 1})


def test_a_forged_key_longer_than_128_bytes_is_caught(tmp_path: Any) -> None:
    """A hostile file's record passes its checksum but its key is 200 bytes (its length is
    one byte of the header; no key of mmapkv's is over MAX_KEY_BYTES): without the length
    check, ``is_intact`` vouches for it, and keys() lists a key no call can name, and
    verify() finds nothing wrong.  keys() must say so and drop it; verify() must name it."""
    path, _ = small_store(tmp_path, {"v": 1})
    long_key = b"x" * 200
    assert len(long_key) > MAX_KEY_BYTES
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None and store.verify() == []  # a call under the lock first, as
        with engine.change():  # Store's own do: past Store's validation, what a forged file holds
            engine.room_for([KEY_OFFSET + len(long_key) + 7], [engine.fingerprint(long_key)])
            engine.insert(long_key, engine.fingerprint(long_key), b'{"v":2}', 0, 0.0)
        assert [problem for problem in store.verify() if "fails its checksum" in problem]
        with pytest.raises(mmapkv.CorruptStoreError, match="1 entry fails its checksum"):
            store.keys()
        assert store.keys() == ["k"] and list(iter(store)) == ["k"]
        assert store.read("k") == {"v": 1} and store.verify() == []


def test_checker_detects_wrong_data(tmp_path: Any) -> None:
    """The checker itself can fail: a store holding a different value is reported, by read,
    get and items(), in each of its passes (open, again, reopen)."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    result = run_checker(str(tmp_path), [path], {"k": {"v": 2}})
    assert sorted((w["when"], w["how"]) for w in result["wrong"]) == [
        (when, how) for when in ("again", "open", "reopen") for how in ("get", "items", "read")]
    assert result["invented_keys"] == [] and result["reopened"] == 1
    path = os.path.join(tmp_path, "t.mmapkv")  # (the checker's own creates are in the first)
    with mmapkv.Store(path) as store:  # and it names a key that was never stored, each way
        store.create("k", {"v": 1})
        store.create("stranger", {})
    invented = run_checker(str(tmp_path), [path], {"k": {"v": 1}})["invented_keys"]
    assert {(i["how"], tuple(i["keys"])) for i in invented} == {
        (how, ("stranger",)) for how in ("keys", "iter", "items")}
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_leftover_record_of_a_former_class_never_decides_a_slots_kind(tmp_path: Any) -> None:
    """``_find_lost_record_slots``: a slot keeps its kind if any intact LIVE record the old
    table points at agrees with it, even when a record of another class (left LIVE from
    the slot's former class by a lost write, and still indexed) comes first in the table.
    Here slot S holds "a" (160-byte class, sub-slot 1) and, forged in place, a LIVE
    320-byte-class record at 320 that the table points at.  Taking the leftover's word
    would read S at 320-byte boundaries and free "a"."""
    path = str(tmp_path / "r.mmapkv")
    value = {"v": "a"}
    data = b'{"v":"' + b"z" * 230 + b'"}'
    for attempt in range(200):  # a leftover key that comes before "a" in the table
        if os.path.exists(path):
            os.unlink(path)
        with mmapkv.Store(path) as store:
            engine = store._engine
            assert engine is not None
            store.create("a0", value)
            store.create("a", value)
            store.delete("a0")
            a_off = engine.record_offset(engine.find(b"a", engine.fingerprint(b"a")))
            slot, within = divmod(a_off - engine._slots_offset, SLOT_SIZE)
            assert within == CLASS_SIZES[0] and engine.slots.kind(slot) == 1
            key = f"left{attempt}".encode()
            assert CLASS_SIZES[class_for(KEY_OFFSET + len(key) + len(data))] == 320
            off = engine._slots_offset + slot * SLOT_SIZE + 320
            fp = engine.fingerprint(key)
            with engine.change():
                engine._write_at(off, key, data, 0, 0.0)  # past Store: what a lost free leaves
                engine.table.insert(fp, engine._entry(fp, off))
            kinds = bytearray(engine._mm[engine.geometry.info_offset:
                                         engine.geometry.info_offset + 24 * engine.slot_count:24])
            order = [o for o in engine._old_table_offsets(kinds) if o in (a_off, off)]
        if order == [off, a_off]:
            break
    else:
        raise AssertionError("no key came before 'a' in the table")
    with open(path, "r+b") as f:  # a crash: the next open recovers
        f.seek(SB_FLAGS)
        f.write(bytes(4))
    with mmapkv.Store(path) as store:
        assert store.read("a") == value


def _layout_damage(data: bytes, kind: str) -> tuple[int, bytes]:
    """(offset, bytes) of one damage to the directory or slot info of a store built by
    ``test_layout_damage_in_a_clean_file_is_recovered_before_any_write``."""
    from mmapkv.format import SLOT_INFO
    g = Geometry(8 << 20)
    info = [SLOT_INFO.unpack_from(data, g.info_offset + 24 * s) for s in range(64)]
    record_slot = next(s for s, i in enumerate(info) if 1 <= i[0] <= CLASS_COUNT and i[2] > 20)
    depth = struct.unpack_from("<I", data, 84)[0]
    directory = struct.unpack_from(f"<{1 << depth}H", data, g.dir_offset)
    pool_head = struct.unpack_from("<I", data, 68)[0] - 1
    at = g.info_offset + 24 * record_slot
    return {
        "directory-entry-names-a-record-slot": (g.dir_offset, struct.pack("<H", record_slot)),
        "directory-entry-names-another-segment": (g.dir_offset + 2, struct.pack("<H", directory[0])),
        "pool-link-to-a-record-slot": (g.info_offset + 24 * pool_head + 6, struct.pack("<H", record_slot + 1)),
        "used-count-low": (at + 2, struct.pack("<H", 1)),
        "kind-flipped": (at, bytes([info[record_slot][0] ^ 2])),
        "link-past-the-slot-info": (at + 6, struct.pack("<H", 60_000)),
        "link-to-itself": (at + 6, struct.pack("<H", record_slot + 1)),
        "segment-depth-flipped": (g.info_offset + 24 * directory[0] + 1, bytes([info[directory[0]][1] ^ 4])),
    }[kind]


@pytest.mark.parametrize("kind", ["directory-entry-names-a-record-slot", "directory-entry-names-another-segment",
                                  "pool-link-to-a-record-slot", "used-count-low", "kind-flipped",
                                  "link-past-the-slot-info", "link-to-itself", "segment-depth-flipped"])
def test_layout_damage_in_a_clean_file_is_recovered_before_any_write(tmp_path: Any, kind: str) -> None:
    """A review: one field of the directory or slot info damaged in a cleanly closed file
    was trusted by the allocator and the table (nothing checked them until a recovery),
    so creates overwrote live records (127 keys lost to one pool link), reads missed keys
    with no error, and some calls raised AssertionError or struct.error, or hung.  A clean
    close now records a checksum of both; an open that finds the directory's wrong, or the
    first call under the lock that finds the slot info's wrong, recovers first."""
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path, max_size=8 << 20) as store:
        for i in range(2500):
            store.create(f"k{i}", {"i": i})
        for i in range(4):
            store.create(f"big{i}", {"p": "x" * 16_000})
        for i in range(4):
            store.delete(f"big{i}")  # four slots on the pool
        for i in range(0, 2500, 7):
            store.delete(f"k{i}")
    kept = {f"k{i}": {"i": i} for i in range(2500) if i % 7}
    with open(path, "r+b") as f:
        offset, damage = _layout_damage(f.read(), kind)
        f.seek(offset)
        f.write(damage)
    with mmapkv.Store(path) as store:
        engine = store._engine
        assert engine is not None
        if kind.startswith("directory"):  # checked at the open
            assert not engine.was_clean
        else:  # checked by the first call that takes the lock (a get without it reads none)
            assert engine.was_clean and engine.info_to_check
        assert {key: store.get(key) for key in kept} == kept
        store.update({f"n{i}": {"n": i} for i in range(300)})
        for i in range(6):
            store.create(f"w{i}", {"p": "y" * (250 * i + 100) * (1 + 10 * (i == 5))})
        store.delete("k1")
        del kept["k1"]
    with mmapkv.Store(path) as store:
        assert {key: store.get(key) for key in kept} == kept and len(store) == len(kept) + 306
        assert store.verify() == []


def test_a_full_store_whose_segment_kind_says_records_recovers(tmp_path: Any) -> None:
    """A review: a store at its ceiling, crashed, whose one table segment's kind byte said
    "record class": recovery found no free slot for the new table and every open raised
    IndexError ("pop from empty list"), forever.  A slot that holds no intact record is a
    table's, and the table is built there; text that reads "LIVE" or "PEND" (a value's,
    or a freed record's leftovers, here in the segment's unused tail, one copy at a unit
    boundary) does not make it a record slot (the review of that fix)."""
    ceiling = Geometry.smallest_max_size()
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path, max_size=ceiling) as store:
        n = 0
        with pytest.raises(mmapkv.StoreFullError):
            while True:
                store.create(f"k{n}", {"i": n})
                n += 1
    with open(path, "r+b") as f:
        f.seek(Geometry(ceiling).info_offset)  # slot 0's kind: the table's first segment
        f.write(bytes([1]))
        f.seek(Geometry(ceiling).slot_offset(0) + SLOT_SIZE - 1024)  # past its 1,792 entries
        f.write(b'PENDING DELIVERED {"status":"PENDING"}' * 8)
        f.seek(SB_FLAGS)  # and not closed cleanly
        f.write(bytes(4))
    for _ in range(2):
        with mmapkv.Store(path) as store:
            assert len(store) == n and all(store.read(f"k{i}") == {"i": i} for i in range(n))
            assert store.verify() == []


def test_an_open_reads_no_slot_info_and_the_first_locked_call_checks_it_once(tmp_path: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot info is 1.3 MiB at the 1 GiB ceiling, read through a map with no readahead:
    checked at every open, a cold open of a full store took 20 ms (a review).  The open
    checks the directory; the first call under the lock the slot info, once; a read
    without the lock none."""
    from mmapkv.engine import Engine
    path = str(tmp_path / "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    calls: list[int] = []
    real = Engine._slot_info_checksum
    monkeypatch.setattr(Engine, "_slot_info_checksum", lambda self: calls.append(1) or real(self))
    with mmapkv.Store(path) as store:
        assert store.get("k") == {"v": 1} and "k" in store and calls == []
        assert len(store) == 1 and store.keys() == ["k"] and calls == [1]
        store.create("k2", {"v": 2})
    assert calls == [1, 1]  # and the close, which writes the checksum anew
