"""Limits and growth: doubling up to the ceiling, StoreFullError, max_size rules, and the
default location with the module-level functions."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv import InvalidArgumentError, StoreFullError
from mmapkv.format import MAX_FILE_SIZE, Geometry

SMALLEST = Geometry.smallest_max_size()
GROWTH_MAX_SIZE = 4 << 20  # 8 initial slots, five doublings, then clamped to the ceiling


def value_for(i: int) -> dict[str, Any]:
    """A value of varying size (up to ~16 KB), unique per *i*."""
    return {"i": i, "pad": "é" * (i * 97 % 8000)}


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def expected_sizes(max_size: int) -> list[int]:
    """Every size the file takes on its way to *max_size*, per Geometry.grown_size."""
    g = Geometry(max_size)
    sizes = [g.initial_size]
    while sizes[-1] < max_size:
        sizes.append(g.grown_size(sizes[-1]))
    return sizes


@pytest.fixture
def path(tmp_path: Any) -> str:
    return os.path.join(tmp_path, "grow.mmapkv")


def fill(store: mmapkv.Store, count: int, start: int = 0) -> list[int]:
    """Create keys k<start>..; return the file size after each create."""
    sizes = []
    for i in range(start, start + count):
        store.create(f"k{i}", value_for(i))
        size = os.path.getsize(store.path)
        assert size <= store.stats().max_size
        sizes.append(size)
    return sizes


def test_growth_follows_grown_size_up_to_ceiling(path: str) -> None:
    """The file starts at initial_size, doubles (clamped) when it runs out of slots, takes
    exactly the sizes Geometry.grown_size gives, and never exceeds max_size."""
    sizes = expected_sizes(GROWTH_MAX_SIZE)
    assert len(sizes) >= 5  # several doublings, and the last step is clamped
    assert sizes[-1] == GROWTH_MAX_SIZE and sizes[-2] * 2 > GROWTH_MAX_SIZE
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        assert os.path.getsize(path) == g.initial_size
        seen = fill(store, g.max_slots)
        distinct = sorted(set(seen))
        assert distinct == sizes
        assert seen == sorted(seen)  # never shrinks
        for i, size in enumerate(seen):  # grows exactly when the slots run out
            assert g.slot_count(size) >= i + 1
            if i and size != seen[i - 1]:
                assert g.slot_count(seen[i - 1]) == i
        stats = store.stats()
        assert stats.file_size == GROWTH_MAX_SIZE == os.path.getsize(path)
        assert stats.capacity == stats.max_capacity == g.max_slots == len(store)
        assert store.verify() == []


def test_store_full_at_ceiling(path: str) -> None:
    """At the ceiling a create is StoreFullError whose message names the path and says
    deleting frees room; the store stays readable and a delete lets one create succeed."""
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        fill(store, g.max_slots)
        with pytest.raises(StoreFullError) as info:
            store.create("overflow", {"x": 1})
        message = str(info.value)
        assert "delet" in message.lower()
        assert path in message
        assert f"{GROWTH_MAX_SIZE:,}" in message or str(GROWTH_MAX_SIZE) in message
        assert os.path.getsize(path) == GROWTH_MAX_SIZE
        assert "overflow" not in store
        assert len(store) == g.max_slots
        for i in range(g.max_slots):
            assert store.read(f"k{i}") == value_for(i)
        assert store.verify() == []
        store.delete("k17")
        store.create("overflow", {"x": 1})
        with pytest.raises(StoreFullError):
            store.create("overflow2", {"x": 2})
        store.delete("overflow")
        store.delete("k3")
        store.batch_create({"b1": {}, "b2": {}})  # the two freed slots are reused
        with pytest.raises(StoreFullError):
            store.batch_create({"b3": {}})
        assert os.path.getsize(path) == GROWTH_MAX_SIZE
        assert len(store) == g.max_slots
        assert store.verify() == []


def test_batch_that_does_not_fit_writes_nothing(path: str) -> None:
    """A batch bigger than the room left is StoreFullError with nothing written and no
    growth; a batch of exactly the room left (across several doublings) commits whole."""
    g = Geometry(GROWTH_MAX_SIZE)
    with mmapkv.Store(path, max_size=GROWTH_MAX_SIZE) as store:
        with pytest.raises(StoreFullError):
            store.batch_create({f"b{i}": {"i": i} for i in range(g.max_slots + 1)})
        assert len(store) == 0
        assert os.path.getsize(path) == g.initial_size  # did not grow for nothing
        fill(store, 10)
        with pytest.raises(StoreFullError):
            store.batch_create([(f"b{i}", {"i": i}) for i in range(g.max_slots - 9)])
        assert len(store) == 10 and sorted(store.keys()) == sorted(f"k{i}" for i in range(10))
        assert store.verify() == []
        store.batch_create([(f"b{i}", {"i": i}) for i in range(g.max_slots - 10)])
        assert len(store) == g.max_slots
        assert os.path.getsize(path) == GROWTH_MAX_SIZE
        assert store.read(f"b{g.max_slots - 11}") == {"i": g.max_slots - 11}
        assert store.verify() == []


def test_nothing_lost_after_reopen(path: str) -> None:
    """After growth, deletes and a clean close, reopening shows every key with its value at
    the same file size, and growth continues from there."""
    max_size = SMALLEST * 8
    g = Geometry(max_size)
    with mmapkv.Store(path, max_size=max_size) as store:
        fill(store, 40)
        for i in range(0, 40, 5):
            store.delete(f"k{i}")
        size = os.path.getsize(path)
    with mmapkv.Store(path) as store:  # max_size=None: the file's own ceiling
        assert store.stats().max_size == max_size
        assert os.path.getsize(path) == size
        assert len(store) == 32
        for i in range(40):
            if i % 5:
                assert store.read(f"k{i}") == value_for(i)
            else:
                assert f"k{i}" not in store
        assert store.verify() == []
        fill(store, g.max_slots - 32, start=100)
        assert os.path.getsize(path) == max_size
        with pytest.raises(StoreFullError):
            store.create("full", {})
    with mmapkv.Store(path, max_size=max_size) as store:
        assert len(store) == g.max_slots
        assert store.read("k1") == value_for(1)
        assert store.verify() == []


def test_reopen_with_other_max_size_is_refused(path: str) -> None:
    """Reopening with a different max_size is InvalidArgumentError naming both sizes, and the
    file is left as it was; the same max_size is fine."""
    with mmapkv.Store(path, max_size=SMALLEST * 4) as store:
        store.create("a", {"v": 1})
    before = sha256(path)
    for other in (SMALLEST * 8, MAX_FILE_SIZE, SMALLEST):
        with pytest.raises(InvalidArgumentError) as info:
            mmapkv.Store(path, max_size=other)
        assert f"{SMALLEST * 4:,}" in str(info.value)
        assert f"{other:,}" in str(info.value)
        assert path in str(info.value)
    assert sha256(path) == before
    with mmapkv.Store(path, max_size=SMALLEST * 4) as store:
        assert store.read("a") == {"v": 1}


def test_default_ceiling_is_1_gib(path: str) -> None:
    """Without max_size the ceiling is exactly 1 GiB, and 1 GiB may be given explicitly."""
    with mmapkv.Store(path) as store:
        assert store.stats().max_size == MAX_FILE_SIZE == 1_073_741_824
        assert store.stats().max_capacity == Geometry(MAX_FILE_SIZE).max_slots
    with mmapkv.Store(path, max_size=MAX_FILE_SIZE) as store:
        assert store.stats().file_size == Geometry(MAX_FILE_SIZE).initial_size


@pytest.mark.parametrize(
    "max_size",
    [MAX_FILE_SIZE + 1, 2 * MAX_FILE_SIZE, SMALLEST - 1, 0, -1, 1.5 * SMALLEST, "1000000",
     True],
)
def test_max_size_out_of_range(path: str, max_size: Any) -> None:
    """max_size above 1 GiB, below the smallest layout, or not an int is
    InvalidArgumentError naming the limit, and no file is created."""
    with pytest.raises(InvalidArgumentError) as info:
        mmapkv.Store(path, max_size=max_size)
    assert isinstance(info.value, ValueError)
    assert f"{MAX_FILE_SIZE:,}" in str(info.value)
    assert not os.path.exists(path)


def test_max_size_bounds_accepted(tmp_path: Any) -> None:
    """The smallest layout and exactly 1 GiB are valid ceilings."""
    for max_size in (SMALLEST, MAX_FILE_SIZE):
        p = os.path.join(tmp_path, f"{max_size}.mmapkv")
        with mmapkv.Store(p, max_size=max_size) as store:
            store.create("a", {})
            assert store.stats().max_size == max_size
            assert os.path.getsize(p) <= max_size
    with mmapkv.Store(os.path.join(tmp_path, f"{SMALLEST}.mmapkv")) as store:
        fill(store, Geometry(SMALLEST).max_slots - 1, start=1)
        with pytest.raises(StoreFullError):  # the smallest store cannot grow at all
            store.create("full", {})
        assert os.path.getsize(store.path) == SMALLEST


# --------------------------------------------------------------------- locations

def test_missing_parent_directories_are_created(tmp_path: Any) -> None:
    """A path whose parent directories do not exist is created, file mode 0600."""
    p = os.path.join(tmp_path, "a", "b", "c", "store.mmapkv")
    with mmapkv.Store(p) as store:
        store.create("x", {"v": 1})
    assert os.path.isfile(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    with mmapkv.Store(p) as store:
        assert store.read("x") == {"v": 1}


def test_directory_path_is_refused(tmp_path: Any) -> None:
    """A path that is a directory is InvalidArgumentError naming it; nothing is created in it."""
    d = os.path.join(tmp_path, "dir")
    os.mkdir(d)
    with pytest.raises(InvalidArgumentError) as info:
        mmapkv.Store(d)
    assert d in str(info.value)
    assert os.listdir(d) == []


def test_dangling_symlink_is_not_reported_as_locked(tmp_path: Any) -> None:
    """A path that is a symlink to a missing file either creates the store or gives a clear
    InvalidArgumentError; it is never StoreLockedError (nobody holds it)."""
    link = os.path.join(tmp_path, "link.mmapkv")
    os.symlink(os.path.join(tmp_path, "missing", "target.mmapkv"), link)
    try:
        mmapkv.Store(link).close()
    except InvalidArgumentError:
        pass


@pytest.mark.parametrize("bad", ["", "a\0b", 5, b"/tmp/x"])
def test_bad_path_type(bad: Any) -> None:
    """An empty path, one with NUL, or a non-path object is InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError):
        mmapkv.Store(bad)


