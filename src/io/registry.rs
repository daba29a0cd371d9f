//! The fds a loop watches. One entry (and one select handle) per fd holds
//! both directions (LESSONS 16). Entries are found by fd for the owner and by
//! token for readiness coming back from Erlang; a token is never reused, so
//! readiness of a removed registration is recognised and ignored (LESSONS 19).
//!
//! An fd closed without a remove and its number reused at once (LESSONS 17)
//! must not inherit the old registration: its select handle holds a
//! duplicate of the old file, whose readiness is not the new one's. Each
//! entry remembers which open file it watches (device and inode), and an
//! `add_reader`/`add_writer` of a number that now names another file starts
//! a new registration, after stopping the old one.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{EventKind, SelectHandle, SelectOp, SelectRequest};

/// One watched fd.
pub struct FdEntry {
    /// The host's select resource for this registration.
    pub handle: SelectHandle,
    /// The open file the fd named when it was registered.
    pub file: Option<FileId>,
    /// Identifies this registration in readiness messages.
    pub token: u64,
    /// The callback ids of each direction's interest; `None` = not watched.
    pub read_id: Option<u64>,
    pub write_id: Option<u64>,
    /// A one-shot select is outstanding for the direction.
    pub armed_read: bool,
    pub armed_write: bool,
    /// A readiness event of the direction sits in the pending queue
    /// (further readiness coalesces into it).
    pub pending_read: bool,
    pub pending_write: bool,
}

impl FdEntry {
    fn interest(&self, kind: EventKind) -> Option<u64> {
        match kind {
            EventKind::Read => self.read_id,
            EventKind::Write => self.write_id,
            EventKind::Timer => None,
        }
    }

    /// The select this entry needs now: directions watched, not armed, not
    /// already waiting in the pending queue.
    fn arm_needed(&mut self) -> Option<SelectOp> {
        let read = self.read_id.is_some() && !self.armed_read && !self.pending_read;
        let write = self.write_id.is_some() && !self.armed_write && !self.pending_write;
        if !read && !write {
            return None;
        }
        self.armed_read |= read;
        self.armed_write |= write;
        Some(SelectOp::Arm { read, write })
    }
}

/// An open file: its device and inode number.
pub type FileId = (u64, u64);

/// The open file `fd` names now, if it is open.
fn file_of(fd: RawFd) -> Option<FileId> {
    // SAFETY: fstat writes into `stat` only; a bad fd gives -1.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable struct for the call.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 {
        return None;
    }
    Some((stat.st_dev, stat.st_ino))
}

/// What became of a readiness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Queue this event.
    Ready { fd: RawFd, id: u64 },
    /// An event for the same fd and direction is already queued.
    Coalesced,
    /// The registration or the interest is gone.
    Stale,
}

/// Tokens are numbered across all loops of the process, so that a
/// registration's token (an Erlang `FdRef`, an fd resource) given to
/// another loop names nothing there. (An own-poller loop's epoll handle has
/// the fixed `POLLER_TOKEN`, in every loop: a readiness of another loop's
/// costs one look that finds nothing.)
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct FdRegistry {
    by_fd: HashMap<RawFd, FdEntry>,
    fd_of_token: HashMap<u64, RawFd>,
}

impl FdRegistry {
    pub fn len(&self) -> usize {
        self.by_fd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }

    pub fn get(&self, fd: RawFd) -> Option<&FdEntry> {
        self.by_fd.get(&fd)
    }

    /// Adds interest in `kind` on `fd`, creating the registration (and its
    /// select handle through `open`) on first use. Returns the select to make.
    pub fn add_interest(
        &mut self,
        fd: RawFd,
        kind: EventKind,
        id: u64,
        open: impl FnOnce(u64) -> std::io::Result<SelectHandle>,
    ) -> std::io::Result<Option<SelectRequest>> {
        if !self.by_fd.contains_key(&fd) {
            let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
            let handle = open(token)?;
            self.insert(fd, token, handle, file_of(fd));
        }
        let entry = self.by_fd.get_mut(&fd).expect("inserted above");
        match kind {
            EventKind::Read => entry.read_id = Some(id),
            EventKind::Write => entry.write_id = Some(id),
            EventKind::Timer => return Ok(None),
        }
        Ok(entry.arm_needed().map(|op| SelectRequest {
            handle: entry.handle.clone(),
            op,
        }))
    }

