"""Long-lived asyncio loops driven from Erlang: the Python half of ``py_asyncio``.

Each ``py_asyncio_loop`` gen_server (the *server*) owns one :class:`_LoopThread`:
a ``threading.Thread`` of its own running ``run_forever`` on an
``ErlangEventLoop(isolated=True)``. The worker pool is for short calls
(LESSONS 6), so the server only ever makes three short calls from it:

- ``start(server, tag)`` starts the thread and returns once the loop runs;
- ``dispatch(server, ops)`` hands a batch of operations to the loop thread
  with ``call_soon_threadsafe`` and returns at once;
- ``stop(server, timeout)`` asks the loop to stop as ``asyncio.Runner``
  closes one (tasks cancelled, async generators and the default executor
  shut down, loop closed, each step within a share of ``timeout``) and
  returns at once; the thread says ``(tag, "stopped")`` when it is done.
  It runs on the control lane: a pool busy with long calls must not keep a
  loop running that was asked to stop.

An operation is ``("submit", key, module, function, args)``,
``("cancel", key)`` or ``("message", term)``; ``key`` is the server's integer
name for a task. The loop thread reports with
``erlang.send(server, (tag, key, status, value))`` (``status`` is ``"ok"``,
``"error"`` or ``"cancelled"``) and, if it ends without being asked to, with
``(tag, "exit", reason)``. Python cannot make atoms: the server turns these
into ``{py_result, Ref, ...}`` for the caller. ``tag`` is a reference only
the server knows, so a user's message never passes for a report.

``receive`` and ``current_pid`` (``erlang.receive``/``erlang.self``) give
coroutines on such a loop the server's mailbox: every message sent to the
server that is not part of its protocol lands in the loop's ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import math
import sys
import threading
import time
import traceback
import types
from collections.abc import Awaitable, Callable
from typing import Any

from _erlang import Pid, Ref, send
from erlang_loop import ErlangEventLoop

__all__ = ["current_pid", "dispatch", "receive", "start", "stop"]

#: Running loop threads by the pid of their server.
_runners: dict[Pid, _LoopThread] = {}
_runners_lock = threading.Lock()

#: ``runner``: the _LoopThread of the current thread, on loop threads only.
_current = threading.local()

#: Servers that died while their ``start`` may still run, by the
#: ``time.monotonic()`` of their stop: that start must not leave a loop
#: running for nobody (its caller's death interrupts it at a bytecode, which
#: may come only after it returned). Under ``_runners_lock``; an entry no
#: start took is dropped after ``_UNBORN_TTL`` s, by when its start (a job
#: of at most 10 s whose caller is dead) has long ended.
_unborn: dict[Pid, float] = {}
_UNBORN_TTL = 120.0


def _error_info(error: BaseException) -> tuple[str, str, str]:
    """``(ExceptionName, Message, Traceback)``, as py:call reports errors:
    text that is no UTF-8 (a lone surrogate) is replaced, not the report.
    Never raises, not even a ``SystemExit`` or ``KeyboardInterrupt`` from
    the error's ``__str__`` (the traceback module lets those through too):
    out of ``run_forever``, it would end the loop every caller shares, and a
    report lost here is a caller that waits forever."""
    try:
        message = str(error)
    except BaseException:  # noqa: BLE001 - a failing __str__: no message, as py:call
        message = ""
    try:
        text = "".join(traceback.format_exception(error))
    except BaseException:  # noqa: BLE001 - as py:call, a report without its traceback
        text = ""
    return (_utf8(_type_name(error)), _utf8(message), _utf8(text))


def _type_name(error: BaseException) -> str:
    """The name of ``error``'s class, as py:call reports it: the type's own
    slot, which a metaclass's ``__name__`` property (that may raise) does
    not hide."""
    try:
        name = _TYPE_NAME.__get__(type(error))
    except BaseException:  # noqa: BLE001 - never expected; a report still goes
        return "Exception"
    return name if isinstance(name, str) else "Exception"


#: ``type``'s own ``__name__`` descriptor (reads the C slot ``tp_name``).
_TYPE_NAME = type.__dict__["__name__"]


def _utf8(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (a lone surrogate) as U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class _CallExited(Exception):
    """A submitted call's ``SystemExit`` or ``KeyboardInterrupt``, carried as
    its task's exception: asyncio's Task re-raises those two out of
    ``run_forever``, which would end the loop every caller shares."""

    def __init__(self, exit: BaseException) -> None:
        super().__init__(exit)
        self.exit = exit


async def _contained(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as exit:
        raise _CallExited(exit) from exit


def _imported(name: str) -> bool:
    """Whether the module ``name`` is imported: in ``sys.modules`` and not
    still being imported by another thread (``import_module`` would wait
    for that import, holding a thread of the control lane)."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def _resolvable_at_once(module: str, function: str) -> bool:
    """Whether ``_resolve(module, function)`` runs no import: the module is
    imported and each part of ``function`` is found without running code
    (a package's ``__getattr__``, PEP 562, or a lazily loaded module may
    import a submodule on first touch)."""
    if not _imported(module):
        return False
    target: Any = sys.modules[module]
    for part in function.split("."):
        if isinstance(target, types.ModuleType) and type(target) is not types.ModuleType:
            return False  # importlib.util.LazyLoader's _LazyModule, and the like
        try:
            target = inspect.getattr_static(target, part)
        except AttributeError:
            return False
    return True


