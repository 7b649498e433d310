"""docs/format.md and mmapkv/format.py describe the same bytes.

Three descriptions of each header must agree field by field (offset, size, type, name):
the table in docs/format.md, the ``struct.Struct`` in format.py, and the drawing in
format.py's docstring.  The geometry and size-class tables are recomputed from ``Geometry``
and ``CLASS_SIZES``, and the version-2 tables from ``legacy.py``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from mmapkv import format as fmt
from mmapkv import legacy
from mmapkv.engine import _SEQ_RESERVE
from mmapkv.slots import PER_SLOT

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
_TYPES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "f64": "d"}

Row = tuple[int, int, str, str]  # offset, size, struct code ("13I", "8s"), field name


def _section(heading: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    assert f"\n## {heading}\n" in text, heading
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _cells(section: str) -> list[list[str]]:
    """The rows of the Markdown tables in *section*, as lists of stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and "---" not in line]


def _prose(text: str | None = None) -> str:
    """*text* (default: the whole doc) with line breaks and runs of spaces as one space."""
    return " ".join((DOC.read_text(encoding="utf-8") if text is None else text).split())


def _number(cell: str) -> int:
    return int(cell.replace(",", ""))


def _doc_code(size: str, type_: str) -> str:
    """A doc table's type cell ("u32", "13 × u32", "bytes") as a struct code."""
    if type_ == "bytes":
        return f"{size}s"
    count, _, base = type_.rpartition(" × ")
    return f"{count}{_TYPES[base]}"


def _doc_layout(heading: str) -> list[Row]:
    """The header rows of the table under ``## heading``: those whose size is a number."""
    rows = []
    for cells in _cells(_section(heading)):
        if len(cells) >= 4 and cells[0].isdigit() and cells[1].isdigit():
            rows.append((int(cells[0]), int(cells[1]), _doc_code(cells[1], cells[2]), cells[3]))
    return rows


def _code_layout(st: struct.Struct, names: tuple[str, ...]) -> list[Row]:
    """*st*'s fields as rows; a repeated code ("13I") is one row naming the first and last."""
    rows, offset, n = [], 0, 0
    for code in re.findall(r"\d*[a-zA-Z]", st.format.lstrip("<")):
        count = int(code[:-1] or 1)
        size = struct.calcsize("<" + code)
        if code.endswith("s") or count == 1:
            rows.append((offset, size, code, names[n]))
            n += 1
        else:
            rows.append((offset, size, code, f"{names[n]} … {names[n + count - 1]}"))
            n += count
        offset += size
    assert n == len(names) and offset == st.size
    return rows


def _docstring_layout(title: str) -> list[tuple[int, str, str]]:
    """(offset, struct code, name) from the drawing under *title* in format.py's docstring."""
    block = (fmt.__doc__ or "").split(title, 1)[1].split("::\n", 1)[1]
    rows = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith(" "):
            break
        m = re.match(r"\s+(\d+)\s+(?:(\d+) x )?(u8|u16|u32|u64|f64|\d+s)\s+(\w+)", line)
        if m:
            offset, count, type_, name = m.groups()
            code = type_ if type_.endswith("s") else f"{count or ''}{_TYPES[type_]}"
            rows.append((int(offset), code, name))
    return rows


HEADERS = [
    ("Superblock", "Superblock (", fmt.SUPERBLOCK, fmt.SUPERBLOCK_FIELDS),
    ("Slot info", "Slot info entry (", fmt.SLOT_INFO, fmt.SLOT_INFO_FIELDS),
    ("Record", "Record (", fmt.RECORD_HEADER, fmt.RECORD_FIELDS),
]


@pytest.mark.parametrize(("heading", "title", "st", "names"), HEADERS, ids=[h[0] for h in HEADERS])
def test_doc_tables_match_structs(heading: str, title: str, st: struct.Struct,
                                  names: tuple[str, ...]) -> None:
    """Each docs/format.md header table lists the struct's fields: offset, size, type, name."""
    code = _code_layout(st, names)
    assert _doc_layout(heading)[:len(code)] == code


