//! One loop's native state and the wait of its owning thread.
//!
//! Everything sits behind one mutex: the wheel, the pending queue, the fd
//! registry and the flags that say what the serving Erlang process owes. The
//! owner waits on a condvar (the GIL released by the Python layer); the
//! serving process, `call_soon_threadsafe`, `stop` and `close` wake it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::pending::PendingQueue;
use super::poller::{FdPoller, POLLER_TOKEN};
use super::registry::{FdRegistry, Readiness};
use super::{Event, EventKind, LoopHost, LoopStats, SelectHandle, SelectOp, SelectRequest, Wake};
use crate::wheel::{now_monotonic_ns, Expired, TimerKey, Wheel, WheelError};

/// Timers moved into the pending queue per advance, so one call never holds
/// the lock for long; the rest follow on the next round.
const ADVANCE_BATCH: usize = 4096;

/// Why a wait or a call on the loop failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The loop was closed (`close`, `event_loop_destroy`).
    Closed,
    /// The Erlang process serving the loop died: no timer or fd event can
    /// arrive any more.
    ServerDown,
    /// A loop placed lazily (see [`LoopCore::defer_server`]) found no
    /// process to ask, or none took it within about [`SERVER_TIMEOUT`] of
    /// its sleeps.
    NoServer,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Closed => write!(f, "the event loop is closed"),
            WaitError::ServerDown => {
                write!(f, "the Erlang process serving this event loop died")
            }
            WaitError::NoServer => write!(
                f,
                "no Erlang worker took the event loop (is erlang_python running?)"
            ),
        }
    }
}

impl std::error::Error for WaitError {}

/// The outcome of `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited {
    /// More events were ready than `max`.
    pub more: bool,
    /// A `wakeup` (thread-safe call, stop) was requested.
    pub woken: bool,
}

/// The outcome of `poll_ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Events queued (this many), or a wake-up consumed (then maybe 0).
    Ready(usize),
    /// Nothing yet: the caller waits for news, at most this long (the
    /// wheel's next deadline; `None` without timers).
    Idle { next_deadline_in: Option<Duration> },
}

pub struct LoopCore {
    state: Mutex<State>,
    /// Signalled when an event is queued, a wake-up is requested, or the loop
    /// closes or loses its server.
    ready: Condvar,
    host: Arc<dyn LoopHost>,
    /// `interrupt` was called and `take_interrupt` has not seen it yet.
    interrupted: AtomicBool,
    /// Bumped each time the state is locked (a lock that changes nothing
    /// counts too), written only under the lock: unchanged, nobody has
    /// locked the state since it was read.
    locks: AtomicU64,
    /// The value of `locks` when a look without a wait last found nothing
    /// to do and nothing that a later look must do (`u64::MAX`: none; see
    /// `note_if_quiet`): while `locks` still has it, the state is as that look
    /// left it, and the next such look answers without the lock.
    quiet_at: AtomicU64,
    /// The wheel's next deadline as that look saw it (`u64::MAX`: none):
    /// until then, time alone makes nothing due (see `still_quiet`).
    quiet_until: AtomicU64,
}

/// `LoopCore::live_count`.
static LIVE_CORES: AtomicUsize = AtomicUsize::new(0);

/// What an emptied wheel or event queue keeps of its allocation (a few
/// thousand entries); above it, the memory goes back once they drain.
pub(crate) const KEEP_DRAINED_BYTES: usize = 64 * 1024;

/// Gives back the allocation of `queue` if it is empty and holds more than
/// [`KEEP_DRAINED_BYTES`]: drained after a burst, it would keep the burst's
/// memory for the life of its loop. Drops no item.
pub(crate) fn release_if_drained<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() * std::mem::size_of::<T>() > KEEP_DRAINED_BYTES {
        *queue = VecDeque::new();
    }
}

/// How a loop comes by its serving process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Its creator attaches one ([`LoopCore::set_served`]); the loop asks
    /// for nothing.
    ByCreator,
    /// Asked for from the host when the loop first sets a timer or sleeps,
    /// not before: a loop that does neither (made, run to a result without
    /// waiting, and closed, as `asyncio.run` of a coroutine that awaits
    /// nothing slow) has no use for one, and each placement is a round trip
    /// through Erlang processes. See [`LoopCore::defer_server`].
    Deferred,
    /// Asked for `asks` times, last at `last`, and not served yet.
    Asked { asks: u32, last: Instant },
    /// Nobody could be asked, or nobody took the loop in time: its waits fail
    /// with [`WaitError::NoServer`].
    Failed,
}

/// How often a sleeping loop that no process serves yet asks its host again:
/// a request may be lost with a placer or a worker that died (one placement
/// is made however many requests arrive).
pub const ASK_SERVER_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// How long a loop asks for a serving process before giving up.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests a lazily placed loop makes before it gives up: asked again
/// only while it sleeps, about [`SERVER_TIMEOUT`] of sleeping unserved
/// (however long it ran busy since its first request).
const ASKS_BEFORE_GIVING_UP: u32 =
    (SERVER_TIMEOUT.as_millis() / ASK_SERVER_AGAIN_AFTER.as_millis()) as u32;

