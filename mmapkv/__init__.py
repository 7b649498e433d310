"""mmapkv: a persistent key-value store in one memory-mapped file, for one process.

>>> import mmapkv, tempfile, os
>>> store = mmapkv.Store(os.path.join(tempfile.mkdtemp(), "demo.mmapkv"))
>>> store.create("greeting", {"text": "hello"}, ttl=3600)
>>> store.read("greeting")
{'text': 'hello'}
>>> "greeting" in store, len(store)
(True, 1)
>>> store.delete("greeting")
>>> store.close()

The module-level :func:`create`, :func:`read` and :func:`delete` use one shared
``Store`` on :func:`default_path`, opened on first use and closed at exit.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Mapping
from typing import Any

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
    StoreAccessError,
    StoreClosedError,
    StoreFullError,
    StoreLockedError,
    ValueTooLargeError,
)
from .format import MAX_FILE_SIZE, MAX_VALUE_BYTES
from .store import MAX_KEY_LENGTH, MAX_TTL, Store, StoreStats, default_path

__all__ = [
    "Store", "StoreStats", "default_path", "create", "read", "delete",
    "MAX_KEY_LENGTH", "MAX_VALUE_BYTES", "MAX_FILE_SIZE", "MAX_TTL",
    "MmapKVError", "KeyExistsError", "KeyNotFoundError", "KeyExpiredError",
    "InvalidArgumentError", "InvalidKeyError", "InvalidValueError", "ValueTooLargeError",
    "InvalidTTLError", "StoreFullError", "DiskFullError", "StoreLockedError",
    "StoreClosedError", "StoreAccessError", "CorruptStoreError", "FormatVersionError",
]

__version__ = "0.1.0"

_default_store: Store | None = None
_default_lock = threading.Lock()


def _default() -> Store:
    global _default_store
    with _default_lock:
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
