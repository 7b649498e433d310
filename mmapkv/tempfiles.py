"""Temporary files beside a store: how they are named, and removing the ones a dead process left.

Creating a store and compacting one build the new file under a temporary name in the
store's directory, then link or rename it into place, so the store's own path only ever
names a complete file.  A process killed in between leaves its temporary file behind; the
next process to hold the store removes it (``remove_abandoned``), but only a file that is
provably ours and abandoned:

* its name is ``.<first 32 characters of the store's name>.<kind>-<16 hex digits>.tmp``;
* it is a regular file that is empty or starts with mmapkv's magic number;
* no process holds a lock on it (the builder of a temporary file locks it from the moment
  it creates it until it is renamed or removed).

A store reached through a symbolic link is the file the link names: its temporary files
are named after, and kept beside, that file, where compact renames over it.
"""

from __future__ import annotations

import os
import re
import stat
import uuid

import portalocker

from .format import MAGIC
from .locking import opened

__all__ = ["temporary_path", "remove_abandoned", "unlink_if_there", "KINDS"]

KINDS = ("create", "compact")
_HEX = re.compile(r"[0-9a-f]{16}")


def _prefix(path: str) -> str:
    # Short whatever the store's name, so a temporary sibling of a name near the file
    # system's 255-byte limit still fits.
    return f".{os.path.basename(path)[:32]}."


def temporary_path(path: str, kind: str) -> str:
    """A fresh temporary name beside the file *path* names (through any symbolic link)
    for a file of *kind* (one of ``KINDS``)."""
    assert kind in KINDS
    path = os.path.realpath(path)
    return os.path.join(os.path.dirname(path) or ".",
                        f"{_prefix(path)}{kind}-{uuid.uuid4().hex[:16]}.tmp")


def unlink_if_there(path: str) -> None:
    """Remove the name *path* (a temporary file's), if anything still has it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _is_ours(name: str, prefix: str) -> bool:
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return False
    kind, _, digits = name[len(prefix):-len(".tmp")].partition("-")
    return kind in KINDS and _HEX.fullmatch(digits) is not None


def remove_abandoned(path: str) -> list[str]:
    """Remove the temporary files a dead process left beside the store *path*; return
    their paths.  Never raises for a file it cannot judge: it leaves that file alone."""
    path = os.path.realpath(path)  # where temporary_path puts them
    directory = os.path.dirname(path) or "."
    prefix = _prefix(path)
    removed: list[str] = []
    try:
        listing = os.listdir(directory)
    except OSError:
        return removed
    for name in [n for n in listing if _is_ours(n, prefix)]:
        candidate = os.path.join(directory, name)
        try:
            # A regular file, not a link, first: a FIFO would block the open.  Then a
            # FileIO owns the descriptor from the open on (locking.opened): held by number,
            # an interrupt before its close kept it, and with it the lock taken below.
            if not stat.S_ISREG(os.lstat(candidate).st_mode):
                continue
            file = opened(candidate, readonly=True)
        except OSError:
            continue
        try:
            fd = file.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            head = os.pread(fd, len(MAGIC), 0)
            if head and head != MAGIC:
                continue  # not a store: not ours to remove, whatever its name
            try:
                portalocker.lock(fd, portalocker.LOCK_EX | portalocker.LOCK_NB)
            except (portalocker.AlreadyLocked, portalocker.LockException):
                continue  # its builder is alive
            if os.path.samestat(os.fstat(fd), os.lstat(candidate)):
                os.unlink(candidate)
                removed.append(candidate)
        except OSError:
            continue
        finally:
            file.close()
    return removed