struct State {
    /// Timers; payload = the caller's callback id.
    wheel: Wheel<u64>,
    pending: PendingQueue,
    fds: FdRegistry,
    /// A Python loop's own epoll set: its fds, polled by its thread (see
    /// [`super::poller`]); `None`: each fd selected by the BEAM (`fds`).
    poller: Option<FdPoller>,
    /// Fd events the last look into `poller` found, for `wait` to hand out.
    polled: Vec<Event>,
    /// Select calls owed to the serving process.
    selects: Vec<SelectRequest>,
    /// An `apply_selects` wake is out and not served yet: don't send another.
    selects_signalled: bool,
    /// Fds whose events the owner took: re-armed at its next wait.
    rearm: Vec<RawFd>,
    /// The deadline the Erlang timer is armed for, if any.
    armed_deadline: Option<u64>,
    /// How long after the wheel's next deadline the Erlang timer is armed:
    /// 0 for loops the BEAM alone wakes; `BACKSTOP_SLACK_NS` for a loop
    /// whose waiting thread bounds its own sleep by that deadline.
    arm_slack_ns: u64,
    /// A serving process exists (timers are armed only then).
    served: bool,
    placement: Placement,
    server_down: bool,
    wakeup_requested: bool,
    closed: bool,
    /// Threads asleep on `ready`: with none, a notify is skipped (it is a
    /// futex syscall each time, on the Erlang scheduler for fd events).
    waiters: u32,
    stats: LoopStats,
    /// Scratch for `advance`, kept to avoid an allocation per tick.
    expired: Vec<Expired<u64>>,
}

impl LoopCore {
    /// A loop with a wheel of `tick_ns` resolution.
    pub fn new(tick_ns: u64, host: Arc<dyn LoopHost>) -> Result<LoopCore, WheelError> {
        let core = LoopCore {
            state: Mutex::new(State {
                wheel: Wheel::with_tick(tick_ns, now_monotonic_ns())?,
                pending: PendingQueue::default(),
                fds: FdRegistry::default(),
                poller: None,
                polled: Vec::new(),
                selects: Vec::new(),
                selects_signalled: false,
                rearm: Vec::new(),
                armed_deadline: None,
                arm_slack_ns: 0,
                served: false,
                placement: Placement::ByCreator,
                server_down: false,
                wakeup_requested: false,
                closed: false,
                waiters: 0,
                stats: LoopStats::default(),
                expired: Vec::new(),
            }),
            ready: Condvar::new(),
            interrupted: AtomicBool::new(false),
            locks: AtomicU64::new(0),
            quiet_at: AtomicU64::new(u64::MAX),
            quiet_until: AtomicU64::new(u64::MAX),
            host,
        };
        LIVE_CORES.fetch_add(1, Ordering::Relaxed);
        Ok(core)
    }

    /// Loop cores alive in the process: open, or closed and still referred
    /// to (by a Python loop object, or an Erlang term a process has not
    /// collected yet).
    pub fn live_count() -> usize {
        LIVE_CORES.load(Ordering::Relaxed)
    }

    /// A loop whose fds are in an epoll set of its own, polled by the
    /// waiting thread; the BEAM selects only that set's fd, while the thread
    /// sleeps (see [`super::poller`]). Python loops are made so.
    pub fn with_own_poller(tick_ns: u64, host: Arc<dyn LoopHost>) -> std::io::Result<LoopCore> {
        let poller = FdPoller::new(|epoll| host.open_fd(epoll, POLLER_TOKEN))?;
        let core = LoopCore::new(tick_ns, host).map_err(std::io::Error::other)?;
        {
            let mut state = core.lock();
            state.poller = Some(poller);
            state.arm_slack_ns = BACKSTOP_SLACK_NS;
        }
        Ok(core)
    }

    pub fn host(&self) -> &Arc<dyn LoopHost> {
        &self.host
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.count_lock();
        state
    }

    /// Bumps `locks`: called with the state locked, by every locker (a
    /// condvar's waiter too, once it has the lock back), so a load and a
    /// store do (no read-modify-write: lockers come one at a time).
    fn count_lock(&self) {
        let locks = self.locks.load(Ordering::Relaxed).wrapping_add(1);
        self.locks.store(locks, Ordering::Release);
    }

    /// The loop's clock: CLOCK_MONOTONIC in ns, shared with the wheel.
    pub fn now_ns() -> u64 {
        now_monotonic_ns()
    }

    // ---- timers ----

    /// Schedules a timer at `deadline_ns` (`u64::MAX` = never) that reports
    /// `id`; returns its key (for `cancel_timer`) and what to tell the server.
    pub fn insert_timer(&self, deadline_ns: u64, id: u64) -> Result<(u64, Wake), WaitError> {
        let mut state = self.lock();
        state.check_open()?;
        let key = state.wheel.insert(deadline_ns, id).to_u64();
        state.stats.timers_inserted += 1;
        // Inserted from another thread than the one asleep in `block` (not
        // asyncio's contract, but it worked when the BEAM's timer was armed
        // for the deadline itself): the sleeper's bound is now too late.
        if state.wheel.next_deadline() == Some(deadline_ns) {
            self.notify(&state);
        }
        let wake = state.arm_timer(now_monotonic_ns);
        // A loop placed lazily is placed with its first timer, whose
        // backstop (and the tick that queues it while the loop's thread
        // is busy) is an Erlang timer.
        if state.placement == Placement::Deferred && !state.served {
            drop(self.ask_for_server(state, 0));
        }
        Ok((key, wake))
    }

    /// Cancels a timer and returns its id. Stale, fired, unknown or garbage
    /// keys: `None`, no effect.
    pub fn cancel_timer(&self, key: u64) -> Option<u64> {
        self.cancel_timer_if(key, |_| true)
    }

