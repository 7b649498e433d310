"""A damaged superblock field is survived where the file itself says what it must be."""

from __future__ import annotations

import struct

import pytest

import mmapkv
from mmapkv import format as fmt


def _populate(path: str, n: int = 50) -> None:
    with mmapkv.Store(path) as store:
        for i in range(n):
            store.create(f"k{i}", {"i": i})


@pytest.mark.parametrize("bit", [0, 3, 17, 40, 63])
def test_flipped_file_size_bit_is_recovered_from_the_file(store_path: str, bit: int) -> None:
    _populate(store_path)
    with open(store_path, "r+b") as f:
        f.seek(fmt.SB_FILE_SIZE)
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(fmt.SB_FILE_SIZE)
        f.write(struct.pack("<Q", size ^ (1 << bit)))
    with mmapkv.Store(store_path) as store:
        assert not store._engine.was_clean  # the checksum caught it: recovery ran
        assert len(store) == 50 and store.read("k7") == {"i": 7}
        assert store.verify() == []


@pytest.mark.parametrize("size", [0, 1, 2**40, 2**64 - 1])
def test_is_valid_size_refuses_sizes_outside_the_ceiling(size: int) -> None:
    assert not fmt.Geometry(fmt.MAX_FILE_SIZE).is_valid_size(size)
