//! Entries the levels cannot hold: finite deadlines beyond the top level's
//! reach, and `NEVER`.
//!
//! The top level covers 64 slots of `2^36` ticks ahead of the current one
//! (139 years at a 1 ms tick). A deadline further out waits in the far list
//! until the wheel's time comes within reach of it, then moves into the top
//! level. `NEVER` entries never fire; they sit in their own list so they cost
//! nothing but can still be cancelled.

use super::entry::Location;
use super::level::{SLOTS, SLOT_BITS};
use super::list::List;
use super::slab::Slab;
use super::NUM_LEVELS;

/// Bits below the top level's digit.
const TOP_SHIFT: u32 = SLOT_BITS * (NUM_LEVELS as u32 - 1);

/// Overflow lists.
#[derive(Debug)]
pub(crate) struct Overflow {
    /// Finite deadlines too far ahead for the top level, unsorted.
    far: List,

    /// Earliest deadline in `far`, or `u64::MAX` when it is empty. Lets
    /// `next_deadline` answer and the wheel know when to migrate without
    /// scanning `far`; recomputed only when that entry leaves.
    far_min: u64,

    /// Entries with the `NEVER` deadline.
    never: List,
}

impl Overflow {
    pub(crate) fn new() -> Self {
        Overflow {
            far: List::EMPTY,
            far_min: u64::MAX,
            never: List::EMPTY,
        }
    }

    /// Earliest finite deadline held here.
    #[inline]
    pub(crate) fn far_min(&self) -> Option<u64> {
        (self.far_min != u64::MAX).then_some(self.far_min)
    }

    /// Adds a far entry.
    pub(crate) fn push_far<T>(&mut self, slab: &mut Slab<T>, index: u32) {
        let deadline = slab.entry(index).deadline;
        self.far.push_back(slab, index, Location::Far);
        self.far_min = self.far_min.min(deadline);
    }

    /// Adds a `NEVER` entry.
    pub(crate) fn push_never<T>(&mut self, slab: &mut Slab<T>, index: u32) {
        self.never.push_back(slab, index, Location::Never);
    }

    /// Unlinks entry `index` (a cancel) from the list `location` names.
    pub(crate) fn remove<T>(&mut self, slab: &mut Slab<T>, index: u32, location: Location) {
        match location {
            Location::Never => {
                self.never.remove(slab, index);
            }
            Location::Far => {
                let deadline = slab.entry(index).deadline;
                self.far.remove(slab, index);
                if deadline == self.far_min {
                    self.far_min = self.scan_far_min(slab);
                }
            }
            other => unreachable!("entry {index} at {other:?} is not in overflow"),
        }
    }

    /// Empties the far list and returns it, for migration into the levels.
    pub(crate) fn take_far<T>(&mut self, slab: &mut Slab<T>) -> List {
        self.far_min = u64::MAX;
        self.far.take(slab)
    }

