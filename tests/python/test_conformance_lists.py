"""The conformance run's list files (``erlang_python_conformance._lists``):
their syntax, the ``[py...]`` version marks, and how the report treats an
entry for another CPython version."""

from __future__ import annotations

from pathlib import Path

import pytest

from erlang_python_conformance import _cli
from erlang_python_conformance._lists import TestList as ListFile  # not a test class
from erlang_python_conformance._lists import VersionSpec
from erlang_python_conformance._runner import ModuleReport, lists_dir
from erlang_python_conformance._watchdog import FAILED, PASSED, Outcome

LIST = """\
# a comment
## Cause one
test_a.T.test_all  fails everywhere
test_a.T.test_new  [py>=3.12] fails since 3.12
test_a.T.test_old  [py<3.12]   fails before 3.12
## Cause two
test_b  [py>=3.12,<3.13] [not run] hangs on 3.12 only
test_b.T.test_exact  [py==3.12.1] fails on 3.12.1 only
test_b.T.test_not  [py!=3.13] fails except on 3.13
"""

V311 = (3, 11, 7)
V312 = (3, 12, 1)
V3122 = (3, 12, 2)
V313 = (3, 13, 0)


def patterns(version: tuple[int, ...]) -> list[str]:
    return [entry.pattern for entry in ListFile.parse(LIST, version).entries]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (V311, ["test_a.T.test_all", "test_a.T.test_old", "test_b.T.test_not"]),
        (
            V312,
            [
                "test_a.T.test_all",
                "test_a.T.test_new",
                "test_b",
                "test_b.T.test_exact",
                "test_b.T.test_not",
            ],
        ),
        (V3122, ["test_a.T.test_all", "test_a.T.test_new", "test_b", "test_b.T.test_not"]),
        (V313, ["test_a.T.test_all", "test_a.T.test_new"]),
    ],
)
def test_an_entry_applies_only_on_the_versions_of_its_mark(
    version: tuple[int, ...], expected: list[str]
) -> None:
    assert patterns(version) == expected


def test_the_mark_leaves_the_reason_and_the_group() -> None:
    listed = ListFile.parse(LIST, V312)
    new = listed.match("test_a.T.test_new")
    assert new is not None
    assert new.reason == "fails since 3.12"
    assert new.group == "Cause one"
    assert new.versions == VersionSpec(">=3.12", ((">=", (3, 12)),))
    hung = listed.match("test_b.T.test_anything")
    assert hung is not None
    assert hung.reason == "[not run] hangs on 3.12 only"
    assert listed.whole_module("test_b") is hung
    assert ListFile.parse(LIST, V313).whole_module("test_b") is None


def test_entries_for_other_versions_are_kept_apart() -> None:
    listed = ListFile.parse(LIST, V313)
    assert [entry.pattern for entry in listed.other_versions] == [
        "test_a.T.test_old",
        "test_b",
        "test_b.T.test_exact",
        "test_b.T.test_not",
    ]
    assert listed.match("test_a.T.test_old") is None


@pytest.mark.parametrize(
    ("spec", "version", "holds"),
    [
        ("==3.12", (3, 12, 0), True),
        ("==3.12", (3, 12, 9), True),
        ("==3.12", (3, 13, 0), False),
        ("<3.12.2", (3, 12, 1), True),
        ("<3.12.2", (3, 12, 2), False),
        ("<=3.12", (3, 12, 9), True),
        (">3.12", (3, 12, 9), False),
        (">3.12", (3, 13, 0), True),
        ("== 3", (3, 11, 7), True),
        (">=3.11, <3.12", (3, 11, 7), True),
        (">=3.11, <3.12", (3, 12, 0), False),
    ],
)
def test_a_version_compares_on_as_many_parts_as_it_names(
    spec: str, version: tuple[int, ...], holds: bool
) -> None:
    assert VersionSpec.parse(spec).holds(version) is holds


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("test_a.T.test_x  [py>=3.x] why", "bad version comparison '>=3.x'"),
        ("test_a.T.test_x  [py3.12] why", "bad version comparison '3.12'"),
        ("test_a.T.test_x  [py>=3.12,] why", "bad version comparison ''"),
        ("test_a.T.test_x  [not run] [py>=3.12] why", "must come first"),
        ("test_a.T.test_x  [py>=3.12]", "has no reason"),
        ("test_a.T.test_x", "has no reason"),
    ],
)
def test_a_malformed_line_is_an_error_naming_it(line: str, message: str) -> None:
    with pytest.raises(ValueError, match="list.txt:2: 'test_a.T.test_x'") as raised:
        ListFile.parse("# header\n" + line + "\n", V312, Path("list.txt"))
    assert message in str(raised.value)


def test_the_checked_in_lists_parse_on_every_version() -> None:
    for name in ("excluded.txt", "known_failures.txt"):
        for version in (V311, V312, V313):
            ListFile.load(Path(lists_dir(), name), version)


def _summary(known: ListFile, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    report = ModuleReport("test_a")
    report.outcomes = [
        Outcome("test_a.T.test_all", FAILED),
        Outcome("test_a.T.test_new", PASSED),
        Outcome("test_a.T.test_old", PASSED),
    ]
    status = _cli._print_summary([report], known, 0.0, verbose=False)
    return status, capsys.readouterr().out


def test_a_passing_test_is_reported_only_where_its_entry_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out = _summary(ListFile.parse(LIST, V313), capsys)
    assert status == 0
    passed_again = out.split("Known failures that passed", 1)[1].splitlines()[1:]
    assert passed_again[0].strip() == "test_a.T.test_new"
    assert "test_a.T.test_old" not in out

    status, out = _summary(ListFile.parse(LIST, V311), capsys)
    assert "test_a.T.test_new" not in out
    assert "    test_a.T.test_old" in out


def test_a_failure_whose_entry_is_for_another_version_is_new(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = ModuleReport("test_a")
    report.outcomes = [Outcome("test_a.T.test_new", FAILED, "Traceback: boom")]
    assert _cli._print_summary([report], ListFile.parse(LIST, V311), 0.0, verbose=False) == 1
    assert "(0 known, 1 new)" in capsys.readouterr().out
    assert _cli._print_summary([report], ListFile.parse(LIST, V312), 0.0, verbose=False) == 0
    assert "(1 known, 0 new)" in capsys.readouterr().out
