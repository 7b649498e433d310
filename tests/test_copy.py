"""Issue 14: ``mmapkv copy`` and ``mmapkv.migrate``, moving keys between store files and Redis.

Every key, value and absolute expiry must arrive (a copied TTL ends at the same instant, it
does not start again), keys already expired are skipped, a copy that would overwrite refuses
before writing anything, and a copy stopped part way says so and exits non-zero.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest

import mmapkv
from conftest import FakeClock
from mmapkv import cli, migrate
from mmapkv.redis_server import LocalRedis

VALUES: dict[str, Any] = {
    "plain": {"name": "Ada"},
    "nested": {"list": [1, 2.5, None, True, {"deep": ["é", "🔑"]}], "empty": {}},
    "big-int": {"n": 2 ** 70, "neg": -(2 ** 64)},
    "ключ": {"text": "a\x00b\u2028"},
    "k" * 32: {"pad": "x" * 16_000},
}
TTLS: dict[str, int | None] = {"plain": 100, "nested": None, "big-int": 3_600, "ключ": 86_400 * 30,
                               "k" * 32: None}


def expiries(store: Any) -> dict[str, tuple[Any, float | None]]:
    return {key: (value, expires) for key, value, expires in store.items_with_expiry()}


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def source(tmp_path: Any) -> str:
    """A store file holding VALUES with TTLS, and one key that has expired."""
    path = str(tmp_path / "source.mmapkv")
    clock = FakeClock(time.time() - 10)
    with mmapkv.Store(path, clock=clock) as store:
        for key, value in VALUES.items():
            store.create(key, value, ttl=TTLS[key])
        store.create("expired", {"v": 0}, ttl=5)
    return path


# ------------------------------------------------------------------ the library


def test_round_trip_store_redis_store_keeps_keys_values_and_expiries(
        tmp_path: Any, redis_store: mmapkv.RedisStore) -> None:
    """Store -> Redis -> Store: the same keys and values, and every expiry the same instant
    to the millisecond (Redis keeps milliseconds).  The Stores' clocks are injected: frozen
    at a whole second, so nothing expires by accident and every expiry is a whole number of
    milliseconds, which must come back exactly."""
    clock = FakeClock(float(int(time.time())))
    with mmapkv.Store(str(tmp_path / "a.mmapkv"), clock=clock) as first:
        for key, value in VALUES.items():
            first.create(key, value, ttl=TTLS[key])
        first.create("expired", {"v": 0}, ttl=5)
        clock.advance(5)  # expired in the source: not listed, so not copied
        original = expiries(first)
        assert migrate.Copy(first, redis_store).run() == migrate.CopyResult(5, 5, 0)
    on_redis = expiries(redis_store)
    assert sorted(on_redis) == sorted(VALUES)
    with mmapkv.Store(str(tmp_path / "b.mmapkv"), clock=clock) as back:
        copy = migrate.Copy(redis_store, back)
        assert copy.conflicts() == []
        assert copy.run() == migrate.CopyResult(5, 5, 0)
        final = expiries(back)
        assert {k: v for k, (v, _) in final.items()} == {k: v for k, (v, _) in original.items()} == VALUES
        for key, (_, expires) in original.items():
            for where in (on_redis, final):
                got = where[key][1]
                if expires is None:
                    assert got is None, key
                else:
                    assert got == expires, (key, expires, got)
        assert back.ttl("plain") == 95 and back.ttl("nested") is None  # 100 s, 5 of them gone
        assert back.verify() == []


def test_entries_expired_at_the_destination_are_skipped_and_counted(tmp_path: Any) -> None:
    """An expiry is an instant: at a destination whose clock is past it, the key is skipped
    (and counted), not given a new countdown."""
    clock, later = FakeClock(1_000_000.0), FakeClock(1_000_050.0)
    with mmapkv.Store(str(tmp_path / "a"), clock=clock) as a, mmapkv.Store(str(tmp_path / "b"), clock=later) as b:
        a.batch_create([("soon", {}, 30), ("late", {}, 90), ("never", {}, None)])
        assert migrate.Copy(a, b).run() == migrate.CopyResult(3, 2, 1)
        assert sorted(b.keys()) == ["late", "never"] and b.ttl("late") == 40


def test_copy_without_replace_raises_on_a_key_written_meanwhile(tmp_path: Any) -> None:
    """A key that appears in the destination after conflicts() was checked stops the copy
    with KeyExistsError; whole chunks are written, never part of one."""
    with mmapkv.Store(str(tmp_path / "a")) as a, mmapkv.Store(str(tmp_path / "b")) as b:
        a.update({f"k{i}": {"i": i} for i in range(10)})
        copy = migrate.Copy(a, b)
        assert copy.conflicts() == []
        b.set(sorted(a.keys())[-1], {"mine": True})
        with pytest.raises(mmapkv.KeyExistsError):
            copy.run()
        assert copy.copied == 0 and len(b) == 1  # one chunk (CHUNK > 10): nothing of it written


# ------------------------------------------------------------------ the command


def test_copy_command_between_files_and_redis(capsys: Any, tmp_path: Any, source: str,
                                              redis_server: LocalRedis, redis_namespace: str) -> None:
    """mmapkv copy FILE URL, then URL FILE: a summary line, every key and absolute expiry."""
    code, out, err = run(capsys, "copy", source, redis_server.url, "--dest-namespace", redis_namespace)
    assert (code, err) == (0, "")
    assert out == f"copied 5 keys to {redis_server.url} (namespace {redis_namespace!r})\n"
    back = str(tmp_path / "back.mmapkv")
    code, out, err = run(capsys, "copy", redis_server.url, back, "--src-namespace", redis_namespace)
    assert (code, out, err) == (0, f"copied 5 keys to {back}\n", "")
    with mmapkv.Store(source) as a, mmapkv.Store(back) as b, \
            mmapkv.RedisStore(redis_server.url, namespace=redis_namespace) as r:
        before, after = expiries(a), expiries(b)
        assert sorted(before) == sorted(after) == sorted(VALUES)
        for key, (value, expires) in before.items():
            assert after[key][0] == value
            assert (after[key][1] is None) == (expires is None)
            assert expires is None or abs(after[key][1] - expires) < 0.002, key  # to the ms
        r.clear()


def test_copy_refuses_to_overwrite_and_writes_nothing(capsys: Any, tmp_path: Any, source: str,
                                                       redis_store: mmapkv.RedisStore) -> None:
    """Without --replace, keys DEST holds are listed and nothing at all is written (exit 3);
    with it, they are overwritten."""
    redis_store.create("nested", {"mine": True})
    redis_store.create("ключ", {"mine": True}, ttl=50)
    before = expiries(redis_store)
    code, out, err = run(capsys, "copy", source, redis_store.url, "--dest-namespace", redis_store.namespace)
    assert (code, out) == (3, "")
    assert "holds 2 of the 5 keys to copy: " in err and "'nested'" in err and "'ключ'" in err
    assert "nothing was copied (--replace overwrites them)" in err and "incomplete" not in err
    assert expiries(redis_store) == before
    code, out, err = run(capsys, "copy", source, redis_store.url, "--dest-namespace", redis_store.namespace,
                         "--replace")
    assert (code, err) == (0, "") and out.startswith("copied 5 keys")
    assert redis_store.read("nested") == VALUES["nested"] and len(redis_store) == 5


def test_copy_refusal_names_at_most_ten_keys(capsys: Any, tmp_path: Any) -> None:
    """The first ten in key order: a copy goes in key order, whatever order the source
    lists its keys in (a table's, by hash, differs from file to file, like SCAN's)."""
    a, b = str(tmp_path / "a.mmapkv"), str(tmp_path / "b.mmapkv")
    for path in (a, b):
        with mmapkv.Store(path) as store:
            store.update({f"k{i:02}": {} for i in range(25)})
    code, _, err = run(capsys, "copy", a, b)
    assert code == 3 and "holds 25 of the 25 keys" in err and "and 15 more" in err
    assert re.findall(r"'(k\d\d)'", err) == [f"k{i:02}" for i in range(10)]


@pytest.mark.parametrize("dest_kind", ["file", "redis"])
def test_interrupted_copy_says_it_is_incomplete(capsys: Any, monkeypatch: Any, tmp_path: Any,
                                               redis_store: mmapkv.RedisStore, dest_kind: str) -> None:
    """Ctrl-C in the middle (injected into the second chunk's write): exit 130, and stderr
    says how many keys were copied and that the copy is incomplete; whole chunks only."""
    src = str(tmp_path / "src.mmapkv")
    with mmapkv.Store(src) as store:
        store.update({f"k{i:02}": {"i": i} for i in range(10)})
    monkeypatch.setattr(migrate, "CHUNK", 3)
    cls = mmapkv.Store if dest_kind == "file" else mmapkv.RedisStore
    original = cls.restore_entries
    calls = []

    def second_call_interrupted(self: Any, *args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "restore_entries", second_call_interrupted)
    dest = str(tmp_path / "dest.mmapkv") if dest_kind == "file" else redis_store.url
    code, out, err = run(capsys, "copy", src, dest, "--dest-namespace", redis_store.namespace)
    assert code == 130 and out == ""
    # a Ctrl-C may land after the batch's commit, or while a server's reply is awaited:
    # the chunk under way is told as perhaps written (here it was not)
    perhaps = ", and perhaps up to 3 more (the batch under way when it stopped)"
    assert err.splitlines() == [
        f"mmapkv: copy incomplete: copied 3 of 10 keys{perhaps}; "
        f"{dest if dest_kind == 'file' else f'{dest} (namespace {redis_store.namespace!r})'} holds those, "
        "and `--replace` copies again over them",
        "mmapkv: error: interrupted"]
    monkeypatch.undo()
    with (mmapkv.Store(dest) if dest_kind == "file" else redis_store) as written:
        assert sorted(written.keys()) == ["k00", "k01", "k02"]


@pytest.mark.parametrize("dest_kind", ["file", "redis"])
def test_ctrl_c_just_after_a_chunk_is_written_counts_it_as_perhaps(capsys: Any, monkeypatch: Any, tmp_path: Any,
                                                                   redis_store: mmapkv.RedisStore,
                                                                   dest_kind: str) -> None:
    """A review: Ctrl-C after a batch was written and before it was counted (on Redis,
    while its reply was awaited) said "copied 0 of N keys; nothing was written" while the
    destination held 500.  The chunk under way is told as perhaps written."""
    src = str(tmp_path / "src.mmapkv")
    with mmapkv.Store(src) as store:
        store.update({f"k{i:02}": {"i": i} for i in range(5)})
    dest = str(tmp_path / "dest.mmapkv") if dest_kind == "file" else redis_store.url
    if dest_kind == "file":
        mmapkv.Store(dest).close()
    cls = mmapkv.Store if dest_kind == "file" else mmapkv.RedisStore
    original = cls.restore_entries

    def written_then_interrupted(self: Any, *args: Any, **kwargs: Any) -> int:
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "restore_entries", written_then_interrupted)
    code, _, err = run(capsys, "copy", src, dest, "--dest-namespace", redis_store.namespace)
    assert code == 130
    assert err.splitlines()[0].startswith(
        "mmapkv: copy incomplete: copied 0 of 5 keys, and perhaps up to 5 more (the batch under way when it "
        "stopped); "), err
    monkeypatch.undo()
    with (mmapkv.Store(dest) if dest_kind == "file" else redis_store) as written:
        assert len(written) == 5


def test_failed_copy_into_a_new_file_leaves_no_store(capsys: Any, monkeypatch: Any, tmp_path: Any,
                                                     source: str) -> None:
    """An error before any key is written (the first chunk fails): exit 4, 'nothing was
    written', and the store file the copy created is removed again."""
    def full(self: Any, *args: Any, **kwargs: Any) -> int:
        raise mmapkv.StoreFullError("no room (injected)")

    monkeypatch.setattr(mmapkv.Store, "restore_entries", full)
    dest = str(tmp_path / "new.mmapkv")
    code, out, err = run(capsys, "copy", source, dest)
    assert (code, out) == (4, "")
    assert err.splitlines() == ["mmapkv: copy incomplete: copied 0 of 5 keys; nothing was written",
                                "mmapkv: error: no room (injected)"]
    assert not os.path.exists(dest)


@pytest.mark.parametrize("args, text, code", [
    (["same", "same"], "SRC and DEST are the same store", 3),
    (["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"], "SRC and DEST are the same store", 3),
    (["missing.mmapkv", "out.mmapkv"], "no store at", 4),
])
def test_copy_usage_errors(capsys: Any, tmp_path: Any, monkeypatch: Any, args: list[str], text: str,
                           code: int) -> None:
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, "copy", *args)
    assert (got, out) == (code, "") and text in err
    assert not os.path.exists(tmp_path / "out.mmapkv")


