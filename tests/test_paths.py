"""Paths the operating system refuses give mmapkv errors naming the path."""

from __future__ import annotations

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
