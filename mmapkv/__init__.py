"""mmapkv: a persistent key-value store in one memory-mapped file, for one process.

When one process is not enough, :class:`RedisStore` gives the same API on a Redis server
(``pip install "mmapkv[redis]"``; docs/scaling.md).

>>> import mmapkv, tempfile, os
>>> where = tempfile.TemporaryDirectory()
>>> store = mmapkv.Store(os.path.join(where.name, "demo.mmapkv"))
>>> store.create("greeting", {"text": "hello"}, ttl=3600)
>>> store.read("greeting")
{'text': 'hello'}
>>> "greeting" in store, len(store)
(True, 1)
>>> store.delete("greeting")
>>> store.close()
>>> where.cleanup()

The module-level :func:`create`, :func:`read` and :func:`delete` use one shared
``Store`` on :func:`default_path`, opened on first use and closed at exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import (
    CorruptStoreError,
    DiskFullError,
    FormatVersionError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    KeyExpiredError,
    KeyNotFoundError,
    MmapKVError,
    ReentrantCallError,
    StoreAccessError,
    StoreClosedError,
    StoreFullError,
    StoreLockedError,
    StoreUnavailableError,
    ValueTooLargeError,
)
from .format import MAX_FILE_SIZE, MAX_VALUE_BYTES
from .locking import recursion_count
from .store import MAX_KEY_LENGTH, MAX_TTL, Store, StoreStats, default_path

if TYPE_CHECKING:
    from .redis_store import RedisStats, RedisStore

__all__ = [
    "Store", "StoreStats", "RedisStore", "RedisStats", "default_path", "create", "read", "delete",
    "MAX_KEY_LENGTH", "MAX_VALUE_BYTES", "MAX_FILE_SIZE", "MAX_TTL",
    "MmapKVError", "KeyExistsError", "KeyNotFoundError", "KeyExpiredError",
    "InvalidArgumentError", "InvalidKeyError", "InvalidValueError", "ValueTooLargeError",
    "InvalidTTLError", "StoreFullError", "DiskFullError", "StoreLockedError",
    "StoreClosedError", "ReentrantCallError", "StoreAccessError", "StoreUnavailableError",
    "CorruptStoreError", "FormatVersionError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RedisStore's module loads on first use: most programs never touch it, and
    # ``import mmapkv`` stays as fast as it was (redis-py itself loads later still, unless
    # portalocker, which imports it when it is installed, did).
    if name in ("RedisStore", "RedisStats"):
        from . import redis_store

        return getattr(redis_store, name)
    raise AttributeError(f"module 'mmapkv' has no attribute {name!r}")


_default_store: Store | None = None
_default_lock = threading.RLock()  # reentrant to refuse, not deadlock, a call from inside (Store._use)
_default_lock_depth = recursion_count(_default_lock)


def _new_default_lock() -> None:
    """In a forked child: a fresh lock, since a thread of the parent's that held it (opening
    the default store) does not exist here to let it go; the store itself is disowned."""
    global _default_lock, _default_lock_depth
    _default_lock = threading.RLock()
    _default_lock_depth = recursion_count(_default_lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_default_lock)


def _default() -> Store:
    global _default_store
    with _default_lock:
        if _default_lock_depth() > 1:
            raise ReentrantCallError("mmapkv.create/read/delete was called while this thread is opening "
                                     "the default store (from a signal handler?)")
        if _default_store is None or _default_store._engine is None:
            _default_store = Store()
            atexit.register(_default_store.close)
        return _default_store


def create(key: str, value: Mapping[str, Any], ttl: int | None = None) -> None:
    """``Store.create`` on the default store."""
    _default().create(key, value, ttl)


def read(key: str) -> dict[str, Any]:
    """``Store.read`` on the default store."""
    return _default().read(key)


def delete(key: str) -> None:
    """``Store.delete`` on the default store."""
    _default().delete(key)