def _resolve(module: str, function: str) -> Callable[..., Any]:
    """``module.function``; ``function`` may be a dotted path, as in py:call."""
    target: Any = importlib.import_module(module)
    for part in function.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{module}.{function} is not callable")
    return target  # type: ignore[no-any-return]


class _LoopThread:
    """One long-lived loop, its thread, and the tasks the server submitted."""

    def __init__(self, server: Pid, tag: Ref) -> None:
        #: The py_asyncio_loop gen_server: reports go there, ``erlang.self()``.
        self.server = server
        #: Marks our reports to the server.
        self.tag = tag
        self.loop = ErlangEventLoop(isolated=True)
        #: Messages forwarded by the server, for ``erlang.receive``.
        self.mailbox: asyncio.Queue[Any] = asyncio.Queue()
        #: Submitted tasks not finished yet, by key; touched on the loop thread only.
        self.tasks: dict[int, asyncio.Future[Any]] = {}
        #: Set once ``run_forever`` runs (or the thread ended before that).
        self.started = threading.Event()
        self.running = False
        #: The end was asked for (``stop``, or a start not finished): a
        #: "stopped" report then, not "exit". Written and read under
        #: ``_runners_lock``, but by ``start`` before the thread runs.
        self.stopping = False
        #: The loop thread is shutting down: submissions are refused.
        self.closing = False
        #: How long each shutdown step may take (set by ``ask_to_stop``).
        self.grace = 1.0
        self.thread = threading.Thread(
            target=self._main, name=f"py_asyncio loop {server!r}", daemon=True
        )

    # -- the loop thread --

    def _main(self) -> None:
        loop = self.loop
        _current.runner = self
        asyncio.set_event_loop(loop)
        reason = "normal"
        # Callback errors go to the exception handler: what else leaves
        # run_forever, but KeyboardInterrupt and SystemExit, is the loop's
        # own failure (its worker died), and it cannot run anything more.
        broken = False
        try:
            loop.call_soon(self._running)
            loop.run_forever()
        except BaseException as error:  # noqa: BLE001 - reported to the server
            reason = "".join(traceback.format_exception(error))
            broken = not isinstance(error, KeyboardInterrupt | SystemExit)
        finally:
            self.closing = True
            self.started.set()
            self._shutdown(broken)
            asyncio.set_event_loop(None)
            _current.runner = None
            # Read under the lock that `stop` sets it under: a stop that
            # found us registered gets its "stopped".
            with _runners_lock:
                if _runners.get(self.server) is self:
                    del _runners[self.server]
                stopping = self.stopping
            if stopping:
                self._send_quietly((self.tag, "stopped"))
            else:
                self._send_quietly((self.tag, "exit", reason))

    def _running(self) -> None:
        self.running = True
        self.started.set()

    def _shutdown(self, broken: bool) -> None:
        """What asyncio.Runner.close does, each step bounded by ``grace``;
        only the cancels on a ``broken`` loop."""
        loop = self.loop
        try:
            tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in tasks:
                task.cancel()
            if broken or loop.is_closed():
                # Nothing can run any more: the tasks stay pending (their
                # callers are told below, not the log), and the steps below
                # would only make coroutines that are never awaited.
                for task in tasks:
                    task._log_destroy_pending = False  # type: ignore[attr-defined]
                return
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=self.grace))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), self.grace))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), self.grace))
        except BaseException:  # noqa: BLE001 - a broken loop still gets closed
            pass
        finally:
            # Tasks that ignored their cancellation: their callers are told anyway.
            for key in list(self.tasks):
                del self.tasks[key]
                self._report(key, "cancelled", None)
            try:
                loop.close()
            except Exception:  # noqa: BLE001 - the thread must still unregister
                pass

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        """Runs a batch of operations; on the loop thread."""
        for op in ops:
            kind = op[0]
            if kind == "submit":
                self._start_task(op[1], op[2], op[3])
            elif kind == "cancel":
                task = self.tasks.get(op[1])
                if task is not None:
                    task.cancel()
            elif kind == "message":
                self.mailbox.put_nowait(op[1])

    def _start_task(self, key: int, target: Callable[..., Any], args: list[Any]) -> None:
        if self.closing:
            self._report(key, "cancelled", None)
            return
        try:
            result = target(*args)
            if inspect.isawaitable(result):
                task = self.loop.create_task(_contained(result))
            else:
                self._report(key, "ok", result)
                return
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            self._report(key, "error", _error_info(error))
            return
        self.tasks[key] = task
        task.add_done_callback(functools.partial(self._task_done, key, result))

    def _task_done(self, key: int, awaitable: Awaitable[Any], task: asyncio.Future[Any]) -> None:
        # A task cancelled before its first step never awaited `awaitable`:
        # closed here, it is not reported as "never awaited" when collected.
        if inspect.iscoroutine(awaitable):
            if inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED:
                awaitable.close()
        # Retrieved even when nobody waits any more (a caller told at the
        # loop's shutdown): no "exception was never retrieved" in the log.
        error = None if task.cancelled() else task.exception()
        if self.tasks.pop(key, None) is None:
            return
        if task.cancelled():
            self._report(key, "cancelled", None)
            return
        if error is None:
            self._report(key, "ok", task.result())
        else:
            if isinstance(error, _CallExited):
                error = error.exit
            self._report(key, "error", _error_info(error))

    # -- reports, from any thread --

    def _report(self, key: int, status: str, value: Any) -> None:
        try:
            send(self.server, (self.tag, key, status, value))
        except Exception as error:  # noqa: BLE001 - e.g. a result Erlang cannot hold
            self._send_quietly((self.tag, key, "error", _error_info(error)))

    def _send_quietly(self, message: tuple[Any, ...]) -> None:
        try:
            send(self.server, message)
        except Exception:  # noqa: BLE001 - the node is going away
            pass

    # -- the server's side --

    def ask_to_stop(self, timeout: float) -> None:
        """Asks the loop thread to end; returns at once. ``stopping`` is
        set by the caller."""
        self.grace = max(timeout / 4, 0.01)
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass  # already closed


