"""Keys, values and TTLs checked by mmapkv's exact rules, and JSON objects to bytes and back.

Every backend (``Store``, ``RedisStore``) checks its arguments here, so both accept and refuse
exactly the same keys, values, TTLs and batch items, with the same exceptions and messages;
the engine, and the Redis server, see only bytes.

Keys: a ``str`` of 1 to ``MAX_KEY_LENGTH`` (32) characters that encodes as UTF-8
(:func:`key_bytes`).  TTLs: ``None`` or an ``int`` number of seconds from 1 to ``MAX_TTL``
(:func:`check_ttl`).  Batches: :func:`batch_items` (``batch_create``) and
:func:`update_pairs` (``update``) read every accepted shape of their argument.

Values: a value is a ``dict`` whose keys are ``str`` and whose contents are only ``dict``,
``list``, ``tuple`` (read back as a list), ``str``, ``int``, ``float`` (finite), ``bool`` and
``None``, nested at most ``MAX_DEPTH`` deep.  Its size is the length of its compact UTF-8 JSON
text (no spaces, non-ASCII written as UTF-8, not escaped), at most ``MAX_VALUE_BYTES``.

orjson writes and reads the text (several times faster than ``json``), but orjson alone is
too lenient: it writes NaN as ``null`` and accepts ``uuid.UUID``, ``Enum`` and dataclasses.
So one pass over the value checks the rules first, and integers beyond 64 bits, which orjson
cannot write (and would read back as floats), go through stdlib ``json`` both ways.

That pass costs more than orjson's own work, so it comes in two speeds.  ``_plain`` is the
common case: only the exact types ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``,
``bool`` and ``None`` inside, finite floats, not too deep.  It leaves dict keys and integer
ranges to orjson, which refuses non-``str`` keys and integers beyond 64 bits by raising;
any refusal, and any value ``_plain`` does not vouch for, goes through ``_check`` and the
full path, so every result and every error message is exactly what the full path gives
(``tests/test_codec_fast_path.py``; ``python -m mmapkv.bench`` measures the speed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from .errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KeyExistsError,
    ValueTooLargeError,
)
from .format import CODEC_STDLIB, MAX_VALUE_BYTES

__all__ = ["MAX_DEPTH", "MAX_KEY_LENGTH", "MAX_TTL", "MAX_TIME", "shown", "key_bytes", "check_ttl", "check_expiry",
           "checked_clock", "check_flag",
           "batch_items", "update_pairs", "expiring_entries", "encode", "encode_to_keep", "decode", "decode_text",
           "MAX_INT_DIGITS", "INT_DIGITS_RULE", "about_key", "keys_to_look_up"]

MAX_DEPTH = 255  # orjson's own limit, so both codecs accept the same values
MAX_KEY_LENGTH = 32
MAX_TTL = 100 * 366 * 24 * 3600  # a century: keeps now + ttl exact as a float
MAX_TIME = 10_000_000_000  # unix seconds (the year 2286): the latest time a clock may say

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1
#: The most digits a stored int may have: what Python reads by default
#: (``sys.int_info.default_max_str_digits``), so that every process can read what any
#: stored, whatever limit the writing one had set.
MAX_INT_DIGITS = 4_300
#: what a refusal of a longer one says after the digits (here and in ``transfer.loads``)
INT_DIGITS_RULE = "mmapkv keeps ints of up to what any Python reads by default (sys.int_info.default_max_str_digits)"
_FEW_DIGITS_BITS = 14_283  # an int of at most this many bits has at most 4,300 digits
_PLAIN_LEAVES = frozenset((str, int, bool, type(None)))   # exact types only: no subclasses
_PLAIN_CONTAINERS = frozenset((dict, list, tuple))
_isfinite = math.isfinite
_dumps = orjson.dumps
_loads = orjson.loads
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class _Bad(Exception):
    """A rule broken inside a value; carries the path to it, built only on the way out."""

    def __init__(self, message: str, where: Any) -> None:
        super().__init__(message)
        self.path: list[Any] = [] if where is None else [where]


def _bad_scalar(v: Any, where: Any) -> _Bad:
    if isinstance(v, float):
        return _Bad(f"holds {v!r}; JSON has no NaN or infinity", where)
    return _Bad(f"holds a value of type {type(v).__name__}; only dict, list, tuple, str, int, "
                "float, bool and None are JSON", where)


def _check_big_int(v: int) -> None:
    """Refuse an int of more than ``MAX_INT_DIGITS`` digits (its digits are counted only
    past the bits that cannot make so many)."""
    if int.bit_length(v) > _FEW_DIGITS_BITS:
        try:
            digits = len(int.__repr__(abs(int(v))))
        except ValueError:  # past this process's own limit
            digits = MAX_INT_DIGITS + 1
        if digits > MAX_INT_DIGITS:
            raise _Bad(f"holds an int of more than {MAX_INT_DIGITS:,} digits; {INT_DIGITS_RULE}", None)


def _check_scalar(v: Any, where: Any) -> bool:
    """Check a non-container of a type other than exactly str/bool/None/int/float."""
    if isinstance(v, (str, bool)):
        return False
    if isinstance(v, int):  # a subclass's number itself, not what its < says
        if _INT64_MIN <= int.__index__(v) <= _UINT64_MAX:
            return False
        _check_big_int(v)
        return True
    if isinstance(v, float) and _isfinite(v):
        return False
    raise _bad_scalar(v, where)


def _check(obj: Any, depth: int) -> bool:
    """Raise ``_Bad`` unless *obj* obeys the rules; return True if it holds a big integer.

    Runs on every create, so the common types are tested by identity first and the
    error path (``_Bad``) is the only place that builds strings.
    """
    if depth > MAX_DEPTH:
        raise _Bad(f"is nested deeper than {MAX_DEPTH} levels", None)
    big = False
    is_object = isinstance(obj, dict)
    # The base types' own iteration: what orjson writes of a subclass is its real contents,
    # whatever its items() or __iter__ says (a subclass could hide a NaN from the check)
    for k, v in dict.items(obj) if is_object else enumerate(
            list.__iter__(obj) if isinstance(obj, list) else tuple.__iter__(obj)):
        if is_object and type(k) is not str and not isinstance(k, str):
            raise _Bad(f"has the key {shown(k)} of type {type(k).__name__}; JSON object keys must be str", None)
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        try:
            if t is int:
                if v < _INT64_MIN or v > _UINT64_MAX:
                    _check_big_int(v)
                    big = True
            elif t is float:
                if not _isfinite(v):
                    raise _bad_scalar(v, None)
            elif t is dict or t is list or t is tuple or isinstance(v, (dict, list, tuple)):
                big |= _check(v, depth + 1)
            else:
                big |= _check_scalar(v, None)
        except _Bad as bad:
            bad.path.append(k)
            raise
    return big


def _plain(obj: Any, depth: int) -> bool:
    """True if *obj* (an exact ``dict``, ``list`` or ``tuple``) holds only exact JSON types
    and finite floats, nested at most ``MAX_DEPTH`` deep.  False means "ask ``_check``",
    not "invalid".  Keys are not looked at: orjson raises on a non-``str`` key.

    About twice as fast as ``_check`` (no key test, no ``try`` or ``enumerate`` per item,
    ``v - v`` instead of a call to ``isfinite``); it runs on every create.
    """
    if depth > MAX_DEPTH:
        return False
    for v in obj.values() if type(obj) is dict else obj:
        t = type(v)
        if t in _PLAIN_LEAVES:  # one set lookup, not four comparisons: 25 % off the pass
            continue
        if t is float:
            if v - v:  # NaN and infinities give NaN (true); every finite float gives 0.0
                return False
        elif t in _PLAIN_CONTAINERS:
            if not _plain(v, depth + 1):
                return False
        else:
            return False
    return True


def _too_large(size: int) -> ValueTooLargeError:
    return ValueTooLargeError(f"value is {size:,} bytes of JSON; the limit is {MAX_VALUE_BYTES:,} bytes")


def encode(value: Any) -> tuple[bytes, int]:
    """Return the compact UTF-8 JSON text of *value* and the slot's codec flags.

    >>> encode({"name": "Zoë", "tags": ("a", 1)})
    (b'{"name":"Zo\\xc3\\xab","tags":["a",1]}', 0)

    Cost: one pass over *value* in Python, then orjson; O(size of *value*).

    :raises InvalidValueError: *value* is not a JSON object by the rules above.
    :raises ValueTooLargeError: its text is longer than 16,384 bytes.
    """
    if type(value) is dict and _plain(value, 1):
        try:
            data = _dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # a non-str key, a big integer, a lone surrogate...: the full path says which
        else:
            if len(data) > MAX_VALUE_BYTES:
                raise _too_large(len(data))
            return data, 0
    return _encode_checked(value)


def encode_to_keep(value: Any) -> tuple[bytes, int]:
    """:func:`encode`, for a value held past the call (a batch's, until it commits): a copy
    of the text.  orjson's ``bytes`` keep its whole write buffer, 4 KiB however short the
    text (4,097 bytes traced for ``{"a": 1}`` with orjson 3.13), so a batch of 100,000
    small values held 400 MiB."""
    data, flags = encode(value)
    return bytes(memoryview(data)), flags


def _as_checked(obj: Any) -> Any:
    """*obj* rebuilt of exact ``dict`` and ``list`` from the contents ``_check`` walked, for
    stdlib ``json``, which writes a ``dict`` subclass by calling its own ``items()`` (that
    could hide a non-``str`` key or nest without end).  orjson writes the real contents."""
    if isinstance(obj, dict):
        return {k: _as_checked(v) for k, v in dict.items(obj)}
    if isinstance(obj, (list, tuple)):
        return [_as_checked(v) for v in (list.__iter__(obj) if isinstance(obj, list) else tuple.__iter__(obj))]
    return obj


def _where(path: list[Any]) -> str:
    """``['a'][0]['b']`` for the path a ``_Bad`` collected (innermost first), shortened."""
    keys = [f"[{shown(k)}]" for k in reversed(path)]  # a str subclass's repr may say anything
    return "".join(keys if len(keys) <= 6 else keys[:3] + ["..."] + keys[-2:])


def _encode_checked(value: Any) -> tuple[bytes, int]:
    """``encode`` for every value: the full check, precise errors, the stdlib fallback."""
    if not isinstance(value, dict):
        raise InvalidValueError(f"value must be a dict (a JSON object), not {type(value).__name__}")
    try:
        big = _check(value, 1)
    except _Bad as bad:
        raise InvalidValueError(f"value{_where(bad.path)} {bad}") from None
    flags = 0
    if not big:
        try:
            data = _dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError as exc:  # str with a lone surrogate, float subclass...
            if "surrogate" in str(exc) or "utf-8" in str(exc).lower():
                raise InvalidValueError(f"value holds a str that is not valid Unicode: {exc}") from None
            big = True  # let stdlib json decide
    if big:
        flags = CODEC_STDLIB
        try:
            data = json.dumps(_as_checked(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                              check_circular=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValueError(f"value holds a str that is not valid Unicode: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidValueError(f"value is not JSON: {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise _too_large(len(data))
    return data, flags


def decode(data: bytes | memoryview, flags: int) -> dict[str, Any]:
    """Return the ``dict`` that :func:`encode` turned into *data* (a new object each call).

    >>> decode(*encode({"n": 2 ** 70}))
    {'n': 1180591620717411303424}
    """
    if flags & CODEC_STDLIB:
        return json.loads(bytes(data))  # type: ignore[no-any-return]
    return _loads(data)  # type: ignore[no-any-return]


_LONG_DIGITS = re.compile(rb"\d{19}")  # 19 digits can leave int64: -9223372036854775809


def decode_text(data: bytes | str) -> dict[str, Any]:
    """Return the ``dict`` whose compact JSON text is *data*, when the codec flags that
    :func:`encode` returned were not kept (a ``RedisStore`` keeps only the text).

    orjson reads an integer beyond 64 bits as a float, silently; a run of 19 or more
    digits (even inside a string, harmlessly) sends the text to stdlib ``json``, which
    reads integers of any size exactly.  Both read every other value identically.

    >>> decode_text(b'{"n":18446744073709551616,"f":0.5}')
    {'n': 18446744073709551616, 'f': 0.5}

    :raises ValueError: *data* is not JSON, or not a JSON object.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        value = decode(raw, CODEC_STDLIB if _LONG_DIGITS.search(raw) else 0)
    except RecursionError:  # stdlib json on text nested deeper than Python's stack (not ours)
        raise ValueError("the JSON text is nested too deep to read") from None
    if type(value) is not dict:
        raise ValueError(f"the JSON text is not an object (it reads as a Python {type(value).__name__})")
    return value


# ------------------------------------------------------------------ keys and TTLs


def shown(value: Any, limit: int = 40) -> str:
    """*value* as an error message shows it: its repr, cut to *limit* characters; for an
    int too long for ``repr`` (over 4,300 digits raise ``ValueError``), its size in bits."""
    if isinstance(value, int) and value.bit_length() > 4096:
        return f"an int of {value.bit_length():,} bits"
    try:
        return repr(value)[:limit]
    except Exception:  # a repr of the caller's that raises, or of a container of such an int
        return f"a {type(value).__name__}"


def about_key(exc: InvalidValueError | InvalidTTLError, key: str) -> InvalidValueError | InvalidTTLError:
    """*exc* again, its message naming the key of a batch's item it is about."""
    return type(exc)(f"key {str.__repr__(key)}: {exc}")


def key_bytes(key: Any) -> bytes:
    """Validate *key* and return its UTF-8 bytes.

    >>> key_bytes("ключ")
    b'\\xd0\\xba\\xd0\\xbb\\xd1\\x8e\\xd1\\x87'

    :raises InvalidKeyError: *key* is not a ``str`` of 1 to 32 characters, or holds a
        lone surrogate.
    """
    if type(key) is not str and not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
    # str's own methods: a subclass's len() or encode() could say anything (and what is
    # stored and compared is the string's own text)
    length = str.__len__(key)
    if not 0 < length <= MAX_KEY_LENGTH:
        raise InvalidKeyError(f"key must be 1 to {MAX_KEY_LENGTH} characters, got {length}: "
                              f"{str.__repr__(str.__getitem__(key, slice(0, 40)))}")
    try:
        return str.encode(key, "utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(f"key {str.__repr__(key)} is not valid Unicode (a lone surrogate?)") from None


def keys_to_look_up(keys: Any) -> Iterable[Any]:
    """*keys* if it can be a collection of keys (``items_with_expiry``): any iterable but
    one str (or bytes), whose characters would be looked up one by one."""
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Iterable):
        raise InvalidArgumentError(f"keys must be an iterable of str keys (or None for every key), "
                                   f"not {type(keys).__name__}")
    return keys


def check_ttl(ttl: Any, *, required: bool = False) -> int | None:
    """Return *ttl* as an ``int`` (``None``: no TTL), or raise ``InvalidTTLError``.

    With *required* (``expire``), ``None`` is refused too.
    """
    if ttl is None:
        if required:
            raise InvalidTTLError("expire() needs a ttl in seconds; persist() removes one")
        return None
    if type(ttl) is int:
        seconds: int = ttl
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        seconds = int.__index__(ttl)  # the number itself: a subclass's __int__ or < could say another
    else:
        allowed = "an int" if required else "None or an int"
        raise InvalidTTLError(f"ttl must be {allowed} number of seconds, not {type(ttl).__name__}")
    if not 1 <= seconds <= MAX_TTL:
        raise InvalidTTLError(f"ttl must be 1 to {MAX_TTL:,} seconds, got {shown(seconds)}")
    return seconds


def checked_clock(clock: Callable[[], float]) -> Callable[[], float]:
    """*clock*, each of whose readings is checked: unix time in seconds, a real number from
    0 to ``MAX_TIME``.  Anything else would be written into an expiry (a NaN, an infinity,
    a negative time that makes ``now + ttl`` read as "no TTL") or fail inside a comparison
    with an error of Python's own (a ``str``, ``None``).

    >>> checked_clock(lambda: float("nan"))()
    Traceback (most recent call last):
    ...
    mmapkv.errors.InvalidArgumentError: the store's clock returned nan; it must return unix time in seconds, an int or float from 0 to 10,000,000,000

    :raises InvalidArgumentError: (when called) the reading is not such a number.
    """
    def now() -> float:
        t = clock()
        if isinstance(t, (float, int)) and not isinstance(t, bool) and 0 <= t <= MAX_TIME:  # NaN fails
            return t
        kind = "" if isinstance(t, (float, int)) and not isinstance(t, bool) else ", not an int or float"
        raise InvalidArgumentError(f"the store's clock returned {shown(t)}{kind}; it must return unix time "
                                   f"in seconds, an int or float from 0 to {MAX_TIME:,}")
    return now


def check_expiry(expires_at: Any) -> float:
    """Return an absolute expiry (unix seconds) as a float, 0.0 for ``None`` (never).

    It may be in the past (the caller skips such an entry).  How far ahead it may be is
    bounded in absolute time, not by ``MAX_TTL`` from a clock: it was set by another
    clock, which may be ahead of the one restoring it, so its time left may exceed
    ``MAX_TTL`` there.

    :raises InvalidTTLError: not ``None`` nor a positive number of seconds up to
        ``MAX_TIME + MAX_TTL``.
    """
    if expires_at is None:
        return 0.0
    if not isinstance(expires_at, bool) and isinstance(expires_at, (int, float)):
        # compared as it is (float() overflows on an int past a float's range); a NaN and
        # the infinities fail the comparison too
        value = int.__index__(expires_at) if isinstance(expires_at, int) else float.__float__(expires_at)
        if 0 < value <= MAX_TIME + MAX_TTL:
            return float(value)
    raise InvalidTTLError(f"expires_at must be None or unix time in seconds, got {shown(expires_at)}")


def check_flag(value: object, name: str) -> None:
    """Refuse a *value* for the option *name* that is not ``True`` or ``False``: a truthy
    ``"no"`` or ``1`` would otherwise have meant ``True``.

    :raises InvalidArgumentError: *value* is not a ``bool``.
    """
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {shown(value)}")


# ------------------------------------------------------------------ batches


def batch_items(items: Any, ttl: Any) -> list[tuple[str, bytes, bytes, int, int | None]]:
    """Check every item of a ``batch_create`` before anything is written: a list of
    (key, key bytes, encoded value, codec flags, ttl).

    *items* is a mapping ``{key: value}`` or an iterable of ``(key, value)`` and
    ``(key, value, ttl)`` tuples or ``{"key", "value"[, "ttl"]}`` dicts; *ttl* applies to
    the items that do not give their own.

    :raises KeyExistsError: a key is given twice.
    :raises InvalidArgumentError: *items*, or an item, has none of those shapes.
    :raises InvalidKeyError, InvalidValueError, ValueTooLargeError, InvalidTTLError: a bad
        key, value or TTL.
    """
    default_ttl = check_ttl(ttl)
    if isinstance(items, Mapping):
        triples: Iterable[Any] = ((k, v, default_ttl) for k, v in items.items())
    elif isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidArgumentError(f"items must be a mapping or an iterable of tuples, not {type(items).__name__}")
    else:
        triples = items
    checked = []
    seen: set[bytes] = set()
    for number, item in enumerate(triples):
        if isinstance(item, dict) and "key" in item and "value" in item and \
                set(item) <= {"key", "value", "ttl"}:
            item = (item["key"], item["value"], item["ttl"]) if "ttl" in item else (item["key"], item["value"])
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise InvalidArgumentError(f"batch item {number} must be a (key, value) or (key, value, "
                                       f"ttl) tuple or a {{'key', 'value', 'ttl'}} dict, got {shown(item, 80)}")
        key, value = item[0], item[1]
        kb = key_bytes(key)
        if kb in seen:
            raise KeyExistsError(f"key {str.__repr__(key)} appears twice in the batch")
        seen.add(kb)
        try:
            item_ttl = check_ttl(item[2]) if len(item) == 3 else default_ttl
            data, flags = encode_to_keep(value)
        except (InvalidValueError, InvalidTTLError) as exc:
            raise about_key(exc, key) from None
        checked.append((key, kb, data, flags, item_ttl))
    return checked


def update_pairs(other: Any, kwargs: Mapping[str, Any]) -> list[tuple[str, bytes, bytes, int]]:
    """Check every pair of an ``update`` before anything is written: a list of (key, key
    bytes, encoded value, codec flags), one per key, the last value winning as in
    ``dict.update``.  *other* is a mapping, an object with ``keys()`` and ``[]``, or an
    iterable of (key, value) pairs; *kwargs* are added to it.

    :raises InvalidArgumentError: *other*, or an item of it, has none of those shapes.
    :raises InvalidKeyError, InvalidValueError, ValueTooLargeError: a bad key or value.
    """
    if isinstance(other, Mapping):
        pairs: list[tuple[Any, Any]] = list(other.items())
    elif hasattr(other, "keys"):  # what dict.update accepts: keys() and __getitem__
        pairs = [(k, other[k]) for k in other.keys()]
    elif isinstance(other, (str, bytes)) or not isinstance(other, Iterable):
        raise InvalidArgumentError(f"update() takes a mapping or an iterable of (key, value) "
                                   f"pairs, not {type(other).__name__}")
    else:
        pairs = []
        for number, item in enumerate(other):
            try:
                k, v = item
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"update item {number} must be a (key, value) pair, "
                                           f"got {shown(item, 80)}") from None
            pairs.append((k, v))
    pairs.extend(kwargs.items())
    last: dict[bytes, tuple[str, bytes, bytes, int]] = {}
    for key, value in pairs:
        kb = key_bytes(key)
        try:
            data, flags = encode_to_keep(value)
        except InvalidValueError as exc:
            raise about_key(exc, key) from None
        last[kb] = (key, kb, data, flags)
    return list(last.values())


