//! UDP helpers for the Erlang tests (`py_udp_SUITE`): non-blocking IPv4 UDP
//! sockets made, used and closed by fd number, so a test can drive
//! `py_nif:add_reader` and Python endpoints without gen_udp.
//!
//! Safety of a by-number API: every call first asks the kernel whether the
//! fd is a datagram socket (`SO_TYPE`), so a wrong number gives
//! `{error, ebadf | enotsock | not_udp}` and never touches a file or a stream
//! of the VM. `close_test_fd` closes only sockets this module made.
//! Nothing here blocks: sends and receives use `MSG_DONTWAIT`.

use std::collections::BTreeSet;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Mutex;

use rustler::types::binary::NewBinary;
use rustler::{Binary, Encoder, Env, Error, NifResult, Term};

use crate::atoms;
use crate::proper_list::ProperList;
use crate::small_int::decode_in_range;
use crate::sync::lock;

rustler::atoms! {
    not_udp,
    errno,
    eagain,
    ebadf,
    einval,
    enotsock,
    eacces,
    eperm,
    eaddrinuse,
    eaddrnotavail,
    econnrefused,
    emsgsize,
    enetunreach,
    ehostunreach,
    enobufs,
    enomem,
    emfile,
    enfile,
}

/// The largest `MaxBytes` of `recvfrom_test_udp` (a datagram's payload is
/// at most 65535 bytes).
const MAX_RECV: usize = 65536;

/// Fds made by `create_test_udp_socket` and not closed yet. The lock is held
/// across `socket`+insert and remove+`close`, so a number the OS hands out
/// again is never taken for a closed one of ours.
static OWN_FDS: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

fn own_fds() -> std::sync::MutexGuard<'static, BTreeSet<RawFd>> {
    lock(&OWN_FDS)
}

/// Why a call failed: an OS error, or an fd that is a socket but not UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Os(i32),
    NotUdp,
}

type Outcome<T> = Result<T, Failure>;

fn last_os_error() -> Failure {
    Failure::Os(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

// ---- the socket calls ----

/// A non-blocking, close-on-exec IPv4 UDP socket bound on 127.0.0.1:`port`
/// (0: an ephemeral port); returns it and its port.
fn open_udp(port: u16) -> Outcome<(RawFd, u16)> {
    let mut own = own_fds();
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(last_os_error());
    }
    let bound = bind_loopback(fd, port).and_then(|()| local_port(fd));
    match bound {
        Ok(port) => {
            own.insert(fd);
            Ok((fd, port))
        }
        Err(failure) => {
            // SAFETY: `fd` is the socket made above, not shared with anyone.
            unsafe { libc::close(fd) };
            Err(failure)
        }
    }
}

fn bind_loopback(fd: RawFd, port: u16) -> Outcome<()> {
    let addr = sockaddr_in(Ipv4Addr::LOCALHOST, port);
    // SAFETY: `addr` is a valid sockaddr_in and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last_os_error());
    }
    Ok(())
}

fn local_port(fd: RawFd) -> Outcome<u16> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is writable for `len` bytes; the kernel writes at
    // most that and updates `len`.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_os_error());
    }
    socket_addr(&storage)
        .map(|addr| addr.port())
        .ok_or(Failure::Os(libc::EAFNOSUPPORT))
}