def start(server: Pid, tag: Ref, timeout: float = 10.0) -> str:
    """Starts the loop thread of ``server``; returns ``"ok"`` once it runs."""
    runner = _LoopThread(server, tag)
    with _runners_lock:
        _forget_unborn(time.monotonic())
        if _unborn.pop(server, None) is not None:
            runner.loop.close()
            raise RuntimeError(f"{server!r} was stopped before its loop started")
        if server in _runners:
            runner.loop.close()
            raise RuntimeError(f"{server!r} already has a loop")
        _runners[server] = runner
    runner.stopping = True  # no "exit" report unless the start succeeds
    runner.thread.start()
    if not runner.started.wait(timeout) or not runner.running:
        runner.ask_to_stop(timeout)
        runner.thread.join(timeout)
        with _runners_lock:
            _runners.pop(server, None)
        raise RuntimeError("the loop thread did not start")
    with _runners_lock:
        if _runners.get(server) is not runner:
            raise RuntimeError("the loop thread ended as it started")
        runner.stopping = False
    return "ok"


def dispatch(server: Pid, ops: list[tuple[Any, ...]], may_import: bool = True) -> str:
    """Hands ``ops`` to the loop thread of ``server``. Returns ``"ok"``,
    ``"closed"`` when that loop is gone (its submissions never ran), or,
    unless ``may_import``, ``"import"`` when a submission's module is not
    imported yet: nothing was done, the server sends the batch again to the
    worker pool (the control lane, which calls with ``may_import=False``,
    must not wait for an import: it serves every loop)."""
    with _runners_lock:
        runner = _runners.get(server)
    if runner is None or runner.stopping:
        return "closed"
    if not may_import and any(
        op[0] == "submit" and not _resolvable_at_once(op[2], op[3]) for op in ops
    ):
        return "import"
    batch: list[tuple[Any, ...]] = []
    for op in ops:
        if op[0] == "submit":
            # Imports happen here, on the pool thread, not on the loop.
            _, key, module, function, args = op
            try:
                batch.append(("submit", key, _resolve(module, function), args))
            except Exception as error:  # noqa: BLE001 - reported to the caller
                runner._report(key, "error", _error_info(error))
        else:
            batch.append(op)
    try:
        runner.loop.call_soon_threadsafe(runner.apply, batch)
    except RuntimeError:
        return "closed"
    return "ok"