    /// `cancel_timer` of a live timer whose id `ours` accepts (an owner
    /// checking that a key it was handed names its own timer); `None`, no
    /// effect, otherwise. One lock for the look and the cancel.
    pub fn cancel_timer_if(&self, key: u64, ours: impl FnOnce(u64) -> bool) -> Option<u64> {
        let mut state = self.lock();
        let key = TimerKey::from_u64(key);
        if !state.wheel.get(key).is_some_and(|&id| ours(id)) {
            return None;
        }
        let cancelled = state.wheel.cancel(key);
        state.stats.timers_cancelled += 1;
        state.release_drained_wheel();
        cancelled
    }

    /// Takes out of the wheel, as fired, the live timers whose id `due`
    /// accepts (called under the loop's lock: it must not call back into
    /// the loop): for an owner firing by a clock of its own rather than by
    /// the wheel's deadlines. O(timers).
    pub fn take_timers_where(&self, mut due: impl FnMut(u64) -> bool) -> Vec<Event> {
        let mut state = self.lock();
        let chosen: Vec<(TimerKey, u64)> = state
            .wheel
            .iter()
            .filter(|&(_, &id)| due(id))
            .map(|(key, &id)| (key, id))
            .collect();
        chosen
            .into_iter()
            .filter_map(|(key, id)| {
                let deadline = state.wheel.deadline(key)?;
                state.wheel.cancel(key)?;
                Some(Event {
                    kind: EventKind::Timer,
                    id,
                    key: key.to_u64(),
                    deadline,
                })
            })
            .collect()
    }

    /// Calls `visit` with the id of every timer the loop holds: live in the
    /// wheel, or fired and still queued. (An owner whose ids stand for
    /// objects it owns walks them this way; nothing else is locked meanwhile.)
    pub fn for_each_timer_id(&self, mut visit: impl FnMut(u64)) {
        let state = self.lock();
        state.wheel.iter().for_each(|(_, &id)| visit(id));
        state
            .pending
            .iter()
            .filter(|event| event.kind == EventKind::Timer)
            .for_each(|event| visit(event.id));
    }

    /// Takes every timer out of the loop (live ones cancelled, fired ones
    /// unqueued) and returns their ids: what an owner whose ids stand for
    /// objects must release when it goes away.
    pub fn take_all_timers(&self) -> Vec<u64> {
        let mut state = self.lock();
        let keys: Vec<TimerKey> = state.wheel.iter().map(|(key, _)| key).collect();
        let mut ids: Vec<u64> = keys
            .into_iter()
            .filter_map(|key| state.wheel.cancel(key))
            .collect();
        state.stats.timers_cancelled += ids.len() as u64;
        state.pending.retain(|event| {
            let timer = event.kind == EventKind::Timer;
            if timer {
                ids.push(event.id);
            }
            !timer
        });
        // At a loop's close: its wheel's memory goes now, not when the
        // last reference to the core (an Erlang term in a process that
        // may not collect for long) goes.
        state.wheel.release_memory();
        ids
    }

    /// The serving process's timer fired: queue the due timers, wake the
    /// owner, and say when to fire next.
    pub fn tick(&self) -> Wake {
        let mut state = self.lock();
        state.stats.ticks += 1;
        state.armed_deadline = None;
        let now = now_monotonic_ns();
        let fired = state.advance(now);
        if fired == 0 {
            state.stats.spurious_ticks += 1;
        } else {
            self.notify(&state);
        }
        state.arm_timer(|| now)
    }

    // ---- fds ----

    /// Watches `fd` for `kind` (Read/Write), reporting `id`. Replaces the
    /// previous id of that direction.
    pub fn add_interest(&self, fd: RawFd, kind: EventKind, id: u64) -> std::io::Result<Wake> {
        let mut state = self.lock();
        if state.closed {
            return Err(std::io::Error::other(WaitError::Closed));
        }
        if let Some(poller) = &mut state.poller {
            poller.add_interest(fd, kind, id)?;
            state.stats.fds = poller.len() as u64;
            // Added from another thread (the stdlib loop allows it) while
            // the loop thread sleeps, which arms the epoll fd's select only
            // before a sleep: armed now, or the fd is seen at the next timer.
            if state.waiters > 0 {
                let arm = state.poller.as_mut().and_then(FdPoller::arm_before_sleep);
                return Ok(state.owe_selects(arm));
            }
            return Ok(Wake::default());
        }
        let mut wake = Wake::default();
        let host = Arc::clone(&self.host);
        // Fails (EBADF for a number closed since) before anything changed:
        // an error after a stop was owed would leave it, and every select
        // owed after it, untold (`selects_signalled` set, no wake sent).
        let replaced = state
            .fds
            .replace_if_reopened(fd, |token| host.open_fd(fd, token))?;
        if let Some(stop) = replaced {
            // The old file's queued readiness is not the new one's.
            state
                .pending
                .retain(|event| event.kind == EventKind::Timer || event.key != fd as u64);
            let stop = self.withdraw(&mut state, stop);
            wake = state.owe_selects(stop);
        }
        // Cannot fail after a replacement: the registration exists.
        let request = state
            .fds
            .add_interest(fd, kind, id, |token| host.open_fd(fd, token))?;
        state.stats.fds = state.fds.len() as u64;
        Ok(wake.merge(state.owe_selects(request)))
    }

    /// Stops watching `fd` for `kind`. Returns whether it was watched.
    pub fn remove_interest(&self, fd: RawFd, kind: EventKind) -> (bool, Wake) {
        let mut state = self.lock();
        if let Some(poller) = &mut state.poller {
            let had = poller.remove_interest(fd, kind);
            state.stats.fds = poller.len() as u64;
            return (had, Wake::default());
        }
        let (had, stop) = state.fds.remove_interest(fd, kind);
        if had {
            state
                .pending
                .retain(|event| !(event.kind == kind && event.key == fd as u64));
        }
        state.stats.fds = state.fds.len() as u64;
        let stop = stop.and_then(|stop| self.withdraw(&mut state, stop));
        let wake = state.owe_selects(stop);
        (had, wake)
    }

