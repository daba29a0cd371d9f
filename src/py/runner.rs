//! `_erlang_loop.LoopRunner`: the hot half of `ErlangEventLoop` (LESSONS 27).
//!
//! It holds the loop's ready queue (the loop's `_ready`: `append`,
//! `popleft`, `clear`, `len` as asyncio's deque), makes the handles of
//! `call_soon`/`call_at`/`call_later` natively, keeps the timers it put in
//! the wheel, and runs one loop iteration (`_run_once`) without Python
//! frames of its own: wait (GIL released), fd readiness to the loop's
//! handles (as `_process_events`), fired timers to the ready queue in deadline order,
//! then the callbacks that were ready when the iteration began.
//!
//! Debug mode stays asyncio's Python code (source tracebacks, slow callback
//! warnings); the loop uses this object's pieces from there.
//!
//! No borrow of the runner is held while Python code runs or allocates:
//! callbacks (and finalizers run by the GC) call back into it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyList, PyString, PyTuple, PyType, PyWeakrefReference};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::context_snapshot;
use super::handles::{BareCalls, CallArgs, HandleKinds, Ran};
use super::handling::Handling;
use super::held::{BareCall, Held, Item};
use super::method::{call_method_fastcall, FastArgs, MethodDef};
use super::native_loop::{deadline_ns, NativeLoop, EVENT_READ, EVENT_WRITE};
use super::once::cached_attr;
use super::running_loop;
use super::task_steps::is_fresh_task_step;
use crate::io::core::release_if_drained;
use crate::io::{Event, LoopCore};

/// The handle classes, the same for every loop of the process.
static KINDS: OnceLock<HandleKinds> = OnceLock::new();

/// `asyncio.Future` (the C one when asyncio has it).
fn future_class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    cached_attr(py, &FUTURE, "asyncio.futures", "Future")
}

/// From how many queued callbacks on a new handle leaves the GC while it
/// waits (see `queue_new`): a million queued ones, walked by every
/// collection their allocations set off, made `call_soon` half GC. Below
/// it a collection set off meanwhile walks at most this many handles and
/// their contexts, and a steady loop sets off none (as many handles go as
/// come).
const UNTRACK_QUEUED_FROM: usize = 1024;

pub(crate) fn kinds() -> &'static HandleKinds {
    KINDS
        .get()
        .expect("LoopRunner made before its handle classes")
}

/// The handle classes, once the first runner has been made.
pub(crate) fn handle_kinds() -> Option<&'static HandleKinds> {
    KINDS.get()
}

#[pyclass(module = "_erlang_loop", name = "LoopRunner")]
pub struct LoopRunner {
    native: Py<NativeLoop>,
    loop_: Option<Py<PyAny>>,
    /// The loop selector's `_fd_to_key`: fd -> SelectorKey.
    fd_to_key: Py<PyDict>,
    ready: VecDeque<Item>,
    closed: bool,
    /// Inside `run_forever`: the handles made meanwhile leave the GC.
    running: bool,
    /// The context snapshot the last timer made without `context=` got,
    /// for the next ones to share (see `context_snapshot`). Dropped when
    /// the loop stops, so that it keeps no variable's value alive for long.
    last_context: Option<Py<PyAny>>,
    /// The runner's own `sleep_future` and `call_soon` as the loop's native
    /// paths put them in its `__dict__` (None while the Python methods are
    /// in use): a path is the runner's while the loop's attribute is still
    /// that very object (see `path_is_ours`).
    installed_sleep_future: Option<Py<PyAny>>,
    installed_call_soon: Option<Py<PyAny>>,
    /// The runner's `run_once` as the loop's `_run_once`.
    installed_run_once: Option<Py<PyAny>>,
    /// Inside `run_once` (see `run_once`: only the outermost call runs
    /// more than one iteration).
    in_run_once: bool,
    /// The loop's `__dict__`, where they are.
    loop_dict: Option<Py<PyDict>>,
    /// `{"loop": loop}`, the keyword arguments of every future this runner
    /// makes: made once (`Future.__init__` only reads them).
    future_kwargs: Option<Py<PyDict>>,
    /// The loop, weakly, once `detach` let go of it: a `create_future`
    /// kept from before the loop closed still makes its futures.
    detached_loop: Option<Py<PyWeakrefReference>>,
    /// The version of the loop's `__dict__` at which `iterates_again` last
    /// found `_run_once` the runner's and `_stopping` false, both in the
    /// dict (0: none): while the dict has it still, nothing was written to
    /// it since (see `dict_version`), and the two look-ups are not made
    /// again.
    iterating_at_version: u64,
}

/// The version tag of `dict`: CPython gives it a value no dict had before
/// on every write to any dict, so an unchanged tag means an unchanged
/// dict. 0 (never trusted) from 3.13 on, where a materialised instance
/// `__dict__` that shares its object's inline values may be written
/// without a new tag, and where the tag is on its way out.
#[cfg(not(Py_3_13))]
fn dict_version(dict: &Bound<'_, PyDict>) -> u64 {
    // SAFETY: a field of a live dict, read with the GIL held.
    #[allow(deprecated)]
    unsafe {
        (*dict.as_ptr().cast::<pyo3::ffi::PyDictObject>()).ma_version_tag
    }
}

#[cfg(Py_3_13)]
fn dict_version(_dict: &Bound<'_, PyDict>) -> u64 {
    0
}

/// `erlang_loop.ErlangEventLoop`.
fn erlang_event_loop_class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    cached_attr(py, &CLASS, "erlang_loop", "ErlangEventLoop")
}

/// The loop asyncio says runs on this thread and its runner, if that is an
/// ErlangEventLoop with one.
pub(crate) fn running_runner(
    py: Python<'_>,
) -> PyResult<Option<(Bound<'_, LoopRunner>, Bound<'_, PyAny>)>> {
    let loop_ = running_loop::current(py)?;
    if loop_.is_none() {
        return Ok(None);
    }
    // Another loop is not asked for an attribute it lacks (the error
    // made and dropped costs more than the sleep on it).
    if !loop_.is_instance(erlang_event_loop_class(py)?)? {
        return Ok(None);
    }
    let Some(runner) = loop_.getattr_opt(intern!(py, "_runner"))? else {
        return Ok(None);
    };
    Ok(runner
        .cast_into::<LoopRunner>()
        .ok()
        .map(|runner| (runner, loop_)))
}

/// What a transport reading more than once per readiness event watches
/// between two reads (see `datagram_transport`): asyncio reads once per
/// iteration, so everything queued when the next read would have been its
/// turn runs first. A further read is allowed only while the ready queue
/// is empty (the reader was the iteration's last callback and scheduled
/// nothing: `call_soon`, `call_soon_threadsafe` and a future's callbacks
/// all go there), no timer is due and no event waits in the loop's queue
/// (asyncio runs a timer due now, `call_later(0)` among them, before its
/// second next read), the loop is open and not stopping, and the fd's
/// reader is still the handle that began the batch (not removed, replaced
/// or cancelled).
pub(crate) struct ReadyWatch<'py> {
    runner: Bound<'py, LoopRunner>,
    loop_: Bound<'py, PyAny>,
    fd: RawFd,
    reader: Bound<'py, PyAny>,
}

