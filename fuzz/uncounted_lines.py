"""List the lines of mmapkv that no interrupt is ever tried in.

    python3 fuzz/uncounted_lines.py                      # tests/test_interrupts.py, its strides as in CI
    python3 fuzz/uncounted_lines.py -k "delete"          # extra arguments go to pytest

Runs ``tests/test_interrupts.py`` with ``MMAPKV_INTERRUPT_LINES`` set, so the harness
records every line of the package that a counted call ran (the calls whose every point is
interrupted), then prints, function by function, the lines of the package that none ran.
Most are error branches (run only once an exception is raised: those are tried as the
exception's own path) or code that changes nothing; a line that changes the file, on a
path that raises nothing, wants a scenario.  Stop 39 found the paths of its new scenarios
and opens this way (docs/reliability.md).  The exit status is pytest's.
"""

from __future__ import annotations

import dis
import glob
import json
import os
import subprocess
import sys
import tempfile
from types import CodeType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mmapkv")


def executable_lines(path: str) -> dict[str, list[int]]:
    """Every line that starts a bytecode, by qualified function name (module level: "")."""
    with open(path) as source:
        code = compile(source.read(), path, "exec")
    found: dict[str, list[int]] = {}

    def walk(c: CodeType, name: str) -> None:
        found.setdefault(name, []).extend(sorted({line for _, line in dis.findlinestarts(c)
                                                  if line and line != c.co_firstlineno}))
        for const in c.co_consts:
            if isinstance(const, CodeType) and not const.co_name.startswith("<"):
                walk(const, f"{name}.{const.co_name}" if name else const.co_name)
    walk(code, "")
    return found


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, MMAPKV_INTERRUPT_LINES=os.path.join(scratch, "lines"))
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_interrupts.py", *argv],
                                 cwd=ROOT, env=env)
        ran: set[tuple[str, int]] = set()
        for part in glob.glob(os.path.join(scratch, "lines.*.json")):
            with open(part) as recorded:
                ran.update((path, line) for path, line in json.load(recorded))
    if not ran:
        print("no counted call ran: nothing to compare")
        return status or 1
    for path in sorted(glob.glob(os.path.join(PACKAGE, "*.py"))):  # not bench/: it changes no store
        missed = {name: [line for line in lines if (path, line) not in ran]
                  for name, lines in executable_lines(path).items() if name}
        missed = {name: lines for name, lines in missed.items() if lines}
        if missed:
            print(f"== {os.path.relpath(path, ROOT)}")
            for name, lines in missed.items():
                print(f"  {name}: {', '.join(map(str, lines))}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
