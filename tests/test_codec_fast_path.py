"""The codec's fast path (``_plain`` + orjson) gives exactly what the full path gives.

``codec.encode`` skips the full rule check when a cheaper pass vouches for the value; these
tests hold the two paths to the same bytes, flags, exception class and message for valid
and invalid values alike, so the shortcut can never change mmapkv's semantics.
"""

from __future__ import annotations

import collections
import decimal
import enum
import math
import tracemalloc
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkv import codec
from mmapkv.format import MAX_VALUE_BYTES


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


class Ratio(float):
    pass


def outcome(encode: Any, value: Any) -> tuple[Any, ...]:
    try:
        return ("ok", encode(value))
    except Exception as exc:  # the class and the message must agree too
        return ("error", type(exc), str(exc))


def same(value: Any) -> None:
    assert outcome(codec.encode, value) == outcome(codec._encode_checked, value)


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    value: Any = {"leaf": leaf}
    for _ in range(depth - 1):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


ODD_SCALARS = [math.nan, math.inf, -math.inf, 2**64, 2**64 - 1, -(2**63), -(2**63) - 1, 10**30,
               uuid.UUID(int=7), Colour.RED, Level.HIGH, decimal.Decimal("1.5"), {1, 2}, b"x",
               bytearray(b"x"), 1j, Ratio(0.5), Ratio(math.nan), Name("n"), "\ud800", -0.0, 5e-324,
               1.7976931348623157e308, True, None, ..., object()]


@pytest.mark.parametrize("odd", ODD_SCALARS, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(ODD_SCALARS)])
@pytest.mark.parametrize("where", ["top", "list", "tuple", "deep"])
def test_odd_scalars_everywhere(odd: Any, where: str) -> None:
    value = {"top": {"v": odd}, "list": {"v": [1, "a", odd]}, "tuple": {"v": ("a", odd)},
             "deep": nested(40, [odd])}[where]
    same(value)


@pytest.mark.parametrize("key", [1, 1.5, None, True, Name("k"), ("t",), "\udfff", "ok"], ids=ascii)
def test_keys(key: Any) -> None:
    same({key: 1})
    same({"outer": [{key: 1}]})


@pytest.mark.parametrize("depth", [1, 2, 254, 255, 256, 300])
def test_depth_limits(depth: int) -> None:
    same(nested(depth))
    same(nested(depth, math.nan))


def test_containers_that_are_subclasses_or_cycles() -> None:
    same(collections.OrderedDict(a=1))
    same({"a": collections.OrderedDict(b=[1])})
    same({"a": collections.defaultdict(list)})
    point = collections.namedtuple("point", "x y")
    same({"p": point(1, 2)})
    loop: list[Any] = []
    loop.append(loop)
    same({"loop": loop})
    same([1])
    same("not a dict")


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_size_limit_at_the_boundary(extra: int) -> None:
    base = len(codec.encode({"s": ""})[0])
    same({"s": "x" * (MAX_VALUE_BYTES - base + extra)})
    same({"s": "é" * ((MAX_VALUE_BYTES - base) // 2 + extra)})  # two bytes each
    same({"n": 2**70, "s": "x" * (MAX_VALUE_BYTES - base - 30 + extra)})


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3),
    st.sampled_from([uuid.UUID(int=1), Colour.RED, Level.HIGH, decimal.Decimal(1), Name("s"),
                     Ratio(2.0), frozenset(), b""]),
)
keys = st.one_of(st.text(max_size=6), st.text(max_size=6), st.integers(0, 3), st.none(),
                 st.builds(Name, st.text(max_size=3)))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(keys, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_random_values_take_the_same_path_result(value: dict[Any, Any]) -> None:
    same(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=10),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=4), inner, max_size=5)),
    max_leaves=40)))
def test_plain_values_take_the_fast_path(value: dict[str, Any]) -> None:
    """Values of exact JSON types with finite floats are the fast path's to vouch for."""
    assert codec._plain(value, 1)
    data, flags = codec.encode(value)
    assert flags == 0 and codec.decode(data, flags) == value
    same(value)


@pytest.mark.parametrize("number", [-9223372036854775809, -9999999999999999999, 9223372036854775808,
                                    -(2**63), 2**64 - 1, 2**64])
def test_decode_text_reads_integers_of_19_digits_and_more_exactly(number: int) -> None:
    """``decode_text`` (text whose codec flags were not kept: a ``RedisStore``'s) reads
    integers exactly on orjson's fast path too.  orjson reads one below -2**63 as a float,
    silently, and the shortest such numbers have 19 digits: a search for 20 digits would
    let -9223372036854775809 come back as -9.223372036854776e18.  (A positive one of 19
    digits fits in 64 bits: orjson reads it exactly either way.)"""
    got = codec.decode_text(b'{"n":%d}' % number)
    assert got == {"n": number} and type(got["n"]) is int
    assert codec.decode_text(f'{{"n":{number}}}') == {"n": number}  # a str, as redis-py gives


@pytest.mark.parametrize("build", ["batch_items", "update_pairs", "expiring_entries"])
def test_a_batch_holds_its_values_text_only(build: str) -> None:
    """A batch keeps its encoded values until it commits, so each must own no more than
    its text: orjson's ``bytes`` keep its 4 KiB write buffer (4,097 traced bytes for a
    10-byte value), and 1,000 small values held 4 MiB.  Now about 170 bytes an item."""
    values = {f"k{i}": {"n": i} for i in range(1000)}
    calls = {
        "batch_items": lambda: codec.batch_items(values, None),
        "update_pairs": lambda: codec.update_pairs(values, {}),
        "expiring_entries": lambda: codec.expiring_entries([(k, v, None) for k, v in values.items()],
                                                           lambda: 1000.0),
    }
    tracemalloc.start()
    try:
        held = calls[build]()
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == 1000 and all(codec.decode(item[2], item[3]) == values[item[0]] for item in held)
    assert size < 1000 * 1024, size
