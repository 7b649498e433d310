"""No interrupt can skip one of mmapkv's ``with`` exits or ``finally`` blocks: the bytecode says so.

A signal's exception (Ctrl-C's ``KeyboardInterrupt``) is raised where the interpreter checks
for pending signals, among them a loop's backward jump (``JUMP_BACKWARD``).  CPython 3.13
leaves some of those jumps outside their frame's exception table even inside a ``with`` or
a ``try`` (python/cpython#130279): an interrupt there leaves the frame without running its
handlers, so ``with self._lock:`` would keep the store's lock held for good.  Measured on
3.13.0: Ctrl-C fired at ``with lock: for x in xs: if x: ...`` left the lock held after a
third of the interrupts.  mmapkv therefore runs such loops in functions of their own
(the note above ``store._readable_keys``), and this test compiles every module of the
package with the running interpreter and checks that each backward jump is covered by the
same handler as the loop it closes.

Handlers that only re-raise are looked through: a comprehension's, which restores its
variable, and a generator's, which turns ``StopIteration`` into ``RuntimeError``.

Meaningful on CPython 3.13 and later, where the pending-signal check of ``JUMP_BACKWARD``
is looked up at the jump itself; 3.11 and 3.12 look it up at the instruction before, which
their tables cover, so the test is skipped there.  It needs only the standard library, so
CI runs it under every CPython 3.13+ it finds: ``python3.13 tests/test_backward_jumps.py``.
"""

from __future__ import annotations

import ast
import dis
import pathlib
import sys
import types
from collections.abc import Callable

try:
    import pytest
except ImportError:  # run as a script under a bare interpreter: CI's check under 3.13
    pytest = None  # type: ignore[assignment]

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mmapkv"
#: what a handler that only re-raises holds before its RERAISE
_RERAISE_ONLY = {"SWAP", "POP_TOP", "STORE_FAST", "STORE_FAST_STORE_FAST", "CALL_INTRINSIC_1", "NOP",
                 "RERAISE"}


def _code_objects(code: types.CodeType) -> list[types.CodeType]:
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += _code_objects(const)
    return found


def _handler(code: types.CodeType, offset: int) -> int | None:
    """The first handler covering *offset* that does more than re-raise (None: none)."""
    entries = dis._parse_exception_table(code)  # type: ignore[attr-defined]
    instructions = list(dis.get_instructions(code))
    index = {ins.offset: n for n, ins in enumerate(instructions)}
    seen = set()
    while True:
        target = next((e.target for e in entries if e.start <= offset < e.end), None)
        if target is None or target in seen:
            return None
        seen.add(target)
        ops = set()
        for ins in instructions[index[target]:]:
            ops.add(ins.opname)
            if ins.opname == "RERAISE":
                break
        if not ops <= _RERAISE_ONLY:
            return target
        offset = target  # it re-raises: what covers it decides


def uncovered_jumps(source: str, filename: str) -> list[str]:
    """Each backward jump in *source* that an interrupt would leave without running a
    handler its loop runs under, as "file:line (function)"."""
    found = []
    for code in _code_objects(compile(source, filename, "exec")):
        for ins in dis.get_instructions(code):
            if ins.opname == "JUMP_BACKWARD" and \
                    _handler(code, ins.offset) != _handler(code, ins.argval):
                line = ins.positions.lineno if ins.positions else "?"
                found.append(f"{filename}:{line} ({code.co_qualname})")
    return found


def needs_313(test: Callable[[], None]) -> Callable[[], None]:
    if pytest is None:
        return test
    skip = pytest.mark.skipif(sys.version_info < (3, 13), reason="the hazard is CPython 3.13's (3.11 "
                              "and 3.12 look a signal up at the instruction before the jump)")
    return skip(test)  # type: ignore[no-any-return]


def package_jumps() -> list[str]:
    """``uncovered_jumps`` over every module of the package, the benchmark's included."""
    return [jump for path in sorted(PACKAGE.rglob("*.py"))
            for jump in uncovered_jumps(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]


@needs_313
def test_no_interrupt_skips_a_handler_of_mmapkv() -> None:
    found = package_jumps()
    assert found == [], "loops whose backward jump skips a handler on an interrupt: " + ", ".join(found)


@needs_313
def test_the_check_finds_the_hazard() -> None:
    """The shape measured on 3.13.0, and the cure."""
    hazard = ("def f(lock, xs):\n    with lock:\n        for x in xs:\n            if x:\n"
              "                g(x)\n")
    cure = ("def f(lock, xs):\n    with lock:\n        h(xs)\n"
            "def h(xs):\n    for x in xs:\n        if x:\n            g(x)\n")
    assert uncovered_jumps(hazard, "hazard.py") == ["hazard.py:4 (f)"]
    assert uncovered_jumps(cure, "cure.py") == []


# The rule behind the fix, checked on every CPython: in the modules that hold the store's
# lock or a change bracket, no loop (nor comprehension, which 3.12+ inline) sits inside a
# `with` or `try` of its own frame; it runs in a function of its own.  That makes the
# hazard impossible whatever a compiler does with a loop's jumps, and keeps CPython
# 3.12's and 3.13's tracers (which raise an injected exception at a comprehension's
# backward jump as if no handler were there) from fooling tests/test_interrupts.py.
# Left out: redis_store.py, whose `with self._server()` only translates redis-py's errors
# (a KeyboardInterrupt is not one), and the benchmark, whose loops the bytecode check
# above covers.
_EXEMPT = {"redis_store.py"}
_FRAMES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.GeneratorExp, ast.ClassDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp)
_GUARDS = (ast.With, ast.AsyncWith, ast.Try) + ((ast.TryStar,) if sys.version_info >= (3, 11) else ())


def guarded_loops(source: str, filename: str) -> list[str]:
    """Each loop of *source* inside a ``with`` or ``try`` of its own frame, as "file:line"."""
    found: list[str] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _FRAMES):
                visit(child, False)  # a new frame: its own handlers only
                continue
            if guarded and isinstance(child, _LOOPS):
                found.append(f"{filename}:{child.lineno}")
            visit(child, guarded or isinstance(child, _GUARDS))

    visit(ast.parse(source), False)
    return found


def test_no_loop_runs_inside_a_with_or_try_of_its_own_frame() -> None:
    found = [loop for path in sorted(PACKAGE.glob("*.py")) if path.name not in _EXEMPT
             for loop in guarded_loops(path.read_text(encoding="utf-8"), path.name)]
    assert found == [], "loops to move into a function of their own: " + ", ".join(found)


def test_the_rule_sees_loops_and_frames() -> None:
    source = ("def f(lock, xs):\n    with lock:\n        [x for x in xs]\n        list(x for x in xs)\n"
              "        def g():\n            for x in xs: pass\n    try:\n        pass\n"
              "    except E:\n        while xs: pass\n    for x in xs:\n        pass\n")
    assert guarded_loops(source, "f.py") == ["f.py:3", "f.py:10"]


if __name__ == "__main__":  # python3.13 tests/test_backward_jumps.py: no pytest needed
    if sys.version_info < (3, 13):
        sys.exit("needs CPython 3.13 or later")
    problems = package_jumps()
    print("\n".join(problems) or f"{sys.version.split()[0]}: every loop's backward jump in mmapkv is covered")
    sys.exit(1 if problems else 0)