impl<'py> ReadyWatch<'py> {
    /// Watches `loop_`'s ready queue from now, if `loop_` has a runner,
    /// nothing waits in its ready queue and `fd` has a reader.
    pub(crate) fn of(loop_: &Bound<'py, PyAny>, fd: RawFd) -> PyResult<Option<Self>> {
        let py = loop_.py();
        let Some(runner) = loop_.getattr_opt(intern!(py, "_runner"))? else {
            return Ok(None);
        };
        let Ok(runner) = runner.cast_into::<LoopRunner>() else {
            return Ok(None);
        };
        let fd_to_key = {
            let this = runner.borrow();
            if this.closed || !this.ready.is_empty() {
                return Ok(None);
            }
            this.fd_to_key.clone_ref(py)
        };
        let Some(reader) = reader_of(fd_to_key.bind(py), fd)? else {
            return Ok(None);
        };
        Ok(Some(ReadyWatch {
            runner,
            loop_: loop_.clone(),
            fd,
            reader,
        }))
    }

    /// Whether nothing was scheduled since the watch began, the loop is
    /// open and not stopping, and the fd's reader is the same live handle.
    pub(crate) fn quiet(&self) -> PyResult<bool> {
        let py = self.runner.py();
        let (loop_dict, fd_to_key) = {
            let this = self.runner.borrow();
            if this.closed || !this.ready.is_empty() || this.native.get().has_due_work() {
                return Ok(false);
            }
            (
                this.loop_dict.as_ref().map(|d| d.clone_ref(py)),
                this.fd_to_key.clone_ref(py),
            )
        };
        if LoopRunner::stopping(&self.loop_, loop_dict)? {
            return Ok(false);
        }
        match reader_of(fd_to_key.bind(py), self.fd)? {
            Some(reader) if reader.is(&self.reader) => Ok(!kinds().is_cancelled(&reader)?),
            _ => Ok(false),
        }
    }
}

/// The reader handle the selector's key of `fd` holds, if any.
fn reader_of<'py>(
    fd_to_key: &Bound<'py, PyDict>,
    fd: RawFd,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(key) = fd_to_key.get_item(fd)? else {
        return Ok(None);
    };
    let Ok(key) = key.cast_into::<PyTuple>() else {
        return Ok(None);
    };
    let Some((reader, _)) = loop_handles(&key)? else {
        return Ok(None);
    };
    Ok((!reader.is_none()).then_some(reader))
}

/// The `(reader, writer)` handles of a SelectorKey, `(fileobj, fd, events,
/// (reader, writer))`, that the loop registered (either may be `None`);
/// `None` for a registration of other data.
fn loop_handles<'py>(
    key: &Bound<'py, PyTuple>,
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    Ok(key.get_item(3)?.extract().ok())
}

/// How `erlang_asyncio.sleep` goes on the running loop's runner.
pub(crate) enum RunnerSleep<'py> {
    /// Not through the runner (see `LoopRunner::sleep_on`).
    Elsewhere,
    /// `delay <= 0`: a yield, as `asyncio.sleep(0)`.
    Yield,
    /// A wheel entry, its key, resolving the future.
    Entry(u64, Bound<'py, PyAny>),
}

/// Whether the loop's `__dict__` holds `installed` at `name`. Called with
/// no borrow of the runner held (a key's `__eq__` may run); `installed` is
/// held meanwhile, so its address is its own.
fn holds_path(
    loop_dict: &Bound<'_, PyDict>,
    name: &Bound<'_, PyString>,
    installed: &Py<PyAny>,
) -> PyResult<bool> {
    Ok(loop_dict
        .get_item(name)?
        .is_some_and(|path| path.is(installed)))
}

/// The arguments after a callback, as the handle's `_args` tuple (the
/// empty tuple shared, for a callback without arguments).
fn args_tuple<'py>(
    py: Python<'py>,
    rest: &[*mut pyo3::ffi::PyObject],
) -> PyResult<Bound<'py, PyTuple>> {
    if rest.is_empty() {
        return Ok(PyTuple::empty(py));
    }
    // SAFETY: `rest` are live arguments of the current call.
    let rest = rest
        .iter()
        .map(|&arg| unsafe { Bound::from_borrowed_ptr(py, arg) });
    PyTuple::new(py, rest)
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// Iterations one `run_once` runs at most inside `run_forever` before it
/// returns to `run_forever`'s Python loop, whose backward jump lets a
/// thread waiting for the GIL take it: iterations that run no bytecode
/// (a busy loop of C callbacks) would otherwise never let it go.
const ITERATIONS_PER_RUN_ONCE: u32 = 64;

/// Marks the outermost `run_once` call left, however it ends.
struct LeaveRunOnce<'a, 'py>(&'a Bound<'py, LoopRunner>);

impl Drop for LeaveRunOnce<'_, '_> {
    fn drop(&mut self) {
        // No borrow is held where the call ends.
        if let Ok(mut this) = self.0.try_borrow_mut() {
            this.in_run_once = false;
        }
    }
}

impl LoopRunner {
    /// Whether the loop's attribute `name` is still `installed`, the native
    /// path the loop put in its `__dict__` (and not something set on the
    /// loop since).
    fn path_is_ours(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyString>,
        installed: impl Fn(&Self) -> Option<&Py<PyAny>>,
    ) -> bool {
        let py = slf.py();
        let (loop_dict, installed) = {
            let this = slf.borrow();
            match (&this.loop_dict, installed(&this)) {
                (Some(loop_dict), Some(installed)) if !this.closed => {
                    (loop_dict.clone_ref(py), installed.clone_ref(py))
                }
                _ => return false,
            }
        };
        holds_path(loop_dict.bind(py), name, &installed).unwrap_or(false)
    }

    /// `poll` without raising; true when the loop was interrupted since
    /// the last look. Looked at with the GIL held, which an interrupter
    /// holds from setting the exception to setting the mark: both are
    /// seen, or neither.
    fn poll_io(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let (loop_, native, busy, loop_dict) = {
            let this = slf.borrow();
            let loop_ = match &this.loop_ {
                Some(loop_) if !this.closed => loop_.bind(py).clone(),
                _ => return Err(closed_error()),
            };
            let loop_dict = this.loop_dict.as_ref().map(|d| d.clone_ref(py));
            (
                loop_,
                this.native.clone_ref(py),
                !this.ready.is_empty(),
                loop_dict,
            )
        };
        let no_wait = busy || Self::stopping(&loop_, loop_dict)?;
        let timeout = no_wait.then_some(Duration::ZERO);
        let (fd_events, timers) = native.get().wait_events(py, timeout)?;
        let fds = if fd_events.is_empty() {
            Ok(())
        } else {
            Self::ready_fds(slf, &loop_, &fd_events)
        };
        // The fired timers are out of the wheel: they are made ready even
        // if an fd callback's bookkeeping failed.
        let timers = if timers.is_empty() {
            Ok(())
        } else {
            Self::fire(slf, timers)
        };
        fds.and(timers)?;
        Ok(native.get().take_interrupt())
    }

    /// `loop._stopping`, read from the loop's `__dict__` (where
    /// BaseEventLoop keeps it) when the runner has it.
    fn stopping(loop_: &Bound<'_, PyAny>, loop_dict: Option<Py<PyDict>>) -> PyResult<bool> {
        let py = loop_.py();
        let name = intern!(py, "_stopping");
        let found = match loop_dict {
            Some(loop_dict) => loop_dict.bind(py).get_item(name)?,
            None => None,
        };
        match found {
            Some(stopping) => stopping.is_truthy(),
            None => loop_.getattr(name)?.is_truthy(),
        }
    }

