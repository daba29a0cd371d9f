//! The `enif_select` resource of one watched fd.
//!
//! rustler registers resources without a `stop` callback, and a select
//! resource needs one (LESSONS 17: close an fd only once the BEAM has taken it
//! out of its poll set). So this type is registered by hand.
//!
//! The resource owns a `dup` of the caller's fd. Python may close its own fd
//! whenever it likes and the OS may hand the number out again at once: our
//! duplicate keeps a different number until the stop callback closes it, so a
//! reused number never meets a stale poll-set entry.
//!
//! The duplicate is made when the handle is opened, the resource only when
//! the fd is first selected (by the serving process, on a scheduler): a
//! resource whose last reference goes on a thread of ours has its
//! destructor scheduled on an Erlang scheduler, which is woken for it (a
//! write to the poller's wake-up pipe and a scheduler's wake-up), and a
//! Python loop's epoll fd, opened with the loop, is never selected by most
//! loops made per call.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use erlang_python::io::{SelectHandle, SelectOp};
use rustler::sys::{
    enif_alloc_resource, enif_get_resource, enif_keep_resource, enif_open_resource_type_x,
    enif_release_resource, enif_select, ErlNifEnv, ErlNifEvent, ErlNifPid, ErlNifResourceDtor,
    ErlNifResourceFlags, ErlNifResourceStop, ErlNifResourceType, ErlNifResourceTypeInit,
    ERL_NIF_SELECT_READ, ERL_NIF_SELECT_STOP, ERL_NIF_SELECT_WRITE,
};
use rustler::{Env, Term};

use crate::sync::lock;

static FD_RESOURCE_TYPE: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(ptr::null_mut());

/// No `enif_select` of the fd was made yet: it may be closed at once.
const STATE_FRESH: u8 = 0;
/// `enif_select` was (or is being) called: closing must wait for the stop.
const STATE_SELECTED: u8 = 1;
/// The duplicate is closed or being closed: set first, so that it is closed
/// once, and no select is made after.
const STATE_CLOSED: u8 = 2;

/// The C-side object of one resource.
struct FdResource {
    /// Our duplicate of the watched fd (closed once `state` is `STATE_CLOSED`).
    fd: RawFd,
    /// The registration token in the loop's registry.
    token: u64,
    /// [`STATE_FRESH`], [`STATE_SELECTED`] or [`STATE_CLOSED`]; moves forward only, by
    /// atomic exchanges, so that a select and a close of a never selected
    /// fd, made on two threads at once, agree on which came first.
    state: AtomicU8,
    /// The duplicate is closed: set after `close(2)` returned, under
    /// `CLOSES`, for [`wait_closed`].
    released: AtomicBool,
    /// Held across a select's state change and its `enif_select`: two
    /// processes selecting one fd at once (routers swapped, or the router's
    /// entry points called by others) would otherwise let a stop, seeing it
    /// selected, close the duplicate before the arm's `enif_select` ran,
    /// which then watched a closed (or reused) fd number. No contention in
    /// the usual case: one router makes a loop's selects.
    selecting: Mutex<()>,
}

/// Taken by `close_once` after a close and by [`wait_closed`] around its
/// look, so that no close falls between the look and the wait on `CLOSED`.
static CLOSES: Mutex<()> = Mutex::new(());
static CLOSED: Condvar = Condvar::new();

impl FdResource {
    /// Closes the duplicate unless it is closed already (a stop, the
    /// destructor: the fd is out of the poll set, or never entered it).
    fn close_once(&self) {
        if self.state.swap(STATE_CLOSED, Ordering::AcqRel) != STATE_CLOSED {
            self.close_fd();
        }
    }

    /// Closes the duplicate if no select of it was made, and makes every
    /// later select a no-op. True if it is closed (now or before).
    fn close_if_fresh(&self) -> bool {
        match self.state.compare_exchange(
            STATE_FRESH,
            STATE_CLOSED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.close_fd();
                true
            }
            Err(state) => state == STATE_CLOSED,
        }
    }

    /// For the one caller that moved `state` to `STATE_CLOSED`.
    fn close_fd(&self) {
        // SAFETY: `fd` is our own duplicate, closed exactly once: by whoever
        // moved `state` to `STATE_CLOSED`.
        unsafe { libc::close(self.fd) };
        self.released.store(true, Ordering::Release);
        notify_closed();
    }
}

/// Threads in [`wait_closed`] now: with none, a close wakes nobody (a
/// condvar's notify is a syscall each time).
static CLOSE_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// Wakes [`wait_closed`]'s waiters after a duplicate was closed.
fn notify_closed() {
    // A fence on each side (the waiter's after it counts itself): either
    // this load sees the waiter, which is then woken under `CLOSES` after
    // its look, or the waiter's look comes after the close and sees it.
    std::sync::atomic::fence(Ordering::SeqCst);
    if CLOSE_WAITERS.load(Ordering::SeqCst) > 0 {
        let _closes = lock(&CLOSES);
        CLOSED.notify_all();
    }
}

