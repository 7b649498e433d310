"""What a user finds on an index: one version, a license, metadata, and an sdist with its tests.

Offline and fast, except the sdist check, which builds one with ``python -m build`` when that
is installed (CI installs it after the README's commands) and is skipped otherwise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

import mmapkv

TOP = Path(__file__).resolve().parent.parent


def pyproject() -> dict[str, Any]:
    with open(TOP / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def test_version_is_written_once() -> None:
    config = pyproject()
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mmapkv.__version__"}
    assert importlib.metadata.version("mmapkv") == mmapkv.__version__


def test_license_and_classifiers() -> None:
    text = (TOP / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the mmapkv developers\n")
    project = pyproject()["project"]
    assert (project["license"], project["license-files"]) == ("MIT", ["LICENSE"])
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # the SPDX field says it
    assert {"Operating System :: POSIX", "Typing :: Typed"} <= set(project["classifiers"])
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    minors = [int(m[1]) for c in project["classifiers"]
              if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c))]
    assert lowest and minors and min(minors) == int(lowest[1])  # the versions declared, from the lowest
    assert project["urls"]["Homepage"] == "https://github.com/mmapkv/mmapkv"


def test_every_subpackage_is_packaged() -> None:
    # mmapkv.bench is a package (mmapkv/bench/); a fixed list would leave it out of the wheel.
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["packages"] == {"find": {"include": ["mmapkv*"]}}


def test_readme_links_work_off_github() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", (TOP / "README.md").read_text(encoding="utf-8"))
    assert links and [link for link in links if not link.startswith(("https://", "#"))] == []


def test_sdist_carries_what_its_tests_need(tmp_path: Path) -> None:
    # Not importorskip("build"): a checkout's build/ directory imports as a namespace package.
    if importlib.util.find_spec("build") is None or importlib.util.find_spec("build.__main__") is None:
        pytest.skip("python -m build is not installed (pip install build)")
    # Build from a copy: a checkout's leftover mmapkv.egg-info/SOURCES.txt would add its files.
    source = tmp_path / "source"
    shutil.copytree(TOP, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "build", "dist", ".hypothesis", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = (tmp_path / "dist").glob("mmapkv-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "tests/conftest.py", "tests/fault_child.py", ".ci/run"} <= names
    needed = [path.relative_to(TOP).as_posix()
              for pattern in ("tests/*.py", "fuzz/*.py", "docs/*.md") for path in TOP.glob(pattern)]
    assert [path for path in needed if path not in names] == []


def test_redis_is_an_optional_extra() -> None:
    """redis-py is not a core dependency (issue 14): the ``redis`` extra brings it, and the
    ``test`` extra too, so that RedisStore's tests can run wherever a server is."""
    project = pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("redis")]
    assert project["optional-dependencies"]["redis"] == ["redis>=5"]
    assert "redis>=5" in project["optional-dependencies"]["test"]