    /// Raises the exception set on this thread from outside (a timed-out
    /// call, Ctrl-C) for which the loop's wait was interrupted
    /// (`NativeLoop.interrupt`), if it is still pending, by running a
    /// Python no-op, at whose start CPython raises it; otherwise it would
    /// be raised inside the next callback, whose error handling would
    /// report it and run on. A mark whose exception was raised elsewhere
    /// meanwhile costs that call only.
    fn raise_pending(py: Python<'_>) -> PyResult<()> {
        static RAISE_PENDING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        cached_attr(py, &RAISE_PENDING, "erlang_loop._loop", "_raise_pending")?
            .call0()
            .map(drop)
    }

    /// Whether `run_once`, having run an iteration inside `run_forever`,
    /// runs the next one too: the loop runs, is open, is not stopping, and
    /// its `_run_once` is still this runner's (not debug mode's, or one set
    /// on the loop since). Otherwise `run_forever`'s own loop goes on.
    fn iterates_again(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let (loop_, loop_dict, installed, version) = {
            let this = slf.borrow();
            match (&this.loop_, &this.loop_dict, &this.installed_run_once) {
                (Some(loop_), Some(loop_dict), Some(installed)) if this.running && !this.closed => {
                    let version = dict_version(loop_dict.bind(py));
                    if version != 0 && version == this.iterating_at_version {
                        return Ok(true);
                    }
                    (
                        loop_.bind(py).clone(),
                        loop_dict.clone_ref(py),
                        installed.clone_ref(py),
                        version,
                    )
                }
                _ => return Ok(false),
            }
        };
        if !holds_path(loop_dict.bind(py), intern!(py, "_run_once"), &installed)? {
            return Ok(false);
        }
        if Self::stopping(&loop_, Some(loop_dict.clone_ref(py)))? {
            return Ok(false);
        }
        // Remembered only where tags are trusted (not 0: no look-up is
        // spent on it then), if the look-ups changed nothing (a key's
        // `__eq__` may run Python code) and `_stopping` is the dict's: one
        // the class gives (a property) changes while the dict does not.
        let loop_dict = loop_dict.bind(py);
        if version != 0
            && loop_dict.contains(intern!(py, "_stopping"))?
            && dict_version(loop_dict) == version
        {
            slf.borrow_mut().iterating_at_version = version;
        }
        Ok(true)
    }

    /// Whether the loop's `call_soon` is the runner's: resolving a future of
    /// the loop then runs no Python code.
    fn call_soon_is_ours(slf: &Bound<'_, Self>) -> bool {
        Self::path_is_ours(slf, intern!(slf.py(), "call_soon"), |this| {
            this.installed_call_soon.as_ref()
        })
    }

