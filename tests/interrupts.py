"""Raise an exception at the n-th bytecode a call executes: the interrupt harness.

Ctrl-C's ``KeyboardInterrupt`` (or ``SystemExit`` from a signal handler, a ``MemoryError``)
can land between any two bytecodes.  ``count_steps(call)`` runs *call* under
``sys.settrace`` with opcode events on and counts the bytecodes it executes, in every
Python frame it enters (mmapkv, the standard library, portalocker...).
``interrupt_at(call, n, exc)`` runs it again and raises *exc* just before the n-th, so a
test can try every point of a call, one by one, and check what each leaves behind.

One gap is modelled on CPython rather than injected: the bytecodes between the end of a
``with`` body and the call of its ``__exit__`` (three ``LOAD_CONST None``, ``PRECALL``,
``CALL``, after a ``SWAP`` when the body returns).  They lie outside the block's exception handler, so an exception "before" them
would skip ``__exit__``; but CPython raises a signal's exception only at function entry,
backward jumps and after a call returns, and those bytecodes cannot fail, so no real
interrupt lands there (python/cpython#74174: a ``with lock:`` on a lock whose
``__enter__``/``__exit__`` are C is atomic with respect to Ctrl-C).  For the same reason
the entry of a ``with`` block's exception handler (``PUSH_EXC_INFO``,
``WITH_EXCEPT_START``, which calls ``__exit__``) is skipped, and so is ``NOP`` (no effect,
cannot fail: the same point as the bytecode after it).  Every other bytecode of every
frame is tried, except in finalisers (``__del__``), whose exceptions Python ignores.

``MMAPKV_INTERRUPT_GRAIN`` chooses the points: ``line`` (the default, what CI runs) raises
before the first bytecode of every line executed, ``opcode`` before every bytecode (about
five times as many points; the published figures in docs/reliability.md use it).

``MMAPKV_INTERRUPT_LINES=PREFIX`` records the lines of the package that counted calls run
and writes them to ``PREFIX.PID.json`` at exit, for ``fuzz/uncounted_lines.py``, which lists
the code no interrupt is ever tried in.  Otherwise importing this module has no side
effects (pytest's doctest collection imports it).

>>> def f():
...     x = 1
...     return x + 1
>>> steps = count_steps(f)
>>> interrupt_at(f, steps, KeyboardInterrupt)
(True, KeyboardInterrupt())
>>> interrupt_at(f, steps + 1, KeyboardInterrupt)
(False, None)
"""

from __future__ import annotations

import dis
import gc
import os
import stat
import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

__all__ = ["count_steps", "interrupt_at", "open_descriptors", "interrupt_the_last"]


_UNINTERRUPTIBLE: dict[CodeType, frozenset[int]] = {}

_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmapkv", "")
#: (file, line) of the package's lines that counted calls ran, if MMAPKV_INTERRUPT_LINES asks
_COUNTED_LINES: set[tuple[str, int]] | None = None
if os.environ.get("MMAPKV_INTERRUPT_LINES"):
    import atexit
    import json

    _COUNTED_LINES = set()
    atexit.register(lambda: _write_lines(f"{os.environ['MMAPKV_INTERRUPT_LINES']}.{os.getpid()}.json"))


def _write_lines(where: str) -> None:
    with open(where, "w") as out:
        json.dump(sorted(_COUNTED_LINES or ()), out)


def _with_exits(code: CodeType) -> frozenset[int]:
    """Offsets of the bytecodes that call a ``with`` block's ``__exit__`` on the way out."""
    found = _UNINTERRUPTIBLE.get(code)
    if found is None:
        ins = list(dis.get_instructions(code))
        # No effect and cannot fail: the same point as the bytecode after them.
        offsets = {x.offset for x in ins if x.opname in ("NOP", "PUSH_EXC_INFO")}
        # An exception handler of a `with` calls __exit__ first: nothing can come between.
        offsets.update(x.offset for x in ins if x.opname == "WITH_EXCEPT_START")
        for i in range(len(ins) - 4):
            window = ins[i:i + 5]
            if all(x.opname == "LOAD_CONST" and x.argval is None for x in window[:3]):
                tail = [x.opname for x in window[3:]]
                if tail in (["PRECALL", "CALL"], ["CALL", "POP_TOP"]) and window[3].arg == 2:
                    if i and ins[i - 1].opname == "SWAP":  # a `return` inside the block
                        offsets.add(ins[i - 1].offset)
                    offsets.update(x.offset for x in window[:3])
                    offsets.update(x.offset for x in window[3:] if x.opname in ("PRECALL", "CALL"))
        found = _UNINTERRUPTIBLE[code] = frozenset(offsets)
    return found


