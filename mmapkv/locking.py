"""The one-process rule: an exclusive ``flock`` on the store file, taken through portalocker;
and how deep a thread holds a ``Store``'s thread lock.

``flock`` locks belong to an open file description, so a second ``Store`` on the same file
in the *same* process is refused too, and the kernel drops the lock when a holder dies.
After locking we check that the path still names the inode we locked: a rival that opened
the file just before ``compact`` replaced it must not keep a lock on the unlinked old file.
Also how a store's files are named (``absolute_path``) and opened (``opened``), and a new
name in their directory made durable (``sync_directory``).
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import time
from collections.abc import Callable
from typing import Any

import portalocker

from .errors import StoreLockedError, system_error

__all__ = ["absolute_path", "opened", "sync_directory", "lock_file", "unlock_file", "names_file", "recursion_count"]

_COUNT = re.compile(r" count=(\d+) ")

_POLL_SECONDS = 0.05

# What flock says when another open file holds the lock; any other errno (ENOLCK on a
# network file system, EBADF, EINTR) is a failure to lock, not a rival.
_HELD_ELSEWHERE = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})


def absolute_path(path: str) -> str:
    """*path* made absolute as the kernel reads it: ``os.path.abspath``, except that a path
    with ``..`` has its directory resolved (``realpath``), since after a symbolic link
    ``..`` is the parent of the link's target, not of the link, which abspath's text rule
    assumes (``link/../s`` would name another file than ``open`` does).

    :raises OSError: the path is relative and the working directory is gone.
    """
    if os.pardir not in path.replace(os.altsep or os.sep, os.sep).split(os.sep):
        return os.path.abspath(path)
    head, name = os.path.split(path)
    return os.path.join(os.path.realpath(head or os.curdir), name)


def opened(path: str, *, readonly: bool = False, new: bool = False) -> io.FileIO:
    """*path* opened by a ``FileIO``, which owns the descriptor from the system call on:
    its ``close`` closes it and marks it closed in one C call, and its finaliser closes it
    if nothing did.  ``new=True`` creates the file (it must not exist) readable by its
    owner only.

    Opened with ``os.open`` and handed over, an interrupt between the two leaked an
    unlocked descriptor; closed by number, an interrupt just after ``os.close`` returned
    (where CPython raises a signal's exception) left the number for a finaliser to close
    again, by then another file's (a second Store's, whose next growth reserved blocks in
    an unrelated file).  The opener is C calling C (``partial`` of ``os.open``): no
    bytecode, so no place for Ctrl-C, between the open and the ``FileIO`` holding it."""
    if new:
        return io.FileIO(path, "x+", opener=functools.partial(os.open, mode=0o600))
    return io.FileIO(path, "r" if readonly else "r+")


def sync_directory(path: str) -> None:
    """fsync the directory holding *path*, so that a name just linked or renamed there
    survives power loss.  In a directory we may write but not read, go without, as
    SQLite does; any other ``OSError`` is the caller's to word."""
    try:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except PermissionError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_file(fd: int, path: str, *, shared: bool = False, timeout: float = 0.0) -> bool:
    """Lock *fd* (opened on *path*) or raise ``StoreLockedError`` after *timeout* seconds.

    Returns False, holding no lock, if *path* no longer names the file *fd* is open on:
    the caller should open the path again.
    """
    flags = (portalocker.LOCK_SH if shared else portalocker.LOCK_EX) | portalocker.LOCK_NB
    deadline = time.monotonic() + timeout
    while True:
        try:
            portalocker.lock(fd, flags)
        except portalocker.LockException as exc:
            # portalocker keeps flock's OSError as the cause (2.7 raised LockException
            # for every errno, 4.x AlreadyLocked for contention only)
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno not in _HELD_ELSEWHERE:
                raise system_error(cause, f"cannot lock {path}") from None
            if time.monotonic() >= deadline:
                waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
                raise StoreLockedError(
                    f"{path} is in use by another process or Store{waited}; "
                    "only one may open a store at a time"
                ) from None
            time.sleep(_POLL_SECONDS)
            continue
        same = names_file(path, fd)
        if not same:
            unlock_file(fd)
        return same


def names_file(path: str, fd: int) -> bool:
    """True if *path* (followed through symbolic links) names the file *fd* is open on;
    False if it names another file or nothing: another program moved, replaced or deleted
    it, or a compact renamed its new file over it."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def unlock_file(fd: int) -> None:
    """Let go of the lock on *fd*.  Never raises: closing *fd*, which follows, lets go
    of it anyway."""
    try:
        portalocker.unlock(fd)
    except (portalocker.LockException, OSError):
        pass


def recursion_count(lock: Any) -> Callable[[], int]:
    """A function saying how many times the calling thread holds *lock* (a
    ``threading.RLock``), to call with the lock held: more than once means a call came
    back in (a signal handler's) and is refused.  ``RLock._recursion_count``, which the C
    lock gained in a 3.11 bugfix release (3.11.7 has it, Debian 12's 3.11.2 does not);
    without it, the count the C lock's repr has always printed."""
    count: Callable[[], int] | None = getattr(lock, "_recursion_count", None)
    if count is not None:
        return count

    def from_repr() -> int:
        found = _COUNT.search(repr(lock))
        return int(found[1]) if found else 0

    return from_repr
