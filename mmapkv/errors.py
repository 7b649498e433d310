"""The exceptions mmapkv raises: one base class, flat specific subclasses.

Each specific error also inherits the builtin a Python user would catch:
``KeyError`` for a missing key, ``ValueError``/``TypeError`` for a bad argument,
``OSError`` for trouble with the file itself (or with a ``RedisStore``'s server).
"""

from __future__ import annotations

import errno

__all__ = [
    "MmapKVError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyExpiredError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidValueError",
    "ValueTooLargeError",
    "InvalidTTLError",
    "StoreFullError",
    "DiskFullError",
    "StoreLockedError",
    "StoreClosedError",
    "ReentrantCallError",
    "StoreAccessError",
    "StoreUnavailableError",
    "CorruptStoreError",
    "FormatVersionError",
    "system_error",
]


class MmapKVError(Exception):
    """Base class of every error mmapkv raises on purpose."""


class _PlainMessage(Exception):
    """Mixin: ``KeyError`` quotes its message in ``str()``; we want it as written."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class KeyExistsError(MmapKVError):
    """``create`` was given a key that is already stored and live."""


class KeyNotFoundError(_PlainMessage, MmapKVError, KeyError):
    """The key is not in the store (never created, deleted, or expired)."""


class KeyExpiredError(KeyNotFoundError):
    """The key was stored but its time-to-live has passed."""


class InvalidArgumentError(MmapKVError, ValueError, TypeError):
    """An argument other than a key, value or TTL is of the wrong type or out of range."""


class InvalidKeyError(MmapKVError, ValueError, TypeError):
    """The key is not a ``str`` of 1 to 32 characters that encodes as UTF-8."""


class InvalidValueError(MmapKVError, ValueError, TypeError):
    """The value is not a JSON object (a ``dict`` of JSON types with ``str`` keys)."""


class ValueTooLargeError(InvalidValueError):
    """The value's compact UTF-8 JSON text is longer than 16,384 bytes."""


class InvalidTTLError(MmapKVError, ValueError, TypeError):
    """The time-to-live is not ``None`` or a whole number of seconds in range."""


class StoreFullError(MmapKVError):
    """No free slot and the file is at its size ceiling: delete keys to make room."""


class DiskFullError(StoreFullError, OSError):
    """The file could not grow because the disk (or a file-size limit) refused the space."""


class StoreLockedError(MmapKVError, OSError):
    """Another process (or another ``Store`` in this one) holds the file."""


class StoreClosedError(MmapKVError, ValueError):
    """The store was closed, or belongs to the parent of this forked process."""


class ReentrantCallError(MmapKVError, RuntimeError):
    """A ``Store`` method (or ``mmapkv.create``/``read``/``delete`` while the default store
    opens) was called by the thread that is inside another of its calls: from a signal
    handler, a finaliser (``__del__``), a weakref callback or the store's clock, which
    Python runs between any two bytecodes of that call.  It cannot run in the middle of it
    (waiting for the call to end would wait forever).  A clock must not call its own store
    at all: inside a read, which holds no lock, that recurses until ``RecursionError``."""


class StoreAccessError(MmapKVError, OSError):
    """The operating system refused to create, open, map, write or replace the store's
    file (permissions, a file where a directory should be, no file descriptor left...);
    ``errno`` says why."""


class StoreUnavailableError(MmapKVError, OSError):
    """A ``RedisStore``'s server cannot be reached, refused the connection or the command,
    or did not answer within the timeout.  A write that raises it may or may not have
    been applied: the reply, not necessarily the command, was lost."""


class CorruptStoreError(MmapKVError, OSError):
    """The file is not an mmapkv store, or its bytes fail their checks."""


class FormatVersionError(CorruptStoreError):
    """The file is an mmapkv store in a format version this mmapkv does not open: a newer
    one (upgrade mmapkv), version 2 (``mmapkv compact`` converts it) or version 1."""


def system_error(exc: OSError, doing: str) -> MmapKVError:
    """The ``MmapKVError`` for an ``OSError`` of the system's own met while *doing*
    ("cannot write to PATH"): ``DiskFullError`` for a full disk or quota, else
    ``StoreAccessError``; the errno is kept."""
    kind = DiskFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StoreAccessError
    return kind(exc.errno, f"{doing}: {exc.strerror or exc}")
