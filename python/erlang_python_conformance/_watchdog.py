"""Runs unittest tests in-process, each in a thread of its own with a time
limit: a test that hangs is reported as timed out and abandoned, and the run
goes on. (A subprocess per test would start a BEAM per test.)"""

from __future__ import annotations

import ctypes
import resource
import sys
import threading
import time
import traceback
import unittest
from dataclasses import dataclass
from typing import Any

from ._environment import AsyncioState, LoopTracker

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
TIMEOUT = "timeout"
SKIPPED = "skipped"
# Counted as failed: a test marked expectedFailure that passed.
UNEXPECTED_SUCCESS = "unexpected success"
# Counted as failed: a known failure marked "[not run]" (it would hang the
# run or eat its memory until the timeout).
NOT_RUN = "not run"

FAILING = (FAILED, ERROR, TIMEOUT, UNEXPECTED_SUCCESS, NOT_RUN)


@dataclass
class Outcome:
    """What happened to one test."""

    test_id: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    # ErlangEventLoops the test created: 0 means it ran on mocks or on the
    # suite's virtual-time TestLoop only.
    loops: int = 0


class _OneTestResult(unittest.TestResult):
    """The result of one test run (each test gets a fresh one, so a test that
    is abandoned can never write into another's)."""

    def __init__(self) -> None:
        super().__init__()
        self.succeeded = False

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().addSuccess(test)
        self.succeeded = True

    def outcome(self, test_id: str) -> Outcome:
        if self.errors:
            return Outcome(test_id, ERROR, "\n".join(text for _, text in self.errors))
        if self.failures:
            return Outcome(test_id, FAILED, "\n".join(text for _, text in self.failures))
        if self.unexpectedSuccesses:
            return Outcome(test_id, UNEXPECTED_SUCCESS, "marked expectedFailure, but passed")
        if self.succeeded or self.expectedFailures:
            return Outcome(test_id, PASSED)
        if self.skipped:
            return Outcome(test_id, SKIPPED, "; ".join(reason for _, reason in self.skipped))
        return Outcome(test_id, ERROR, "the test reported no result")


class TestAbandoned(BaseException):
    """Raised inside the thread of a test that timed out, to end it."""


def _abandon(thread: threading.Thread) -> None:
    """Raises :class:`TestAbandoned` in ``thread`` at its next bytecode (a
    test spinning in Python, e.g. on a mocked selector, would otherwise spin
    and allocate for the rest of the run). A thread blocked in C with the GIL
    released gets it when it returns to Python."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(TestAbandoned)
        )


def _thread_stack(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame))


class WatchdogSuite(unittest.TestSuite):
    """A flat suite that runs class and module fixtures as unittest does, and
    each test in a thread of its own for at most ``timeout`` seconds.
    Outcomes go to :attr:`outcomes` (fixtures' errors included)."""

    def __init__(
        self,
        tests: list[unittest.TestCase],
        timeout: float,
        tracker: LoopTracker,
        trace: bool = False,
    ) -> None:
        super().__init__(tests)
        self._cleanup = False
        self.timeout = timeout
        self.tracker = tracker
        # Print each test as it ends, with its time and the process's peak RSS.
        self.trace = trace
        self.outcomes: list[Outcome] = []

    def run(self, result: Any, debug: bool = False) -> Any:
        """``unittest.TestSuite.run`` of Python 3.11, with ``test(result)``
        replaced by :meth:`_run_one`."""
        top_level = False
        if getattr(result, "_testRunEntered", False) is False:
            result._testRunEntered = top_level = True
        for test in self:
            if _is_not_suite(test):
                self._tearDownPreviousClass(test, result)  # type: ignore[attr-defined]
                self._handleModuleFixture(test, result)  # type: ignore[attr-defined]
                self._handleClassSetUp(test, result)  # type: ignore[attr-defined]
                result._previousTestClass = test.__class__
                if getattr(test.__class__, "_classSetupFailed", False) or getattr(
                    result, "_moduleSetUpFailed", False
                ):
                    continue
            self._run_one(test)
        if top_level:
            self._tearDownPreviousClass(None, result)  # type: ignore[attr-defined]
            self._handleModuleTearDown(result)  # type: ignore[attr-defined]
            result._testRunEntered = False
        return result

    def _run_one(self, test: Any) -> None:
        one = _OneTestResult()
        state = AsyncioState()
        loops = self.tracker.start_test()
        started = time.monotonic()
        thread = threading.Thread(
            target=test, args=(one,), name=f"conformance {test.id()}", daemon=True
        )
        with _ThreadFailures() as thread_failures:
            thread.start()
            thread.join(self.timeout)
        seconds = time.monotonic() - started
        if thread.is_alive():
            stack = _thread_stack(thread)
            outcome = Outcome(
                test.id(), TIMEOUT, f"no result after {self.timeout:g} s; the test was at:\n{stack}"
            )
            # End the abandoned test if it can be ended (and free its fds).
            _abandon(thread)
            loops.stop_all()
            thread.join(2.0)
        else:
            outcome = thread_failures.fail(one.outcome(test.id()))
        self.tracker.stop_test()
        # The policy object is replaced by every test that resets the policy;
        # anything else restored is worth a word in the trace.
        restored = [n for n in state.restore() if n != "asyncio.events._event_loop_policy"]
        outcome.seconds = seconds
        outcome.loops = loops.count
        self.outcomes.append(outcome)
        if self.trace:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print(
                f"  {outcome.status:<8} {seconds:6.2f}s {peak_mib:6d} MiB  {test.id()}"
                + (f"  (restored {', '.join(restored)})" if restored else ""),
                file=sys.stderr,
                flush=True,
            )


class _ThreadFailures:
    """Exceptions that end threads while a test runs (``threading.excepthook``).
    unittest never sees them: a test whose worker thread failed an assertion
    would pass. As regrtest with ``--fail-env-changed`` (CPython's CI), they
    fail the test. Tests that expect one catch it with their own hook
    (``support.catch_threading_exception``), which this one gives way to."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self._previous = threading.excepthook

    def __enter__(self) -> _ThreadFailures:
        threading.excepthook = self._hook
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._previous

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is TestAbandoned:
            return
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        self.failures.append(f"exception in thread {name!r}:\n{text}")

    def fail(self, outcome: Outcome) -> Outcome:
        """``outcome``, failed if a thread failed meanwhile."""
        if not self.failures:
            return outcome
        detail = "\n".join(self.failures)
        if outcome.status in FAILING:
            outcome.detail = f"{outcome.detail}\n{detail}"
            return outcome
        return Outcome(outcome.test_id, FAILED, detail)


def _is_not_suite(test: Any) -> bool:
    try:
        iter(test)
    except TypeError:
        return True
    return False


def fixture_outcomes(result: unittest.TestResult) -> list[Outcome]:
    """Errors of setUpModule/setUpClass/tearDown* as outcomes (their ids are
    unittest's descriptions, e.g. ``setUpClass (module.Class)``)."""
    outcomes = []
    for holder, text in result.errors + result.failures:
        outcomes.append(Outcome(holder.id(), ERROR, text))
    for holder, reason in result.skipped:
        outcomes.append(Outcome(holder.id(), SKIPPED, reason))
    return outcomes