    /// Removes interest in `kind`; the registration goes (and its select is
    /// stopped) when no direction is left. Returns whether there was interest,
    /// and the stop request if the registration went.
    pub fn remove_interest(&mut self, fd: RawFd, kind: EventKind) -> (bool, Option<SelectRequest>) {
        let Some(entry) = self.by_fd.get_mut(&fd) else {
            return (false, None);
        };
        // The core drops a queued event of this direction with the interest.
        let had = match kind {
            EventKind::Read => {
                entry.pending_read = false;
                entry.read_id.take().is_some()
            }
            EventKind::Write => {
                entry.pending_write = false;
                entry.write_id.take().is_some()
            }
            EventKind::Timer => false,
        };
        if entry.read_id.is_some() || entry.write_id.is_some() {
            return (had, None);
        }
        (had, self.remove(fd))
    }

    /// A new registration of `fd`, without interest yet.
    fn insert(&mut self, fd: RawFd, token: u64, handle: SelectHandle, file: Option<FileId>) {
        self.fd_of_token.insert(token, fd);
        self.by_fd.insert(
            fd,
            FdEntry {
                handle,
                file,
                token,
                read_id: None,
                write_id: None,
                armed_read: false,
                armed_write: false,
                pending_read: false,
                pending_write: false,
            },
        );
    }

    /// When `fd` is registered but now names another open file than the
    /// registration's (closed and reused without a remove): a new
    /// registration without interest, its handle made by `open`, replaces
    /// the old one, whose stop is returned. The handle is made first: when
    /// `open` fails (the number is closed now: EBADF), nothing changes, and
    /// no stop is owed that the caller's error would leave untold.
    pub fn replace_if_reopened(
        &mut self,
        fd: RawFd,
        open: impl FnOnce(u64) -> std::io::Result<SelectHandle>,
    ) -> std::io::Result<Option<SelectRequest>> {
        let Some(entry) = self.by_fd.get(&fd) else {
            return Ok(None);
        };
        let file = file_of(fd);
        if file == entry.file {
            return Ok(None);
        }
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let handle = open(token)?;
        let stop = self.remove(fd);
        self.insert(fd, token, handle, file);
        Ok(stop)
    }

    /// Forgets `fd` entirely; returns its stop request.
    pub fn remove(&mut self, fd: RawFd) -> Option<SelectRequest> {
        let entry = self.by_fd.remove(&fd)?;
        self.fd_of_token.remove(&entry.token);
        Some(SelectRequest {
            handle: entry.handle,
            op: SelectOp::Stop,
        })
    }

    /// Stops every registration (loop close).
    pub fn remove_all(&mut self) -> Vec<SelectRequest> {
        let fds: Vec<RawFd> = self.by_fd.keys().copied().collect();
        fds.into_iter().filter_map(|fd| self.remove(fd)).collect()
    }

    /// Readiness of `kind` reported for the registration `token`: the
    /// one-shot select is spent; queue an event unless one is queued already.
    pub fn ready(&mut self, token: u64, kind: EventKind) -> Readiness {
        let Some(entry) = self
            .fd_of_token
            .get(&token)
            .and_then(|fd| self.by_fd.get_mut(fd))
        else {
            return Readiness::Stale;
        };
        let interest = entry.interest(kind);
        let (armed, pending) = match kind {
            EventKind::Read => (&mut entry.armed_read, &mut entry.pending_read),
            EventKind::Write => (&mut entry.armed_write, &mut entry.pending_write),
            EventKind::Timer => return Readiness::Stale,
        };
        *armed = false;
        let Some(id) = interest else {
            return Readiness::Stale;
        };
        if *pending {
            return Readiness::Coalesced;
        }
        *pending = true;
        let fd = *self.fd_of_token.get(&token).expect("found above");
        Readiness::Ready { fd, id }
    }

    /// The owner took the queued event of (`fd`, `kind`). Returns whether it
    /// is still wanted (interest unchanged since it was queued).
    pub fn taken(&mut self, fd: RawFd, kind: EventKind, id: u64) -> bool {
        let Some(entry) = self.by_fd.get_mut(&fd) else {
            return false;
        };
        match kind {
            EventKind::Read => entry.pending_read = false,
            EventKind::Write => entry.pending_write = false,
            EventKind::Timer => return false,
        }
        entry.interest(kind) == Some(id)
    }

