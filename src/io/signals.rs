//! Delivery of process signals to loops. Each subscribing loop gets a pipe;
//! a delivered signal's number is written (one byte) to every subscriber's
//! non-blocking write end, and the loop watches the read end like any fd,
//! running the handlers it has for that number and ignoring the others.
//!
//! The BEAM owns the process's signals (LESSONS 2), so a signal reaches the
//! pipes one of two ways:
//! - SIGCHLD, which the BEAM leaves alone (its children are forked by
//!   `erl_child_setup`) and asyncio's SafeChildWatcher/FastChildWatcher
//!   need, is caught by a handler of ours ([`catch`]), installed while a
//!   loop has a handler for it. The handler only writes to the pipes
//!   (async-signal-safe).
//! - [`ROUTED`] signals are caught by the BEAM itself (`os:set_signal(Sig,
//!   handle)`), whose signal server hands them to `py_signal_forwarder`,
//!   which calls [`notify`]. Which signals the BEAM routes so is its own
//!   choice; the ones it uses itself (SIGINT, SIGTERM, SIGQUIT, SIGUSR1)
//!   are not among these.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Signals caught by a handler of ours.
pub const CAUGHT: [libc::c_int; 1] = [libc::SIGCHLD];

/// Signals the BEAM catches and passes on (`os:set_signal/2` accepts them,
/// and it has no use of its own for them).
pub const ROUTED: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGALRM, libc::SIGUSR2];

/// Most subscribers at once: more than the loops a process can have with a
/// signal handler before its fds run out (a pipe each, as asyncio's loops
/// have a socket pair each), so that limit is the OS's, as for asyncio. 64
/// ran out first: loops dropped without `close()` keep theirs until the
/// cyclic GC finds them (their handlers hold them).
const SLOTS: usize = 4096;

/// Write ends of the subscribers' pipes (-1 = free), read by the handler.
static WRITE_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// One past the highest slot ever taken: the handler looks no further.
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);

/// Calls of [`notify`] running now. An unsubscribe waits for none to run
/// before it closes the pipe: a write end loaded by a `notify` must not be
/// closed, its number reused by another file and that file written to.
/// (A counter, not a lock: the signal handler may not take one.)
static NOTIFYING: AtomicUsize = AtomicUsize::new(0);

/// How many [`catch`]es of SIGCHLD are in force, and the disposition ours
/// replaced (restored when the count drops to 0). Also serialises
/// subscribe/unsubscribe.
static CATCHES: Mutex<(usize, Option<libc::sigaction>)> = Mutex::new((0, None));

extern "C" fn on_signal(signum: libc::c_int) {
    // SAFETY: errno is the interrupted thread's; a failed write below must
    // not change what it reads next.
    let saved_errno = unsafe { *libc::__errno_location() };
    notify(signum);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Writes `signum` to every subscriber's pipe. Async-signal-safe: atomics
/// and write(2) only.
pub fn notify(signum: libc::c_int) {
    NOTIFYING.fetch_add(1, Ordering::SeqCst);
    let byte = signum as u8;
    let used = SLOTS_USED.load(Ordering::SeqCst);
    for slot in &WRITE_FDS[..used] {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: write(2) of one byte from a local, to a pipe not closed
            // while `NOTIFYING` counts this call; a full pipe only makes it
            // fail, which is fine (the loop is woken anyway).
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        }
    }
    NOTIFYING.fetch_sub(1, Ordering::SeqCst);
}

/// A subscription: the loop reads signal numbers (one byte each) from `read_fd`.
#[derive(Debug)]
pub struct Subscription {
    pub read_fd: RawFd,
    slot: usize,
}

/// A new pipe that every delivered signal is written to.
pub fn subscribe() -> io::Result<Subscription> {
    let _serialised = CATCHES.lock().unwrap_or_else(|e| e.into_inner());
    let slot = WRITE_FDS
        .iter()
        .position(|fd| fd.load(Ordering::Relaxed) < 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EMFILE))?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SLOTS_USED.fetch_max(slot + 1, Ordering::SeqCst);
    WRITE_FDS[slot].store(fds[1], Ordering::SeqCst);
    Ok(Subscription {
        read_fd: fds[0],
        slot,
    })
}

