"""docs/cli.md's examples are one real session: each ``$ command`` runs and prints what the page shows.

The ``console`` blocks of the page are run in order, by bash, in one fresh directory (which the
page calls ``/tmp/cli-session``), with ``XDG_DATA_HOME`` inside it, so later examples see what
earlier ones did.  Output is stdout and stderr as a terminal interleaves them, then
``[exit N]`` for a non-zero status.  Times, dates and ``demo:<time_ns>`` keys differ from run
to run, so both sides have them replaced by placeholders before comparing.  ``--help`` shows
the default path, wrapped to the terminal's width, so it runs with ``XDG_DATA_HOME`` under the
page's ``/tmp/cli-session`` itself (it creates nothing there).

After a change to what the commands print, rewrite the page's outputs from a fresh run with
``MMAPKV_UPDATE_DOCS=1 python -m pytest tests/test_cli_doc.py`` and read the diff.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
SESSION = "/tmp/cli-session"  # the page's name for the directory the session ran in
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.S | re.M)
PLACEHOLDERS = [
    (re.compile(r"demo:\d+"), "demo:<time_ns>"),
    (re.compile(r"\b\d{10}\.\d+"), "<unix time>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"), "<date>"),
    (re.compile(r"next expiry in [\d.]+ (s|min|h|d)\b"), "next expiry in <duration>"),
]


def examples(block: str) -> list[tuple[str, str]]:
    """(command, output) for each ``$ `` line of a console block; output runs to the next one."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"a console block of {DOC.name} does not start with '$ ': {line!r}"
            pairs[-1][1].append(line)
    return [(command, "\n".join(lines).rstrip("\n")) for command, lines in pairs]


def render(pairs: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"$ {command}" + (f"\n{output}" if output else "") for command, output in pairs) + "\n"


def normalize(text: str) -> str:
    for pattern, placeholder in PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return text


def test_every_block_parses_back_to_itself() -> None:
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10, f"{DOC} lost its console examples"
    for block in blocks:
        assert render(examples(block)) == block


def run_page(doc: Path, tmp_path: Path, session_name: str, *, aliases: dict[str, str] | None = None,
             data_dir: Callable[[str, Path], str] | None = None) -> None:
    """Run the console blocks of *doc* in order, in one fresh directory that the page calls
    *session_name*, and fail where a command prints other than the page shows (with
    ``MMAPKV_UPDATE_DOCS=1``, rewrite those outputs instead).  *aliases* maps what the page
    says (a server's address) to what runs; outputs are mapped back.  ``XDG_DATA_HOME`` is
    ``data_dir(command, session)/data`` (default: the session)."""
    session = tmp_path / "session"
    session.mkdir()
    shims = tmp_path / "bin"  # `python` in the examples is the interpreter running the tests
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shims / "python").chmod(stat.S_IRWXU)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MMAPKV_") and key != "PYTHONIOENCODING"}
    env.update(PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}", COLUMNS="80", LC_ALL="C.UTF-8")
    aliases = aliases or {}
    text = doc.read_text(encoding="utf-8")
    update = bool(os.environ.get("MMAPKV_UPDATE_DOCS"))
    wrong: list[str] = []
    blocks: list[str] = []
    try:
        for block in BLOCK.findall(text):
            ran = []
            for command, shown in examples(block):
                data = data_dir(command, session) if data_dir else str(session)
                real = command
                for said, meant in aliases.items():
                    real = real.replace(said, meant)
                done = subprocess.run(["bash", "-c", real], cwd=session, timeout=120,
                                      env={**env, "XDG_DATA_HOME": f"{data}/data"},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                got = done.stdout.replace(os.path.realpath(session), session_name)
                got = got.replace(str(session), session_name).rstrip("\n")
                for said, meant in aliases.items():
                    got = got.replace(meant, said)
                if done.returncode:
                    got += f"\n[exit {done.returncode}]"
                same = normalize(got) == normalize(shown)
                ran.append((command, shown if same else got))  # an update changes only what differs
                if not same:
                    diff = difflib.unified_diff(shown.splitlines(), got.splitlines(), f"docs/{doc.name}",
                                                "this run", lineterm="")
                    wrong.append(f"$ {command}\n" + "\n".join(diff))
            blocks.append(render(ran))
    finally:
        shutil.rmtree(session)  # the disk is shared: the session's stores go
    if update:
        parts = iter(blocks)
        doc.write_text(BLOCK.sub(lambda m: f"```console\n{next(parts)}```", text), encoding="utf-8")
        pytest.skip(f"rewrote the outputs in {doc}; read the diff")
    assert not wrong, (f"docs/{doc.name} shows what the commands no longer print (MMAPKV_UPDATE_DOCS=1 "
                       "rewrites it):\n\n" + "\n\n".join(wrong))


def test_examples_print_what_the_page_shows(tmp_path: Path) -> None:
    # --help shows the default path: under the page's own session directory (it creates nothing)
    run_page(DOC, tmp_path, SESSION, data_dir=lambda command, session: SESSION if "--help" in command
             else str(session))