@pytest.mark.parametrize(("heading", "title", "st", "names"), HEADERS, ids=[h[0] for h in HEADERS])
def test_docstring_drawings_match_structs(heading: str, title: str, st: struct.Struct,
                                          names: tuple[str, ...]) -> None:
    """format.py's docstring draws the same fields at the same offsets with the same types
    (an array is drawn under one name, the stem of its fields' names)."""
    drawn = _docstring_layout(title)
    code = _code_layout(st, names)
    assert [(o, c) for o, c, _ in drawn] == [(o, c) for o, _, c, _ in code]
    for (_, _, name), (_, _, _, field) in zip(drawn, code):
        assert name == field or field.startswith(name.rstrip("s") + "_"), (name, field)


def test_header_sizes_are_stated() -> None:
    """The sizes the prose of both gives are the structs' sizes."""
    text, drawn = _prose(), _prose(fmt.__doc__)
    assert f"The first {fmt.SUPERBLOCK.size} bytes of page 0" in text
    assert f"first {fmt.SUPERBLOCK.size} bytes of page 0" in drawn
    assert f"One {fmt.SLOT_INFO.size}-byte entry per slot at `info_offset + {fmt.SLOT_INFO.size} × slot`" in text
    assert f"{fmt.SLOT_INFO.size} bytes, at ``info_offset + {fmt.SLOT_INFO.size} * slot``" in drawn
    assert f"a {fmt.RECORD_HEADER.size}-byte header" in text
    assert f"Record (``RECORD_HEADER``, {fmt.RECORD_HEADER.size} bytes" in drawn


def test_record_table_places_key_and_value() -> None:
    rows = {c[3]: (c[0], c[1]) for c in _cells(_section("Record")) if len(c) >= 4}
    assert rows["key"] == (str(fmt.KEY_OFFSET), "key_len")
    assert rows["value"] == (f"{fmt.KEY_OFFSET} + key_len", "value_len")
    assert f"[{fmt.BODY_OFFSET}, {fmt.KEY_OFFSET} + key_len + value_len)" in _prose(_section("Record"))
    assert fmt.KEY_OFFSET + fmt.MAX_KEY_BYTES + fmt.MAX_VALUE_BYTES <= fmt.SLOT_SIZE


def _geometry_rows() -> tuple[list[str], dict[str, list[str]]]:
    cells = _cells(_section("Geometry"))
    return cells[0], {row[0].strip("`"): row for row in cells[1:]}


