"""What a killed compact (or create) leaves beside a store is removed, and nothing else is.

Issue 10, item 10: a compact killed part way left its temporary file beside the store
for good.  Now the next open (which recovers: compact marks the store unclean first) or
the next compact removes it, but only a file that is ours and abandoned.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

import mmapkv
from fault_child import child_env
from mmapkv import transfer
from mmapkv.engine import create_file
from mmapkv.format import Geometry
from mmapkv.tempfiles import remove_abandoned, temporary_path

SMALL = Geometry.smallest_max_size() * 4


def _siblings(path: str) -> list[str]:
    base = os.path.basename(path)
    return sorted(n for n in os.listdir(os.path.dirname(path)) if n != base)


def test_a_killed_compact_leaves_nothing_behind_after_the_next_open(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path, max_size=SMALL) as store:
        for i in range(20):
            store.create(f"k{i}", {"i": i, "pad": "x" * 3000})
    code = f"""if True:
        import os, signal, mmapkv
        from mmapkv import engine, transfer
        real = engine.Engine.insert
        seen = [0]
        def insert(self, *args, **kwargs):
            seen[0] += 1
            if seen[0] == 10 and self.path != {path!r}:  # inside the compact's new file
                print("paused", flush=True)
                signal.pause()
            return real(self, *args, **kwargs)
        engine.Engine.insert = insert
        store = mmapkv.Store({path!r})
        transfer.compact(store)
    """
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=child_env())
    assert child.stdout is not None
    assert child.stdout.readline() == b"paused\n"
    assert len(_siblings(path)) == 1, "the compact's temporary file should exist now"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with mmapkv.Store(path) as store:
        assert store._engine is not None and not store._engine.was_clean  # it recovered
        assert sorted(store.keys(), key=lambda k: int(k[1:])) == [f"k{i}" for i in range(20)]
        assert store.verify() == []
    assert _siblings(path) == []


def test_a_killed_create_leaves_nothing_behind_once_the_store_is_made(tmp_path: Any) -> None:
    """A process killed while it built a new store's file (after its sync, before the
    link) left the temporary file for good: only an open that recovers removed them, and
    a new file is clean.  The open that makes the store now removes it."""
    path = os.path.join(tmp_path, "s.mmapkv")
    code = f"""if True:
        import os, signal, mmapkv
        from mmapkv import engine
        real = os.fsync
        def fsync(fd):
            real(fd)
            print("paused", flush=True)
            signal.pause()
        engine.os.fsync = fsync
        mmapkv.Store({path!r}, max_size={SMALL})
    """
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=child_env())
    assert child.stdout is not None
    assert child.stdout.readline() == b"paused\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not os.path.exists(path) and len(os.listdir(tmp_path)) == 1  # the temporary file
    with mmapkv.Store(path, max_size=SMALL) as store:
        store.create("k", {"v": 1})
    assert os.listdir(tmp_path) == ["s.mmapkv"]


def test_only_abandoned_files_of_ours_are_removed(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "s.mmapkv")
    mmapkv.Store(path).close()
    dead = temporary_path(path, "compact")
    create_file(dead, SMALL, in_place=True)           # ours, nobody holds it: goes
    empty = temporary_path(path, "create")
    open(empty, "wb").close()                          # ours, killed before its first byte: goes
    alive = temporary_path(path, "compact")
    create_file(alive, SMALL, in_place=True)
    holder = mmapkv.Store(alive)                       # ours, but a live process holds it: stays
    foreign = temporary_path(path, "compact")
    with open(foreign, "w") as f:                      # our name pattern, not our content: stays
        json.dump({"not": "a store"}, f)
    lookalike = os.path.join(tmp_path, ".s.mmapkv.compact-nothex.tmp")
    open(lookalike, "wb").close()                      # not quite our pattern: stays
    other_store = os.path.join(tmp_path, ".t.mmapkv.compact-0123456789abcdef.tmp")
    create_file(other_store, SMALL, in_place=True)     # another store's: stays
    removed = remove_abandoned(path)
    assert sorted(removed) == sorted([dead, empty])
    assert all(os.path.exists(p) for p in (alive, foreign, lookalike, other_store))
    holder.close()
    assert remove_abandoned(path) == [alive]


def test_compact_removes_what_an_earlier_compact_left(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    left = temporary_path(path, "compact")
    create_file(left, SMALL, in_place=True)
    with mmapkv.Store(path) as store:  # a clean open does not look (it costs a listdir)
        assert os.path.exists(left)
        transfer.compact(store)
        assert store.read("k") == {"v": 1}
    assert _siblings(path) == []


def test_temporary_files_of_a_linked_store_are_beside_its_target(tmp_path: Any) -> None:
    """Through a symbolic link, a store's temporary files are named and looked for beside
    the file it names, where compact builds and renames them."""
    os.mkdir(tmp_path / "real")
    target, link = os.path.join(tmp_path, "real", "s.mmapkv"), os.path.join(tmp_path, "link.mmapkv")
    mmapkv.Store(target).close()
    os.symlink(target, link)
    left = temporary_path(link, "compact")
    assert os.path.dirname(left) == os.path.dirname(target)
    assert os.path.basename(left).startswith(".s.mmapkv.compact-")
    create_file(left, SMALL, in_place=True)
    assert remove_abandoned(link) == [left] and _siblings(target) == []


class _InterruptAfter:
    """``os`` for the engine module, but *name* raises ``KeyboardInterrupt`` right after
    its first call on the new store's temporary file returns: where CPython raises a
    real Ctrl-C's exception, once the system call is done."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.temporary_fds: list[int] = []
        self.fired = False

    def __getattr__(self, attribute: str) -> Any:
        real = getattr(os, attribute)
        if attribute not in (self.name, "open"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            temporary = ".create-" in str(args[0]) or (attribute == "close" and args[0] in self.temporary_fds)
            if attribute == "open" and ".create-" in str(args[0]):
                self.temporary_fds.append(result)
            if attribute == self.name and temporary and not self.fired:
                self.fired = True
                raise KeyboardInterrupt
            return result
        return call


@pytest.mark.parametrize("call", ["open", "link", "unlink", "close"])
def test_ctrl_c_after_a_system_call_of_a_create_leaves_no_temporary_name(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """A new store is built under a temporary name, then linked to its path.  Ctrl-C just
    after the temporary file's open left it behind; just after its descriptor's close
    (which came before the name's removal) it left the name as a second link to the new
    store, which nothing removes while the store is open.  Either way the next Store
    opens the path."""
    from mmapkv import engine as engine_module
    from mmapkv import locking as locking_module
    path = os.path.join(tmp_path, "s.mmapkv")
    fake_os = _InterruptAfter(call)
    monkeypatch.setattr(engine_module, "os", fake_os)
    monkeypatch.setattr(locking_module, "os", fake_os)  # where the temporary file is opened
    if call == "close":  # the engine closes it through the FileIO that owns it

        class InterruptedAfterClose(io.FileIO):
            def close(self) -> None:
                fd = self.fileno() if not self.closed else -1
                super().close()
                if fd in fake_os.temporary_fds and not fake_os.fired:
                    fake_os.fired = True
                    raise KeyboardInterrupt

        monkeypatch.setattr(engine_module, "opened", lambda path, readonly=False, new=False: InterruptedAfterClose(
            path, "x+", opener=functools.partial(fake_os.open, mode=0o600)))
    with pytest.raises(KeyboardInterrupt):
        mmapkv.Store(path, max_size=SMALL)
    monkeypatch.undo()
    assert fake_os.fired
    if call == "open":  # the interrupt took the descriptor before anyone held it
        os.close(fake_os.temporary_fds[0])
    assert _siblings(path) == []
    with mmapkv.Store(path, max_size=SMALL) as store:
        store.create("k", {"v": 1})
        assert store.verify() == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_an_interrupt_where_an_abandoned_file_is_let_go_leaves_no_descriptor(tmp_path: Any) -> None:
    """``remove_abandoned`` held each candidate by its number, locked, and closed it in a
    ``finally``: an interrupt there kept the descriptor and the lock on the unlinked file
    (a review).  Interrupted at its last points, it leaves no descriptor open."""
    from interrupts import interrupt_the_last
    from mmapkv.tempfiles import remove_abandoned, temporary_path
    path = os.path.join(tmp_path, "s.mmapkv")
    mmapkv.Store(path, max_size=SMALL).close()
    leftover = temporary_path(path, "compact")

    def fresh() -> None:
        for name in _siblings(path):
            os.unlink(os.path.join(tmp_path, name))
        shutil.copyfile(path, leftover)  # what a killed compact leaves

    assert interrupt_the_last(lambda: remove_abandoned(path), fresh, 16) == 16