    /// `erlang_asyncio.sleep(delay)` (a number, not NaN) on this runner,
    /// whose loop `loop_` asyncio says runs on this thread: through the
    /// runner while the loop is its own, open, and its `_sleep_future` the
    /// runner's; otherwise `Elsewhere` (the way of Python code). What it
    /// needs of the runner's state is read under one borrow.
    pub(crate) fn sleep_on<'py>(
        slf: &Bound<'py, Self>,
        loop_: &Bound<'py, PyAny>,
        delay: f64,
    ) -> PyResult<RunnerSleep<'py>> {
        let py = slf.py();
        let (loop_dict, installed) = {
            let this = slf.borrow();
            let ours = this.loop_.as_ref().is_some_and(|own| own.is(loop_));
            match (&this.loop_dict, &this.installed_sleep_future) {
                (Some(loop_dict), Some(installed)) if ours && this.running && !this.closed => {
                    (loop_dict.clone_ref(py), installed.clone_ref(py))
                }
                _ => return Ok(RunnerSleep::Elsewhere),
            }
        };
        if !holds_path(loop_dict.bind(py), intern!(py, "_sleep_future"), &installed)? {
            return Ok(RunnerSleep::Elsewhere);
        }
        if delay <= 0.0 {
            return Ok(RunnerSleep::Yield);
        }
        let kwargs = Self::future_kwargs(slf)?;
        let (key, future) = Self::sleep_entry(slf, kwargs, delay)?;
        Ok(RunnerSleep::Entry(key, future))
    }

    /// The future of a sleep, made with `kwargs`, and its wheel entry.
    fn sleep_entry<'py>(
        slf: &Bound<'py, Self>,
        kwargs: Bound<'py, PyDict>,
        delay: f64,
    ) -> PyResult<(u64, Bound<'py, PyAny>)> {
        let future = future_class(slf.py())?.call((), Some(&kwargs))?;
        let when = LoopCore::now_ns() as f64 / 1e9 + delay;
        let deadline = deadline_ns(when)?;
        let key = Self::schedule(slf, deadline, Item::Future(future.clone().unbind()))?;
        Ok((key, future))
    }

    /// The keyword arguments of the futures this runner makes, `{"loop":
    /// loop}` (a closed loop still makes futures, as asyncio's does).
    fn future_kwargs<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let loop_ = {
            let this = slf.borrow();
            if let Some(kwargs) = &this.future_kwargs {
                return Ok(kwargs.clone_ref(py).into_bound(py));
            }
            match (&this.loop_, &this.detached_loop) {
                (Some(loop_), _) => loop_.clone_ref(py),
                (None, Some(weak)) => {
                    // Not kept: the dict would hold the loop again.
                    let loop_ = weak.bind(py).upgrade().ok_or_else(closed_error)?;
                    let kwargs = PyDict::new(py);
                    kwargs.set_item(intern!(py, "loop"), loop_)?;
                    return Ok(kwargs);
                }
                (None, None) => return Err(closed_error()),
            }
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), loop_)?;
        let unneeded = slf
            .borrow_mut()
            .future_kwargs
            .replace(kwargs.clone().unbind());
        // Made by a reentrant call meanwhile (the same contents): dropped
        // with no borrow held.
        drop(unneeded);
        Ok(kwargs)
    }

    /// The Python loop, or the closed error once it is cleared.
    fn loop_object<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.borrow();
        match &this.loop_ {
            Some(loop_) if !this.closed => Ok(loop_.bind(slf.py()).clone()),
            _ => Err(closed_error()),
        }
    }

    /// Queues a handle the runner made, under one borrow with the checks
    /// that must see the same state: the loop may have closed or stopped
    /// while the handle was built (allocation can run the GC, whose
    /// finalizers can let other threads run). It leaves the GC if the loop
    /// runs (see `HandleKinds::untrack`).
    fn queue_new(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut this = slf.borrow_mut();
        if this.closed {
            return Err(closed_error());
        }
        Self::push_handle(&mut this, handle);
        Ok(())
    }

    /// Queues a handle the runner made, in the borrow that checked the
    /// loop open. Runs no Python.
    fn push_handle(this: &mut Self, handle: &Bound<'_, PyAny>) {
        // A short queue stays under the GC: its few handles cost a young
        // collection little, and taking each out and back costs every
        // callback of a busy loop (~5% of a steady `call_soon`'s samples).
        let ours = this.running && this.ready.len() >= UNTRACK_QUEUED_FROM && kinds().untrackable();
        let untracked_context = if ours { kinds().untrack(handle) } else { None };
        this.ready.push_back(Item::Handle(Held {
            handle: handle.clone().unbind(),
            ours,
            untracked_context,
        }));
    }

    /// A new `Handle(callback, args, loop_, context)`, queued.
    fn queue_new_handle<'py>(
        slf: &Bound<'py, Self>,
        loop_: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let handle = kinds().new_handle(callback, args, loop_, context)?;
        Self::queue_new(slf, &handle)?;
        Ok(handle)
    }

    /// Queues a callback without its handle (a future's being resolved,
    /// see `BareCalls`, or a C Task's next step, see `task_steps`), in
    /// `context` (never None); None stands for the handle nobody takes.
    fn queue_bare<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        arg: Option<&Bound<'py, PyAny>>,
        context: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        if this.closed || this.loop_.is_none() {
            return Err(closed_error());
        }
        this.ready.push_back(Item::Call(BareCall {
            callback: callback.clone().unbind(),
            arg: arg.map(|arg| arg.clone().unbind()),
            context: context.clone().unbind(),
        }));
        Ok(py.None().into_bound(py))
    }

    /// Runs a callback queued without its handle as `Handle._run` would; a
    /// handle is made only to report its error or for a patched `_run`.
    fn run_bare(slf: &Bound<'_, Self>, call: BareCall, stock_run: bool) -> PyResult<()> {
        let py = slf.py();
        let ran = if stock_run {
            kinds().run_in_context(
                call.context.bind(py),
                call.callback.bind(py),
                match &call.arg {
                    Some(arg) => CallArgs::One(arg.bind(py)),
                    None => CallArgs::Nothing,
                },
            )
        } else {
            None
        };
        let (handle, ran) = match ran {
            Some(ran) => (None, ran?),
            None => {
                let handle = Self::handle_of(slf, &call)?;
                let ran = kinds().run(&handle, stock_run, || None)?;
                (Some(handle), ran)
            }
        };
        let Ran::Failed(error) = ran else {
            return Ok(());
        };
        let handle = match handle {
            Some(handle) => handle,
            None => Self::handle_of(slf, &call)?,
        };
        let loop_ = Self::loop_object(slf)?;
        let exception = error.into_value(py).into_bound(py);
        let _handling = Handling::start(&exception);
        loop_.call_method1(intern!(py, "_report_callback_error"), (&handle, exception))?;
        Ok(())
    }

    /// The `Handle` a callback queued without one would have had.
    fn handle_of<'py>(slf: &Bound<'py, Self>, call: &BareCall) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let loop_ = Self::loop_object(slf)?;
        let args = match &call.arg {
            Some(arg) => PyTuple::new(py, [arg.bind(py)])?,
            None => PyTuple::empty(py),
        };
        kinds().new_handle(
            call.callback.bind(py),
            &args,
            &loop_,
            Some(call.context.bind(py)),
        )
    }

    /// `loop.call_soon(callback, *args, context=None)` outside debug mode,
    /// as a builtin method of the runner (`call_soon_fast`): no argument
    /// tuple made by a wrapper first, and a wake-up a future schedules as
    /// the runner resolves it queued without a handle (`BareCalls`).
    fn fast_call_soon(slf: &Bound<'_, PyAny>, args: &FastArgs<'_>) -> PyResult<Py<PyAny>> {
        // `call_soon(callback, *args)`, no keywords, no C Task's next step:
        // the handle made first, then read the loop and queue it under one
        // borrow (see `queue_soon`).
        let positional = args.positional_from(0);
        if let Some((&callback, rest)) = positional.split_first() {
            // Looked at before anything takes a reference to the callback.
            let task_step = rest.is_empty() && is_fresh_task_step(callback);
            if !args.has_keywords() && !task_step {
                let runner = slf.cast::<Self>()?;
                if let Some(queued) = Self::queue_soon(runner, callback, rest)? {
                    return Ok(queued);
                }
            }
        }
        Self::call_soon_with(slf, args)
    }

    /// The handle of `callback(*rest)` in a copy of the current context,
    /// queued; None if the loop's `call_soon` is not the runner's any more
    /// (see `call_soon_with`). The handle is built before the borrow (its
    /// allocations may run the GC's finalizers, which may call back into
    /// the runner); its loop is set and it is queued under one borrow,
    /// with the checks that must see the same state (as `queue_new`).
    fn queue_soon(
        slf: &Bound<'_, Self>,
        callback: *mut pyo3::ffi::PyObject,
        rest: &[*mut pyo3::ffi::PyObject],
    ) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        // SAFETY: live arguments of this call.
        let callback = unsafe { Bound::from_borrowed_ptr(py, callback) };
        let args = args_tuple(py, rest)?;
        let handle = kinds().new_handle_unlooped(&callback, &args)?;
        let mut this = slf.borrow_mut();
        let open_loop = this.loop_.as_ref().filter(|_| !this.closed);
        let (native, loop_) = (
            this.installed_call_soon.is_some(),
            open_loop.map(Py::as_ptr),
        );
        let Some(loop_) = loop_.filter(|_| native) else {
            drop(this);
            // Freed with no borrow held (its last reference).
            drop(handle);
            return if native {
                Err(closed_error())
            } else {
                Ok(None)
            };
        };
        // SAFETY: the handle was just made so; the runner holds the loop.
        unsafe { kinds().set_loop(&handle, loop_) };
        Self::push_handle(&mut this, &handle);
        Ok(Some(handle.unbind()))
    }

    /// `fast_call_soon` for any other call (keywords, a task's step, a loop
    /// whose `call_soon` is Python's again).
    fn call_soon_with(slf: &Bound<'_, PyAny>, args: &FastArgs<'_>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        // Looked at before anything takes a reference to the callback.
        let task_step =
            args.positional_count() == 1 && is_fresh_task_step(args.positional_from(0)[0]);
        let slf = slf.cast::<Self>()?;
        // The loop (None once closed), read under the same borrow.
        let (native, loop_) = {
            let this = slf.borrow();
            let loop_ = this.loop_.as_ref().filter(|_| !this.closed);
            (
                this.installed_call_soon.is_some(),
                loop_.map(|l| l.clone_ref(py)),
            )
        };
        if !native {
            // A bound `call_soon` kept from before the native paths went
            // (debug mode, a subclass's override): the loop's own, with
            // asyncio's debug checks (thread, coroutine, source traceback).
            let loop_ = Self::loop_object(slf)?;
            let method = loop_.get_type().getattr(intern!(py, "call_soon"))?;
            return args.call_with_first(&method, &loop_).map(Bound::unbind);
        }
        let [by_name, context] = args.keywords(
            py,
            [intern!(py, "callback"), intern!(py, "context")],
            "call_soon",
        )?;
        let (callback, rest) = match (args.positional(py, 0), by_name) {
            (Some(callback), None) => (callback, args.positional_from(1)),
            (None, Some(callback)) => (callback, args.positional_from(0)),
            (Some(_), Some(_)) => {
                return Err(PyTypeError::new_err(
                    "call_soon() got multiple values for argument 'callback'",
                ))
            }
            (None, None) => {
                return Err(PyTypeError::new_err(
                    "call_soon() missing 1 required positional argument: 'callback'",
                ))
            }
        };
        if let Some(context) = context.as_ref().filter(|c| !c.is_none()) {
            if task_step {
                return Self::queue_bare(slf, &callback, None, context).map(Bound::unbind);
            }
            if BareCalls::cover(rest) {
                // SAFETY: a live argument of this call.
                let arg = unsafe { Bound::from_borrowed_ptr(py, rest[0]) };
                return Self::queue_bare(slf, &callback, Some(&arg), context).map(Bound::unbind);
            }
        }
        let args = args_tuple(py, rest)?;
        let loop_ = loop_.ok_or_else(closed_error)?.into_bound(py);
        Self::queue_new_handle(slf, &loop_, &callback, &args, context.as_ref()).map(Bound::unbind)
    }

    /// Puts `item` in the wheel at `deadline` (ns); returns its key. A timer
    /// handle the runner made (`ours`) leaves the GC if the loop runs,
    /// decided here, under the same borrow as the closed check (as in
    /// `queue_new`); nothing between that check and the insert runs Python.
    fn schedule(slf: &Bound<'_, Self>, deadline: u64, mut item: Item) -> PyResult<u64> {
        let py = slf.py();
        let (error, refused) = {
            let this = slf.borrow();
            if this.closed {
                (closed_error(), item)
            } else {
                if let Item::Handle(held) = &mut item {
                    held.ours = held.ours && this.running && kinds().untrackable();
                    if held.ours {
                        // A timer's context goes back with it (`timer_handle`).
                        let context = kinds().untrack(held.handle.bind(py));
                        debug_assert!(context.is_none(), "a timer's context was returned");
                    }
                }
                let id = item.into_id();
                match this.native.get().insert_timer_ns(deadline, id) {
                    Ok(key) => return Ok(key),
                    // SAFETY: `id` was just made and never reached the wheel.
                    Err(error) => (error, unsafe { Item::from_id(py, id) }),
                }
            }
        };
        // Released outside the borrow (its last reference may run Python).
        refused.release(py);
        Err(error)
    }

    /// Puts `item` in the wheel at `seconds` (loop time); returns its key.
    fn insert(slf: &Bound<'_, Self>, seconds: f64, item: Item) -> PyResult<u64> {
        // A closed loop says so first.
        match Self::loop_object(slf).and_then(|_| deadline_ns(seconds)) {
            Ok(deadline) => Self::schedule(slf, deadline, item),
            Err(error) => {
                item.release(slf.py());
                Err(error)
            }
        }
    }

    /// A timer handle at `when` (kept as given; `seconds` is it as loop
    /// seconds; no `when`: `seconds` is the float asked for) for
    /// `callback(*args)`, in the wheel.
    fn new_timer<'py>(
        slf: &Bound<'py, Self>,
        when: Option<&Bound<'py, PyAny>>,
        seconds: f64,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let loop_ = Self::loop_object(slf)?;
        let deadline = deadline_ns(seconds)?;
        let (context, shared) = Self::timer_context(slf, context, callback)?;
        let timer = kinds().new_timer(when, seconds, callback, args, &loop_, context, shared)?;
        // Out of the GC if the loop runs: `schedule`.
        let held = Held::new(timer.clone().unbind(), true);
        let key = Self::schedule(slf, deadline, Item::Handle(held))?;
        kinds().set_key(&timer, key);
        Ok(timer)
    }

    /// The context a new timer for `callback` runs in, and whether it is a
    /// snapshot other timers may share: the one given, else a snapshot of
    /// the current one (see `context_snapshot`). An `asyncio.sleep` timer
    /// shares one too while the loop's `call_soon` is the runner's: it runs
    /// without a context then (`HandleKinds::resolve_bare_sleep`).
    /// Otherwise it gets a copy of its own: it almost always runs, and a
    /// timer that runs needs a copy of its own, so sharing would cost it a
    /// second one.
    fn timer_context<'py>(
        slf: &Bound<'py, Self>,
        given: Option<&Bound<'py, PyAny>>,
        callback: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, bool)> {
        let py = slf.py();
        if let Some(given) = given.filter(|given| !given.is_none()) {
            return Ok((given.clone(), false));
        }
        // Made with no borrow held: an allocation may run the GC's
        // finalizers, which may call back into the runner.
        let fresh = context_snapshot::copy_current(py)?;
        if !context_snapshot::sharing_available(py) {
            return Ok((fresh, false));
        }
        if kinds().is_sleep_callback(callback) && !Self::call_soon_is_ours(slf) {
            return Ok((fresh, false));
        }
        let shared = {
            let mut this = slf.borrow_mut();
            // Closed meanwhile (by a finalizer): nothing may be cached.
            if this.closed {
                Err(fresh)
            } else {
                Ok(context_snapshot::share(&mut this.last_context, fresh))
            }
        };
        // Freeing a context may run Python code: dropped with no borrow held.
        let (context, unneeded) = shared.map_err(|fresh| {
            drop(fresh);
            closed_error()
        })?;
        drop(unneeded);
        Ok((context, true))
    }

    /// Makes the reader and writer handles of ready fds ready, as
    /// `BaseSelectorEventLoop._process_events` does (a cancelled handle
    /// unregisters its fd instead), reading the selector's own keys.
    fn ready_fds(
        slf: &Bound<'_, Self>,
        loop_: &Bound<'_, PyAny>,
        fd_events: &[(RawFd, u8)],
    ) -> PyResult<()> {
        let py = slf.py();
        let fd_to_key = slf.borrow().fd_to_key.clone_ref(py).into_bound(py);
        for &(fd, mask) in fd_events {
            let Some(key) = fd_to_key.get_item(fd)? else {
                continue;
            };
            let key = key.cast_into::<PyTuple>()?;
            let mask = mask & key.get_item(2)?.extract::<u8>()?;
            let Some((reader, writer)) = loop_handles(&key)? else {
                // Not a loop registration: asyncio's code decides.
                let list = PyList::new(py, [(key, mask)])?;
                loop_.call_method1(intern!(py, "_process_events"), (list,))?;
                continue;
            };
            let directions = [
                (EVENT_READ, reader, intern!(py, "_remove_reader")),
                (EVENT_WRITE, writer, intern!(py, "_remove_writer")),
            ];
            for (bit, handle, remove) in directions {
                if mask & bit == 0 || handle.is_none() {
                    continue;
                }
                if kinds().is_cancelled(&handle)? {
                    loop_.call_method1(remove, (key.get_item(0)?,))?;
                } else {
                    let held = Held::new(handle.unbind(), false);
                    slf.borrow_mut().ready.push_back(Item::Handle(held));
                }
            }
        }
        Ok(())
    }

    /// Moves fired timers to the ready queue (futures: resolved) in
    /// deadline order, FIFO for equal deadlines, as CPython's heap does. The
    /// wheel reports them in the order they were queued, and a timer given
    /// a past deadline after an Erlang tick queued later ones still runs first.
    fn fire(slf: &Bound<'_, Self>, timers: Vec<Event>) -> PyResult<()> {
        let py = slf.py();
        // Every item is taken back before any Python runs, so that an error
        // leaks none of them.
        let mut due: Vec<(u64, Item)> = timers
            .iter()
            // SAFETY: each fired id is handed out once, by the wait that
            // drained it from the loop.
            .map(|event| (event.deadline, unsafe { Item::from_id(py, event.id) }))
            .collect();
        // The wheel's nanoseconds, then (read only then: each read is a
        // cache miss on a handle) the handles' own float `when`, as two may
        // share a nanosecond. A stable sort: what is still equal keeps the
        // wheel's (insertion) order. The batch usually comes sorted.
        let float_when = |item: &Item| match item {
            Item::Handle(held) => kinds().float_when(held.handle.bind(py)),
            Item::Future(_) | Item::Call(_) => f64::NEG_INFINITY,
        };
        due.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| float_when(&a.1).total_cmp(&float_when(&b.1)))
        });
        for (_, item) in due {
            match item {
                // Cancelled after it fired, before the loop took it: it
                // would only be skipped by `run_ready`.
                Item::Handle(held) if kinds().surely_cancelled(held.handle.bind(py)) => {
                    kinds().mark_fired(held.handle.bind(py));
                    held.release(py);
                }
                Item::Handle(held) => {
                    kinds().mark_fired(held.handle.bind(py));
                    slf.borrow_mut().ready.push_back(Item::Handle(held));
                }
                // Resolved in its turn, not now: its task then wakes in the
                // next iteration, after what the callbacks before it in this
                // one scheduled, as with asyncio's sleep (`wait_for` of a
                // sleep as long as its timeout times out).
                other => slf.borrow_mut().ready.push_back(other),
            }
        }
        Ok(())
    }

    /// Takes `key` out of the wheel if `ours` accepts its id; False if it
    /// already fired or left, or is not ours.
    fn cancel_if(slf: &Bound<'_, Self>, key: u64, ours: impl FnOnce(u64) -> bool) -> bool {
        let py = slf.py();
        let id = slf.borrow().native.get().cancel_timer_if(key, ours);
        // Released outside the borrow (the last reference may run Python).
        // SAFETY: the id the wheel gave back for the cancelled key.
        id.map(|id| unsafe { Item::from_id(py, id) }.release(py))
            .is_some()
    }

    /// Takes every timer out of the native loop: its items.
    fn take_all_timers(&self, py: Python<'_>) -> Vec<Item> {
        let ids = self.native.get().take_all_timers();
        // SAFETY: ids taken out of the loop, each once.
        ids.into_iter()
            .map(|id| unsafe { Item::from_id(py, id) })
            .collect()
    }
}

