"""Shared fixtures: a fake clock, and store factories over the conformance configurations:
``make_store`` (every ``Store`` configuration and ``RedisStore``: the API both must agree on)
and ``make_file_store`` (``Store`` only: files, crashes, the format).  And where the suite's
stores live: in RAM when the machine has a tmpfs (``pytest_configure`` below)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv.format import Geometry
from redis_fixtures import age_namespace, redis_client, redis_namespace, redis_server, redis_store  # noqa: F401

SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4  # a few doublings, then the ceiling

#: where the suite's temporary files go when the run names no ``--basetemp``: a tmpfs if the
#: machine has one with room (``MMAPKV_TEST_TMPDIR`` names another directory, a disk's say)
TEST_TMPDIR = os.environ.get("MMAPKV_TEST_TMPDIR", "/dev/shm")
TMPFS_ROOM = 4 << 30  # the suite's stores peak under 1 GiB (tmp_path_retention_policy = "failed")


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    """Put every temporary file of the session (``tmp_path``, ``tempfile``, the children's
    ``TMPDIR``) under one directory in ``TEST_TMPDIR``, removed when the session ends.

    Why: the suite models a crash by copying a store's bytes, never by losing the page
    cache, so nothing it checks depends on a disk; but each change's ``msync`` does, and on
    this project's two-core machine the msyncs were 40 % of the suite's time (530 s on the
    disk, 315 s on /dev/shm: the same 1,941 tests).  A run that names ``--basetemp``, an xdist
    worker (it inherits the controller's), or a machine without the directory is left as is.
    """
    if config.option.basetemp or hasattr(config, "workerinput") or not os.path.isdir(TEST_TMPDIR):
        return
    try:
        if shutil.disk_usage(TEST_TMPDIR).free < TMPFS_ROOM:
            return
        base = tempfile.mkdtemp(prefix="mmapkv-tests-", dir=TEST_TMPDIR)
    except OSError:
        return  # not writable here: pytest's default place
    config.option.basetemp = os.path.join(base, "pytest")
    tmp = os.path.join(base, "tmp")
    os.mkdir(tmp)
    os.environ["TMPDIR"] = tempfile.tempdir = tmp  # the environment: xdist's workers, children
    config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))


class FakeClock:
    """A clock tests move by hand: ``clock.advance(seconds)`` or ``clock.now = t``; never
    sleeps.  Each of ``listeners`` is called with the seconds the clock moved (a
    ``RedisStore`` test makes the same time pass on the server)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._now = now
        self.listeners: list[Callable[[float], None]] = []

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        moved, self._now = value - self._now, value
        for listener in self.listeners:
            listener(moved)

    def advance(self, seconds: float) -> None:
        self.now = self._now + seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Any) -> str:
    return os.path.join(tmp_path, "test.mmapkv")


FILE_CONFIGURATIONS = ["fresh-default", "reopened-default", "fresh-small", "reopened-small"]


@pytest.fixture(params=FILE_CONFIGURATIONS)
def make_file_store(request: Any, store_path: str, clock: FakeClock) -> Iterator[Callable[..., mmapkv.Store]]:
    """Open stores in each conformance configuration: a fresh file or one that was created,
    closed and reopened; the default 1 GiB ceiling or a small one that fills quickly."""
    yield from _file_stores(request.param, store_path, clock)


@pytest.fixture(params=[*FILE_CONFIGURATIONS, "redis"])
def make_store(request: Any, store_path: str, clock: FakeClock) -> Iterator[Callable[..., Any]]:
    """``make_file_store``'s configurations and a ``RedisStore`` on a real server: what the
    API tests run on.  Each call opens the same store again (the same file, or the same
    namespace); for Redis, moving ``clock`` ages the namespace's TTLs on the server."""
    if request.param != "redis":
        yield from _file_stores(request.param, store_path, clock)
        return
    server = request.getfixturevalue("redis_server")
    client = request.getfixturevalue("redis_client")
    namespace = request.getfixturevalue("redis_namespace")
    clock.listeners.append(lambda seconds: age_namespace(client, namespace, seconds))
    opened: list[mmapkv.RedisStore] = []

    def factory() -> mmapkv.RedisStore:
        store = mmapkv.RedisStore(server.url, namespace=namespace)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()
    with mmapkv.RedisStore(server.url, namespace=namespace) as cleaner:
        cleaner.clear()


def slot_of(store: mmapkv.Store, key: str) -> int:
    """The slot *key*'s record is in (the key must be stored)."""
    engine = store._engine
    assert engine is not None
    kb = key.encode()
    return engine.slot_of(engine.record_offset(engine.find(kb, engine.fingerprint(kb))))


def table_shape(engine: Any) -> list[tuple[int, int]]:
    """(local depth, entries) of the segment each directory entry names, in order: what
    two ways of building a store's table must agree on."""
    table = engine.table
    return [(engine.slots.info(segment)[1], engine.slots.used(segment))
            for segment in table.dir[:1 << table.depth].tolist()]


def where(store: Any) -> str:
    """What a store's messages name it by: its file, or its server."""
    return store.path if isinstance(store, mmapkv.Store) else str(store.url)


def expired_error(store: Any) -> type[mmapkv.KeyNotFoundError]:
    """What reading an expired key raises: ``Store`` still holds the entry and says it
    expired; Redis has deleted it, so the key is simply not found (docs/scaling.md)."""
    return mmapkv.KeyExpiredError if isinstance(store, mmapkv.Store) else mmapkv.KeyNotFoundError


def _file_stores(param: str, store_path: str, clock: FakeClock) -> Iterator[Callable[..., mmapkv.Store]]:
    opened: list[mmapkv.Store] = []
    small = param.endswith("small")

    def factory(**kwargs: Any) -> mmapkv.Store:
        kwargs.setdefault("clock", clock)
        if small:
            kwargs.setdefault("max_size", SMALL_MAX_SIZE)
        if param.startswith("reopened") and not os.path.exists(store_path):
            mmapkv.Store(store_path, **kwargs).close()
        store = mmapkv.Store(store_path, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@contextlib.contextmanager
def held_by_another_process(hold: str) -> Iterator[None]:
    """Run the Python statements *hold* (which take a lock) in a child process, and keep
    the child holding it until the block ends."""
    code = textwrap.dedent(hold) + '\nimport sys\nprint("ready", flush=True)\nsys.stdin.read()\n'
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield
    finally:
        child.communicate("")
        assert child.returncode == 0