/// Whether `fd` is an open datagram socket (the guard of every call).
fn check_udp(fd: RawFd) -> Outcome<()> {
    let mut kind: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` is a writable c_int and `len` its size; a bad fd or a
    // non-socket only makes the call fail (EBADF, ENOTSOCK).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(last_os_error());
    }
    if kind != libc::SOCK_DGRAM {
        return Err(Failure::NotUdp);
    }
    Ok(())
}

fn send_to(fd: RawFd, data: &[u8], host: Ipv4Addr, port: u16) -> Outcome<()> {
    check_udp(fd)?;
    let addr = sockaddr_in(host, port);
    // SAFETY: `data` is readable for its length; `addr` is a valid
    // sockaddr_in of the size passed.
    let sent = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(last_os_error());
    }
    Ok(())
}

/// One datagram (at most `max` bytes of it) and its sender;
/// `Os(EAGAIN)` when none is waiting.
fn recv_from(fd: RawFd, max: usize) -> Outcome<(Vec<u8>, SocketAddr)> {
    check_udp(fd)?;
    let mut buffer = vec![0u8; max];
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buffer` is writable for `max` bytes and `storage` for `len`
    // bytes; the kernel writes no more than that.
    let received = unsafe {
        libc::recvfrom(
            fd,
            buffer.as_mut_ptr().cast(),
            max,
            libc::MSG_DONTWAIT,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if received < 0 {
        return Err(last_os_error());
    }
    buffer.truncate(received as usize);
    let from = socket_addr(&storage).ok_or(Failure::Os(libc::EAFNOSUPPORT))?;
    Ok((buffer, from))
}

fn set_broadcast(fd: RawFd, on: bool) -> Outcome<()> {
    check_udp(fd)?;
    let value: libc::c_int = on.into();
    // SAFETY: `value` is a readable c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BROADCAST,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(last_os_error());
    }
    Ok(())
}

/// Closes a socket made by `open_udp`; any other fd is `EBADF`.
fn close_own(fd: RawFd) -> Outcome<()> {
    let mut own = own_fds();
    if !own.remove(&fd) {
        return Err(Failure::Os(libc::EBADF));
    }
    // SAFETY: `fd` is a socket this module made and nobody else closes
    // (it left the set under the same lock).
    unsafe { libc::close(fd) };
    Ok(())
}

// ---- addresses ----

fn sockaddr_in(host: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(host).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The address in `storage` (IPv4 or IPv6), as the kernel wrote it.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let addr =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(addr.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let addr = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(addr.sin6_port),
            ))
        }
        _ => None,
    }
}

// ---- terms ----

/// `Host`: an IPv4 literal as a binary or a string, or a 4-tuple.
/// `Ok(None)` for text that is not an IPv4 literal; `Err(BadArg)` for any
/// other term.
fn decode_host(term: Term<'_>) -> NifResult<Option<Ipv4Addr>> {
    if term.is_tuple() {
        let (a, b, c, d): (Term<'_>, Term<'_>, Term<'_>, Term<'_>) = term.decode()?;
        return Ok(Some(Ipv4Addr::new(
            decode_in_range(a)?,
            decode_in_range(b)?,
            decode_in_range(c)?,
            decode_in_range(d)?,
        )));
    }
    let text: Vec<u8> = if term.is_binary() {
        Binary::from_term(term)?.as_slice().to_vec()
    } else if term.is_list() {
        let chars: ProperList<Term<'_>> = term.decode()?;
        chars
            .0
            .into_iter()
            .map(decode_in_range::<u8>)
            .collect::<NifResult<_>>()?
    } else {
        return Err(Error::BadArg);
    };
    Ok(std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.parse::<Ipv4Addr>().ok()))
}

/// `true | false | 1 | 0`.
fn decode_flag(term: Term<'_>) -> NifResult<bool> {
    if term == atoms::true_().to_term(term.get_env()) {
        return Ok(true);
    }
    if term == atoms::false_().to_term(term.get_env()) {
        return Ok(false);
    }
    match term.decode::<i64>() {
        Ok(1) => Ok(true),
        Ok(0) => Ok(false),
        _ => Err(Error::BadArg),
    }
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    Binary::from(NewBinary::from_slice(env, bytes)).to_term(env)
}

