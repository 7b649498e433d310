"""Rival processes: while one process holds a store, every other open is refused.

A holder child (``fault_child.py holder``) opens the store and keeps it: idle, writing
from a thread, or frozen in the middle of a growth (the file already extended, the map
not yet).  Meanwhile several rival processes try to open it again and again (one of them
with a short ``lock_timeout``), and so does this process: every attempt must raise
``StoreLockedError`` naming the path.  Then the holder closes the store or is killed with
SIGKILL, and the next rival gets in, finds a sound store and can write.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from typing import Any

import pytest

import mmapkv
from fault_child import child_command, child_env, write_report
from mmapkv.format import Geometry

ATTEMPTS = 25
TIMEOUT = 60.0  # a deadlock guard only


class Proc:
    """A child speaking JSON lines on stdout and reading commands on stdin."""

    def __init__(self, mode: str, args: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(child_command(mode, args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        self.buffer = b""

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], TIMEOUT)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                assert self.proc.stderr is not None
                raise AssertionError(f"child gave no line: {self.proc.stderr.read().decode()[-2000:]}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def expect(self, event: str) -> dict[str, Any]:
        while True:
            line = self.line()
            assert line["ev"] != "error", line.get("trace")
            if line["ev"] == event:
                return line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def rivals_all_refused(path: str) -> int:
    """Three rival processes and this one try to open *path*; all must be refused."""
    rivals = [Proc("rival", {"path": path, "attempts": ATTEMPTS}) for _ in range(2)]
    rivals.append(Proc("rival", {"path": path, "attempts": 3, "lock_timeout": 0.05}))
    for _ in range(5):
        with pytest.raises(mmapkv.StoreLockedError, match="in use"):
            mmapkv.Store(path)
    tried = 5
    for rival in rivals:
        done = rival.expect("done")
        rival.finish()
        attempts = done["locked"] + done["opened"] + done["other"]
        assert done["locked"] == attempts, f"a rival got in or failed otherwise: {done}"
        assert done["messages_with_path"] == attempts
        tried += attempts
    return tried


@pytest.mark.parametrize("ending", ["close", "kill"])
@pytest.mark.parametrize("mode", ["idle", "writing", "growing"])
def test_only_one_process_holds_the_store(tmp_path: Any, mode: str, ending: str) -> None:
    """Refused at every instant while held; the next opener gets in once it is released."""
    path = os.path.join(tmp_path, "held.mmapkv")
    holder = Proc("holder", {"path": path, "mode": mode})
    refused = 0
    try:
        holder.expect("ready")
        if mode == "writing":
            holder.expect("writing")
        elif mode == "growing":
            holder.expect("paused")  # the file is being doubled right now
        refused += rivals_all_refused(path)
        if mode == "growing":
            holder.send("resume")
            grown = holder.expect("grown")
            assert grown["file_size"] > Geometry(mmapkv.MAX_FILE_SIZE).initial_size
            refused += rivals_all_refused(path)
        if ending == "close":
            holder.send("close")
            holder.expect("closed")
        else:
            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait()
            assert holder.proc.returncode == -signal.SIGKILL
        after = Proc("rival", {"path": path, "attempts": 1, "write": True})
        done = after.expect("done")
        after.finish()
        assert done["opened"] == 1 and done["locked"] == 0, done
        assert done["verify"] == []
        with mmapkv.Store(path) as store:
            assert store.read("rival-was-here")
            assert store.verify() == []
            if mode == "growing":
                assert len([k for k in store.keys() if k.startswith("g")]) == 64
    finally:
        holder.finish()
    write_report("fault_rivals", {"holder scenarios": 1, "rival opens refused": refused})


def test_second_store_in_the_same_process_is_refused(tmp_path: Any) -> None:
    """Two Stores on one file in one process: the second is refused until the first closes."""
    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as first:
        first.create("k", {"v": 1})
        with pytest.raises(mmapkv.StoreLockedError):
            mmapkv.Store(path)
        assert first.read("k") == {"v": 1}
    with mmapkv.Store(path) as second:
        assert second.read("k") == {"v": 1}