    /// A registration's stop, before it is queued: the arms of its handle
    /// still queued go (they are void now), and a handle never selected is
    /// closed at once instead of stopped. A caller adding and removing fds
    /// in a tight loop would otherwise hold a duplicate fd open per
    /// registration until the serving process caught up (EMFILE).
    fn withdraw(&self, state: &mut State, stop: SelectRequest) -> Option<SelectRequest> {
        state
            .selects
            .retain(|queued| !Arc::ptr_eq(&queued.handle, &stop.handle));
        if self.host.close_unselected(&stop.handle) {
            state.stats.fds_closed_unselected += 1;
            return None;
        }
        Some(stop)
    }

    /// Readiness of `kind` for the registration `token`, reported by the
    /// serving process.
    pub fn fd_ready(&self, token: u64, kind: EventKind) {
        let mut state = self.lock();
        if let Some(poller) = state.poller.as_mut().filter(|_| token == POLLER_TOKEN) {
            // The loop's epoll set has ready fds: the thread looks itself.
            poller.ready();
            self.notify(&state);
            return;
        }
        match state.fds.ready(token, kind) {
            Readiness::Ready { fd, id } => {
                state.pending.push(Event {
                    kind,
                    id,
                    key: fd as u64,
                    deadline: 0,
                });
                state.stats.fd_events += 1;
                self.notify(&state);
            }
            Readiness::Coalesced => state.stats.events_coalesced += 1,
            Readiness::Stale => state.stats.stale_events += 1,
        }
    }

    /// The select calls owed; called by the serving process, which makes them.
    pub fn take_select_requests(&self) -> Vec<SelectRequest> {
        let mut state = self.lock();
        state.selects_signalled = false;
        std::mem::take(&mut state.selects)
    }

    /// Only the stop requests owed (the arms stay queued for a future
    /// server): used when the serving process is gone and another process
    /// must take the fds out of the poll set.
    pub fn take_stop_requests(&self) -> Vec<SelectRequest> {
        let mut state = self.lock();
        let (stops, arms): (Vec<_>, Vec<_>) = std::mem::take(&mut state.selects)
            .into_iter()
            .partition(|request| request.op == SelectOp::Stop);
        state.selects = arms;
        stops
    }

    // ---- waiting ----

    /// Work to do before a wait: queue timers already due, re-arm fds whose
    /// events were taken. Returns what to tell the server.
    pub fn prepare_wait(&self) -> Wake {
        self.lock().prepare().0
    }

    /// `prepare_wait` then `wait`, under one lock unless the preparation
    /// has something to tell the server: a busy loop looks once per
    /// iteration, and each lock is an atomic round trip.
    pub fn prepare_and_wait(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Event>,
        max: usize,
    ) -> Result<Waited, WaitError> {
        if timeout == Some(Duration::ZERO) && self.still_quiet() {
            return Ok(Waited {
                more: false,
                woken: false,
            });
        }
        let mut state = self.lock();
        let (wake, mut now) = state.prepare();
        if !wake.is_empty() {
            state = self.deliver_unlocked(state, wake);
            // Read before the delivery: stale now.
            now = None;
        }
        self.wait_locked(state, timeout, out, max, now)
    }

    /// Waits until an event is queued, a wake-up is requested, or `timeout`
    /// passes (`None` = no limit), then moves up to `max` events into `out`.
    /// Call `prepare_wait` first. Never call with the GIL held.
    pub fn wait(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Event>,
        max: usize,
    ) -> Result<Waited, WaitError> {
        self.wait_locked(self.lock(), timeout, out, max, None)
    }

