//! Raising an exception in another Python thread at its next bytecode:
//! `_erlang.interrupt_thread(ident)` (Ctrl-C of `bin/erlang-python`, as
//! CPython's SIGINT handler raises `KeyboardInterrupt` in its main thread;
//! the VM owns the signals and no thread of ours is CPython's main thread)
//! and the `TimeoutError` of a timed-out `py:call` (`job.rs`).
//!
//! A thread asleep in an ErlangEventLoop's wait runs no bytecode until an
//! event comes, maybe in an hour: its loop's wait is interrupted too, and
//! the loop raises the exception before it runs another callback. The loop
//! is looked up first (that runs Python code); the exception and the
//! interrupt are then set back to back, with the GIL held and no Python
//! code in between, so that the loop's thread sees both or neither.

use std::os::raw::{c_long, c_ulong};
use std::time::Duration;

use erlang_python::py::native_loop::NativeLoop;
use erlang_python::py::sys_modules::{imported, sys_attribute};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `_erlang.interrupt_thread(ident)`: true when `ident` (a
/// `threading.get_ident()`) names a live Python thread, whose
/// `KeyboardInterrupt` is now pending (and whose loop, if it waits in one,
/// is woken for it).
#[pyfunction]
pub fn interrupt_thread(py: Python<'_>, ident: c_ulong) -> bool {
    let native = native_loop_of(py, ident);
    let exception = py.get_type::<pyo3::exceptions::PyKeyboardInterrupt>();
    let marked = retry_ambiguous(py, || {
        raise_in_thread(py, ident, exception.as_any(), native.as_ref())
    }) == Mark::Marked;
    if marked {
        interrupt_again(py, ident, native.as_ref());
    }
    marked
}

/// After [`raise_in_thread`]: interrupts the loop thread `ident` runs now
/// if it is not `interrupted`, the one looked up before (the lookup ran
/// Python code, during which the thread may have gone on to another loop's
/// wait). This mark comes after the exception was set, not with it: the
/// fallback for that rare case. Not for the calling thread itself, whose
/// exception the lookup's Python code would raise (and lose).
pub fn interrupt_again(py: Python<'_>, ident: c_ulong, interrupted: Option<&Py<NativeLoop>>) {
    // SAFETY: reads the calling thread's identifier; nothing is touched.
    if ident == unsafe { pyo3::ffi::PyThread_get_thread_ident() } {
        return;
    }
    if let Some(now) = native_loop_of(py, ident) {
        if !interrupted.is_some_and(|before| before.is(&now)) {
            now.get().interrupt_wait();
        }
    }
}

/// The native loop of the ErlangEventLoop running in thread `ident`, if
/// any (`erlang_loop._loop.native_loop_of`). No loop exists before
/// `erlang_loop` is imported. Runs Python code: call it with no lock held
/// that the thread may need.
pub fn native_loop_of(py: Python<'_>, ident: c_ulong) -> Option<Py<NativeLoop>> {
    // Nobody to report an error to: the thread is still interrupted, at its
    // next bytecode, without its loop woken.
    call_loop_module(py, "native_loop_of", ident, |native| {
        if native.is_none() {
            return Ok(None);
        }
        Ok(Some(native.cast_into::<NativeLoop>()?.unbind()))
    })
    .flatten()
}

/// `erlang_loop._loop.<function>(ident)`, its result read by `read`; None
/// before `erlang_loop` is imported (no loop exists then), or on an error,
/// logged.
fn call_loop_module<T>(
    py: Python<'_>,
    function: &str,
    ident: c_ulong,
    read: impl FnOnce(Bound<'_, PyAny>) -> PyResult<T>,
) -> Option<T> {
    let result = (|| -> PyResult<Option<T>> {
        let Some(module) = imported(py, "erlang_loop._loop")? else {
            return Ok(None);
        };
        read(module.call_method1(function, (ident,))?).map(Some)
    })();
    result.unwrap_or_else(|error| {
        tracing::warn!(%error, thread = ident, function, "could not reach the interrupted thread's event loop");
        None
    })
}

/// Asks the ErlangEventLoop that thread `ident` runs in
/// `run_until_complete` (`asyncio.run`) to cancel the future it runs, as
/// asyncio answers Ctrl-C (`erlang_loop._loop.cancel_main_of`): whether it
/// was asked. Runs Python code, as [`native_loop_of`].
pub fn cancel_main_of(py: Python<'_>, ident: c_ulong) -> bool {
    call_loop_module(py, "cancel_main_of", ident, |asked| asked.is_truthy()).unwrap_or(false)
}

/// What [`raise_in_thread`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The exception is pending in that thread.
    Marked,
    /// No Python thread has that identifier.
    NoThread,
    /// A thread was being started, whose state may still carry that
    /// identifier, or more than one state had it (the marks were taken
    /// back): try again once the GIL was let go (see [`raise_in_thread`]).
    Ambiguous,
    /// The thread runs importlib's lock code (see `in_import_locking`):
    /// try again once the GIL was let go. Unlike [`Mark::Ambiguous`], this
    /// may last as long as another thread's import of a module the thread
    /// waits for, seconds or more.
    Importing,
}

/// How many times [`retry_ambiguous`] tries, [`AMBIGUOUS_PAUSE`] apart.
const AMBIGUOUS_TRIES: u32 = 2000;
const AMBIGUOUS_PAUSE: Duration = Duration::from_millis(1);

/// Marks `exception` pending in thread `ident` and interrupts the wait of
/// `native`, its loop found by [`native_loop_of`], with nothing in between
/// that could run Python code.
///
/// A thread that `ident` is starting carries its creator's identifier
/// until it runs (CPython 3.11 sets its own first thing, without the GIL),
/// and CPython marks the first thread state it finds with it, the newest:
/// the new thread would die before it says it started, and its creator
/// would wait for that in C for good (a pool thread lost per timed-out
/// `py:call` starting a thread). So nothing is marked while a thread is
/// being started (`threading._limbo`, where `Thread.start` keeps it until
/// it runs); the caller tries again. Several marks are taken back
/// (CPython's documented way) and tried again too.
pub fn raise_in_thread(
    py: Python<'_>,
    ident: c_ulong,
    exception: &Bound<'_, PyAny>,
    native: Option<&Py<NativeLoop>>,
) -> Mark {
    {
        // The looks allocate; a collection there could run a finalizer's
        // Python code, which may let the GIL go while our caller holds the
        // job's lock (the import hook's deadlock, see `in_import_locking`).
        let _paused = GcPaused::new();
        if threads_starting(py) {
            return Mark::Ambiguous;
        }
        if in_import_locking(py, ident) {
            return Mark::Importing;
        }
    }
    // SAFETY: the GIL is held (`py`); `exception` is a live object for the
    // call, which only counts the thread states it marks; null takes the
    // marks back.
    let marked =
        unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(ident as c_long, exception.as_ptr()) };
    match marked {
        0 => Mark::NoThread,
        1 => {
            if let Some(native) = native {
                native.get().interrupt_wait();
            }
            Mark::Marked
        }
        _ => {
            // SAFETY: as above.
            unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(ident as c_long, std::ptr::null_mut()) };
            Mark::Ambiguous
        }
    }
}