def test_geometry_table_is_computed_from_geometry() -> None:
    """The geometry table's two columns are what ``Geometry`` computes for 1 GiB and for the
    smallest ceiling."""
    header, rows = _geometry_rows()
    smallest = fmt.Geometry.smallest_max_size()
    assert header[2].startswith("1 GiB") and _number(header[3].split()[0]) == smallest
    for column, max_size in ((2, fmt.MAX_FILE_SIZE), (3, smallest)):
        g = fmt.Geometry(max_size)
        most = max(1, max_size // fmt.SLOT_SIZE)
        want = {
            "max_size": max_size, "most": most, "max_depth": g.max_depth,
            "dir_offset": g.dir_offset, "dir_size": 2 * (1 << g.max_depth),
            "info_offset": g.info_offset, "info_size": fmt.SLOT_INFO.size * most,
            "slots_offset": g.slots_offset, "max_slots": g.max_slots,
            "initial_size": g.initial_size, "full_size": g.file_size(g.max_slots),
        }
        assert sorted(rows) == sorted(want)
        for name, value in want.items():
            assert _number(rows[name][column]) == value, (name, max_size)
        # the rules the table states hold for these numbers
        assert g.info_offset % fmt.PAGE_SIZE == 0 and g.slots_offset % fmt.PAGE_SIZE == 0
        assert g.info_offset >= g.dir_offset + want["dir_size"]
        assert g.slots_offset >= g.info_offset + want["info_size"]


def test_geometry_prose_numbers() -> None:
    """The numbers the Geometry prose gives: growth steps, the full file's shortfall."""
    text = _prose()
    g = fmt.Geometry(fmt.MAX_FILE_SIZE)
    sizes = [g.initial_size]
    while g.grown_size(sizes[-1]) != sizes[-1]:
        sizes.append(g.grown_size(sizes[-1]))
    steps = [g.slot_count(s) for s in sizes]
    assert f"At 1 GiB a file takes {len(sizes)} sizes" in text
    assert f"… {steps[-2]:,} slots, then {steps[-1]:,}" in text
    assert f"({fmt.MAX_FILE_SIZE - sizes[-1]:,} bytes at 1 GiB)" in text
    assert f"{fmt.Geometry.smallest_max_size():,}" in text
    assert fmt.INITIAL_SLOTS == 8 and "doubles from 8" in text
    assert f"sequence numbers are reserved {_SEQ_RESERVE:,} at a time" in text


def _straddling(size: int) -> int:
    """Sub-slots of one slot that cross a page boundary."""
    return sum(j * size // fmt.PAGE_SIZE != ((j + 1) * size - 1) // fmt.PAGE_SIZE
               for j in range(fmt.SLOT_SIZE // size))


def test_class_table_is_computed_from_the_classes() -> None:
    rows = [[_number(c) for c in row] for row in _cells(_section("Size classes"))[1:]]
    want = [[cls, cls + 1, size, fmt.SLOT_SIZE // size, size - fmt.KEY_OFFSET, _straddling(size)]
            for cls, size in enumerate(fmt.CLASS_SIZES)]
    assert rows == want
    assert [row[3] for row in rows] == list(PER_SLOT)
    assert max(PER_SLOT) == 8 * struct.calcsize("16s")  # the bitmap has a bit per sub-slot


def test_documented_constants() -> None:
    text = _prose()
    assert text.startswith(f"# The mmapkv file format, version {fmt.VERSION} ")
    assert f"| 8 | 4 | u32 | version | {fmt.VERSION} |" in text
    assert " ".join(f"{b:02X}" for b in fmt.MAGIC) in text
    for state in (fmt.STATE_LIVE, fmt.STATE_PENDING):
        assert " ".join(f"{b:02X}" for b in state.to_bytes(4, "little")) in text
    assert f"xxh3_64(k, hash_seed) >> {fmt.FINGERPRINT_SHIFT}" in text
    assert f"fingerprint << {fmt.UNIT_BITS} | unit" in text
    assert f"(offset - slots_offset) / {fmt.UNIT} + 1" in text
    assert f"{64 - fmt.FINGERPRINT_SHIFT} bits" in text
    mask = fmt.SEGMENT_ENTRIES - 1
    assert f"(fingerprint >> {fmt.HOME_SHIFT}) & {mask}" in text
    assert f"(entry >> {fmt.FINGERPRINT_SHIFT + fmt.HOME_SHIFT}) & {mask}" in text
    assert f"{fmt.SEGMENT_ENTRIES:,} entries" in text
    assert f"holding {fmt.SPLIT_AT:,} entries splits" in text
    assert f"up to {fmt.SEGMENT_FULL:,} entries" in text
    assert fmt.Geometry(fmt.MAX_FILE_SIZE).max_depth == fmt.HOME_SHIFT  # no bit shared
    assert f"`max_depth` is at most {fmt.HOME_SHIFT}" in text
    assert "255: a table segment" in text and fmt.KIND_SEGMENT == 255 and fmt.KIND_FREE == 0


# --------------------------------------------------------------------- version 2

V2 = "Version 2 (read only, for conversion)"


def test_version_2_slot_table_matches_legacy() -> None:
    """The version-2 slot header table is the one legacy.py reads."""
    doc = _doc_layout(V2)
    code = _code_layout(legacy._SLOT_HEADER, tuple(row[3] for row in doc[:9]))
    assert doc[:9] == code
    rows = {c[3]: (c[0], c[1]) for c in _cells(_section(V2)) if len(c) >= 4}
    assert rows["key"] == (str(legacy._KEY_OFFSET), str(fmt.MAX_KEY_BYTES))
    assert rows["value"][0] == str(legacy._VALUE_OFFSET)
    assert f"[{legacy._BODY_OFFSET}, {legacy._VALUE_OFFSET} + value_len)" in _prose(_section(V2))


def test_version_2_prose_matches_legacy() -> None:
    section = _prose(_section(V2))
    assert f"(first {legacy._SUPERBLOCK.size} bytes)" in section
    assert f"slot `n` is at `slots_offset + n × {legacy._SLOT_STRIDE:,}`" in section
    max_size = 688_128  # the fixture's, checked against the file in test_convert_v2.py
    first = legacy._slots_offset(max_size)
    slots = (max_size - first) // legacy._SLOT_STRIDE
    assert f"`max_size` {max_size:,}, {slots} slots from {first:,}" in section
    assert "`mmapkv compact --path FILE`" in section
