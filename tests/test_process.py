"""Processes, threads, fork and crashes: the one-process lock (also across processes and
while growing), lock_timeout, a killed holder, a forked child, many threads, kill -9 of a
writing child, durable=True/flush(), and recovery after a simulated crash."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import mmapkv
from mmapkv import KeyExistsError, KeyNotFoundError, StoreClosedError, StoreLockedError

REPO = str(Path(__file__).resolve().parents[1])
CHILD_TIMEOUT = 60  # seconds; only a hang ever gets near it

# A child that tries to open the store: exit 3 and the message if locked, else 0 and its keys.
TRY_OPEN = """
import json, sys, mmapkv
try:
    store = mmapkv.Store(sys.argv[1])
except mmapkv.StoreLockedError as exc:
    print(exc)
    sys.exit(3)
print(json.dumps({k: store.read(k) for k in store.keys()}))
store.close()
"""

# A child that opens the store, writes one key, says "ready", then holds the store until a
# line arrives on stdin (or until it is killed).
HOLDER = """
import sys, mmapkv
store = mmapkv.Store(sys.argv[1])
store.create("held", {"by": "child"})
print("ready", flush=True)
sys.stdin.readline()
store.close()
print("closed", flush=True)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter and wait for it."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Start *code* in a fresh interpreter with pipes on stdin and stdout."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == expected, f"child said {line!r}, exit code {proc.poll()}"


def assert_locked_for_other_process(path: str) -> None:
    """A separate process is refused with StoreLockedError naming the path."""
    result = run_child(TRY_OPEN, path)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert path in result.stdout


def contents(store: mmapkv.Store) -> dict[str, Any]:
    return {key: store.read(key) for key in store.keys()}


@pytest.fixture
def path(tmp_path: Any) -> str:
    return os.path.join(tmp_path, "proc.mmapkv")


# --------------------------------------------------------------------- the lock

