//! A hierarchical timer wheel, generic over its payload.
//!
//! Time is counted in ticks of a fixed resolution (1 ms by default) from zero
//! of CLOCK_MONOTONIC. The wheel has [`NUM_LEVELS`] levels of 64 slots: a
//! slot of level `l` spans `64^l` ticks, so the top level reaches `2^42`
//! ticks ahead (139 years at 1 ms). An entry sits on the level of the highest
//! base-64 digit where its tick differs from the wheel's current tick; when
//! the wheel reaches a slot of a higher level, it *cascades* the slot: each
//! entry moves down to the level where it now belongs. Deadlines beyond the
//! top level, and [`NEVER`], wait in overflow lists.
//!
//! When the wheel reaches a tick, the entries of that tick move to the *due
//! queue*, sorted by exact deadline then insertion order. `advance` pops that
//! queue while the head is due, so a timer never fires before its deadline,
//! equal deadlines fire FIFO, and deadlines inside one tick keep their order.
//!
//! A slot of level 1 or 2 (64 or 4096 ticks) is not cascaded when the wheel
//! reaches it, unless it lies inside a range already sorted: all its entries
//! are bucket-sorted at once into a second queue, *ahead*, in the same order
//! as the due queue but mostly of ticks still to come. `advance` pops the two
//! merged. A timer then costs one sort instead of a cascade per level on its
//! way down and a pass through level 0.
//!
//! Files, one idea each: `level.rs` one level and its occupancy bitmap,
//! `due.rs` the sorted due queue, `overflow.rs` far and `NEVER` deadlines,
//! `list.rs` the index-linked FIFO lists, `entry.rs` and `slab.rs` the entry
//! storage and [`TimerKey`], `tick.rs` nanoseconds to ticks, `clock.rs` the
//! one clock.

mod clock;
mod due;
mod entry;
mod level;
mod list;
mod overflow;
mod slab;
mod sort;
mod tick;

use std::cell::Cell;
use std::fmt;

pub use clock::now_monotonic_ns;
pub use slab::TimerKey;

use due::{fires_before, DueKey, DueQueue};
use entry::{Entry, LevelId, Location};
use level::{Expiration, Level, SLOT_BITS, SLOT_MASK};
use list::List;
use overflow::{ahead_in_reach, ahead_near, migration_tick, within_reach, Overflow};
use slab::Slab;
use sort::Bounds;
use tick::Resolution;

/// Number of levels. Seven levels of 64 slots reach `2^42` ticks: 139 years
/// at the default 1 ms tick (13.9 years at the finest, 100 µs).
pub const NUM_LEVELS: usize = 7;

// `Wheel::occupied_levels` has a bit per level.
const _: () = assert!(NUM_LEVELS <= u8::BITS as usize);

/// The deadline that never comes (`u64::MAX`, Python's `inf`). Such a timer
/// never fires but can be cancelled.
pub const NEVER: u64 = u64::MAX;

/// Default resolution: 1 ms.
pub const DEFAULT_TICK_NS: u64 = 1_000_000;

/// Finest accepted resolution: 100 µs.
pub const MIN_TICK_NS: u64 = 100_000;

/// Coarsest accepted resolution: 100 ms.
pub const MAX_TICK_NS: u64 = 100_000_000;

/// The highest level whose slots are sorted into the `ahead` queue when the
/// wheel reaches them, instead of being cascaded. A level-2 slot spans 4096
/// ticks (4 s at 1 ms); a slot of level 3 spans minutes to hours, whose
/// timers would all wait in that queue, 16 bytes more each, sorted at once.
const AHEAD_LEVELS: usize = 2;

/// A higher-level slot with at most this many entries is "sparse": when its
/// tracked minimum was invalidated by a cancel, `next_deadline` reads the
/// exact minimum of its entries instead of returning the slot start, so a
/// sleeping loop is not woken just to cascade.
const SPARSE_SLOT: usize = 8;

/// A fired timer, as `advance` hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired<T> {
    /// The key the timer had; it is stale from now on.
    pub key: TimerKey,
    /// The exact deadline it was inserted with (always `<=` the `now` of the
    /// `advance` that returned it).
    pub deadline: u64,
    /// The payload.
    pub value: T,
}

/// Counters since the wheel was created. Every inserted timer is exactly one
/// of fired, cancelled or live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WheelStats {
    /// Calls to `insert`.
    pub inserted: u64,
    /// Successful calls to `cancel` (stale and garbage keys not counted).
    pub cancelled: u64,
    /// Timers handed out by `advance`.
    pub fired: u64,
    /// Entry moves from a higher-level slot down the wheel or into the ahead
    /// queue, or from the far overflow list into the levels. Bookkeeping
    /// cost, not firings.
    pub cascaded: u64,
    /// Calls to `advance` that were spurious wake-ups: `next_deadline` had
    /// been called since the previous `advance`, the last value it returned
    /// was `<= now`, and yet no timer was due (nothing moved into `out` and
    /// `false` returned). Happens when `next_deadline` returned the start of a
    /// dense higher slot to cascade, or when the earliest timer was
    /// cancelled in between.
    pub spurious_advances: u64,
    /// Live timers (`len()`).
    pub live: u64,
}

/// Why a wheel could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WheelError {
    /// The resolution is outside `MIN_TICK_NS..=MAX_TICK_NS`.
    TickOutOfRange {
        /// The rejected resolution.
        tick_ns: u64,
    },
}

