//! `_read_ready` and `sendto` of `_ErlangDatagramTransport`, native.
//!
//! Datagrams are read as asyncio reads them, one per readiness event, as
//! far as anyone can tell: what `datagram_received` schedules runs before
//! the next datagram is read (a protocol may count on that: a future per
//! datagram). But a callback that scheduled nothing on the loop, and
//! neither stopped it nor paused or closed the transport, leaves nothing
//! to run first: then the next datagram waiting is read at once, up to
//! `DATAGRAM_BATCH` per event (an echo server's `sendto` schedules
//! nothing), instead of an iteration of the loop (a poll of the epoll set
//! and the handle's run) each. Nothing once the
//! transport lost its connection, is closing or is paused. One `recvfrom`
//! into the thread's receive buffer (at most `max_size` bytes):
//! would-block or EINTR reads nothing (and ends the batch); another error
//! goes to `protocol.error_received` (ICMP errors on a connected
//! endpoint), as in asyncio, and ends the batch; a datagram goes to
//! `protocol.datagram_received` with the
//! sender's address as the socket module gives it, `(host, port)` or
//! `(host, port, flowinfo, scope_id)`; what that callback raises reaches
//! the loop's exception handler, as from asyncio's `_read_ready`.
//!
//! Other sockets than a plain IPv4/IPv6 `socket.socket`, and a `max_size`
//! larger than the receive buffer (or not a size), run asyncio's own
//! `_read_ready`.
//!
//! `sendto(data, addr=None)`: when asyncio's would send at once with every
//! check passing (`bytes`, nothing buffered, the connected address or none,
//! a plain socket), one `send` to the connected peer or one `sendto` to an
//! IPv4 `(host, port)` with a numeric host (after the socket module's
//! `socket.sendto` audit event, as its `sendto` raises it); a would-block
//! buffers the datagram, an `OSError` goes to `protocol.error_received`,
//! another exception is the fatal write error, as there. Everything else
//! (names to resolve, IPv6 addresses, other buffers, the checks that raise)
//! is asyncio's own `sendto`, which the socket module's address parsing
//! (about a fifth of an echo's time) otherwise costs every datagram.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::{size_of, zeroed};

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyRuntimeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple, PyType};

use super::handling::Handling;
use super::instance_attrs::{ClassSlots, InstanceAttrs};
use super::method::{call_method, call_method_fastcall, methods_for, MethodDef};
use super::once::cached_attr;
use super::os_error::{os_error, os_error_err};
use super::runner::ReadyWatch;
use super::transport_io::{
    audit_sendto, call_stock, fatal_error, is_exit, native_read_size, no_event, plain_socket_fd,
    PlainSocket, RECV_BUFFER,
};

static READ_READY: MethodDef = MethodDef::noargs(
    c"_read_ready",
    c"_read_ready($self)\n--\n\nReads a datagram and hands it to the protocol, and the next ones waiting while it schedules nothing (native).",
    read_ready_method,
);

static SENDTO: MethodDef = MethodDef::fastcall(
    c"sendto",
    c"sendto($self, data, addr=None)\n--\n\nSend data to addr (or the connected peer): sent now when possible, else buffered (native fast path of asyncio's sendto).",
    sendto_method,
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
    let methods = methods_for(cls, selector_transport(cls.py())?, &[&READ_READY, &SENDTO])?;
    SLOTS.register(cls);
    Ok(methods)
}

/// The attributes the native methods read on every event, which our
/// transport class keeps in `__slots__`
/// (`_erlang_loop.DATAGRAM_TRANSPORT_SLOTS`).
pub const DATAGRAM_TRANSPORT_SLOTS: [&str; 7] = [
    "_sock",
    "_protocol",
    "_conn_lost",
    "_buffer",
    "_address",
    "_paused",
    "_closing",
];

/// Where our transport class keeps them.
static SLOTS: ClassSlots = ClassSlots::new(&DATAGRAM_TRANSPORT_SLOTS);

unsafe extern "C" fn read_ready_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours.
    unsafe {
        call_method(slf, no_arg, |transport, _| {
            read_batch(&SLOTS.attrs_of(transport)).map(|()| transport.py().None())
        })
    }
}

