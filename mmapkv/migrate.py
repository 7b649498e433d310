"""Copy every key of one store to another, each with its absolute expiry: what ``mmapkv copy``
runs, between any two of ``Store`` and ``RedisStore``.

A :class:`Copy` lists the source's keys, can list those the destination holds already
(:meth:`Copy.conflicts`, before anything is written), then copies ``CHUNK`` keys at a time:
each chunk is read with its expiries (``items_with_expiry``) and written as one
all-or-nothing batch (``restore_entries``), so an interruption leaves whole chunks and the
counts say exactly how many keys were copied.  An expiry is an instant, not a countdown: a
key with 10 s left at the source has the same instant at the destination (both clocks are
assumed to agree, as NTP keeps them); keys whose instant has passed are skipped.

It is not a snapshot: a key written to the source during the copy may be missed, and one
deleted meanwhile is counted with the expired.  Stop the writers first for an exact copy.

>>> import os, tempfile
>>> from mmapkv import Store
>>> with tempfile.TemporaryDirectory() as where, \\
...         Store(os.path.join(where, "a"), clock=lambda: 1000.0) as a, \\
...         Store(os.path.join(where, "b"), clock=lambda: 1000.0) as b:
...     a.create("k", {"n": 1}, ttl=60)
...     copy = Copy(a, b)
...     copy.conflicts(), copy.run(), b.ttl("k")
([], CopyResult(listed=1, copied=1, expired=0), 60)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from .errors import MmapKVError
from .store import Store

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = ["Copy", "CopyResult", "CHUNK"]

CHUNK = 500   #: keys per read and per all-or-nothing write

AnyStore = Union[Store, "RedisStore"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CopyResult:
    listed: int    #: keys the source listed
    copied: int    #: keys written to the destination
    expired: int   #: listed, but expired (or deleted) before they could be copied


class Copy:
    """A copy of every key of *source* to *dest*, keeping absolute expiries.

    Without *replace*, :meth:`run` raises ``KeyExistsError`` if a key it copies exists in
    *dest* (check :meth:`conflicts` first to refuse before writing anything); with it,
    such keys are overwritten.  ``copied`` and ``expired`` count as it goes, so they say
    how far a copy that raised got.
    """

    def __init__(self, source: AnyStore, dest: AnyStore, *, replace: bool = False) -> None:
        self.source, self.dest, self.replace = source, dest, replace
        self._keys: list[str] | None = None
        self.copied = 0
        self.expired = 0
        #: keys of the chunk under way: if the copy stops now, up to this many more may be
        #: written (Redis applied the batch, its reply not read yet; or it was not counted)
        self.pending = 0

    @property
    def keys(self) -> list[str]:
        """The source's keys, listed once (``SCAN`` for Redis), in key order: a copy, its
        refusal and its chunks come out the same whatever order the source lists them in
        (a table's, by hash, differs with each file's seed; ``SCAN``'s with the server)."""
        if self._keys is None:
            self._keys = sorted(self.source.keys())
        return self._keys

    @property
    def listed(self) -> int:
        """How many keys the source listed (0 before it was asked)."""
        return len(self._keys) if self._keys is not None else 0

    def conflicts(self) -> list[str]:
        """The keys of the source that the destination holds (live): what a copy without
        *replace* would refuse.  Reads only; one batch of keys per round trip."""
        dest = self.dest
        if isinstance(dest, Store):
            return [key for key in self.keys if key in dest]
        return [key for key, _, _ in dest.items_with_expiry(self.keys)]

    def run(self, progress: Progress | None = None) -> CopyResult:
        """Copy every listed key, a chunk at a time; *progress* is called with (keys done,
        keys listed) after each chunk."""
        keys = self.keys
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            entries = list(self.source.items_with_expiry(chunk))
            self.pending = len(entries)
            try:
                written = self.dest.restore_entries(entries, replace=self.replace)
            except MmapKVError:
                if isinstance(self.dest, Store):  # a refusal, all or nothing: nothing written
                    self.pending = 0  # (a Ctrl-C may land after its commit: then it stays)
                raise
            self.copied += written
            self.expired += len(chunk) - written
            self.pending = 0
            if progress is not None:
                progress(start + len(chunk), len(keys))
        return CopyResult(len(keys), self.copied, self.expired)
