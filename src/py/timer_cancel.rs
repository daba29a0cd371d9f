//! `cancel()` of our `TimerHandle` subclass, native.
//!
//! asyncio's `TimerHandle.cancel` is two Python frames (it calls
//! `Handle.cancel` through `super()`) around two calls into the loop; the
//! ASGI timeout pattern (`wait_for`, `asyncio.timeout`) cancels most timers
//! it makes, so that is a cost paid per request. This does the same steps in
//! the same order, as a method descriptor of the class (no bound method
//! is made per call):
//!
//! 1. nothing if the handle is already cancelled;
//! 2. `loop._timer_handle_cancelled(handle)` (our loop takes the timer out of
//!    the wheel; a subclass overriding it is called);
//! 3. in debug mode, asyncio's own `Handle.cancel` (it records the repr);
//!    otherwise `_cancelled = True` and the callback and arguments dropped.
//!
//! If `asyncio.TimerHandle.cancel` or `asyncio.Handle.cancel` were replaced
//! after start-up (a tracer, a test double), the current
//! `asyncio.TimerHandle.cancel` runs instead, so the patch is honoured.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use super::runner::handle_kinds;

/// asyncio's classes and their `cancel` as they were at start-up.
struct Stock {
    timer_class: Py<PyType>,
    handle_class: Py<PyType>,
    timer_cancel: Py<PyAny>,
    handle_cancel: Py<PyAny>,
}

fn stock(py: Python<'_>) -> PyResult<&'static Stock> {
    static STOCK: PyOnceLock<Stock> = PyOnceLock::new();
    STOCK.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let timer_class = events.getattr("TimerHandle")?.cast_into::<PyType>()?;
        let handle_class = events.getattr("Handle")?.cast_into::<PyType>()?;
        Ok(Stock {
            timer_cancel: timer_class.getattr("cancel")?.unbind(),
            handle_cancel: handle_class.getattr("cancel")?.unbind(),
            timer_class: timer_class.unbind(),
            handle_class: handle_class.unbind(),
        })
    })
}

/// The method table entry; made once, lives as long as the process (the
/// descriptor points at it).
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the entry is written once, before any descriptor uses it, and only
// read afterwards; its pointers are to static strings and a function.
unsafe impl Sync for MethodDef {}
// SAFETY: as above.
unsafe impl Send for MethodDef {}

const NAME: &CStr = c"cancel";
const DOC: &CStr = c"Cancel the call (native TimerHandle.cancel of erlang_loop).";

/// `_erlang_loop.timer_cancel_method(cls)`: a `cancel` method descriptor for
/// `cls`, a subclass of `asyncio.TimerHandle` (set it as `cls.cancel`).
#[pyfunction]
pub fn timer_cancel_method(cls: &Bound<'_, PyType>) -> PyResult<Py<PyAny>> {
    let py = cls.py();
    let stock = stock(py)?;
    if !cls.is_subclass(stock.timer_class.bind(py))? {
        return Err(PyRuntimeError::new_err(
            "timer_cancel_method needs a subclass of asyncio.TimerHandle",
        ));
    }
    static DEF: OnceLock<MethodDef> = OnceLock::new();
    let def = DEF.get_or_init(|| {
        MethodDef(ffi::PyMethodDef {
            ml_name: NAME.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: cancel_trampoline,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: DOC.as_ptr(),
        })
    });
    // SAFETY: `cls` is a live type; `def` is never freed or moved (a
    // static), and CPython only reads it.
    let descr = unsafe {
        ffi::PyDescr_NewMethod(
            cls.as_type_ptr(),
            &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
        )
    };
    // SAFETY: a new reference or null with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, descr) }.map(Bound::unbind)
}

/// The C entry point. The method descriptor checked that `slf` is an
/// instance of the class (or a subclass) it was made for.
unsafe extern "C" fn cancel_trampoline(
    slf: *mut ffi::PyObject,
    _no_args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the thread attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `slf` is a live borrowed reference for the call.
    let handle = unsafe { Bound::from_borrowed_ptr(py, slf) };
    let result = catch_unwind(AssertUnwindSafe(|| cancel(&handle)))
        .unwrap_or_else(|_| Err(PyRuntimeError::new_err("TimerHandle.cancel panicked")));
    match result {
        Ok(()) => py.None().into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

fn cancel(handle: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = handle.py();
    let stock = stock(py)?;
    let timer_cancel = stock.timer_class.bind(py).getattr(intern!(py, "cancel"))?;
    let handle_cancel = stock.handle_class.bind(py).getattr(intern!(py, "cancel"))?;
    let Some(kinds) = handle_kinds() else {
        return timer_cancel.call1((handle,)).map(drop);
    };
    if !timer_cancel.is(&stock.timer_cancel) || !handle_cancel.is(&stock.handle_cancel) {
        return timer_cancel.call1((handle,)).map(drop);
    }
    if kinds.is_cancelled(handle)? {
        return Ok(());
    }
    let loop_ = handle.getattr(intern!(py, "_loop"))?;
    loop_.call_method1(intern!(py, "_timer_handle_cancelled"), (handle,))?;
    if loop_.call_method0(intern!(py, "get_debug"))?.is_truthy()? {
        return handle_cancel.call1((handle,)).map(drop);
    }
    kinds.mark_cancelled(handle)
}
