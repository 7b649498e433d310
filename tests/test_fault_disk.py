"""Full disk: growth fails with a clear DiskFullError and the store stays whole.

A child process (``fault_child.py diskfull``) ignores SIGXFSZ and lowers
``RLIMIT_FSIZE`` so that one doubling of the file cannot be allocated, then creates keys
until that growth fails.  The error must be ``mmapkv.DiskFullError`` (a ``StoreFullError``
and an ``OSError`` carrying ``EFBIG``) whose message names the path and says what to do;
the file must be left at its old size; every key must still read back exactly; a batch
needing growth fails the same way and writes nothing; a write that fits (after a delete)
succeeds; and after close and reopen nothing is lost.  Where the machine allows mounting
a small tmpfs (root), the same runs against a real ``ENOSPC``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from typing import Any

import pytest

from fault_child import child_command, child_env, write_report
from mmapkv.format import MAX_FILE_SIZE, Geometry

SMALL = Geometry.smallest_max_size() * 4
BIG_INITIAL = Geometry(MAX_FILE_SIZE).initial_size


def run_diskfull(path: str, limit: int | None, max_size: int | None, value_size: int = 4000) -> dict[str, Any]:
    proc = subprocess.run(child_command("diskfull", {"path": path, "limit": limit, "max_size": max_size,
                                                     "value_size": value_size}),
                          capture_output=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, f"the child died ({proc.returncode}): {proc.stderr.decode()[-3000:]}"
    facts: dict[str, Any] = json.loads(proc.stdout.decode().splitlines()[-1])
    return facts


def check_growth_failure(facts: dict[str, Any], path: str, code: int) -> None:
    assert facts["error"] == "DiskFullError", facts
    assert facts["is_store_full"] and facts["is_oserror"]
    assert facts["errno"] == code
    assert path in facts["message"] and "cannot grow" in facts["message"]
    assert "delete keys" in facts["message"] or "free disk space" in facts["message"]
    assert facts["size_after"] == facts["size_before"], "a failed growth left the file bigger"
    assert facts["reads_after"] == facts["stored"] and facts["keys_after"]
    assert facts["verify_after"] == []
    assert facts["batch"] == "DiskFullError" and facts["keys_after_batch"]
    assert facts["size_after_fit"] == facts["size_before"]
    assert facts["reopened_reads"] == facts["expected_after_reopen"] and facts["reopened_keys"]
    assert facts["reopened_verify"] == []
    assert facts["size_final"] == facts["size_before"]


@pytest.mark.parametrize("max_size, limit", [
    (None, BIG_INITIAL + 100_000),      # the first doubling of a 1 GiB-ceiling store fails
    (None, 3 * BIG_INITIAL),            # the second one fails
    (SMALL, 200_000),                   # a small ceiling: 8 -> 16 slots fails
], ids=["first-growth", "second-growth", "small-ceiling"])
def test_growth_past_file_size_limit(tmp_path: Any, max_size: int | None, limit: int) -> None:
    """RLIMIT_FSIZE stops a growth: DiskFullError, nothing lost, store still usable."""
    path = os.path.join(tmp_path, "full.mmapkv")
    facts = run_diskfull(path, limit, max_size)
    check_growth_failure(facts, path, errno.EFBIG)
    assert facts["size_before"] <= limit
    write_report("fault_disk", {"growth failures provoked": 1, "keys checked after failure": facts["stored"]})


def test_creating_a_store_past_the_limit(tmp_path: Any) -> None:
    """Too little room for even the initial file: DiskFullError, and no file or temporary
    file is left behind."""
    path = os.path.join(tmp_path, "new.mmapkv")
    facts = run_diskfull(path, 100_000, SMALL)
    assert facts["open_error"] == "DiskFullError", facts
    assert facts["errno"] == errno.EFBIG and path in facts["message"]
    assert not facts["exists"] and facts["leftovers"] == []
    write_report("fault_disk", {"growth failures provoked": 1})


@pytest.fixture
def small_tmpfs(tmp_path: Any) -> Any:
    """A 3 MiB tmpfs, where the machine lets us mount one (root); else skip."""
    mount_point = os.path.join(tmp_path, "tiny")
    os.mkdir(mount_point)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", mount_point],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", mount_point], capture_output=True, timeout=30)


def test_growth_on_a_full_filesystem(small_tmpfs: str) -> None:
    """A real ENOSPC (a 3 MiB tmpfs): the same guarantees as under RLIMIT_FSIZE."""
    path = os.path.join(small_tmpfs, "full.mmapkv")
    facts = run_diskfull(path, None, None)
    check_growth_failure(facts, path, errno.ENOSPC)
    write_report("fault_disk", {"growth failures provoked": 1, "keys checked after failure": facts["stored"]})


@pytest.mark.parametrize("code, error", [(errno.ENOSPC, "DiskFullError"), (errno.EIO, "StoreAccessError"),
                                         ("short", "DiskFullError")])
@pytest.mark.parametrize("from_free_list", [True, False], ids=["freed-sub-slot", "new-slot"])
def test_a_failed_slot_write_changes_nothing(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                             code: Any, error: str, from_free_list: bool) -> None:
    """A create whose record write fails (a full disk on a sparse file, an I/O error, a
    short write) raises, indexes nothing and gives its sub-slot back, whether it was a
    freed sub-slot of a slot in use or the first of a slot taken for it: the store reads
    as before, needs no repair, and the next create takes the same place.  (Records go
    in with pwrite only where the file's blocks could not be reserved; elsewhere through
    the map, which a full disk cannot reach:
    ``test_records_go_through_the_map_only_when_blocks_are_reserved``.)"""
    import mmapkv
    from mmapkv import engine as eng

    path = os.path.join(tmp_path, "s.mmapkv")
    real_pwrite = eng.os.pwrite
    store = mmapkv.Store(path)
    store.create("kept", {"v": 1})
    value = {"v": 3} if from_free_list else {"v": "x" * 3000}  # same class as "kept", or not
    if from_free_list:
        store.create("gone", {"v": 2})
        store.delete("gone")
    engine = store._engine
    assert engine is not None
    assert engine._map_writes
    engine._map_writes = False  # as on a file whose blocks could not be reserved
    before = (engine.slots.free_slots(), engine.slots.high_water, engine.live_count)
    aimed: list[int] = []

    def failing(fd: int, data: bytes, offset: int) -> int:
        aimed.append(offset)
        if code == "short":
            return real_pwrite(fd, data[:10], offset)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(eng.os, "pwrite", failing)
    with pytest.raises(getattr(mmapkv, error)) as info:
        store.create("new", value)
    assert path in str(info.value)
    assert engine.changes == 0  # a clean failure: no repair is due before the next call
    assert (engine.slots.free_slots(), engine.live_count) == (before[0], before[2])
    assert "new" not in store and len(store) == 1 and store.verify() == []
    monkeypatch.setattr(eng.os, "pwrite", real_pwrite)
    store.create("new", value)
    assert store.read("new") == value and store.read("kept") == {"v": 1}
    assert engine.record_offset(engine.find(b"new", engine.fingerprint(b"new"))) == aimed[0]
    store.close()
    with mmapkv.Store(path) as again:
        assert sorted(again.keys()) == ["kept", "new"] and again.verify() == []
        assert again.read("new") == value


def test_a_batch_whose_second_record_write_fails_changes_nothing(tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at a batch's second record (pwrite, as where the file's blocks could
    not be reserved): DiskFullError, and the first record's sub-slot is given back, not
    left PENDING, taken and counted (len() wrong, verify() finding "PENDING outside a
    batch") until a repair."""
    import mmapkv
    from mmapkv import engine as eng

    path = os.path.join(tmp_path, "s.mmapkv")
    real_pwrite = eng.os.pwrite
    store = mmapkv.Store(path)
    store.create("kept", {"v": 1})
    engine = store._engine
    assert engine is not None
    engine._map_writes = False
    before = (engine.slots.free_slots(), engine.live_count, engine.class_usage())
    calls: list[int] = []

    def second_fails(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(eng.os, "pwrite", second_fails)
    with pytest.raises(mmapkv.DiskFullError):
        store.batch_create({f"b{i}": {"i": i} for i in range(3)})
    monkeypatch.setattr(eng.os, "pwrite", real_pwrite)
    assert len(calls) == 2 and engine.changes == 0
    assert (engine.slots.free_slots(), engine.live_count, engine.class_usage()) == before
    assert len(store) == 1 and sorted(store) == ["kept"] and store.verify() == []
    store.batch_create({f"b{i}": {"i": i} for i in range(3)})
    assert len(store) == 4 and store.verify() == []
    store.close()


def test_a_session_on_a_fully_allocated_file_allocates_nothing(tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of a file mmapkv made is allocated (fstat counts them), so neither the
    open nor the first change calls posix_fallocate: over a full 1 GiB store on ext4 it
    walked the extents for 166 ms, at the first change of every session.  Records still
    go through the map."""
    import mmapkv
    from mmapkv import engine as eng

    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("old", {"v": 1})
    calls: list[tuple[int, int]] = []
    real = eng.os.posix_fallocate
    monkeypatch.setattr(eng.os, "posix_fallocate",
                        lambda fd, offset, length: calls.append((offset, length)) or real(fd, offset, length))
    with mmapkv.Store(path) as store:
        store.create("new", {"v": 2})
        assert store._engine is not None and store._engine._map_writes
        assert calls == []
        assert store.read("old") == {"v": 1}


@pytest.mark.parametrize("allocation", ["done", "no space", "no posix_fallocate"])
def test_a_sparse_copy_has_its_holes_allocated_before_any_store_through_the_map(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, allocation: str) -> None:
    """A store into the map that meets a full disk is a SIGBUS (on tmpfs, a read of a hole
    too), which kills the process where no handler sees it.  A writable open of a file with
    holes (a copy made by `cp --sparse=always`) allocates them before anything goes
    through the map, and refuses with DiskFullError, the file untouched, when the disk has
    no room: the first change used to try, and on failure went on storing the table and
    the slot info through the map.  Records are copied in through the map only once every
    block is known allocated; where ``posix_fallocate`` does not exist they go in with
    pwrite, whose failure is an exception.  Either way the values round-trip."""
    import mmapkv
    from mmapkv import engine as eng, slots

    path = os.path.join(tmp_path, "s.mmapkv")
    with mmapkv.Store(path) as store:
        store.create("old", {"v": 1})
    with open(path, "r+b") as f:  # punch the file sparse, as `cp --sparse=always` would
        size = os.fstat(f.fileno()).st_size
        data = f.read()
    os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(size)
        for start in range(0, size, 4096):
            chunk = data[start:start + 4096]
            if chunk.strip(b"\0"):
                f.seek(start)
                f.write(chunk)
    sparse_blocks = os.stat(path).st_blocks
    assert sparse_blocks * 512 < size
    if allocation == "no space":
        def no_space(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(eng.os, "posix_fallocate", no_space)
        with pytest.raises(mmapkv.DiskFullError, match="holes") as caught:
            mmapkv.Store(path)
        assert caught.value.errno == errno.ENOSPC and path in str(caught.value)
        with open(path, "rb") as f:
            assert f.read() == data
        assert os.stat(path).st_blocks == sparse_blocks
        monkeypatch.undo()  # room again: it opens
    elif allocation == "no posix_fallocate":
        monkeypatch.delattr(eng.os, "posix_fallocate")
    writes: list[int] = []
    real_pwrite = eng.os.pwrite
    # (a new slot's zeros go in with pwrite, where records go in through the map: not counted)
    monkeypatch.setattr(eng.os, "pwrite", lambda fd, b, off: (b is slots._ZERO_SLOT or writes.append(off))
                        and 0 or real_pwrite(fd, b, off))
    reservable = allocation != "no posix_fallocate"
    with mmapkv.Store(path) as store:
        assert (os.stat(path).st_blocks * 512 >= size) is reservable  # the holes were filled at open
        assert store._engine is not None and not store._engine._map_writes  # nothing changed yet
        store.create("k", {"v": "x" * 500})
        assert store._engine._map_writes is reservable
        assert store.read("k") == {"v": "x" * 500} and store.read("old") == {"v": 1}
    assert (len(writes) == 0) is reservable  # no record went through pwrite
    with mmapkv.Store(path) as store:
        assert store.read("k") == {"v": "x" * 500} and store.verify() == []


@pytest.mark.parametrize("call", ["update", "batch_create", "restore_entries"])
def test_a_batch_refused_at_a_later_growth_gives_the_earlier_ones_back(tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      call: str) -> None:
    """A batch that needs several doublings, the disk full at the third: the two that
    succeeded stayed, so a refused all-or-nothing call left the file (and the disk) four
    times bigger.  Now the file is back at its size, every key reads, and a batch that
    fits goes in."""
    import mmapkv
    from mmapkv import engine as eng

    path = os.path.join(tmp_path, "s.mmapkv")
    store = mmapkv.Store(path, max_size=SMALL * 16)
    store.create("old", {"v": 1})
    size = os.path.getsize(path)
    real = eng.reserve
    growths: list[int] = []

    def third_refused(fd: int, new_size: int, start: int = 0) -> None:
        growths.append(new_size)
        if len(growths) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, new_size, start)

    monkeypatch.setattr(eng, "reserve", third_refused)
    batch = {f"k{i}": {"pad": "x" * 3000} for i in range(200)}
    with pytest.raises(mmapkv.DiskFullError):
        if call == "update":
            store.update(batch)
        elif call == "batch_create":
            store.batch_create(batch)
        else:
            store.restore_entries((key, value, None) for key, value in batch.items())
    assert len(growths) == 3 and os.path.getsize(path) == size
    assert store._engine is not None and store._engine.file_size == size
    assert dict(store.items()) == {"old": {"v": 1}} and store.verify() == []
    store.update({"new": {"v": 2}})
    store.close()
    with mmapkv.Store(path) as store:
        assert dict(store.items()) == {"old": {"v": 1}, "new": {"v": 2}} and store.verify() == []