    /// Every select this registry needs when a new process takes over the
    /// loop: the one-shot selects armed by the previous (dead) process will
    /// never report.
    pub fn reselect_all(&mut self) -> Vec<SelectRequest> {
        self.by_fd
            .values_mut()
            .filter_map(|entry| {
                entry.armed_read = false;
                entry.armed_write = false;
                entry.arm_needed().map(|op| SelectRequest {
                    handle: entry.handle.clone(),
                    op,
                })
            })
            .collect()
    }

    /// The select `fd` needs again after its events were taken (level
    /// triggered: if the fd is still ready, a new event comes).
    pub fn rearm(&mut self, fd: RawFd) -> Option<SelectRequest> {
        let entry = self.by_fd.get_mut(&fd)?;
        entry.arm_needed().map(|op| SelectRequest {
            handle: entry.handle.clone(),
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn open(token: u64) -> std::io::Result<SelectHandle> {
        Ok(Arc::new(token))
    }

    fn token_of(request: &SelectRequest) -> u64 {
        *request.handle.downcast_ref::<u64>().unwrap()
    }

    #[test]
    fn one_handle_per_fd_for_both_directions() {
        let mut registry = FdRegistry::default();
        let first = registry
            .add_interest(5, EventKind::Read, 1, open)
            .unwrap()
            .unwrap();
        let second = registry
            .add_interest(5, EventKind::Write, 2, open)
            .unwrap()
            .unwrap();
        assert_eq!(token_of(&first), token_of(&second));
        assert_eq!(
            first.op,
            SelectOp::Arm {
                read: true,
                write: false
            }
        );
        assert_eq!(
            second.op,
            SelectOp::Arm {
                read: false,
                write: true
            }
        );
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn readiness_coalesces_until_taken_then_rearms() {
        let mut registry = FdRegistry::default();
        let request = registry
            .add_interest(7, EventKind::Read, 9, open)
            .unwrap()
            .unwrap();
        let token = token_of(&request);
        assert_eq!(
            registry.ready(token, EventKind::Read),
            Readiness::Ready { fd: 7, id: 9 }
        );
        // Not re-armed while the event waits in the queue.
        assert!(registry.rearm(7).is_none());
        assert_eq!(registry.ready(token, EventKind::Read), Readiness::Coalesced);
        assert!(registry.taken(7, EventKind::Read, 9));
        let again = registry.rearm(7).unwrap();
        assert_eq!(
            again.op,
            SelectOp::Arm {
                read: true,
                write: false
            }
        );
        // Armed now: no duplicate select.
        assert!(registry.rearm(7).is_none());
    }

    #[test]
    fn removed_registrations_make_readiness_stale_even_if_the_fd_is_reused() {
        let mut registry = FdRegistry::default();
        let old = token_of(
            &registry
                .add_interest(3, EventKind::Read, 1, open)
                .unwrap()
                .unwrap(),
        );
        let (had, stop) = registry.remove_interest(3, EventKind::Read);
        assert!(had);
        assert_eq!(stop.unwrap().op, SelectOp::Stop);
        let new = token_of(
            &registry
                .add_interest(3, EventKind::Read, 2, open)
                .unwrap()
                .unwrap(),
        );
        assert_ne!(old, new);
        assert_eq!(registry.ready(old, EventKind::Read), Readiness::Stale);
        assert_eq!(
            registry.ready(new, EventKind::Read),
            Readiness::Ready { fd: 3, id: 2 }
        );
    }

    #[test]
    fn an_event_queued_before_its_interest_was_removed_is_not_wanted() {
        let mut registry = FdRegistry::default();
        let token = token_of(
            &registry
                .add_interest(4, EventKind::Read, 1, open)
                .unwrap()
                .unwrap(),
        );
        registry.add_interest(4, EventKind::Write, 2, open).unwrap();
        assert!(matches!(
            registry.ready(token, EventKind::Read),
            Readiness::Ready { .. }
        ));
        let (had, stop) = registry.remove_interest(4, EventKind::Read);
        assert!(had && stop.is_none());
        assert!(!registry.taken(4, EventKind::Read, 1));
        assert!(!registry.remove_interest(99, EventKind::Read).0);
    }

    #[test]
    fn open_failure_leaves_nothing_behind() {
        let mut registry = FdRegistry::default();
        let failed = registry.add_interest(8, EventKind::Read, 1, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EBADF))
        });
        assert!(failed.is_err());
        assert!(registry.is_empty());
    }
}