/// Ends a subscription: closes its pipe, once no [`notify`] that may have
/// loaded its write end runs.
pub fn unsubscribe(subscription: Subscription) {
    let _serialised = CATCHES.lock().unwrap_or_else(|e| e.into_inner());
    let write_fd = WRITE_FDS[subscription.slot].swap(-1, Ordering::SeqCst);
    // A notify that began after the swap cannot see the fd; one that began
    // before is counted. A signal handler interrupting this very loop runs
    // to its end before the loop goes on, so this never waits on itself.
    while NOTIFYING.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    // SAFETY: both fds are ours (made by pipe2 above) and closed once here.
    unsafe {
        if write_fd >= 0 {
            libc::close(write_fd);
        }
        libc::close(subscription.read_fd);
    }
}

/// The disposition of `signum` now: `SIG_DFL`, `SIG_IGN` or a handler.
pub fn disposition(signum: libc::c_int) -> io::Result<libc::sighandler_t> {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current one
    // into `current`, zero-initialised and large enough.
    if unsafe { libc::sigaction(signum, std::ptr::null(), current.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigaction succeeded and filled `current`.
    Ok(unsafe { current.assume_init() }.sa_sigaction)
}

/// Catches `signum` (one of [`CAUGHT`]; EINVAL otherwise) into the pipes:
/// the first catch installs our handler, saving the disposition it
/// replaces. Each catch is ended by one [`uncatch`].
pub fn catch(signum: libc::c_int) -> io::Result<()> {
    if !CAUGHT.contains(&signum) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut catches = CATCHES.lock().unwrap_or_else(|e| e.into_inner());
    if catches.0 == 0 {
        let mut previous = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: an all-zero sigaction is valid; we fill handler and flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        // SAFETY: installs a handler that only calls write(2); the previous
        // disposition is saved to be restored by the last uncatch.
        if unsafe { libc::sigaction(signum, &action, previous.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sigaction succeeded and filled `previous`.
        catches.1 = Some(unsafe { previous.assume_init() });
    }
    catches.0 += 1;
    Ok(())
}

/// Ends one [`catch`] of `signum`; the last restores the disposition the
/// first replaced. False (and nothing done) if none is in force.
pub fn uncatch(signum: libc::c_int) -> bool {
    let mut catches = CATCHES.lock().unwrap_or_else(|e| e.into_inner());
    if !CAUGHT.contains(&signum) || catches.0 == 0 {
        return false;
    }
    catches.0 -= 1;
    if catches.0 == 0 {
        if let Some(previous) = catches.1.take() {
            // SAFETY: restores the disposition saved at the first catch.
            unsafe { libc::sigaction(signum, &previous, std::ptr::null_mut()) };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `signum` arrives on `subscription`'s pipe within 10 s. Other
    /// bytes are passed over: the tests run at once and share the pipes'
    /// table, so one test's signals reach the other's subscribers too.
    fn arrives(subscription: &Subscription, signum: libc::c_int) -> bool {
        let mut byte = 0u8;
        for _ in 0..2000 {
            // SAFETY: reads one byte into a local from our non-blocking pipe.
            let got = unsafe { libc::read(subscription.read_fd, (&mut byte as *mut u8).cast(), 1) };
            if got == 1 && byte == signum as u8 {
                return true;
            }
            if got != 1 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        false
    }

    #[test]
    fn only_sigchld_is_caught_by_us() {
        for signum in [libc::SIGINT, libc::SIGUSR1, libc::SIGHUP, libc::SIGALRM] {
            assert_eq!(
                catch(signum).unwrap_err().raw_os_error(),
                Some(libc::EINVAL)
            );
        }
        assert!(!uncatch(libc::SIGINT));
    }

    #[test]
    fn a_child_exit_reaches_every_subscriber() {
        let first = subscribe().unwrap();
        let second = subscribe().unwrap();
        catch(libc::SIGCHLD).unwrap();
        catch(libc::SIGCHLD).unwrap();
        let status = std::process::Command::new("true").status().unwrap();
        assert!(status.success());
        for subscription in [&first, &second] {
            assert!(arrives(subscription, libc::SIGCHLD));
        }
        assert!(uncatch(libc::SIGCHLD));
        assert!(CATCHES.lock().unwrap().1.is_some(), "one catch left");
        assert!(uncatch(libc::SIGCHLD));
        assert!(
            CATCHES.lock().unwrap().1.is_none(),
            "old disposition restored"
        );
        assert!(!uncatch(libc::SIGCHLD), "no catch left to end");
        unsubscribe(first);
        unsubscribe(second);
    }

    #[test]
    fn a_routed_signal_reaches_every_subscriber() {
        let first = subscribe().unwrap();
        let second = subscribe().unwrap();
        notify(libc::SIGHUP);
        assert!(arrives(&first, libc::SIGHUP));
        assert!(arrives(&second, libc::SIGHUP));
        unsubscribe(first);
        unsubscribe(second);
    }
}
