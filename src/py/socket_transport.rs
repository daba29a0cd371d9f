//! The per-event methods of `_ErlangSocketTransport`, native.
//!
//! Our stream transport is asyncio's selector transport; each readiness
//! event ran three of its Python methods (`_read_ready`, the
//! `_read_ready__data_received` it dispatches to, and the protocol's usual
//! reply, `write`), a good part of a request's interpreter time in a
//! request/response exchange. These do the same steps natively:
//!
//! - `_read_ready`: calls `self._read_ready_cb()` and returns None, as
//!   asyncio does.
//! - `_read_ready__data_received` (plain `Protocol`s; `BufferedProtocol`
//!   keeps asyncio's `_read_ready__get_buffer`): nothing once the connection
//!   is lost; one `recv` into the thread's receive buffer (LESSONS 28: one
//!   reusable buffer, `bytes` of the right size to the protocol); would-block
//!   and EINTR are no event; another error goes to `self._fatal_error`; zero
//!   bytes is EOF (`self._read_ready__on_eof()`); a protocol error other
//!   than SystemExit/KeyboardInterrupt goes to `self._fatal_error`.
//! - `write(data)`: for `bytes` while nothing is buffered, the connection
//!   is up and no EOF or sendfile is in progress, one `send`; sent in full,
//!   done. Every other case (other types, a partial send, would-block, a
//!   non-empty buffer, the error checks) is asyncio's own `write`, given
//!   what is left to send (a view of `data`, not a copy); a send error goes
//!   to `self._fatal_error` as there.
//! - `is_closing()`: `self._closing`, as asyncio's. Not per event but
//!   per `StreamWriter.drain()`, twice a request in a streams echo: as a
//!   Python method it cost 55-75 ns a call against uvloop's 24 (a Python
//!   frame around one attribute read), the one Python call a request made
//!   on our transport that it makes on none of uvloop's.
//!
//! The native steps apply to a plain `socket.socket` only: a subclass (one
//! that counts or throttles its `send`, say) gets asyncio's methods, which
//! call its `recv`/`send`. Reads take at most `max_size` bytes, as asyncio's.
//! The attributes read are asyncio's (`_conn_lost`, `_sock`, `_protocol`,
//! `_buffer`, `_eof`, `_empty_waiter`, `max_size`), the hot ones from slots
//! of our class (`SOCKET_TRANSPORT_SLOTS`, see `instance_attrs`); a Python
//! without one of them fails loudly here, in the tests, not silently. The
//! fd is the socket object's own (what its `fileno()` gives, read where the
//! C socket keeps it: `transport_io`) at the time of the call, not the transport's
//! `_sock_fd`: a closed socket gives -1 (EBADF, as its `recv`/`send` would
//! raise), never a number the OS may have handed to another socket since.
//! `_fatal_error` runs with its exception as the one being handled, as in
//! asyncio's `except` blocks (debug logging with `exc_info`, handlers that
//! read `sys.exc_info()`).

use pyo3::call::PyCallArgs;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyString, PyType};

use super::instance_attrs::{ClassSlots, InstanceAttrs};
use super::method::{call_method, call_method_one_arg, methods_for, MethodDef};
use super::once::cached_attr;
use super::os_error::os_error;
use super::transport_io::{
    call_stock, fatal_error, is_exit, native_read_size, no_event, plain_socket_fd, RECV_BUFFER,
};

static READ_READY: MethodDef = MethodDef::noargs(
    c"_read_ready",
    c"_read_ready($self)\n--\n\nReader callback: runs self._read_ready_cb() (native).",
    read_ready_method,
);

static DATA_RECEIVED: MethodDef = MethodDef::noargs(
    c"_read_ready__data_received",
    c"_read_ready__data_received($self)\n--\n\nReads once and hands the bytes to protocol.data_received (native).",
    data_received_method,
);

static IS_CLOSING: MethodDef = MethodDef::noargs(
    c"is_closing",
    c"is_closing($self)\n--\n\nReturn True if the transport is closing or closed (native).",
    is_closing_method,
);

static WRITE: MethodDef = MethodDef::one_arg_or_keyword(
    c"write",
    c"write($self, data)\n--\n\nWrite data to the transport: sent now when possible, else buffered (native fast path of asyncio's write).",
    write_method,
);

