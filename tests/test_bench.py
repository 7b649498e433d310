"""The benchmark keeps working: a tiny run, and the shape and sanity of what it writes.

No timing is asserted here: speed goals live in the benchmark's output (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from typing import Any

import pytest

from mmapkv import bench, redis_server
from mmapkv.bench.ceiling import FILL_SIZES

ALWAYS = ("mmapkv", "dict", "dbm.dumb[json]", "dbm.dumb[mmapkv]", "jsonfile")
PEERS = {"lmdb": ("lmdb[json]", "lmdb[mmapkv]", "lmdb-writemap[mmapkv]"),
         "diskcache": ("diskcache[json]", "diskcache[mmapkv]", "diskcache[pickle]"),
         "sqlitedict": ("sqlitedict[json]", "sqlitedict[mmapkv]", "sqlitedict[pickle]")}
# The goals evaluate_goals sets, by how each one's text begins: some need a peer installed
# (the bench extra), and the resident-memory one needs Linux's /proc/self/smaps.
ALWAYS_GOALS = ("every operation 1,000x faster than the JSON-file design", "Python heap growth after",
                "four threads reading at once",
                "open of a", "slowest single create under 100 ms", "probes per hit at the highest load",
                # issue 12: one capacity and one full-store open per fill size, space at 1 KiB
                *["a 1 GiB store holds at least", "open of a full store under 1 ms"] * 3,
                "Python heap growth after", "Python heap peak while iterating",
                "file bytes per byte of key+value", "a new empty store")
PEER_GOALS = {"lmdb": ("read hit at most 1.2x py-lmdb's time", "create faster than py-lmdb",
                       "delete faster than py-lmdb", "read_hit no slower against py-lmdb",
                       "create no slower against py-lmdb", "delete no slower against py-lmdb",
                       "set over an existing key faster than lmdb",
                       # issue 13, against writemap=True: the quick run has N=200 and 1 KiB only
                       "create at most 1.3x py-lmdb at writemap", "read_hit at most 1.0x py-lmdb at writemap",
                       "read_miss at most 0.5x py-lmdb at writemap", "delete at most 0.6x py-lmdb at writemap"),
              "diskcache": ("every operation at least 4x faster than diskcache",
                            "set over an existing key faster than diskcache"),
              "sqlitedict": ()}
RESIDENT_GOAL = "resident pages per ~1 KiB value read"
N = 200


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run for the whole session (37 s on two cores): pytest-xdist's workers share
    the session's directory, and the first to get here runs it under a lock while the
    others wait, then read its results."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's pytest-N, above each worker's own directory
    out = shared / "bench-quick-out"
    with open(shared / "bench-quick.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "results.json").exists():
            tmp = tmp_path_factory.mktemp("bench-tmp")
            assert bench.main(["--quick", "--n", str(N), "--out", str(out), "--tmp", str(tmp),
                               "--fill-max-size", str(4 << 20), "--heap-n", "2000"]) == 0
    with open(out / "results.json", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    data["_out"] = str(out)
    return data


def _check_percentiles(p: dict[str, Any], where: str) -> None:
    assert p["count"] > 0, where
    assert 0 < p["min_ns"] <= p["median_ns"] <= p["p90_ns"] <= p["p99_ns"] <= p["p999_ns"] <= p["max_ns"], where
    assert p["min_ns"] <= p["mean_ns"] <= p["max_ns"], where


def test_groups_cover_the_stores_that_must_always_run(results: dict[str, Any]) -> None:
    assert [(g["n"], g["value_size"]) for g in results["groups"]] == [(N, "1KiB")]
    stores = results["groups"][0]["stores"]
    for name in ALWAYS:
        assert name in stores, name


@pytest.mark.parametrize("module", sorted(PEERS))
def test_installed_peers_ran(results: dict[str, Any], module: str) -> None:
    pytest.importorskip(module)
    stores = results["groups"][0]["stores"]
    for name in PEERS[module]:
        assert name in stores, name


def test_redis_peer_ran_or_says_why_not(results: dict[str, Any]) -> None:
    """RedisStore runs beside Store when redis-py and redis-server are here (issue 14: the
    cost of moving is a measured ratio); otherwise a note names what to install.  Its
    server is stopped at the end of the run, and it has no row in the memory table."""
    stores = results["groups"][0]["stores"]
    why = redis_server.missing()
    if why is None:
        assert "redis" in stores and stores["redis"]["ratio_to_mmapkv"]["read_hit"] > 0
        assert "redis" not in {m["store"] for m in results["memory"]}
    else:
        assert "redis" not in stores and f"redis skipped: {why}" in results["notes"]
    assert not bench.peers._SERVERS


def test_every_operation_has_sane_percentiles(results: dict[str, Any]) -> None:
    group = results["groups"][0]
    for name, store in group["stores"].items():
        expected = set(bench.OPS) - ({"open"} if name in ("dict", "jsonfile") else set())
        assert set(store["ops"]) == expected, name
        for op, p in store["ops"].items():
            _check_percentiles(p, f"{name} {op}")
            sampled = name == "jsonfile" or (name.startswith("dbm.dumb") and op == "delete")
            if op in ("create", "read_hit", "read_miss", "delete") and not sampled:
                assert p["count"] == N, (name, op)  # every call timed
        if name != "dict":
            assert store["file_bytes"] > 0, name
        if name != "mmapkv":
            assert store["ratio_to_mmapkv"]["create"] > 0, name
        threads = store["threads"]  # reads from one thread, then four (issue 13)
        if name in ("jsonfile",) or name.startswith("dbm.dumb"):
            assert threads is None, name  # not safe or not meaningful from threads
        else:
            assert threads["reads"] == N and threads["one_thread_per_s"] > 0, name
            assert threads["ratio"] == round(threads["four_threads_per_s"] / threads["one_thread_per_s"], 3)
            for run in ("one_thread", "four_threads"):
                _check_percentiles(threads[run], f"{name} {run}")
                assert threads[run]["count"] == N, (name, run)


def test_the_machines_stalls_are_measured_beside_the_thread_reads(results: dict[str, Any]) -> None:
    stalls = results["groups"][0]["stalls"]
    assert stalls["seconds"] >= 0.25 and stalls["threshold_us"] == 10.0
    # "seconds" is rounded to the millisecond, the rate is not
    assert stalls["per_second"] == pytest.approx(stalls["stalls"] / stalls["seconds"], rel=0.01, abs=0.1)
    assert 0 <= stalls["cpu_lost"] < 1 and stalls["p99_clear_below_us"] > 0
    row = next(g for g in results["goals"] if g["goal"].startswith("four threads reading at once"))
    assert f"stalled {stalls['per_second']:,.0f} times a second" in row["measured"]


def test_scheduling_stalls_counts_the_gaps_of_its_clock() -> None:
    """A clock that moves 1 us per read, but for three gaps of 51 us and one of 9 us
    (under the threshold): three stalls in the 1 ms the clock says the loop ran."""
    ticks = iter([0] + [1_000 * i + 50_000 * min(3, i // 200) + (8_000 if i >= 700 else 0)
                         for i in range(1, 10_000)])
    stalls = bench.machine.scheduling_stalls(0.001, clock=lambda: next(ticks))
    assert stalls["seconds"] == 0.001 and stalls["stalls"] == 3 and stalls["per_second"] == 3_000
    assert stalls["median_us"] == stalls["max_us"] == 51.0 and stalls["cpu_lost"] == 0.153
    assert stalls["p99_clear_below_us"] == 3.3  # 1 % / 3,000 per second


@pytest.mark.parametrize(("median_us", "machines"), [(5.0, False), (15.0, True)])
def test_the_thread_goal_says_when_a_p99_is_the_machines(median_us: float, machines: bool) -> None:
    stalls = {"per_second": 1_000.0, "threshold_us": 10.0, "median_us": 30.0}
    note = bench.goals._stall_note(stalls, median_us)
    assert f"about {median_us / 1e3:.1%} of {median_us:.1f}-us reads meet one" in note
    assert note.endswith("their p99 is the machine's") is machines
    assert bench.goals._stall_note(None, median_us) == ""


def test_mmapkv_only_measurements(results: dict[str, Any]) -> None:
    fill = results["fill"]
    _check_percentiles(fill["create"], "fill")
    assert fill["keys"] > 0 and fill["file_bytes"] <= fill["max_size"]
    assert 0 < fill["first_create_ns"] <= fill["create"]["max_ns"]
    assert [g["from_bytes"] < g["to_bytes"] for g in fill["growths"]] == [True] * len(fill["growths"])
    assert fill["growths"] and fill["growths"][-1]["to_bytes"] == fill["file_bytes"]
    probes = fill["probes"]
    assert probes["entries"] == fill["keys"]
    assert 1 <= probes["hit"]["mean"] <= probes["hit"]["max"] and probes["hit"]["p99"] >= 1
    assert 0 < probes["load"] <= 7 / 8  # no segment fills past SEGMENT_FULL
    assert sorted(results["fills"]) == sorted(FILL_SIZES) and results["fills"]["100B"] == fill
    for size, f in results["fills"].items():
        assert f["keys"] == f["probes"]["entries"] > 0, size
        assert f["data_bytes"] > f["keys"] * FILL_SIZES[size] * 0.9, size
        assert f["open_full"]["count"] > 0, size
        for peer, used in f["peer_file_bytes"].items():
            assert (used is None) == (importlib.util.find_spec(peer) is None), (size, peer)
            assert used is None or used > 0, (size, peer)
    # the smaller the values, the more keys the same ceiling holds
    assert results["fills"]["100B"]["keys"] > results["fills"]["1KiB"]["keys"] > results["fills"]["16KiB"]["keys"]
    scale = results["memory_at_scale"]
    assert scale["n"] == 2000 and scale["file_bytes"] > 0
    assert scale["walk_keys"] == 2000 and scale["walk_peak_bytes"] > 0  # the walk met every key
    assert 0 < results["empty_store_bytes"] <= results["fill"]["file_bytes"]
    resident = results["resident"]
    assert resident["values_read"] == N
    assert resident["cold_open_ns"] > 0
    if "mapping_rss_pages_per_value" in resident:  # Linux
        assert resident["mapping_rss_pages_per_value"] > 0


def test_memory_rows(results: dict[str, Any]) -> None:
    rows = {m["store"]: m for m in results["memory"]}
    assert {"mmapkv", "dict", "dbm.dumb[mmapkv]", "jsonfile"} <= set(rows)
    assert rows["dict"]["heap_bytes"] > rows["mmapkv"]["heap_bytes"]
    for m in rows.values():
        assert m["heap_bytes"] >= 0 or m["store"] != "mmapkv"


def test_goals_and_outputs(results: dict[str, Any]) -> None:
    goals = results["goals"]
    expected = list(ALWAYS_GOALS)
    for module, peer_goals in PEER_GOALS.items():
        if importlib.util.find_spec(module):  # else the README's `.[test]` install: no peers
            expected += peer_goals
    if "mapping_rss_pages_per_value" in results["resident"]:
        expected.append(RESIDENT_GOAL)
    longest_first = sorted(set(expected), key=len, reverse=True)
    found = [next((e for e in longest_first if g["goal"].startswith(e)), g["goal"]) for g in goals]
    assert sorted(found) == sorted(expected)
    for g in goals:  # only a capacity goal goes unjudged: the quick fill's ceiling is not 1 GiB
        judged = not g["goal"].startswith("a 1 GiB store holds")
        assert (g["holds"] in (True, False) if judged else g["holds"] is None) and g["measured"], g
    out = results["_out"]
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        assert f.read().endswith("\n")
    if importlib.util.find_spec("matplotlib"):
        with open(os.path.join(out, "latency.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_percentiles_are_nearest_rank() -> None:
    p = bench.percentiles([30, 10, 20])
    assert (p["min_ns"], p["median_ns"], p["p99_ns"], p["max_ns"], p["count"]) == (10, 20, 30, 30, 3)
    assert bench.percentiles([10, 10, 40])["mean_ns"] == 20  # the mean, not the median (10)
    assert bench.percentiles([]) == {"count": 0}


@pytest.mark.parametrize("size", sorted(bench.SIZES))
def test_records_are_valid_values_of_the_intended_size(size: str) -> None:
    from mmapkv import codec

    rng = random.Random(3)
    for _ in range(20):
        record = bench.make_record(rng, bench.SIZES[size])
        data, flags = codec.encode(record)
        assert flags == 0 and codec.decode(data, flags) == record
        assert abs(len(data) - bench.SIZES[size]) <= bench.SIZES[size] * 0.1 + 10


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--n", "10"]) == 2
    assert bench.main(["--stores", "memcached"]) == 2
    assert "error" in capsys.readouterr().err


def test_report_prints_the_markdown_tables(results: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--report", os.path.join(results["_out"], "results.json")]) == 0
    out = capsys.readouterr().out
    assert "| mmapkv |" in out and "| goal |" in out
    assert f"| N = {N:,}, 1KiB | {results['groups'][0]['stalls']['per_second']:,.0f} |" in out
    # issue 13: median / mean / p99 ratios to py-lmdb, when it ran
    section = out.partition("median / mean / p99 ratios")[2].split("\n\n")[1:2]
    ratio_rows = [line for line in "".join(section).splitlines() if line.startswith(f"| N = {N:,}, 1KiB |")]
    if importlib.util.find_spec("lmdb"):
        assert [row.split(" | ")[1] for row in ratio_rows] == ["lmdb-writemap[mmapkv]", "lmdb[mmapkv]"]
        assert all(cell.count(" / ") == 2 for row in ratio_rows for cell in row.split(" | ")[2:])
    else:
        assert ratio_rows == []
    assert bench.main(["--report", os.path.join(results["_out"], "missing.json")]) == 1


def test_every_store_gets_a_value_or_none(tmp_path: Any) -> None:
    """The read-miss phase times ``get`` (issue 13: mmapkv's answers a miss without an
    exception); each store's ``get`` gives the value, or None for a missing key."""
    from mmapkv.bench.peers import available

    classes = available(None, [])
    assert {c.family for c in classes} >= {"mmapkv", "dict", "jsonfile", "dbm.dumb"}
    for cls in classes:
        for codec in cls.codecs:
            a = cls(str(tmp_path / f"{cls.family}-{codec}"), codec)
            a.open()
            try:
                a.create("here", {"v": [1, "é"]})
                assert a.get("here") == {"v": [1, "é"]}, a.name
                assert a.get("missing") is None, a.name
            finally:
                a.close()