impl fmt::Display for WheelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WheelError::TickOutOfRange { tick_ns } => write!(
                f,
                "timer wheel tick of {tick_ns} ns is outside {MIN_TICK_NS}..={MAX_TICK_NS} ns"
            ),
        }
    }
}

impl std::error::Error for WheelError {}

/// The timer wheel. See the module documentation.
///
/// `Send` when `T` is, but not `Sync`: `next_deadline` takes `&self` and
/// updates a cache and a counter through `Cell`s.
///
/// Invariant: every live entry with a tick `<= elapsed` is in `due` or
/// `ahead`; every other one is in `ahead`, a level slot or `overflow`.
#[derive(Debug)]
pub struct Wheel<T> {
    /// Nanoseconds per tick, with its reciprocal for fast division. Every
    /// deadline is rounded up to it for placement.
    resolution: Resolution,

    /// The latest `now` given to `advance` (or the start time). A smaller
    /// `now` is clamped to it: the wheel's time never runs backwards.
    now: u64,

    /// The tick the wheel has been processed through: `tick_of(now)` between
    /// calls. The slot digits of this value are the "current" slots.
    elapsed: u64,

    /// The levels, finest first. Boxed to keep `Wheel` cheap to move (they
    /// are 7 KiB).
    levels: Box<[Level; NUM_LEVELS]>,

    /// Bit `l` set iff level `l` holds an entry. The next slot to process is
    /// on the lowest non-empty level; this finds it with one
    /// `trailing_zeros` instead of a look at every level.
    occupied_levels: u8,

    /// Entries whose tick has been reached, in firing order.
    due: DueQueue,

    /// Entries of whole level-1 and level-2 slots, sorted into firing order
    /// when the wheel reached their slot: mostly of ticks still to come.
    /// One bucket sort of a slot replaces the one or two cascades, and the
    /// level-0 pass, each of its entries would take on its way down, most of
    /// the cost of a sparse timer. `advance` fires from `due` and `ahead`
    /// merged; a slot is sorted in only while it comes after everything
    /// already here, so the queue stays in order.
    ahead: DueQueue,

    /// Deadlines beyond the top level, and `NEVER`.
    overflow: Overflow,

    /// Storage of all entries; lists link them by slab index.
    slab: Slab<T>,

    /// No entry of `due` or `ahead` has an earlier deadline (`NEVER` when
    /// both are empty), so an `advance` inside the current tick tells that
    /// nothing is due with one comparison rather than a look at both
    /// queues. Set from their heads after each `fire`; an insert into `due`
    /// lowers it; a cancel leaves it (too early only costs a look).
    queued_min: u64,

    /// No slot or far migration is to be processed before this tick, so an
    /// `advance` to an earlier one skips the walk of the levels. Set by that
    /// walk; placing an entry in a level lowers it to the first tick of the
    /// entry's slot, in the far list resets it to 0; a cancel leaves it, as
    /// being early only costs a walk that finds nothing.
    next_process_tick: u64,

    /// Insertion counter, stored in each entry to break deadline ties FIFO.
    next_seq: u64,

    /// The last value `next_deadline` returned since the previous `advance`
    /// (`NEVER`: not called, or `None`), to count spurious advances. A
    /// `Cell` because `next_deadline` takes `&self`.
    armed: Cell<u64>,

    /// `next_deadline`'s last answer (`NEVER` for `None`), reused while
    /// `next_cache_valid`, so a loop that asks more than once per iteration
    /// pays once. An insert can only lower the answer, so it lowers this
    /// (valid or not: a stale value is never read); a cancel of exactly this
    /// deadline, and every `advance`, invalidate it.
    next_cache: Cell<u64>,

    /// Whether `next_cache` is the current answer.
    next_cache_valid: Cell<bool>,

    /// Counters of fired, cancelled, cascaded and spurious; `stats()`
    /// derives the others (`inserted` is `next_seq`, `live` what is neither
    /// fired nor cancelled): the live count is kept by nobody, so an insert
    /// counts nothing and a firing only its batch.
    stats: WheelStats,
}

impl<T> Wheel<T> {
    /// Bytes of memory per live timer, payload included: one slab slot (the
    /// lists are linked through the slots). 40 for a `u64` payload. A timer
    /// in the due or ahead queue (its tick reached, or its level-1 or
    /// level-2 slot sorted ahead) has a 16-byte key there as well.
    pub const BYTES_PER_TIMER: usize = slab::slot_bytes::<T>();

    /// An empty wheel at 1 ms resolution whose time starts at `start_ns`
    /// (CLOCK_MONOTONIC, see [`now_monotonic_ns`]).
    pub fn new(start_ns: u64) -> Self {
        match Self::with_tick(DEFAULT_TICK_NS, start_ns) {
            Ok(wheel) => wheel,
            Err(e) => unreachable!("default tick rejected: {e}"),
        }
    }

