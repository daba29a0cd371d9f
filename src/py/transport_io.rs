//! What the native transport methods share: the receive buffer, the
//! socket and its fd, and asyncio's ways with errors.

use std::cell::RefCell;
use std::ffi::{c_char, c_int};

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
use super::once::get_or_make;

/// Size of the receive buffer: asyncio's `max_size` for one read.
const RECV_BUFFER_SIZE: usize = 256 * 1024;

thread_local! {
    /// The receive buffer of the loop running on this thread.
    pub(super) static RECV_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; RECV_BUFFER_SIZE].into_boxed_slice());
}

/// The transport's `max_size` when a native read can honour it: an int
/// from 0 to the receive buffer's size. None otherwise (a bigger one, a
/// negative one, not an int): asyncio's code then reads, as large as asked
/// or failing as `recv(max_size)` fails.
pub(super) fn native_read_size(transport: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let max_size = transport.getattr(pyo3::intern!(transport.py(), "max_size"))?;
    Ok(max_size
        .extract::<usize>()
        .ok()
        .filter(|&size| size <= RECV_BUFFER_SIZE))
}

/// The fd of the transport's socket now (-1 once closed), if the socket is
/// a plain `socket.socket`; None otherwise (asyncio's code then decides).
pub(super) fn plain_socket_fd(transport: &InstanceAttrs<'_, '_>) -> PyResult<Option<i32>> {
    PlainSocket::of(transport)?
        .map(|sock| sock.fd())
        .transpose()
}

/// A transport's socket that is exactly a `socket.socket` (see
/// `socket_class`): the one kind whose fd and family the native paths read
/// where the C socket keeps them. Made only by [`PlainSocket::of`], which
/// checks the kind once.
pub(super) struct PlainSocket<'py>(Bound<'py, PyAny>);

impl<'py> PlainSocket<'py> {
    /// The transport's `_sock`, if it is a plain `socket.socket`.
    pub(super) fn of(transport: &InstanceAttrs<'_, 'py>) -> PyResult<Option<Self>> {
        let py = transport.object().py();
        let sock = transport.get(intern!(py, "_sock"))?;
        let plain = socket_class(py)?.is_some_and(|class| sock.get_type().is(class));
        Ok(plain.then_some(PlainSocket(sock)))
    }

    /// The socket object.
    pub(super) fn as_any(&self) -> &Bound<'py, PyAny> {
        &self.0
    }

    /// Its fd now (-1 once closed).
    pub(super) fn fd(&self) -> PyResult<i32> {
        let py = self.0.py();
        if let Some(offset) = socket_layout(py)?.fd {
            // SAFETY: a `socket.socket`, whose instances hold their fd as a
            // C int at `offset` (see `SocketLayout`).
            return Ok(unsafe { read_int(&self.0, offset) });
        }
        // `socket.socket` inherits `fileno` from `_socket.socket`: its
        // method descriptor, called with the socket, is `sock.fileno()`
        // without the lookup along the MRO.
        static FILENO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let fileno = get_or_make(&FILENO, py, || {
            Ok::<_, PyErr>(
                py.import("_socket")?
                    .getattr("socket")?
                    .getattr("fileno")?
                    .unbind(),
            )
        })?;
        fileno.bind(py).call1((&self.0,))?.extract()
    }

    /// Its family, as an `int`: `socket.socket.family` is a Python
    /// property that builds an `IntEnum`, about a microsecond, more than a
    /// `sendto` of ours.
    pub(super) fn family(&self) -> PyResult<i32> {
        let offset = socket_layout(self.0.py())?.family;
        // SAFETY: a `socket.socket`, whose instances hold their family as a
        // C int at `offset` (see `SocketLayout`).
        Ok(unsafe { read_int(&self.0, offset) })
    }
}