/// `selector_events._SelectorSocketTransport`.
fn selector_transport(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    cached_attr(
        py,
        &CLASS,
        "asyncio.selector_events",
        "_SelectorSocketTransport",
    )
}

/// The attributes the native methods read on every event, which our
/// transport class keeps in `__slots__` (`_erlang_loop.SOCKET_TRANSPORT_SLOTS`).
pub const SOCKET_TRANSPORT_SLOTS: [&str; 8] = [
    "_sock",
    "_protocol",
    "_conn_lost",
    "_buffer",
    "_eof",
    "_empty_waiter",
    "_read_ready_cb",
    "_closing",
];

/// Where our transport class keeps them.
static SLOTS: ClassSlots = ClassSlots::new(&SOCKET_TRANSPORT_SLOTS);

/// `_erlang_loop.socket_transport_methods(cls)`: `{name: method}` for `cls`, a subclass
/// of asyncio's `_SelectorSocketTransport` (set them on it).
#[pyfunction]
pub fn socket_transport_methods<'py>(cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyDict>> {
    let methods = methods_for(
        cls,
        selector_transport(cls.py())?,
        &[&READ_READY, &DATA_RECEIVED, &WRITE, &IS_CLOSING],
    )?;
    SLOTS.register(cls);
    Ok(methods)
}

unsafe extern "C" fn read_ready_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours.
    unsafe {
        call_method(slf, no_arg, |transport, _| {
            let py = transport.py();
            let attrs = SLOTS.attrs_of(transport);
            let callback = attrs.get(intern!(py, "_read_ready_cb"))?;
            if DATA_RECEIVED.is_bound_to(&callback, transport) {
                // The usual callback, our own method bound to this
                // transport: its body, without the call through Python.
                read_once(&attrs)?;
            } else {
                callback.call0()?;
            }
            Ok(py.None())
        })
    }
}

unsafe extern "C" fn data_received_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours.
    unsafe {
        call_method(slf, no_arg, |transport, _| {
            read_once(&SLOTS.attrs_of(transport)).map(|()| transport.py().None())
        })
    }
}

unsafe extern "C" fn is_closing_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours.
    unsafe {
        call_method(slf, no_arg, |transport, _| {
            // asyncio's `return self._closing`: the object itself, and
            // AttributeError before `__init__` set it, as there.
            let attrs = SLOTS.attrs_of(transport);
            Ok(attrs.get(intern!(transport.py(), "_closing"))?.unbind())
        })
    }
}

unsafe extern "C" fn write_method(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this FASTCALL|KEYWORDS method of ours.
    unsafe {
        call_method_one_arg(
            slf,
            args,
            nargs,
            kwnames,
            "write",
            "data",
            |transport, data| write(transport, data).map(|()| transport.py().None()),
        )
    }
}