    /// An empty wheel with a resolution of `tick_ns` nanoseconds (100 µs to
    /// 100 ms) whose time starts at `start_ns`.
    pub fn with_tick(tick_ns: u64, start_ns: u64) -> Result<Self, WheelError> {
        if !(MIN_TICK_NS..=MAX_TICK_NS).contains(&tick_ns) {
            return Err(WheelError::TickOutOfRange { tick_ns });
        }
        Ok(Wheel {
            resolution: Resolution::new(tick_ns),
            now: start_ns,
            elapsed: Resolution::new(tick_ns).tick_of(start_ns),
            levels: Box::new(std::array::from_fn(Level::new)),
            occupied_levels: 0,
            due: DueQueue::default(),
            ahead: DueQueue::default(),
            overflow: Overflow::new(),
            slab: Slab::new(),
            queued_min: NEVER,
            next_process_tick: 0,
            next_seq: 0,
            armed: Cell::new(NEVER),
            next_cache: Cell::new(NEVER),
            next_cache_valid: Cell::new(false),
            stats: WheelStats::default(),
        })
    }

    /// The resolution in nanoseconds.
    pub fn tick_ns(&self) -> u64 {
        self.resolution.tick_ns()
    }

    /// The wheel's current time: the latest `now` seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of live timers (including `NEVER` ones).
    pub fn len(&self) -> usize {
        (self.next_seq - self.stats.fired - self.stats.cancelled) as usize
    }

    /// True when no timer is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the wheel holds beyond its fixed part (the levels): entry
    /// storage, live or free for reuse, and the due queues' sort keys.
    /// Grows with the largest burst of timers; see `release_memory`.
    pub fn allocated_bytes(&self) -> usize {
        self.slab.allocated_bytes() + self.due.allocated_bytes() + self.ahead.allocated_bytes()
    }

    /// Gives back the memory of a wheel with no live timer (its entry
    /// storage and queues, as large as its largest burst), so that a
    /// long-lived loop does not keep a spike's memory for good. Keys
    /// handed out before stay stale. O(entries the storage had room for):
    /// for an owner that calls it when the wheel has just emptied, not on
    /// every operation. False, nothing changed, if a timer is live (or,
    /// after 2^31 timers in one slot, never: see `Slab::release_memory`).
    pub fn release_memory(&mut self) -> bool {
        if !self.is_empty() || !self.slab.release_memory() {
            return false;
        }
        // No entry is live: what the queues hold are tombstones.
        self.due = DueQueue::default();
        self.ahead = DueQueue::default();
        self.queued_min = NEVER;
        true
    }

    /// The counters.
    pub fn stats(&self) -> WheelStats {
        WheelStats {
            inserted: self.next_seq,
            live: self.len() as u64,
            ..self.stats
        }
    }

    /// Makes room for `additional` more live timers without reallocating.
    pub fn reserve(&mut self, additional: usize) {
        self.slab.reserve(additional, self.len());
    }

