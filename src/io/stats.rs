//! Counters of one loop, readable from Erlang (`py_nif:loop_stats/1`) and
//! Python (`loop.stats()`).

/// Everything is counted since the loop was created, except the gauges
/// `pending`, `live_timers`, `fds`, `timer_memory` and `sleeping`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub timers_inserted: u64,
    pub timers_cancelled: u64,
    pub timers_fired: u64,
    /// Times the waiting thread woke up after sleeping.
    pub wakeups: u64,
    /// Wake-ups that found nothing to do (no event, no wake-up request).
    pub spurious_wakeups: u64,
    /// Times the loop's Erlang timer fired.
    pub ticks: u64,
    /// Ticks that fired no timer (early Erlang timer, cancelled timer).
    pub spurious_ticks: u64,
    /// Readiness events queued.
    pub fd_events: u64,
    /// Readiness reports merged into an event already queued.
    pub events_coalesced: u64,
    /// Readiness reports for registrations that are gone.
    pub stale_events: u64,
    /// Times the Erlang timer was (re)armed.
    pub timer_arms: u64,
    /// Times a Python loop's epoll set was rebuilt to shed the registration
    /// of a socket closed while watched (see `io::poller`).
    pub poller_rebuilds: u64,
    /// Watched fds removed before any select of them was made: closed at
    /// once, with no stop for the serving process.
    pub fds_closed_unselected: u64,
    pub pending: u64,
    pub live_timers: u64,
    pub fds: u64,
    /// Bytes the timer wheel holds for entries and sort keys, live or free
    /// for reuse: its largest burst's until it empties again.
    pub timer_memory: u64,
    /// Threads asleep in the loop's wait now (0 or 1 but for the low-level
    /// API's waits).
    pub sleeping: u64,
}

impl LoopStats {
    /// Name/value pairs, for maps and dicts.
    pub fn fields(&self) -> [(&'static str, u64); 18] {
        [
            ("timers_inserted", self.timers_inserted),
            ("timers_cancelled", self.timers_cancelled),
            ("timers_fired", self.timers_fired),
            ("wakeups", self.wakeups),
            ("spurious_wakeups", self.spurious_wakeups),
            ("ticks", self.ticks),
            ("spurious_ticks", self.spurious_ticks),
            ("fd_events", self.fd_events),
            ("events_coalesced", self.events_coalesced),
            ("stale_events", self.stale_events),
            ("timer_arms", self.timer_arms),
            ("poller_rebuilds", self.poller_rebuilds),
            ("fds_closed_unselected", self.fds_closed_unselected),
            ("pending", self.pending),
            ("live_timers", self.live_timers),
            ("fds", self.fds),
            ("timer_memory", self.timer_memory),
            ("sleeping", self.sleeping),
        ]
    }
}
