"""The embedded interpreter seen from Python: run by ``bin/erlang-python -m
pytest``, so every test here runs inside a BEAM node."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import erlang
import pytest

EXTENSION_MODULES = ["_asyncio", "_ssl", "math", "_ctypes", "_socket", "select"]


def _venv_python(code: str) -> str:
    """Output of ``code`` run by the venv's python: the interpreter the
    project was built for (``python3`` on PATH, or the one ``PYTHON=``
    named, which the venv was made from)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_runs_inside_the_vm() -> None:
    # Only the embedding provides `_erlang`; a plain python3 cannot import it.
    assert "_erlang" in sys.modules
    assert erlang.call is sys.modules["_erlang"].call


def test_interpreter_is_the_one_built_for() -> None:
    # Not Debian's libpython picked by its soname (LESSONS 7a).
    expected = _venv_python("import sys; print(sys.version.split()[0])")
    assert sys.version.split()[0] == expected
    assert sys.base_prefix == _venv_python("import sys; print(sys.base_prefix)")


@pytest.mark.parametrize("name", EXTENSION_MODULES)
def test_extension_module_loads(name: str) -> None:
    # These fail with "undefined symbol" unless libpython is global (LESSONS 1).
    module: ModuleType = importlib.import_module(name)
    assert module.__name__ == name


def test_extension_modules_work() -> None:
    import ctypes
    import math
    import ssl

    assert math.isclose(math.cos(0.0), 1.0)
    assert ctypes.c_int(42).value == 42
    assert ssl.OPENSSL_VERSION


def test_python_code_runs_off_the_main_thread() -> None:
    # CPython's "main thread" is the one that initialised it (LESSONS 5);
    # calls from the node run on threads of the pool, never on that one.
    assert threading.main_thread().is_alive()
    assert threading.main_thread().ident != threading.get_ident()