@pytest.fixture
def data_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """XDG_DATA_HOME pointing at a not-yet-existing directory; the module's default store
    reset before and closed after."""
    home = os.path.join(tmp_path, "xdg", "share")
    monkeypatch.setenv("XDG_DATA_HOME", home)
    monkeypatch.setattr(mmapkv, "_default_store", None)
    yield home
    if mmapkv._default_store is not None:
        mmapkv._default_store.close()


def test_default_location(data_home: str) -> None:
    """Store() creates <XDG_DATA_HOME>/mmapkv/default.mmapkv, mode 0600, parents included."""
    expected = os.path.join(data_home, "mmapkv", "default.mmapkv")
    assert not os.path.exists(data_home)
    assert mmapkv.default_path() == expected
    with mmapkv.Store() as store:
        assert store.path == expected
        store.create("hello", {"n": 1})
    assert os.path.isfile(expected)
    assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
    with mmapkv.Store(None) as store:
        assert store.read("hello") == {"n": 1}


def test_module_level_functions(data_home: str) -> None:
    """mmapkv.create/read/delete work on the default store and persist there."""
    mmapkv.create("mod", {"v": [1, 2]})
    mmapkv.create("mod-ttl", {"v": 2}, ttl=3600)
    assert mmapkv.read("mod") == {"v": [1, 2]}
    with pytest.raises(mmapkv.KeyExistsError):
        mmapkv.create("mod", {"v": 3})
    mmapkv.delete("mod")
    with pytest.raises(mmapkv.KeyNotFoundError):
        mmapkv.read("mod")
    with pytest.raises(mmapkv.KeyNotFoundError):
        mmapkv.delete("mod")
    store = mmapkv._default_store
    assert store is not None
    assert store.path == os.path.join(data_home, "mmapkv", "default.mmapkv")
    assert store.keys() == ["mod-ttl"]
    assert store.verify() == []
    store.close()
    assert mmapkv.read("mod-ttl") == {"v": 2}  # reopened on the next use
    mmapkv._default_store.close()  # type: ignore[union-attr]
    with mmapkv.Store() as again:
        assert again.keys() == ["mod-ttl"]
