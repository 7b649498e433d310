"""Issue 11: user code that stores TypedDicts, reads with get(key, default) and iterates
items() type-checks under ``mypy --strict`` without casts, and the types it infers are
precise (``reveal_type``), not ``Any``; on ``RedisStore`` too (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--cache-dir", os.devnull, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_user_code_type_checks_strictly() -> None:
    result = mypy(str(HERE / "typing" / "user_code.py"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_type_checks_strictly() -> None:
    """Every module of mmapkv passes ``mypy --strict`` (it ships ``py.typed``)."""
    result = mypy("-p", "mmapkv")
    assert result.returncode == 0, result.stdout + result.stderr


def test_inferred_types_are_precise(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import mmapkv\n"
        "s = mmapkv.Store('x')\n"
        "reveal_type(s.get('k'))\n"
        "reveal_type(s.get('k', {}))\n"
        "reveal_type(s.get('k', 0))\n"
        "reveal_type(s.pop('k'))\n"
        "reveal_type(s.ttl('k'))\n"
        "reveal_type(s['k'])\n"
        "reveal_type(list(s.items()))\n"
        "r = mmapkv.RedisStore('redis://localhost')\n"
        "reveal_type(r.get('k'))\n"
        "reveal_type(r.get('k', {}))\n"
        "reveal_type(r.pop('k', None))\n"
        "reveal_type(r.ttl('k'))\n"
        "reveal_type(list(r.items_with_expiry()))\n", encoding="utf-8")
    out = mypy(str(probe)).stdout
    revealed = [line.split("Revealed type is ", 1)[1].strip('"') for line in out.splitlines()
                if "Revealed type is" in line]
    assert [_spelled_new(t) for t in revealed] == [
        "dict[str, Any] | None",
        "dict[str, Any]",
        "dict[str, Any] | int",
        "dict[str, Any]",
        "int | None",
        "dict[str, Any]",
        "list[tuple[str, dict[str, Any]]]",
        "dict[str, Any] | None",
        "dict[str, Any]",
        "dict[str, Any] | None",
        "int | None",
        "list[tuple[str, dict[str, Any], float | None]]",
    ], out


def _spelled_new(revealed: str) -> str:
    """Older mypy spells ``X | None`` as ``Union[builtins.X, None]``."""
    revealed = revealed.replace("builtins.", "")
    if revealed.startswith("Union[") and revealed.endswith("]"):
        revealed = " | ".join(part.strip() for part in revealed[6:-1].rsplit(",", 1))
    return revealed
