"""``mmapkv.stats``: the read-only report, its JSON fields, and its refusals."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv import cli, codec, stats
from mmapkv.format import FINGERPRINT_SHIFT, PAGE_SIZE, SLOT_HEADER, SUPERBLOCK, Geometry

SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4  # a 128-position table: collisions happen


def digest(path: str) -> tuple[str, int]:
    """The file's bytes (hashed) and its modification time: both must stay as they were."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


@pytest.fixture
def held(tmp_path: Any) -> Iterator[str]:
    """The path of a store that another process holds open until the test ends."""
    path = str(tmp_path / "held.mmapkv")
    code = textwrap.dedent(f"""
        import sys, mmapkv
        store = mmapkv.Store({path!r})
        print("ready", flush=True)
        sys.stdin.read()
        store.close()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield path
    finally:
        child.communicate("")
        assert child.returncode == 0


def populated(path: str, clock: Any) -> dict[str, Any]:
    """A store with live, expired, TTL and deleted entries; returns what it should report."""
    start = clock.now
    store = mmapkv.Store(path, max_size=SMALL_MAX_SIZE, clock=clock)
    values = {f"key{i}": {"i": i, "pad": "x" * (i * 37)} for i in range(20)}
    for i, (key, value) in enumerate(values.items()):
        ttl = 10 if i % 5 == 0 else (1000 + i if i % 5 == 1 else None)
        store.create(key, value, ttl=ttl)
    for key in ("key2", "key3", "key4"):
        store.delete(key)
    store.close()
    clock.advance(11)  # key0, key5, key10, key15 (ttl 10) have expired, unreclaimed
    live = {k: v for i, (k, v) in enumerate(values.items()) if i % 5 != 0 and i not in (2, 3, 4)}
    sizes = sorted(len(codec.encode(v)[0]) for v in live.values())
    ttl_keys = [i for i in range(20) if i % 5 == 1]
    return {"live": len(live), "expired": 4, "deleted": 3, "high_water": 20, "sizes": sizes,
            "ttl": len(ttl_keys), "next_expiry": start + 1000 + 1}


def test_collect_counts_every_slot(store_path: str, clock: Any) -> None:
    want = populated(store_path, clock)
    r = stats.collect(store_path, now=clock.now)
    assert r["path"] == os.path.abspath(store_path)
    assert r["format_version"] == 2 and r["clean_close"] is True
    assert (r["live_keys"], r["expired_keys"], r["deleted_slots"]) == (want["live"], want["expired"], want["deleted"])
    assert r["high_water"] == want["high_water"]
    assert r["free_slots"] == r["capacity"] - want["high_water"]
    assert r["live_keys"] + r["expired_keys"] + r["free_slots"] + r["deleted_slots"] + \
        r["pending_slots"] == r["capacity"]
    assert r["max_size"] == SMALL_MAX_SIZE and r["file_size"] == os.path.getsize(store_path)
    assert r["file_used_percent"] == round(100 * r["file_size"] / SMALL_MAX_SIZE, 2)
    assert r["capacity"] == Geometry(SMALL_MAX_SIZE).slot_count(r["file_size"])
    assert r["keys_with_ttl"] == want["ttl"] and r["next_expiry"] == want["next_expiry"]
    sizes = want["sizes"]
    assert (r["value_bytes_min"], r["value_bytes_max"]) == (sizes[0], sizes[-1])
    assert r["value_bytes_median"] == sizes[(len(sizes) - 1) // 2]
    assert sum(b["count"] for b in r["value_histogram"]) == want["live"]
    for bucket in r["value_histogram"]:
        assert bucket["count"] == sum(bucket["min"] <= s <= bucket["max"] for s in sizes)


def test_probe_lengths_come_from_the_table_on_disk(store_path: str, clock: Any) -> None:
    populated(store_path, clock)
    g = Geometry(SMALL_MAX_SIZE)
    with open(store_path, "rb") as f:  # read the table from the documented layout, by hand
        f.seek(PAGE_SIZE)
        raw = f.read(8 * g.table_capacity)
    entries = [(i, int.from_bytes(raw[8 * i:8 * i + 8], "little")) for i in range(g.table_capacity)]
    probes = sorted(((i - (e >> FINGERPRINT_SHIFT)) % g.table_capacity) + 1 for i, e in entries if e)
    r = stats.collect(store_path, now=clock.now)
    assert r["table_entries"] == len(probes) == 17  # 20 created - 3 deleted; expired still indexed
    assert r["probe_max"] == probes[-1] and r["probe_mean"] == round(sum(probes) / len(probes), 3)
    assert r["load_factor"] == len(probes) / g.table_capacity
    for bucket in r["probe_histogram"]:
        assert bucket["count"] == sum(bucket["min"] <= p <= bucket["max"] for p in probes)
    assert sum(b["count"] for b in r["probe_histogram"]) == len(probes)
    assert [(b["min"], b["max"]) for b in r["probe_histogram"]][:3] == [(1, 1), (2, 2), (3, 4)][:len(r["probe_histogram"])]


def test_empty_store_has_nulls_not_errors(store_path: str) -> None:
    mmapkv.Store(store_path).close()
    r = stats.collect(store_path)
    assert r["live_keys"] == 0 and r["probe_mean"] is None and r["probe_max"] is None
    assert r["value_bytes_median"] is None and r["next_expiry"] is None
    assert r["probe_histogram"] == [] and r["value_histogram"] == []
    assert "no live keys" in stats.render(r)


def test_reading_changes_no_byte(store_path: str, clock: Any, capsys: Any) -> None:
    populated(store_path, clock)
    before = digest(store_path)
    assert stats.main([store_path]) == 0
    assert stats.main([store_path, "--json"]) == 0
    stats.collect(store_path)
    assert digest(store_path) == before


def test_json_fields_are_the_documented_ones(store_path: str, capsys: Any) -> None:
    with mmapkv.Store(store_path) as store:
        store.create("a", {"x": 1}, ttl=60)
    assert stats.main([store_path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    documented = set(re.findall(r"^``(\w+)``\s", stats.__doc__ or "", re.M))
    assert set(report) == documented
    assert report["live_keys"] == 1 and report["keys_with_ttl"] == 1


def test_human_report_names_each_figure(store_path: str, clock: Any, capsys: Any) -> None:
    clock.now = time.time() - 11  # main() judges expiry by the real clock
    populated(store_path, clock)
    assert stats.main([store_path]) == 0
    out = capsys.readouterr().out
    for label in ("path", "format version", "last close", "file size", "slot size", "capacity",
                  "live keys", "expired keys", "free slots", "load factor", "probe length",
                  "value size", "keys with a TTL"):
        assert re.search(rf"^{label}\s", out, re.M), label
    assert "% used" in out and "next expiry" in out and os.path.abspath(store_path) in out


def test_store_held_by_another_process(held: str, capsys: Any) -> None:
    before = digest(held)
    assert stats.main([held]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("python -m mmapkv.stats: error: ") and held in err and "in use" in err
    assert digest(held) == before


@pytest.mark.parametrize("kind", ["missing", "not a store", "empty", "directory"])
def test_unavailable_paths(tmp_path: Any, kind: str, capsys: Any) -> None:
    path = str(tmp_path / "x.mmapkv")
    if kind == "not a store":
        with open(path, "wb") as f:
            f.write(b"hello, not a store\n" * 500)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "directory":
        os.mkdir(path)
    before = digest(path) if kind in ("not a store", "empty") else None
    assert stats.main([path]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err and "Traceback" not in err
    if before is not None:
        assert digest(path) == before
    if kind == "missing":
        assert not os.path.exists(path)  # reading never creates


def test_crashed_store_reports_unclean_close_without_recovering(store_path: str) -> None:
    code = f"""if True:
        import os, mmapkv
        store = mmapkv.Store({store_path!r})
        for i in range(5):
            store.create(f"k{{i}}", {{"i": i}})
        os._exit(0)  # no close: the superblock stays dirty
    """
    subprocess.run([sys.executable, "-c", code], check=True)
    before = digest(store_path)
    r = stats.collect(store_path)
    assert r["clean_close"] is False and r["live_keys"] == 5
    assert "NOT clean" in stats.render(r)
    assert digest(store_path) == before


def test_default_path(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert stats.main([]) == 4  # nothing there yet, and nothing created
    assert mmapkv.default_path() in capsys.readouterr().err
    assert not os.path.exists(mmapkv.default_path())
    mmapkv.Store(mmapkv.default_path()).close()
    assert stats.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == mmapkv.default_path()


def test_usage(capsys: Any) -> None:
    assert stats.main(["--help"]) == 0
    assert "python -m mmapkv.stats" in capsys.readouterr().out
    assert stats.main(["a", "b"]) == 2


def test_runs_as_a_module(store_path: str) -> None:
    mmapkv.Store(store_path).close()
    done = subprocess.run([sys.executable, "-m", "mmapkv.stats", store_path, "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["live_keys"] == 0


def test_progress_bar_only_on_a_terminal(store_path: str, monkeypatch: Any, capsys: Any) -> None:
    mmapkv.Store(store_path).close()
    assert stats.main([store_path]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert stats.main([store_path]) == 0
    err = capsys.readouterr().err
    assert "\rscanning [" in err and "100%" in err and err.endswith("\r")


def test_fifo_is_refused_at_once(tmp_path: Any) -> None:
    fifo = str(tmp_path / "fifo.mmapkv")
    os.mkfifo(fifo)
    # A read-only open() of a FIFO waits for a writer: the timeout turns that hang into a failure.
    done = subprocess.run([sys.executable, "-m", "mmapkv.stats", fifo],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == f"python -m mmapkv.stats: error: {fifo} is not a regular file\n"


EXPIRES_AT = 24  # offset of a slot header's f64 expires_at (docs/format.md)


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def report_both_ways(path: str, capsys: Any) -> tuple[str, dict[str, Any]]:
    """The text and the JSON report of both command lines, which must agree and not crash."""
    assert stats.main([path]) == 0
    text = capsys.readouterr().out
    assert stats.main([path, "--json"]) == 0
    report = strict_json(capsys.readouterr().out)
    assert cli.main(["stats", "--path", path]) == 0
    assert capsys.readouterr().out == text
    return text, report


@pytest.mark.parametrize("expiry, live, bad, shown", [
    (1.8e12, 1, 0, "unix time 1800000000000.0, past the dates this tool can show"),  # ms clock
    (1e300, 1, 0, "unix time 1e+300, past the dates"),
    (2.0 ** 63, 1, 0, "past the dates"),
    (float("nan"), 1, 1, "1 with an expiry that is not a time (NaN or infinite)"),
    (float("inf"), 1, 1, "1 with an expiry that is not a time (NaN or infinite)"),
    (float("-inf"), 0, 0, "expired keys     1 not yet reclaimed"),  # as the store judges it
    (-5.0, 0, 0, "expired keys     1 not yet reclaimed"),
])
def test_damaged_expiry_is_reported(store_path: str, capsys: Any, expiry: float, live: int,
                                    bad: int, shown: str) -> None:
    with mmapkv.Store(store_path, max_size=SMALL_MAX_SIZE) as store:
        store.create("a", {"x": 1}, ttl=600)
    with open(store_path, "r+b") as f:
        f.seek(Geometry(SMALL_MAX_SIZE).slot_offset(0) + EXPIRES_AT)
        f.write(struct.pack("<d", expiry))
    text, report = report_both_ways(store_path, capsys)
    assert (report["live_keys"], report["expired_keys"], report["bad_expiries"]) == (live, 1 - live, bad)
    assert report["keys_with_ttl"] == live
    assert report["next_expiry"] == (expiry if live and not bad else None)
    assert shown in text


def test_every_flipped_bit_of_a_header_is_reported_or_refused(store_path: str, capsys: Any) -> None:
    with mmapkv.Store(store_path, max_size=SMALL_MAX_SIZE) as store:
        store.create("a", {"x": 1}, ttl=600)
        store.create("b", {"x": 2})
    g = Geometry(SMALL_MAX_SIZE)
    headers = [(0, SUPERBLOCK.size), *((g.slot_offset(n), g.slot_offset(n) + SLOT_HEADER.size) for n in (0, 1))]
    with open(store_path, "r+b") as f:
        for start, end in headers:
            for at in range(start, end):
                f.seek(at)
                byte = f.read(1)[0]
                for bit in range(8):
                    f.seek(at)
                    f.write(bytes([byte ^ (1 << bit)]))
                    f.flush()
                    code = stats.main([store_path, "--json"])
                    out, err = capsys.readouterr()
                    if code == 0:
                        assert isinstance(strict_json(out), dict) and err == ""
                        assert stats.main([store_path]) == 0
                    else:
                        assert code == stats.EXIT_UNAVAILABLE and out == "", (at, bit)
                        assert err.count("\n") == 1 and store_path in err, (at, bit, err)
                    capsys.readouterr()
                f.seek(at)
                f.write(bytes([byte]))
