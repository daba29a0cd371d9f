"""Loads the modules of ``test.test_asyncio``, runs what is not excluded on
ErlangEventLoop and sorts the outcomes against the checked-in lists."""

from __future__ import annotations

import importlib
import os
import pkgutil
import time
import traceback
import unittest
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ._environment import LoopTracker
from ._lists import Entry, TestList
from ._variants import add_variants
from ._watchdog import (
    ERROR,
    FAILING,
    NOT_RUN,
    PASSED,
    SKIPPED,
    Outcome,
    WatchdogSuite,
    fixture_outcomes,
)

# A known failure whose reason starts with this is counted as failed without
# running it.
NOT_RUN_MARK = "[not run]"

PACKAGE = "test.test_asyncio"


@dataclass
class ModuleReport:
    """The outcomes of one module of the suite."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    excluded: int = 0
    # The reason when the whole module is in excluded.txt.
    excluded_reason: str = ""
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status in statuses)

    def loop_tests(self) -> list[Outcome]:
        """The tests that created an ErlangEventLoop and were not skipped."""
        return [o for o in self.outcomes if o.loops and o.status != SKIPPED]


def all_modules() -> list[str]:
    """The test modules of ``test.test_asyncio``, sorted."""
    package = importlib.import_module(PACKAGE)
    return sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("test_")
    )


def relative_id(test_id: str) -> str:
    """``test.test_asyncio.test_events.X.test_y`` -> ``test_events.X.test_y``."""
    return test_id.removeprefix(PACKAGE + ".")


def _flatten(suite: Iterable[object]) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _flatten(test)
        else:
            assert isinstance(test, unittest.TestCase)
            yield test


def load_module(name: str) -> list[unittest.TestCase]:
    """The tests of one module, with our loop's variants added."""
    module = importlib.import_module(f"{PACKAGE}.{name}")
    add_variants(module)
    return list(_flatten(unittest.TestLoader().loadTestsFromModule(module)))


def run_module(
    name: str,
    selection: list[Entry],
    excluded: TestList,
    known: TestList,
    timeout: float,
    tracker: LoopTracker,
    trace: bool = False,
) -> ModuleReport:
    """Runs the selected tests of module ``name`` (all when ``selection`` is
    empty) that ``excluded`` does not list; the known failures marked
    ``[not run]`` are counted as failed without running."""
    report = ModuleReport(name)
    started = time.monotonic()
    whole = excluded.whole_module(name)
    try:
        tests = load_module(name)
    except unittest.SkipTest as skip:
        if whole is None:
            report.outcomes.append(Outcome(name, SKIPPED, str(skip)))
        else:
            report.excluded_reason = whole.reason
        return report
    except Exception:  # noqa: BLE001 - a module that cannot load is an error
        report.outcomes.append(Outcome(name, ERROR, traceback.format_exc()))
        return report
    to_run = []
    not_run = []
    for test in tests:
        test_id = relative_id(test.id())
        if selection and not any(entry.matches(test_id) for entry in selection):
            continue
        if excluded.match(test_id) is not None:
            report.excluded += 1
            continue
        entry = known.match(test_id)
        if entry is not None and entry.reason.startswith(NOT_RUN_MARK):
            not_run.append(Outcome(test_id, NOT_RUN, entry.reason))
        else:
            to_run.append(test)
    if whole is not None:
        report.excluded_reason = whole.reason
    if to_run:
        suite = WatchdogSuite(to_run, timeout, tracker, trace)
        fixtures = unittest.TestResult()
        suite.run(fixtures)
        report.outcomes = suite.outcomes + fixture_outcomes(fixtures)
    report.outcomes += not_run
    for outcome in report.outcomes:
        outcome.test_id = relative_id(outcome.test_id)
    report.seconds = time.monotonic() - started
    return report


def list_module(name: str, selection: list[Entry], excluded: TestList) -> list[str]:
    """The ids of the tests :func:`run_module` would run."""
    try:
        tests = load_module(name)
    except unittest.SkipTest:
        return []
    ids = [relative_id(test.id()) for test in tests]
    return [
        test_id
        for test_id in ids
        if (not selection or any(entry.matches(test_id) for entry in selection))
        and excluded.match(test_id) is None
    ]


def lists_dir() -> str:
    """``tests/conformance`` of the checkout this package lives in."""
    here = os.path.dirname(os.path.realpath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "tests", "conformance")


__all__ = [
    "FAILING",
    "PASSED",
    "ModuleReport",
    "all_modules",
    "list_module",
    "lists_dir",
    "run_module",
]