    /// Schedules `value` at `deadline_ns` (CLOCK_MONOTONIC nanoseconds;
    /// [`NEVER`] for never). A deadline at or before the wheel's time comes
    /// out on the next `advance`.
    ///
    /// # Panics
    /// If `u32::MAX - 1` timers are live.
    #[inline(always)]
    pub fn insert(&mut self, deadline_ns: u64, value: T) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.next_cache.set(self.next_cache.get().min(deadline_ns));
        // The usual deadline (not `NEVER`, later than the wheel's tick, not
        // years away) goes to a level slot with its entry written whole,
        // links and location included, rather than stored and relinked.
        let elapsed = self.elapsed;
        match self.resolution.tick_of_usual(deadline_ns) {
            Some(when) if ahead_near(elapsed, when) => {
                let (id, slot, reached_at) = slot_of(elapsed, when);
                let level = id.index();
                let prev = self.levels[level].tail(slot);
                let location = Location::Slot {
                    level: id,
                    slot: slot as u8,
                };
                let key = self
                    .slab
                    .insert(Entry::linked(deadline_ns, seq, value, prev, location));
                self.levels[level].push_stored(
                    &mut self.slab,
                    slot,
                    key.index(),
                    prev,
                    deadline_ns,
                );
                self.occupied_levels |= 1 << level;
                self.next_process_tick = self.next_process_tick.min(reached_at);
                key
            }
            _ => self.insert_elsewhere(deadline_ns, seq, value),
        }
    }

    /// `insert` of a deadline that is due, `NEVER`, or too far for the
    /// one-compare test.
    #[inline(never)]
    fn insert_elsewhere(&mut self, deadline_ns: u64, seq: u64, value: T) -> TimerKey {
        let key = self.slab.insert(Entry::new(deadline_ns, seq, value));
        self.place(key.index(), deadline_ns);
        key
    }

    /// Cancels the timer `key` names and returns its payload, freeing its
    /// memory at once. `None`, and nothing changes, when the key is stale
    /// (fired, cancelled, slot reused) or garbage.
    #[inline(always)]
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let entry = self.slab.get(key)?;
        let (index, deadline, location) = (key.index(), entry.deadline, entry.location);
        if self.next_cache.get() == deadline {
            self.next_cache_valid.set(false);
        }
        self.stats.cancelled += 1;
        let Location::Slot { level, slot } = location else {
            return Some(self.cancel_outside_levels(index, location));
        };
        let level = level.index();
        // A slot number is below 64: the mask tells the compiler so, in
        // place of a bounds check.
        let slot = slot as usize % level::SLOTS;
        if self.levels[level].remove(&mut self.slab, slot, index, deadline) {
            self.occupied_levels &= !(1 << level);
        }
        // Live: `get` found it above.
        Some(self.slab.remove_live(index).value)
    }

    /// `cancel` of an entry in the due queue or an overflow list.
    #[inline(never)]
    fn cancel_outside_levels(&mut self, index: u32, location: Location) -> T {
        match location {
            Location::Due | Location::Ahead => {
                // Frees the slot first: that is what turns the queue's copy
                // of the key into a tombstone.
                let entry = self.slab.remove(index);
                match location {
                    Location::Due => self.due.cancelled(&self.slab),
                    _ => self.ahead.cancelled(&self.slab),
                }
                entry.value
            }
            Location::Far | Location::Never => {
                self.overflow.remove(&mut self.slab, index, location);
                self.slab.remove(index).value
            }
            Location::Slot { .. } => unreachable!("entry {index} is in a level slot"),
        }
    }

    /// True while `key` names a live timer.
    pub fn contains(&self, key: TimerKey) -> bool {
        self.slab.get(key).is_some()
    }

    /// The exact deadline of the live timer `key` names.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.slab.get(key).map(|entry| entry.deadline)
    }

    /// The payload of the live timer `key` names.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.slab.get(key).map(|entry| &entry.value)
    }

    /// Every live timer's key and payload, in no particular order. O(slab
    /// size): for owners that must see all their payloads (a GC walk, a
    /// shutdown), not for the hot paths.
    pub fn iter(&self) -> impl Iterator<Item = (TimerKey, &T)> {
        self.slab.iter().map(|(key, entry)| (key, &entry.value))
    }

    /// When to call `advance` next; `None` when no timer can ever fire.
    ///
    /// Exact (the earliest deadline of all timers) when that timer is due,
    /// in the ahead queue, on level 0, or in the far overflow list. In a
    /// higher slot it is exact too while the slot's tracked minimum is valid (no cancel has removed
    /// the slot's earliest entry since it filled) or the slot is sparse (at
    /// most 8 entries, read directly). Otherwise it is the first instant of
    /// that slot: earlier than every deadline in it, and the time its cascade
    /// is needed. Never later than the true earliest deadline. O(1) unless a
    /// cancel invalidated the slot's minimum.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        let next = if self.next_cache_valid.get() {
            self.next_cache.get()
        } else {
            let next = self.peek_next_deadline().unwrap_or(NEVER);
            self.next_cache.set(next);
            self.next_cache_valid.set(true);
            next
        };
        // Asked again before an advance, the answer is mostly the same:
        // no store then (a store a call was half the cost of a call).
        if self.armed.get() != next {
            self.armed.set(next);
        }
        (next != NEVER).then_some(next)
    }

    /// Moves up to `max` timers due at `now_ns` into `out`, in (deadline,
    /// insertion) order, and returns true when more are due. A `now_ns`
    /// earlier than a previous one is clamped to it.
    ///
    /// Inlined into the caller: most advances find no slot to process, and
    /// either nothing due or only the head of `ahead` (a sparse wheel's one
    /// timer a tick); those are answered here, the rest out of line.
    #[inline(always)]
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Expired<T>>, max: usize) -> bool {
        let now = now_ns.max(self.now);
        self.now = now;
        let armed = self.armed.replace(NEVER);
        let target = self.resolution.tick_of(now);
        if target < self.next_process_tick {
            // No slot or far migration to process up to `target`: the
            // wheel's time moves without a look at the levels. Crossing no
            // slot start, it leaves `next_deadline`'s answer as it was.
            self.elapsed = self.elapsed.max(target);
            if !self.queued_due(now) {
                // The earliest queued timer is later: nothing moves.
                self.count_spurious(armed, now, 0, false);
                return false;
            }
            if self.due.is_empty() {
                // Only the head of `ahead` can be due.
                self.next_cache_valid.set(false);
                let fired = self.fire_ahead(now, out, max);
                // The due queue is still empty: `ahead`'s head is first.
                self.queued_min = self.ahead.first_deadline().unwrap_or(NEVER);
                let more = self.queued_due(now);
                self.count_spurious(armed, now, fired, more);
                return more;
            }
        }
        self.advance_slow(now, target, armed, out, max)
    }

    /// `advance` when a slot is to be processed or the due queue is not
    /// empty.
    #[inline(never)]
    fn advance_slow(
        &mut self,
        now: u64,
        target: u64,
        armed: u64,
        out: &mut Vec<Expired<T>>,
        max: usize,
    ) -> bool {
        let (fired, more) = if target > self.elapsed || self.queued_due(now) {
            self.next_cache_valid.set(false);
            let fired = self.fire(now, target, out, max);
            // Exact again: both heads are live after `fire`.
            self.queued_min = self.queued_first_deadline();
            (fired, self.queued_due(now))
        } else {
            // Same tick as before and the head of the due queue (the
            // earliest timer of the wheel) still ahead: nothing can be due,
            // and nothing changed. A loop polling often takes this path, also
            // while later entries of the current tick wait in the due queue.
            (0, false)
        };
        self.count_spurious(armed, now, fired, more);
        more
    }

    /// Counts an advance that found nothing although `next_deadline` said
    /// `armed` (`NEVER`: not asked since the last advance) was due.
    #[inline(always)]
    fn count_spurious(&mut self, armed: u64, now: u64, fired: usize, more: bool) {
        if fired == 0 && !more && armed != NEVER && armed <= now {
            self.stats.spurious_advances += 1;
        }
    }

    /// The work of `advance`: processes the wheel up to tick `target`, then
    /// moves up to `max` entries due at `now` into `out`. Returns how many.
    #[inline(never)]
    fn fire(&mut self, now: u64, target: u64, out: &mut Vec<Expired<T>>, max: usize) -> usize {
        if target > self.elapsed {
            if self.fire_lone_entry(now, target, out, max) {
                return 1;
            }
            self.process_until(target);
        }
        let mut fired = 0;
        while fired < max {
            // One queue alone pops in a tight loop; both are merged entry by
            // entry.
            let alone = if self.ahead.is_empty() {
                &mut self.due
            } else if self.due.is_empty() {
                &mut self.ahead
            } else {
                let Some(index) = self.take_due(now) else {
                    break;
                };
                hand_out(&mut self.slab, index, now, out);
                fired += 1;
                continue;
            };
            fired += alone.fire_due(&mut self.slab, now, max - fired, |slab, index| {
                hand_out(slab, index, now, out)
            });
            break;
        }
        self.due.settle(&self.slab);
        self.ahead.settle(&self.slab);
        self.stats.fired += fired as u64;
        fired
    }

    /// `fire` when the due queue is empty and no slot or far migration is
    /// to be processed up to `now`'s tick: pops `ahead` alone, without
    /// `fire`'s call, its look at the levels and the merge of the two
    /// queues on every pop. Returns how many fired.
    #[inline(always)]
    fn fire_ahead(&mut self, now: u64, out: &mut Vec<Expired<T>>, max: usize) -> usize {
        debug_assert!(self.due.is_empty(), "fire_ahead with a due queue");
        // A sparse wheel's advance fires one timer: popped alone, without
        // the set-up of `fire_due`'s loop, when the key after it is not due
        // (nor any later one, the keys being in order).
        let fired = if max != 0 && !self.ahead.second_due(now) {
            let Some(index) = self.ahead.pop_first_due(&self.slab, now) else {
                return 0;
            };
            hand_out(&mut self.slab, index, now, out);
            1
        } else {
            self.fire_ahead_many(now, out, max)
        };
        self.stats.fired += fired as u64;
        fired
    }

    /// `fire_ahead` of more than one timer: `fire_due`'s loop, out of line
    /// to have the registers to itself (inlined in the caller's loop, it
    /// kept the payload and the slab's free list on the stack).
    #[inline(never)]
    fn fire_ahead_many(&mut self, now: u64, out: &mut Vec<Expired<T>>, max: usize) -> usize {
        self.ahead
            .fire_due(&mut self.slab, now, max, |slab, index| {
                hand_out(slab, index, now, out)
            })
    }

    /// Whether `queued_min` is due at `now`. No queued deadline is `NEVER`
    /// (those wait in the overflow), so `NEVER` there means empty queues,
    /// even at the `now` of `u64::MAX`.
    #[inline]
    fn queued_due(&self, now: u64) -> bool {
        self.queued_min <= now && self.queued_min != NEVER
    }

    /// The earliest deadline queued in `due` or `ahead` (`NEVER` if none).
    #[inline]
    fn queued_first_deadline(&self) -> u64 {
        let due = self.due.first_deadline().unwrap_or(NEVER);
        let ahead = self.ahead.first_deadline().unwrap_or(NEVER);
        due.min(ahead)
    }

    /// Pops the entry that fires first of `due` and `ahead`, if it is due at
    /// `now`, and returns its slab index.
    #[inline]
    fn take_due(&mut self, now: u64) -> Option<u32> {
        if self.ahead.is_empty() {
            return self.due.take_due(&self.slab, now);
        }
        if self.due.is_empty() {
            return self.ahead.take_due(&self.slab, now);
        }
        let from_ahead = match self.due.first_live(&self.slab) {
            None => true,
            Some(due) => self
                .ahead
                .first_live(&self.slab)
                .is_some_and(|ahead| fires_before(&ahead, &due, &self.slab)),
        };
        if from_ahead {
            self.ahead.take_due(&self.slab, now)
        } else {
            self.due.take_due(&self.slab, now)
        }
    }

    /// The sparse fast path of `fire`: when nothing is queued as due (in
    /// `due`, or at the head of `ahead`) and the only slot to process up to
    /// `target` is level 0's slot of `target`, holding one entry due at
    /// `now`, fires that entry straight into `out` and moves `elapsed` to
    /// `target`. A lone timer would otherwise pay for a push onto the due
    /// queue, a sort of a one-key run and a pop, most of what firing it
    /// costs. Returns false, having changed nothing, in every other case.
    #[inline]
    fn fire_lone_entry(
        &mut self,
        now: u64,
        target: u64,
        out: &mut Vec<Expired<T>>,
        max: usize,
    ) -> bool {
        if self.occupied_levels & 1 == 0
            || max == 0
            || !self.due.is_empty()
            || self.ahead.head_due(now)
        {
            return false;
        }
        // Level 0 holds the earliest entries of the levels. Its ticks share
        // every digit but the last with `elapsed`, so none starts a
        // higher-level slot or is a far migration tick: if its first slot is
        // `target`'s, nothing else is to be processed up to `target`.
        let Some(exp) = self.levels[0].next_expiration(self.elapsed) else {
            return false;
        };
        if exp.tick != target {
            return false;
        }
        debug_assert!(
            target & SLOT_MASK != 0,
            "level-0 slot at {target} starts a level-1 slot"
        );
        let Some(index) = self.levels[0].slot(exp.slot).single() else {
            return false;
        };
        if self.slab.entry(index).deadline > now {
            return false;
        }
        self.levels[0].clear_slot(exp.slot);
        if self.levels[0].is_empty() {
            self.occupied_levels &= !1;
        }
        self.elapsed = target;
        hand_out(&mut self.slab, index, now, out);
        self.stats.fired += 1;
        true
    }

    /// `next_deadline` without recording the answer.
    fn peek_next_deadline(&self) -> Option<u64> {
        let ahead = self.ahead.first_deadline();
        // `due` is earlier than the levels and the overflow, not `ahead`.
        let rest = match self.due.first_deadline() {
            Some(deadline) => Some(deadline),
            None => self.peek_wheel_deadline(),
        };
        match (ahead, rest) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// `peek_next_deadline` of the levels and the overflow lists.
    fn peek_wheel_deadline(&self) -> Option<u64> {
        if let Some(exp) = self.next_expiration() {
            if let Some(min) = self.levels[exp.level].slot_min(exp.slot) {
                return Some(min);
            }
            let limit = if exp.level == 0 {
                usize::MAX
            } else {
                SPARSE_SLOT
            };
            let exact = self.slot_min_deadline(exp, limit);
            return Some(exact.unwrap_or_else(|| self.resolution.first_ns_of(exp.tick)));
        }
        self.overflow.far_min()
    }

    /// The earliest deadline in the slot of `exp`, or `None` if the slot has
    /// more than `limit` entries.
    fn slot_min_deadline(&self, exp: Expiration, limit: usize) -> Option<u64> {
        let mut min = u64::MAX;
        let mut seen = 0;
        for index in self.levels[exp.level].slot(exp.slot).iter(&self.slab) {
            seen += 1;
            if seen > limit {
                return None;
            }
            min = min.min(self.slab.entry(index).deadline);
        }
        debug_assert!(seen > 0, "expiration {exp:?} points at an empty slot");
        Some(min)
    }

    /// The next slot to process: the first one of the lowest non-empty level
    /// (every entry of a level is earlier than every entry of the levels
    /// above it).
    #[inline]
    fn next_expiration(&self) -> Option<Expiration> {
        if self.occupied_levels == 0 {
            return None;
        }
        let level = self.occupied_levels.trailing_zeros() as usize;
        let exp = self.levels[level].next_expiration(self.elapsed);
        debug_assert!(
            exp.is_some(),
            "level {level} marked occupied but empty (levels {:#09b})",
            self.occupied_levels
        );
        exp
    }

    /// Processes, in time order, every slot and far migration up to tick
    /// `target`, then sets `elapsed` to it. Afterwards every entry with a
    /// tick `<= target` is in the due queue.
    #[inline(always)]
    fn process_until(&mut self, target: u64) {
        if self.next_process_tick <= target {
            self.walk_until(target);
        }
        self.elapsed = self.elapsed.max(target);
    }

    /// `process_until` when something is to be processed: out of line, so
    /// that `fire` stays small for the usual tick that has nothing.
    #[inline(never)]
    fn walk_until(&mut self, target: u64) {
        while self.next_process_tick <= target {
            let slot = self.next_expiration();
            let migrate = self
                .overflow
                .far_min()
                .map(|deadline| migration_tick(self.resolution.tick_of(deadline)));
            let slot_tick = slot.map_or(u64::MAX, |exp| exp.tick);
            let migrate_tick = migrate.unwrap_or(u64::MAX);
            // Recorded for the next call too: until an insert, nothing is to
            // be processed before it.
            self.next_process_tick = slot_tick.min(migrate_tick);
            match (slot, migrate) {
                (Some(_), Some(tick)) if tick < slot_tick && tick <= target => {
                    self.migrate_far(tick)
                }
                (Some(exp), _) if exp.tick <= target => self.process_slot(exp),
                (None, Some(tick)) if tick <= target => self.migrate_far(tick),
                _ => break,
            }
        }
    }

    /// Empties one slot: a level-0 slot goes to the due queue, one of level 1
    /// or 2 is sorted into the ahead queue when it comes after everything
    /// there, and any other is cascaded (each entry placed again from the
    /// slot's start tick).
    fn process_slot(&mut self, exp: Expiration) {
        debug_assert!(
            exp.tick > self.elapsed,
            "processing {exp:?} at or before elapsed {}",
            self.elapsed
        );
        self.elapsed = self.elapsed.max(exp.tick);
        let list = self.levels[exp.level].take_slot(&mut self.slab, exp.slot);
        if self.levels[exp.level].is_empty() {
            self.occupied_levels &= !(1 << exp.level);
        }
        if exp.level != 0 && exp.level <= AHEAD_LEVELS && self.ahead_takes(exp.tick) {
            self.sort_ahead(exp, list);
            return;
        }
        let run = self.due.run_start();
        if exp.level == 0 {
            // Every entry here has tick `exp.tick`, later than every tick in
            // the due queue: the slot is one run of it.
            let mut drain = list.drain();
            while let Some(index) = drain.next(&self.slab) {
                debug_assert_eq!(
                    self.resolution.tick_of(self.slab.entry(index).deadline),
                    exp.tick,
                    "entry {index} in level-0 slot {exp:?}"
                );
                self.queue_due(index);
            }
        } else if exp.level == 1 {
            self.cascade_to_level_0(exp, list);
        } else {
            self.cascade(exp, list);
        }
        self.due.end_run(run, &self.slab);
    }

    /// Whether a slot starting at tick `tick` can be sorted into `ahead`:
    /// every entry there is earlier than every deadline of the tick (ahead
    /// holds earlier slots, or a slot of the level above that is done, not
    /// one whose range this slot is inside).
    #[inline]
    fn ahead_takes(&self, tick: u64) -> bool {
        self.ahead
            .last_deadline()
            .is_none_or(|last| last < self.resolution.first_ns_of(tick))
    }

    /// Moves every entry of `list`, the slot of `exp` (a higher level) just
    /// taken, into `ahead` as one sorted run. Out of line: its walk then
    /// has the registers to itself.
    #[inline(never)]
    fn sort_ahead(&mut self, exp: Expiration, list: List) {
        // Every deadline of the slot lies in the slot's own ticks: the sort's
        // range is known without a min and a max kept through the walk.
        let end = exp.tick + level::slot_range(exp.level);
        let bounds = Bounds {
            min: self.resolution.first_ns_of(exp.tick),
            max: self.resolution.first_ns_of(end) - 1,
        };
        // A local vector, not the queue's: the stores into the entries would
        // otherwise have its length reloaded and stored again every step.
        let mut gathered = self.ahead.take_gathered();
        let mut drain = list.drain();
        while let Some(index) = drain.next(&self.slab) {
            let entry = self.slab.entry_mut(index);
            entry.location = Location::Ahead;
            gathered.push(DueKey {
                deadline: entry.deadline,
                index,
                generation: entry.generation,
            });
        }
        self.stats.cascaded += gathered.len() as u64;
        self.ahead.append_gathered(gathered, &self.slab, bounds);
    }

    /// Appends entry `index` to the current run of the due queue.
    #[inline(always)]
    fn queue_due(&mut self, index: u32) {
        let entry = self.slab.entry_mut(index);
        entry.location = Location::Due;
        let key = DueKey {
            deadline: entry.deadline,
            index,
            generation: entry.generation,
        };
        self.due.push(key);
    }

    /// Places again every entry of `list`, the slot of `exp` (a higher
    /// level) just taken. Leaner than `place` per entry: an entry of a slot is
    /// never `NEVER` and stays within reach as the wheel moves towards it, so
    /// it lands on a lower level or, when its tick is the slot's first one, in
    /// the due queue's current run; and `elapsed` and the level bits stay in
    /// registers.
    fn cascade(&mut self, exp: Expiration, list: List) {
        let elapsed = self.elapsed;
        let mut occupied = 0u8;
        let mut moved = 0u64;
        let mut drain = list.drain();
        while let Some(index) = drain.next(&self.slab) {
            moved += 1;
            let deadline = self.slab.entry(index).deadline;
            let when = self.resolution.tick_of(deadline);
            debug_assert!(
                deadline != NEVER && within_reach(elapsed, when),
                "entry {index} (deadline {deadline}) in {exp:?} out of reach of {elapsed}"
            );
            if when > elapsed {
                let level = level_for(elapsed, when).index();
                debug_assert!(
                    level < exp.level,
                    "entry {index} cascaded from {exp:?} to level {level} (elapsed {elapsed})"
                );
                let slot = level::slot_for(when, level);
                self.levels[level].push(&mut self.slab, slot, index, deadline);
                occupied |= 1 << level;
            } else {
                self.queue_due(index);
            }
        }
        self.occupied_levels |= occupied;
        self.stats.cascaded += moved;
    }

    /// `cascade` of a level-1 slot (one the ahead queue cannot take: it lies
    /// inside the range of a level-2 slot sorted there). Its entries share
    /// every digit but the last with the slot's first tick, `elapsed`: each
    /// lands in the level-0 slot of its last digit, or in the due queue's run
    /// when that digit is `elapsed`'s. Without the level arithmetic, and with
    /// the level known, this is about half the work of `cascade` per entry.
    fn cascade_to_level_0(&mut self, exp: Expiration, list: List) {
        let elapsed = self.elapsed;
        debug_assert!(
            exp.level == 1 && elapsed & SLOT_MASK == 0,
            "{exp:?} at {elapsed}"
        );
        let mut moved = 0u64;
        let mut drain = list.drain();
        while let Some(index) = drain.next(&self.slab) {
            moved += 1;
            let deadline = self.slab.entry(index).deadline;
            let when = self.resolution.tick_of(deadline);
            debug_assert!(
                (elapsed..elapsed + level::SLOTS as u64).contains(&when),
                "entry {index} (tick {when}) in {exp:?} outside the slot (elapsed {elapsed})"
            );
            if when > elapsed {
                let slot = level::slot_for(when, 0);
                self.levels[0].push(&mut self.slab, slot, index, deadline);
            } else {
                self.queue_due(index);
            }
        }
        if !self.levels[0].is_empty() {
            self.occupied_levels |= 1;
        }
        self.stats.cascaded += moved;
    }

    /// Moves the far entries now within the top level's reach into the
    /// levels, from tick `tick` (the migration tick of the earliest one). The
    /// tick may equal `elapsed` when a top-level slot starting at the same
    /// tick was processed just before.
    fn migrate_far(&mut self, tick: u64) {
        debug_assert!(
            tick >= self.elapsed,
            "far migration at {tick} before elapsed {}",
            self.elapsed
        );
        self.elapsed = self.elapsed.max(tick);
        let mut drain = self.overflow.take_far(&mut self.slab).drain();
        while let Some(index) = drain.next(&self.slab) {
            let deadline = self.slab.entry(index).deadline;
            if self.place(index, deadline) != Location::Far {
                self.stats.cascaded += 1;
            }
        }
    }

    /// Links entry `index`, whose deadline is `deadline`, where it belongs
    /// relative to `elapsed`, and says where.
    #[inline(always)]
    fn place(&mut self, index: u32, deadline: u64) -> Location {
        let when = self.resolution.tick_of(deadline);
        if ahead_in_reach(self.elapsed, when) && deadline != NEVER {
            let (id, slot, reached_at) = slot_of(self.elapsed, when);
            let level = id.index();
            self.levels[level].push(&mut self.slab, slot, index, deadline);
            self.occupied_levels |= 1 << level;
            self.next_process_tick = self.next_process_tick.min(reached_at);
            return Location::Slot {
                level: id,
                slot: slot as u8,
            };
        }
        self.place_outside_levels(index, deadline, when)
    }

    /// `place` of an entry that is due, too far or `NEVER`; `when` is its
    /// tick.
    #[inline(never)]
    fn place_outside_levels(&mut self, index: u32, deadline: u64, when: u64) -> Location {
        if deadline == NEVER {
            self.overflow.push_never(&mut self.slab, index);
            Location::Never
        } else if when <= self.elapsed {
            let entry = self.slab.entry_mut(index);
            entry.location = Location::Due;
            let key = DueKey {
                deadline,
                index,
                generation: entry.generation,
            };
            self.due.insert(key);
            self.queued_min = self.queued_min.min(deadline);
            Location::Due
        } else {
            self.overflow.push_far(&mut self.slab, index);
            self.next_process_tick = 0;
            Location::Far
        }
    }
}

