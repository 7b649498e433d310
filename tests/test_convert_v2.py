"""A version-2 file is never lost: ``Store`` refuses it with ``FormatVersionError`` naming
``mmapkv compact``, and that command converts it, here on a real version-2 store.

``tests/fixtures/v2-store.mmapkv.gz`` is a store written by the version-2 code (688,128
bytes, ``max_size`` = 4 × 172,032) with a fake clock at unix time 1,700,000,000.  It holds
the keys of ``EXPECTED``, plus "ttl-past" (expired at 1,700,000,010) and "deleted" (deleted).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xxhash import xxh3_64_intdigest

import mmapkv
from conftest import held_by_another_process
from mmapkv import CorruptStoreError, FormatVersionError, StoreLockedError, cli, legacy, stats, transfer
from mmapkv.format import CODEC_STDLIB, MAGIC, STATE_LIVE, VERSION

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v2-store.mmapkv.gz"
FIXTURE_SIZE = 688_128
FIXTURE_MAX_SIZE = 4 * 172_032
CREATED = 1_700_000_000

EXPECTED: dict[str, dict[str, Any]] = {
    "plain": {"name": "Ada", "langs": ["en", "fr"]},
    "ttl-far": {"n": 1},
    "big-int": {"big": 2**70, "neg": -2**80},
    "unicode:ключ🔑": {"text": "Zoë ключ 🔑"},
    "max-value": {"pad": "x" * (16_384 - 10)},
    **{f"batch:{i}": {"i": i} for i in range(12)},
}
TTL_FAR_EXPIRES = float(CREATED + 3_000_000_000)

# Version 2's slot header (docs/format.md, "Version 2"): state .. reserved, key at 40, value at 168.
V2_SLOT = struct.Struct("<IIQQdIBBH")
V2_SLOTS_AT = 8_192   # 4,096 + 8 x 128 table positions, rounded up to a page
V2_STRIDE = 20_480


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def v2_path(tmp_path: Any) -> Iterator[str]:
    """A fresh copy of the fixture, gunzipped, in a directory of its own."""
    path = str(tmp_path / "old.mmapkv")
    with open(path, "wb") as f:
        f.write(gzip.decompress(FIXTURE.read_bytes()))
    yield path
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)


def convert(path: str, capsys: Any) -> tuple[int, str, str]:
    code = cli.main(["compact", "--path", path])
    out, err = capsys.readouterr()
    return code, out, err


def dumped(path: str) -> dict[str, tuple[str, Any]]:
    """key: (value's JSON text exactly as stored, expires_at) of every entry, by dump."""
    lines: dict[str, tuple[str, Any]] = {}
    with mmapkv.Store(path) as store:
        out = io.StringIO()
        transfer.dump(store, out)
    for line in out.getvalue().splitlines():
        entry = transfer.loads(line)
        text = line.split('"value":', 1)[1].rsplit(',"expires_at":', 1)[0]
        lines[entry["key"]] = (text, entry["expires_at"])
    return lines


# --------------------------------------------------------------------- the fixture

def test_fixture_is_the_documented_version_2_store(v2_path: str) -> None:
    """The fixture holds what the module docstring says: a version-2 superblock, the
    ceiling, every key with its exact JSON, flags and absolute expiry, and no "deleted"."""
    assert os.path.getsize(v2_path) == FIXTURE_SIZE
    with open(v2_path, "rb") as f:
        head = f.read(16)
    assert head[:8] == MAGIC and struct.unpack_from("<I", head, 8)[0] == 2
    assert legacy.is_v2(v2_path)
    max_size, entries, damaged = legacy.read_v2(v2_path)
    assert damaged == 0
    assert max_size == FIXTURE_MAX_SIZE
    by_key = {e.key.decode(): e for e in entries}
    assert set(by_key) == set(EXPECTED) | {"ttl-past"}
    assert by_key["ttl-far"].expires_at == TTL_FAR_EXPIRES
    assert by_key["ttl-past"].expires_at == CREATED + 10.0
    assert by_key["big-int"].flags == CODEC_STDLIB
    assert len(by_key["max-value"].data) == 16_384
    assert all(e.expires_at == 0.0 for k, e in by_key.items() if not k.startswith("ttl-"))


# --------------------------------------------------------------------- refusing it

def test_opening_it_names_the_command_and_changes_nothing(v2_path: str) -> None:
    """Store() raises FormatVersionError (a CorruptStoreError, an OSError) whose message names
    `mmapkv compact --path FILE`; the file is byte-identical afterwards, every time."""
    before = sha256(v2_path)
    mode = stat.S_IMODE(os.stat(v2_path).st_mode)
    for kwargs in ({}, {"max_size": FIXTURE_MAX_SIZE}):
        with pytest.raises(FormatVersionError) as info:
            mmapkv.Store(v2_path, **kwargs)
        message = str(info.value)
        assert isinstance(info.value, CorruptStoreError) and isinstance(info.value, OSError)
        assert "format version 2" in message and f"reads version {VERSION}" in message
        assert f"`mmapkv compact --path {v2_path}`" in message
    assert sha256(v2_path) == before
    assert stat.S_IMODE(os.stat(v2_path).st_mode) == mode
    assert os.listdir(os.path.dirname(v2_path)) == ["old.mmapkv"]


def test_stats_on_it_names_the_command(v2_path: str, capsys: Any) -> None:
    """python -m mmapkv.stats, the first thing a user may run, says the same, exit 4."""
    before = sha256(v2_path)
    assert stats.main([v2_path]) == stats.EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"`mmapkv compact --path {v2_path}`" in err
    assert sha256(v2_path) == before


# --------------------------------------------------------------------- converting it

def test_compact_converts_it(v2_path: str, capsys: Any) -> None:
    """`mmapkv compact --path FILE` exits 0 with a "converted" line; the file is a version-3
    store with the same ceiling and mode, verify() finds nothing, and every key but the
    expired and the deleted reads back equal, with its exact JSON and absolute expiry."""
    os.chmod(v2_path, 0o640)
    _, old, _ = legacy.read_v2(v2_path)
    old_text = {e.key.decode(): e.data.decode() for e in old}
    code, out, err = convert(v2_path, capsys)
    assert (code, err) == (0, "")
    new_size = os.path.getsize(v2_path)
    assert out == (f"converted {v2_path} from format version 2 to {VERSION}: "
                   f"{FIXTURE_SIZE:,} -> {new_size:,} bytes, {len(EXPECTED)} keys\n")
    assert not legacy.is_v2(v2_path)
    assert stat.S_IMODE(os.stat(v2_path).st_mode) == 0o640
    assert os.listdir(os.path.dirname(v2_path)) == ["old.mmapkv"]  # no temporary file left
    with mmapkv.Store(v2_path) as store:
        assert store.verify() == []
        assert store.stats().max_size == FIXTURE_MAX_SIZE
        assert store.stats().format_version == VERSION
        assert sorted(store.keys()) == sorted(EXPECTED)
        for key, value in EXPECTED.items():
            assert store.read(key) == value, key
        # exact ints, not floats: 2**70 and -2**80 are powers of two, equal to their floats
        big = store.read("big-int")
        assert (type(big["big"]), type(big["neg"])) == (int, int)
        assert "ttl-past" not in store and "deleted" not in store
    entries = dumped(v2_path)
    assert entries["ttl-far"][1] == TTL_FAR_EXPIRES  # absolute, to the last bit
    assert all(expires is None for key, (_, expires) in entries.items() if key != "ttl-far")
    assert {key: text for key, (text, _) in entries.items()} == \
        {key: text for key, text in old_text.items() if key in EXPECTED}
    assert cli.main(["verify", "--path", v2_path]) == 0


def test_conversion_through_a_symbolic_link_converts_its_target(v2_path: str, capsys: Any) -> None:
    """The link stays a link, naming the converted file (it used to be replaced by it)."""
    link = os.path.join(os.path.dirname(v2_path), "link.mmapkv")
    os.symlink("old.mmapkv", link)
    code, out, err = convert(link, capsys)
    assert (code, err) == (0, "") and out.startswith(f"converted {link} from format version 2")
    assert os.readlink(link) == "old.mmapkv" and not legacy.is_v2(v2_path)
    assert sorted(os.listdir(os.path.dirname(v2_path))) == ["link.mmapkv", "old.mmapkv"]
    with mmapkv.Store(v2_path) as store:
        assert sorted(store.keys()) == sorted(EXPECTED)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root gives files away")
def test_conversion_keeps_the_owner_and_group(v2_path: str, capsys: Any) -> None:
    os.chown(v2_path, 65534, 65534)  # nobody, nogroup
    assert convert(v2_path, capsys)[0] == 0 and not legacy.is_v2(v2_path)
    after = os.stat(v2_path)
    assert (after.st_uid, after.st_gid) == (65534, 65534)


def test_converted_file_compacts_as_version_3(v2_path: str, capsys: Any) -> None:
    """Run again, the command compacts the (now version-3) file and keeps every key."""
    assert convert(v2_path, capsys)[0] == 0
    code, out, _ = convert(v2_path, capsys)
    assert code == 0 and out.startswith(f"compacted {v2_path}: ") and f"{len(EXPECTED)} keys" in out
    with mmapkv.Store(v2_path) as store:
        assert sorted(store.keys()) == sorted(EXPECTED)


@pytest.fixture
def held(v2_path: str) -> Iterator[str]:
    """The fixture copy, locked by another process (as a version-2 mmapkv holding it
    would: an exclusive flock) until the test ends."""
    with held_by_another_process(f"""
        import portalocker
        f = open({v2_path!r}, "rb")
        portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
    """):
        yield v2_path


def test_conversion_of_a_held_file_is_refused(held: str, capsys: Any) -> None:
    """While another process holds the version-2 file, the command exits 4 saying it is in
    use (convert_v2: StoreLockedError), and the file is byte-identical, with nothing left
    beside it."""
    before = sha256(held)
    code, out, err = convert(held, capsys)
    assert (code, out) == (cli.EXIT_UNAVAILABLE, "")
    assert err.count("\n") == 1 and held in err and "in use" in err
    with pytest.raises(StoreLockedError):
        transfer.convert_v2(held)
    assert sha256(held) == before
    assert os.listdir(os.path.dirname(held)) == ["old.mmapkv"]


def test_conversion_after_the_holder_let_go(v2_path: str, capsys: Any) -> None:
    """The refusal leaves nothing in the way: once the lock is free the command converts."""
    code = f"import portalocker; f = open({v2_path!r}, 'rb'); portalocker.lock(f, portalocker.LOCK_EX)"
    subprocess.run([sys.executable, "-c", code], check=True)  # held, then let go as it exits
    assert convert(v2_path, capsys)[0] == 0
    with mmapkv.Store(v2_path) as store:
        assert len(store) == len(EXPECTED)


def test_a_damaged_entry_is_dropped_alone_and_said_so(v2_path: str, capsys: Any) -> None:
    """A flipped byte in one entry's value fails its checksum: conversion (and a dump)
    leaves that entry out, as version 2's own recovery would have, says so on stderr (it
    was silent), and keeps every other one intact."""
    with open(v2_path, "r+b") as f:
        data = f.read()
        at = data.index(b'{"name":"Ada"') + len(b'{"name":"')
        f.seek(at)
        f.write(b"B")
    assert cli.main(["dump", "--path", v2_path]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == len(EXPECTED) - 1 and '"plain"' not in out
    assert err == "mmapkv: warning: left out: 1 entry of the version-2 file that fails its checksum\n"
    code, out, err = convert(v2_path, capsys)
    assert code == 0 and f"{len(EXPECTED) - 1} keys" in out
    assert err == "mmapkv: warning: left out: 1 entry of the version-2 file that fails its checksum\n"
    with mmapkv.Store(v2_path) as store:
        assert store.verify() == []
        assert sorted(store.keys()) == sorted(set(EXPECTED) - {"plain"})
        for key, value in EXPECTED.items():
            if key != "plain":
                assert store.read(key) == value, key


# --------------------------------------------------------------------- files that only look like it

def _mimics(tmp_path: Any) -> list[tuple[str, str]]:
    """Files whose first 12 bytes say "version 2" and whose rest is no version-2 store:
    version-3 stores with one bit of their version field flipped (closed cleanly, and
    left open: the checksum is then no help), and another program's file."""
    made = []
    for clean in (True, False):
        path = str(tmp_path / f"v3-{'clean' if clean else 'open'}.mmapkv")
        with mmapkv.Store(path) as store:
            store.batch_create({f"k{i}": {"i": i} for i in range(100)})
        with open(path, "r+b") as f:
            flags = struct.unpack_from("<I", f.read(16), 12)[0]
            f.seek(8)
            f.write(struct.pack("<II", 2, flags if clean else flags & ~1))
        made.append((path, "v3"))
    junk = str(tmp_path / "junk.bin")
    with open(junk, "wb") as f:
        f.write(MAGIC + struct.pack("<I", 2) + os.urandom(300_000))
    made.append((junk, "junk"))
    return made


def test_a_file_that_only_starts_like_version_2_is_never_converted(tmp_path: Any, capsys: Any) -> None:
    """Opening such a file says it is damaged (not "convert it with compact"), and compact
    and dump refuse it and leave it byte for byte: compact converted each into an empty
    store, losing the version-3 store's keys and overwriting a file not ours."""
    for path, kind in _mimics(tmp_path):
        before = sha256(path)
        with pytest.raises(CorruptStoreError) as info:
            mmapkv.Store(path)
        assert "not a version-2 store" in str(info.value) and "compact" not in str(info.value)
        assert cli.main(["compact", "--path", path]) == cli.EXIT_UNAVAILABLE
        assert cli.main(["dump", "--path", path]) == cli.EXIT_UNAVAILABLE
        out, err = capsys.readouterr()
        assert out == "" and err.count("not a version-2") == 2, err
        assert sha256(path) == before and sorted(os.listdir(tmp_path)) == ["junk.bin", "v3-clean.mmapkv",
                                                                           "v3-open.mmapkv"]
        if kind == "v3":  # the version field mended, every key is there
            with open(path, "r+b") as f:
                f.seek(8)
                f.write(struct.pack("<I", VERSION))
            with mmapkv.Store(path) as store:
                assert len(store) == 100 and store.read("k99") == {"i": 99}


@pytest.mark.parametrize("length", [8, 9, 11])
def test_a_file_of_the_magic_number_and_less_than_a_version_is_refused(tmp_path: Any, capsys: Any,
                                                                      length: int) -> None:
    """8 to 11 bytes, mmapkv's magic number first: ``dump`` and ``compact`` read a version
    field past the end (an internal error, exit 70); they say what ``Store`` says now."""
    path = str(tmp_path / "short.bin")
    with open(path, "wb") as f:
        f.write((MAGIC + struct.pack("<I", 2))[:length])
    assert not legacy.is_v2(path)
    assert cli.main(["compact", "--path", path]) == cli.EXIT_UNAVAILABLE
    assert cli.main(["dump", "--path", path]) == cli.EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "" and err.count(f"only {length} bytes long") == 2, err
    assert os.listdir(tmp_path) == ["short.bin"] and os.path.getsize(path) == length


def test_a_conversion_removes_what_a_killed_one_left(v2_path: str, capsys: Any) -> None:
    """A conversion killed part way leaves its temporary file; the next one, which
    succeeds, removes it as ``compact`` does (it stayed until a compact of version 3)."""
    from mmapkv.engine import create_file
    from mmapkv.format import Geometry
    from mmapkv.tempfiles import temporary_path

    left = temporary_path(os.path.realpath(v2_path), "compact")
    create_file(left, Geometry.smallest_max_size(), in_place=True)  # nobody holds it: abandoned
    assert convert(v2_path, capsys)[0] == 0
    assert os.listdir(os.path.dirname(v2_path)) == [os.path.basename(v2_path)]


# --------------------------------------------------------------------- engine bugs

def v2_slot(key: bytes, data: bytes, seq: int) -> bytes:
    """A LIVE version-2 slot's bytes [0, 168 + len(data)), as version 2 wrote them."""
    body = V2_SLOT.pack(0, 0, 0, seq, 0.0, len(data), len(key), 0, 0)[16:] + key.ljust(128, b"\0") + data
    return struct.pack("<IIQ", STATE_LIVE, 0, xxh3_64_intdigest(body)) + body


def test_a_full_version_2_store_converts(v2_path: str, capsys: Any) -> None:
    """The fixture with every one of its 33 slots holding a 16 KiB value (written as
    version 2 writes a slot: the writer reproduces the fixture's own slot 0 exactly)."""
    with open(v2_path, "r+b") as f:
        data = bytearray(f.read())
        state, _, _, seq, _, vlen, klen, _, _ = V2_SLOT.unpack_from(data, V2_SLOTS_AT)
        assert state == STATE_LIVE and data[V2_SLOTS_AT + 40:V2_SLOTS_AT + 40 + klen] == b"plain"
        original = bytes(data[V2_SLOTS_AT:V2_SLOTS_AT + 168 + vlen])
        assert v2_slot(b"plain", original[168:], seq) == original
        value = b'{"pad":"' + b"z" * (16_384 - 10) + b'"}'
        for n in range((FIXTURE_SIZE - V2_SLOTS_AT) // V2_STRIDE):
            slot = v2_slot(f"full:{n}".encode(), value, 100 + n)
            data[V2_SLOTS_AT + n * V2_STRIDE:V2_SLOTS_AT + n * V2_STRIDE + len(slot)] = slot
        f.seek(0)
        f.write(data)
    assert len(legacy.read_v2(v2_path)[1]) == 33
    code, _, err = convert(v2_path, capsys)
    assert code == 0, err
    with mmapkv.Store(v2_path) as store:
        assert len(store) == 33


def test_the_command_a_version_1_refusal_names_does_not_send_the_user_back(v2_path: str,
                                                                           capsys: Any) -> None:
    with open(v2_path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 1))
    with pytest.raises(FormatVersionError) as info:
        mmapkv.Store(v2_path)
    assert "`mmapkv compact" not in str(info.value)  # it would only refuse again
    code, _, err = convert(v2_path, capsys)
    assert code != 0 and "mmapkv compact" not in err


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("call", ["dump_v2", "convert_v2"])
def test_an_interrupt_where_a_v2_file_is_let_go_leaves_no_descriptor_and_no_lock(
        v2_path: str, call: str) -> None:
    """``dump_v2`` and ``convert_v2`` held the version-2 file by its number and closed it in
    a ``finally``: an interrupt there kept the descriptor, and its lock, for the rest of the
    process, so a later convert in it was "in use by another process" (a review).  Each is
    interrupted at its last points; then no descriptor is left and the conversion runs."""
    from interrupts import interrupt_the_last
    original = Path(v2_path).read_bytes()

    def fresh() -> None:
        for name in os.listdir(os.path.dirname(v2_path)):
            os.unlink(os.path.join(os.path.dirname(v2_path), name))
        Path(v2_path).write_bytes(original)

    def run() -> None:
        if call == "dump_v2":
            transfer.dump_v2(v2_path, io.StringIO())
        else:
            transfer.convert_v2(v2_path)

    def check(where: str) -> None:
        if struct.unpack_from("<I", Path(v2_path).read_bytes(), 8)[0] == 2:
            transfer.convert_v2(v2_path)  # StoreLockedError if a lock was left
        mmapkv.Store(v2_path).close()  # (converted by the interrupted call, or just now)

    assert interrupt_the_last(run, fresh, 24, check) == 24