/// `asyncio.futures._set_result_unless_cancelled`.
fn set_result_unless_cancelled(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    cached_attr(
        py,
        &FUNCTION,
        "asyncio.futures",
        "_set_result_unless_cancelled",
    )
}

static CALL_SOON: MethodDef = MethodDef::fastcall(
    c"call_soon",
    c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible (native).",
    call_soon_method,
);

unsafe extern "C" fn call_soon_method(
    slf: *mut pyo3::ffi::PyObject,
    args: *const *mut pyo3::ffi::PyObject,
    nargs: pyo3::ffi::Py_ssize_t,
    kwnames: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls this FASTCALL|KEYWORDS method of ours.
    unsafe { call_method_fastcall(slf, args, nargs, kwnames, LoopRunner::fast_call_soon) }
}

/// Resolves a fired `erlang_asyncio.sleep` future. One cancelled since (its
/// sleep not yet told) refuses the result: the only error to ignore.
fn resolve_sleep(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    match future.call_method1(intern!(py, "set_result"), (py.None(),)) {
        Ok(_) => Ok(()),
        Err(_) if future.call_method0(intern!(py, "done"))?.is_truthy()? => Ok(()),
        Err(error) => Err(error),
    }
}

/// A deadline or delay in seconds as asyncio accepts them (anything
/// `float()` takes); integers too large for a float are +-infinity.
fn seconds_of(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let seconds = match value.extract::<f64>() {
        Ok(seconds) => seconds,
        Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => {
            if value.gt(0)? {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }
        }
        Err(error) => return Err(error),
    };
    if seconds.is_nan() {
        return Err(PyValueError::new_err("when must not be NaN"));
    }
    Ok(seconds)
}

