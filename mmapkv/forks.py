"""What a forked child does with what its parent had open.

A child shares its parent's open file descriptions (and so the parent's ``flock``), its
maps and, for ``RedisStore``, its connection pools.  Each kind of object that must be let
go of, or given a fresh start, in a child registers with a ``ForkRegistry``, whose
handler runs in the child right after ``fork()``.

The registry keeps plain weak references, pruned as objects are added, not a ``WeakSet``:
a weak container's removal callback is Python code run wherever its object dies (an
engine, inside a ``compact``), and a Ctrl-C landing in it is swallowed as unraisable.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ForkRegistry"]

_T = TypeVar("_T")


class ForkRegistry(Generic[_T]):
    """Objects of one kind, each handed to *in_child* in a forked child."""

    def __init__(self, in_child: Callable[[_T], None]) -> None:
        self._refs: dict[int, weakref.ref[_T]] = {}
        self._in_child = in_child
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def add(self, obj: _T) -> None:
        for number in [number for number, ref in self._refs.items() if ref() is None]:
            del self._refs[number]
        self._refs[id(obj)] = weakref.ref(obj)

    def _after_fork(self) -> None:
        for ref in list(self._refs.values()):
            obj = ref()
            if obj is not None:
                self._in_child(obj)