fn errno_atom(code: i32) -> Option<rustler::Atom> {
    Some(match code {
        libc::EAGAIN => eagain(),
        libc::EBADF => ebadf(),
        libc::EINVAL => einval(),
        libc::ENOTSOCK => enotsock(),
        libc::EACCES => eacces(),
        libc::EPERM => eperm(),
        libc::EADDRINUSE => eaddrinuse(),
        libc::EADDRNOTAVAIL => eaddrnotavail(),
        libc::ECONNREFUSED => econnrefused(),
        libc::EMSGSIZE => emsgsize(),
        libc::ENETUNREACH => enetunreach(),
        libc::EHOSTUNREACH => ehostunreach(),
        libc::ENOBUFS => enobufs(),
        libc::ENOMEM => enomem(),
        libc::EMFILE => emfile(),
        libc::ENFILE => enfile(),
        _ => return None,
    })
}

/// `{error, Reason}`: an errno atom such as `ebadf`, `not_udp`, or
/// `{errno, Code}` for a rare one.
fn failure<'a>(env: Env<'a>, failure: Failure) -> Term<'a> {
    let reason = match failure {
        Failure::NotUdp => not_udp().encode(env),
        Failure::Os(code) => match errno_atom(code) {
            Some(atom) => atom.encode(env),
            None => (errno(), code).encode(env),
        },
    };
    (atoms::error(), reason).encode(env)
}

fn ok_or_failure<'a>(env: Env<'a>, outcome: Outcome<()>) -> Term<'a> {
    match outcome {
        Ok(()) => atoms::ok().encode(env),
        Err(f) => failure(env, f),
    }
}

// ---- the NIFs ----

/// `create_test_udp_socket(Port)` -> `{ok, {Fd, Port}} | {error, Reason}`.
#[rustler::nif]
fn create_test_udp_socket<'a>(env: Env<'a>, port: Term<'a>) -> NifResult<Term<'a>> {
    Ok(match open_udp(decode_in_range(port)?) {
        Ok((fd, port)) => (atoms::ok(), (fd, port)).encode(env),
        Err(f) => failure(env, f),
    })
}

/// `sendto_test_udp(Fd, Data, Host, Port)` -> `ok | {error, Reason}`.
#[rustler::nif]
fn sendto_test_udp<'a>(
    env: Env<'a>,
    fd: RawFd,
    data: Term<'a>,
    host: Term<'a>,
    port: Term<'a>,
) -> NifResult<Term<'a>> {
    let port: u16 = decode_in_range(port)?;
    let data = Binary::from_iolist(data)?;
    let Some(host) = decode_host(host)? else {
        return Ok(failure(env, Failure::Os(libc::EINVAL)));
    };
    Ok(ok_or_failure(env, send_to(fd, data.as_slice(), host, port)))
}

/// `recvfrom_test_udp(Fd, MaxBytes)` ->
/// `{ok, {Data, {HostBinary, Port}}} | {error, eagain | Reason}`.
#[rustler::nif]
fn recvfrom_test_udp(env: Env<'_>, fd: RawFd, max_bytes: usize) -> NifResult<Term<'_>> {
    if max_bytes == 0 || max_bytes > MAX_RECV {
        return Err(Error::BadArg);
    }
    Ok(match recv_from(fd, max_bytes) {
        Ok((data, from)) => {
            let host = binary(env, from.ip().to_string().as_bytes());
            (atoms::ok(), (binary(env, &data), (host, from.port()))).encode(env)
        }
        Err(f) => failure(env, f),
    })
}

/// `set_udp_broadcast(Fd, true | false | 1 | 0)` -> `ok | {error, Reason}`.
#[rustler::nif]
fn set_udp_broadcast<'a>(env: Env<'a>, fd: RawFd, on: Term<'a>) -> NifResult<Term<'a>> {
    let on = decode_flag(on)?;
    Ok(ok_or_failure(env, set_broadcast(fd, on)))
}

/// `close_test_fd(Fd)` -> `ok | {error, ebadf}` (only sockets made by
/// `create_test_udp_socket` are closed).
#[rustler::nif]
fn close_test_fd(env: Env<'_>, fd: RawFd) -> Term<'_> {
    ok_or_failure(env, close_own(fd))
}
