"""Shared fixtures: a fake clock and a store factory over the conformance configurations."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mmapkv
from mmapkv.format import Geometry

SMALL_MAX_SIZE = Geometry.smallest_max_size() * 4  # a few doublings, then the ceiling


class FakeClock:
    """A clock tests move by hand: ``clock.advance(seconds)``; never sleeps."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Any) -> str:
    return os.path.join(tmp_path, "test.mmapkv")


@pytest.fixture(params=["fresh-default", "reopened-default", "fresh-small", "reopened-small"])
def make_store(request: Any, store_path: str, clock: FakeClock) -> Iterator[Callable[..., mmapkv.Store]]:
    """Open stores in each conformance configuration: a fresh file or one that was created,
    closed and reopened; the default 1 GiB ceiling or a small one that fills quickly."""
    opened: list[mmapkv.Store] = []
    small = request.param.endswith("small")

    def factory(**kwargs: Any) -> mmapkv.Store:
        kwargs.setdefault("clock", clock)
        if small:
            kwargs.setdefault("max_size", SMALL_MAX_SIZE)
        if request.param.startswith("reopened") and not os.path.exists(store_path):
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
