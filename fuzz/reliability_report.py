"""Run the fuzz and fault suites and print the figures of docs/reliability.md.

    python3 fuzz/reliability_report.py                 # the quick defaults (as in CI)
    python3 fuzz/reliability_report.py --whole-suite   # every test, and the same table
    MMAPKV_FAULT_ROUNDS=200 MMAPKV_FAULT_CASES=2000 MMAPKV_FUZZ_PROFILE=long \\
        python3 fuzz/reliability_report.py             # a long run

Each test leaves its counts in ``$MMAPKV_REPORT_DIR`` (a temporary directory here); this
script runs pytest on them, then prints one Markdown table.  Extra arguments go to pytest.
The exit status is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TESTS = [
    "fuzz/test_state_machine.py",
    "tests/test_fault_kill.py",
    "tests/test_fault_torn.py",
    "tests/test_fault_corrupt.py",
    "tests/test_fault_disk.py",
    "tests/test_fault_descriptors.py",
    "tests/test_fault_rivals.py",
    "tests/test_fault_threads.py",
    "tests/test_bad_input.py",
    "tests/test_interrupts.py",
    "tests/test_crash_sequences.py",
    "tests/test_fault_sigint.py",
]

#: (report file, figure, label) in the order of the table
FIGURES = [
    ("fuzz_state_machine", "runs", "state-machine runs (fresh stores)"),
    ("fuzz_state_machine", "operations", "store calls checked against the model"),
    ("fuzz_state_machine", "invariant checks", "after-step checks (verify, keys, every value)"),
    ("fuzz_state_machine", "crashes", "simulated crashes + recoveries"),
    ("fuzz_state_machine", "reopens", "clean close + reopen"),
    ("fuzz_state_machine", "growths", "file doublings"),
    ("fuzz_state_machine", "raised StoreFullError", "StoreFullError at the ceiling (as predicted)"),
    ("fuzz_state_machine", "raised KeyExpiredError", "KeyExpiredError (as predicted)"),
    ("fuzz_state_machine", "round trips", "round-trip values read back equal"),
    ("fuzz_state_machine_redis", "runs", "RedisStore state-machine runs (needs redis-server)"),
    ("fuzz_state_machine_redis", "operations", "  RedisStore calls checked against the model"),
    ("fuzz_state_machine_redis", "invariant checks", "  after-step checks"),
    ("fuzz_state_machine_redis", "expired by the server", "  keys the server expired as the model said"),
    ("fault_kill", "kill rounds", "kill -9 rounds"),
    ("fault_kill", "acknowledged operations", "acknowledged operations checked"),
    ("fault_kill", "keys checked", "keys and values checked after kills"),
    ("fault_kill", "kills in flight", "kills with an operation in flight"),
    ("fault_kill", "kills during growth", "kills during a growth"),
    ("fault_kill", "recoveries by child", "writers that started on a crashed store"),
    ("fault_kill_forked", "kill rounds", "kill -9 rounds, forked writers"),
    ("fault_kill_forked", "acknowledged operations", "  acknowledged operations checked"),
    ("fault_kill_forked", "kills in flight", "  kills with an operation in flight"),
    ("fault_corrupt", "corrupted files tried", "corrupted store files tried"),
    ("fault_corrupt", "refused at open", "  refused at open (CorruptStoreError)"),
    ("fault_corrupt", "opened anyway", "  opened (damage elsewhere)"),
    ("fault_corrupt", "reads tried", "  reads of damaged stores"),
    ("fault_corrupt", "reads exact", "    exact value"),
    ("fault_corrupt", "reads refused", "    refused with an MmapKVError"),
    ("fault_corrupt", "wrong data", "    wrong data"),
    ("fault_corrupt", "listings that named a key never stored",
     "  keys(), iteration or items() listed a name never stored"),
    ("fault_corrupt", "creates refused after the damage was read",
     "  creates in them refused (CorruptStoreError, StoreFullError)"),
    ("fault_corrupt", "creates that lost a key read exactly before", "    copies where a create lost a readable key"),
    ("fault_corrupt", "compacted after the damage was read", "  compacted after the reads and creates"),
    ("fault_corrupt", "compacts that lost a key read exactly before", "    compacts that lost a readable key"),
    ("fault_corrupt", "non-store files tried", "non-store files tried"),
    ("fault_corrupt", "non-store files refused", "  refused, left byte-identical"),
    ("fault_disk", "growth failures provoked", "full-disk failures provoked"),
    ("fault_disk", "keys checked after failure", "keys checked after a failed growth"),
    ("fault_rivals", "holder scenarios", "holder scenarios (idle/writing/growing x close/kill)"),
    ("fault_rivals", "rival opens refused", "rival opens refused with StoreLockedError"),
    ("fault_threads", "thread operations", "operations from 8 threads"),
    ("bad_input", "bad inputs tried", "bad inputs tried"),
    ("interrupts", "scenarios", "interrupt scenarios x exception types"),
    ("interrupts", "points", "interrupt points tried (lines, or bytecodes: see Settings)"),
    ("interrupts", "before_state", "  a crash then keeps the state before the call"),
    ("interrupts", "after_state", "  a crash then keeps the state after the call"),
    ("crash_sequences", "sessions", "random walks: sessions"),
    ("crash_sequences", "calls", "  calls"),
    ("crash_sequences", "interrupted", "  calls interrupted at a random bytecode"),
    ("crash_sequences", "crashes", "  crashes (sessions ended without close)"),
    ("crash_sequences", "crash_after_interrupt", "  crashes right after an interrupt"),
    ("fault_sigint", "sessions", "SIGINT storms: sessions"),
    ("fault_sigint", "sigints sent", "  SIGINTs sent"),
    ("fault_sigint", "calls", "  calls made"),
    ("fault_sigint", "interrupted calls", "  calls interrupted (each read back whole)"),
    ("fault_sigint", "sessions killed", "  sessions ended by SIGKILL"),
    ("sigint_handler", "signals", "a signal handler that calls set: signals"),
    ("sigint_handler", "refused in the handler", "  landed inside a call: refused, not a hang"),
]

UNDOCUMENTED = "errors other than the documented ones"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="mmapkv-report-") as report_dir:
        env = dict(os.environ, MMAPKV_REPORT_DIR=report_dir)
        # --whole-suite: run every test (the figures come from the same files), so that one
        # run both checks the project and gives the page its numbers
        whole = "--whole-suite" in argv
        rest = [a for a in argv if a != "--whole-suite"]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   *([] if whole else TESTS), *rest]
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        summary = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), "")
        reports: dict[str, dict[str, object]] = {}
        for name in os.listdir(report_dir):
            if not name.endswith(".json"):  # the lock files beside them
                continue
            with open(os.path.join(report_dir, name)) as f:
                reports[name.removesuffix(".json")] = json.load(f)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-20000:])
        sys.stderr.write(proc.stderr[-5000:])
    profile = reports.get("fuzz_state_machine", {}).get("profile", "?")
    rounds = reports.get("fault_kill", {}).get("rounds per seed", "?")
    print(f"Command: {' '.join(['python3', 'fuzz/reliability_report.py', *argv])}")
    print(f"Settings: MMAPKV_FUZZ_PROFILE={profile}, MMAPKV_FAULT_ROUNDS={rounds} per seed, "
          f"MMAPKV_FAULT_CASES={os.environ.get('MMAPKV_FAULT_CASES', '250')} per kind and state, "
          f"MMAPKV_INTERRUPT_GRAIN={os.environ.get('MMAPKV_INTERRUPT_GRAIN', 'line')}, "
          f"MMAPKV_INTERRUPT_EVERY={os.environ.get('MMAPKV_INTERRUPT_EVERY', '4')}")
    print(f"pytest: {summary} (wall {seconds:.0f} s)\n")
    print("| suite | figure | value |")
    print("| --- | --- | ---: |")
    for report, key, label in FIGURES:
        value = reports.get(report, {}).get(key, 0)
        print(f"| {report} | {label} | {value:,} |" if isinstance(value, int) else
              f"| {report} | {label} | {value} |")
    fuzz = reports.get("fuzz_state_machine", {})
    misuse = sum(int(v) for k, v in fuzz.items()  # type: ignore[call-overload]
                 if k in ("raised InvalidKeyError", "raised InvalidValueError", "raised InvalidTTLError",
                          "raised ValueTooLargeError", "raised InvalidArgumentError"))
    print(f"| fuzz_state_machine | bad arguments refused with the predicted class | {misuse:,} |")
    undocumented = sum(int(r.get(UNDOCUMENTED, 0)) for r in reports.values())  # type: ignore[call-overload]
    print(f"| all | {UNDOCUMENTED} | {undocumented} |")
    _print_points_per_call(reports.get("interrupts", {}))
    return proc.returncode


def _print_points_per_call(interrupts: dict[str, object]) -> None:
    """The interrupt points tried per scenario (one mutating call each) and exception."""
    table: dict[str, dict[str, object]] = {}
    for key, value in interrupts.items():
        if key.endswith(".points") and key.count(".") == 2:
            scenario, exc, _ = key.split(".")
            table.setdefault(scenario, {})[exc] = value
    if not table:
        return
    kinds = ("KeyboardInterrupt", "MemoryError", "OSError")
    print("\n| call (scenario) | " + " | ".join(kinds) + " |")
    print("| --- |" + " ---: |" * len(kinds))
    for scenario, row in table.items():
        print(f"| {scenario} | " + " | ".join(f"{row.get(k, 0):,}" for k in kinds) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