/// Frees the due entry at `index` of `slab` (popped from a queue as live)
/// and pushes it onto `out`.
#[inline(always)]
fn hand_out<T>(slab: &mut Slab<T>, index: u32, now: u64, out: &mut Vec<Expired<T>>) {
    let entry = slab.remove_live(index);
    debug_assert!(
        entry.deadline <= now,
        "firing entry {index} early: deadline {} > now {now}",
        entry.deadline
    );
    out.push(Expired {
        key: TimerKey::new(index, entry.generation),
        deadline: entry.deadline,
        value: entry.value,
    });
}

/// Where tick `when` (after `elapsed`, within reach) is linked: its level,
/// its slot there, and the tick at which the wheel reaches that slot (its
/// first: `when` with the digits below the level cleared, later than
/// `elapsed` as the level's digit of `when` is the higher one).
#[inline(always)]
fn slot_of(elapsed: u64, when: u64) -> (LevelId, usize, u64) {
    let id = level_for(elapsed, when);
    let shift = SLOT_BITS * id.index() as u32;
    let digits = when >> shift;
    (id, (digits & SLOT_MASK) as usize, digits << shift)
}

/// The level for tick `when` seen from tick `elapsed` (`when > elapsed`,
/// within reach): the level of the highest base-64 digit where they differ.
/// Past the top level (a top-level slot that wrapped around) it is the top
/// level.
#[inline]
fn level_for(elapsed: u64, when: u64) -> LevelId {
    // OR-ing in the slot mask maps "differ only in digit 0" to level 0.
    let masked = (elapsed ^ when) | SLOT_MASK;
    let significant = (u64::BITS - 1 - masked.leading_zeros()) as usize;
    LEVEL_OF_BIT[significant]
}