/// Waits, at most `timeout`, until the duplicates of `handles` are closed
/// (by their stop callbacks). True if they all are.
pub fn wait_closed(handles: &[SelectHandle], timeout: Duration) -> bool {
    let give_up = Instant::now() + timeout;
    let mut closes = lock(&CLOSES);
    CLOSE_WAITERS.fetch_add(1, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    let closed = loop {
        // Looked at under the lock that `notify_closed` takes after a
        // close: a close after this look wakes the wait below.
        let all_closed = handles
            .iter()
            .all(|handle| downcast(handle).is_none_or(FdHandle::released));
        if all_closed {
            break true;
        }
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        closes = CLOSED
            .wait_timeout(closes, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    };
    CLOSE_WAITERS.fetch_sub(1, Ordering::SeqCst);
    closed
}

/// Registers the resource type; called from the NIF `load`.
pub fn register(env: Env<'_>) -> bool {
    let init = ErlNifResourceTypeInit {
        dtor: fd_destructor as *const ErlNifResourceDtor,
        stop: fd_stop as *const ErlNifResourceStop,
        down: ptr::null(),
    };
    let mut tried = ErlNifResourceFlags::ERL_NIF_RT_CREATE;
    // SAFETY: called from `load` with its env; the name is NUL-terminated and
    // `init` outlives the call (the VM copies it).
    let resource_type = unsafe {
        enif_open_resource_type_x(
            env.as_c_arg(),
            c"py_fd".as_ptr(),
            &init,
            ErlNifResourceFlags::ERL_NIF_RT_CREATE,
            &mut tried,
        )
    };
    FD_RESOURCE_TYPE.store(resource_type as *mut _, Ordering::Release);
    !resource_type.is_null()
}

unsafe extern "C" fn fd_destructor(_env: *mut ErlNifEnv, object: *mut std::ffi::c_void) {
    // SAFETY: the VM hands us our object once, after its last reference.
    let resource = unsafe { &*(object as *const FdResource) };
    // The VM holds a reference while the fd is selected, so reaching the
    // destructor means the fd left the poll set (or never entered it).
    resource.close_once();
    // SAFETY: the object was written with ptr::write and is dropped once here.
    unsafe { ptr::drop_in_place(object as *mut FdResource) };
}

unsafe extern "C" fn fd_stop(
    _env: *mut ErlNifEnv,
    object: *mut std::ffi::c_void,
    _event: ErlNifEvent,
    _is_direct_call: std::ffi::c_int,
) {
    // SAFETY: the VM passes a live object of our type.
    let resource = unsafe { &*(object as *const FdResource) };
    resource.close_once();
}

/// What an [`FdHandle`] holds.
enum Held {
    /// The duplicate, before any select: no resource made yet.
    Fd(RawFd),
    /// One counted reference to the resource, which owns the duplicate.
    Resource(*mut FdResource),
    /// The duplicate was closed before any select.
    Closed,
}

/// One handle on a watched fd's duplicate, usable from any thread: the
/// duplicate alone until the fd is first selected, then a counted
/// reference to its resource.
pub struct FdHandle {
    token: u64,
    held: Mutex<Held>,
}

// SAFETY: the resource object is immutable apart from atomics and a mutex,
// the VM's resource reference counting is thread-safe, and `held` is only
// read or changed under its lock.
unsafe impl Send for FdHandle {}
// SAFETY: as above.
unsafe impl Sync for FdHandle {}

impl Drop for FdHandle {
    fn drop(&mut self) {
        match *self.held.get_mut().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: our duplicate, never selected, closed once: here.
            Held::Fd(fd) => unsafe {
                libc::close(fd);
            },
            // SAFETY: we hold one reference, released exactly once.
            Held::Resource(object) => unsafe { enif_release_resource(object as *mut _) },
            Held::Closed => {}
        }
    }
}

impl FdHandle {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resource, if the fd was selected.
    fn resource(&self) -> Option<&FdResource> {
        match *self.held() {
            // SAFETY: our reference keeps the object alive as long as we
            // live, and `held` never leaves `Resource` once there.
            Held::Resource(object) => Some(unsafe { &*object }),
            _ => None,
        }
    }

    /// The resource, made now (owning the duplicate) if the fd was never
    /// selected; `None` if the duplicate was closed unselected.
    fn resource_for_select(&self) -> Option<&FdResource> {
        let mut held = self.held();
        let object = match *held {
            Held::Resource(object) => object,
            Held::Closed => return None,
            Held::Fd(fd) => {
                let object = alloc_resource(fd, self.token);
                *held = Held::Resource(object);
                object
            }
        };
        // SAFETY: as in `resource`.
        Some(unsafe { &*object })
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the duplicate is closed (see [`wait_closed`]).
    fn released(&self) -> bool {
        match *self.held() {
            Held::Fd(_) => false,
            Held::Closed => true,
            // SAFETY: as in `resource`.
            Held::Resource(object) => unsafe { &*object }.released.load(Ordering::Acquire),
        }
    }

    /// Closes the fd now if it never entered the BEAM's poll set, as a
    /// `Stop` does then. False if it did: only a stop may close it. Safe
    /// beside a `select` of the fd on another thread: whichever of the two
    /// comes first wins, and a select after this close is a no-op.
    pub fn close_if_never_selected(&self) -> bool {
        let mut held = self.held();
        match *held {
            Held::Fd(fd) => {
                *held = Held::Closed;
                drop(held);
                // SAFETY: our duplicate, never selected, closed once: here
                // (`held` no longer names it).
                unsafe { libc::close(fd) };
                notify_closed();
                true
            }
            Held::Closed => true,
            // SAFETY: as in `resource`.
            Held::Resource(object) => unsafe { &*object }.close_if_fresh(),
        }
    }

    /// Makes `op` with the calling process's env (`pid` receives the
    /// `{select, Resource, Ref, ready_input | ready_output}` messages).
    /// Returns the raw `enif_select` result (negative on failure).
    pub fn select(&self, env: Env<'_>, op: SelectOp, pid: &ErlNifPid, reference: Term<'_>) -> i32 {
        if op == SelectOp::Stop && self.resource().is_none() {
            // Never selected: closed here, as the stop callback would.
            self.close_if_never_selected();
            return 0;
        }
        let Some(resource) = self.resource_for_select() else {
            // Closed unselected (see `LoopHost::close_unselected`): nothing
            // to watch.
            return 0;
        };
        let _serial = resource
            .selecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let flags = match op {
            SelectOp::Arm { read, write } => {
                let marked = resource.state.compare_exchange(
                    STATE_FRESH,
                    STATE_SELECTED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if marked == Err(STATE_CLOSED) {
                    // Its registration went before this arm was made (see
                    // `LoopHost::close_unselected`): nothing to watch.
                    return 0;
                }
                (if read { ERL_NIF_SELECT_READ } else { 0 })
                    | (if write { ERL_NIF_SELECT_WRITE } else { 0 })
            }
            SelectOp::Stop => {
                if resource.close_if_fresh() {
                    return 0;
                }
                ERL_NIF_SELECT_STOP
            }
        };
        // SAFETY: called in a NIF of the serving process with its env; the
        // object is a live resource of our type; the fd is ours and open.
        unsafe {
            enif_select(
                env.as_c_arg(),
                resource.fd,
                flags,
                resource as *const FdResource as *mut _,
                pid,
                reference.as_c_arg(),
            )
        }
    }
}

/// A new handle owning a duplicate of `fd` (its resource is made at its
/// first select).
pub fn open(fd: RawFd, token: u64) -> std::io::Result<SelectHandle> {
    if FD_RESOURCE_TYPE.load(Ordering::Acquire).is_null() {
        return Err(std::io::Error::other("py_nif is not loaded"));
    }
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; a bad fd gives -1 and errno.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Arc::new(FdHandle {
        token,
        held: Mutex::new(Held::Fd(duplicate)),
    }))
}

/// A resource owning the duplicate `fd`, with one reference: the caller's.
fn alloc_resource(fd: RawFd, token: u64) -> *mut FdResource {
    let resource_type = FD_RESOURCE_TYPE.load(Ordering::Acquire);
    // SAFETY: the type is registered (checked when the handle was opened);
    // the size is our struct's.
    let object = unsafe { enif_alloc_resource(resource_type, std::mem::size_of::<FdResource>()) }
        as *mut FdResource;
    // SAFETY: freshly allocated, suitably sized memory (the VM aligns resource
    // memory for any type), written once before any use.
    unsafe {
        ptr::write(
            object,
            FdResource {
                fd,
                token,
                state: AtomicU8::new(STATE_FRESH),
                released: AtomicBool::new(false),
                selecting: Mutex::new(()),
            },
        )
    };
    object
}

/// The handle behind a resource term (for readiness messages), or `None`
/// for any other term.
pub fn from_term(term: Term<'_>) -> Option<FdHandle> {
    let resource_type = FD_RESOURCE_TYPE.load(Ordering::Acquire);
    let mut object: *const std::ffi::c_void = ptr::null();
    // SAFETY: enif_get_resource checks the term's type before writing `object`.
    let found = unsafe {
        enif_get_resource(
            term.get_env().as_c_arg(),
            term.as_c_arg(),
            resource_type,
            &mut object,
        )
    };
    if found == 0 {
        return None;
    }
    // SAFETY: a live object; the new handle takes its own reference.
    unsafe { enif_keep_resource(object) };
    let object = object as *mut FdResource;
    Some(FdHandle {
        // SAFETY: a live object of our type, kept by the reference above.
        token: unsafe { &*object }.token,
        held: Mutex::new(Held::Resource(object)),
    })
}

/// The `FdHandle` inside a core select handle.
pub fn downcast(handle: &SelectHandle) -> Option<&FdHandle> {
    handle.downcast_ref::<FdHandle>()
}
