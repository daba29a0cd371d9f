"""What ``bin/erlang-python`` runs inside the node: a script, ``-m module``
or ``-c code``, with ``sys.argv`` set as CPython's own command line would.
Returns the exit status instead of exiting (the VM owns the process)."""

from __future__ import annotations

import _thread
import atexit
import builtins
import codecs
import errno
import io
import operator
import os
import runpy
import signal
import sys
import threading
import traceback
import types
import warnings
import zipfile
from importlib.util import MAGIC_NUMBER

import _erlang

USAGE = (
    "usage: erlang-python [-W ARG] (SCRIPT | - | -m MODULE | -c CODE | conformance) [ARG ...]\n"
    "  -       read the program from stdin (as with no arguments when stdin is not a terminal)\n"
    "  -W ARG  warning control, as python3's (also PYTHONWARNINGS)\n"
    "  conformance [--quick] [-v] [TEST ...]  CPython's asyncio tests on ErlangEventLoop"
)

# What erl's launcher sets for the node, put back as the user's shell had
# them (see `_restore_environment`).
LAUNCHER_VARIABLES = ("PATH", "BINDIR", "ROOTDIR", "EMU", "PROGNAME")

# Subcommands: a word for a module of ours that `-m` also runs.
SUBCOMMANDS = {"conformance": "erlang_python_conformance"}


# The thread running the program, while it runs: Ctrl-C raises
# KeyboardInterrupt there (see `interrupt`).
_program_thread: int | None = None
_program_lock = threading.Lock()


def main(argv: list[str | bytes], *, exiting: bool = False) -> int:
    """Runs the command line ``argv`` (an argument that is not UTF-8 comes
    as its bytes) and returns the exit status. ``exiting``: the node halts
    next (``bin/erlang-python``), so first do what python3 does before it
    exits (see ``_wait_for_threads``)."""
    _utf8_stdio()
    _restore_environment()
    # This thread plays python3's main thread: the threads the program
    # starts are not daemons (a thread's default is its creator's flag, and
    # a thread Python did not start, as this one, is a daemon to threading).
    this = threading.current_thread()
    daemonic = this.daemon
    this._daemonic = False  # type: ignore[attr-defined]
    global _program_thread
    interrupt_main = _thread.interrupt_main
    node_main = sys.modules.get("__main__")
    try:
        with _program_lock:
            _program_thread = threading.get_ident()
        _thread.interrupt_main = _interrupt_main
        try:
            status = _run([arg if isinstance(arg, str) else os.fsdecode(arg) for arg in argv])
            # Still the program's thread: a Ctrl-C while its threads are
            # joined or its atexit handlers run is raised there, as python3's.
            if exiting:
                _wait_for_threads()
                _finalize(node_main)
        finally:
            _thread.interrupt_main = interrupt_main
            with _program_lock:
                _program_thread = None
        return status
    finally:
        this._daemonic = daemonic  # type: ignore[attr-defined]
        # Python is never finalised in the VM: flush what the program wrote.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not hide the status
                pass


def interrupt() -> bool:
    """Ctrl-C of ``bin/erlang-python``: raises KeyboardInterrupt in the
    program's thread, as python3's default SIGINT handler raises it in its
    main thread, at the thread's next bytecode; an ErlangEventLoop that
    thread waits in is woken for it (by ``interrupt_thread``). False when no
    program runs (the run then ends at once)."""
    with _program_lock:
        ident = _program_thread
        return ident is not None and _erlang.interrupt_thread(ident)


def _interrupt_main(signum: int = signal.SIGINT, /) -> None:
    """``_thread.interrupt_main`` while a program runs: the program's
    thread plays CPython's main thread, so SIGINT raises KeyboardInterrupt
    there, as Ctrl-C does (``interrupt``). Another valid signal number has
    no Python handler (``signal.signal`` works only on CPython's main
    thread, which no program code runs on), and python3 then does nothing
    either. Arguments are checked as python3's are."""
    # Its errors for what is not an int (TypeError) or not a C long.
    number = operator.index(signum)
    if not -(2**63) <= number < 2**63:
        raise OverflowError("Python int too large to convert to C long")
    if not 0 < number < signal.NSIG:
        raise ValueError("signal number out of range")
    if number == signal.SIGINT:
        interrupt()


