"""Paths the operating system refuses give mmapkv errors naming the path."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

import mmapkv


def test_parent_that_is_a_file_is_a_store_access_error(tmp_path: Any) -> None:
    blocker = os.path.join(tmp_path, "file")
    with open(blocker, "w") as f:
        f.write("not a directory")
    path = os.path.join(blocker, "sub", "store.mmapkv")
    with pytest.raises(mmapkv.StoreAccessError) as caught:
        mmapkv.Store(path)
    assert isinstance(caught.value, OSError) and caught.value.errno is not None
    assert path in str(caught.value)
    with open(blocker) as f:
        assert f.read() == "not a directory"


def test_dangling_symlink_is_an_invalid_argument_naming_the_target(tmp_path: Any) -> None:
    link = os.path.join(tmp_path, "link.mmapkv")
    target = os.path.join(tmp_path, "missing", "target.mmapkv")
    os.symlink(target, link)
    with pytest.raises(mmapkv.InvalidArgumentError, match="missing"):
        mmapkv.Store(link)
    assert not os.path.exists(target)


def test_store_name_near_the_filesystem_limit(tmp_path: Any) -> None:
    """The temporary sibling a new store is built under must fit where the name fits."""
    path = os.path.join(tmp_path, "x" * 240 + ".kv")
    with mmapkv.Store(path) as store:
        store.create("k", {"v": 1})
    with mmapkv.Store(path) as store:
        assert store.read("k") == {"v": 1}
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_read_only_open_of_a_missing_store_is_a_store_access_error(tmp_path: Any) -> None:
    from mmapkv.engine import Engine

    path = os.path.join(tmp_path, "absent.mmapkv")
    with pytest.raises(mmapkv.StoreAccessError, match="no store"):
        Engine(path, readonly=True, create=False)
    assert not os.path.exists(path)


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "read-only"])
def test_a_path_that_becomes_a_directory_after_the_checks_is_an_invalid_argument(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, readonly: bool) -> None:
    """The checks before the open say "a file" (another program made a directory there
    since): the open itself refuses it, as an InvalidArgumentError like the checks', not
    a StoreAccessError with a bare EISDIR, and nothing is left open."""
    from mmapkv.engine import Engine
    path = str(tmp_path / "s.mmapkv")
    os.mkdir(path)
    real_isdir, real_isfile = os.path.isdir, os.path.isfile
    monkeypatch.setattr(os.path, "isdir", lambda p: False if p == path else real_isdir(p))
    monkeypatch.setattr(os.path, "isfile", lambda p: True if p == path else real_isfile(p))
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(mmapkv.InvalidArgumentError, match="is a directory"):
        Engine(path, readonly=readonly, create=False)
    assert sorted(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("name", ["new/", "new/.", "new/x/..", "new/x/../"])
def test_a_path_that_names_a_directory_by_its_last_part_is_refused(tmp_path: Any, monkeypatch: Any,
                                                                   name: str) -> None:
    """``Store("new/.")`` made a store file named ``new``: abspath drops a last ``.`` or
    ``..`` as it drops a trailing slash, which was refused already."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mmapkv.InvalidArgumentError, match="so it names a directory"):
        mmapkv.Store(name)
    assert os.listdir(tmp_path) == []


def test_dot_dot_after_a_symbolic_link_names_the_file_open_names(tmp_path: Any, monkeypatch: Any) -> None:
    """abspath reads ``link/../s`` as ``./s``; the kernel, as the parent of the link's
    target.  The store opened (or made) ``./s``, another file than ``open`` names; with a
    store there, it opened that store."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("real/sub")
    os.symlink("real/sub", "link")
    with mmapkv.Store("s") as beside:  # where the text rule would lead
        beside.create("wrong", {"v": 1})
    with mmapkv.Store("link/../s") as store:
        assert store.path == os.path.join(os.path.realpath("real"), "s")
        assert list(store.keys()) == []
        store.create("right", {"v": 2})
    with open("real/s", "rb") as file:
        assert file.read(8) == mmapkv.format.MAGIC
    with mmapkv.Store("real/s") as store:
        assert list(store.keys()) == ["right"]


@pytest.mark.parametrize("error", [errno.EPERM, errno.EOPNOTSUPP])
def test_a_file_system_without_hard_links_is_named_as_the_cause(tmp_path: Any, monkeypatch: Any,
                                                                error: int) -> None:
    """On FAT or exFAT, link() is EPERM: the creation of a store said only "cannot open
    the store: Operation not permitted"."""
    def link(source: str, target: str) -> None:
        raise OSError(error, os.strerror(error), source, None, target)

    monkeypatch.setattr(mmapkv.engine.os, "link", link)
    with pytest.raises(mmapkv.StoreAccessError, match="file system cannot make hard links") as caught:
        mmapkv.Store(os.path.join(tmp_path, "s"))
    assert caught.value.errno == error
    assert os.listdir(tmp_path) == []  # the temporary file is gone too
