//! A Python loop's own epoll set: the fds it watches, polled by the loop's
//! thread itself while it is awake.
//!
//! Selecting each fd through the BEAM costs an Erlang message (and a
//! scheduler wake-up) per readiness and another per re-arm: a busy loop paid
//! about 13 µs of BEAM time per socket event. With an epoll set of its own
//! the loop asks the kernel directly (one `epoll_wait` with no timeout per
//! iteration, as uvloop does), and the BEAM watches a single fd, the epoll
//! fd itself, only while the loop sleeps: its readiness wakes the loop as a
//! socket's used to. One select handle for that fd (LESSONS 16), armed and
//! stopped by the serving process only (LESSONS 18).
//!
//! That handle (the BEAM's duplicate of the epoll fd) is opened with the set,
//! when the loop is made, and kept until the loop closes: watching an fd then
//! takes no descriptor of the process, as with asyncio's selectors. A full fd
//! table fails the loop's creation, never an `add_reader` (where asyncio's
//! accept back-off would then lose an accepted connection).
//!
//! The set is level-triggered, as asyncio's selectors are: an fd stays ready
//! until read, so an event the loop did not take is reported again.
//!
//! The kernel keys a registration by fd number *and* open file, and drops
//! it only when the file's last descriptor closes. A watched socket closed
//! while a copy of it lives on (`sock.dup()`, a child's) would stay in the
//! set, ready forever and past any `EPOLL_CTL_DEL` by its number, and be
//! reported as whatever socket gets that number next. So every
//! registration carries a generation in its event data; an event of a
//! generation no longer watched means such a leftover, and the set is
//! rebuilt from the fds watched now (a new epoll fd, and a new select of
//! it), which leaves the leftover behind.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{Event, EventKind, SelectHandle, SelectOp, SelectRequest};

/// The registration token of the epoll fd's select handle. The fd registry
/// counts its tokens up from 1, so they never meet this one.
pub const POLLER_TOKEN: u64 = u64::MAX;

/// Events taken per `epoll_wait`; more ready fds are reported next time
/// (level-triggered: nothing is lost).
const EVENTS_PER_POLL: usize = 256;

/// The callback ids of an fd's two directions (`None` = not watched), and
/// the generation of its registration in the kernel's set.
#[derive(Debug, Clone, Copy, Default)]
struct Interest {
    read: Option<u64>,
    write: Option<u64>,
    generation: u32,
}

impl Interest {
    fn epoll_mask(self) -> u32 {
        let mut mask = 0;
        if self.read.is_some() {
            mask |= libc::EPOLLIN as u32;
        }
        if self.write.is_some() {
            mask |= libc::EPOLLOUT as u32;
        }
        mask
    }

    fn is_empty(self) -> bool {
        self.read.is_none() && self.write.is_none()
    }
}

pub struct FdPoller {
    epoll: OwnedFd,
    watched: HashMap<RawFd, Interest>,
    /// The host's select handle on the epoll fd, from `new` to `stop`.
    handle: Option<SelectHandle>,
    /// A one-shot select on the epoll fd is outstanding.
    armed: bool,
    buffer: Vec<libc::epoll_event>,
    /// The generation the next kernel registration gets.
    next_generation: u32,
    /// A poll met an event of a registration no longer watched.
    leftover_seen: bool,
}

