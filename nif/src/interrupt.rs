//! `_erlang.interrupt_thread(ident)`: raises `KeyboardInterrupt` in the
//! Python thread `ident` at its next bytecode, as CPython's SIGINT handler
//! raises it in its main thread. The VM owns the signals and no thread of
//! ours is CPython's main thread: `bin/erlang-python` sends Ctrl-C to the
//! program's thread this way.

use std::os::raw::{c_long, c_ulong};

use pyo3::prelude::*;

/// True when `ident` (a `threading.get_ident()`) names a live Python thread,
/// whose `KeyboardInterrupt` is now pending.
#[pyfunction]
pub fn interrupt_thread(py: Python<'_>, ident: c_ulong) -> bool {
    let exception = py.get_type::<pyo3::exceptions::PyKeyboardInterrupt>();
    // SAFETY: the GIL is held (`py`); `exception` is a live type object for
    // the call, which only counts the thread states it marks.
    let marked =
        unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(ident as c_long, exception.as_ptr()) };
    marked == 1
}
