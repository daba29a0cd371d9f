"""``bin/erlang-python -m erlang_python_conformance [--quick] [TEST ...]``:
the command line and the report."""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

from ._environment import LoopTracker, install
from ._lists import Entry, TestList
from ._runner import ModuleReport, all_modules, list_module, lists_dir, run_module
from ._watchdog import (
    ERROR,
    FAILED,
    FAILING,
    NOT_RUN,
    PASSED,
    SKIPPED,
    TIMEOUT,
    UNEXPECTED_SUCCESS,
)

# The fast subset of `make test`: the core of asyncio (futures, tasks, locks,
# queues, timeouts) and the loop's own conformance class.
QUICK = (
    "test_futures",
    "test_tasks",
    "test_locks",
    "test_queues",
    "test_events.ErlangEventLoopTests",
    "test_timeouts",
    "test_waitfor",
)

# Lines of a new failure's traceback printed (the end, where the cause is).
DETAIL_LINES = 30


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="erlang-python -m erlang_python_conformance",
        description="Runs CPython's test.test_asyncio on ErlangEventLoop inside the BEAM.",
    )
    parser.add_argument(
        "tests",
        nargs="*",
        metavar="TEST",
        help="modules, classes or tests (test_events, test_events.ErlangEventLoopTests, "
        "test_tasks.CTask_CFuture_Tests.test_wait; wildcards allowed); default: all",
    )
    parser.add_argument("--quick", action="store_true", help="the fast subset: " + " ".join(QUICK))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per test (default 30)")
    parser.add_argument(
        "--lists", default=lists_dir(), help="dir of excluded.txt/known_failures.txt"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the selected test ids, run nothing"
    )
    parser.add_argument(
        "--trace", action="store_true", help="print each test as it ends (stderr), with peak RSS"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print every failure's traceback"
    )
    return parser


def _selection(tests: list[str]) -> dict[str, list[Entry]]:
    """Module name -> the entries selecting tests in it ([] = all of it)."""
    selected: dict[str, list[Entry]] = defaultdict(list)
    for test in tests:
        module = test.split(".", 1)[0]
        if module == test:
            selected[module] = []
            continue
        if module not in selected or selected[module]:
            selected[module].append(Entry(test, "selected on the command line", 0))
    return selected


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    excluded = TestList.load(Path(args.lists, "excluded.txt"))
    known = TestList.load(Path(args.lists, "known_failures.txt"))
    tests = list(args.tests) or (list(QUICK) if args.quick else all_modules())
    selection = _selection(tests)

    tracker = LoopTracker()
    install(tracker)

    if args.list:
        for module, entries in selection.items():
            for test_id in list_module(module, entries, excluded):
                print(test_id)
        return 0

    probe = asyncio.new_event_loop()  # what the policy gives the tests
    probe.close()
    print(
        f"CPython {platform.python_version()} test.test_asyncio on {type(probe).__name__} "
        f"inside the BEAM; {args.timeout:g} s per test",
        flush=True,
    )
    print(_row("module", "passed", "failed", "errored", "skipped", "excluded", "loop", "time"))
    started = time.monotonic()
    reports = []
    for module, entries in selection.items():
        report = run_module(module, entries, excluded, known, args.timeout, tracker, args.trace)
        reports.append(report)
        _print_module(report, known)
    status = _print_summary(reports, known, time.monotonic() - started, args.verbose)
    unknown = _naming_no_test(args.tests, reports, excluded)
    for test in unknown:
        print(f"conformance: no test is named {test}", file=sys.stderr)
    return 2 if unknown else status


def _naming_no_test(tests: list[str], reports: list[ModuleReport], excluded: TestList) -> list[str]:
    """The tests named on the command line (below a module) that select no
    test, run or excluded: a typo would otherwise pass as nothing failed.
    Patterns (``*``, ``?``, ``[``) are left out: one may select excluded
    tests only, which are not listed here."""
    selectors = [Entry(test, "", 0) for test in tests if "." in test and not set("*?[") & set(test)]
    ran = [outcome.test_id for report in reports for outcome in report.outcomes]
    return [
        selector.pattern
        for selector in selectors
        if not any(selector.matches(test_id) for test_id in ran)
        and excluded.match(selector.pattern) is None
    ]