def expiring_entries(entries: Iterable[Any], clock: Callable[[], float]
                     ) -> list[tuple[str, bytes, bytes, int, float]]:
    """Check (key, value, expires_at) entries before anything is written (``restore_entries``
    of both stores): a list of (key, key bytes, encoded value, codec flags, expires_at), 0.0
    for no expiry, without the entries whose expiry is at or before the time *clock* says.

    *clock* is asked once, after every entry passed the checks that need no time, so a bad
    entry is refused before a clock is read (``RedisStore``'s asks the server).

    :raises KeyExistsError: a key is given twice.
    :raises InvalidArgumentError: an entry is not a (key, value, expires_at) tuple.
    :raises InvalidKeyError, InvalidValueError, ValueTooLargeError, InvalidTTLError: a bad
        key, value or expiry (see :func:`check_expiry`).
    """
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
        raise InvalidArgumentError(f"entries must be an iterable of (key, value, expires_at) tuples, "
                                   f"not {type(entries).__name__}")
    checked = []
    seen: set[bytes] = set()
    for number, entry in enumerate(entries):
        if not isinstance(entry, tuple) or len(entry) != 3:
            raise InvalidArgumentError(f"entry {number} must be a (key, value, expires_at) tuple, "
                                       f"got {shown(entry, 80)}")
        key, value, expires_at = entry
        kb = key_bytes(key)
        if kb in seen:
            raise KeyExistsError(f"key {str.__repr__(key)} appears twice in the entries")
        seen.add(kb)
        try:
            data, flags = encode_to_keep(value)
            checked.append((key, kb, data, flags, check_expiry(expires_at)))
        except (InvalidValueError, InvalidTTLError) as exc:
            raise about_key(exc, key) from None
    if not checked:
        return checked
    # Only check_expiry's absolute bound, not MAX_TTL from this clock: an expiry another
    # clock set MAX_TTL ahead reads as further away here when this one is behind it (a
    # clock stepped back, a server's clock a few ms behind), and one such key would refuse
    # the whole restore or copy.
    now = clock()
    return [entry for entry in checked if not entry[4] or entry[4] > now]
