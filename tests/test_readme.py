"""The README's Python examples run and say what they claim."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples() -> None:
    assert BLOCKS, "README.md lost its ```python examples"


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_example_runs(block: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    assert "already exists" in capsys.readouterr().out