impl FdPoller {
    /// A new, empty set; `open` makes the select handle of its epoll fd.
    pub fn new(open: impl FnOnce(RawFd) -> io::Result<SelectHandle>) -> io::Result<FdPoller> {
        let epoll = new_epoll()?;
        let handle = open(epoll.as_raw_fd())?;
        Ok(FdPoller {
            epoll,
            watched: HashMap::new(),
            handle: Some(handle),
            armed: false,
            buffer: Vec::with_capacity(EVENTS_PER_POLL),
            next_generation: 0,
            leftover_seen: false,
        })
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Watches `fd` for `kind`, reporting `id` (replacing the direction's
    /// previous id).
    pub fn add_interest(&mut self, fd: RawFd, kind: EventKind, id: u64) -> io::Result<()> {
        let old = self.watched.get(&fd).copied();
        let mut new = old.unwrap_or_default();
        match kind {
            EventKind::Read => new.read = Some(id),
            EventKind::Write => new.write = Some(id),
            EventKind::Timer => return Ok(()),
        }
        // Registered even when the mask is unchanged: the number may name
        // a new file since (closed and reused without a remove), unknown to
        // the kernel's set.
        new.generation = self.register(fd, old, new.epoll_mask())?;
        self.watched.insert(fd, new);
        Ok(())
    }

    /// Stops watching `fd` for `kind`; returns whether it was watched. The
    /// select handle stays when the last fd goes (see the module's comment):
    /// a set without fds is never ready, so its select never fires.
    pub fn remove_interest(&mut self, fd: RawFd, kind: EventKind) -> bool {
        let Some(interest) = self.watched.get_mut(&fd) else {
            return false;
        };
        let had = match kind {
            EventKind::Read => interest.read.take().is_some(),
            EventKind::Write => interest.write.take().is_some(),
            EventKind::Timer => false,
        };
        let interest = *interest;
        if interest.is_empty() {
            self.watched.remove(&fd);
            self.deregister(fd);
        } else if had {
            // A failure is an fd closed meanwhile, which left the set by
            // itself or is a leftover a poll will meet: nothing to do now.
            let _ = self.ctl(
                libc::EPOLL_CTL_MOD,
                fd,
                interest.epoll_mask(),
                interest.generation,
            );
        }
        had
    }

    /// `EPOLL_CTL_MOD` of a known registration, or `ADD` with a new
    /// generation; returns the registration's generation. An fd closed and
    /// reopened under the same number since it was added is new to the
    /// kernel: added again, as a new generation.
    fn register(&mut self, fd: RawFd, known: Option<Interest>, mask: u32) -> io::Result<u32> {
        if let Some(known) = known {
            match self.ctl(libc::EPOLL_CTL_MOD, fd, mask, known.generation) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                other => return other.map(|()| known.generation),
            }
        }
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        match self.ctl(libc::EPOLL_CTL_ADD, fd, mask, generation) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.ctl(libc::EPOLL_CTL_MOD, fd, mask, generation)
            }
            other => other,
        }
        .map(|()| generation)
    }

    /// Takes `fd` out of the set; an fd already closed is out already (or a
    /// leftover, which a poll will meet).
    fn deregister(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, mask: u32, generation: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: mask,
            u64: event_data(fd, generation),
        };
        // SAFETY: `event` is a valid epoll_event for the call's duration; the
        // kernel checks `fd` and answers EBADF for a bad one.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Appends the ready fds' events (at most `max`), without waiting.
    /// Returns how many were appended.
    pub fn poll(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        if self.watched.is_empty() || max == 0 {
            return 0;
        }
        let room = max.min(EVENTS_PER_POLL);
        self.buffer.clear();
        // SAFETY: the buffer has capacity for EVENTS_PER_POLL >= room events;
        // the kernel writes at most `room` of them and says how many.
        let count = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.buffer.as_mut_ptr(),
                room as libc::c_int,
                0,
            )
        };
        if count <= 0 {
            // EINTR or nothing ready: the next look sees what this missed.
            return 0;
        }
        // SAFETY: the kernel initialised the first `count` entries.
        unsafe { self.buffer.set_len(count as usize) };
        let before = out.len();
        for ready in &self.buffer {
            let (fd, generation) = split_event_data(ready.u64);
            let Some(interest) = self
                .watched
                .get(&fd)
                .filter(|interest| interest.generation == generation)
            else {
                self.leftover_seen = true;
                continue;
            };
            // As asyncio's EpollSelector: an error or a hang-up wakes both
            // directions, so the callback meets it in its read or write.
            let flags = ready.events;
            let failed = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            if let Some(id) = interest.read {
                if failed || flags & libc::EPOLLIN as u32 != 0 {
                    out.push(fd_event(EventKind::Read, id, fd));
                }
            }
            if let Some(id) = interest.write {
                if failed || flags & libc::EPOLLOUT as u32 != 0 {
                    out.push(fd_event(EventKind::Write, id, fd));
                }
            }
        }
        out.len() - before
    }

    /// Whether a poll met a leftover registration (see the module's
    /// comment) since the last call: then `rebuild`.
    pub fn take_leftover_seen(&mut self) -> bool {
        std::mem::take(&mut self.leftover_seen)
    }

    /// Replaces the kernel's set by a new one holding exactly the fds
    /// watched now (as new generations), so a leftover registration goes
    /// with the old set. `open` makes the new epoll fd's select handle;
    /// returns the stop of the old one's select. On failure the old set
    /// stays.
    pub fn rebuild(
        &mut self,
        open: impl FnOnce(RawFd) -> io::Result<SelectHandle>,
    ) -> io::Result<Option<SelectRequest>> {
        let old = std::mem::replace(&mut self.epoll, new_epoll()?);
        let saved = self.watched.clone();
        let fds: Vec<(RawFd, Interest)> = saved.iter().map(|(&fd, &i)| (fd, i)).collect();
        for (fd, interest) in fds {
            // A watched fd closed since is left out: it has nothing to report.
            if let Ok(generation) = self.register(fd, None, interest.epoll_mask()) {
                if let Some(watched) = self.watched.get_mut(&fd) {
                    watched.generation = generation;
                }
            }
        }
        let handle = match open(self.epoll.as_raw_fd()) {
            Ok(handle) => handle,
            Err(error) => {
                self.epoll = old;
                self.watched = saved;
                return Err(error);
            }
        };
        self.armed = false;
        Ok(self.handle.replace(handle).map(|handle| SelectRequest {
            handle,
            op: SelectOp::Stop,
        }))
    }

    /// The select the loop needs before it sleeps: the epoll fd watched by
    /// the BEAM, if fds are watched and no select is outstanding.
    pub fn arm_before_sleep(&mut self) -> Option<SelectRequest> {
        if self.watched.is_empty() || self.armed {
            return None;
        }
        let handle = self.handle.clone()?;
        self.armed = true;
        Some(SelectRequest {
            handle,
            op: SelectOp::Arm {
                read: true,
                write: false,
            },
        })
    }

    /// The BEAM saw the epoll fd ready: its one-shot select is spent.
    pub fn ready(&mut self) {
        self.armed = false;
    }

    /// A new serving process replaced a dead one, whose selects are void:
    /// the select it must make at once (the loop may be asleep already).
    pub fn reselect(&mut self) -> Option<SelectRequest> {
        self.armed = false;
        self.arm_before_sleep()
    }

    /// The stop of the epoll fd's select, at the loop's close.
    pub fn stop(&mut self) -> Option<SelectRequest> {
        self.watched.clear();
        self.armed = false;
        self.handle.take().map(|handle| SelectRequest {
            handle,
            op: SelectOp::Stop,
        })
    }
}

fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An event's data: the fd number and its registration's generation.
fn event_data(fd: RawFd, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(fd as u32)
}

fn split_event_data(data: u64) -> (RawFd, u32) {
    (data as u32 as RawFd, (data >> 32) as u32)
}

fn fd_event(kind: EventKind, id: u64, fd: RawFd) -> Event {
    Event {
        kind,
        id,
        key: fd as u64,
        deadline: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    fn poller() -> FdPoller {
        FdPoller::new(open).unwrap()
    }

    fn open(_epoll: RawFd) -> io::Result<SelectHandle> {
        Ok(Arc::new(POLLER_TOKEN))
    }

    fn polled(poller: &mut FdPoller) -> Vec<(EventKind, u64, u64)> {
        let mut out = Vec::new();
        poller.poll(&mut out, 64);
        let mut seen: Vec<_> = out.iter().map(|e| (e.kind, e.id, e.key)).collect();
        seen.sort_by_key(|&(kind, id, key)| (key, id, kind == EventKind::Write));
        seen
    }

    #[test]
    fn readiness_is_level_triggered_and_carries_the_direction_s_id() {
        let mut poller = poller();
        let (a, mut b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        poller.add_interest(fd, EventKind::Read, 7).unwrap();
        assert_eq!(polled(&mut poller), []);
        b.write_all(b"x").unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Read, 7, fd as u64)]);
        // Not read yet: reported again.
        assert_eq!(polled(&mut poller), [(EventKind::Read, 7, fd as u64)]);
        // A new id for the direction replaces the old one.
        poller.add_interest(fd, EventKind::Read, 8).unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Read, 8, fd as u64)]);
        (&a).read_exact(&mut [0u8; 1]).unwrap();
        assert_eq!(polled(&mut poller), []);
    }

    #[test]
    fn both_directions_of_one_fd_and_a_hang_up_wakes_both() {
        let mut poller = poller();
        let (a, b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        poller.add_interest(fd, EventKind::Write, 2).unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Write, 2, fd as u64)]);
        poller.add_interest(fd, EventKind::Read, 1).unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Write, 2, fd as u64)]);
        // Writing no longer watched: the kernel's set stops reporting it too
        // (else the BEAM would wake the loop for it).
        assert!(poller.remove_interest(fd, EventKind::Write));
        assert_eq!(polled(&mut poller), []);
        assert!(!epoll_readable(&poller));
        poller.add_interest(fd, EventKind::Write, 2).unwrap();
        drop(b);
        assert_eq!(
            polled(&mut poller),
            [
                (EventKind::Read, 1, fd as u64),
                (EventKind::Write, 2, fd as u64)
            ]
        );
        assert_eq!(poller.len(), 1);
    }

    #[test]
    fn removed_interest_is_silent_and_the_select_handle_stays_until_stop() {
        let mut opened = 0;
        let mut poller = FdPoller::new(|epoll| {
            opened += 1;
            open(epoll)
        })
        .unwrap();
        let (a, mut peer_a) = UnixStream::pair().unwrap();
        let (c, _peer_c) = UnixStream::pair().unwrap();
        poller
            .add_interest(a.as_raw_fd(), EventKind::Read, 1)
            .unwrap();
        poller
            .add_interest(c.as_raw_fd(), EventKind::Read, 2)
            .unwrap();
        peer_a.write_all(b"x").unwrap();
        assert!(!poller.remove_interest(a.as_raw_fd(), EventKind::Write));
        assert!(poller.remove_interest(a.as_raw_fd(), EventKind::Read));
        assert_eq!(polled(&mut poller), []);
        assert!(poller.remove_interest(c.as_raw_fd(), EventKind::Read));
        assert!(poller.is_empty());
        assert!(!poller.remove_interest(c.as_raw_fd(), EventKind::Read));
        // Watching again needs no new handle (no new fd of the process).
        poller
            .add_interest(c.as_raw_fd(), EventKind::Read, 3)
            .unwrap();
        assert!(poller.arm_before_sleep().is_some());
        assert_eq!(opened, 1);
        // The loop's close stops the one handle, once.
        assert_eq!(
            poller.stop().map(|request| request.op),
            Some(SelectOp::Stop)
        );
        assert!(poller.stop().is_none());
    }

    #[test]
    fn a_set_whose_handle_cannot_be_opened_is_not_made() {
        let error = FdPoller::new(|_| Err(io::Error::from_raw_os_error(libc::EMFILE)))
            .err()
            .unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::EMFILE));
    }

    #[test]
    fn an_fd_number_that_now_names_another_socket_is_watched_again() {
        let mut poller = poller();
        let (a, _peer_a) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        poller.add_interest(fd, EventKind::Read, 1).unwrap();
        // The number is made to name another socket at once (dup2 closes the
        // old one, which leaves the epoll set), as a closed-and-reused fd.
        let (b, mut peer_b) = UnixStream::pair().unwrap();
        // SAFETY: both fds are open and ours; `a` is forgotten below so the
        // number is closed once, by the OwnedFd made of it.
        assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), fd) }, fd);
        let reused = unsafe { OwnedFd::from_raw_fd(a.into_raw_fd_for_test()) };
        peer_b.write_all(b"x").unwrap();
        assert_eq!(polled(&mut poller), []);
        poller.add_interest(fd, EventKind::Read, 2).unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Read, 2, fd as u64)]);
        drop(reused);
    }

    fn epoll_readable(poller: &FdPoller) -> bool {
        let mut pfd = libc::pollfd {
            fd: poller.epoll.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn a_closed_watched_fd_whose_file_lives_on_is_shed_by_a_rebuild() {
        let mut poller = poller();
        let (other, mut peer_other) = UnixStream::pair().unwrap();
        poller
            .add_interest(other.as_raw_fd(), EventKind::Read, 9)
            .unwrap();
        let (a, mut peer_a) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        poller.add_interest(fd, EventKind::Read, 1).unwrap();
        let alive = a.try_clone().unwrap();
        drop(a); // closed while watched, its file alive through `alive`
        poller.remove_interest(fd, EventKind::Read);
        peer_a.write_all(b"x").unwrap();
        assert_eq!(polled(&mut poller), []);
        assert!(poller.take_leftover_seen());
        assert!(!poller.take_leftover_seen(), "taken");
        assert!(epoll_readable(&poller), "the leftover keeps the set ready");
        poller.arm_before_sleep().unwrap();
        let mut opened = 0;
        let stop = poller
            .rebuild(|epoll| {
                opened += 1;
                open(epoll)
            })
            .unwrap();
        assert_eq!((opened, stop.map(|r| r.op)), (1, Some(SelectOp::Stop)));
        assert!(!epoll_readable(&poller));
        assert!(
            poller.arm_before_sleep().is_some(),
            "the new fd needs its select"
        );
        // The fds still watched are in the new set.
        peer_other.write_all(b"y").unwrap();
        let other_fd = other.as_raw_fd() as u64;
        assert_eq!(polled(&mut poller), [(EventKind::Read, 9, other_fd)]);
        assert!(!poller.take_leftover_seen());
        drop(alive);
    }

    #[test]
    fn a_reused_number_never_gets_the_old_file_s_events() {
        let mut poller = poller();
        let (a, mut peer_a) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        poller.add_interest(fd, EventKind::Read, 1).unwrap();
        let alive = a.try_clone().unwrap();
        let (c, mut peer_c) = UnixStream::pair().unwrap();
        // SAFETY: both fds are open and ours; `a` is forgotten below.
        assert_eq!(unsafe { libc::dup2(c.as_raw_fd(), fd) }, fd);
        let reused = unsafe { OwnedFd::from_raw_fd(a.into_raw_fd_for_test()) };
        poller.add_interest(fd, EventKind::Read, 2).unwrap();
        peer_a.write_all(b"x").unwrap(); // only the old file is readable
        assert_eq!(polled(&mut poller), []);
        assert!(poller.take_leftover_seen());
        poller.rebuild(open).unwrap();
        assert_eq!(polled(&mut poller), []);
        peer_c.write_all(b"y").unwrap();
        assert_eq!(polled(&mut poller), [(EventKind::Read, 2, fd as u64)]);
        drop(reused);
        drop(alive);
    }

    trait IntoRawFdForTest {
        fn into_raw_fd_for_test(self) -> RawFd;
    }

    impl IntoRawFdForTest for UnixStream {
        fn into_raw_fd_for_test(self) -> RawFd {
            std::os::fd::IntoRawFd::into_raw_fd(self)
        }
    }

    #[test]
    fn a_bad_or_unpollable_fd_is_an_error_and_watches_nothing() {
        let mut poller = poller();
        let error = poller.add_interest(-1, EventKind::Read, 1).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let error = poller
            .add_interest(file.as_raw_fd(), EventKind::Read, 1)
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        assert!(poller.is_empty());
        assert!(poller.arm_before_sleep().is_none());
    }

    #[test]
    fn the_epoll_fd_is_armed_once_per_sleep_until_the_beam_reports_it() {
        let mut poller = poller();
        assert!(poller.arm_before_sleep().is_none(), "nothing to watch");
        let (a, _b) = UnixStream::pair().unwrap();
        poller
            .add_interest(a.as_raw_fd(), EventKind::Read, 1)
            .unwrap();
        let arm = poller.arm_before_sleep().unwrap();
        assert_eq!(
            arm.op,
            SelectOp::Arm {
                read: true,
                write: false
            }
        );
        assert!(poller.arm_before_sleep().is_none(), "already armed");
        poller.ready();
        assert!(poller.arm_before_sleep().is_some());
        assert!(poller.reselect().is_some(), "armed again for a new server");
        assert!(poller.arm_before_sleep().is_none());
        assert_eq!(poller.stop().map(|r| r.op), Some(SelectOp::Stop));
        assert!(poller.arm_before_sleep().is_none());
    }
}
