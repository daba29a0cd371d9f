//! Delivery of the one process signal a loop may handle: SIGCHLD. The BEAM
//! owns every other signal; SIGCHLD it leaves alone (its children are forked
//! by `erl_child_setup`), and asyncio's SafeChildWatcher/FastChildWatcher
//! need `add_signal_handler(SIGCHLD, ...)`.
//!
//! Each subscribing loop gets a pipe; the C handler writes the signal number
//! to every subscriber's (non-blocking) write end, which is all it does
//! (async-signal-safe), and the loop watches the read end like any fd.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The signals a loop may subscribe to.
pub const SUPPORTED: [libc::c_int; 1] = [libc::SIGCHLD];

/// Most loops subscribed at once.
const SLOTS: usize = 64;

/// Write ends of the subscribers' pipes (-1 = free), read by the handler.
static WRITE_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Serialises subscribe/unsubscribe and remembers the disposition we replaced.
static INSTALLED: Mutex<Option<libc::sigaction>> = Mutex::new(None);

extern "C" fn on_signal(signum: libc::c_int) {
    let byte = signum as u8;
    for slot in &WRITE_FDS {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; a full pipe or a closed
            // fd only makes it fail, which is fine (the loop is woken anyway
            // or gone).
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        }
    }
}

/// A subscription: the loop reads signal numbers (one byte each) from `read_fd`.
#[derive(Debug)]
pub struct Subscription {
    pub read_fd: RawFd,
    slot: usize,
}

/// Subscribes to `signum` (only SIGCHLD): returns the pipe to watch.
pub fn subscribe(signum: libc::c_int) -> io::Result<Subscription> {
    if !SUPPORTED.contains(&signum) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    let slot = WRITE_FDS
        .iter()
        .position(|fd| fd.load(Ordering::Relaxed) < 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EMFILE))?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    WRITE_FDS[slot].store(fds[1], Ordering::Release);
    if installed.is_none() {
        let mut previous = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: an all-zero sigaction is valid; we fill handler and flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        // SAFETY: installs a handler that only calls write(2); the previous
        // disposition is saved to be restored by the last unsubscribe.
        if unsafe { libc::sigaction(signum, &action, previous.as_mut_ptr()) } != 0 {
            let error = io::Error::last_os_error();
            release(slot, fds[0]);
            return Err(error);
        }
        // SAFETY: sigaction succeeded and filled `previous`.
        *installed = Some(unsafe { previous.assume_init() });
    }
    Ok(Subscription {
        read_fd: fds[0],
        slot,
    })
}

/// Ends a subscription: closes its pipe; the last one restores the old
/// disposition of SIGCHLD.
pub fn unsubscribe(subscription: Subscription) {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    release(subscription.slot, subscription.read_fd);
    let any_left = WRITE_FDS.iter().any(|fd| fd.load(Ordering::Relaxed) >= 0);
    if !any_left {
        if let Some(previous) = installed.take() {
            // SAFETY: restores the disposition saved at the first subscribe.
            unsafe { libc::sigaction(libc::SIGCHLD, &previous, std::ptr::null_mut()) };
        }
    }
}

fn release(slot: usize, read_fd: RawFd) {
    let write_fd = WRITE_FDS[slot].swap(-1, Ordering::AcqRel);
    // SAFETY: both fds are ours (made by pipe2 above) and closed once here.
    unsafe {
        if write_fd >= 0 {
            libc::close(write_fd);
        }
        libc::close(read_fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sigchld_is_supported() {
        assert!(subscribe(libc::SIGINT).is_err());
        assert!(subscribe(libc::SIGUSR1).is_err());
    }

    #[test]
    fn a_child_exit_reaches_every_subscriber() {
        let first = subscribe(libc::SIGCHLD).unwrap();
        let second = subscribe(libc::SIGCHLD).unwrap();
        let status = std::process::Command::new("true").status().unwrap();
        assert!(status.success());
        for subscription in [&first, &second] {
            let mut byte = 0u8;
            let mut got = -1;
            for _ in 0..2000 {
                // SAFETY: reads one byte into a local from our non-blocking pipe.
                got = unsafe { libc::read(subscription.read_fd, (&mut byte as *mut u8).cast(), 1) };
                if got == 1 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(got, 1);
            assert_eq!(byte as libc::c_int, libc::SIGCHLD);
        }
        unsubscribe(first);
        unsubscribe(second);
        assert!(
            INSTALLED.lock().unwrap().is_none(),
            "old disposition restored"
        );
    }
}
