"""Hypothesis strategies for mmapkv's three kinds of argument: keys, values and TTLs.

Each kind comes in a *valid* flavour (what the store must accept and give back exactly) and
an *invalid* one (what it must refuse with a documented exception, writing nothing):

==========  ====================================================  ==========================
kind        valid                                                 invalid -> exception
==========  ====================================================  ==========================
key         ``str`` of 1..32 code points, ASCII or multi-byte     ``""``, 33+ code points, a
            (up to 4 UTF-8 bytes each), 32 exactly included       lone surrogate, non-``str``
                                                                  -> ``InvalidKeyError``
value       ``dict`` of JSON types: nested dicts/lists (tuples     NaN, +-inf, non-``str`` dict
            read back as lists), unicode, ints beyond 64 bits,    keys, sets, bytes, objects,
            finite floats; compact JSON text up to 16,384 bytes   non-dict top level, nesting
                                                                  past 255 -> ``InvalidValueError``;
                                                                  16,385+ bytes ->
                                                                  ``ValueTooLargeError``
TTL         ``None`` or an ``int`` from 1 to ``mmapkv.MAX_TTL``   0, negative, float, bool,
                                                                  str, past ``MAX_TTL`` ->
                                                                  ``InvalidTTLError``
==========  ====================================================  ==========================

The invalid strategies draw ``(argument, expected exception class)`` pairs so a test can
demand the exact class.  :func:`json_size` is the oracle for the size limit: the length of
the value's compact UTF-8 JSON text, as the issue defines it.
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any

from hypothesis import strategies as st

import mmapkv

__all__ = [
    "MAX_KEY_LENGTH", "MAX_VALUE_BYTES", "MAX_TTL",
    "json_text", "json_size", "normalise", "sized_object",
    "valid_keys", "invalid_keys", "json_scalars", "json_values", "json_objects",
    "boundary_objects", "valid_values", "invalid_values", "valid_ttls", "small_ttls",
    "invalid_ttls",
]

MAX_KEY_LENGTH: int = mmapkv.MAX_KEY_LENGTH     # 32 code points
MAX_VALUE_BYTES: int = mmapkv.MAX_VALUE_BYTES   # 16,384 bytes of compact JSON
MAX_TTL: int = mmapkv.MAX_TTL


# ------------------------------------------------------------------ oracles


def json_text(value: Any) -> bytes:
    """The compact UTF-8 JSON text of *value*: no spaces, non-ASCII written as UTF-8.

    >>> json_text({"name": "Zoë", "n": [1, 2]})
    b'{"name":"Zo\\xc3\\xab","n":[1,2]}'
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def json_size(value: Any) -> int:
    """Bytes of :func:`json_text`; the store accepts a value iff this is <= 16,384.

    Floats are the one place two correct encoders may differ (``1e-05`` vs ``1e-5``), so
    tests only demand an exact verdict for values near the limit that hold no floats.
    """
    return len(json_text(value))


