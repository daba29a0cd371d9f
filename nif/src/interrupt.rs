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

use erlang_python::py::native_loop::NativeLoop;
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
    let marked = raise_in_thread(py, ident, exception.as_any(), native.as_ref());
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
    let found = (|| -> PyResult<Option<Py<NativeLoop>>> {
        let modules = py.import("sys")?.getattr("modules")?;
        let Some(module) = modules.cast::<PyDict>()?.get_item("erlang_loop._loop")? else {
            return Ok(None);
        };
        let native = module.call_method1("native_loop_of", (ident,))?;
        if native.is_none() {
            return Ok(None);
        }
        Ok(Some(native.cast_into::<NativeLoop>()?.unbind()))
    })();
    found.unwrap_or_else(|error| {
        // Nobody to report it to: the thread is still interrupted, at its
        // next bytecode, without its loop woken.
        tracing::warn!(%error, thread = ident, "could not find the interrupted thread's event loop");
        None
    })
}

/// Marks `exception` pending in thread `ident` and interrupts the wait of
/// `native`, its loop found by [`native_loop_of`], with nothing in between
/// that could run Python code. True if that thread exists.
pub fn raise_in_thread(
    _py: Python<'_>,
    ident: c_ulong,
    exception: &Bound<'_, PyAny>,
    native: Option<&Py<NativeLoop>>,
) -> bool {
    // SAFETY: the GIL is held (`_py`); `exception` is a live object for the
    // call, which only counts the thread states it marks.
    let marked =
        unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(ident as c_long, exception.as_ptr()) == 1 };
    if marked {
        if let Some(native) = native {
            native.get().interrupt_wait();
        }
    }
    marked
}
