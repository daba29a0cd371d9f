//! `_read_ready` of `_ErlangDatagramTransport`, native.
//!
//! Each readiness event costs a loop iteration, so our datagram transport
//! drains up to `DATAGRAM_BATCH` datagrams per event (the bound keeps one
//! busy socket from starving the others). Before each
//! one: nothing more once the transport lost its connection, is closing or
//! is paused (`datagram_received` may have done either). Then one
//! `recvfrom` into the thread's receive buffer (at most `max_size` bytes):
//! would-block or EINTR ends the batch; another error goes to
//! `protocol.error_received` (ICMP errors on a connected endpoint), as in
//! asyncio, and ends it; a datagram goes to `protocol.datagram_received`
//! with the sender's address as the socket module gives it, `(host, port)`
//! or `(host, port, flowinfo, scope_id)`; what that callback raises reaches
//! the loop's exception handler, as from asyncio's `_read_ready`.
//!
//! Other sockets than a plain IPv4/IPv6 `socket.socket` run asyncio's own
//! `_read_ready` (one datagram per event).

use std::ffi::CStr;
use std::mem::{size_of, zeroed};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};

use super::handling::Handling;
use super::instance_attrs::InstanceAttrs;
use super::method::{call_method, methods_for, MethodDef};
use super::once::cached_attr;
use super::os_error::os_error;
use super::transport_io::{
    call_stock, fatal_error, no_event, plain_socket_fd, socket_family, RECV_BUFFER,
};

/// Datagrams read per readiness event at most.
const DATAGRAM_BATCH: usize = 16;

const READ_ERROR: &str = "Fatal read error on datagram transport";

static READ_READY: MethodDef = MethodDef::noargs(
    c"_read_ready",
    c"Reads the datagrams waiting (up to 16) and hands them to the protocol (native).",
    read_ready_method,
);

/// `selector_events._SelectorDatagramTransport`.
fn selector_transport(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    cached_attr(
        py,
        &CLASS,
        "asyncio.selector_events",
        "_SelectorDatagramTransport",
    )
}

/// `_erlang_loop.datagram_transport_methods(cls)`: `{name: method}` for `cls`, a subclass
/// of asyncio's `_SelectorDatagramTransport` (set them on it).
#[pyfunction]
pub fn datagram_transport_methods<'py>(cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyDict>> {
    methods_for(cls, selector_transport(cls.py())?, &[&READ_READY])
}

unsafe extern "C" fn read_ready_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours.
    unsafe {
        call_method(slf, no_arg, |transport, _| {
            read_batch(&InstanceAttrs::of(transport)).map(|()| transport.py().None())
        })
    }
}

