"""``mmapkv.cli``: every command and exit code, in-process through ``main([...])``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from conftest import held_by_another_process
from mmapkv import cli, migrate, transfer

Run = Any  # the ``run`` fixture: (*args) -> (code, stdout, stderr)


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "cli.mmapkv")


@pytest.fixture
def run(capsys: Any) -> Any:
    """Call ``main`` and return (exit code, stdout, stderr); stderr is never a traceback."""

    def runner(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if code not in (0, 1):  # an error: exactly one line (argparse adds its usage, wrapped)
            lines = err.splitlines()
            assert len(lines) == 1 or code == 2 and lines[0].startswith("usage: ") and all(
                line.startswith(" ") for line in lines[1:-1]), err
            assert lines[-1].startswith("mmapkv") and ": error: " in lines[-1]
        return code, out, err

    return runner


@pytest.fixture
def held(tmp_path: Any) -> Iterator[str]:
    """The path of a store that another process holds open until the test ends."""
    held_path = str(tmp_path / "held.mmapkv")
    with held_by_another_process(f"""
        import mmapkv
        store = mmapkv.Store({held_path!r})
    """):
        yield held_path


def stdin(monkeypatch: Any, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# ------------------------------------------------------------------ get / create / delete / keys

def test_create_get_delete(run: Run, path: str) -> None:
    assert run("create", "user:1", '{"name": "Ada", "n": 123456789012345678901234567890}',
               "--path", path)[:2] == (0, "")
    code, out, _ = run("get", "user:1", "--path", path)
    assert code == 0 and json.loads(out) == {"name": "Ada", "n": 123456789012345678901234567890}
    assert out == '{"name":"Ada","n":123456789012345678901234567890}\n'
    assert run("delete", "user:1", "--path", path)[:2] == (0, "")
    code, _, err = run("get", "user:1", "--path", path)
    assert code == 3 and "'user:1' is not in" in err


def test_create_with_ttl_keeps_an_expiry(run: Run, path: str) -> None:
    assert run("create", "t", "{}", "--ttl", "60", "--path", path)[0] == 0
    code, out, _ = run("dump", "--path", path)
    expires = json.loads(out)["expires_at"]
    assert code == 0 and isinstance(expires, float) and expires > 1_000_000_000


def test_set_ttl_expire_persist(run: Run, path: str) -> None:
    """Issue 11's commands: set overwrites (value and TTL), ttl reads, expire and persist
    change it; a missing key exits 3 like get does."""
    assert run("set", "k", '{"v": 1}', "--path", path)[:2] == (0, "")
    assert run("set", "k", '{"v": 2}', "--ttl", "60", "--path", path)[:2] == (0, "")
    assert json.loads(run("get", "k", "--path", path)[1]) == {"v": 2}
    code, out, _ = run("ttl", "k", "--path", path)
    assert code == 0 and 59 <= int(out) <= 60
    assert run("persist", "k", "--path", path)[:2] == (0, "removed the TTL\n")
    assert run("ttl", "k", "--path", path)[:2] == (0, "none\n")
    assert run("persist", "k", "--path", path)[:2] == (0, "no TTL to remove\n")
    assert run("expire", "k", "500", "--path", path)[:2] == (0, "")
    code, out, _ = run("ttl", "k", "--path", path)
    assert code == 0 and 499 <= int(out) <= 500
    for args in (["ttl", "nope"], ["expire", "nope", "5"], ["persist", "nope"]):
        code, _, err = run(*args, "--path", path)
        assert code == 3 and "'nope' is not in" in err, args
    code, _, err = run("expire", "k", "0", "--path", path)
    assert code == 3 and "ttl must be 1" in err
    code, _, err = run("set", "k", "[1]", "--path", path)
    assert code == 3 and "must be a dict" in err
    assert json.loads(run("get", "k", "--path", path)[1]) == {"v": 2}  # refused: unchanged


def test_create_reads_stdin(run: Run, path: str, monkeypatch: Any) -> None:
    stdin(monkeypatch, '{"from": "stdin", "ü": 1}'.encode())
    assert run("create", "k", "-", "--path", path)[0] == 0
    assert json.loads(run("get", "k", "--path", path)[1]) == {"from": "stdin", "ü": 1}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_create_refuses_stdin_in_utf16_or_utf32(run: Run, path: str, monkeypatch: Any, encoding: str) -> None:
    stdin(monkeypatch, '{"a": 1}'.encode(encoding))
    code, _, err = run("create", "k", "-", "--path", path)
    assert code == cli.EXIT_DATA and "the value is not valid JSON" in err and "UTF-8" in err
    assert not os.path.exists(path)


@pytest.mark.parametrize("args", [["create", "k", "{}", "--ttl"], ["set", "k", "{}", "--ttl"], ["expire", "k"]])
@pytest.mark.parametrize("ttl", ["1.5", "1e3", "0x10", "x", "\u0663", "+5", "0", "-1", "9" * 4301, "-" + "9" * 4301])
def test_a_bad_ttl_exits_3_and_makes_no_store(run: Run, path: str, args: list[str], ttl: str) -> None:
    """Every TTL that is not 1 to MAX_TTL in ASCII digits is exit 3, as cli.md says of an
    invalid TTL: "1.5" was argparse's usage error (exit 2) where "0" was 3, an Arabic-Indic
    digit was taken for 3, and a bad TTL for a new store left the store behind; one of
    4,301 digits was an internal error (exit 70: int()'s digit limit)."""
    code, out, err = run(*args, ttl, "--path", path)
    assert (code, out) == (3, "") and ("whole number of seconds" in err or "ttl must be 1" in err), err
    assert not os.path.exists(path)


@pytest.mark.parametrize("args, message", [
    (["create", "k", "{not json"], "not valid JSON"),
    (["create", "k", "[1, 2]"], "must be a dict"),
    (["create", "k", '{"x": NaN}'], "NaN"),
    (["create", "", "{}"], "key must be 1 to 32"),
    (["create", "k" * 33, "{}"], "key must be 1 to 32"),
    (["create", "k", "{}", "--ttl", "0"], "ttl must be 1"),
    (["create", "k", json.dumps({"k": "x" * 16_384})], "limit is 16,384"),
    # valid JSON, not "not valid JSON", and no advice to call sys.set_int_max_str_digits
    (["create", "k", '{"n": 1' + "0" * 5_000 + "}"], "value holds an int of more than 4,300 digits"),
    (["create", "exists", "{}"], "already exists"),
    (["get", "missing"], "is not in"),
    (["delete", "missing"], "is not in"),
])
def test_data_errors_exit_3(run: Run, path: str, args: list[str], message: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("exists", {})
    code, out, err = run(*args, "--path", path)
    assert (code, out) == (3, "") and message in err and err.startswith("mmapkv: error: ")


DEEP = '{"a":' * 100_000 + "1" + "}" * 100_000  # json.loads raises RecursionError on it


@pytest.mark.parametrize("source", ["argument", "stdin"])
def test_deeply_nested_value_is_bad_input(run: Run, path: str, monkeypatch: Any, source: str) -> None:
    stdin(monkeypatch, DEEP.encode())
    code, out, err = run("create", "k", DEEP if source == "argument" else "-", "--path", path)
    assert (code, out) == (cli.EXIT_DATA, "")
    assert "nests too deeply to parse (a value may nest at most 255 levels)" in err
    assert not os.path.exists(path)


def test_deeply_nested_dump_line_is_bad_input(run: Run, tmp_path: Any, path: str) -> None:
    dump_file = tmp_path / "deep.jsonl"
    dump_file.write_text('{"key":"ok","value":{},"expires_at":null}\n'
                         f'{{"key":"k","value":{DEEP},"expires_at":null}}\n')
    code, out, err = run("restore", str(dump_file), "--path", path)
    assert (code, out) == (cli.EXIT_DATA, "")
    assert err == (f"mmapkv: error: {dump_file} line 2 is not JSON: it nests too deeply to parse "
                   "(a value may nest at most 255 levels)\n")
    assert not os.path.exists(path)  # all or nothing: not even the good first line
    with mmapkv.Store(path) as store, pytest.raises(transfer.InvalidDumpError, match="line 2"):
        transfer.restore(store, io.BytesIO(dump_file.read_bytes()))


def test_expired_key_is_not_found(run: Run, path: str) -> None:
    line = b'{"key":"old","value":{},"expires_at":1000.5}\n'
    with mmapkv.Store(path, clock=lambda: 0.0) as store:  # a clock from before 1970 + 1000 s
        transfer.restore(store, io.BytesIO(line))
    code, _, err = run("get", "old", "--path", path)
    assert code == 3 and "expired" in err


def test_keys_sorted_and_by_prefix(run: Run, path: str) -> None:
    with mmapkv.Store(path) as store:
        for key in ("b:2", "a:1", "b:1", "c"):
            store.create(key, {})
    assert run("keys", "--path", path)[1] == "a:1\nb:1\nb:2\nc\n"
    assert run("keys", "--prefix", "b:", "--path", path)[1] == "b:1\nb:2\n"
    assert run("keys", "--prefix", "zzz", "--path", path)[:2] == (0, "")


# ------------------------------------------------------------------ stats

def test_stats(run: Run, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("a", {"x": 1}, ttl=600)
    code, out, _ = run("stats", "--path", path)
    assert code == 0 and "live keys        1" in out and "next expiry in 10.0 min" in out
    code, out, _ = run("stats", "--json", "--path", path)
    report = json.loads(out)
    assert code == 0 and report["live_keys"] == 1 and report["path"] == path


# ------------------------------------------------------------------ dump / restore

def test_dump_restore_round_trip(run: Run, tmp_path: Any, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("plain", {"a": [1, 2.5, None, True]})
        store.create("ttl", {"b": "ünï"}, ttl=3600)
        store.create("big", {"n": -(2 ** 80)})
    code, stdout_dump, _ = run("dump", "--path", path)
    assert code == 0 and len(stdout_dump.splitlines()) == 3
    dump_file = str(tmp_path / "out.jsonl")
    assert run("dump", dump_file, "--path", path)[:2] == (0, "")
    assert open(dump_file, encoding="utf-8").read() == stdout_dump
    copy = str(tmp_path / "copy.mmapkv")
    code, out, _ = run("restore", dump_file, "--path", copy)
    assert (code, out) == (0, "restored 3 keys\n")
    assert run("dump", "--path", copy)[1] == stdout_dump  # keys, values and expiries


def test_restore_existing_and_skip_existing(run: Run, tmp_path: Any, path: str) -> None:
    dump_file = tmp_path / "d.jsonl"
    dump_file.write_text('{"key":"a","value":{"v":1},"expires_at":null}\n'
                         '{"key":"b","value":{"v":2},"expires_at":null}\n'
                         '{"key":"gone","value":{},"expires_at":1000.0}\n')
    with mmapkv.Store(path) as store:
        store.create("b", {"mine": True})
    code, out, err = run("restore", str(dump_file), "--path", path)
    assert (code, out) == (3, "") and "line 2: key 'b' already exists" in err
    assert "nothing was restored" in err
    assert run("keys", "--path", path)[1] == "b\n"
    code, out, _ = run("restore", str(dump_file), "--skip-existing", "--path", path)
    assert (code, out) == (0, "restored 1 key (skipped 1 already present, 1 expired)\n")
    assert json.loads(run("get", "b", "--path", path)[1]) == {"mine": True}


def test_restore_from_stdin(run: Run, path: str, monkeypatch: Any) -> None:
    stdin(monkeypatch, b'{"key":"s","value":{"via":"stdin"},"expires_at":null}\n')
    assert run("restore", "-", "--path", path)[:2] == (0, "restored 1 key\n")
    assert json.loads(run("get", "s", "--path", path)[1]) == {"via": "stdin"}


def test_restore_bad_input(run: Run, tmp_path: Any, path: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    code, _, err = run("restore", str(bad), "--path", path)
    assert code == 3 and "bad.jsonl line 1 is not an entry" in err
    code, _, err = run("restore", str(tmp_path / "nope.jsonl"), "--path", path)
    assert code == 3 and "cannot read" in err and "nope.jsonl" in err
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # a failed restore leaves no new, empty store
    mmapkv.Store(path).close()
    assert run("restore", str(bad), "--path", path)[0] == 3
    assert os.path.exists(path)  # but never removes one that was there


@pytest.mark.parametrize("command", ["restore", "copy"])
@pytest.mark.parametrize("rival", ["put-at-the-path-meanwhile", "made-before-our-open"])
def test_a_failed_restore_or_copy_removes_only_the_store_it_made(run: Run, tmp_path: Any, path: str,
                                                                monkeypatch: Any, command: str, rival: str) -> None:
    """A restore or copy into a new path that fails removes the store it made, and only
    that: not a file another program put at the path while it ran (the new store moved
    aside), nor a store another process made between the command's check that the path
    was free and its open.  Both were deleted: "we made it" came from that check."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "x", "value": {}}\nnot json\n')
    source = str(tmp_path / "source.mmapkv")
    with mmapkv.Store(source) as store:
        store.create("k", {"v": 1})
    real_open = cli._open

    def opened(name: str, *, create: bool = False) -> mmapkv.Store:
        if rival == "made-before-our-open" and name == path:
            with mmapkv.Store(path) as theirs:
                theirs.create("theirs", {"v": 2})
        return real_open(name, create=create)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if rival == "put-at-the-path-meanwhile":
            os.rename(path, str(tmp_path / "moved.mmapkv"))
            with open(path, "w") as notes:
                notes.write("precious notes\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_open", opened)
    monkeypatch.setattr(migrate.Copy, "run", failing)
    if command == "restore":
        if rival == "put-at-the-path-meanwhile":
            monkeypatch.setattr(transfer, "restore", failing)
        code = run("restore", str(bad), "--path", path)[0]
    else:
        code = cli.main(["copy", source, path])
    assert code in (3, 130)
    if rival == "put-at-the-path-meanwhile":
        with open(path) as notes:
            assert notes.read() == "precious notes\n"
    else:
        with mmapkv.Store(path) as theirs:
            assert dict(theirs.items()) == {"theirs": {"v": 2}}


@pytest.mark.parametrize("args", [["create", "k", "-"], ["set", "k", "-"], ["restore", "-"]])
def test_closed_stdin_is_bad_input(run: Run, tmp_path: Any, path: str, monkeypatch: Any,
                                   args: list[str]) -> None:
    """Started with stdin closed (`<&-`), Python's sys.stdin is None: reading "-" was an
    internal error (AttributeError, exit 70)."""
    monkeypatch.setattr(sys, "stdin", None)
    code, _, err = run(*args, "--path", path)
    assert code == cli.EXIT_DATA and err == "mmapkv: error: cannot read stdin: it is closed\n"
    assert os.listdir(tmp_path) == []  # no store made for nothing


def test_closed_stdin_in_a_real_process(path: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mmapkv", "create", "k", "-", "--path", path],
                          capture_output=True, text=True, preexec_fn=lambda: os.close(0))
    assert (done.returncode, done.stderr) == (3, "mmapkv: error: cannot read stdin: it is closed\n")


def _tool(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("tool", [["mmapkv", "create", "k2", "{}", "--path"], ["mmapkv.stats"]])
def test_closed_or_full_stdout_is_one_line_and_its_exit_code(path: str, tool: list[str]) -> None:
    """Started with stdout closed (`>&-`), a command that succeeded ended in a traceback
    and exit 1 (``sys.stdout`` is None); ``python -m mmapkv.stats`` writing to /dev/full
    ended in a traceback.  Now: success, and "cannot write stdout" with exit 4."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    done = _tool(*tool, path, preexec_fn=lambda: os.close(1))
    assert (done.returncode, done.stderr) == (0, "")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", *tool, path], stdout=full, stderr=subprocess.PIPE, text=True)
    if tool[0] == "mmapkv.stats":  # `create` prints nothing: only the report meets the full device
        assert done.returncode == 4 and done.stderr.endswith(
            "error: cannot write stdout: No space left on device\n"), done.stderr
        assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["keys"], ["get", "k"], ["ttl", "k"], ["stats"], ["verify"], ["dump"],
                                     ["dump", "-"], ["dump", "/dev/stdout"], ["demo"]])
def test_every_command_names_a_full_stdout(path: str, command: list[str]) -> None:
    """``mmapkv keys > /dev/full`` said "No space left on device", naming nothing: the
    commands' own prints failed inside the command, before run_tool could name stdout."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "mmapkv", *command] + ([] if command == ["demo"] else ["--path", path]),
                              stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "XDG_DATA_HOME": os.path.dirname(path)})
    assert (done.returncode, done.stderr) == (4, "mmapkv: error: cannot write stdout: No space left on device\n")


@pytest.mark.parametrize("target", [[], ["-"]])
def test_a_dump_to_a_closed_stdout_says_so(path: str, target: list[str]) -> None:
    """It was an internal error (exit 70, ``AttributeError``): ``sys.stdout`` is None."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    done = _tool("mmapkv", "dump", *target, "--path", path, preexec_fn=lambda: os.close(1))
    assert (done.returncode, done.stderr) == (3, "mmapkv: error: cannot write stdout: it is closed\n")


def test_dump_to_a_descriptors_name_writes_through_it(path: str, tmp_path: Any) -> None:
    """``dump /dev/stdout`` into a pipe was "No such file or directory" (the name resolves
    to ``pipe:[N]``); into a file it was "exists", and with ``--force`` under ``>>`` it
    replaced the file the shell opened to append to.  Now it writes where stdout goes;
    /dev/stderr is appended to, never replaced."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    line = '{"key":"k","value":{"v":1},"expires_at":null}\n'
    done = _tool("mmapkv", "dump", "/dev/stdout", "--path", path)  # a pipe
    assert (done.returncode, done.stdout, done.stderr) == (0, line, "")
    kept = tmp_path / "kept.jsonl"
    kept.write_text("earlier\n")
    for name, into in [("/dev/stdout", "stdout"), ("/dev/fd/1", "stdout"), ("/dev/stderr", "stderr")]:
        with open(kept, "a") as appended:
            done = subprocess.run([sys.executable, "-m", "mmapkv", "dump", name, "--force", "--path", path],
                                  **{into: appended}, text=True)
        assert done.returncode == 0
    assert kept.read_text() == "earlier\n" + line * 3


def test_a_failed_write_of_a_dump_names_its_file(run: Run, path: str) -> None:
    """A full device said "No space left on device", naming no file."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    code, _, err = run("dump", "/dev/full", "--path", path)
    assert code == 4 and err == "mmapkv: error: cannot write /dev/full: No space left on device\n"


@pytest.mark.parametrize("command", [["dump", ""], ["restore", ""]])
def test_an_empty_file_argument_is_a_usage_error(run: Run, tmp_path: Any, path: str, command: list[str]) -> None:
    """As ``--path ''`` is: it was "cannot write : No such file or directory", exit 3."""
    code, _, err = run(*command, "--path", path)
    assert code == 2 and "argument FILE: the path is empty" in err
    assert os.listdir(tmp_path) == []


def test_an_error_names_a_path_with_its_own_spaces(run: Run, tmp_path: Any) -> None:
    """A review: messages were squeezed to one line by joining every run of whitespace,
    so ``two  spaces.mmapkv`` was named as ``two spaces.mmapkv``, another file."""
    path = str(tmp_path / "two  spaces.mmapkv")
    code, _, err = run("keys", "--path", path)
    assert code == 4 and err == f"mmapkv: error: no store at {path}\n"


def test_dump_to_an_unwritable_place(run: Run, tmp_path: Any, path: str) -> None:
    mmapkv.Store(path).close()
    code, _, err = run("dump", str(tmp_path / "no" / "such" / "dir.jsonl"), "--path", path)
    assert code == 3 and "cannot write" in err


def test_failed_dump_leaves_no_file(run: Run, tmp_path: Any, held: str) -> None:
    out = tmp_path / "out.jsonl"
    assert run("dump", str(out), "--path", held)[0] == 4
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["held.mmapkv"]  # nor a temporary file


EARLIER = b'{"key":"earlier","value":{"dump":"worth keeping"},"expires_at":null}\n' * 100


def test_dump_does_not_replace_a_file_without_force(run: Run, tmp_path: Any, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    os.chmod(out, 0o640)
    code, _, err = run("dump", str(out), "--path", path)
    assert code == cli.EXIT_DATA and err == f"mmapkv: error: {out} exists; pass --force to replace it (once the dump is complete)\n"
    assert out.read_bytes() == EARLIER
    assert run("dump", str(out), "--force", "--path", path)[:2] == (0, "")
    assert out.read_bytes() == b'{"key":"k","value":{"v":1},"expires_at":null}\n'
    assert os.stat(out).st_mode & 0o777 == 0o640  # the replacement keeps the file's mode
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    assert run("dump", str(link), "--force", "--path", path)[0] == 0
    assert link.is_symlink() and link.read_bytes() == out.read_bytes()  # written through the link
    assert sorted(os.listdir(tmp_path)) == ["cli.mmapkv", "link.jsonl", "out.jsonl"]


@pytest.mark.parametrize("name", ["the store", "a link to it", "a hard link to it", "its path in other words"])
def test_dump_to_the_store_itself_is_refused(run: Run, tmp_path: Any, path: str, name: str) -> None:
    """`dump FILE --force` with FILE the store used to replace the store with its own dump."""
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    before = open(path, "rb").read()
    out = {"the store": path, "a link to it": str(tmp_path / "link"), "a hard link to it": str(tmp_path / "hard"),
           "its path in other words": os.path.join(str(tmp_path), ".", "cli.mmapkv")}[name]
    if name == "a link to it":
        os.symlink("cli.mmapkv", out)
    elif name == "a hard link to it":
        os.link(path, out)
    for force in (["--force"], []):
        code, _, err = run("dump", out, *force, "--path", path)
        assert code == cli.EXIT_DATA and err == f"mmapkv: error: {out} is the store itself; dump to another file\n"
    assert open(path, "rb").read() == before and not os.path.islink(path)
    assert sorted(os.listdir(tmp_path)) == sorted({"cli.mmapkv", os.path.basename(out)})  # no temporary file
    assert json.loads(run("get", "k", "--path", path)[1]) == {"v": 1}


def test_file_that_appears_during_the_dump_is_kept(run: Run, tmp_path: Any, path: str,
                                                   monkeypatch: Any) -> None:
    mmapkv.Store(path).close()
    out = tmp_path / "out.jsonl"
    real_dump = transfer.dump

    def dump_while_another_writes(*args: Any, **kwargs: Any) -> Any:
        out.write_bytes(EARLIER)
        return real_dump(*args, **kwargs)

    monkeypatch.setattr(transfer, "dump", dump_while_another_writes)
    code, _, err = run("dump", str(out), "--path", path)
    assert code == cli.EXIT_DATA and "exists; pass --force" in err
    assert out.read_bytes() == EARLIER
    assert sorted(os.listdir(tmp_path)) == ["cli.mmapkv", "out.jsonl"]


@pytest.mark.parametrize("failure", ["mistyped --path", "locked store", "Ctrl-C", "damaged entry"])
def test_failed_dump_keeps_the_earlier_file(run: Run, tmp_path: Any, path: str, held: str,
                                           monkeypatch: Any, failure: str) -> None:
    with mmapkv.Store(path) as store:
        for i in range(100):  # whole-slot values: progress, counted in slots, comes every 64 keys
            store.create(f"k{i}", {"i": i, "pad": ("corrupt-me" if i == 60 else "") + "x" * 16_000})
    store_path, code = {"mistyped --path": (path + ".typo", 4), "locked store": (held, 4),
                        "Ctrl-C": (path, cli.EXIT_INTERRUPTED), "damaged entry": (path, 4)}[failure]
    if failure == "damaged entry":
        flip_value_byte(path, b"corrupt-me")
    interrupted: list[tuple[int, int]] = []
    if failure == "Ctrl-C":
        def interrupt(done: int, total: int) -> None:
            if done >= 64:  # part of the dump is written by now
                interrupted.append((done, total))
                raise KeyboardInterrupt

        monkeypatch.setattr(cli, "ProgressBar", lambda label: contextlib.nullcontext(interrupt))
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    assert run("dump", str(out), "--force", "--path", store_path)[0] == code
    if failure == "Ctrl-C":  # the interrupt came part way, not after the last entry
        assert len(interrupted) == 1 and interrupted[0][0] < interrupted[0][1]
    assert out.read_bytes() == EARLIER
    assert sorted(os.listdir(tmp_path)) == ["cli.mmapkv", "held.mmapkv", "out.jsonl"]


def test_dump_to_a_device_or_a_fifo(run: Run, tmp_path: Any, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    devices = sorted(os.listdir(os.path.dirname(os.devnull)))
    assert run("dump", os.devnull, "--path", path)[:2] == (0, "")  # no --force: nothing to keep
    assert sorted(os.listdir(os.path.dirname(os.devnull))) == devices  # no temporary file there
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    try:
        assert run("dump", fifo, "--path", path)[:2] == (0, "")
    finally:
        reader.join(timeout=60)
    assert got == [b'{"key":"k","value":{"v":1},"expires_at":null}\n']
    assert sorted(os.listdir(tmp_path)) == ["cli.mmapkv", "fifo"]


# ------------------------------------------------------------------ verify / compact

def flip_value_byte(path: str, marker: bytes) -> None:
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(marker) + 2
        f.seek(at)
        f.write(bytes([data[at] ^ 0x01]))


def record_offset(store: mmapkv.Store, key: str) -> int:
    """Where the record of *key* is in the file."""
    engine = store._engine
    assert engine is not None
    kb = key.encode()
    return engine.record_offset(engine.find(kb, engine.fingerprint(kb)))


def test_verify_good_and_corrupt(run: Run, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("good", {"v": 1})
        store.create("bad", {"v": "corrupt-me-please"})
        problem = f"the record at offset {record_offset(store, 'bad')} fails its checksum"
    code, out, _ = run("verify", "--path", path)
    assert (code, out) == (0, f"{path}: ok (2 entries in 8 slots)\n")
    flip_value_byte(path, b"corrupt-me-please")
    code, out, _ = run("verify", "--path", path)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == problem and lines[-1].endswith("1 problem found")
    assert json.loads(run("get", "good", "--path", path)[1]) == {"v": 1}
    code, _, err = run("dump", "--path", path)
    assert code == 4 and "--skip-corrupt" in err
    code, out, err = run("dump", "--skip-corrupt", "--path", path)
    assert code == 0 and [json.loads(line)["key"] for line in out.splitlines()] == ["good"]
    assert err == f"mmapkv: warning: left out: {problem}\n"
    code, _, err = run("compact", "--path", path)
    assert code == 4 and "--skip-corrupt" in err
    code, out, err = run("compact", "--skip-corrupt", "--path", path)
    assert code == 0 and out.endswith(", 1 key\n")
    assert err == f"mmapkv: warning: left out: {problem}\n"
    assert run("verify", "--path", path)[:2] == (0, f"{path}: ok (1 entry in 8 slots)\n")


def test_get_of_a_damaged_entry_reports_and_drops_it(run: Run, path: str) -> None:
    with mmapkv.Store(path) as store:
        store.create("good", {"v": 1})
        store.create("bad", {"v": "corrupt-me-please"})
    flip_value_byte(path, b"corrupt-me-please")
    code, _, err = run("get", "bad", "--path", path)  # reading it is a store problem
    assert code == 4 and "fails its checksum" in err and "dropped" in err
    code, _, err = run("get", "bad", "--path", path)  # dropped on detection: now missing
    assert code == 3 and "not in" in err
    assert run("verify", "--path", path)[:2] == (0, f"{path}: ok (1 entry in 8 slots)\n")


def test_verify_after_a_crash_notes_the_recovery(run: Run, path: str) -> None:
    code = f"""if True:
        import os, mmapkv
        store = mmapkv.Store({path!r})
        store.create("k", {{}})
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", code], check=True)
    code_, out, _ = run("verify", "--path", path)
    assert code_ == 0 and out.startswith("note: the last close was not clean")


def test_compact_shrinks(run: Run, path: str) -> None:
    with mmapkv.Store(path) as store:
        for i in range(100):  # whole-slot values: the file grows to 128 slots
            store.create(f"k{i}", {"i": i, "pad": "x" * 16_000})
        for i in range(95):
            store.delete(f"k{i}")
    before = os.path.getsize(path)
    code, out, _ = run("compact", "--path", path)
    after = os.path.getsize(path)
    assert code == 0 and after < before
    assert out == f"compacted {path}: {before:,} -> {after:,} bytes, 5 keys\n"
    assert run("keys", "--path", path)[1] == "k95\nk96\nk97\nk98\nk99\n"
    assert run("verify", "--path", path)[0] == 0


def test_compact_never_goes_below_the_initial_size(run: Run, path: str) -> None:
    """A new, empty store is 1,691,648 bytes (eight slots after the 1 GiB ceiling's
    directory and slot info); compact leaves it so, as it leaves a store that never grew."""
    assert run("create", "k", "{}", "--path", path)[0] == 0
    assert run("delete", "k", "--path", path)[0] == 0
    assert os.path.getsize(path) == 1_691_648
    assert run("compact", "--path", path)[:2] == \
        (0, f"compacted {path}: 1,691,648 -> 1,691,648 bytes, 0 keys\n")
    assert run("create", "k", '{"small": true}', "--path", path)[0] == 0
    assert run("compact", "--path", path)[:2] == \
        (0, f"compacted {path}: 1,691,648 -> 1,691,648 bytes, 1 key\n")
    assert run("verify", "--path", path)[:2] == (0, f"{path}: ok (1 entry in 8 slots)\n")


# ------------------------------------------------------------------ demo and the default path

def test_demo_on_the_default_store_twice(run: Run, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    default = mmapkv.default_path()
    assert default.startswith(str(tmp_path))
    for n in (1, 2):
        code, out, _ = run("demo")
        assert code == 0
        assert f" in {default} (expires in 60 s)" in out and '"hello": "world"' in out
        assert f"live keys        {n}\n" in out
    keys = run("keys")[1].split()
    assert len(keys) == 2 and all(k.startswith("demo:") for k in keys)


def test_default_path_is_used_and_shown(run: Run, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    code, _, err = run("get", "k")
    assert code == 4 and mmapkv.default_path() in err and "no store" in err
    assert not os.path.exists(mmapkv.default_path())  # reading never creates a store
    code, out, _ = run("get", "--help")
    assert code == 0 and mmapkv.default_path() in "".join(out.split())  # argparse wraps at "-"


def _no_home(answer: str | None) -> Any:
    """platformdirs' user_data_dir where no home directory is known: platformdirs 4 raises
    RuntimeError, 3 answers "~/..." unexpanded; a relative HOME gives a relative path."""
    def user_data_dir(*args: Any, **kwargs: Any) -> str:
        if answer is None:
            raise RuntimeError("could not determine the home directory for '~/.local/share'")
        return answer
    return user_data_dir


@pytest.mark.parametrize("answer", [None, "~/.local/share/mmapkv", "relhome/.local/share/mmapkv"])
def test_no_home_directory_is_a_clear_error_and_path_still_works(
        run: Run, tmp_path: Any, monkeypatch: Any, answer: str | None) -> None:
    """With no usable home, Store() raised platformdirs' RuntimeError, or (platformdirs 3)
    made its store under the working directory, a different one from each directory; every
    command, --path given or not, failed with a traceback, since the parser asked for the
    default path.  Now StoreAccessError (exit 4) and nothing made; --path and --help work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mmapkv.store.platformdirs, "user_data_dir", _no_home(answer))
    monkeypatch.setattr(mmapkv, "_default_store", None)
    for make in (mmapkv.default_path, mmapkv.Store, lambda: mmapkv.create("k", {"v": 1})):
        with pytest.raises(mmapkv.StoreAccessError, match="no user data directory for the default store"):
            make()
    code, _, err = run("create", "k", "{}")
    assert code == 4 and "no user data directory" in err
    assert os.listdir(tmp_path) == []  # no store under the working directory
    assert run("create", "k", "{}", "--path", str(tmp_path / "s"))[0] == 0
    assert run("get", "k", "--path", str(tmp_path / "s"))[1] == "{}\n"
    code, out, _ = run("get", "--help")
    assert code == 0 and "none: no user data directory" in " ".join(out.split())


# ------------------------------------------------------------------ store unavailable (exit 4)

@pytest.mark.parametrize("command", [["get", "k"], ["create", "k", "{}"], ["delete", "k"],
                                     ["keys"], ["stats"], ["dump"], ["verify"], ["compact"],
                                     ["restore", "-"], ["demo"]])
def test_store_held_by_another_process(run: Run, held: str, command: list[str],
                                       monkeypatch: Any) -> None:
    stdin(monkeypatch, b"")
    code, out, err = run(*command, "--path", held)
    assert (code, out) == (4, "") and held in err and "in use" in err


@pytest.mark.parametrize("kind", ["missing", "not a store", "directory"])
def test_unavailable_paths(run: Run, tmp_path: Any, kind: str) -> None:
    target = tmp_path / "x.mmapkv"
    if kind == "not a store":
        target.write_bytes(b"just text\n" * 1000)
    elif kind == "directory":
        target.mkdir()
    for command in (["get", "k"], ["stats"], ["verify"], ["keys"]):
        code, _, err = run(*command, "--path", str(target))
        assert code == 4 and str(target) in err, (command, err)
    if kind == "not a store":
        assert target.read_bytes() == b"just text\n" * 1000


@pytest.mark.parametrize("command", [["stats"], ["get", "k"], ["keys"], ["verify"], ["dump"],
                                     ["compact"],
                                     ["create", "k", "{}"]])
def test_fifo_is_refused_at_once(tmp_path: Any, command: list[str]) -> None:
    fifo = str(tmp_path / "fifo.mmapkv")
    os.mkfifo(fifo)
    # A read-only open() of a FIFO waits for a writer: the timeout turns that hang into a failure.
    done = subprocess.run([sys.executable, "-m", "mmapkv", *command, "--path", fifo],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (cli.EXIT_UNAVAILABLE, "")
    assert done.stderr == f"mmapkv: error: {fifo} is not a regular file\n"


# ------------------------------------------------------------------ usage (exit 2) and the rest

@pytest.mark.parametrize("args", [[], ["nope"], ["get"], ["create", "k"], ["verify", "extra"], ["keys", "--bogus"]])
def test_usage_errors_exit_2(run: Run, args: list[str]) -> None:
    assert run(*args)[0] == 2


@pytest.mark.parametrize("args", [["get", "k", "--path", ""], ["keys", "--path="], ["stats", "--path", ""],
                                  ["create", "k", "{}", "--path", ""], ["copy", "", "out.mmapkv"],
                                  ["copy", "in.mmapkv", ""]])
def test_an_empty_path_is_a_usage_error(run: Run, args: list[str], tmp_path: Any, monkeypatch: Any) -> None:
    """Not the working directory, which the path made absolute names ("no store at
    /home/you", exit 4); nothing is made there."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*args)
    assert (code, out) == (2, "") and "the path is empty" in err
    assert os.listdir(tmp_path) == []


def test_help_for_every_command(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("get", "create", "delete", "keys", "stats", "dump", "restore", "verify",
                    "compact", "demo"):
        assert command in out
        code, out_, _ = run(command, "--help")
        assert code == 0 and "--path" in out_


def test_version(run: Run) -> None:
    assert run("--version")[:2] == (0, f"mmapkv {mmapkv.__version__}\n")


def test_internal_error_is_one_line(run: Run, path: str, monkeypatch: Any) -> None:
    def boom(args: Any) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_keys", boom)
    mmapkv.Store(path).close()
    code, _, err = run("keys", "--path", path)
    assert code == cli.EXIT_INTERNAL and "RuntimeError: boom second line" in err


def test_progress_bar_only_on_a_terminal(run: Run, path: str, tmp_path: Any, monkeypatch: Any) -> None:
    with mmapkv.Store(path) as store:
        store.create("a", {})
    dump_file = str(tmp_path / "d.jsonl")
    commands = {"dumping": ["dump", dump_file, "--force"], "verifying": ["verify"], "compacting": ["compact"],
                "scanning": ["stats"], "restoring": ["restore", dump_file, "--skip-existing"]}
    for args in commands.values():
        assert run(*args, "--path", path)[2] == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for label, args in commands.items():
        code, out, err = run(*args, "--path", path)
        assert code == 0 and f"\r{label} [" in err and "100%" in err, label
        assert "\r" not in out  # the bar never mixes into the output
    assert run("get", "a", "--path", path)[2] == ""  # single-key commands draw none


@pytest.mark.parametrize("args", [["mmapkv.stats", "{path}"], ["mmapkv.stats", "{path}", "--json"],
                                  ["mmapkv", "stats", "--path", "{path}"], ["mmapkv", "keys", "--path", "{path}"],
                                  ["mmapkv", "dump", "--path", "{path}"]])
def test_reader_gone_is_a_quiet_exit_141(path: str, args: list[str]) -> None:
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    # `... | head` whose head has quit already: every write fails, deterministically.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", *(a.format(path=path) for a in args)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (cli.EXIT_BROKEN_PIPE, "")


def test_python_dash_m(path: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mmapkv", "create", "k", '{"x": 1}', "--path", path],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "mmapkv", "get", "nope", "--path", path],
                          capture_output=True, text=True)
    assert done.returncode == 3 and done.stderr.startswith("mmapkv: error: ")
    assert "Traceback" not in done.stderr


def test_output_in_an_encoding_without_the_characters(tmp_path: Any) -> None:
    path = str(tmp_path / "café.mmapkv")
    key, value = "café:☃", {"ü": "emoji 😀", "n": 1}
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}

    def mmapkv_cli(*args: str, input: bytes = b"") -> str:
        done = subprocess.run([sys.executable, "-m", "mmapkv", *args, "--path", path], input=input,
                              capture_output=True, env=env, timeout=60)
        assert (done.returncode, done.stderr) == (0, b""), (args, done.stderr)
        return done.stdout.decode("ascii")  # nothing but ASCII, and nothing lost

    mmapkv_cli("create", key, "-", input=json.dumps(value, ensure_ascii=False).encode())
    assert json.loads(mmapkv_cli("get", key)) == value
    assert mmapkv_cli("get", key) == '{"\\u00fc":"emoji \\ud83d\\ude00","n":1}\n'
    assert mmapkv_cli("keys") == "caf\\u00e9:\\u2603\n"
    entry = json.loads(mmapkv_cli("dump"))
    assert (entry["key"], entry["value"]) == (key, value)
    assert "caf\\u00e9.mmapkv" in mmapkv_cli("stats") and "ok (1 entry" in mmapkv_cli("verify")
    done = subprocess.run([sys.executable, "-m", "mmapkv.stats", path, "--json"],
                          capture_output=True, env=env, timeout=60)
    assert json.loads(done.stdout)["path"] == path
    done = subprocess.run([sys.executable, "-m", "mmapkv", "keys", "--path", path], capture_output=True,
                          env={**env, "PYTHONIOENCODING": "ascii:replace"}, timeout=60)
    assert done.stdout == b"caf?:?\n"  # an error handler the user chose is theirs


@pytest.mark.parametrize("command", ["restore", "copy"])
def test_ctrl_c_in_a_restore_or_copy_into_a_new_store(run: Run, tmp_path: Any, path: str, capsys: Any,
                                                     monkeypatch: Any, command: str) -> None:
    """Ctrl-C in ``restore DUMP --path NEW`` (here just after its commit) or in a ``copy``
    to a new store: the store the command made goes, and the exit is 130.  The close
    after its removal took that for another program's deletion: exit 4 and "was deleted
    while this Store had it open (by another program?)"."""
    source = str(tmp_path / "source.mmapkv")
    with mmapkv.Store(source) as store:
        store.create("k", {"v": 1})
    dump_file = str(tmp_path / "dump.jsonl")
    assert run("dump", dump_file, "--path", source)[0] == 0
    if command == "restore":
        real_restore = transfer.restore

        def restore_then_interrupted(*args: Any, **kwargs: Any) -> Any:
            real_restore(*args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(transfer, "restore", restore_then_interrupted)
        code, _, err = run("restore", dump_file, "--path", path)
    else:
        def interrupted(self: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(migrate.Copy, "run", interrupted)
        code = cli.main(["copy", source, path])  # not run(): a copy cut short adds a line
        err = capsys.readouterr().err
    assert code == 130 and "deleted" not in err, err
    assert not os.path.exists(path)