#: "opcode": before every bytecode (the exact principle); "line": before every line, the
#: first bytecode of each (the issue's minimum, about five times fewer points)
GRAIN = os.environ.get("MMAPKV_INTERRUPT_GRAIN", "line")
if GRAIN not in ("line", "opcode"):
    raise ValueError(f"MMAPKV_INTERRUPT_GRAIN must be 'line' or 'opcode', not {GRAIN!r}")


def _run(call: Callable[[], Any], stop_at: int, exc: type[BaseException] | None,
         injected: list[bool] | None = None, where: Callable[[FrameType], bool] | None = None) -> int:
    steps = 0
    event_kind = GRAIN
    lines = _COUNTED_LINES if exc is None else None

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal steps
        if lines is not None and frame.f_code.co_filename.startswith(_PACKAGE):
            lines.add((frame.f_code.co_filename, frame.f_lineno))
        if event == event_kind and frame.f_lasti not in _with_exits(frame.f_code):
            steps += 1
            if exc is not None and (steps == stop_at or where is not None and where(frame)):
                if injected is not None:
                    injected.append(True)
                raise exc()
        return local

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        caller: FrameType | None = frame
        while caller is not None:
            if caller.f_code.co_name == "__del__":
                # A finaliser, run whenever an object dies, not by the call; Python
                # ignores what it raises, so an interrupt there would be lost anyway.
                return None
            caller = caller.f_back
        frame.f_trace_opcodes = event_kind == "opcode"
        frame.f_trace_lines = event_kind == "line"
        return local(frame, event, arg)

    # Collect first and not during: a garbage collection runs finalisers and weakref
    # callbacks of objects the call never touched, and Python ignores what they raise.
    # The young generations only: the garbage of the last point is there, and a full
    # collection of pytest's heap cost half of each point's time.
    gc.collect(1)
    gc.disable()
    sys.settrace(on_call)
    try:
        call()
    finally:
        sys.settrace(None)
        gc.enable()
    return steps


def count_steps(call: Callable[[], Any]) -> int:
    """Run *call* and return the number of bytecodes it executed (exceptions propagate)."""
    return _run(call, 0, None)


def interrupt_at(call: Callable[[], Any], step: int, exc: type[BaseException], *,
                 where: Callable[[FrameType], bool] | None = None) -> tuple[bool, BaseException | None]:
    """Run *call*, raising *exc* just before its *step*-th bytecode (or, given *where*,
    at the first point where *where(frame)* holds: the same point whatever ran before it,
    where a step counted once is not, since a first run in a process counts imports too).

    Returns (whether the exception was injected, what came out of the call: the injected
    exception, another one the call turned it into or raised itself, or None).
    """
    injected: list[bool] = []
    try:
        _run(call, step, exc, injected, where)
    except BaseException as out:  # noqa: BLE001 - the point is to see everything
        return bool(injected), out
    return bool(injected), None


def open_descriptors() -> int:
    """Descriptors of this process open on anything but a directory (Linux's /proc).  A
    directory's, held for the ``fsync`` that makes a new name durable, leaks if an
    interrupt lands just as ``os.open`` returns it: ``FileIO`` refuses directories, and no
    other object of the standard library takes over a number in C; no lock rides on it."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += not stat.S_ISDIR(os.stat(f"/proc/self/fd/{name}").st_mode)
        except FileNotFoundError:  # listdir's own, closed by now
            pass
    return count


def interrupt_the_last(call: Callable[[], Any], fresh: Callable[[], None], points: int,
                       check: Callable[[str], None] = lambda where: None) -> int:
    """Interrupt *call* (after *fresh* set its files up) at each of its last *points*
    points, where a ``finally`` closes what it opened; after each, with the interrupt's
    traceback dropped and the garbage collected, assert that no descriptor was left open
    and run *check(where)*.  Returns the number of points tried."""
    fresh()
    count_steps(call)  # the first run warms imports up
    # The shortest of three runs: in one CI run of the whole suite a conversion counted
    # 4,219 lines and a later run of it ended before line 4,213 (not seen in ten runs of
    # the test alone; the cause not found), and every point tried must be reached
    counts = []
    for _ in range(3):
        fresh()
        counts.append(count_steps(call))
    steps = min(counts)
    gc.collect()  # what earlier code left for the collector closes now, not mid-count
    baseline = open_descriptors()
    tried = 0
    for step in range(max(1, steps - points + 1), steps + 1):
        fresh()
        injected, out = interrupt_at(call, step, KeyboardInterrupt)
        where = f"KeyboardInterrupt at point {step} of {steps} ({GRAIN} grain)"
        assert injected, f"{where}: not reached"
        del out
        gc.collect()
        assert open_descriptors() == baseline, f"{where}: a descriptor was left open"
        check(where)
        tried += 1
    return tried