fn read_batch(attrs: &InstanceAttrs<'_, '_>) -> PyResult<()> {
    let transport = attrs.object();
    let py = transport.py();
    let stock =
        |name: &Bound<'_, PyString>| call_stock(selector_transport(py)?, transport, name, ());
    let Some(fd) = plain_socket_fd(attrs)? else {
        return stock(intern!(py, "_read_ready"));
    };
    let family = socket_family(&attrs.get(intern!(py, "_sock"))?)?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return stock(intern!(py, "_read_ready"));
    }
    let max_size = match transport
        .getattr(intern!(py, "max_size"))?
        .extract::<usize>()
    {
        Ok(max_size) => max_size,
        // As asyncio's recvfrom(max_size) failing in its try block.
        Err(err) => {
            return fatal_error(
                transport,
                err.into_value(py).into_bound(py).into_any(),
                READ_ERROR,
            )
        }
    };
    for _ in 0..DATAGRAM_BATCH {
        if stopped(attrs)? {
            return Ok(());
        }
        // The protocol may have closed the socket; its fd number may belong
        // to another socket since.
        if plain_socket_fd(attrs)? != Some(fd) {
            return Ok(());
        }
        match receive(py, fd, max_size)? {
            Ok((data, addr)) => {
                attrs
                    .get(intern!(py, "_protocol"))?
                    .call_method1(intern!(py, "datagram_received"), (data, addr))?;
            }
            Err(error) if no_event(&error) => return Ok(()),
            Err(error) => {
                let exc = os_error(py, &error)?;
                let _handling = Handling::start(&exc);
                attrs
                    .get(intern!(py, "_protocol"))?
                    .call_method1(intern!(py, "error_received"), (exc,))?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Lost, closing or paused: read no more now.
fn stopped(attrs: &InstanceAttrs<'_, '_>) -> PyResult<bool> {
    let py = attrs.object().py();
    Ok(attrs.is_true(intern!(py, "_conn_lost"))?
        || attrs.is_true(intern!(py, "_paused"))?
        || attrs.is_true(intern!(py, "_closing"))?)
}

/// One datagram and its sender, or the error of `recvfrom`.
type Datagram<'py> = (Bound<'py, PyBytes>, Bound<'py, PyAny>);

fn receive(
    py: Python<'_>,
    fd: i32,
    max_size: usize,
) -> PyResult<Result<Datagram<'_>, std::io::Error>> {
    // The buffer is borrowed for the read and the copy only: building the
    // address tuple may run the GC, and so finalizers.
    let received = RECV_BUFFER.with_borrow_mut(|buffer| {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut sender: libc::sockaddr_storage = unsafe { zeroed() };
        let mut sender_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buffer` and `sender` are valid for writes of the lengths
        // given; `sender_len` is in and out.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len().min(max_size),
                libc::MSG_DONTWAIT,
                (&mut sender as *mut libc::sockaddr_storage).cast(),
                &mut sender_len,
            )
        };
        match usize::try_from(n) {
            Ok(n) => Ok((PyBytes::new(py, &buffer[..n]), sender)),
            Err(_) => Err(std::io::Error::last_os_error()),
        }
    });
    match received {
        Ok((data, sender)) => Ok(Ok((data, address(py, &sender)?))),
        Err(error) => Ok(Err(error)),
    }
}

/// The sender as Python's socket module writes it.
fn address<'py>(py: Python<'py>, sender: &libc::sockaddr_storage) -> PyResult<Bound<'py, PyAny>> {
    match i32::from(sender.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which fits in the
            // storage.
            let v4 =
                unsafe { &*(sender as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            // "%u.%u.%u.%u", as inet_ntop writes it, without its printf.
            let host = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).to_string();
            (host, u16::from_be(v4.sin_port))
                .into_pyobject(py)
                .map(Bound::into_any)
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 =
                unsafe { &*(sender as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let host = text_address(
                libc::AF_INET6,
                (&v6.sin6_addr as *const libc::in6_addr).cast(),
            )?;
            (
                host,
                u16::from_be(v6.sin6_port),
                u32::from_be(v6.sin6_flowinfo),
                v6.sin6_scope_id,
            )
                .into_pyobject(py)
                .map(Bound::into_any)
        }
        family => Err(PyRuntimeError::new_err(format!(
            "datagram from an address of family {family}"
        ))),
    }
}

// The C library's `inet_ntop` (POSIX; the `libc` crate does not bind it):
// CPython's socket module formats addresses with it, so ours match.
extern "C" {
    fn inet_ntop(
        family: libc::c_int,
        source: *const libc::c_void,
        text: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// Room for the longest text address (POSIX's `INET6_ADDRSTRLEN`).
const ADDRESS_TEXT_LEN: usize = 46;

/// `inet_ntop`, as CPython's socket module formats addresses.
fn text_address(family: i32, address: *const libc::c_void) -> PyResult<String> {
    let mut text = [0 as libc::c_char; ADDRESS_TEXT_LEN];
    // SAFETY: `address` points at an in_addr/in6_addr of `family`; `text`
    // is large enough for either.
    let written = unsafe {
        inet_ntop(
            family,
            address,
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
        )
    };
    if written.is_null() {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: inet_ntop wrote a NUL-terminated string into `text`.
    Ok(unsafe { CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}
