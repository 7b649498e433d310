"""The child processes of the fault tests, and the helpers they share with their parents.

Run as ``python tests/fault_child.py MODE ARGS_JSON``; each mode talks to its parent in
JSON lines on stdout, flushed one by one, so a parent that kills it knows exactly what
was acknowledged:

``writer``   writes, deletes and batch-creates in a loop (seeded), printing ``begin``
             before and ``ack`` after each operation; it can freeze at a named point
             inside the engine (``pause``) so the parent kills it exactly there.
``holder``   opens a store and holds it (idle, writing, or frozen in the middle of a
             growth) until told on stdin to ``resume``, ``close`` or ``exit``.
``rival``    tries to open a store again and again and counts how it was refused.
``check``    opens damaged store files and reads every key, classifying each outcome, then
             creates keys in each and compacts it: no key that read back exactly may be lost.
``diskfull`` fills a store under ``RLIMIT_FSIZE`` and reports how growth failed.
``sigint``   works through random calls while its parent fires SIGINTs at it; after each
             interrupted call it reads the store back (retrying through further
             interrupts) and reports whether it holds the state before or after the call.

Importing this module has no side effects (pytest's doctest collection imports it).
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import resource
import signal
import sys
import threading
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: where the engine can be frozen for an exact kill, and what is half-done there
PAUSE_POINTS = {
    "grow.reserved": "the file is extended but not yet mapped, superblock size not updated",
    "grow.done": "a growth has finished, the create that needed it has not written yet",
    "batch.pending": "a batch's records are written PENDING, its commit word is not",
    "batch.half": "a batch is committed and its first record indexed, the rest still PENDING",
    "create.unindexed": "a record is written LIVE but not yet in the hash table",
    "delete.unindexed": "a key is out of the hash table but its record is still LIVE",
}


# ------------------------------------------------------------------ shared helpers


def make_value(key: str, nonce: int, size: int) -> dict[str, Any]:
    """The value the writer stores under *key*: exactly *size* bytes of compact JSON
    (at least ~120), multi-byte text and a big integer included, derived from its inputs
    so the parent can recompute it from an acknowledgement line.

    >>> v = make_value("k", 7, 500)
    >>> len(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode())
    500
    """
    value: dict[str, Any] = {"key": key, "nonce": nonce, "big": 2 ** 70 + nonce,
                             "text": "ключ🔑", "pad": ""}
    have = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if have > size:
        raise ValueError(f"make_value: {size} bytes is too small for {key!r}")
    pad = size - have
    value["pad"] = "é" * (pad // 2) + "x" * (pad % 2)
    return value


def emit(event: dict[str, Any]) -> None:
    """One JSON line to the parent, flushed at once."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def child_env() -> dict[str, str]:
    """The environment a child needs to import mmapkv from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONHASHSEED"] = "0"
    return env


def child_command(mode: str, args: dict[str, Any]) -> list[str]:
    return [sys.executable, os.path.join(HERE, "fault_child.py"), mode, json.dumps(args)]


def write_report(name: str, counts: dict[str, Any]) -> None:
    """Add *counts* to ``$MMAPKV_REPORT_DIR/<name>.json`` (summed over the test's cases),
    for ``fuzz/reliability_report.py``.  Does nothing when the variable is unset."""
    directory = os.environ.get("MMAPKV_REPORT_DIR")
    if not directory:
        return
    import fcntl

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    with open(path + ".lock", "a") as lock:  # pytest-xdist workers add to the same file
        fcntl.flock(lock, fcntl.LOCK_EX)
        total: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                total = json.load(f)
        for key, value in counts.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total[key] = value
        with open(path, "w") as f:
            json.dump(total, f, indent=1, sort_keys=True)


# ------------------------------------------------------------------ pause points


class _Pauser:
    """Freeze at the *hit*-th arrival at *point*: tell the parent, then wait (for a kill,
    or for ``resume`` on stdin when *resumable*)."""

    def __init__(self, point: str | None, hit: int = 1, resumable: bool = False) -> None:
        self.point, self.hit, self.seen = point, hit, 0
        self.armed = False  # set once the store is open: creating the file is no growth
        self.resume = threading.Event()
        self.resumable = resumable

    def at(self, point: str) -> None:
        if not self.armed or point != self.point:
            return
        self.seen += 1
        if self.seen != self.hit:
            return
        emit({"ev": "paused", "at": point})
        if self.resumable:
            self.resume.wait()
        else:
            while True:
                signal.pause()


def _install_pauses(pauser: _Pauser) -> None:
    """Wrap engine internals (in this process only) so *pauser* can freeze inside them."""
    from mmapkv import engine as eng
    from mmapkv import table as tbl

    real_reserve, real_grow = eng.reserve, eng.Engine.grow
    real_commit = eng.Engine.commit_batch
    real_add, real_delete = tbl.Table.add_to, tbl.Table.delete
    in_batch = [False, 0]

    def reserve(fd: int, size: int, start: int = 0) -> None:
        real_reserve(fd, size, start)
        pauser.at("grow.reserved")

    def grow(self: Any) -> bool:
        grown = real_grow(self)
        if grown:
            pauser.at("grow.done")
        return grown

    def commit_batch(self: Any, seq: int, written: Any) -> None:
        pauser.at("batch.pending")
        in_batch[:] = [True, 0]
        try:
            real_commit(self, seq, written)
        finally:
            in_batch[0] = False

    def table_add(self: Any, segment: int, entry: int) -> int:
        # add_to, not insert: every new entry goes through it (a create's try_put, an
        # insert, a batch's commit), so the pause points see every path
        if not in_batch[0]:
            pauser.at("create.unindexed")
        position = real_add(self, segment, entry)
        if in_batch[0]:
            in_batch[1] += 1
            if in_batch[1] == 1:
                pauser.at("batch.half")
        return position

    def table_delete(self: Any, position: int) -> None:
        real_delete(self, position)
        pauser.at("delete.unindexed")

    eng.reserve = reserve
    eng.Engine.grow = grow  # type: ignore[method-assign]
    eng.Engine.commit_batch = commit_batch  # type: ignore[method-assign]
    tbl.Table.add_to = table_add  # type: ignore[method-assign]
    tbl.Table.delete = table_delete  # type: ignore[method-assign]


# ------------------------------------------------------------------ modes


def writer(args: dict[str, Any]) -> None:
    """Write forever (until killed); every operation is announced and acknowledged."""
    import mmapkv

    pauser = _Pauser(args.get("pause"), args.get("hit", 1))
    _install_pauses(pauser)
    rng = random.Random(args["seed"])
    store = mmapkv.Store(args["path"], max_size=args["max_size"])
    engine = store._engine
    assert engine is not None
    names = sorted(store.keys())
    emit({"ev": "ready", "keys": len(names), "recovered": not engine.was_clean})
    pauser.armed = True
    counter = 0
    last_full = False

    def new_item() -> list[Any]:
        nonlocal counter
        counter += 1
        key = rng.choice([f"r{args['round']}-{counter}", f"ключ{args['round']}.{counter}",
                          f"🔑{args['round']}/{counter}"])
        size = rng.choice([rng.randint(120, 600), rng.randint(8000, 16384), 16384])
        return [key, rng.randint(0, 10 ** 9), size]

    for _ in range(args.get("max_ops", 10 ** 9)):
        roll = rng.random()
        if names and (roll < 0.25 or (last_full and roll < 0.8)):
            op: dict[str, Any] = {"op": "delete", "key": rng.choice(names)}
            needed = 0
        elif names and roll < 0.4:  # an overwrite: the old value or the new, never neither
            op = {"op": "set", "items": [[rng.choice(names), *new_item()[1:]]]}
            needed = 1
        elif roll < 0.7:
            op = {"op": "create", "items": [new_item()]}
            needed = 1
        elif roll < 0.85 or not names:
            op = {"op": "batch", "items": [new_item() for _ in range(rng.randint(1, 4))]}
            needed = len(op["items"])
        else:  # update: overwrites and new keys, all or nothing
            chosen = rng.sample(names, min(len(names), rng.randint(1, 2)))
            op = {"op": "update", "items": [[name, *new_item()[1:]] for name in chosen] + [new_item()]}
            needed = len(op["items"])
        geometry = engine.geometry
        ceiling = geometry.file_size(geometry.max_slots)
        op["grows"] = needed > 0 and engine.slots.free_slots() < 2 and engine.file_size < ceiling
        emit({"ev": "begin", **op})
        try:
            if op["op"] == "delete":
                store.delete(op["key"])
                names.remove(op["key"])
            elif op["op"] == "create":
                key, nonce, size = op["items"][0]
                store.create(key, make_value(key, nonce, size))
                names.append(key)
            elif op["op"] == "set":
                key, nonce, size = op["items"][0]
                store.set(key, make_value(key, nonce, size))
            elif op["op"] == "update":
                store.update({key: make_value(key, nonce, size) for key, nonce, size in op["items"]})
                names.extend(item[0] for item in op["items"] if item[0] not in names)
            else:
                store.batch_create({key: make_value(key, nonce, size)
                                    for key, nonce, size in op["items"]})
                names.extend(item[0] for item in op["items"])
            last_full = False
            emit({"ev": "ack", "res": "ok"})
        except mmapkv.StoreFullError as exc:
            last_full = True
            engine = store._engine
            assert engine is not None
            # Legitimate only at the ceiling, or where even the slots the ceiling has left
            # could not take the records' new slots (refused before growing): per class, the
            # records beyond its free sub-slots, in slots of that class.
            from mmapkv.format import CLASS_SIZES, KEY_OFFSET, class_for
            from mmapkv.slots import PER_SLOT
            wanted: dict[int, int] = {}
            for item in op.get("items", []):
                cls = class_for(KEY_OFFSET + len(item[0].encode()) + item[2])
                wanted[cls] = wanted.get(cls, 0) + 1
            usage = engine.class_usage()
            free = {c: usage.get(CLASS_SIZES[c], (0, 0, 0))[2] for c in wanted}
            needed = sum(-(-max(0, n - free[c]) // PER_SLOT[c]) for c, n in wanted.items())
            room = engine.slots.free_slots() + geometry.max_slots - engine.slot_count
            emit({"ev": "ack", "res": "full", "error": type(exc).__name__,
                  "at_ceiling": engine.file_size == ceiling or room < needed})
    store.close()
    emit({"ev": "done"})


def holder(args: dict[str, Any]) -> None:
    """Hold a store open: ``idle``, ``writing`` (a thread writes until ``close``), or
    ``growing`` (frozen inside a growth until ``resume``).  Commands on stdin:
    ``resume``, ``close``, ``exit``."""
    import mmapkv

    mode = args["mode"]
    pauser = _Pauser("grow.reserved" if mode == "growing" else None, resumable=True)
    _install_pauses(pauser)
    store = mmapkv.Store(args["path"], max_size=args.get("max_size"))
    pauser.armed = True
    stop = threading.Event()
    acked = [0]

    def write_loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"w{i % 5}"
            try:
                store.create(key, make_value(key, i, 200))
            except mmapkv.KeyExistsError:
                store.delete(key)
            acked[0] += 1
            if i == 50:
                emit({"ev": "writing"})

    def grow_loop() -> None:  # creates until a growth freezes, then after resume, finishes
        for i in range(64):
            key = f"g{i}"
            store.create(key, make_value(key, i, 16384))
            acked[0] += 1
        emit({"ev": "grown", "file_size": os.path.getsize(args["path"])})

    worker = None
    if mode == "writing":
        worker = threading.Thread(target=write_loop, daemon=True)
    elif mode == "growing":
        worker = threading.Thread(target=grow_loop, daemon=True)
    emit({"ev": "ready", "pid": os.getpid()})
    if worker is not None:
        worker.start()
    for line in sys.stdin:
        command = line.strip()
        if command == "resume":
            pauser.resume.set()
        elif command == "close":
            stop.set()
            pauser.resume.set()
            if worker is not None:
                worker.join()
            store.close()
            emit({"ev": "closed", "acked": acked[0]})
        elif command == "exit":
            break
    emit({"ev": "bye"})


def rival(args: dict[str, Any]) -> None:
    """Try to open the store ``attempts`` times; count refusals and successes."""
    import mmapkv

    counts = {"locked": 0, "opened": 0, "other": 0, "messages_with_path": 0, "keys": -1}
    emit({"ev": "ready"})
    for _ in range(args["attempts"]):
        try:
            store = mmapkv.Store(args["path"], lock_timeout=args.get("lock_timeout", 0.0))
        except mmapkv.StoreLockedError as exc:
            counts["locked"] += 1
            counts["messages_with_path"] += args["path"] in str(exc)
            continue
        except Exception:
            counts["other"] += 1
            emit({"ev": "error", "trace": traceback.format_exc()})
            continue
        counts["opened"] += 1
        try:
            counts["keys"] = len(store.keys())
            counts["verify"] = store.verify()  # type: ignore[assignment]
            if args.get("write"):
                store.create("rival-was-here", {"pid": os.getpid()})
        finally:
            store.close()
    emit({"ev": "done", **counts})


def check(args: dict[str, Any]) -> None:
    """Open each damaged file and read every expected key, twice (the second pass reads
    what the recovery a damaged read triggers left), then again after a close and a reopen
    (what that recovery and the clean close wrote): each outcome must be an MmapKVError or
    the exact stored value.  Reports wrong data, foreign exceptions and invented keys."""
    import mmapkv

    with open(args["expected"]) as f:
        expected: dict[str, Any] = json.load(f)
    from mmapkv import transfer

    result: dict[str, Any] = {"refused": 0, "opened": 0, "reopened": 0, "reads": 0,
                              "reads_exact": 0, "reads_refused": 0, "wrong": [], "foreign": [],
                              "invented_keys": [], "errors": {}, "compacted": 0,
                              "compact_refused": {}, "lost_by_compact": [],
                              "create_refused": {}, "lost_by_writes": []}

    def foreign(case: int, what: str) -> None:
        result["foreign"].append({"case": case, "during": what, "trace": traceback.format_exc()})

    def refused(exc: BaseException) -> None:
        name = type(exc).__name__
        result["errors"][name] = result["errors"].get(name, 0) + 1

    def read_everything(case: int, store: Any, when: str) -> None:
        for key, want in expected.items():
            for how in ("read", "get", "in"):
                result["reads"] += how != "in"
                try:
                    if how == "read":
                        got = store.read(key)
                    elif how == "get":
                        got = store.get(key, None)
                        if got is None:
                            continue
                    else:
                        key in store  # noqa: B015 - only its exceptions matter
                        continue
                except mmapkv.MmapKVError as exc:
                    result["reads_refused"] += 1
                    refused(exc)
                    continue
                except Exception:
                    foreign(case, f"{how} {key!r} ({when})")
                    continue
                if got != want:
                    result["wrong"].append({"case": case, "when": when, "how": how, "key": key,
                                            "got": repr(got)[:200]})
                else:
                    result["reads_exact"] += 1
        for name, call in (("keys", store.keys), ("iter", lambda: list(store)),
                           ("items", lambda: list(store.items())), ("len", store.__len__),
                           ("verify", store.verify)):
            try:
                listed = call()
            except mmapkv.MmapKVError as exc:
                refused(exc)
                continue
            except Exception:
                foreign(case, f"{name} ({when})")
                continue
            if name == "items":
                for key, got in listed:
                    if key in written and got != written[key]:
                        result["wrong"].append({"case": case, "when": when, "how": "items", "key": key,
                                                "got": repr(got)[:200]})
                listed = [key for key, _ in listed]
            if name in ("keys", "iter", "items"):
                invented = [k for k in listed if k not in written]
                if invented:
                    result["invented_keys"].append({"case": case, "when": when, "how": name,
                                                    "keys": invented[:5]})

    def exact(store: Any) -> dict[str, Any]:
        """The expected keys that read back exactly now."""
        readable = {}
        for key, want in expected.items():
            try:
                if store.read(key) == want:
                    readable[key] = want
            except mmapkv.MmapKVError:
                pass
        return readable

    def writes_keep_what_reads(case: int, store: Any) -> None:
        """Creates of new keys (of every size class) must keep every key that read back
        exactly before them: damaged slot info must never hand a live record's sub-slot
        to a new one.  A create may refuse with an MmapKVError; the next one repairs."""
        readable = exact(store)
        for n in range(26):
            key = f"new{n}"
            value = make_value(key, n, 130 + 631 * n)
            try:
                store.create(key, value)
                written[key] = value
            except mmapkv.MmapKVError as exc:
                name = type(exc).__name__
                result["create_refused"][name] = result["create_refused"].get(name, 0) + 1
            except Exception:
                foreign(case, f"create {key!r}")
        after = exact(store)
        lost = [key for key in readable if key not in after]
        if lost:
            result["lost_by_writes"].append({"case": case, "keys": lost[:5], "lost": len(lost),
                                             "of": len(readable)})

    def compact_keeps_what_reads(case: int, store: Any) -> None:
        """Compact (leaving out what fails its checksum) must keep every key that read
        back exactly before it: a key ``read`` returns is never lost to a repack."""
        readable = exact(store)
        try:
            transfer.compact(store, skip_corrupt=True)
        except mmapkv.MmapKVError as exc:
            name = type(exc).__name__
            result["compact_refused"][name] = result["compact_refused"].get(name, 0) + 1
            return
        except Exception:
            foreign(case, "compact")
            return
        result["compacted"] += 1
        after = exact(store)
        lost = [key for key in readable if key not in after]
        if lost:
            result["lost_by_compact"].append({"case": case, "keys": lost[:5], "lost": len(lost),
                                              "of": len(readable)})

    written: dict[str, Any] = {}  # what the case's store holds: expected, and its creates

    for case, path in enumerate(args["files"]):
        emit({"ev": "case", "case": case})
        written.clear()
        written.update(expected)
        for when in ("open", "reopen"):
            try:
                store = mmapkv.Store(path)
            except mmapkv.MmapKVError as exc:
                result["refused"] += when == "open"
                refused(exc)
                break
            except Exception:
                foreign(case, when)
                break
            result["opened" if when == "open" else "reopened"] += 1
            try:
                read_everything(case, store, when)
                if when == "open":
                    read_everything(case, store, "again")
                    writes_keep_what_reads(case, store)
                    compact_keeps_what_reads(case, store)
            finally:
                try:
                    store.close()
                except mmapkv.MmapKVError as exc:
                    refused(exc)
                except Exception:
                    foreign(case, f"close ({when})")
    emit({"ev": "done", **result})


def diskfull(args: dict[str, Any]) -> None:
    """Under ``RLIMIT_FSIZE`` (SIGXFSZ ignored): fill a store until growth fails, then
    report what the error looked like and what the store still does."""
    import mmapkv

    if args["limit"] is not None:  # else: the disk itself is small (a tmpfs)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args["limit"], resource.RLIM_INFINITY))
    path = args["path"]
    facts: dict[str, Any] = {"ev": "done"}
    try:
        store = mmapkv.Store(path, max_size=args.get("max_size"))
    except mmapkv.DiskFullError as exc:
        facts.update(open_error=type(exc).__name__, message=str(exc), errno=exc.errno,
                     exists=os.path.exists(path), leftovers=sorted(os.listdir(os.path.dirname(path))))
        emit(facts)
        return
    stored: dict[str, Any] = {}
    error: BaseException | None = None
    size_before = 0
    for i in range(100_000):
        key = f"k{i}"
        value = make_value(key, i, args.get("value_size", 4000))
        size_before = os.path.getsize(path)
        try:
            store.create(key, value)
        except mmapkv.StoreFullError as exc:
            error = exc
            break
        stored[key] = value
    assert error is not None
    facts.update(
        error=type(error).__name__, message=str(error), errno=getattr(error, "errno", None),
        is_store_full=isinstance(error, mmapkv.StoreFullError), is_oserror=isinstance(error, OSError),
        stored=len(stored), size_before=size_before, size_after=os.path.getsize(path),
        limit=args["limit"])
    facts["reads_after"] = sum(store.read(k) == v for k, v in stored.items())
    facts["keys_after"] = sorted(store.keys()) == sorted(stored)
    facts["verify_after"] = store.verify()
    # a batch that needs growth fails the same way and writes nothing
    try:
        store.batch_create({f"b{i}": {"i": i} for i in range(3)})
        facts["batch"] = "accepted"
    except mmapkv.StoreFullError as exc:
        facts["batch"] = type(exc).__name__
    facts["keys_after_batch"] = sorted(store.keys()) == sorted(stored)
    # writes that fit still work: free one sub-slot, take it again with a value of its class
    gone = sorted(stored)[0]
    store.delete(gone)
    del stored[gone]
    fits = make_value("fits", 0, args.get("value_size", 4000))
    store.create("fits", fits)
    stored["fits"] = fits
    facts["size_after_fit"] = os.path.getsize(path)
    store.close()
    with mmapkv.Store(path) as again:
        facts["reopened_reads"] = sum(again.read(k) == v for k, v in stored.items())
        facts["reopened_keys"] = sorted(again.keys()) == sorted(stored)
        facts["reopened_verify"] = again.verify()
        facts["expected_after_reopen"] = len(stored)
    facts["size_final"] = os.path.getsize(path)
    emit(facts)


def _sigint_call(rng: random.Random, model: dict[str, int], counter: list[int]
                 ) -> tuple[str, Any, dict[str, int]]:
    """A random call on the store, as (name, function of the store, the model after it)."""
    import io

    from mmapkv import transfer

    def fresh(n: int) -> dict[str, int]:
        counter[0] += n
        return {f"s{counter[0] - i}": rng.randrange(10**9) for i in range(n)}

    roll = rng.random()
    if model and roll < 0.3:
        key = rng.choice(sorted(model))
        return "delete", lambda s: s.delete(key), {k: v for k, v in model.items() if k != key}
    if roll < 0.6:
        (key, nonce), = fresh(1).items()
        return "create", lambda s: s.create(key, make_value(key, nonce, 200)), {**model, key: nonce}
    if roll < 0.8:
        items = fresh(rng.randint(2, 5))
        return "batch", lambda s: s.batch_create({k: make_value(k, n, 300) for k, n in items.items()}), \
            {**model, **items}
    if roll < 0.95:
        items = fresh(rng.randint(2, 5))
        text = "".join(json.dumps({"key": k, "value": make_value(k, n, 250), "expires_at": None}) + "\n"
                       for k, n in items.items()).encode()
        return "restore", lambda s: transfer.restore(s, io.BytesIO(text)), {**model, **items}
    return "compact", transfer.compact, dict(model)


def sigint(args: dict[str, Any]) -> None:
    """Random calls, interrupted by the parent's SIGINTs; SIGTERM ends the session with a
    close.  SIGINT is blocked except around the store's calls, so the interrupts land in
    mmapkv (and in reading it back), not in this bookkeeping."""
    import mmapkv

    def say(event: dict[str, Any]) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:  # a signal (SIGTERM's handler) can cut a write into a pipe short
            data = data[os.write(1, data):]

    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def unblock() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1)  # the parent asks where a child that will not end is stuck
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
    # background job of a non-interactive shell starts with it ignored: every SIGINT was
    # then lost, and the test proved nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    block()
    rng = random.Random(args["seed"])
    store = mmapkv.Store(args["path"], max_size=args["max_size"])
    model = {k: store.read(k)["nonce"] for k in store.keys()}
    say({"ev": "ready", "model": model})
    counter = [args["first"]]
    calls = interrupted = 0
    name, after = "none", model
    open_call = False  # an interrupted call whose outcome is not known yet
    while True:
        try:
            if open_call:  # read it back; an interrupt here just means: read it again
                unblock()
                actual = {k: store.read(k)["nonce"] for k in store.keys()}
                problems = store.verify()
                block()
                if actual not in (model, after):
                    say({"ev": "violation", "call": name, "before": model, "after": after,
                         "actual": actual})
                if problems:
                    say({"ev": "violation", "call": name, "verify": problems})
                model, open_call = actual, False
                say({"ev": "state", "model": model})
                continue
            if stop.is_set():
                break
            name, call, after = _sigint_call(rng, model, counter)
            calls += 1
            say({"ev": "begin", "call": name, "after": after})
            open_call = True
            unblock()
            try:
                call(store)
            except mmapkv.StoreFullError:
                after = model
            block()
            model, open_call = after, False
            say({"ev": "ack", "model": model})
        except KeyboardInterrupt:
            try:  # inline, not block(): a Python call's entry is where a signal lands
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            except KeyboardInterrupt:  # one that arrived before the block took effect
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            interrupted += 1
    store.close()
    say({"ev": "closed", "model": model, "calls": calls, "interrupted": interrupted})


MODES = {"writer": writer, "holder": holder, "rival": rival, "check": check, "diskfull": diskfull,
         "sigint": sigint}

if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
