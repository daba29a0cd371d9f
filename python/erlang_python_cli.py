"""What ``bin/erlang-python`` runs inside the node: a script, ``-m module``
or ``-c code``, with ``sys.argv`` set as CPython's own command line would.
Returns the exit status instead of exiting (the VM owns the process)."""

from __future__ import annotations

import codecs
import io
import os
import runpy
import sys
import traceback

USAGE = (
    "usage: erlang-python (SCRIPT | -m MODULE | -c CODE | conformance) [ARG ...]\n"
    "  conformance [--quick] [-v] [TEST ...]  CPython's asyncio tests on ErlangEventLoop"
)

# Subcommands: a word for a module of ours that `-m` also runs.
SUBCOMMANDS = {"conformance": "erlang_python_conformance"}


def main(argv: list[str]) -> int:
    _utf8_stdio()
    try:
        return _run(argv)
    finally:
        # Python is never finalised in the VM: flush what the program wrote.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not hide the status
                pass


def _utf8_stdio() -> None:
    """Under the C locale CPython runs in UTF-8 mode (PEP 538, 540); the
    embedded interpreter keeps ASCII stdio, where any non-ASCII text raises
    UnicodeEncodeError. Give the program the stdio ``python3`` would."""
    for name, errors in (
        ("stdin", "surrogateescape"),
        ("stdout", "surrogateescape"),
        ("stderr", "backslashreplace"),
    ):
        stream = getattr(sys, name, None)
        if not isinstance(stream, io.TextIOWrapper):
            continue
        if codecs.lookup(stream.encoding).name == "ascii":
            stream.reconfigure(encoding="utf-8", errors=errors)


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2 if not argv else 0
    mode, rest = argv[0], argv[1:]
    if mode in SUBCOMMANDS:
        mode, rest = "-m", [SUBCOMMANDS[mode], *rest]
    try:
        if mode == "-m":
            if not rest:
                print(USAGE, file=sys.stderr)
                return 2
            sys.argv = [rest[0], *rest[1:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        elif mode == "-c":
            if not rest:
                print(USAGE, file=sys.stderr)
                return 2
            sys.argv = ["-c", *rest[1:]]
            sys.path.insert(0, os.getcwd())
            exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = [mode, *rest]
            sys.path.insert(0, os.path.dirname(os.path.abspath(mode)))
            runpy.run_path(mode, run_name="__main__")
    except SystemExit as exit_:
        return _exit_status(exit_.code)
    except BaseException:  # noqa: BLE001 - report anything the program raised
        traceback.print_exc()
        return 1
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
