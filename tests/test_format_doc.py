"""docs/format.md and mmapkv/format.py describe the same bytes."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from mmapkv import format as fmt

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
_TYPES = {"bytes": None, "u8": "B", "u16": "H", "u32": "I", "u64": "Q", "f64": "d"}


def _doc_table(heading: str) -> list[tuple[int, str, str, str]]:
    """(offset, size, type, field) rows of the first table under ``## heading``."""
    section = DOC.read_text(encoding="utf-8").split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], cells[2], cells[3]))
    return rows


def _code_layout(st: struct.Struct, names: tuple[str, ...]) -> list[tuple[int, str, str, str]]:
    codes = re.findall(r"\d*[a-zA-Z]", st.format.lstrip("<"))
    assert len(codes) == len(names)
    rows, offset = [], 0
    for name, code in zip(names, codes):
        size = struct.calcsize("<" + code)
        rows.append((offset, str(size), code, name))
        offset += size
    return rows


@pytest.mark.parametrize(("heading", "st", "names"), [
    ("Superblock", fmt.SUPERBLOCK, fmt.SUPERBLOCK_FIELDS),
    ("Slot", fmt.SLOT_HEADER, fmt.SLOT_FIELDS),
])
def test_header_tables_match_structs(heading: str, st: struct.Struct, names: tuple[str, ...]) -> None:
    doc = _doc_table(heading)
    code = _code_layout(st, names)
    assert [(o, s, f) for o, s, _, f in doc[:len(code)]] == [(o, s, f) for o, s, _, f in code]
    for (_, _, doc_type, field), (_, _, code_type, _) in zip(doc, code):
        expected = _TYPES[doc_type]
        assert expected is None and code_type.endswith("s") or expected == code_type, field


def test_slot_table_places_key_and_value() -> None:
    rows = {field: (offset, size) for offset, size, _, field in _doc_table("Slot")}
    assert rows["key"] == (fmt.KEY_OFFSET, str(fmt.MAX_KEY_BYTES))
    assert rows["value"][0] == fmt.VALUE_OFFSET
    assert fmt.VALUE_OFFSET + fmt.MAX_VALUE_BYTES <= fmt.SLOT_STRIDE == 20_480


def test_documented_constants() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert " ".join(f"{b:02X}" for b in fmt.MAGIC) in text
    for state in (fmt.STATE_LIVE, fmt.STATE_PENDING):
        assert " ".join(f"{b:02X}" for b in state.to_bytes(4, "little")) in text
    g = fmt.Geometry(fmt.MAX_FILE_SIZE)
    for number in (g.table_capacity, g.slots_offset, g.initial_size, g.max_slots, fmt.SLOT_STRIDE):
        assert f"{number:,}" in text, number
    assert fmt.FINGERPRINT_SHIFT == 20 and "h >> 20" in text