/// Does thread `ident` run importlib's own code (`<frozen
/// importlib._bootstrap>`, its innermost Python frame) now? An exception
/// raised there at a bytecode can break a module's import lock for good:
/// landing in `_ModuleLock.acquire` between its taking the lock's `wakeup`
/// and giving it back, it left `wakeup` taken with no waiter counted, and
/// every later importer of that module waited for it in C, forever (a pool
/// thread lost each; 30 of 32 after a race hunt of timed-out first
/// imports). Such a thread is marked once it has left that code (the
/// caller tries again): its next bytecode is then its own code's, or the
/// entry of an importlib function, before any lock is taken. Code a module
/// runs while it is imported is its own, interrupted as any. Runs no
/// Python code (the caller holds the job's lock, which a thread holding
/// the GIL waits for in `JobShared::finish`: Python code here letting the
/// GIL go was a deadlock of the whole interpreter); the GIL is held, so
/// the thread stays where it is.
fn in_import_locking(py: Python<'_>, ident: c_ulong) -> bool {
    let inside = || -> PyResult<bool> {
        // Not `py.import`, which runs `builtins.__import__` (Python code
        // under the job's lock: see `sys_attribute`).
        let frames = sys_attribute(py, c"_current_frames")?.call0()?;
        let Some(frame) = frames.cast::<PyDict>()?.get_item(ident)? else {
            return Ok(false);
        };
        let file = frame.getattr("f_code")?.getattr("co_filename")?;
        Ok(file.extract::<&str>()? == "<frozen importlib._bootstrap>")
    };
    inside().unwrap_or(false)
}