unsafe extern "C" fn sendto_method(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this FASTCALL|KEYWORDS method of ours.
    unsafe {
        call_method_fastcall(slf, args, nargs, kwnames, |transport, args| {
            let py = transport.py();
            if !args.has_keywords() && matches!(args.positional_count(), 1 | 2) {
                let data = args.positional(py, 0).expect("one argument at least");
                let addr = args.positional(py, 1).filter(|addr| !addr.is_none());
                if sent_now(&SLOTS.attrs_of(transport), &data, addr.as_ref())? {
                    return Ok(py.None());
                }
            }
            let stock = selector_transport(py)?.getattr(intern!(py, "sendto"))?;
            args.call_with_first(&stock, transport).map(Bound::unbind)
        })
    }
}

/// asyncio's `sendto(data, addr)` when it would send at once with no
/// check failing: `data` non-empty `bytes`, `addr` None or the connected
/// address, the connection up if connected, nothing buffered, a plain
/// socket, and a peer given by the connection or by an IPv4 `(host, port)`
/// with a numeric host. Sends, or deals with the error as asyncio does
/// (`send_raised`); returns false, having done nothing, in every other
/// case (asyncio's `sendto` then decides, and raises what it raises).
fn sent_now(
    attrs: &InstanceAttrs<'_, '_>,
    data: &Bound<'_, PyAny>,
    addr: Option<&Bound<'_, PyAny>>,
) -> PyResult<bool> {
    let py = attrs.object().py();
    let Ok(bytes) = data.cast_exact::<PyBytes>() else {
        return Ok(false);
    };
    let bytes = bytes.as_bytes();
    if bytes.is_empty() {
        return Ok(false);
    }
    let address = attrs.get(intern!(py, "_address"))?;
    let connected = address.is_truthy()?;
    if connected {
        // `addr not in (None, self._address)` is asyncio's to raise.
        if let Some(addr) = addr {
            if !(addr.is(&address) || addr.eq(&address)?) {
                return Ok(false);
            }
        }
        if attrs.is_true(intern!(py, "_conn_lost"))? {
            return Ok(false);
        }
    }
    if attrs.is_true(intern!(py, "_buffer"))? {
        return Ok(false);
    }
    let Some(sock) = PlainSocket::of(attrs)? else {
        return Ok(false);
    };
    let Ok(peername) = attrs
        .get(intern!(py, "_extra"))?
        .get_item(intern!(py, "peername"))
    else {
        return Ok(false);
    };
    // The address asyncio's `sendto` goes on with (and would buffer).
    let addr = if connected { Some(&address) } else { addr };
    // SAFETY (both calls): `bytes` is the live bytes object's buffer.
    let sent = if peername.is_truthy()? {
        let fd = sock.fd()?;
        unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT) }
    } else {
        let Some(to) = addr else {
            return Ok(false);
        };
        let Some(peer) = ipv4_peer(to) else {
            return Ok(false);
        };
        if sock.family()? != libc::AF_INET {
            return Ok(false);
        }
        // The socket module's `sendto` raises its audit event first, and
        // reads the fd after it: a hook may have closed the socket.
        if let Err(err) = audit_sendto(sock.as_any(), to) {
            return send_raised(attrs, err, data, addr);
        }
        let fd = sock.fd()?;
        // SAFETY: `peer` is a complete sockaddr_in of the length given.
        unsafe {
            libc::sendto(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT,
                (&peer as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    };
    if sent >= 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    send_raised(attrs, os_error_err(py, &error), data, addr)
}

/// What asyncio's `sendto` does with what its socket call raised (`data`
/// to `addr`): would-block and EINTR buffer the datagram and wait for the
/// socket to be writable; another `OSError` goes to
/// `protocol.error_received` (as the exception being handled);
/// SystemExit and KeyboardInterrupt go up; anything else is the fatal
/// write error. Returns true: the call is done.
fn send_raised(
    attrs: &InstanceAttrs<'_, '_>,
    err: PyErr,
    data: &Bound<'_, PyAny>,
    addr: Option<&Bound<'_, PyAny>>,
) -> PyResult<bool> {
    let transport = attrs.object();
    let py = transport.py();
    if is_exit(py, &err) {
        return Err(err);
    }
    if err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py) {
        buffer_datagram(attrs, data, addr)?;
        return Ok(true);
    }
    let exc = err.into_value(py).into_bound(py).into_any();
    if exc.is_instance_of::<PyOSError>() {
        let _handling = Handling::start(&exc);
        attrs
            .get(intern!(py, "_protocol"))?
            .call_method1(intern!(py, "error_received"), (exc,))?;
    } else {
        fatal_error(transport, exc, "Fatal write error on datagram transport")?;
    }
    Ok(true)
}

/// asyncio's `sendto` after a would-block: the writer callback set, then
/// the datagram (`bytes`, immutable already) queued with its address and
/// counted in the buffer's size as asyncio counts it: its length, plus the
/// transport's `_header_size` where the stdlib adds one per datagram
/// (3.13 on; see `_ErlangDatagramTransport`).
fn buffer_datagram(
    attrs: &InstanceAttrs<'_, '_>,
    data: &Bound<'_, PyAny>,
    addr: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let transport = attrs.object();
    let py = transport.py();
    transport.getattr(intern!(py, "_loop"))?.call_method1(
        intern!(py, "_add_writer"),
        (
            transport.getattr(intern!(py, "_sock_fd"))?,
            transport.getattr(intern!(py, "_sendto_ready"))?,
        ),
    )?;
    let addr = addr.cloned().unwrap_or_else(|| py.None().into_bound(py));
    attrs
        .get(intern!(py, "_buffer"))?
        .call_method1(intern!(py, "append"), ((data, addr),))?;
    let mut size = transport
        .getattr(intern!(py, "_buffer_size"))?
        .add(data.len()?)?;
    if let Some(header) = transport.getattr_opt(intern!(py, "_header_size"))? {
        size = size.add(header)?;
    }
    transport.setattr(intern!(py, "_buffer_size"), size)?;
    transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
    Ok(())
}

/// An IPv4 `(host, port)` with a numeric host as a socket address; None
/// for anything else (names to resolve, other shapes), which the socket
/// module's own parsing handles.
fn ipv4_peer(addr: &Bound<'_, PyAny>) -> Option<libc::sockaddr_in> {
    let addr = addr.cast_exact::<PyTuple>().ok()?;
    if addr.len() != 2 {
        return None;
    }
    let host = addr.get_item(0).ok()?;
    let host: std::net::Ipv4Addr = host
        .cast_exact::<PyString>()
        .ok()?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let port = addr.get_item(1).ok()?;
    if !port.is_exact_instance_of::<PyInt>() {
        return None;
    }
    let port: u16 = port.extract().ok()?;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut peer: libc::sockaddr_in = unsafe { zeroed() };
    peer.sin_family = libc::AF_INET as libc::sa_family_t;
    peer.sin_port = port.to_be();
    peer.sin_addr.s_addr = u32::from(host).to_be();
    Some(peer)
}

/// Datagrams read per readiness event at most: a busy socket leaves the
/// loop's other fds and timers their turn.
const DATAGRAM_BATCH: usize = 16;

/// The longest run of readiness events on which a socket whose looks for
/// a further datagram found none is read once only: a client waiting for
/// one reply at a time would otherwise pay a `recvfrom` failing with
/// EAGAIN per reply.
const MAX_SINGLE_READS: u32 = 63;

/// How a transport's socket was found lately: after a look for a further
/// datagram that found none, the next `left` events read one datagram
/// only; each look that finds none again doubles the run (to
/// `MAX_SINGLE_READS`), one that finds one ends it.
#[derive(Clone, Copy)]
struct SingleReads {
    /// The transport's address: an entry of another transport (the fd
    /// closed and its number reused) is not its.
    transport: usize,
    left: u32,
    next: u32,
}

thread_local! {
    /// fd -> its transport's run of single reads. A guess: a wrong one
    /// reads one datagram where more were waiting, as asyncio always does.
    static SINGLE_READS: RefCell<HashMap<i32, SingleReads>> = RefCell::new(HashMap::new());
}

/// Whether this event of `fd` (of `transport`) may look for a further
/// datagram.
fn may_read_more(fd: i32, transport: usize) -> bool {
    SINGLE_READS.with_borrow_mut(|runs| match runs.get_mut(&fd) {
        Some(run) if run.transport == transport && run.left > 0 => {
            run.left -= 1;
            false
        }
        _ => true,
    })
}

/// Records what the look for a further datagram of `fd` found.
fn looked_for_more(fd: i32, transport: usize, found: bool) {
    SINGLE_READS.with_borrow_mut(|runs| {
        if found {
            runs.remove(&fd);
            return;
        }
        let next = match runs.get(&fd) {
            Some(run) if run.transport == transport => run.next,
            _ => 1,
        };
        runs.insert(
            fd,
            SingleReads {
                transport,
                left: next,
                next: (next * 2 + 1).min(MAX_SINGLE_READS),
            },
        );
    });
}

/// One datagram, and more while the protocol schedules nothing (see the
/// module).
fn read_batch(attrs: &InstanceAttrs<'_, '_>) -> PyResult<()> {
    let transport = attrs.object();
    let address = transport.as_ptr() as usize;
    let Some(fd) = plain_socket_fd(attrs)?.filter(|&fd| fd >= 0 && may_read_more(fd, address))
    else {
        return read_one(attrs).map(drop);
    };
    let loop_ = transport.getattr(intern!(transport.py(), "_loop"))?;
    // Made once: while it stays quiet, one made anew would watch the same
    // runner and reader.
    let watch = ReadyWatch::of(&loop_, fd)?;
    if read_one(attrs)? != Read::Datagram {
        return Ok(());
    }
    let Some(watch) = watch else {
        return Ok(());
    };
    for read in 1..DATAGRAM_BATCH {
        // The socket closed (or its fd changed) in the callback: asyncio
        // would not have called the reader again.
        if !watch.quiet()? || plain_socket_fd(attrs)? != Some(fd) {
            break;
        }
        let outcome = read_one(attrs)?;
        let first_look_for_more = read == 1;
        if first_look_for_more && outcome != Read::Other {
            looked_for_more(fd, address, outcome == Read::Datagram);
        }
        if outcome != Read::Datagram {
            break;
        }
    }
    Ok(())
}

/// What [`read_one`] did.
#[derive(PartialEq, Eq)]
enum Read {
    /// A datagram went to `datagram_received`, which returned.
    Datagram,
    /// None was waiting (would-block, EINTR).
    Empty,
    /// Anything else: not read (the transport stopped), an error to
    /// `error_received`, asyncio's own method.
    Other,
}

fn read_one(attrs: &InstanceAttrs<'_, '_>) -> PyResult<Read> {
    let transport = attrs.object();
    let py = transport.py();
    let stock = |name: &Bound<'_, PyString>| {
        call_stock(selector_transport(py)?, transport, name, ()).map(|()| Read::Other)
    };
    let Some(sock) = PlainSocket::of(attrs)? else {
        return stock(intern!(py, "_read_ready"));
    };
    let family = sock.family()?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return stock(intern!(py, "_read_ready"));
    }
    let Some(max_size) = native_read_size(transport)? else {
        return stock(intern!(py, "_read_ready"));
    };
    if stopped(attrs)? {
        return Ok(Read::Other);
    }
    // The fd is read last, as `recvfrom(max_size)` reads it: the code run
    // above (`max_size`'s `__index__`, the flags' truth) may have closed
    // the socket, whose number another socket may hold by now.
    let fd = sock.fd()?;
    match receive(py, fd, max_size)? {
        Ok((data, addr)) => {
            attrs
                .get(intern!(py, "_protocol"))?
                .call_method1(intern!(py, "datagram_received"), (data, addr))?;
            Ok(Read::Datagram)
        }
        Err(error) if no_event(&error) => Ok(Read::Empty),
        Err(error) => {
            let exc = os_error(py, &error)?;
            let _handling = Handling::start(&exc);
            attrs
                .get(intern!(py, "_protocol"))?
                .call_method1(intern!(py, "error_received"), (exc,))?;
            Ok(Read::Other)
        }
    }
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
            let mut text = [0; IPV4_TEXT_LEN];
            let host = ipv4_text(v4.sin_addr.s_addr.to_ne_bytes(), &mut text);
            (PyString::new(py, host), u16::from_be(v4.sin_port))
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

/// Room for the longest IPv4 text address, `255.255.255.255`.
const IPV4_TEXT_LEN: usize = 15;

/// `octets` (in network order) as `%u.%u.%u.%u`, as inet_ntop writes them,
/// without a formatting machinery that was a tenth of a datagram's cost.
fn ipv4_text(octets: [u8; 4], text: &mut [u8; IPV4_TEXT_LEN]) -> &str {
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    std::str::from_utf8(&text[..len]).unwrap_or("")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_what_the_standard_library_writes() {
        let mut text = [0; IPV4_TEXT_LEN];
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [255, 255, 255, 255],
            [10, 9, 99, 100],
            [1, 20, 200, 5],
        ] {
            let expected = std::net::Ipv4Addr::from(octets).to_string();
            assert_eq!(ipv4_text(octets, &mut text), expected);
        }
    }
}