    /// `wait` with the state already locked; `now`: the clock as read
    /// under this lock just before, if it was (see `block`).
    fn wait_locked<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
        out: &mut Vec<Event>,
        max: usize,
        now: Option<u64>,
    ) -> Result<Waited, WaitError> {
        let (mut state, slept, timed_out) = self.block(state, timeout, max, now)?;
        let woken = std::mem::take(&mut state.wakeup_requested);
        let before = out.len();
        let more = state.drain(out, max);
        let room = max.saturating_sub(out.len() - before);
        let polled = state.polled.len().min(room);
        state.stats.fd_events += polled as u64;
        out.extend(state.polled.drain(..).take(polled));
        if slept {
            state.stats.wakeups += 1;
            if out.len() == before && !woken && !timed_out {
                state.stats.spurious_wakeups += 1;
            }
        }
        if timeout == Some(Duration::ZERO) && out.len() == before && !woken && !more {
            self.note_if_quiet(&state);
        }
        Ok(Waited { more, woken })
    }

    /// Whether the state is as a look without a wait left it when it found
    /// nothing to do (see `note_if_quiet`): no one has locked it since.
    /// Such a look would find nothing again: the answer is the one a
    /// locked look made just before any locker still at work would give.
    fn still_quiet(&self) -> bool {
        // In this order: a `quiet_until` written by a later look is seen
        // only with that look's bump of `locks` (made before it).
        let quiet_at = self.quiet_at.load(Ordering::Acquire);
        let until = self.quiet_until.load(Ordering::Acquire);
        quiet_at == self.locks.load(Ordering::Acquire) && (until == u64::MAX || before(until))
    }

    /// After a look without a wait that found nothing (no event, no
    /// wake-up, nothing more), with the state still locked: if the next
    /// such look, the state unchanged, must find nothing either and do
    /// nothing on the way, lets it answer without the lock, until the
    /// wheel's next deadline (a lower bound of its earliest timer, or the
    /// time a cascade is due: before it, a look fires and arms nothing
    /// new; after it, the lock is taken again, so a timer is neither
    /// early nor starved). That holds when no fd waits to be re-armed, no
    /// fd is watched by the loop's own epoll set (each look polls it), and
    /// the loop is open and served as it was (a failed check is reported
    /// by every look).
    fn note_if_quiet(&self, state: &State) {
        let until = state.wheel.next_deadline().unwrap_or(u64::MAX);
        let quiet = state.pending.is_empty()
            && state.polled.is_empty()
            && state.rearm.is_empty()
            && !state.wakeup_requested
            && state.poller.as_ref().is_none_or(FdPoller::is_empty)
            && state.check_open().is_ok();
        if quiet {
            self.quiet_until.store(until, Ordering::Release);
            self.quiet_at
                .store(self.locks.load(Ordering::Relaxed), Ordering::Release);
        }
    }

    /// A look without a wait for the low-level `poll_events`, whose caller
    /// waits in Erlang (for a message sent when [`has_news`](Self::has_news)
    /// turns true, or for as long as the returned [`Look::Idle`] says):
    /// queues the timers due, and tells how many events are queued if any
    /// are or a wake-up was requested (consumed: then maybe 0). `slept`:
    /// the caller waited since its last look, counted as a wake-up, as
    /// `wait` counts them: spurious if it finds nothing and its wait did not
    /// just time out (`timed_out`).
    pub fn poll_ready(&self, slept: bool, timed_out: bool) -> Result<Look, WaitError> {
        let (mut state, _, _) = self.block(self.lock(), Some(Duration::ZERO), 0, None)?;
        let woken = std::mem::take(&mut state.wakeup_requested);
        let ready = woken || !state.pending.is_empty();
        if slept {
            state.stats.wakeups += 1;
            if !ready && !timed_out {
                state.stats.spurious_wakeups += 1;
            }
        }
        if ready {
            return Ok(Look::Ready(state.pending.len()));
        }
        // The wait bound read under the look's lock: one round trip.
        let next_deadline_in = state
            .wheel
            .next_deadline()
            .map(|deadline| Duration::from_nanos(deadline.saturating_sub(now_monotonic_ns())));
        Ok(Look::Idle { next_deadline_in })
    }

    /// Whether a timer is due now or an event waits in the queue: what the
    /// loop's next iteration runs before it reads a watched fd again (see
    /// the runner's `ReadyWatch`). Conservative: a deadline the wheel only
    /// bounds from below counts as due.
    pub fn has_due_work(&self) -> bool {
        let state = self.lock();
        !state.pending.is_empty()
            || state
                .wheel
                .next_deadline()
                .is_some_and(|deadline| deadline <= Self::now_ns())
    }

    /// Whether a `poll_ready` caller waiting in Erlang should look again:
    /// events queued, a wake-up requested, or the loop closed or without
    /// its server (the look then fails).
    pub fn has_news(&self) -> bool {
        let state = self.lock();
        !state.pending.is_empty() || state.wakeup_requested || state.check_open().is_err()
    }

    /// Sleeps on the condvar until there is something for the owner or the
    /// timeout passes; looks into the loop's own epoll set (up to `io_room`
    /// events, into `polled`) before each sleep. Returns the locked state,
    /// whether it slept, and whether the timeout ended the wait.
    /// `read_now`: the clock as `prepare` read it under this very lock,
    /// used by the first look instead of a second read (a clock read is a
    /// good part of a busy iteration); older than the true time, it can
    /// only make a due timer wait for the next look, never fire early.
    fn block<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
        io_room: usize,
        mut read_now: Option<u64>,
    ) -> Result<(MutexGuard<'a, State>, bool, bool), WaitError> {
        // A look without a wait (every iteration of a busy loop) reads no
        // clock for its limit.
        let no_wait = timeout == Some(Duration::ZERO);
        // A timeout beyond what the clock can add (Python's 1e19 s) waits
        // as long as none.
        let give_up = timeout
            .filter(|_| !no_wait)
            .and_then(|t| Instant::now().checked_add(t));
        let mut slept = false;
        // When a timer less than a tick away may end the wait (see below).
        let mut tick_floor: Option<u64> = None;
        loop {
            state.check_open()?;
            let state_ = &mut *state;
            state_.polled.clear();
            if let Some(poller) = &mut state_.poller {
                poller.poll(&mut state_.polled, io_room);
                if poller.take_leftover_seen() {
                    let wake = self.rebuild_poller(&mut state);
                    if !wake.is_empty() {
                        state = self.deliver_unlocked(state, wake);
                        // Read before the unlock: stale now.
                        read_now = None;
                        continue;
                    }
                }
            }
            if !state.pending.is_empty() || state.wakeup_requested || !state.polled.is_empty() {
                return Ok((state, slept, false));
            }
            // The sleep is also bounded by the wheel's next deadline: BEAM
            // timers have a 1 ms grain and fire late (`erlang:start_timer(1,
            // ...)` takes about 2 ms), so the waiting thread itself runs a
            // due timer on time. The Erlang timer is the backstop (armed
            // past the deadline for a loop that waits so, see
            // `BACKSTOP_SLACK_NS`) and the wake-up of loops nobody waits on;
            // an earlier timer inserted meanwhile notifies (`insert_timer`).
            // A due timer is run before a timeout is reported: the wait for
            // it may have ended with the caller's limit (see below).
            let mut until_timer = None;
            if let Some(deadline) = state.wheel.next_deadline() {
                let now_ns = read_now.take().unwrap_or_else(now_monotonic_ns);
                if deadline <= now_ns {
                    state.advance(now_ns);
                    if state.pending.is_empty() {
                        // A cascade point, not a timer: look again.
                        continue;
                    }
                    return Ok((state, slept, false));
                }
                // A timer less than a tick away is waited for a tick: the
                // timers due meanwhile run in one wake-up instead of one
                // each (a busy wheel has ~100 deadlines per ms; waking for
                // each cost more CPU than running them). Never early; a
                // timer a tick or more away is still woken for exactly. The
                // tick counts from the first look that saw such a timer, so
                // wake-ups that find nothing do not push it further.
                let tick = state.wheel.tick_ns();
                let wake_at = if deadline - now_ns < tick {
                    deadline.max(*tick_floor.get_or_insert(now_ns + tick))
                } else {
                    deadline
                };
                until_timer = Some(Duration::from_nanos(wake_at - now_ns));
            }
            let mut limit = give_up.map(|g| g.saturating_duration_since(Instant::now()));
            if no_wait || limit == Some(Duration::ZERO) {
                return Ok((state, slept, true));
            }
            if let Some(until) = until_timer {
                limit = Some(limit.map_or(until, |l| l.min(until)));
            }
            // Asleep, the loop learns of its fds from the BEAM, which
            // selects its epoll fd for it: asked for once per sleep at most.
            if let Some(arm) = state.poller.as_mut().and_then(FdPoller::arm_before_sleep) {
                let wake = state.owe_selects(Some(arm));
                state = self.deliver_unlocked(state, wake);
                continue;
            }
            // A loop placed lazily needs its server now: its fds reach it
            // through the BEAM while it sleeps, and its timer's backstop is
            // an Erlang timer. Not waited for: the sleep is bounded by the
            // wheel's deadline, and the server makes the selects owed when
            // it comes; asked again while it does not.
            match state.placement {
                Placement::Deferred if !state.served => {
                    state = self.ask_for_server(state, 0);
                    continue;
                }
                Placement::Asked { asks, last } if !state.served => {
                    let now = Instant::now();
                    let again_at = last + ASK_SERVER_AGAIN_AFTER;
                    if now >= again_at {
                        if asks >= ASKS_BEFORE_GIVING_UP {
                            state.placement = Placement::Failed;
                        } else {
                            state = self.ask_for_server(state, asks);
                        }
                        continue;
                    }
                    let until_again = again_at - now;
                    limit = Some(limit.map_or(until_again, |l| l.min(until_again)));
                }
                _ => {}
            }
            slept = true;
            state.waiters += 1;
            state.stats.sleeping += 1;
            state = match limit {
                None => self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(limit) => {
                    self.ready
                        .wait_timeout(state, limit)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            self.count_lock();
            state.waiters -= 1;
            state.stats.sleeping -= 1;
        }
    }

    /// Tells the serving process `wake` with the loop unlocked (the send
    /// must not hold up the schedulers that lock it), then locks it again:
    /// the caller looks at the state anew.
    fn deliver_unlocked<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        wake: Wake,
    ) -> MutexGuard<'a, State> {
        drop(state);
        let _ = self.host.deliver(wake);
        self.lock()
    }

    /// Asks the host for a serving process, with the loop unlocked; locks
    /// it again (the caller looks at the state anew). `asks`: how many
    /// times the loop asked before.
    fn ask_for_server<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        asks: u32,
    ) -> MutexGuard<'a, State> {
        drop(state);
        let asked = self.host.request_server();
        let mut state = self.lock();
        if !state.served {
            let now = Instant::now();
            state.placement = if asked {
                Placement::Asked {
                    asks: asks + 1,
                    last: now,
                }
            } else {
                tracing::warn!("a loop found no Erlang process to serve it");
                Placement::Failed
            };
            // Woken by a failure, the other waiters see it.
            if !asked {
                self.ready.notify_all();
            }
        }
        state
    }

    /// A new epoll set for the loop, without the leftover registration a
    /// poll met (see [`super::poller`]); the old set's select is stopped.
    fn rebuild_poller(&self, state: &mut State) -> Wake {
        let Some(poller) = &mut state.poller else {
            return Wake::default();
        };
        let host = Arc::clone(&self.host);
        match poller.rebuild(|epoll| host.open_fd(epoll, POLLER_TOKEN)) {
            Ok(stop) => {
                state.stats.poller_rebuilds += 1;
                state.owe_selects(stop)
            }
            Err(error) => {
                tracing::warn!(%error, "could not rebuild a loop's epoll set");
                Wake::default()
            }
        }
    }

    /// Waits up to `timeout` for a serving process to attach; true if one did.
    pub fn wait_served(&self, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.served && !state.closed {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state.waiters += 1;
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            self.count_lock();
            state.waiters -= 1;
        }
        state.served
    }

    /// The current registration token of `fd`, if it is watched.
    pub fn registration_token(&self, fd: RawFd) -> Option<u64> {
        self.lock().fds.get(fd).map(|entry| entry.token)
    }

    /// Drains up to `max` events without waiting.
    pub fn take_pending(&self, out: &mut Vec<Event>, max: usize) -> bool {
        self.lock().drain(out, max)
    }

    /// How many events are queued.
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Wakes the waiting thread (thread-safe callbacks, stop).
    pub fn wakeup(&self) {
        let mut state = self.lock();
        state.wakeup_requested = true;
        self.notify(&state);
    }

    /// Wakes the waiting thread for an exception set on it from outside
    /// (a timed-out call, Ctrl-C), and marks the interrupt for
    /// [`take_interrupt`](Self::take_interrupt): the owner then raises it
    /// before running any callback (whose error handling would catch it).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.wakeup();
    }

    /// Whether `interrupt` was called since the last call; clears the mark.
    /// Outside the lock: the loop's thread asks on every iteration.
    pub fn take_interrupt(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed) && self.interrupted.swap(false, Ordering::AcqRel)
    }

    /// Wakes the threads asleep in `block`/`wait_served`, if any. Called
    /// with the state locked, so a thread about to sleep either sees the
    /// change first or is counted.
    fn notify(&self, state: &State) {
        if state.waiters > 0 {
            self.ready.notify_all();
        }
    }

    // ---- life cycle ----

    /// A serving process now exists; returns what it must do at once
    /// (timers inserted before it came, selects owed). When it replaces an
    /// earlier one (which died), the selects that one made are void: every
    /// watched fd is selected again by the new one.
    pub fn set_served(&self) -> Wake {
        let mut state = self.lock();
        // A new server has been told nothing: a wake-up signalled to the one
        // before (which may have died without acting on it) is owed again.
        state.selects_signalled = false;
        if state.served {
            let requests = state.fds.reselect_all();
            state.selects.extend(requests);
            if let Some(arm) = state.poller.as_mut().and_then(FdPoller::reselect) {
                state.selects.push(arm);
            }
        }
        state.served = true;
        if state.placement != Placement::ByCreator {
            state.placement = Placement::Deferred;
        }
        state.server_down = false;
        state.armed_deadline = None;
        self.ready.notify_all();
        let mut wake = state.arm_timer(now_monotonic_ns);
        if !state.selects.is_empty() {
            state.selects_signalled = true;
            wake.apply_selects = true;
        }
        wake
    }

    /// Makes the loop ask its host for a serving process
    /// ([`LoopHost::request_server`]) only when it first sets a timer or
    /// sleeps, instead of being given one by its creator. Call it before the
    /// loop is used.
    pub fn defer_server(&self) {
        let mut state = self.lock();
        if !state.served && state.placement == Placement::ByCreator {
            state.placement = Placement::Deferred;
        }
    }

    /// The serving process died: waiters fail with `ServerDown`.
    pub fn server_down(&self) {
        let mut state = self.lock();
        state.server_down = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Served once, and that server died since; or never served, and never
    /// will be (see [`WaitError::NoServer`]).
    pub fn server_lost(&self) -> bool {
        let state = self.lock();
        (state.served && state.server_down) || state.placement == Placement::Failed
    }

    /// Open and never served: a loop still waiting for its first server.
    pub fn needs_server(&self) -> bool {
        let state = self.lock();
        !state.served && !state.closed
    }

    /// Closes the loop: every fd select is stopped, queued fd events
    /// dropped, waiters fail with `Closed`. Timers stay, fired or not, for
    /// their owner to take (`take_all_timers`): their ids may stand for
    /// something it must release. Idempotent (a second close returns an
    /// empty wake).
    pub fn close(&self) -> Wake {
        self.close_stopping().0
    }

    /// `close`, and the select handles whose stops it asked for (for a
    /// caller that waits for their fds to close: [`LoopHost::wait_closed`]).
    pub fn close_stopping(&self) -> (Wake, Vec<SelectHandle>) {
        let mut state = self.lock();
        if state.closed {
            return (Wake::default(), Vec::new());
        }
        state.closed = true;
        let mut stops = state.fds.remove_all();
        // The epoll fd closes now, not when the last reference to the core
        // (an Erlang term, say) is collected; the BEAM's duplicate of it
        // leaves the poll set with the stop, or closes here if it never
        // entered it (a loop that never slept with fds watched): then
        // nothing is owed to the server, and `close()` waits for nobody.
        if let Some(stop) = state.poller.take().and_then(|mut poller| poller.stop()) {
            state
                .selects
                .retain(|queued| !Arc::ptr_eq(&queued.handle, &stop.handle));
            if !self.host.close_unselected(&stop.handle) {
                stops.push(stop);
            }
        }
        let stopping = stops.iter().map(|stop| stop.handle.clone()).collect();
        state.selects.extend(stops);
        state.polled.clear();
        state.pending.retain(|event| event.kind == EventKind::Timer);
        state.stats.fds = 0;
        self.notify(&state);
        let wake = Wake {
            arm_timer_ms: None,
            apply_selects: !state.selects.is_empty(),
            closed: true,
        };
        (wake, stopping)
    }

    pub fn stats(&self) -> LoopStats {
        let state = self.lock();
        let wheel = state.wheel.stats();
        LoopStats {
            timers_fired: wheel.fired,
            pending: state.pending.len() as u64,
            live_timers: wheel.live,
            timer_memory: state.wheel.allocated_bytes() as u64,
            ..state.stats
        }
    }
}

