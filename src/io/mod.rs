//! The per-loop native core: what a Python `ErlangEventLoop` (or an Erlang
//! user of the low-level NIF API) shares with the Erlang process that serves
//! it. Pure Rust: the Erlang side is reached through [`LoopHost`] and through
//! the [`Wake`] values the core returns to its callers.
//!
//! - [`pending`]: the FIFO of ready events, one per loop (LESSONS 21).
//! - [`registry`]: the fds a loop watches, one select handle per fd (LESSONS 16).
//! - [`poller`]: a Python loop's own epoll set instead: the BEAM selects only
//!   its fd, while the loop sleeps.
//! - [`core`]: the loop core itself: timers, fds, the wait with the GIL
//!   released, wake-ups.
//! - [`stats`]: counters for tracing and tests.

pub mod core;
pub mod pending;
pub mod poller;
pub mod registry;
pub mod signals;
pub mod stats;

use std::any::Any;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub use self::core::{Look, LoopCore, WaitError};
pub use self::stats::LoopStats;

/// Which readiness, or a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Read,
    Write,
    Timer,
}

/// One ready event, as the loop's owner drains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The caller's callback id (given at `add_interest`/`insert_timer`).
    pub id: u64,
    /// The fd for fd events; the timer key (`TimerKey::to_u64`) for timers.
    pub key: u64,
    /// A timer's exact deadline (0 for fd events): an owner that drains
    /// timers fired by separate advances orders them by it.
    pub deadline: u64,
}

/// The host's handle on one watched fd (in the NIF: an `enif_select`
/// resource that owns a duplicate of the fd). Opaque to the core.
pub type SelectHandle = Arc<dyn Any + Send + Sync>;

/// What the serving Erlang process must do with a select handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectOp {
    /// Select for these directions (one-shot, as `enif_select` is).
    Arm { read: bool, write: bool },
    /// Stop selecting for good; the host closes its duplicate fd afterwards.
    Stop,
}

/// A select call the serving process owes; made only there (LESSONS 18).
pub struct SelectRequest {
    pub handle: SelectHandle,
    pub op: SelectOp,
}

/// What the serving Erlang process must be told after a core call. The caller
/// delivers it: from a Python thread through [`LoopHost::deliver`], from a NIF
/// with its own env.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// (Re)arm the loop's single Erlang timer to fire after this many ms.
    pub arm_timer_ms: Option<u64>,
    /// Select requests are waiting: call back to apply them.
    pub apply_selects: bool,
    /// The loop was closed: forget it.
    pub closed: bool,
}

impl Wake {
    pub fn is_empty(&self) -> bool {
        *self == Wake::default()
    }

    /// Both wakes' work, the later timer delay winning (it was computed last).
    pub fn merge(self, later: Wake) -> Wake {
        Wake {
            arm_timer_ms: later.arm_timer_ms.or(self.arm_timer_ms),
            apply_selects: self.apply_selects || later.apply_selects,
            closed: self.closed || later.closed,
        }
    }
}

/// The Erlang side of a loop, as the core sees it.
pub trait LoopHost: Send + Sync {
    /// A select handle for `fd`, registered under `token` (the token comes
    /// back with every readiness of this handle). The host duplicates the fd,
    /// so the caller may close its own fd at any time (LESSONS 17).
    fn open_fd(&self, fd: RawFd, token: u64) -> std::io::Result<SelectHandle>;

    /// Tells the serving process what `wake` asks, from a thread that is not
    /// an Erlang scheduler. True if a live process was sent it (the server,
    /// or the process that makes a gone server's stops).
    fn deliver(&self, wake: Wake) -> bool;

    /// Waits, at most `timeout`, until the duplicate fds of `handles`, whose
    /// stops were asked for, are closed (the serving process makes a stop
    /// when it reads its message): a loop's `close()` then returns with its
    /// fds released, as a stdlib loop's does. True if they all are.
    fn wait_closed(&self, handles: &[SelectHandle], timeout: Duration) -> bool {
        let _ = (handles, timeout);
        true
    }

    /// Asks for a process to serve the loop (a loop made with
    /// [`LoopCore::defer_server`], setting its first timer or about to
    /// sleep), without waiting for it:
    /// it attaches later ([`LoopCore::set_served`]). False if nobody can be
    /// asked. May be called again while none came (a request may be lost).
    fn request_server(&self) -> bool {
        false
    }

    /// Closes the duplicate fd of `handle` now if no select of it was ever
    /// made, and from then on refuses to select it; true if so (its stop is
    /// then owed to nobody). False if a select was made: only a stop may
    /// close it (LESSONS 17). May race with the serving process's selects.
    fn close_unselected(&self, handle: &SelectHandle) -> bool {
        let _ = handle;
        false
    }
}