def _row(*cells: object) -> str:
    name, *numbers = cells
    return f"{name!s:<22}" + "".join(f"{cell!s:>9}" for cell in numbers)


def _print_module(report: ModuleReport, known: TestList) -> None:
    loop_tests = report.loop_tests()
    loop_passed = sum(1 for o in loop_tests if o.status == PASSED)
    print(
        _row(
            report.name,
            report.count(PASSED),
            report.count(FAILED, UNEXPECTED_SUCCESS),
            report.count(ERROR, TIMEOUT, NOT_RUN),
            report.count(SKIPPED),
            report.excluded if not report.excluded_reason or report.excluded else "module",
            f"{loop_passed}/{len(loop_tests)}",
            f"{report.seconds:.1f}s",
        ),
        flush=True,
    )
    for outcome in report.outcomes:
        if outcome.status not in FAILING:
            continue
        which = "NEW  " if known.match(outcome.test_id) is None else "known"
        print(f"    {outcome.status.upper():<8} {which} {outcome.test_id}", flush=True)


def _print_summary(
    reports: list[ModuleReport], known: TestList, seconds: float, verbose: bool
) -> int:
    outcomes = [o for report in reports for o in report.outcomes]
    failing = [o for o in outcomes if o.status in FAILING]
    new = [o for o in failing if known.match(o.test_id) is None]
    passed = sum(1 for o in outcomes if o.status == PASSED)
    skipped = sum(1 for o in outcomes if o.status == SKIPPED)
    excluded = sum(report.excluded for report in reports)
    loop_tests = [o for report in reports for o in report.loop_tests()]
    loop_passed = sum(1 for o in loop_tests if o.status == PASSED)
    now_passing = sorted(
        o.test_id for o in outcomes if o.status == PASSED and known.match(o.test_id) is not None
    )

    print()
    for outcome in new if not verbose else failing:
        lines = outcome.detail.rstrip().splitlines()
        shown = lines if verbose else lines[-DETAIL_LINES:]
        print(f"===== {outcome.status.upper()}: {outcome.test_id} ({outcome.seconds:.1f} s)")
        if len(shown) < len(lines):
            print(f"    [... {len(lines) - len(shown)} lines]")
        print("\n".join(shown))
        print()
    by_group: dict[str, int] = defaultdict(int)
    for outcome in failing:
        entry = known.match(outcome.test_id)
        if entry is not None:
            by_group[entry.group or "(no group)"] += 1
    if by_group:
        print("Known failures by cause:")
        for group, count in by_group.items():
            print(f"  {count:5d}  {group}")
    if now_passing:
        print("Known failures that passed (remove them from known_failures.txt):")
        for test_id in now_passing:
            print(f"    {test_id}")
    excluded_modules = [r.name for r in reports if r.excluded_reason and not r.excluded]
    if excluded_modules:
        print(f"Excluded modules: {' '.join(excluded_modules)}")
    if loop_tests:
        share = 100.0 * loop_passed / len(loop_tests)
        print(
            f"Tests that ran on an ErlangEventLoop: {loop_passed} of {len(loop_tests)} passed "
            f"({share:.2f}%)"
        )
    print(
        f"{len(failing) - len(new)} known failures (known_failures.txt), "
        f"{excluded} excluded (excluded.txt); {seconds:.0f} s"
    )
    # The closing line: every failure, and how many of them are new (not in
    # known_failures.txt): those fail the run.
    print(
        f"{passed} passed, {len(failing)} failed ({len(failing) - len(new)} known, "
        f"{len(new)} new), {skipped} skipped"
    )
    sys.stdout.flush()
    return 1 if new else 0
