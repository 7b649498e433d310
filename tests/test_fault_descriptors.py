"""Out of file descriptors: every call that needs one fails with ``StoreAccessError`` (an
``MmapKVError`` and ``OSError``, errno ``EMFILE``), changes nothing and leaves no file.

A store holds two descriptors: its file, and the one ``mmap`` duplicates for its map.  A
child process uses up all but *free* of its descriptors, for real, and then opens a store,
grows one whose map cannot be extended in place, and compacts one.  Before these fixes an
open with one descriptor free and a compact raised Python's bare ``OSError``, a compact
left its temporary file beside the store, and a growth that could not map the bigger file
had already unmapped the old one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

CHILD = r'''
import errno, json, os, sys
import mmapkv
from mmapkv import transfer

directory, free, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
path = os.path.join(directory, "s.mmapkv")
VALUE = {"pad": "x" * 12_000}  # a whole slot each: the file grows every few creates


def use_up_descriptors():
    """Open /dev/null until the process has none left, then close *free* of them."""
    taken = []
    try:
        while True:
            taken.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    for fd in taken[len(taken) - free:] if free else []:
        os.close(fd)
    return taken[:len(taken) - free]


def outcome(call):
    try:
        call()
    except mmapkv.MmapKVError as exc:
        return [type(exc).__name__, exc.errno if isinstance(exc, OSError) else None, str(exc)]
    except Exception as exc:
        return ["foreign " + type(exc).__name__, getattr(exc, "errno", None), str(exc)]
    return ["ok", None, ""]


report = {}
if action == "open":
    if sys.argv[4] == "existing":
        mmapkv.Store(path).close()
    taken = use_up_descriptors()
    report["outcome"] = outcome(lambda: mmapkv.Store(path).close())
    for fd in taken:
        os.close(fd)
elif action == "grow":
    store = mmapkv.Store(path, max_size=4 << 20)
    store.create("k0", VALUE)
    engine = store._engine
    held = engine.get(b"k0", engine.fingerprint(b"k0"))[0]  # mremap is refused while a view is held
    size = os.path.getsize(path)
    taken = use_up_descriptors()
    n = 1
    while os.path.getsize(path) == size and n < 40:
        result = outcome(lambda: store.create(f"k{n}", VALUE))
        if result[0] != "ok":
            break
        n += 1
    report["outcome"] = result
    report["size kept"] = os.path.getsize(path) == size
    report["reads after"] = all(store.read(f"k{i}") == VALUE for i in range(n))
    report["held view reads"] = json.loads(bytes(held)) == VALUE
    report["verify"] = store.verify()
    for fd in taken:
        os.close(fd)
    held.release()
    store.create(f"k{n}", VALUE)  # the growth that failed, with descriptors to spare
    report["grew after"] = os.path.getsize(path) > size
    report["keys"] = len(store)
    store.close()
    with mmapkv.Store(path) as store:
        report["keys after reopen"] = len(store)
        report["verify after reopen"] = store.verify()
elif action == "compact":
    store = mmapkv.Store(path)
    store.batch_create({f"k{i}": {"i": i} for i in range(200)})
    for i in range(0, 200, 2):
        store.delete(f"k{i}")
    taken = use_up_descriptors()
    report["outcome"] = outcome(lambda: transfer.compact(store))
    for fd in taken:
        os.close(fd)
    report["files"] = sorted(os.listdir(directory))
    report["keys"] = set(store.keys()) == {f"k{i}" for i in range(1, 200, 2)}
    report["verify"] = store.verify()
    store.close()
print(json.dumps(report))
'''


def run_child(tmp_path: Any, free: int, action: str, *args: str) -> dict[str, Any]:
    """The child above, with a limit of 64 descriptors: quick to use up."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
    done = subprocess.run([sys.executable, "-c", limit + CHILD, str(tmp_path), str(free), action, *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="resource.RLIMIT_NOFILE is POSIX")


@pytest.mark.parametrize("which", ["new", "existing"])
@pytest.mark.parametrize("free", [0, 1])
def test_open_without_descriptors(tmp_path: Any, free: int, which: str) -> None:
    """No descriptor (the file cannot be opened) or one (it can, but not mapped).  A new
    store's file is made before it is opened, so with one free it stays, a complete empty
    store, and the next open with descriptors to spare uses it."""
    kind, code, message = run_child(tmp_path, free, "open", which)["outcome"]
    assert (kind, code) == ("StoreAccessError", 24), message
    assert "s.mmapkv" in message and "Too many open files" in message
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary file left


def test_open_with_two_descriptors(tmp_path: Any) -> None:
    """The control: two free descriptors are all a store needs."""
    assert run_child(tmp_path, 2, "open", "new")["outcome"][0] == "ok"


def test_growth_without_a_descriptor_keeps_the_old_map(tmp_path: Any) -> None:
    report = run_child(tmp_path, 0, "grow")
    kind, code, message = report["outcome"]
    assert (kind, code) == ("StoreAccessError", 24), message
    assert report["size kept"] and report["reads after"] and report["held view reads"], report
    assert report["verify"] == [] and report["verify after reopen"] == [], report
    assert report["grew after"], report
    assert report["keys"] == report["keys after reopen"] > 1, report


@pytest.mark.parametrize("free", [0, 1])
def test_compact_without_descriptors_changes_nothing(tmp_path: Any, free: int) -> None:
    """Compact needs two more descriptors for its new file: with fewer, it fails before
    the switch, removes that file, and the store goes on as it was."""
    report = run_child(tmp_path, free, "compact")
    kind, code, message = report["outcome"]
    assert (kind, code) == ("StoreAccessError", 24), message
    assert report["files"] == ["s.mmapkv"], report  # no temporary file left
    assert report["keys"] and report["verify"] == [], report


def test_compact_with_descriptors_to_spare(tmp_path: Any) -> None:
    """The control: two free are enough (the new file and its map; the directory is
    synced after the old file's two are closed)."""
    report = run_child(tmp_path, 2, "compact")
    assert report["outcome"][0] == "ok" and report["files"] == ["s.mmapkv"], report
    assert report["keys"] and report["verify"] == [], report
