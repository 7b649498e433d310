"""The ``items()`` and ``values()`` views of ``Store`` and ``RedisStore``: streamed from the
store by its ``_pairs()``, never a dict of the whole store.

``collections.abc``'s own views answer ``in`` by reading each key with ``[]``, which
raises for a key that expired or was deleted between being listed and being read (and
unpacks an item, raising ``TypeError``/``ValueError`` for anything but a pair): these
answer from what the store streams, as ``dict``'s views would.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, ValuesView
from typing import Any, Protocol

__all__ = ["Items", "Values"]

_GONE: Any = object()


class _Streamed(Protocol):
    def _pairs(self) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def get(self, key: str, default: Any) -> Any: ...


class Items(ItemsView[str, dict[str, Any]]):
    """``store.items()``: the unexpired (key, value) pairs, decoded as they are iterated."""

    _mapping: _Streamed

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._mapping._pairs()

    def __contains__(self, item: object) -> bool:
        """Anything but a pair is not an item; a key that could never be stored raises
        ``InvalidKeyError``, as ``key in store`` does."""
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        value = self._mapping.get(item[0], _GONE)
        return value is not _GONE and value == item[1]


class Values(ValuesView[dict[str, Any]]):
    """``store.values()``: the unexpired values, decoded as they are iterated."""

    _mapping: _Streamed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, value in self._mapping._pairs():
            yield value

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)