impl Drop for LoopRunner {
    /// An unclosed loop's runner going away: the handles others still hold
    /// go back under the GC. (Deallocation runs with the GIL held.)
    fn drop(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        Python::attach(|py| {
            ready.into_iter().for_each(|item| item.release(py));
            for item in self.take_all_timers(py) {
                item.release(py);
            }
        });
    }
}

#[pymethods]
impl LoopRunner {
    /// The runner of `loop_` (an `ErlangEventLoop`) over its native loop.
    /// `handle_class` is `asyncio.Handle`, `timer_class` the loop's
    /// `TimerHandle` subclass with a `_key` slot, `fd_to_key` the loop
    /// selector's map of registrations.
    #[new]
    fn new(
        native: Py<NativeLoop>,
        loop_: Py<PyAny>,
        handle_class: &Bound<'_, PyType>,
        timer_class: &Bound<'_, PyType>,
        fd_to_key: Py<PyDict>,
    ) -> PyResult<LoopRunner> {
        if KINDS.get().is_none() {
            let _ = KINDS.set(HandleKinds::new(handle_class, timer_class)?);
        }
        if !kinds().same_classes(handle_class, timer_class) {
            return Err(PyTypeError::new_err(
                "every LoopRunner must use the same handle classes",
            ));
        }
        if !native.get().claim() {
            return Err(PyRuntimeError::new_err(
                "this NativeLoop already has a LoopRunner",
            ));
        }
        Ok(LoopRunner {
            native,
            loop_: Some(loop_),
            fd_to_key,
            ready: VecDeque::new(),
            closed: false,
            running: false,
            last_context: None,
            installed_sleep_future: None,
            installed_call_soon: None,
            installed_run_once: None,
            in_run_once: false,
            loop_dict: None,
            future_kwargs: None,
            detached_loop: None,
            iterating_at_version: 0,
        })
    }

    /// `call_soon` as the loop installs it: a builtin method of this
    /// runner (see `fast_call_soon`).
    #[getter]
    fn call_soon_fast(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        CALL_SOON.bind(slf.as_any())
    }

    // -- the ready queue, as asyncio's `_ready` deque --

    fn append(&mut self, handle: Py<PyAny>) -> PyResult<()> {
        // A finalizer run by `close` dropping the queue must not queue into
        // it (the handle would never run, silently).
        if self.closed {
            return Err(closed_error());
        }
        self.ready.push_back(Item::Handle(Held::new(handle, false)));
        Ok(())
    }

    fn popleft(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let item = slf
            .borrow_mut()
            .ready
            .pop_front()
            .ok_or_else(|| PyIndexError::new_err("pop from an empty deque"))?;
        match item {
            Item::Handle(held) => {
                // Python code gets it: under the GC from now on.
                held.track(py);
                Ok(held.handle.clone_ref(py))
            }
            Item::Call(call) => Self::handle_of(slf, &call).map(Bound::unbind),
            // Python's own dispatch (debug mode) runs what asyncio's sleep
            // would have made ready.
            Item::Future(future) => {
                let loop_ = Self::loop_object(slf)?;
                let resolve = set_result_unless_cancelled(py)?;
                let handle =
                    kinds()
                        .handle_class(py)
                        .call1((resolve, (future, py.None()), loop_))?;
                Ok(handle.unbind())
            }
        }
    }

    fn clear(slf: &Bound<'_, Self>) {
        // Released outside the borrow: a handle's last reference may run
        // Python finalizers that schedule callbacks.
        let dropped = std::mem::take(&mut slf.borrow_mut().ready);
        for item in dropped {
            item.release(slf.py());
        }
    }

    fn __len__(&self) -> usize {
        self.ready.len()
    }

    fn __bool__(&self) -> bool {
        !self.ready.is_empty()
    }

    // -- scheduling --