def test_threads_run_python() -> None:
    results: list[int] = []

    def work(n: int) -> None:
        results.append(sum(range(n)))

    threads = [threading.Thread(target=work, args=(1000,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [499500] * 4


def test_no_python_signal_handlers() -> None:
    # Initialised with signal handlers off: the BEAM owns signals (LESSONS 2).
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler


def _ignored_by(pid: int, signum: int) -> bool:
    """Whether process ``pid`` ignores ``signum`` (its ``SigIgn`` mask)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


def test_python_start_up_left_sigxfsz_as_the_vm_had_it() -> None:
    # CPython started with its signal handlers on ignores SIGXFSZ for the
    # whole process, the VM's threads included (LESSONS 2); its SIGINT
    # handler alone would not show it (start-up gives SIGINT back). The VM
    # does not touch SIGXFSZ: it keeps what it inherited from its parent.
    assert _ignored_by(os.getpid(), signal.SIGXFSZ) == _ignored_by(os.getppid(), signal.SIGXFSZ)


def test_sys_argv_exists() -> None:
    assert isinstance(sys.argv, list)
    assert sys.argv
    assert all(isinstance(arg, str) for arg in sys.argv)


def test_sys_executable_is_a_python_interpreter() -> None:
    # Inside the VM sys.executable must not be beam.smp (LESSONS 7d').
    assert "beam" not in sys.executable
    done = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == sys.version.split()[0]


def test_subprocess_of_sys_executable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "print(1)"], capture_output=True, check=True, timeout=60
    )
    assert done.stdout == b"1\n"


def test_erlang_classes_exist() -> None:
    for cls in (erlang.Pid, erlang.Ref, erlang.OpaqueTerm):
        assert isinstance(cls, type)
        assert cls.__module__ == "erlang"
    assert issubclass(erlang.ErlangError, Exception)


def test_erlang_call_of_unregistered_name_raises() -> None:
    with pytest.raises(erlang.ErlangError, match="no_function_registered_by_this_name"):
        erlang.call("no_function_registered_by_this_name", 1, 2)


def test_erlang_call_from_a_thread_raises_too() -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            erlang.call("no_function_registered_by_this_name")
        except BaseException as error:  # noqa: BLE001 - inspected below
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert len(errors) == 1
    assert isinstance(errors[0], erlang.ErlangError)


@pytest.mark.parametrize("target", [1, "pid", None, b"<0.1.0>", object()])
def test_erlang_send_needs_a_pid(target: object) -> None:
    with pytest.raises(TypeError):
        erlang.send(target, "message")


def test_erlang_call_with_unconvertible_argument_raises_type_error() -> None:
    with pytest.raises(TypeError):
        erlang.call("no_function_registered_by_this_name", object())


def test_child_processes_are_spawned_never_forked_from_the_vm() -> None:
    """Forking beam.smp leaves a hung copy of the VM (LESSONS 7d'): the
    multiprocessing start method is spawn, so process pools start the real
    interpreter."""
    import concurrent.futures
    import multiprocessing

    assert multiprocessing.get_start_method() == "spawn"
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        assert list(pool.map(abs, [-1, -2, 3], timeout=60)) == [1, 2, 3]


# The fork is this test's subject: 3.12+ warns of it in a threaded process.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_forked_from_the_node_is_refused_loops_and_calls_at_once() -> None:
    """os.fork() copies the calling thread only, not the BEAM: a loop made
    in the child (whose server is the node's) or an Erlang call would wait
    forever. Both raise RuntimeError at once instead; the loops the child
    inherited close without waiting for a worker it does not have (2 s
    each, 60 s for these 30)."""
    import asyncio
    import os
    import time

    from erlang_loop import ErlangEventLoop

    inherited = [ErlangEventLoop() for _ in range(30)]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any cleanup
        try:
            os.close(read_end)
            outcomes = []
            for attempt in (
                lambda: asyncio.run(asyncio.sleep(0)),
                lambda: erlang.call("no_function_registered_by_this_name"),
            ):
                try:
                    attempt()
                    outcomes.append("returned")
                except RuntimeError as error:
                    outcomes.append(f"RuntimeError: {error}")
                except BaseException as error:
                    outcomes.append(f"{type(error).__name__}: {error}")
            for loop in inherited:
                loop.close()
            outcomes.append("closed")
            os.write(write_end, "\n".join(outcomes).encode())
        finally:
            os._exit(0)
    for loop in inherited:
        loop.close()
    os.close(write_end)
    give_up = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > give_up:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as reader:
        outcomes = reader.read().decode().split("\n")
    assert len(outcomes) == 3 and outcomes[2] == "closed", outcomes
    refused = outcomes[:2]
    assert all(o.startswith("RuntimeError: this process was forked") for o in refused), outcomes


SYS_PATH_REPORT = """
import json, site, sys, sysconfig
print(json.dumps({"path": sys.path, "base": site.getsitepackages([sys.base_prefix]),
                  "pth_read": "_distutils_hack" in sys.modules,
                  "venv": {"prefix": sys.prefix, "exec_prefix": sys.exec_prefix,
                           "base_prefix": sys.base_prefix,
                           "site_packages": site.getsitepackages(),
                           "user_site": site.ENABLE_USER_SITE,
                           "purelib": sysconfig.get_paths()["purelib"]}}))
"""


def _sys_path_report(**environ: str) -> dict[str, Any]:
    """``SYS_PATH_REPORT`` of a fresh node started with ``environ`` added."""
    cli = str(Path(__file__).resolve().parents[2] / "bin" / "erlang-python")
    done = subprocess.run(
        [cli, "-c", SYS_PATH_REPORT],
        capture_output=True,
        text=True,
        env={**os.environ, **environ},
        timeout=120,
    )
    assert done.returncode == 0, done
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_sys_path_is_ordered_as_a_venv_s_python_orders_it(tmp_path: Path) -> None:
    """PYTHONPATH before the venv's site-packages, which come after the
    standard library; the base interpreter's site-packages left out (the
    project's venv is made without --system-site-packages); the venv's
    ``.pth`` files read."""
    venv = Path(os.environ["ERLANG_PYTHON_VENV"])  # set by bin/erlang-python
    (venv_site,) = venv.glob("lib/python3*/site-packages")
    extra = tmp_path / "from_pythonpath"
    extra.mkdir()
    report = _sys_path_report(PYTHONPATH=str(extra))
    path: list[str] = report["path"]
    stdlib = next(p for p in path if p.endswith("lib-dynload"))
    assert path.index(str(extra)) < path.index(stdlib) < path.index(str(venv_site)), path
    assert not [p for p in report["base"] if p in path], path
    if (venv_site / "distutils-precedence.pth").exists():  # setuptools' .pth
        assert report["pth_read"]


def test_the_node_sees_its_venv_as_the_venv_s_python_does() -> None:
    """``sys.prefix`` is the venv, ``site`` and ``sysconfig`` name its
    site-packages, the user's site is off: CPython was started with the
    venv's python as its executable, so only the venv's ``.pth`` files ran."""
    venv = Path(os.environ["ERLANG_PYTHON_VENV"])  # set by bin/erlang-python
    in_node = _sys_path_report()["venv"]
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", SYS_PATH_REPORT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert in_node == json.loads(done.stdout)["venv"]
    assert in_node["prefix"] == str(venv)


def test_a_failed_start_says_so_again_and_leaves_the_vm_running() -> None:
    """CPython that cannot start (a bad PYTHONHOME) fails the application's
    start with its reason, in a VM that runs on; a later start gives the
    same reason (CPython cannot be started twice in a process), not an
    error of a half-started interpreter."""
    root = Path(__file__).resolve().parents[2]
    ebin = root / "erlang" / "_build" / "default" / "lib" / "erlang_python" / "ebin"
    script = (
        "Reason = fun({error, {_, {{python_init_failed, Why}, _}}}) -> Why;"
        ' (Other) -> io_lib:format("~p", [Other]) end,'
        " R1 = Reason(application:ensure_all_started(erlang_python)),"
        ' os:unsetenv("PYTHONHOME"),'
        " R2 = Reason(application:ensure_all_started(erlang_python)),"
        ' io:format("FIRST ~ts~nSECOND ~ts~n", [R1, R2]), halt(0).'
    )
    env = {**os.environ, "PYTHONHOME": "/nonexistent"}
    done = subprocess.run(
        ["erl", "-noinput", "-pa", str(ebin), "-eval", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done
    lines = dict(
        line.split(" ", 1)
        for line in done.stdout.splitlines()
        if line.startswith(("FIRST ", "SECOND "))
    )
    # CPython's own reason: 3.11 and 3.12 name the step, 3.13 the module.
    reasons = ("init_fs_encoding", "Failed to import encodings module")
    assert lines["FIRST"].startswith(
        tuple(f"CPython start-up failed: {reason}" for reason in reasons)
    ), done.stdout
    assert lines["SECOND"].startswith(lines["FIRST"]), done.stdout
    assert "cannot be started again" in lines["SECOND"], done.stdout


OTHER_PYTHON = Path("/usr/bin/python3.11")  # Debian's, beside the one we link


@pytest.mark.skipif(
    not OTHER_PYTHON.exists() or Path(sys.base_prefix) == Path("/usr"),
    reason="needs a second installation of CPython 3.11",
)
def test_a_venv_of_another_python_installation_still_starts(tmp_path: Path) -> None:
    """A venv made from another installation of the same Python version is
    not what CPython starts as (it would load that installation's standard
    library into our libpython: `No module named '_struct'`); its
    site-packages still go on ``sys.path``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(OTHER_PYTHON)
    site_dir = venv / "lib" / "python3.11" / "site-packages"
    site_dir.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {OTHER_PYTHON.parent}\ninclude-system-site-packages = false\n"
    )
    report = _sys_path_report(ERLANG_PYTHON_VENV=str(venv))
    assert str(site_dir) in report["path"], report["path"]
    assert report["venv"]["base_prefix"] == sys.base_prefix


def test_a_venv_with_system_site_packages_keeps_its_pth_folders_first(tmp_path: Path) -> None:
    """The folders a venv's ``.pth`` files add come right after its
    site-packages, before the base interpreter's (which such a venv keeps),
    as its own python orders them."""
    venv = tmp_path / "venv"
    site_dir = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site_dir.mkdir(parents=True)
    # Read as site.py reads it: the key in any case, the last line wins.
    (venv / "pyvenv.cfg").write_text(
        "home = /usr\ninclude-system-site-packages = false\nInclude-System-Site-Packages = True\n"
    )
    editable = tmp_path / "editable"
    editable.mkdir()
    (site_dir / "zz_editable.pth").write_text(f"{editable}\n")
    report = _sys_path_report(ERLANG_PYTHON_VENV=str(venv))
    path: list[str] = report["path"]
    base = [p for p in report["base"] if p in path]
    assert base, path  # kept: the venv includes them
    assert path.index(str(site_dir)) < path.index(str(editable)) < path.index(base[0]), path