/// Where a `_socket.socket` (CPython's `PySocketSockObject`) keeps its
/// family and its fd, which per-event code reads without a call.
struct SocketLayout {
    /// The offset of the read-only `family` member, from its descriptor
    /// (checked against the member's type and the instance size).
    family: isize,
    /// The fd has no member. CPython keeps it as the first field after the
    /// object header, then the family: trusted only when the family is
    /// found right after one C int there and a real socket's fd, open and
    /// closed, is read there as `fileno()` gives it. None: ask `fileno()`.
    fd: Option<isize>,
}

fn socket_layout(py: Python<'_>) -> PyResult<&SocketLayout> {
    static LAYOUT: PyOnceLock<SocketLayout> = PyOnceLock::new();
    get_or_make(&LAYOUT, py, || {
        let base = py
            .import("_socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?;
        let int = std::mem::size_of::<c_int>() as isize;
        let family = member_offset(&base, "family", ffi::Py_T_INT, int, false)?;
        let header = std::mem::size_of::<ffi::PyObject>() as isize;
        let fd = (family == header + int && fd_read_as_fileno(py, header)?).then_some(header);
        Ok(SocketLayout { family, fd })
    })
}

/// Whether the C int at `offset` of a socket is its `fileno()`, open and
/// once closed (-1).
fn fd_read_as_fileno(py: Python<'_>, offset: isize) -> PyResult<bool> {
    let Some(class) = socket_class(py)? else {
        return Ok(false);
    };
    let Ok(sock) = class.call1((libc::AF_UNIX, libc::SOCK_STREAM)) else {
        return Ok(false);
    };
    let fileno = intern!(py, "fileno");
    // SAFETY: `sock` is a `socket.socket`, an instance at least the size of
    // `_socket.socket`, which holds C ints up to and past `offset` (the
    // family's offset, checked against the instance size, is later).
    let open =
        unsafe { read_int(&sock, offset) } == sock.call_method0(fileno)?.extract::<c_int>()?;
    sock.call_method0(intern!(py, "close"))?;
    // SAFETY: as above.
    let closed =
        unsafe { read_int(&sock, offset) } == sock.call_method0(fileno)?.extract::<c_int>()?;
    Ok(open && closed)
}

/// The C int at `offset` of `object`.
///
/// # Safety
/// `object`'s instances hold a C int at `offset`.
unsafe fn read_int(object: &Bound<'_, PyAny>, offset: isize) -> c_int {
    unsafe {
        *(object.as_ptr() as *const u8)
            .offset(offset)
            .cast::<c_int>()
    }
}

/// `socket.socket` as first seen, if it derives from the C `_socket.socket`
/// (one replaced by a monkey-patching library before is left to asyncio's
/// code: its instances are never read at our offsets).
fn socket_class(py: Python<'_>) -> PyResult<Option<&Bound<'_, PyType>>> {
    static CLASS: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
    let class = get_or_make(&CLASS, py, || {
        let class = py.import("socket")?.getattr("socket")?;
        let base = py
            .import("_socket")?
            .getattr("socket")?
            .cast_into::<PyType>()?;
        Ok::<_, PyErr>(match class.cast_into::<PyType>() {
            Ok(class) if class.is_subclass(&base)? => Some(class.unbind()),
            _ => None,
        })
    })?;
    Ok(class.as_ref().map(|class| class.bind(py)))
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

// CPython's audit entry point (sysmodule.h), which pyo3-ffi does not bind.
extern "C" {
    fn PySys_Audit(event: *const c_char, format: *const c_char, ...) -> c_int;
}

/// Raises the audit event `socket.sendto` with the socket and the address,
/// as the socket module's `sendto` does before sending (a hook may refuse).
pub(super) fn audit_sendto(sock: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: attached; "OO" takes two object pointers, live for the call.
    let rc = unsafe {
        PySys_Audit(
            c"socket.sendto".as_ptr(),
            c"OO".as_ptr(),
            sock.as_ptr(),
            addr.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(PyErr::fetch(sock.py()));
    }
    Ok(())
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
