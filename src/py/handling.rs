//! The exception being handled (`sys.exc_info()`) while native code calls
//! back into Python: asyncio calls its exception handlers and
//! `_fatal_error` from inside an `except` block, where
//! `logging.exception` finds the exception.

#[cfg(Py_3_11)]
use pyo3::ffi;
use pyo3::prelude::*;

/// Makes an exception the one being handled (`sys.exc_info()`) until
/// dropped, then restores the previous one.
pub(crate) struct Handling {
    #[cfg(Py_3_11)]
    previous: *mut ffi::PyObject,
}

impl Handling {
    pub(crate) fn start(exc: &Bound<'_, PyAny>) -> Handling {
        #[cfg(Py_3_11)]
        {
            // SAFETY: the thread is attached (we hold `exc`); Get returns a
            // new reference (or null), Set takes none of ours.
            unsafe {
                let previous = ffi::PyErr_GetHandledException();
                ffi::PyErr_SetHandledException(exc.as_ptr());
                Handling { previous }
            }
        }
        #[cfg(not(Py_3_11))]
        {
            let _ = exc;
            Handling {}
        }
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        #[cfg(Py_3_11)]
        // SAFETY: still attached (dropped where it was started); `previous` is
        // our reference, released after Set took its own.
        unsafe {
            ffi::PyErr_SetHandledException(self.previous);
            ffi::Py_XDECREF(self.previous);
        }
    }
}
