//! Raising an exception in another Python thread at its next bytecode:
//! `_erlang.interrupt_thread(ident)` (Ctrl-C of `bin/erlang-python`, as
//! CPython's SIGINT handler raises `KeyboardInterrupt` in its main thread;
//! the VM owns the signals and no thread of ours is CPython's main thread)
//! and the `TimeoutError` of a timed-out `py:call` (`job.rs`).
//!
//! A thread asleep in an ErlangEventLoop's wait runs no bytecode until an
//! event comes, maybe in an hour: its loop is woken too, and returns to
//! `run_forever`, where the exception is raised.

use std::os::raw::{c_long, c_ulong};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `_erlang.interrupt_thread(ident)`: true when `ident` (a
/// `threading.get_ident()`) names a live Python thread, whose
/// `KeyboardInterrupt` is now pending (and whose loop, if it waits in one,
/// is woken).
#[pyfunction]
pub fn interrupt_thread(py: Python<'_>, ident: c_ulong) -> bool {
    let exception = py.get_type::<pyo3::exceptions::PyKeyboardInterrupt>();
    let marked = set_async_exception(py, ident, exception.as_any());
    if marked {
        wake_loop_of(py, ident);
    }
    marked
}

/// Marks `exception` pending in thread `ident`; true if that thread exists.
pub fn set_async_exception(_py: Python<'_>, ident: c_ulong, exception: &Bound<'_, PyAny>) -> bool {
    // SAFETY: the GIL is held (`_py`); `exception` is a live object for the
    // call, which only counts the thread states it marks.
    unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(ident as c_long, exception.as_ptr()) == 1 }
}

/// Wakes the ErlangEventLoop running in thread `ident`, if any
/// (`erlang_loop._loop.wake_thread_loop`), for an exception just marked
/// pending there. No loop exists before `erlang_loop` is imported. Runs
/// Python code: call it with no lock held that the thread may need.
pub fn wake_loop_of(py: Python<'_>, ident: c_ulong) {
    let woken = (|| -> PyResult<()> {
        let modules = py.import("sys")?.getattr("modules")?;
        let modules = modules.cast::<PyDict>()?;
        if let Some(module) = modules.get_item("erlang_loop._loop")? {
            module.call_method1("wake_thread_loop", (ident,))?;
        }
        Ok(())
    })();
    if let Err(error) = woken {
        // Nobody to report it to: the thread stays interrupted, and raises
        // at its next bytecode as before.
        tracing::warn!(%error, thread = ident, "could not wake the interrupted thread's event loop");
    }
}
