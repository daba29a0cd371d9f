//! What the native transport methods share: the receive buffer, the
//! socket and its fd, and asyncio's ways with errors.

use std::cell::RefCell;

use pyo3::call::PyCallArgs;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

use super::handles::member_offset;
use super::handling::Handling;
use super::instance_attrs::InstanceAttrs;
use super::once::cached_attr;
use super::once::get_or_make;

/// Size of the receive buffer: asyncio's `max_size` for one read.
const RECV_BUFFER_SIZE: usize = 256 * 1024;

thread_local! {
    /// The receive buffer of the loop running on this thread.
    pub(super) static RECV_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; RECV_BUFFER_SIZE].into_boxed_slice());
}

/// The fd of the transport's socket now (-1 once closed), if the socket is
/// a plain `socket.socket`; None otherwise (asyncio's code then decides).
pub(super) fn plain_socket_fd(transport: &InstanceAttrs<'_, '_>) -> PyResult<Option<i32>> {
    let py = transport.object().py();
    let sock = transport.get(intern!(py, "_sock"))?;
    if !sock.get_type().is(socket_class(py)?) {
        return Ok(None);
    }
    // `socket.socket` inherits `fileno` from `_socket.socket`: its method
    // descriptor, called with the socket, is `sock.fileno()` without the
    // lookup along the MRO.
    static FILENO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let fileno = get_or_make(&FILENO, py, || {
        Ok::<_, PyErr>(socket_class(py)?.getattr("fileno")?.unbind())
    })?;
    fileno.bind(py).call1((sock,))?.extract().map(Some)
}

/// The family of `sock`, a `socket.socket`, as an `int`: read where the C
/// socket keeps it (the offset of `_socket.socket`'s read-only `family`
/// member, found once). `socket.socket.family` is a Python property that
/// builds an `IntEnum`, about a microsecond, more than a `sendto` of ours.
pub(super) fn socket_family(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    static OFFSET: PyOnceLock<isize> = PyOnceLock::new();
    let py = sock.py();
    if !sock.get_type().is(socket_class(py)?) {
        return sock.getattr(intern!(py, "family"))?.extract();
    }
    let offset = *get_or_make(&OFFSET, py, || {
        let base = py
            .import("_socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?;
        let size = std::mem::size_of::<std::ffi::c_int>() as isize;
        member_offset(&base, "family", ffi::Py_T_INT, size, false)
    })?;
    // SAFETY: `sock` is a `socket.socket`, a subclass of `_socket.socket`
    // whose instances hold a C int at `offset` (checked against the
    // member's type and the instance size when it was found).
    Ok(unsafe {
        *(sock.as_ptr() as *const u8)
            .offset(offset)
            .cast::<std::ffi::c_int>()
    })
}

/// `socket.socket`.
fn socket_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    cached_attr(py, &CLASS, "socket", "socket")
}

/// `transport._fatal_error(exc, message)` with `exc` as the exception being
/// handled, as when asyncio calls it from an `except` block.
pub(super) fn fatal_error(
    transport: &Bound<'_, PyAny>,
    exc: Bound<'_, PyAny>,
    message: &str,
) -> PyResult<()> {
    let py = transport.py();
    let _handling = Handling::start(&exc);
    transport
        .call_method1(intern!(py, "_fatal_error"), (exc, message))
        .map(drop)
}

/// Would-block and interrupted calls: no event, as asyncio treats them.
pub(super) fn no_event(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN | libc::EINTR) // EWOULDBLOCK == EAGAIN on Linux
    )
}

pub(super) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// `class.<name>(transport, *args)`: asyncio's own method, bypassing ours.
pub(super) fn call_stock<'py>(
    class: &Bound<'py, PyType>,
    transport: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: impl PyCallArgs<'py>,
) -> PyResult<()> {
    let py = transport.py();
    class
        .getattr(name)?
        .call_method1(intern!(py, "__get__"), (transport,))?
        .call1(args)
        .map(drop)
}