impl Drop for LoopCore {
    fn drop(&mut self) {
        LIVE_CORES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    /// Work to do before a wait (see `LoopCore::prepare_wait`); returns it
    /// and the clock if it was read. An empty wheel has nothing to fire or
    /// arm: the clock is not read then (it was a good part of a busy
    /// iteration without timers). The wheel's time stays where it was,
    /// as while the loop sleeps without timers: its next insert places
    /// the timer against that time and the next advance catches up.
    fn prepare(&mut self) -> (Wake, Option<u64>) {
        if self.closed {
            return (Wake::default(), None);
        }
        let now = (!self.wheel.is_empty()).then(|| {
            let now = now_monotonic_ns();
            self.advance(now);
            now
        });
        let mut wake = Wake::default();
        for fd in std::mem::take(&mut self.rearm) {
            if let Some(request) = self.fds.rearm(fd) {
                wake = wake.merge(self.owe_selects(Some(request)));
            }
        }
        let Some(now) = now else {
            return (wake, None);
        };
        (wake.merge(self.arm_timer(|| now)), Some(now))
    }

    fn check_open(&self) -> Result<(), WaitError> {
        if self.closed {
            Err(WaitError::Closed)
        } else if self.server_down {
            Err(WaitError::ServerDown)
        } else if self.placement == Placement::Failed {
            Err(WaitError::NoServer)
        } else {
            Ok(())
        }
    }

    /// Queues every timer due at `now`; returns how many.
    fn advance(&mut self, now: u64) -> usize {
        let mut fired = 0;
        loop {
            let mut expired = std::mem::take(&mut self.expired);
            let more = self.wheel.advance(now, &mut expired, ADVANCE_BATCH);
            fired += expired.len();
            for timer in expired.drain(..) {
                self.pending.push(Event {
                    kind: EventKind::Timer,
                    id: timer.value,
                    key: timer.key.to_u64(),
                    deadline: timer.deadline,
                });
            }
            self.expired = expired;
            if !more {
                if fired > 0 {
                    self.release_drained_wheel();
                }
                return fired;
            }
        }
    }

    /// Gives back the memory a burst of timers left in the wheel once it
    /// has emptied, so that a long-lived loop does not keep its largest
    /// burst's for good. O(1) unless it releases (O(the burst), once).
    fn release_drained_wheel(&mut self) {
        if self.wheel.is_empty() && self.wheel.allocated_bytes() > KEEP_DRAINED_BYTES {
            self.wheel.release_memory();
        }
    }

    /// Arms the Erlang timer when the earliest deadline (plus twice the
    /// loop's slack) is earlier than the armed one, for that deadline plus
    /// the slack (LESSONS 12: only real deadlines, never a periodic tick).
    /// `now` is read only when a timer is armed: most inserts arm nothing,
    /// and a clock read is a good part of an insert.
    fn arm_timer(&mut self, now: impl FnOnce() -> u64) -> Wake {
        if !self.served || self.closed {
            return Wake::default();
        }
        let Some(next) = self.wheel.next_deadline() else {
            return Wake::default();
        };
        // Armed at most twice the slack after the deadline: an earlier
        // deadline within the slack re-arms nothing.
        let latest = next.saturating_add(2 * self.arm_slack_ns);
        if self.armed_deadline.is_some_and(|armed| armed <= latest) {
            return Wake::default();
        }
        let next = next.saturating_add(self.arm_slack_ns);
        self.armed_deadline = Some(next);
        self.stats.timer_arms += 1;
        Wake {
            arm_timer_ms: Some(delay_ms(next, now())),
            ..Wake::default()
        }
    }

    /// Records select requests; asks for one `apply_selects` at a time.
    fn owe_selects(&mut self, request: Option<SelectRequest>) -> Wake {
        let Some(request) = request else {
            return Wake::default();
        };
        self.selects.push(request);
        if self.selects_signalled || !self.served {
            return Wake::default();
        }
        self.selects_signalled = true;
        Wake {
            apply_selects: true,
            ..Wake::default()
        }
    }

    /// Moves up to `max` queued events into `out`, dropping fd events whose
    /// interest changed meanwhile, and marks their fds for re-arming.
    fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> bool {
        let start = out.len();
        let more = self.pending.drain_into(out, max);
        let mut kept = start;
        for index in start..out.len() {
            let event = out[index];
            if event.kind != EventKind::Timer {
                let fd = event.key as RawFd;
                // Re-armed even when the event is not wanted: its interest
                // got a new id while it was queued (`add_reader` again),
                // and that id waits for the fd's readiness too; the
                // one-shot select was spent on this event.
                self.rearm.push(fd);
                if !self.fds.taken(fd, event.kind, event.id) {
                    continue;
                }
            }
            out[kept] = event;
            kept += 1;
        }
        out.truncate(kept);
        more
    }
}

/// Whether the clock is before `deadline`. Out of line: inlined, the
/// clock read grew the runner's hot code (steady `call_soon` ran ~6%
/// slower, by code placement alone: its iterations rarely come here).
#[inline(never)]
fn before(deadline: u64) -> bool {
    now_monotonic_ns() < deadline
}

/// How late the Erlang timer of a loop with a waiting thread of its own (a
/// Python loop) is armed after the wheel's next deadline. That thread's
/// wait is bounded by the deadline itself, so it runs each timer on time;
/// the BEAM's timer is the backstop. Armed for the deadline itself, it
/// fired after the thread had done the work (a BEAM timer has a 1 ms grain)
/// about every other deadline of a loop sleeping 1 ms at a time: a BEAM
/// wake-up, a NIF call and a re-arm each time, for nothing. With the slack
/// it fires about once per this many ms of such a loop.
const BACKSTOP_SLACK_NS: u64 = 50_000_000;

/// The longest delay the Erlang timer is armed for (about 49 days).
/// `erlang:start_timer/3` refuses delays beyond about 2^43 ms and the serving
/// process would crash; a farther deadline is armed for this long, and the
/// spurious tick then re-arms it (LESSONS 13).
pub const MAX_ARM_MS: u64 = 1 << 32;

/// Milliseconds from `now` until `deadline`, rounded up so the Erlang timer
/// never fires before the deadline (LESSONS 8), at most [`MAX_ARM_MS`].
fn delay_ms(deadline: u64, now: u64) -> u64 {
    deadline
        .saturating_sub(now)
        .div_ceil(1_000_000)
        .min(MAX_ARM_MS)
}

#[cfg(test)]
mod tests;