/// Python's cyclic GC held off while it lives (if it was on), so that
/// what runs meanwhile runs no finalizer. The GIL must be held.
struct GcPaused {
    was_enabled: bool,
}

impl GcPaused {
    fn new() -> Self {
        // SAFETY: called with the GIL held (our only caller holds `py`);
        // returns the previous state, sets no error.
        let was_enabled = unsafe { pyo3::ffi::PyGC_Disable() } != 0;
        GcPaused { was_enabled }
    }
}

impl Drop for GcPaused {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: as in `new`: dropped in the same scope, GIL held.
            unsafe { pyo3::ffi::PyGC_Enable() };
        }
    }
}

/// Is a `threading.Thread` started but not yet running? Its thread state
/// may still carry its creator's identifier. Runs no Python code (reads a
/// module's dict); the GIL is held, so no thread starts meanwhile.
fn threads_starting(py: Python<'_>) -> bool {
    let starting = || -> PyResult<bool> {
        let Some(threading) = imported(py, "threading")? else {
            return Ok(false);
        };
        let limbo = threading.getattr("_limbo")?;
        Ok(!limbo.cast::<PyDict>()?.is_empty())
    };
    // A threading without `_limbo` (another CPython): no such window known.
    starting().unwrap_or(false)
}

/// Runs `attempt` (a [`raise_in_thread`] and what goes with it) until it is
/// neither [`Mark::Ambiguous`] nor [`Mark::Importing`], letting the GIL go
/// between tries so that the thread being started takes its own
/// identifier (within microseconds, as a rule), or the importing thread
/// leaves importlib's lock code. Gives up after about 2 s, returning the
/// last mark (the thread is then not interrupted, as one blocked in C is
/// not; see [`retry_while_importing`] for a caller that can wait longer).
pub fn retry_ambiguous(py: Python<'_>, mut attempt: impl FnMut() -> Mark) -> Mark {
    for _ in 1..AMBIGUOUS_TRIES {
        match attempt() {
            Mark::Ambiguous | Mark::Importing => py.detach(|| std::thread::sleep(AMBIGUOUS_PAUSE)),
            done => return done,
        }
    }
    attempt()
}

/// How often [`retry_while_importing`] looks again: the most a timeout
/// comes late once its thread has left importlib's lock code (plus a GIL
/// switch), for a cost of one look at the threads' frames per pause.
const IMPORTING_PAUSE: Duration = Duration::from_millis(10);

/// Runs `attempt` as [`retry_ambiguous`] does, but gives up only on
/// [`Mark::Ambiguous`] answered [`AMBIGUOUS_TRIES`] times in a row: a
/// thread in importlib's lock code ([`Mark::Importing`]) is tried again
/// for as long as it is there, every [`AMBIGUOUS_PAUSE`] for the first
/// 2 s, then every [`IMPORTING_PAUSE`]. Such a thread waits, as a rule,
/// for another thread's import of a module, which may take any time;
/// giving up left it to run on uninterrupted once that import was done.
/// The count of ambiguous answers starts again after each other one:
/// other threads being started now and then (an executor growing) say
/// nothing of this one's import, and one of them seen at the 2 s mark, or
/// at any later look, gave the job up for good. `attempt` is to answer
/// [`Mark::NoThread`] once the exception is no longer wanted (its job
/// ended). Not for a caller that holds up Python code while it waits
/// (`interrupt_thread`).
pub fn retry_while_importing(py: Python<'_>, mut attempt: impl FnMut() -> Mark) -> Mark {
    let mut tries: u32 = 0;
    let mut ambiguous_in_a_row: u32 = 0;
    loop {
        let mark = attempt();
        match mark {
            Mark::Ambiguous if ambiguous_in_a_row + 1 < AMBIGUOUS_TRIES => ambiguous_in_a_row += 1,
            Mark::Importing => ambiguous_in_a_row = 0,
            done => return done,
        }
        tries = tries.saturating_add(1);
        let pause = if tries < AMBIGUOUS_TRIES || mark == Mark::Ambiguous {
            AMBIGUOUS_PAUSE
        } else {
            IMPORTING_PAUSE
        };
        py.detach(|| std::thread::sleep(pause));
    }
}