@pytest.mark.parametrize("url", ["REDIS://127.0.0.1:1/0", "valkey://127.0.0.1:1/0", "redis:/127.0.0.1:1/0",
                                 "http://example.com"])
@pytest.mark.parametrize("end", ["src", "dest"])
def test_copy_refuses_a_url_it_cannot_serve(capsys: Any, tmp_path: Any, monkeypatch: Any, url: str,
                                            end: str) -> None:
    """A URL of another scheme (or mistyped) is a usage error, never a file path: it made
    directories named after it and a store inside, and exited 0."""
    monkeypatch.chdir(tmp_path)
    with mmapkv.Store(str(tmp_path / "s.mmapkv")) as store:
        store.create("k", {"v": 1})
    before = sorted(os.listdir(tmp_path))
    args = [url, "s.mmapkv"] if end == "src" else ["s.mmapkv", url]
    code, out, err = run(capsys, "copy", *args)
    assert (code, out) == (3, "") and "URL" in err and url in err
    assert sorted(os.listdir(tmp_path)) == before


def test_copy_from_an_unreachable_server(capsys: Any, tmp_path: Any) -> None:
    """A server that is not there: exit 4 naming it, and no store file made."""
    dest = tmp_path / "out.mmapkv"
    code, out, err = run(capsys, "copy", "redis://127.0.0.1:1/0", str(dest))
    assert (code, out) == (4, "") and "127.0.0.1:1" in err and "unavailable" in err
    assert not dest.exists()


def test_progress_only_on_a_terminal(capsys: Any, monkeypatch: Any, tmp_path: Any, source: str) -> None:
    """A progress bar on stderr when it is a terminal, and nothing extra when it is not;
    the bar never mixes into stdout's summary."""
    import sys

    assert run(capsys, "copy", source, str(tmp_path / "piped.mmapkv"))[2] == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, "copy", source, str(tmp_path / "tty.mmapkv"))
    assert code == 0 and "\rcopying [" in err and "100%" in err
    assert out == f"copied 5 keys to {tmp_path / 'tty.mmapkv'}\n"