/// The level of the digit holding each bit of a tick, capped at the top
/// level: one load on every insert instead of a division and a compare.
const LEVEL_OF_BIT: [LevelId; 64] = {
    let mut levels = [LevelId::L0; 64];
    let mut bit = 0;
    while bit < 64 {
        let level = bit / SLOT_BITS as usize;
        levels[bit] = LevelId::ALL[if level < NUM_LEVELS {
            level
        } else {
            NUM_LEVELS - 1
        }];
        bit += 1;
    }
    levels
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_for_picks_the_highest_differing_digit() {
        assert_eq!(level_for(0, 1).index(), 0);
        assert_eq!(level_for(0, 63).index(), 0);
        assert_eq!(level_for(0, 64).index(), 1);
        assert_eq!(level_for(63, 64).index(), 1);
        assert_eq!(level_for(64, 127).index(), 0);
        assert_eq!(level_for(0, 4095).index(), 1);
        assert_eq!(level_for(4095, 4096).index(), 2);
        assert_eq!(level_for(0, (1 << 36) - 1).index(), 5);
        assert_eq!(level_for(0, 1 << 36).index(), 6);
        // Wrapped top slot: digit 7 differs, still the top level.
        assert_eq!(level_for((1 << 42) - 1, (1 << 42) + 5).index(), 6);
    }

    #[test]
    fn tick_range_is_checked() {
        assert!(Wheel::<()>::with_tick(MIN_TICK_NS, 0).is_ok());
        assert!(Wheel::<()>::with_tick(MAX_TICK_NS, 0).is_ok());
        for tick_ns in [0, 1, MIN_TICK_NS - 1, MAX_TICK_NS + 1, u64::MAX] {
            assert_eq!(
                Wheel::<()>::with_tick(tick_ns, 0).err(),
                Some(WheelError::TickOutOfRange { tick_ns })
            );
        }
    }
}
