"""The two checked-in lists of the conformance run, ``tests/conformance/``:

- ``excluded.txt``: tests of another loop's internals (selector, proactor,
  Windows, ``BaseEventLoop``'s private state); they are not run.
- ``known_failures.txt``: tests that fail on ErlangEventLoop, each with the
  reason; they do not fail the run, and the run says when one passes again.

One entry a line: a test id relative to ``test.test_asyncio`` (a module, a
class or a test; ``fnmatch`` wildcards allowed), blanks, then the reason.
Lines starting with ``#`` are comments; a ``## heading`` names the group
of the entries under it (the cause they share), for the run's summary.

A reason may start with a version mark, ``[py`` then comma-separated
comparisons ``]``: the entry applies only on the CPython versions that
satisfy all of them, and on the others it is as if the line were not
there (a test it names that fails there is new; one that passes is not
reported)::

    test_events.PolicyTests.test_get_event_loop  [py>=3.12] why it fails there
    test_x.Y.test_z  [py>=3.12,<3.14] [not run] why
    test_x.Y.test_w  [py==3.11] why

Operators are ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``; a version
compares with as many parts of the running one as it has (``==3.12`` is any
3.12.x, ``<3.12.2`` is 3.12.0 and 3.12.1 and everything older).
"""

from __future__ import annotations

import fnmatch
import operator
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Version = tuple[int, ...]

# The running interpreter's version, the default everywhere below.
RUNNING: Version = tuple(sys.version_info[:3])

_MARK = re.compile(r"\[py(?P<spec>[^\]]*)\]\s*")
_CLAUSE = re.compile(r"(?P<op>==|!=|<=|>=|<|>)\s*(?P<version>\d+(?:\.\d+){0,2})")
# Something that looks like a version mark anywhere but at the start.
_STRAY_MARK = re.compile(r"\[py\s*[<>=!]")
_OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class VersionSpec:
    """The comparisons of one ``[py...]`` mark, all of which must hold."""

    text: str
    clauses: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        """``">=3.12,<3.14"`` -> its clauses; ``ValueError`` if malformed."""
        clauses = []
        for part in text.split(","):
            found = _CLAUSE.fullmatch(part.strip())
            if found is None:
                raise ValueError(f"bad version comparison {part.strip()!r} in [py{text}]")
            version = tuple(int(number) for number in found["version"].split("."))
            clauses.append((found["op"], version))
        return cls(text, tuple(clauses))

    def holds(self, version: Version) -> bool:
        """True when ``version`` satisfies every comparison, each on as many
        parts of ``version`` as the comparison names."""
        return all(
            _OPERATORS[op](tuple(version[: len(bound)]), bound) for op, bound in self.clauses
        )


@dataclass(frozen=True)
class Entry:
    """One line of a list: what it matches and why it is there."""

    pattern: str
    reason: str
    line: int
    # The ``## heading`` above the entry ("" before the first one).
    group: str = ""
    # The versions it applies to (None: all of them).
    versions: VersionSpec | None = None

    def matches(self, test_id: str) -> bool:
        """True for the test itself, anything under it, or a wildcard match."""
        pattern = self.pattern
        return (
            test_id == pattern
            or test_id.startswith(pattern + ".")
            or fnmatch.fnmatchcase(test_id, pattern)
        )

    def applies_to(self, version: Version) -> bool:
        return self.versions is None or self.versions.holds(version)


def parse_reason(reason: str) -> tuple[VersionSpec | None, str]:
    """Splits a leading ``[py...]`` mark off ``reason``. A mark elsewhere
    would silently make the entry apply everywhere, so it is an error."""
    versions = None
    found = _MARK.match(reason)
    if found is not None:
        versions = VersionSpec.parse(found["spec"])
        reason = reason[found.end() :]
    if _STRAY_MARK.search(reason):
        raise ValueError("a [py...] version mark must come first in the reason")
    return versions, reason.strip()


class TestList:
    """The entries of one list file that apply to one CPython version, in
    file order (``other_versions``: those that apply elsewhere only)."""

    def __init__(
        self,
        entries: list[Entry],
        path: Path | None = None,
        other_versions: Sequence[Entry] = (),
    ) -> None:
        self.entries = entries
        self.path = path
        self.other_versions = list(other_versions)

    @classmethod
    def load(cls, path: Path, version: Version = RUNNING) -> TestList:
        """Reads ``path``; a missing file is an empty list, an entry without a
        reason or with a malformed version mark is an error (every line must
        say why, and for which versions)."""
        if not path.exists():
            return cls([], path)
        return cls.parse(path.read_text(encoding="utf-8"), version, path)

    @classmethod
    def parse(cls, text: str, version: Version = RUNNING, path: Path | None = None) -> TestList:
        """The entries of ``text`` (a list file's content) for ``version``."""
        applying: list[Entry] = []
        elsewhere: list[Entry] = []
        group = ""
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line.startswith("## "):
                group = line[3:].strip()
                continue
            if not line or line.startswith("#"):
                continue
            pattern, _, rest = line.partition(" ")
            try:
                versions, reason = parse_reason(rest.strip())
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {pattern!r}: {error}") from None
            if not reason:
                raise ValueError(f"{path}:{number}: {pattern!r} has no reason")
            entry = Entry(pattern, reason, number, group, versions)
            (applying if entry.applies_to(version) else elsewhere).append(entry)
        return cls(applying, path, elsewhere)

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
