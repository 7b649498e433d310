"""The file system failing under a store: an I/O error from a sync or a read, the file
deleted while open, a directory that can be written but not read, no room to create a
store.  Each is an error of mmapkv's own (``StoreAccessError``, ``DiskFullError``: both
``OSError``\\s keeping the errno) naming the path, never a bare ``OSError``, and never a
call that looks as if it kept a promise it could not keep."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

import mmapkv
from mmapkv import engine as eng
from mmapkv.format import FLAG_CLEAN, SB_BATCH_COMMIT, SUPERBLOCK


class MapProxy:
    """Stands in for a store's map, passing everything through to it."""

    def __init__(self, mm: Any) -> None:
        self._real = mm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __getitem__(self, index: Any) -> Any:
        return self._real[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._real[index] = value


class FailingSync(MapProxy):
    """A store's map whose ``msync`` fails with EIO (a disk going bad)."""

    def flush(self, *args: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def is_locked(path: str) -> bool:
    try:
        mmapkv.Store(path).close()
    except mmapkv.StoreLockedError:
        return True
    return False


def test_an_io_error_from_flush_is_store_access_error(tmp_path: Any) -> None:
    path = str(tmp_path / "s")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
        assert store._engine is not None
        real = store._engine._mm
        store._engine._mm = FailingSync(real)  # type: ignore[assignment]
        with pytest.raises(mmapkv.StoreAccessError, match=f"cannot sync {path}") as caught:
            store.flush()
        assert caught.value.errno == errno.EIO
        store._engine._mm = real
        assert store.read("k") == {"v": 1}


def test_an_io_error_while_closing_still_lets_go_of_the_file(tmp_path: Any) -> None:
    """close's sync failing used to leave the descriptor open and the lock held until the
    engine was collected; the next open recovers, as after a crash."""
    path = str(tmp_path / "s")
    store = mmapkv.Store(path)
    store.create("k", {"v": 1})
    assert store._engine is not None
    engine = store._engine
    engine._mm = FailingSync(engine._mm)  # type: ignore[assignment]
    with pytest.raises(mmapkv.StoreAccessError, match="while closing it") as caught:
        store.close()
    assert caught.value.errno == errno.EIO
    assert engine._fd == -1 and not is_locked(path)
    with pytest.raises(mmapkv.StoreClosedError):
        store.read("k")
    with mmapkv.Store(path) as again:
        assert again.read("k") == {"v": 1} and again.verify() == []


def test_an_io_error_reading_the_superblock_is_store_access_error(tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "s")
    mmapkv.Store(path).close()

    def failing_pread(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(eng.os, "pread", failing_pread)
    with pytest.raises(mmapkv.StoreAccessError, match=f"cannot read the store {path}") as caught:
        mmapkv.Store(path)
    assert caught.value.errno == errno.EIO
    monkeypatch.undo()
    assert not is_locked(path)  # the failed open let go of its lock


@pytest.mark.parametrize("durable", [False, True])
def test_flush_and_close_say_when_the_file_was_deleted_under_the_store(tmp_path: Any, durable: bool) -> None:
    """Another program deletes the file while it is open: every write still returns, into
    an inode nothing names, and a flush (or durable=True) promised they survive.  flush
    and close say they cannot; the keys stay readable until the close."""
    path = str(tmp_path / "s")
    store = mmapkv.Store(path, durable=durable)
    store.create("old", {"v": 1})
    os.unlink(path)
    store.create("new", {"v": 2})
    with pytest.raises(mmapkv.StoreAccessError, match="was deleted while this Store had it open") as caught:
        store.flush()
    assert caught.value.errno == errno.ENOENT and path in str(caught.value)
    assert dict(store.items()) == {"old": {"v": 1}, "new": {"v": 2}}  # still there to copy out
    with pytest.raises(mmapkv.StoreAccessError, match="was deleted"):
        store.close()
    with pytest.raises(mmapkv.StoreClosedError):
        store.read("old")
    assert not os.path.exists(path)


def test_flush_and_close_say_when_the_file_was_cut_short_under_the_store(tmp_path: Any) -> None:
    """Another program truncates the open file: flush and close returned normally and the
    close marked it clean, a store missing what it had acknowledged.  Now both say so, and
    the file is never marked clean (its open says it is truncated)."""
    path = str(tmp_path / "s")
    store = mmapkv.Store(path, max_size=1 << 20)
    for i in range(20):
        store.create(f"k{i}", {"x": "y" * 9000})
    size = os.path.getsize(path)
    os.truncate(path, 200_000)
    with pytest.raises(mmapkv.StoreAccessError, match=f"was cut to 200,000 bytes .* the store is {size:,}"):
        store.flush()
    with pytest.raises(mmapkv.StoreAccessError, match="was cut to 200,000 bytes"):
        store.close()
    with pytest.raises(mmapkv.StoreClosedError):
        store.read("k0")
    with open(path, "rb") as file:
        flags = SUPERBLOCK.unpack(file.read(SUPERBLOCK.size))[2]
    assert not flags & FLAG_CLEAN
    with pytest.raises(mmapkv.CorruptStoreError, match="is truncated: 200,000 bytes"):
        mmapkv.Store(path)


def test_a_store_renamed_or_only_read_while_deleted_closes_quietly(tmp_path: Any) -> None:
    """A rename keeps the data (it has a name), and a session that changed nothing lost
    nothing by its close: neither is an error."""
    path, moved = str(tmp_path / "s"), str(tmp_path / "moved")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    with mmapkv.Store(path) as store:
        os.rename(path, moved)
        store.create("more", {"v": 2})
        store.flush()
    with mmapkv.Store(moved) as store:
        assert sorted(store) == ["k", "more"]
        os.unlink(moved)
        assert store.read("k") == {"v": 1}


def test_no_room_to_create_a_store_is_disk_full(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no free block or inode, creating the file fails with ENOSPC: that is
    DiskFullError, as when the disk has room for the file but not its blocks (it was
    StoreAccessError, which `except DiskFullError` missed)."""
    real_open = eng.os.open

    def full_disk_open(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(eng.os, "open", full_disk_open)
    path = str(tmp_path / "s")
    with pytest.raises(mmapkv.DiskFullError, match=f"cannot open the store {path}") as caught:
        mmapkv.Store(path)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_directory_that_cannot_be_read_still_gets_its_store(tmp_path: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory one may write but not read (mode 0333) cannot be opened to fsync the
    new name: Store() used to fail there with the file already linked in, so a failed call
    left a store behind.  As SQLite does, the new name goes without its directory's sync."""
    real_open = eng.os.open
    where = str(tmp_path / "w")
    os.mkdir(where)

    def unreadable_directory(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == where:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(eng.os, "open", unreadable_directory)
    path = os.path.join(where, "s")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    monkeypatch.undo()
    with mmapkv.Store(path) as store:
        assert store.read("k") == {"v": 1}


class RecordingMap(MapProxy):
    """A store's map that logs, in order, each msync and where each store into it began."""

    def __init__(self, mm: Any) -> None:
        super().__init__(mm)
        self.log: list[tuple[str, int]] = []

    def flush(self, *args: Any) -> None:
        self.log.append(("msync", -1))
        self._real.flush(*args)

    def __setitem__(self, index: Any, value: Any) -> None:
        self.log.append(("store", index.start if isinstance(index, slice) else index))
        self._real[index] = value


def test_a_durable_batch_syncs_its_records_before_the_commit_that_names_them(tmp_path: Any) -> None:
    """With durable=True a batch's records must reach the disk before the batch_commit
    word that makes them count: written back the other way round, a power cut between the
    two leaves a commit naming records that are not there (a page-cache copy, what the
    crash tests take, cannot show the order)."""
    with mmapkv.Store(str(tmp_path / "s"), durable=True) as store:
        store.create("first", {"v": 0})  # the session's first change is behind us
        engine = store._engine
        assert engine is not None
        real = engine._mm
        recording = RecordingMap(real)
        engine._mm = recording  # type: ignore[assignment]
        store.batch_create({f"b{i}": {"v": i} for i in range(3)})
        engine._mm = real
        log = recording.log
    commit = log.index(("store", SB_BATCH_COMMIT))
    records = [i for i, (what, at) in enumerate(log[:commit]) if what == "store" and at >= engine._slots_offset]
    assert len(records) == 3, log
    assert ("msync", -1) in log[records[-1] + 1:commit], log  # synced after the last record, before the commit
    assert ("msync", -1) in log[commit + 1:], log  # and the commit itself, before returning