def _restore_environment() -> None:
    """Gives the program (and its children) the environment
    ``bin/erlang-python`` was started with, as python3 would: without the
    variables erl's launcher sets (BINDIR, ROOTDIR, EMU, PROGNAME), its
    PATH prefix (erts' bin directories, whose ``erl`` or ``start`` a child
    would run) and the script's own bookkeeping (``ERLANG_PYTHON_VENV``
    stays: it names the venv the node runs). The script saved the
    originals; a run without it (``main`` called in a node) changes
    nothing."""
    saved = os.environ.pop("ERLANG_PYTHON_SAVED", None)
    if saved is None:
        return
    present = saved.split()
    for name in LAUNCHER_VARIABLES:
        value = os.environ.pop(f"ERLANG_PYTHON_SAVED_{name}", None)
        if name in present and value is not None:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    os.environ.pop("ERLANG_PYTHON_WRAPPER", None)


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
    argv, refused = _interpreter_options(argv)
    if refused is not None:
        print(f"erlang-python: {refused}\n{USAGE}", file=sys.stderr)
        return 2
    if argv[:1] == ["--"]:
        argv = argv[1:]
    # python3 reads its program from a stdin that is not a terminal, with
    # an empty sys.argv[0].
    from_piped_stdin = not argv and not _stdin_is_terminal()
    if from_piped_stdin:
        argv = ["-"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2 if not argv else 0
    mode, rest = argv[0], argv[1:]
    if mode in SUBCOMMANDS:
        mode, rest = "-m", [SUBCOMMANDS[mode], *rest]
    if mode in ("-m", "-c") and not rest:
        print(USAGE, file=sys.stderr)
        return 2
    if mode not in ("-m", "-c", "-") and not os.path.exists(mode):
        # python3's own words and status for a script it cannot open.
        error = os.strerror(errno.ENOENT)
        print(
            f"erlang-python: can't open file {os.path.abspath(mode)!r}: "
            f"[Errno {errno.ENOENT}] {error}",
            file=sys.stderr,
        )
        return 2
    try:
        if mode == "-":
            sys.argv = [""] if from_piped_stdin else ["-", *rest]
            sys.path.insert(0, os.getcwd())
            _run_source(sys.stdin.read(), "<stdin>")
        elif mode == "-m":
            sys.argv = [rest[0], *rest[1:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        elif mode == "-c":
            sys.argv = ["-c", *rest[1:]]
            sys.path.insert(0, os.getcwd())
            _run_source(rest[0], "<string>")
        else:
            sys.argv = [mode, *rest]
            _run_script(mode)
    except SystemExit as exit_:
        return _exit_status(exit_.code)
    except BaseException as error:  # noqa: BLE001 - report anything the program raised
        # As python3 reports it: through sys.excepthook, from the program's
        # own frames (this module's and runpy's left out).
        error = error.with_traceback(_program_frames(error.__traceback__))
        sys.excepthook(type(error), error, error.__traceback__)
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    return 0


def _run_script(typed: str) -> None:
    """Runs the script python3 would run for ``typed``: ``sys.argv[0]`` as
    typed, ``__file__`` and the code's file name absolute (as python3 gives
    them since 3.9), the directory of the file it names (symlinks resolved)
    first on ``sys.path``. A directory or a zip file (run by its
    ``__main__.py``) and compiled code go to ``runpy``, which gives
    ``sys.argv[0]`` absolute. Any other file is read once, so that a pipe
    (``<(...)``, a FIFO) runs too."""
    path = os.path.abspath(typed)
    if os.path.isdir(path):
        # runpy puts the directory first on sys.path.
        runpy.run_path(path, run_name="__main__")
        return
    with io.open_code(path) as script:
        source = script.read()
    # runpy opens the file again: a pipe's code is compiled from what was
    # read (a zip or compiled code there is a SyntaxError, as in python3).
    regular = os.path.isfile(path)
    if regular and zipfile.is_zipfile(io.BytesIO(source)):
        runpy.run_path(path, run_name="__main__")
        return
    sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
    if regular and source[:4] == MAGIC_NUMBER:
        runpy.run_path(path, run_name="__main__")
    else:
        _run_source(source, path, __file__=path, __cached__=None)


def _run_source(source: str | bytes, filename: str, **module_globals: object) -> None:
    """Runs a program given as text, as python3 runs a script, ``-c`` or
    stdin: in a module of its own in sys.modules, as python3's ``__main__`` (pickle,
    enum and dataclasses look names up there)."""
    main_module = types.ModuleType("__main__")
    main_module.__dict__["__builtins__"] = builtins
    main_module.__dict__.update(module_globals)
    sys.modules["__main__"] = main_module
    exec(compile(source, filename, "exec"), main_module.__dict__)


def _stdin_is_terminal() -> bool:
    """Is stdin a terminal (or absent)? python3 then starts its REPL, which
    the node does not have: the usage is printed instead."""
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):
        return True


def _interpreter_options(argv: list[str]) -> tuple[list[str], str | None]:
    """Takes python3's interpreter options off the front of ``argv``: ``-W``
    applies at once (the interpreter is already running, as after
    ``PYTHONWARNINGS``); the others (``-X``, ``-O``, ``-u``, ...) act as
    CPython starts, long before the program does here, and are refused
    with a reason rather than taken for a script's name. Returns the rest
    of ``argv`` and the refusal, if any."""
    while argv and argv[0].startswith("-") and argv[0] not in ("-", "--", "-m", "-c", "-h"):
        option, argv = argv[0], argv[1:]
        if option == "--help":
            return [option, *argv], None
        if option[:2] in ("-m", "-c"):
            # `-mpytest`, `-cCODE`: python3's joined forms.
            return [option[:2], option[2:], *argv], None
        if option.startswith("-W"):
            value = option[2:]
            if not value:
                if not argv:
                    return [], "-W needs an argument"
                value, argv = argv[0], argv[1:]
            sys.warnoptions.append(value)
            # What CPython does with -W at start-up (an invalid one is
            # reported and ignored, as there).
            warnings._processoptions([value])  # type: ignore[attr-defined]
            continue
        if option.startswith("-X"):
            return argv, (
                "-X options take effect as CPython starts, with the node: use "
                "their PYTHON* environment variables (PYTHONDEVMODE, PYTHONTRACEMALLOC, ...)"
            )
        return argv, f"unknown option {option}"
    return argv, None


def _program_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading frames of this module and of runpy, and
    without its last ones of this module (a KeyboardInterrupt the program
    raised in itself by ``_thread.interrupt_main`` comes in ``interrupt``)."""
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in (__name__, "runpy"):
        tb = tb.tb_next
    last_of_program = None
    frame = tb
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__") != __name__:
            last_of_program = frame
        frame = frame.tb_next
    if last_of_program is not None:
        last_of_program.tb_next = None
    return tb


def _exit_status(code: object) -> int:
    """The status python3 exits with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        # A C long, truncated to the byte the OS keeps; beyond a long, -1.
        return int(code) & 0xFF if -(2**63) <= code < 2**63 else 0xFF
    print(code, file=sys.stderr)
    return 1


def _finalize(node_main: object) -> None:
    """What python3 does after joining its threads, as it finalises: the
    ``atexit`` handlers (``logging.shutdown`` flushes the log handlers
    there), then the program's ``__main__`` leaves ``sys.modules`` and is
    collected, its objects' finalizers seeing its names as they were, which
    reports what it left behind (a task's exception never retrieved, a
    coroutine never awaited). ``node_main``: the node's own ``__main__``,
    which stays (``-m`` puts it back)."""
    atexit._run_exitfuncs()
    if sys.modules.get("__main__") is not node_main:
        sys.modules.pop("__main__", None)
    # Collected in code of a file named "sys": python3 reports what goes
    # then at "sys:1" (no frame runs as it finalises), not at a line of ours.
    exec(compile("__import__('gc').collect()", "sys", "exec"), {})


def _wait_for_threads() -> None:
    """What python3 does before it exits (``threading._shutdown``): the
    hooks of ``threading._register_atexit`` (an executor's workers end
    there), then every thread that is not a daemon is joined. Not
    `_shutdown` itself: it ends CPython's main thread, not this one.
    A Ctrl-C meanwhile ends the waiting, reported as python3 reports it,
    and the run goes on to its atexit handlers."""
    try:
        for hook in reversed(getattr(threading, "_threading_atexits", [])):
            try:
                hook()
            except Exception:  # noqa: BLE001 - as CPython: reported, the rest still run
                traceback.print_exc()
        current = threading.current_thread()
        for thread in threading.enumerate():
            if thread is current or thread.daemon or thread is threading.main_thread():
                continue
            # Short joins: a KeyboardInterrupt is raised between two, not
            # once the thread ends (a join waits in C).
            while thread.is_alive():
                thread.join(0.05)
    except KeyboardInterrupt:
        print("Exception ignored in: <module 'threading'>", file=sys.stderr)
        traceback.print_exc()
