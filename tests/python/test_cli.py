"""``bin/erlang-python``'s command line (``erlang_python_cli``), run in
this node."""

from __future__ import annotations

import io
import os
import pathlib
import sys
import threading

import pytest

import erlang_python_cli


@pytest.fixture
def program_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Puts back what running a program changes in this node: ``__main__``
    (a script's module there would be run again by multiprocessing's
    spawn in the children of later tests), ``sys.argv`` and ``sys.path``."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    monkeypatch.setattr(sys, "argv", sys.argv)
    monkeypatch.setattr(sys, "path", list(sys.path))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_arguments_on_a_terminal_prints_the_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal())
    assert erlang_python_cli.main([]) == 2
    assert "usage: erlang-python" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected_argv"),
    [(["-", "a", "b"], ["-", "a", "b"]), ([], [""])],
)
def test_a_program_read_from_stdin(
    argv: list[str],
    expected_argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    program_state: None,
) -> None:
    program = "import sys\nprint(__name__, sys.argv)\nsys.exit(6)\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(program))
    assert erlang_python_cli.main(argv) == 6
    assert capsys.readouterr().out == f"__main__ {expected_argv}\n"


def test_code_and_its_exit_status(program_state: None) -> None:
    assert erlang_python_cli.main(["-c", "import sys; sys.exit(3)"]) == 3
    assert erlang_python_cli.main(["-c", "raise ValueError('boom')"]) == 1


def test_joined_option_values_as_python3_takes_them(program_state: None) -> None:
    assert erlang_python_cli.main(["-cimport sys; sys.exit(4)"]) == 4
    assert erlang_python_cli.main(["-merlang_python_conformance", "--help"]) == 0


def test_conformance_subcommand_runs_the_conformance_module(
    capsys: pytest.CaptureFixture[str], program_state: None
) -> None:
    assert erlang_python_cli.main(["conformance", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick" in out
    assert "erlang_python_conformance" in out


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["-X", "dev", "-c", "pass"], "-X options take effect as CPython starts"),
        (["-O", "script.py"], "unknown option -O"),
        (["-W"], "-W needs an argument"),
    ],
)
def test_interpreter_options_it_cannot_apply_are_refused(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not taken for a script's name ("can't open file '-X'").
    assert erlang_python_cli.main(argv) == 2
    assert reason in capsys.readouterr().err


def test_a_script_sees_argv_as_typed_and_its_file_absolute(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    program_state: None,
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        "print(sys.argv, __file__, sys.path[0])\n"
        "print(sys.modules['__main__'].__dict__ is globals())\n"
        "sys.exit(5)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert erlang_python_cli.main(["script.py", "a"]) == 5
    assert capsys.readouterr().out == f"['script.py', 'a'] {script} {tmp_path}\nTrue\n"


def test_a_script_from_a_pipe_runs(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    program_state: None,
) -> None:
    # `bin/erlang-python <(...)`: a FIFO, which is no regular file.
    fifo = tmp_path / "program"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("print('from a pipe')\n",))
    writer.start()
    try:
        assert erlang_python_cli.main([str(fifo)]) == 0
    finally:
        writer.join()
    assert capsys.readouterr().out == "from a pipe\n"


def test_a_symlinked_script_imports_beside_the_file_it_names(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    program_state: None,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "s22_sibling.py").write_text("NAME = 'sibling'\n")
    (real / "script.py").write_text("import s22_sibling\nprint(s22_sibling.NAME)\n")
    (tmp_path / "link.py").symlink_to(real / "script.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "s22_sibling", raising=False)
    assert erlang_python_cli.main(["link.py"]) == 0
    assert capsys.readouterr().out == "sibling\n"


@pytest.mark.parametrize(
    ("signum", "error"),
    [
        (2.0, TypeError),
        ("2", TypeError),
        (10**30, OverflowError),
        (0, ValueError),
        (65, ValueError),
    ],
)
def test_interrupt_main_checks_its_argument_as_python3(signum: object, error: type) -> None:
    with pytest.raises(error):
        erlang_python_cli._interrupt_main(signum)  # type: ignore[arg-type]
