"""The two checked-in lists of the conformance run, ``tests/conformance/``:

- ``excluded.txt``: tests of another loop's internals (selector, proactor,
  Windows, ``BaseEventLoop``'s private state); they are not run.
- ``known_failures.txt``: tests that fail on ErlangEventLoop, each with the
  reason; they do not fail the run, and the run says when one passes again.

One entry a line: a test id relative to ``test.test_asyncio`` (a module, a
class or a test; ``fnmatch`` wildcards allowed), blanks, then the reason.
Lines starting with ``#`` are comments; a ``## heading`` names the group
of the entries under it (the cause they share), for the run's summary.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One line of a list: what it matches and why it is there."""

    pattern: str
    reason: str
    line: int
    # The ``## heading`` above the entry ("" before the first one).
    group: str = ""

    def matches(self, test_id: str) -> bool:
        """True for the test itself, anything under it, or a wildcard match."""
        pattern = self.pattern
        return (
            test_id == pattern
            or test_id.startswith(pattern + ".")
            or fnmatch.fnmatchcase(test_id, pattern)
        )


class TestList:
    """The entries of one list file, in file order."""

    def __init__(self, entries: list[Entry], path: Path | None = None) -> None:
        self.entries = entries
        self.path = path

    @classmethod
    def load(cls, path: Path) -> TestList:
        """Reads ``path``; a missing file is an empty list, an entry without a
        reason is an error (every line must say why)."""
        if not path.exists():
            return cls([], path)
        entries = []
        group = ""
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if line.startswith("## "):
                group = line[3:].strip()
                continue
            if not line or line.startswith("#"):
                continue
            pattern, _, reason = line.partition(" ")
            reason = reason.strip()
            if not reason:
                raise ValueError(f"{path}:{number}: {pattern!r} has no reason")
            entries.append(Entry(pattern, reason, number, group))
        return cls(entries, path)

    def match(self, test_id: str) -> Entry | None:
        """The first entry that matches ``test_id``, if any."""
        for entry in self.entries:
            if entry.matches(test_id):
                return entry
        return None

    def whole_module(self, module: str) -> Entry | None:
        """The entry that names all of ``module``, if any."""
        for entry in self.entries:
            if entry.pattern == module:
                return entry
        return None
