//! `OSError`s as Python raises them: `OSError(errno, strerror)`, so that
//! Python picks the subclass (`ConnectionResetError`, `FileNotFoundError`,
//! ...) and `errno` is set. pyo3's conversion of an `io::Error` keeps only
//! its message (`errno` None), which code that checks `e.errno` misreads.

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;

/// The exception instance for `error`.
pub(crate) fn os_error<'py>(
    py: Python<'py>,
    error: &std::io::Error,
) -> PyResult<Bound<'py, PyAny>> {
    let errno = error.raw_os_error().unwrap_or(0);
    // SAFETY: strerror returns a valid C string for any errno.
    let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) }
        .to_string_lossy()
        .into_owned();
    py.get_type::<PyOSError>().call1((errno, text))
}

/// `error` raised as Python would raise it.
pub(crate) fn os_error_err(py: Python<'_>, error: &std::io::Error) -> PyErr {
    match os_error(py, error) {
        Ok(exception) => PyErr::from_value(exception),
        Err(failed) => failed,
    }
}

/// `error` as `OSError` when the OS gave it (it has an errno), else as
/// `RuntimeError` with its text (a failure of ours, not the system's).
pub(crate) fn io_error_err(py: Python<'_>, error: &std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(_) => os_error_err(py, error),
        None => PyRuntimeError::new_err(error.to_string()),
    }
}
