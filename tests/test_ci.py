"""CI runs what a newcomer runs: README.md's two quick-start commands, verbatim and first.

A fresh checkout has only what those two commands install, so CI must not install an extra
(the benchmark's peers, say) before the second of them runs the test suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    """The shell commands of README.md's "Quick start" section, one per code block."""
    readme = (TOP / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)^## ", readme, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section.group(1), re.S)
    return [" ".join(line.strip() for line in block.splitlines()
                     if line.strip() and not line.strip().startswith("#")) for block in blocks]


def ci_lines() -> list[str]:
    text = (TOP / ".ci" / "run").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_quick_start_first_in_a_fresh_venv_and_home() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands  # install and run; install and test
    lines = ci_lines()
    for command in commands:
        assert command in lines, f".ci/run does not run the README's command verbatim: {command}"
    at = [lines.index(command) for command in commands]
    installs = [n for n, line in enumerate(lines) if "pip install" in line and "--upgrade pip" not in line]
    assert installs[:2] == at, "the README's two commands must be .ci/run's first two installs, in order"
    before = lines[:at[0]]
    assert any(line.startswith("export HOME=") for line in before), "no fresh HOME"
    assert any(re.search(r"-m venv ", line) for line in before), "no fresh virtual environment"


PROBE = '''
import os, tempfile

def test_probe_a(tmp_path):
    _log(tmp_path)

def test_probe_b(tmp_path):
    _log(tmp_path)

def _log(tmp_path):
    (tmp_path / "store").write_bytes(b"x" * 4096)
    fd, name = tempfile.mkstemp()
    os.close(fd)
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(f"{tmp_path}\\n{name}\\n")
'''


def test_the_suites_files_go_to_ram_and_go_with_the_session(tmp_path: Path) -> None:
    """tests/conftest.py's hook: every temporary file of a session (``tmp_path`` in each xdist
    worker, ``tempfile``) is under ``MMAPKV_TEST_TMPDIR``, and nothing is left there after."""
    from conftest import TMPFS_ROOM

    ram, probe, log = tmp_path / "ram", tmp_path / "probe", tmp_path / "log"
    ram.mkdir()
    if shutil.disk_usage(ram).free < TMPFS_ROOM:
        pytest.skip(f"less than {TMPFS_ROOM >> 30} GiB free under {ram}: the hook leaves such a place alone")
    probe.mkdir()
    (probe / "test_probe.py").write_text(PROBE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR" and not k.startswith("PYTEST_")}
    env.update(MMAPKV_TEST_TMPDIR=str(ram), PROBE_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(TOP / "tests"), str(TOP)]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "-n", "2", "test_probe.py"], cwd=probe, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    paths = log.read_text(encoding="utf-8").split()
    assert len(paths) == 4, paths
    for path in paths:
        assert Path(path).is_relative_to(ram), f"{path} is not under {ram}"
    assert list(ram.iterdir()) == [], "the session left files behind"
