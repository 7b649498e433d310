"""Real Ctrl-C from outside: SIGINTs fired at a working process, over chains of sessions.

A child (``fault_child.py sigint``) makes random calls (create, delete, batch_create,
restore, compact) on a small store while this process sends it SIGINT at random
intervals of a fraction of a millisecond to a few milliseconds.  After each interrupted
call the child reads the whole store back and reports a violation unless it holds the
state before the call or after it, and ``verify()`` is clean.  Each session ends with a
clean close (SIGTERM) or a SIGKILL; the next session starts on the same file, and this
process checks in between that the file holds the last state the child reported (or, after
a kill, that state with the call in flight applied).

``MMAPKV_SIGINT_SESSIONS`` sets the sessions per seed (default 6).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import mmapkv
from fault_child import child_command, child_env, write_report
from mmapkv.format import Geometry

SESSIONS = int(os.environ.get("MMAPKV_SIGINT_SESSIONS", "6"))
MAX_SIZE = Geometry.smallest_max_size() * 4


class Session:
    def __init__(self, args: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(child_command("sigint", args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env())
        self.buffer = b""
        self.events: list[dict[str, Any]] = []

    def pump(self, timeout: float) -> bool:
        """Read what the child said within *timeout*; False at end of output."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        self.events.extend(json.loads(line) for line in lines if line)
        return True


def _state(path: str) -> dict[str, int]:
    with mmapkv.Store(path) as store:
        assert store.verify() == []
        return {k: store.read(k)["nonce"] for k in store.keys()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigint_storm_keeps_every_call_whole(tmp_path: Any, seed: int) -> None:
    rng = random.Random(seed)
    path = os.path.join(tmp_path, "sigint.mmapkv")
    expected: dict[str, int] | None = None
    counts = {"sessions": 0, "sigints sent": 0, "calls": 0, "interrupted calls": 0,
              "sessions killed": 0}
    for session in range(SESSIONS):
        child = Session({"path": path, "seed": rng.randrange(2**32), "max_size": MAX_SIZE,
                         "first": 10**7 * session})
        while not any(e["ev"] == "ready" for e in child.events):
            assert child.pump(60.0), child.proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        ready = next(e for e in child.events if e["ev"] == "ready")
        if expected is not None:
            assert ready["model"] == expected, f"seed {seed} session {session}: the file lost or invented"
        for _ in range(rng.randint(40, 160)):
            time.sleep(rng.uniform(0.0002, 0.004))
            child.proc.send_signal(signal.SIGINT)
            counts["sigints sent"] += 1
            assert child.pump(0.0), f"the child died: {child.proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        kill = rng.random() < 0.4
        child.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + 60
        while child.pump(1.0):
            if time.monotonic() > deadline:  # fail, not hang: say where the child is stuck
                child.proc.send_signal(signal.SIGUSR1)  # faulthandler prints its stack
                time.sleep(1)
                child.proc.kill()
                stderr = child.proc.communicate()[1].decode()
                pytest.fail(f"seed {seed} session {session}: the child did not end within 60 s of "
                            f"SIGTERM; its last events {child.events[-3:]}; its stack:\n{stderr[-3000:]}")
        child.proc.wait()
        stderr = child.proc.stderr.read().decode()  # type: ignore[union-attr]
        violations = [e for e in child.events if e["ev"] == "violation"]
        assert not violations, f"seed {seed} session {session}: {violations[:3]}"
        counts["sessions"] += 1
        if kill:
            counts["sessions killed"] += 1
            last = max((i for i, e in enumerate(child.events) if "model" in e), default=0)
            model = child.events[last]["model"]
            pending = [e["after"] for e in child.events[last + 1:] if e["ev"] == "begin"]
            state = _state(path)
            assert state in (model, *pending[:1]), f"seed {seed} session {session}: after the kill"
            expected = state
        else:
            assert child.proc.returncode == 0, stderr[-3000:]
            closed = child.events[-1]
            assert closed["ev"] == "closed", stderr[-3000:]
            counts["calls"] += closed["calls"]
            counts["interrupted calls"] += closed["interrupted"]
            expected = closed["model"]
            assert _state(path) == expected
    write_report("fault_sigint", counts)
    assert counts["interrupted calls"] > 0, "no SIGINT landed inside a call: the test proves nothing"


HANDLER_CHILD = r'''
import json, os, signal, sys
import mmapkv

store = mmapkv.Store(sys.argv[1])
counts = {"signals": 0, "written by the handler": 0, "refused in the handler": 0, "refused in main": 0}
written = {}  # what main wrote last, per key

def handler(signum, frame):  # saves state on a signal, as a shutdown handler would
    counts["signals"] += 1
    signal.setitimer(signal.ITIMER_REAL, 0)  # no signal inside this one
    try:
        store.set("last-signal", {"n": counts["signals"]})
        counts["written by the handler"] += 1
    except mmapkv.ReentrantCallError:
        counts["refused in the handler"] += 1
    signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))
for i in range(int(sys.argv[3])):
    key, value = f"k{i % 300}", {"i": i, "pad": "x" * (i % 2000)}
    try:
        store.set(key, value)
        written[key] = value
    except mmapkv.ReentrantCallError:
        counts["refused in main"] += 1
signal.setitimer(signal.ITIMER_REAL, 0)
counts["verify"] = store.verify()
counts["main's values kept"] = all(store.read(k) == v for k, v in written.items())
store.close()
print(json.dumps(counts))
'''


def test_a_signal_handler_that_uses_the_store_never_hangs(tmp_path: Any) -> None:
    """A SIGALRM handler calls ``set`` while the main thread is in ``set`` calls of its own.
    When the signal lands inside one, the handler's call is refused (``ReentrantCallError``)
    instead of waiting forever for the lock its own thread holds, as it did; main's calls all
    complete, every value main wrote reads back, and ``verify()`` is clean."""
    path = os.path.join(tmp_path, "handler.mmapkv")
    try:
        done = subprocess.run([sys.executable, "-c", HANDLER_CHILD, path, "0.002", "20000"],
                              capture_output=True, text=True, timeout=120, env=child_env())
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung: a handler's call waited for the lock its own thread held")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["verify"] == [] and counts["main's values kept"], counts
    assert counts["refused in main"] == 0, counts
    assert counts["refused in the handler"] > 0, f"no signal landed inside a call: {counts}"
    assert counts["written by the handler"] > 0, counts
    write_report("sigint_handler", counts)