    /// The earliest deadline in `far`, by a full scan.
    fn scan_far_min<T>(&self, slab: &Slab<T>) -> u64 {
        self.far
            .iter(slab)
            .map(|i| slab.entry(i).deadline)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// Whether tick `when` (after `elapsed`) fits in the levels: its top-level
/// slot is fewer than 64 slots past the one of `elapsed`. At 64 it would
/// share a slot with the current one, which the levels cannot tell apart.
#[inline]
pub(crate) const fn within_reach(elapsed: u64, when: u64) -> bool {
    (when >> TOP_SHIFT) - (elapsed >> TOP_SHIFT) < SLOTS as u64
}

/// Whether tick `when` is after `elapsed` and [`within_reach`] of it. An
/// insert's usual case takes one compare: up to one top-level slot's span
/// ahead is always in reach (the top digits differ by at most one).
#[inline(always)]
pub(crate) const fn ahead_in_reach(elapsed: u64, when: u64) -> bool {
    when > elapsed && (when - elapsed <= 1 << TOP_SHIFT || within_reach(elapsed, when))
}

/// Whether tick `when` is after `elapsed` by at most one top-level slot's
/// span: [`ahead_in_reach`] for certain, in one compare (an insert's usual
/// case; the other deadlines in reach take the longer test). For an
/// `elapsed` at least that span below `u64::MAX`, as every tick is (a
/// nanosecond count divided by 100 µs or more).
#[inline(always)]
pub(crate) const fn ahead_near(elapsed: u64, when: u64) -> bool {
    debug_assert!(elapsed <= u64::MAX - (1 << TOP_SHIFT));
    when.wrapping_sub(elapsed).wrapping_sub(1) < 1 << TOP_SHIFT
}

/// The first tick at which tick `when` is [`within_reach`]: the start of the
/// top-level slot 63 slots before its own.
#[inline]
pub(crate) const fn migration_tick(when: u64) -> u64 {
    ((when >> TOP_SHIFT) - (SLOTS as u64 - 1)) << TOP_SHIFT
}

#[cfg(test)]
mod tests {
    use super::super::entry::Entry;
    use super::*;

    const TOP_SLOT: u64 = 1 << TOP_SHIFT;

    #[test]
    fn within_reach_is_63_top_slots() {
        assert!(within_reach(0, 1));
        assert!(within_reach(0, 64 * TOP_SLOT - 1));
        assert!(!within_reach(0, 64 * TOP_SLOT));
        // From the last tick of top slot 63, top slot 63 + 63 is the last in
        // reach.
        let e = 64 * TOP_SLOT - 1;
        assert!(within_reach(e, 127 * TOP_SLOT - 1));
        assert!(!within_reach(e, 127 * TOP_SLOT));
    }

    #[test]
    fn ahead_in_reach_is_after_and_within_reach() {
        let edges = |t: u64| [t.saturating_sub(1), t, t.saturating_add(1)];
        let ticks: Vec<u64> = [0, 1, TOP_SLOT, 63 * TOP_SLOT, 64 * TOP_SLOT, 127 * TOP_SLOT]
            .into_iter()
            .chain([1 << 50, u64::MAX - TOP_SLOT, u64::MAX])
            .flat_map(edges)
            .collect();
        for &elapsed in &ticks {
            for &when in ticks.iter().chain(
                &ticks
                    .iter()
                    .map(|t| t.wrapping_add(elapsed))
                    .collect::<Vec<_>>(),
            ) {
                let expected = when > elapsed && within_reach(elapsed, when);
                assert_eq!(
                    ahead_in_reach(elapsed, when),
                    expected,
                    "elapsed {elapsed} when {when}"
                );
                if elapsed <= u64::MAX - TOP_SLOT {
                    assert!(
                        !ahead_near(elapsed, when) || expected,
                        "near but not in reach: elapsed {elapsed} when {when}"
                    );
                    assert_eq!(
                        ahead_near(elapsed, when),
                        when > elapsed && when - elapsed <= TOP_SLOT,
                        "elapsed {elapsed} when {when}"
                    );
                }
            }
        }
    }

    #[test]
    fn migration_tick_is_the_first_tick_in_reach() {
        for when in [64 * TOP_SLOT, 64 * TOP_SLOT + 5, 1000 * TOP_SLOT + 77] {
            let m = migration_tick(when);
            assert!(within_reach(m, when), "when {when} m {m}");
            assert!(!within_reach(m - 1, when), "when {when} m {m}");
        }
    }

    #[test]
    fn far_min_follows_inserts_and_cancels() {
        let mut slab = Slab::new();
        let mut overflow = Overflow::new();
        assert_eq!(overflow.far_min(), None);
        let ids: Vec<u32> = [30, 10, 20]
            .into_iter()
            .map(|d| slab.insert(Entry::new(d, d, ())).index())
            .collect();
        for &i in &ids {
            overflow.push_far(&mut slab, i);
        }
        assert_eq!(overflow.far_min(), Some(10));
        overflow.remove(&mut slab, ids[1], Location::Far);
        assert_eq!(overflow.far_min(), Some(20));
        overflow.remove(&mut slab, ids[0], Location::Far);
        assert_eq!(overflow.far_min(), Some(20));
        let taken = overflow.take_far(&mut slab);
        assert_eq!(taken.head(), ids[2]);
        assert_eq!(overflow.far_min(), None);
    }
}
