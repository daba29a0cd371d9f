//! One `contextvars.Context` for the timers scheduled in the same context.
//!
//! asyncio gives each handle made without `context=` its own copy of the
//! current context (`copy_context()`): a 64-byte object per pending timer,
//! though most timers never run (a timeout cancelled) and the others run
//! their callback in a context nobody else ever sees. A copy is a new
//! `Context` over the same variables, an immutable map, so the timers
//! scheduled while the current context holds the same map can share one
//! snapshot of it, as long as no code runs in the shared snapshot or gets
//! hold of it: a timer whose `_context` is a shared snapshot gets a copy of
//! its own when it runs or when its `_context` is read (`timer_handle`),
//! unless it is by then the snapshot's only holder. What the callback sees
//! is what asyncio gives it: a context of its own with the variables of
//! when it was scheduled.
//!
//! Which map a context holds is not in CPython's API: the layout of its
//! context object is checked once ([`sharing_available`]); where it does
//! not match, each timer gets its own copy, as in asyncio.

use std::ffi::c_int;
use std::mem::{offset_of, size_of};
use std::ptr::addr_of_mut;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::once::get_or_make;

/// CPython's `PyContext` (`Include/internal/pycore_context.h`, unchanged
/// from 3.7 to 3.13).
#[repr(C)]
struct ContextObject {
    ob_base: ffi::PyObject,
    ctx_prev: *mut ffi::PyObject,
    ctx_vars: *mut ffi::PyObject,
    ctx_weakreflist: *mut ffi::PyObject,
    ctx_entered: c_int,
}

/// The variables of `context`, an immutable map: two contexts holding the
/// same map (the same object) hold the same variables with the same values.
///
/// # Safety
/// `context` is a live, exact `Context` and [`sharing_available`] said yes.
unsafe fn variables(context: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: by the contract, the object is laid out as `ContextObject`.
    unsafe { (*(context as *mut ContextObject)).ctx_vars }
}

/// Can timers share snapshots here? The context object must be laid out as
/// [`ContextObject`] (its size and weak-list offset say so), and behave so:
/// a copy holds the same map, and setting a variable gives a context a new
/// one.
///
/// The check allocates, and so may run a finalizer that schedules a timer
/// and comes back here: see `once`.
pub(crate) fn sharing_available(py: Python<'_>) -> bool {
    static AVAILABLE: PyOnceLock<bool> = PyOnceLock::new();
    get_or_make(&AVAILABLE, py, || Ok(layout_matches(py).unwrap_or(false))).is_ok_and(|&yes| yes)
}

fn layout_matches(py: Python<'_>) -> PyResult<bool> {
    let context_type = addr_of_mut!(ffi::PyContext_Type);
    // SAFETY: reading two fields of a static type object.
    let (size, weaklist) = unsafe {
        (
            (*context_type).tp_basicsize,
            (*context_type).tp_weaklistoffset,
        )
    };
    if size != size_of::<ContextObject>() as isize
        || weaklist != offset_of!(ContextObject, ctx_weakreflist) as isize
    {
        return Ok(false);
    }
    // SAFETY: C API calls under the GIL; every result is checked, owned by
    // a `Bound` at once, and read only as the layout checked above says.
    unsafe {
        let first = Bound::from_owned_ptr_or_err(py, ffi::PyContext_New())?;
        let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(first.as_ptr()))?;
        let shared = variables(first.as_ptr());
        if shared.is_null() || variables(copy.as_ptr()) != shared {
            return Ok(false);
        }
        let variable = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyContextVar_New(c"_erlang_loop.layout_probe".as_ptr(), std::ptr::null_mut()),
        )?;
        if ffi::PyContext_Enter(first.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        let token = ffi::PyContextVar_Set(variable.as_ptr(), ffi::Py_None());
        let set = Bound::from_owned_ptr_or_err(py, token);
        if ffi::PyContext_Exit(first.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        set?;
        let changed = variables(first.as_ptr());
        Ok(!changed.is_null() && changed != shared && variables(copy.as_ptr()) == shared)
    }
}

/// A copy of the current context, as `contextvars.copy_context()`.
pub(crate) fn copy_current(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: returns a new reference, or null with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// The snapshot a new timer shares: `last` if it holds the same variables
/// as `fresh` (a copy of the current context), else `fresh`, which becomes
/// `last`. Also returns what is no longer needed (`fresh`, or the `last`
/// it replaced), for the caller to drop where freeing a context may run
/// Python code (its variables' finalizers).
///
/// Only while [`sharing_available`]. `last` keeps its snapshot alive: a
/// strong reference, so that a map held by it is never freed and reused
/// for another while compared by address.
pub(crate) fn share<'py>(
    last: &mut Option<Py<PyAny>>,
    fresh: Bound<'py, PyAny>,
) -> (Bound<'py, PyAny>, Option<Bound<'py, PyAny>>) {
    let py = fresh.py();
    if let Some(snapshot) = last {
        // SAFETY: both are exact contexts (`copy_current` made them) and
        // sharing is available (the caller's contract).
        if unsafe { variables(snapshot.as_ptr()) == variables(fresh.as_ptr()) } {
            return (snapshot.bind(py).clone(), Some(fresh));
        }
    }
    let replaced = last.replace(fresh.clone().unbind());
    (fresh, replaced.map(|old| old.into_bound(py)))
}

/// Is the timer holding `context` its only holder? Counts the reference an
/// untracked context holds of itself (see `HandleKinds::untrack`).
///
/// # Safety
/// `context` is a live object; the GIL is held.
pub(crate) unsafe fn held_alone(context: *mut ffi::PyObject) -> bool {
    // SAFETY: by the contract.
    unsafe {
        let own = isize::from(ffi::PyObject_GC_IsTracked(context) == 0);
        ffi::Py_REFCNT(context) == 1 + own
    }
}