def test_second_store_in_same_process_is_refused(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Store on the same file, by the same, a relative or a symlinked path, is
    StoreLockedError naming the path; the refusals do not weaken the holder's lock."""
    holder = mmapkv.Store(path)
    holder.create("a", {"v": 1})
    link = path + ".link"
    os.symlink(path, link)
    monkeypatch.chdir(os.path.dirname(path))
    for other in (path, os.path.basename(path), link):
        with pytest.raises(StoreLockedError) as info:
            mmapkv.Store(other)
        assert isinstance(info.value, OSError)
        assert os.path.basename(path) in str(info.value)
    with pytest.raises(StoreLockedError) as info:
        mmapkv.Store(path)
    assert path in str(info.value)
    assert_locked_for_other_process(path)  # closing the refused descriptors kept the lock
    assert holder.read("a") == {"v": 1}
    holder.close()
    with mmapkv.Store(path) as second:
        assert second.read("a") == {"v": 1}


def test_second_process_is_refused_until_holder_closes(path: str) -> None:
    """Another process gets StoreLockedError naming the path; after close it opens the store
    and sees the data."""
    store = mmapkv.Store(path)
    store.create("a", {"v": 1})
    assert_locked_for_other_process(path)
    store.close()
    result = run_child(TRY_OPEN, path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"a": {"v": 1}}


def test_parent_refused_while_child_holds(path: str) -> None:
    """While a child process holds the store, this process is refused at once."""
    proc = spawn(HOLDER, path)
    try:
        wait_for_line(proc, "ready")
        with pytest.raises(StoreLockedError) as info:
            mmapkv.Store(path)
        assert path in str(info.value)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        wait_for_line(proc, "closed")
        assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
    with mmapkv.Store(path) as store:
        assert store.read("held") == {"by": "child"}
        assert store._engine is not None and store._engine.was_clean


def test_lock_timeout_waits_for_holder(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With lock_timeout the open waits for the holder to let go and then succeeds. The
    holder is told to close at the first refused attempt, so the wait really happens."""
    import mmapkv.locking

    proc = spawn(HOLDER, path)
    try:
        wait_for_line(proc, "ready")
        with pytest.raises(StoreLockedError):
            mmapkv.Store(path)  # the default timeout of 0 does not wait
        real_lock = mmapkv.locking.portalocker.lock
        refused: list[int] = []

        def lock_then_release_holder(fd: Any, flags: Any) -> Any:
            try:
                return real_lock(fd, flags)
            except Exception:
                if not refused:
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                refused.append(1)
                raise

        monkeypatch.setattr(mmapkv.locking.portalocker, "lock", lock_then_release_holder)
        with mmapkv.Store(path, lock_timeout=CHILD_TIMEOUT) as store:
            assert refused, "the first attempt should have found the store locked"
            assert store.read("held") == {"by": "child"}
            assert store.verify() == []
        assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()


def test_lock_timeout_expires(path: str) -> None:
    """A lock_timeout that runs out is StoreLockedError saying it waited."""
    with mmapkv.Store(path):
        with pytest.raises(StoreLockedError) as info:
            mmapkv.Store(path, lock_timeout=0.01)
        assert path in str(info.value) and "wait" in str(info.value)


@pytest.mark.parametrize("portalocker_error", ["LockException", "AlreadyLocked"])
def test_lock_failure_is_not_taken_for_a_rival(path: str, monkeypatch: pytest.MonkeyPatch,
                                               portalocker_error: str) -> None:
    """flock failing for another reason than a holder (ENOLCK: a network file system
    without locks) is StoreAccessError with that errno, at once and not "in use by another
    process", whichever class portalocker wraps it in (2.7 used LockException for every
    errno); a held lock (EAGAIN) is still StoreLockedError.  The file is left as it was."""
    import errno

    import portalocker

    import mmapkv.locking

    with mmapkv.Store(path) as store:
        store.create("kept", {"v": 1})
    with open(path, "rb") as f:
        before = f.read()
    wrapper = getattr(portalocker, portalocker_error)

    def failing_lock(fd: Any, flags: Any) -> None:
        cause = OSError(failing_errno, os.strerror(failing_errno))
        raise wrapper(cause, str(cause)) from cause

    monkeypatch.setattr(mmapkv.locking.portalocker, "lock", failing_lock)
    failing_errno = errno.ENOLCK
    with pytest.raises(mmapkv.StoreAccessError) as info:
        mmapkv.Store(path, lock_timeout=0.2)  # not waited out as a rival would be
    assert not isinstance(info.value, StoreLockedError)
    assert info.value.errno == errno.ENOLCK and path in str(info.value)
    failing_errno = errno.EAGAIN
    with pytest.raises(StoreLockedError):
        mmapkv.Store(path)
    with open(path, "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "1", True, None])
def test_bad_lock_timeout(path: str, bad: Any) -> None:
    """lock_timeout must be a finite number of seconds >= 0."""
    with pytest.raises(mmapkv.InvalidArgumentError):
        mmapkv.Store(path, lock_timeout=bad)


def test_killed_holder_releases_lock(path: str) -> None:
    """A holder killed with SIGKILL loses its lock; the store then opens, recovers (it was
    not closed cleanly) and holds the holder's data."""
    proc = spawn(HOLDER, path)
    try:
        wait_for_line(proc, "ready")
        assert_locked_for_other_process(path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    with mmapkv.Store(path) as store:
        assert store._engine is not None and not store._engine.was_clean
        assert store.read("held") == {"by": "child"}
        assert store.verify() == []
        store.create("after", {"v": 1})


def test_lock_released_when_holder_dies_leaving_a_child(path: str) -> None:
    """A killed holder's lock is released even if it started a process that outlives it:
    the store's descriptors are not inherited across exec."""
    spawner = """
    import subprocess, sys, mmapkv
    store = mmapkv.Store(sys.argv[1])
    store.create("held", {"by": "spawner"})
    helper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE, close_fds=False)
    print(helper.pid, flush=True)
    sys.stdin.readline()
    """
    proc = spawn(spawner, path)
    helper_pid = 0
    try:
        assert proc.stdout is not None
        helper_pid = int(proc.stdout.readline())
        assert_locked_for_other_process(path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
    try:
        with mmapkv.Store(path) as store:
            assert store.read("held") == {"by": "spawner"}
            assert store.verify() == []
    finally:
        if helper_pid:
            os.kill(helper_pid, signal.SIGKILL)


def test_lock_holds_while_file_grows(path: str) -> None:
    """While the holder grows its file through several doublings, every attempt by another
    process to open it is refused."""
    grower = """
    import sys, mmapkv
    store = mmapkv.Store(sys.argv[1])
    print("ready", flush=True)
    for i in range(300):
        store.create(f"k{i}", {"i": i, "pad": "x" * 2000})
    print("done", flush=True)
    sys.stdin.readline()
    store.close()
    """
    proc = spawn(grower, path)
    done = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "done":
                done.set()

    try:
        wait_for_line(proc, "ready")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        attempts = 0
        while not done.is_set() or attempts == 0:
            with pytest.raises(StoreLockedError):
                mmapkv.Store(path)
            attempts += 1
            assert proc.poll() is None, "the grower died"
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
    with mmapkv.Store(path) as store:
        assert len(store) == 300
        assert store.stats().capacity > 8  # it grew
        assert store.verify() == []


# --------------------------------------------------------------------- fork

def _forked_child_checks(store: mmapkv.Store, path: str) -> int:
    """Run in a forked child: 0 if every use of the inherited store is refused with a
    StoreClosedError that mentions the fork, else the number of the failed check."""
    calls: list[Callable[[], object]] = [
        lambda: store.read("a"),
        lambda: store.get("a"),
        lambda: store.create("child", {}),
        lambda: store.delete("a"),
        lambda: store.batch_create({"c1": {}}),
        lambda: "a" in store,
        lambda: len(store),
        lambda: store.keys(),
        lambda: store.flush(),
        lambda: store.stats(),
        lambda: store.verify(),
    ]
    for number, call in enumerate(calls, 1):
        try:
            call()
        except StoreClosedError as exc:
            if "fork" not in str(exc) or path not in str(exc):
                return 50 + number
            continue
        return number
    try:
        mmapkv.Store(path)  # the parent's lock still stands in the child
    except StoreLockedError:
        pass
    else:
        return 40
    store.close()  # harmless in the child: must not release the parent's lock
    return 0


def test_fork_child_is_refused_parent_keeps_working(path: str) -> None:
    """A forked child cannot use the inherited Store (StoreClosedError mentioning the fork)
    nor open the file; the parent keeps working and keeps its lock."""
    store = mmapkv.Store(path)
    store.create("a", {"v": 1})
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = _forked_child_checks(store, path)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read("a") == {"v": 1}
    store.create("b", {"v": 2})
    store.delete("a")
    assert store.keys() == ["b"]
    assert_locked_for_other_process(path)
    assert store.verify() == []
    store.close()
    with mmapkv.Store(path) as again:
        assert contents(again) == {"b": {"v": 2}}


def test_a_child_forked_while_a_store_opens_does_not_keep_its_lock(path: str) -> None:
    """A child forked while another thread was inside ``Store()`` kept the engine's locked
    descriptor (only stores registered at the end of ``__init__`` were let go of), so
    after the parent died the store stayed locked for as long as the child lived."""
    parent = textwrap.dedent(f"""
        import os, threading, time, mmapkv
        from mmapkv import engine
        opening, forked = threading.Event(), threading.Event()
        real = engine.Engine._load_or_raise
        def slow_load(self, max_size):  # a slow open (the recovery of a big file)
            opening.set()
            forked.wait()
            return real(self, max_size)
        engine.Engine._load_or_raise = slow_load
        box = []
        thread = threading.Thread(target=lambda: box.append(mmapkv.Store({path!r})))
        thread.start()
        opening.wait()
        pid = os.fork()
        if pid == 0:
            time.sleep(60)  # a worker that never touches the store
            os._exit(0)
        forked.set()
        thread.join()
        box[0].create("k", {{"v": 1}})
        print(pid, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=child_env())
    assert process.stdout is not None
    child = int(process.stdout.readline())
    try:
        process.kill()
        process.wait()
        with mmapkv.Store(path) as store:  # the child still lives
            assert store.read("k") == {"v": 1}
    finally:
        os.kill(child, signal.SIGKILL)


# --------------------------------------------------------------------- threads

def test_threads(path: str) -> None:
    """8 threads create/read/delete their own keys and race on shared keys: exactly one
    creator and one deleter wins per shared key, and the final state is what the threads
    were told."""
    threads_n, own_n, shared_n = 8, 60, 40
    store = mmapkv.Store(path)
    barrier = threading.Barrier(threads_n)
    own_final: list[dict[str, Any]] = [{} for _ in range(threads_n)]
    created: list[list[str]] = [[] for _ in range(threads_n)]
    deleted: list[list[str]] = [[] for _ in range(threads_n)]
    recreated: list[list[str]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            rng = random.Random(1000 + t)
            order = list(range(shared_n))
            rng.shuffle(order)
            own = own_final[t]
            barrier.wait()
            for i in range(own_n):
                key, value = f"t{t}-{i}", {"t": t, "i": i, "pad": "x" * rng.randrange(2000)}
                store.create(key, value)
                own[key] = value
                if store.read(key) != value:
                    raise AssertionError(f"read back {key} wrong")
                if rng.random() < 0.3:
                    victim = rng.choice(sorted(own))
                    store.delete(victim)
                    del own[victim]
                shared = f"s{order[i % shared_n]}"
                try:
                    store.create(shared, {"winner": t})
                    created[t].append(shared)
                except KeyExistsError:
                    pass
                got = store.get(shared)
                if got is not None and set(got) != {"winner"}:
                    raise AssertionError(f"{shared} holds {got}")
                len(store)
                shared in store
            batch = {f"t{t}-b{j}": {"t": t, "b": j} for j in range(5)}
            store.batch_create(batch)
            own.update(batch)
            barrier.wait()
            for s in order:  # race to delete every shared key
                try:
                    store.delete(f"s{s}")
                    deleted[t].append(f"s{s}")
                except KeyNotFoundError:
                    pass
            barrier.wait()
            for s in order[:10]:  # and to create some again
                try:
                    store.create(f"s{s}", {"again": t})
                    recreated[t].append(f"s{s}")
                except KeyExistsError:
                    pass
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=CHILD_TIMEOUT)
    assert not any(w.is_alive() for w in workers)
    assert not errors, errors
    all_created = sorted(k for ks in created for k in ks)
    all_deleted = sorted(k for ks in deleted for k in ks)
    assert all_created == sorted(f"s{s}" for s in range(shared_n))  # one winner each
    assert all_deleted == all_created  # one deleter each
    again = {k: {"again": t} for t, ks in enumerate(recreated) for k in ks}
    assert sum(len(ks) for ks in recreated) == len(again)  # one winner each
    expected = {k: v for own in own_final for k, v in own.items()}
    expected.update(again)
    assert contents(store) == expected
    assert len(store) == len(expected)
    assert store.verify() == []
    store.close()
    with mmapkv.Store(path) as reopened:
        assert contents(reopened) == expected
        assert reopened.verify() == []


# --------------------------------------------------------------------- crashes

# The writer's deterministic operations, run by the child and replayed by the parent.
OPS_SOURCE = '''
def op(prefix, n):
    """The n-th operation of a writer: ("create", key, value), ("delete", key) or
    ("batch", [(key, value), ...])."""
    if n % 6 == 5:
        return ("delete", f"{prefix}{n - 3}")  # op n - 3 was a create
    if n % 6 == 4:
        return ("batch", [(f"{prefix}{n}b{j}", {"n": n, "j": j}) for j in range(3)])
    return ("create", f"{prefix}{n}", {"n": n, "pad": "x" * (n * 37 % 3000), "u": "é" * (n % 7),
                                       "big": 2 ** 70 + n if n % 4 == 0 else n})
'''

WRITER = OPS_SOURCE + '''
import sys, mmapkv
store = mmapkv.Store(sys.argv[1])
prefix = sys.argv[2]
n = 0
while True:
    kind, *args = op(prefix, n)
    if kind == "create":
        store.create(args[0], args[1])
    elif kind == "delete":
        store.delete(args[0])
    else:
        store.batch_create(args[0])
    sys.stdout.write(f"{n}\\n")
    sys.stdout.flush()
    n += 1
'''


def replay(state: dict[str, Any], prefix: str, count: int) -> dict[str, Any]:
    """*state* after the writer's first *count* operations."""
    namespace: dict[str, Any] = {}
    exec(OPS_SOURCE, namespace)
    state = dict(state)
    for n in range(count):
        kind, *args = namespace["op"](prefix, n)
        if kind == "create":
            state[args[0]] = args[1]
        elif kind == "delete":
            del state[args[0]]
        else:
            state.update(args[0])
    return state


def test_kill_9_of_writing_child(path: str) -> None:
    """A child writing (creates, deletes, batches, growth) is killed with SIGKILL at random
    points; after each kill every acknowledged operation is in the store with its exact
    value, at most the one in flight is there as well (whole or not at all), verify() is
    clean, and writing continues."""
    rng = random.Random(9)
    state: dict[str, Any] = {}
    for round_number in range(5):
        prefix = f"r{round_number}-"
        proc = spawn(WRITER, path, prefix)
        assert proc.stdout is not None
        acked: list[str] = []
        target = rng.randrange(40, 400)
        try:
            while len(acked) < target:
                line = proc.stdout.readline()
                assert line, f"writer stopped early with exit code {proc.poll()}"
                acked.append(line)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=CHILD_TIMEOUT)
        acked += proc.stdout.readlines()  # acknowledged before the kill landed
        proc.stdout.close()
        complete = [line for line in acked if line.endswith("\n")]
        assert [int(line) for line in complete] == list(range(len(complete)))
        done = len(complete)
        with mmapkv.Store(path) as store:
            assert store._engine is not None and not store._engine.was_clean
            assert store.verify() == []
            actual = contents(store)
            without = replay(state, prefix, done)
            with_next = replay(state, prefix, done + 1)
            assert actual in (without, with_next), (
                f"round {round_number}: {done} acknowledged ops; extra "
                f"{sorted(set(actual) - set(without))}, missing {sorted(set(without) - set(actual))}")
            state = actual
    with mmapkv.Store(path) as store:
        for i in range(20):
            store.create(f"after{i}", {"i": i})
        store.delete("after3")
        assert store.verify() == []
    with mmapkv.Store(path) as store:
        assert store._engine is not None and store._engine.was_clean
        expected = dict(state)
        expected.update({f"after{i}": {"i": i} for i in range(20) if i != 3})
        assert contents(store) == expected


def simulate_crash(store: mmapkv.Store) -> None:
    """Drop the store's map, descriptor and lock without the clean close."""
    engine = store._engine
    assert engine is not None
    store._engine = None
    engine._release()


def test_recovery_after_simulated_crash(path: str) -> None:
    """After a crash (no clean close) the next open recovers: not clean, every acknowledged
    create/delete/batch present with its counters and TTLs, verify() clean, writable."""
    now = [1_700_000_000.0]

    def clock() -> float:
        return now[0]

    max_size = mmapkv.format.Geometry.smallest_max_size() * 8
    store = mmapkv.Store(path, max_size=max_size, clock=clock)
    expected: dict[str, Any] = {}
    for i in range(40):  # grows 8 -> 16 -> 33 -> 67 slots
        store.create(f"k{i}", {"i": i, "s": "ü" * i})
        expected[f"k{i}"] = {"i": i, "s": "ü" * i}
    for i in range(0, 40, 3):
        store.delete(f"k{i}")
        del expected[f"k{i}"]
    store.batch_create({f"b{i}": {"b": i} for i in range(5)}, ttl=100)
    expected.update({f"b{i}": {"b": i} for i in range(5)})
    store.create("short", {"v": 1}, ttl=10)
    size = store.stats().file_size
    simulate_crash(store)

    store = mmapkv.Store(path, clock=clock)
    assert store._engine is not None and not store._engine.was_clean
    assert store.verify() == []
    assert store.stats().file_size == size
    assert store.stats().keys_with_ttl == 6
    assert contents(store) == {**expected, "short": {"v": 1}}
    now[0] += 10
    assert contents(store) == expected
    assert len(store) == len(expected)
    now[0] += 90
    assert len(store) == len(expected) - 5
    store.create("k0", {"i": "again"})
    assert store.verify() == []
    store.close()
    with mmapkv.Store(path, clock=clock) as store:
        assert store._engine is not None and store._engine.was_clean
        assert store.read("k0") == {"i": "again"}
        assert store.verify() == []


def test_crash_twice_in_a_row(path: str) -> None:
    """A crash during the life of a recovered store recovers again."""
    store = mmapkv.Store(path)
    store.create("a", {"v": 1})
    simulate_crash(store)
    store = mmapkv.Store(path)
    store.create("b", {"v": 2})
    store.delete("a")
    simulate_crash(store)
    with mmapkv.Store(path) as store:
        assert store._engine is not None and not store._engine.was_clean
        assert contents(store) == {"b": {"v": 2}}
        assert store.verify() == []


def test_durable_mode(path: str) -> None:
    """durable=True works for every kind of write (and growth); stats says so; everything
    is readable after a crash and after a clean reopen."""
    with mmapkv.Store(path, durable=True) as store:
        assert store.stats().durable is True
        for i in range(12):
            store.create(f"k{i}", {"i": i})
        store.delete("k5")
        store.batch_create([("b1", {"b": 1}), ("b2", {"b": 2}, 3600)])
        assert store.verify() == []
        simulate_crash(store)
    expected = {**{f"k{i}": {"i": i} for i in range(12) if i != 5}, "b1": {"b": 1}, "b2": {"b": 2}}
    with mmapkv.Store(path) as store:
        assert store.stats().durable is False
        assert contents(store) == expected
        assert store.verify() == []
    with mmapkv.Store(path, durable=True) as store:
        assert contents(store) == expected


def test_flush(path: str) -> None:
    """flush() can be called at any time and what was written before it is there after a
    crash."""
    store = mmapkv.Store(path)
    store.flush()  # nothing written yet
    store.create("a", {"v": 1})
    store.batch_create({"b": {"v": 2}})
    store.flush()
    store.flush()
    simulate_crash(store)
    with mmapkv.Store(path) as store:
        assert contents(store) == {"a": {"v": 1}, "b": {"v": 2}}
        assert store.verify() == []


class Crash(Exception):
    """Stands for the process dying at this instant."""


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_batch_is_all_or_nothing_across_a_crash(path: str, monkeypatch: pytest.MonkeyPatch,
                                                 point: str) -> None:
    """A crash before a batch's commit write leaves none of it; a crash after it, while
    its slots are being switched live, leaves all of it."""
    store = mmapkv.Store(path)
    store.create("before", {"v": 0})
    engine = store._engine
    assert engine is not None
    if point == "before-commit":
        def fail_commit(seq: int, written: Any) -> None:
            raise Crash
        monkeypatch.setattr(engine, "commit_batch", fail_commit)
    else:
        real = engine.table.insert
        calls: list[int] = []

        def fail_midway(fp: int, entry: int) -> int:
            if len(calls) == 2:
                raise Crash
            calls.append(fp)
            return real(fp, entry)
        monkeypatch.setattr(engine.table, "insert", fail_midway)
    batch = {f"b{i}": {"i": i, "pad": "x" * 10_000} for i in range(12)}  # grows 8 -> 16 slots
    with pytest.raises(Crash):
        store.batch_create(batch)
    simulate_crash(store)
    with mmapkv.Store(path) as store:
        expected = {"before": {"v": 0}}
        if point == "after-commit":
            expected.update(batch)
        assert contents(store) == expected
        assert store.verify() == []
        store.batch_create({"later": {}})
        assert store.verify() == []


@pytest.mark.parametrize("through_map", [True, False], ids=["map-copy", "pwrite"])
@pytest.mark.parametrize("from_free_list", [True, False], ids=["freed-slot", "new-slot"])
def test_slot_write_cut_between_pages(path: str, monkeypatch: pytest.MonkeyPatch,
                                      from_free_list: bool, through_map: bool) -> None:
    """A kill in the middle of a record's one write (a copy into the map, or a pwrite where
    the file's blocks could not be reserved) can leave its first page (state LIVE,
    checksum) written and the rest not; recovery frees that slot and keeps everything
    acknowledged, also when the rest of the page still holds a freed entry's bytes."""
    from mmapkv import engine as eng
    from mmapkv.format import PAGE_SIZE, RECORD_HEADER

    big = {"text": "y" * 9_000}  # three pages of slot
    store = mmapkv.Store(path)
    store.create("kept", {"v": 1})
    if from_free_list:
        store.create("old", {"text": "o" * 9_000})
        store.delete("old")
    engine = store._engine
    assert engine is not None and engine._map_writes
    if through_map:
        # The copy cannot be stopped halfway from Python: make the write whole, then put
        # back what the pages after the first held before it, as a kill mid-copy leaves them.
        before = bytes(engine._mm)
        store.create("cut", big)
        off = engine.record_offset(engine.find(b"cut", engine.fingerprint(b"cut")))
        *_, value_len, key_len, _ = RECORD_HEADER.unpack_from(engine._mm, off)
        start, end = off + PAGE_SIZE - off % PAGE_SIZE, off + RECORD_HEADER.size + key_len + value_len
        assert start < end
        engine._mm[start:end] = before[start:end]
    else:
        engine._map_writes = False
        real_pwrite = eng.os.pwrite

        def first_page_then_die(fd: int, data: bytes, offset: int) -> int:
            assert len(data) > PAGE_SIZE
            real_pwrite(fd, data[:PAGE_SIZE - offset % PAGE_SIZE], offset)
            raise Crash

        monkeypatch.setattr(eng.os, "pwrite", first_page_then_die)
        with pytest.raises(Crash):
            store.create("cut", big)
        monkeypatch.setattr(eng.os, "pwrite", real_pwrite)
    simulate_crash(store)
    with mmapkv.Store(path) as store:
        assert contents(store) == {"kept": {"v": 1}}
        assert store.verify() == []
        store.create("cut", big)
    with mmapkv.Store(path) as store:
        assert contents(store) == {"kept": {"v": 1}, "cut": big}


def test_torn_entry_is_never_returned(path: str) -> None:
    """A record whose bytes do not match its checksum (a torn write) is dropped by recovery
    after a crash, and is CorruptStoreError (never data) in a store closed cleanly."""
    store = mmapkv.Store(path)
    store.create("a", {"v": "intact"})
    store.create("b", {"v": "torn"})
    simulate_crash(store)

    def tear() -> None:
        with open(path, "r+b") as f:
            data = f.read()
            f.seek(data.rindex(b'{"v":"') + 7)  # the newest "b" value's text
            f.write(b"X")

    tear()
    with mmapkv.Store(path) as store:
        assert contents(store) == {"a": {"v": "intact"}}
        assert store.verify() == []
        store.create("b", {"v": "again"})
    tear()  # the same damage to a cleanly closed store
    with mmapkv.Store(path) as store:
        assert store.verify() != []  # verify reports the damage and changes nothing
        assert len(store) == 2
        with pytest.raises(mmapkv.CorruptStoreError) as info:
            store.read("b")
        assert path in str(info.value) and "dropped" in str(info.value)
        # Dropped on detection, so every view agrees with read from here on.
        assert store.read("a") == {"v": "intact"}
        assert "b" not in store and len(store) == 1 and store.keys() == ["a"]
        assert store.verify() == []