    /// `loop._call_soon(callback, args, context)` outside debug mode.
    fn push_new<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let loop_ = Self::loop_object(slf)?;
        Self::queue_new_handle(slf, &loop_, callback, args, context)
    }

    /// `loop.call_at` outside debug mode.
    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let seconds = seconds_of(when)?;
        Self::new_timer(slf, Some(when), seconds, callback, args, context)
    }

    /// `loop.call_later` outside debug mode.
    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later<'py>(
        slf: &Bound<'py, Self>,
        delay: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = LoopCore::now_ns() as f64 / 1e9;
        if let Ok(delay) = delay.cast_exact::<PyFloat>() {
            // What `asyncio.sleep` and most callers pass: the float addition
            // below, without its two float objects.
            let seconds = now + delay.value();
            if seconds.is_nan() {
                return Err(PyValueError::new_err("delay must not be NaN"));
            }
            return Self::new_timer(slf, None, seconds, callback, args, context);
        }
        // `self.time() + delay` with Python's own addition, so that what
        // asyncio accepts (int, Fraction) and refuses (Decimal) is the same
        // here.
        let when = PyFloat::new(py, now).add(delay)?;
        let seconds = seconds_of(&when).map_err(|error| {
            if error.is_instance_of::<PyValueError>(py) {
                PyValueError::new_err("delay must not be NaN")
            } else {
                error
            }
        })?;
        Self::new_timer(slf, Some(&when), seconds, callback, args, context)
    }

    /// Puts a timer handle made in Python (debug mode) in the wheel at
    /// `when`; returns its key.
    fn add_timer(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        timer: Py<PyAny>,
    ) -> PyResult<u64> {
        Self::loop_object(slf)?; // a closed loop says so first
        if !kinds().is_timer(timer.bind(slf.py())) {
            return Err(PyTypeError::new_err(
                "not a timer handle of this loop class",
            ));
        }
        let held = Held::new(timer, false);
        Self::insert(slf, seconds_of(when)?, Item::Handle(held))
    }

    /// Puts `future` in the wheel, resolved (`set_result(None)`) at `when`;
    /// returns its key (the `erlang_asyncio.sleep` fast path).
    fn add_future(slf: &Bound<'_, Self>, when: f64, future: Py<PyAny>) -> PyResult<u64> {
        Self::insert(slf, when, Item::Future(future))
    }

    /// `loop._sleep_future(delay)` outside debug mode: a new future of the
    /// loop resolved `delay` seconds from now straight from the wheel, and
    /// its key (the `erlang_asyncio.sleep` fast path).
    fn sleep_future<'py>(slf: &Bound<'py, Self>, delay: f64) -> PyResult<(u64, Bound<'py, PyAny>)> {
        if delay.is_nan() {
            return Err(PyValueError::new_err("delay must not be NaN"));
        }
        Self::loop_object(slf)?; // a closed loop says so first
        let kwargs = Self::future_kwargs(slf)?;
        Self::sleep_entry(slf, kwargs, delay)
    }

    /// `loop.create_future()` as BaseEventLoop has it, without its frame.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = Self::future_kwargs(slf)?;
        future_class(slf.py())?.call((), Some(&kwargs))
    }

    /// `loop.get_debug()` while the native paths are in use: they are used
    /// outside debug mode only. (Every `Handle.cancel()` asks.)
    #[staticmethod]
    fn get_debug() -> bool {
        false
    }

    /// `loop.time()`: CLOCK_MONOTONIC in seconds, as `time.monotonic()`.
    #[staticmethod]
    fn time() -> f64 {
        LoopCore::now_ns() as f64 / 1e9
    }

    /// Takes a key out of the wheel; False if it already fired or left.
    pub(crate) fn cancel(slf: &Bound<'_, Self>, key: u64) -> bool {
        Self::cancel_if(slf, key, |_| true)
    }

    /// `loop._timer_handle_cancelled(handle)`: our scheduled timer handles
    /// leave the wheel; anything else is ignored.
    pub(crate) fn timer_cancelled(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> bool {
        let Some(key) = kinds().unschedule(handle) else {
            return false;
        };
        // The key must name this very handle (its `_key` is writable).
        Self::cancel_if(slf, key, |id| Item::is_handle(id, handle))
    }

    // -- one iteration --

    /// The I/O half of an iteration: waits for events (no wait when
    /// callbacks are ready or the loop is stopping), hands fd readiness to
    /// its reader and writer handles and makes fired timers ready. A wait
    /// interrupted for an exception of this thread's raises it.
    fn poll(slf: &Bound<'_, Self>) -> PyResult<()> {
        if Self::poll_io(slf)? {
            Self::raise_pending(slf.py())?;
        }
        Ok(())
    }

    /// Runs the callbacks that are ready now (not those they schedule), as
    /// `Handle._run` would, errors to the loop's exception handler.
    fn run_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (todo, native) = {
            let mut this = slf.borrow_mut();
            release_if_drained(&mut this.ready);
            (this.ready.len(), this.native.clone_ref(py))
        };
        let stock_run = kinds().stock_run_intact(py);
        if todo == 0 {
            if let Some(raised) = native.get().take_boundary_raise(py) {
                return Err(raised);
            }
        }
        for _ in 0..todo {
            // Out of `run_forever` between two callbacks, the ready queue
            // whole (see `boundary_raise`).
            if let Some(raised) = native.get().take_boundary_raise(py) {
                return Err(raised);
            }
            let Some(item) = slf.borrow_mut().ready.pop_front() else {
                break;
            };
            let held = match item {
                Item::Handle(held) => held,
                Item::Future(future) => {
                    let future = future.bind(py);
                    // Only a C `Future` runs no Python code as it completes.
                    let _bare = (kinds().is_c_future(future) && Self::call_soon_is_ours(slf))
                        .then(|| BareCalls::for_future(future));
                    resolve_sleep(future)?;
                    continue;
                }
                Item::Call(call) => {
                    Self::run_bare(slf, call, stock_run)?;
                    continue;
                }
            };
            let ran = kinds().run(held.handle.bind(py), stock_run, || {
                Self::call_soon_is_ours(slf)
                    .then(|| slf.borrow().loop_.as_ref().map(|l| l.clone_ref(py)))
                    .flatten()
            });
            if let Ok(Ran::Failed(error)) = ran {
                // The exception handler may keep the handle: under the GC.
                held.track(py);
                let handle = held.handle.bind(py).clone();
                drop(held);
                let loop_ = Self::loop_object(slf)?;
                let exception = error.into_value(py).into_bound(py);
                // Reported from inside the `except`, as Handle._run does: the
                // handler sees it in `sys.exc_info()` (`logging.exception`).
                let _handling = Handling::start(&exception);
                loop_.call_method1(intern!(py, "_report_callback_error"), (&handle, exception))?;
                continue;
            }
            // `release` tells by its reference count whether others hold it.
            held.release(py);
            ran?;
        }
        Ok(())
    }

    /// The loop's `__dict__` and the native paths `_sleep_future`,
    /// `call_soon` and `_run_once` as the loop put them there (None: not in
    /// use).
    fn set_native_paths(
        slf: &Bound<'_, Self>,
        loop_dict: Py<PyDict>,
        sleep_future: Option<Py<PyAny>>,
        call_soon: Option<Py<PyAny>>,
        run_once: Option<Py<PyAny>>,
    ) {
        let replaced = {
            let mut this = slf.borrow_mut();
            (
                this.loop_dict.replace(loop_dict),
                std::mem::replace(&mut this.installed_sleep_future, sleep_future),
                std::mem::replace(&mut this.installed_call_soon, call_soon),
                std::mem::replace(&mut this.installed_run_once, run_once),
            )
        };
        // Dropped with no borrow held.
        drop(replaced);
    }

    /// `run_forever` starts (True) or ends (False). The handles made while
    /// the loop runs stay out of the GC; when it stops, those still pending
    /// go back under it, so that an idle loop's handles are as asyncio's.
    fn set_running(slf: &Bound<'_, Self>, running: bool) {
        let py = slf.py();
        let last_context = if running {
            None
        } else {
            slf.borrow_mut().last_context.take()
        };
        // Freeing a context may run Python code: no borrow held.
        drop(last_context);
        if !running {
            // This thread's remembered running loop: this one, done.
            running_loop::forget();
        }
        let mut this = slf.borrow_mut();
        this.running = running;
        if !running {
            // Tracking allocates nothing and runs no Python.
            for item in &this.ready {
                item.track(py);
            }
            // SAFETY: live ids; the loop's lock is held meanwhile.
            this.native
                .get()
                .for_each_timer_id(|id| unsafe { Item::track_id(py, id) });
        }
    }

    /// Makes ready the timer handles whose `when` is at most `when`, out of
    /// the wheel: a loop whose `time` was replaced on the instance (a test
    /// faking the clock) fires by that clock, as asyncio's `_run_once`
    /// does, besides the wheel's own deadlines. Returns how many, and the
    /// earliest `when` of those left (`None`: none). O(timers).
    fn fire_due_by(slf: &Bound<'_, Self>, when: f64) -> PyResult<(usize, Option<f64>)> {
        let py = slf.py();
        let mut earliest_left = f64::INFINITY;
        let due = slf.borrow().native.get().take_timers_where(|id| {
            // SAFETY: a live id, read under the loop's lock (the GIL held).
            let Some(handle) = (unsafe { Item::handle_of_id(py, id) }) else {
                return false;
            };
            if !kinds().is_timer(&handle) {
                return false;
            }
            let handle_when = kinds().float_when(&handle);
            if handle_when <= when {
                return true;
            }
            earliest_left = earliest_left.min(handle_when);
            false
        });
        let count = due.len();
        Self::fire(slf, due)?;
        Ok((count, earliest_left.is_finite().then_some(earliest_left)))
    }

    /// Makes the timers a direct `selector.select()` fired ready.
    fn fire_timers(slf: &Bound<'_, Self>) -> PyResult<()> {
        let fired = slf.borrow().native.get().take_fired();
        Self::fire(slf, fired)
    }

    /// `loop._run_once` outside debug mode. Called by `run_forever`'s
    /// `while True: self._run_once(); if self._stopping: break`, it runs
    /// the next iterations of that loop itself, as long as nothing would
    /// make the Python loop act otherwise (see `iterates_again`), and at
    /// most `ITERATIONS_PER_RUN_ONCE`: an iteration costs no bytecode,
    /// call and attribute look-up of Python's. A call made inside an
    /// iteration (a callback calling `loop._run_once()`) runs one.
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let outermost = !std::mem::replace(&mut slf.borrow_mut().in_run_once, true);
        let _leave = outermost.then(|| LeaveRunOnce(slf));
        Self::poll(slf)?;
        Self::run_ready(slf)?;
        if outermost {
            for _ in 1..ITERATIONS_PER_RUN_ONCE {
                if !Self::iterates_again(slf)? {
                    break;
                }
                Self::poll(slf)?;
                Self::run_ready(slf)?;
            }
        }
        Ok(())
    }

    /// The loop closed: its timers are no longer scheduled; new work fails.
    fn close(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let (timers, ready, last_context) = {
            let mut this = slf.borrow_mut();
            this.closed = true;
            (
                this.take_all_timers(py),
                std::mem::take(&mut this.ready),
                this.last_context.take(),
            )
        };
        drop(last_context);
        for item in timers {
            if let Item::Handle(held) = &item {
                kinds().mark_fired(held.handle.bind(py));
            }
            item.release(py);
        }
        for item in ready {
            item.release(py);
        }
    }

    /// Lets go of the loop, its `__dict__` and the native paths put there
    /// (the loop's `close()`, once the loop is closed): the loop and its
    /// runner hold each other, and a closed loop is then freed when its
    /// last reference goes, as asyncio's is, not at the next collection.
    /// Everything after this answers as a closed loop (a kept
    /// `create_future` still makes futures while the loop lives: see
    /// `detached_loop`).
    fn detach(slf: &Bound<'_, Self>) {
        let py = slf.py();
        // The weak reference is made with no borrow held: its allocation
        // may run the GC, whose finalizers may call back into the runner.
        let loop_ = slf.borrow().loop_.as_ref().map(|loop_| loop_.clone_ref(py));
        let weak = loop_
            .and_then(|loop_| PyWeakrefReference::new(loop_.bind(py)).ok())
            .map(Bound::unbind);
        let released = {
            let mut this = slf.borrow_mut();
            this.closed = true;
            if weak.is_some() {
                this.detached_loop = weak;
            }
            (
                this.loop_.take(),
                this.loop_dict.take(),
                this.installed_sleep_future.take(),
                this.installed_call_soon.take(),
                this.installed_run_once.take(),
                this.future_kwargs.take(),
                this.last_context.take(),
            )
        };
        // Dropped with no borrow held: the loop's finalizer may run now.
        drop(released);
    }

    /// How many timer handles and futures this runner has in the wheel.
    fn scheduled(&self) -> (usize, usize) {
        let (mut handles, mut futures) = (0, 0);
        self.native.get().for_each_timer_id(|id| {
            if Item::is_future(id) {
                futures += 1;
            } else {
                handles += 1;
            }
        });
        (handles, futures)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(loop_) = &self.loop_ {
            visit.call(loop_)?;
        }
        visit.call(&self.fd_to_key)?;
        if let Some(context) = &self.last_context {
            visit.call(context)?;
        }
        for installed in [
            &self.installed_sleep_future,
            &self.installed_call_soon,
            &self.installed_run_once,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(installed)?;
        }
        if let Some(loop_dict) = &self.loop_dict {
            visit.call(loop_dict)?;
        }
        if let Some(kwargs) = &self.future_kwargs {
            visit.call(kwargs)?;
        }
        // While the loop runs, neither its ready queue nor its timers are
        // walked: most are handles it made, out of the GC anyway, yet a look
        // at each is a cache miss (a million callbacks queued: a collection
        // of the young generation cost more than the callbacks), and the
        // timers' walk holds the loop's lock, which the Erlang scheduler
        // ticking the loop would wait for. Not reporting an object only
        // keeps it alive, and the loop, on its thread's stack, is not
        // garbage anyway; what is in a cycle through a queued callback is
        // collected once it ran, through a timer once the loop stops.
        if self.running {
            return Ok(());
        }
        for item in &self.ready {
            item.visit(&visit)?;
        }
        let mut visited = Ok(());
        self.native.get().for_each_timer_id(|id| {
            if visited.is_ok() {
                // SAFETY: a live id, under the loop's lock.
                visited = unsafe { Item::visit_id(id, &visit) };
            }
        });
        visited
    }

    fn __clear__(&mut self) {
        self.loop_ = None;
        self.last_context = None;
        self.installed_sleep_future = None;
        self.installed_call_soon = None;
        self.installed_run_once = None;
        self.loop_dict = None;
        self.future_kwargs = None;
        let ready = std::mem::take(&mut self.ready);
        Python::attach(|py| {
            ready.into_iter().for_each(|item| item.release(py));
            for item in self.take_all_timers(py) {
                item.release(py);
            }
        });
    }
}