def normalise(value: Any) -> Any:
    """What ``read`` must return for a stored *value*: tuples become lists, the rest equal."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


# ------------------------------------------------------------------ keys

#: every code point except surrogates (which UTF-8 cannot encode)
_unicode = st.characters(codec="utf-8")
_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_wide = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8")

valid_keys: st.SearchStrategy[str] = st.one_of(
    st.text(_ascii, min_size=1, max_size=MAX_KEY_LENGTH),
    st.text(_unicode, min_size=1, max_size=MAX_KEY_LENGTH),
    # the limit itself in its widest form: 32 code points of 4 UTF-8 bytes = 128 bytes
    st.text(_wide, min_size=MAX_KEY_LENGTH, max_size=MAX_KEY_LENGTH),
    st.sampled_from(["a", "k" * MAX_KEY_LENGTH, "ключ", "键" * MAX_KEY_LENGTH, "🔑" * MAX_KEY_LENGTH,
                     "a b", "\x00", "key\n"]),
)
"""Keys the store must accept: 1 to 32 code points that encode as UTF-8."""


@st.composite
def _surrogate_key(draw: st.DrawFn) -> str:
    """A key of legal length holding at least one lone surrogate (not encodable)."""
    surrogate = draw(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
    left = draw(st.text(_unicode, max_size=15))
    right = draw(st.text(_unicode, max_size=15))
    return left + surrogate + right


_non_str_keys = st.one_of(
    st.integers(), st.floats(), st.none(), st.booleans(), st.binary(min_size=1, max_size=8),
    st.just(b"key"), st.just(bytearray(b"key")), st.tuples(st.text(max_size=3)),
    st.lists(st.text(max_size=3), max_size=2), st.just(object()),
)

invalid_keys: st.SearchStrategy[tuple[Any, type[Exception]]] = st.tuples(
    st.one_of(
        st.just(""),
        st.text(_ascii, min_size=MAX_KEY_LENGTH + 1, max_size=MAX_KEY_LENGTH + 40),
        st.text(_wide, min_size=MAX_KEY_LENGTH + 1, max_size=MAX_KEY_LENGTH + 1),
        st.just("k" * (MAX_KEY_LENGTH + 1)),
        _surrogate_key(),
        _non_str_keys,
    ),
    st.just(mmapkv.InvalidKeyError),
)
"""``(key, InvalidKeyError)`` for keys the store must refuse."""


# ------------------------------------------------------------------ values

_big_ints = st.one_of(
    st.integers(min_value=2 ** 64, max_value=2 ** 300),
    st.integers(min_value=-(2 ** 300), max_value=-(2 ** 63) - 1),
    st.sampled_from([2 ** 64, 2 ** 64 - 1, -(2 ** 63), -(2 ** 63) - 1, 10 ** 40]),
)

json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    _big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_unicode, max_size=40),
)
"""JSON leaves: null, booleans, 64-bit and bigger integers, finite floats, unicode text."""

_object_keys = st.text(_unicode, max_size=12)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value (scalar, list, tuple or object), nested."""
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(_object_keys, children, max_size=6),
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_leaves: int = 30) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object (a ``dict``) whose contents are any JSON values."""
    return st.dictionaries(_object_keys, json_values(max_leaves), max_size=8)


def sized_object(size: int, text: str = "", key: str = "p") -> dict[str, Any]:
    """``{key: s}`` whose compact JSON text is exactly *size* bytes: *text* (trimmed if
    it is too long) padded with ASCII.  *size* must be at least ``json_size({key: ""})``.

    >>> json_size(sized_object(16_384, "ключ🔑"))
    16384
    """
    value = {key: text}
    while json_size(value) > size:
        text = text[:-1]
        value = {key: text}
    value[key] = text + "a" * (size - json_size(value))
    assert json_size(value) == size, (size, json_size(value))
    return value


@st.composite
def boundary_objects(draw: st.DrawFn, low: int = MAX_VALUE_BYTES - 3,
                     high: int = MAX_VALUE_BYTES + 3) -> dict[str, Any]:
    """An object whose exact size is drawn from [low, high] (around the 16 KiB limit by
    default), holding multi-byte text, escapes and control characters: no floats, so its
    size is unambiguous."""
    size = draw(st.integers(min_value=low, max_value=high))
    text = draw(st.text(_unicode, max_size=60))
    key = draw(st.text(_unicode, min_size=1, max_size=4))
    return sized_object(size, text, key)


def valid_values(max_leaves: int = 30) -> st.SearchStrategy[dict[str, Any]]:
    """Objects the store must accept: random nested JSON, or exactly 16,384 bytes or a bit
    under (multi-byte text)."""
    return st.one_of(
        json_objects(max_leaves),
        boundary_objects(low=MAX_VALUE_BYTES - 200, high=MAX_VALUE_BYTES),
        st.just(sized_object(MAX_VALUE_BYTES)),
        st.just({}),
    )


class _Opaque:
    """An object JSON cannot represent."""

    def __repr__(self) -> str:
        return "<opaque>"


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


def _too_deep() -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(300):
        value = {"d": value}
    return value


_poisons = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(set, st.lists(st.integers(), max_size=3)),
    st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=8),
    st.just(bytearray(b"xy")),
    st.just(complex(1, 2)),
    st.just(decimal.Decimal("1.5")),
    st.builds(_Opaque),
    st.just(object()),
    st.just(_circular()),
)

_bad_dict_keys = st.one_of(
    st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False),
    st.tuples(st.integers()), st.binary(min_size=1, max_size=4),
)


@st.composite
def _poisoned_object(draw: st.DrawFn) -> dict[str, Any]:
    """A valid object with one non-JSON part buried at a random depth."""
    if draw(st.booleans()):
        poison: Any = draw(_poisons)
    else:  # a dict with a non-str key
        poison = {draw(_bad_dict_keys): draw(json_scalars)}
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        wrap = draw(st.sampled_from(["list", "tuple", "dict"]))
        poison = [poison] if wrap == "list" else (poison,) if wrap == "tuple" else {"n": poison}
    base = draw(st.dictionaries(_object_keys, json_scalars, max_size=3))
    if isinstance(poison, dict) and not draw(st.booleans()):
        base.update(poison)  # poison at the top level
    else:
        base[draw(_object_keys)] = poison
    return base


@st.composite
def _too_large_object(draw: st.DrawFn) -> dict[str, Any]:
    """A valid JSON object past 16,384 bytes: one big string, or many nested parts."""
    if draw(st.booleans()):
        size = draw(st.integers(min_value=MAX_VALUE_BYTES + 1, max_value=MAX_VALUE_BYTES + 5000))
        return sized_object(size, draw(st.text(_unicode, max_size=60)))
    parts = draw(st.integers(min_value=25, max_value=45))
    return {f"part{i}": {"text": "é" * 400, "big": 2 ** 100, "list": [i] * 20} for i in range(parts)}


invalid_values: st.SearchStrategy[tuple[Any, type[Exception]]] = st.one_of(
    st.tuples(_poisoned_object(), st.just(mmapkv.InvalidValueError)),
    st.tuples(st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                        st.tuples(json_scalars), st.builds(_Opaque)),
              st.just(mmapkv.InvalidValueError)),
    st.tuples(st.builds(_too_deep), st.just(mmapkv.InvalidValueError)),
    st.tuples(st.builds(lambda s: {"s": s}, _surrogate_key()), st.just(mmapkv.InvalidValueError)),
    st.tuples(_too_large_object(), st.just(mmapkv.ValueTooLargeError)),
)
"""``(value, exception class)`` for values the store must refuse: not JSON objects
(``InvalidValueError``) or too large (``ValueTooLargeError``)."""


# ------------------------------------------------------------------ TTLs

valid_ttls: st.SearchStrategy[int | None] = st.one_of(
    st.none(), st.integers(min_value=1, max_value=MAX_TTL), st.sampled_from([1, MAX_TTL]),
)
"""``None`` or a whole number of seconds in [1, MAX_TTL]."""

small_ttls: st.SearchStrategy[int | None] = st.one_of(
    st.none(), st.integers(min_value=1, max_value=30),
)
"""TTLs short enough that a fuzz run's clock passes them."""

invalid_ttls: st.SearchStrategy[tuple[Any, type[Exception]]] = st.tuples(
    st.one_of(
        st.just(0),
        st.integers(max_value=-1),
        st.integers(min_value=MAX_TTL + 1),
        st.just(2 ** 80),
        st.floats(),                        # includes 1.0, NaN, inf
        st.just(1.0),
        st.booleans(),
        st.text(max_size=5),
        st.just("10"),
        st.just(decimal.Decimal(10)),
        st.just([10]),
    ),
    st.just(mmapkv.InvalidTTLError),
)
"""``(ttl, InvalidTTLError)`` for TTLs the store must refuse."""