def stop(server: Pid, timeout: float, before_start: bool = False) -> str:
    """Asks the loop of ``server`` to stop: ``"stopping"`` (its thread sends
    ``(tag, "stopped")`` when done) or ``"unknown"`` (no such loop, or it
    ended by itself). ``before_start``: the server died before its
    ``start`` returned; a ``start`` for it still to come then fails."""
    # The thread unregisters itself when done: a stop cut short here (its
    # caller gave up) is found again by the next one (the reaper's).
    with _runners_lock:
        runner = _runners.get(server)
        if runner is not None:
            runner.stopping = True
        elif before_start:
            now = time.monotonic()
            _forget_unborn(now)
            _unborn[server] = now
    if runner is None:
        return "unknown"
    runner.ask_to_stop(timeout)
    return "stopping"


def _forget_unborn(now: float) -> None:
    """Drops the stops kept for starts that never came; under ``_runners_lock``."""
    for server, since in list(_unborn.items()):
        if now - since > _UNBORN_TTL:
            del _unborn[server]


def _this_loop(what: str) -> _LoopThread:
    runner: _LoopThread | None = getattr(_current, "runner", None)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if runner is None or running is not runner.loop:
        raise RuntimeError(
            f"{what} works only on a loop started by py_asyncio:start_loop/1 "
            "(code submitted with py_asyncio:submit/4 or call/5)"
        )
    return runner


async def receive(timeout: float | None = None) -> Any:
    """The next message sent to this loop's server (``erlang.self()``)."""
    mailbox = _this_loop("erlang.receive").mailbox
    if timeout is None:
        return await mailbox.get()
    if math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    if timeout <= 0:
        try:
            return mailbox.get_nowait()
        except asyncio.QueueEmpty:
            raise TimeoutError("no message") from None
    async with asyncio.timeout(timeout):
        return await mailbox.get()


def current_pid() -> Pid:
    """The pid whose messages ``receive`` returns: this loop's server."""
    return _this_loop("erlang.self").server