fn read_once(attrs: &InstanceAttrs<'_, '_>) -> PyResult<()> {
    let transport = attrs.object();
    let py = transport.py();
    if attrs.is_true(intern!(py, "_conn_lost"))? {
        return Ok(());
    }
    let Some(max_size) = native_read_size(transport)? else {
        return stock_method(transport, intern!(py, "_read_ready__data_received"), ());
    };
    // The fd is read after `max_size`, as `recv(max_size)` reads it: its
    // `__index__` may have closed the socket, whose number another socket
    // may hold by now.
    let Some(fd) = plain_socket_fd(attrs)? else {
        return stock_method(transport, intern!(py, "_read_ready__data_received"), ());
    };
    // The buffer is borrowed only for the read and the copy, not while the
    // protocol runs (it may read another transport of this loop).
    let received = RECV_BUFFER.with_borrow_mut(|buffer| {
        // SAFETY: `buffer` is valid for writes of its whole length.
        let n = unsafe {
            libc::recv(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len().min(max_size),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(0) => Received::Eof,
            Ok(n) => Received::Data(PyBytes::new(py, &buffer[..n]).unbind()),
            Err(_) => Received::Failed(std::io::Error::last_os_error()),
        }
    });
    match received {
        Received::Data(data) => {
            let protocol = attrs.get(intern!(py, "_protocol"))?;
            if let Err(err) = protocol.call_method1(intern!(py, "data_received"), (data,)) {
                if is_exit(py, &err) {
                    return Err(err);
                }
                let message = "Fatal error: protocol.data_received() call failed.";
                fatal_error(
                    transport,
                    err.into_value(py).into_bound(py).into_any(),
                    message,
                )?;
            }
            Ok(())
        }
        Received::Eof => transport
            .call_method0(intern!(py, "_read_ready__on_eof"))
            .map(drop),
        Received::Failed(error) if no_event(&error) => Ok(()),
        Received::Failed(error) => {
            let message = "Fatal read error on socket transport";
            fatal_error(transport, os_error(py, &error)?, message)
        }
    }
}

enum Received {
    Data(Py<PyBytes>),
    Eof,
    Failed(std::io::Error),
}

fn write(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let attrs = SLOTS.attrs_of(transport);
    let Some(bytes) = sendable_now(&attrs, data)? else {
        return stock_write(transport, data);
    };
    let Some(fd) = plain_socket_fd(&attrs)? else {
        return stock_write(transport, data);
    };
    // SAFETY: `bytes` is a live bytes object we hold for the call.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match usize::try_from(sent) {
        Ok(n) if n == bytes.len() => Ok(()),
        // The rest as a view of `data`, not a copy: the buffer copies it
        // once (a copy here made 100 MB of pending data take 300 MB at the
        // call's peak, the stdlib's 200).
        Ok(n) => {
            let rest = PySlice::new(py, n as isize, bytes.len() as isize, 1);
            buffer_rest(transport, &PyMemoryView::from(data)?.get_item(rest)?)
        }
        Err(_) => {
            let error = std::io::Error::last_os_error();
            if no_event(&error) {
                return buffer_rest(transport, data);
            }
            let message = "Fatal write error on socket transport";
            fatal_error(transport, os_error(py, &error)?, message)
        }
    }
}

/// asyncio's `write` after its one send took part of the data (or none:
/// EAGAIN, EINTR): the rest waits in the buffer for the writer
/// (`_write_ready`), and the protocol may be paused. No second send now: asyncio's `write` would make one,
/// and a peer gone since the first would end the transport inside
/// `write()`, with no `pause_writing` and its EOF never read.
fn buffer_rest(transport: &Bound<'_, PyAny>, rest: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let loop_ = transport.getattr(intern!(py, "_loop"))?;
    let fd = transport.getattr(intern!(py, "_sock_fd"))?;
    let write_ready = transport.getattr(intern!(py, "_write_ready"))?;
    loop_.call_method1(intern!(py, "_add_writer"), (fd, write_ready))?;
    let buffer = transport.getattr(intern!(py, "_buffer"))?;
    if buffer.is_instance_of::<PyByteArray>() {
        buffer.call_method1(intern!(py, "extend"), (rest,))?;
    } else {
        // A deque of views (asyncio 3.12 on).
        buffer.call_method1(intern!(py, "append"), (rest,))?;
    }
    transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
    Ok(())
}

/// `data`'s bytes if the fast path applies: exactly `bytes`, not empty,
/// nothing buffered, connection up, no EOF written, no sendfile running.
fn sendable_now<'a>(
    transport: &InstanceAttrs<'_, '_>,
    data: &'a Bound<'_, PyAny>,
) -> PyResult<Option<&'a [u8]>> {
    let py = transport.object().py();
    let Ok(bytes) = data.cast_exact::<PyBytes>() else {
        return Ok(None);
    };
    let ready = !bytes.as_bytes().is_empty()
        && !transport.is_true(intern!(py, "_eof"))?
        && transport.get(intern!(py, "_empty_waiter"))?.is_none()
        && !transport.is_true(intern!(py, "_conn_lost"))?
        && !transport.is_true(intern!(py, "_buffer"))?;
    Ok(ready.then(|| bytes.as_bytes()))
}

/// asyncio's `write`, for every case the fast path leaves to it.
fn stock_write(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    stock_method(transport, intern!(transport.py(), "write"), (data,))
}

/// `_SelectorSocketTransport.<name>(transport, *args)`: asyncio's own.
fn stock_method<'py>(
    transport: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: impl PyCallArgs<'py>,
) -> PyResult<()> {
    call_stock(selector_transport(transport.py())?, transport, name, args)
}
