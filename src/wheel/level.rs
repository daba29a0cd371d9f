//! One level of the wheel: 64 slots and the bitmap of the occupied ones.
//!
//! Level `l` looks at bits `6l .. 6l + 6` of a tick: a slot of level `l` spans
//! `64^l` ticks and the whole level `64^(l+1)`. An entry sits in the level
//! where its tick first differs from the wheel's current tick (see
//! `level_for` in `mod.rs`), so within a level every entry is ahead of the
//! current slot, and the next slot to process is found by rotating the bitmap
//! to the current slot and counting trailing zeros.

use super::entry::{LevelId, Location};
use super::list::List;
use super::slab::Slab;

/// Slots per level. Being a power of 2 is what turns slot lookups into shifts
/// and masks and the occupancy set into one `u64`.
pub(crate) const SLOTS: usize = 64;

/// `log2(SLOTS)`: how many bits of a tick one level consumes.
pub(crate) const SLOT_BITS: u32 = 6;

/// Mask of one level's digit.
pub(crate) const SLOT_MASK: u64 = SLOTS as u64 - 1;

/// One level of 64 slots.
#[derive(Debug)]
pub(crate) struct Level {
    /// This level's number, 0 being the finest. Fixes which bits of a tick
    /// select the slot and how many ticks a slot spans.
    level: usize,

    /// `level` as an entry's location records it.
    id: LevelId,

    /// Bit `s` is set iff `slots[s]` is not empty. Finding the next entry is
    /// then a rotate and a `trailing_zeros` instead of a scan of 64 lists;
    /// kept in step by every push and remove.
    occupied: u64,

    /// The entries, by slot, each in order of arrival (FIFO).
    slots: [List; SLOTS],

    /// Earliest deadline in each slot: `EMPTY_MIN` for an empty slot,
    /// `UNKNOWN_MIN` once that earliest entry was cancelled. Lets
    /// `next_deadline` give the exact next deadline without walking the slot,
    /// so a sleeping loop wakes when a timer is due rather than when a slot
    /// needs cascading.
    mins: [u64; SLOTS],
}

/// `Level::mins` of an empty slot.
const EMPTY_MIN: u64 = u64::MAX;

/// `Level::mins` of a slot whose earliest entry was cancelled: the minimum
/// is unknown until the slot is emptied. No entry in a slot has deadline 0
/// (its tick would be 0, never after the wheel's current tick), so 0 is free.
const UNKNOWN_MIN: u64 = 0;

/// A slot that must be processed next, and from which tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Expiration {
    /// The level of the slot.
    pub(crate) level: usize,
    /// The slot within the level.
    pub(crate) slot: usize,
    /// The first tick the slot covers: no entry in it has an earlier tick.
    pub(crate) tick: u64,
}

impl Level {
    pub(crate) fn new(level: usize) -> Self {
        Level {
            level,
            id: LevelId::ALL[level],
            occupied: 0,
            slots: [List::EMPTY; SLOTS],
            mins: [EMPTY_MIN; SLOTS],
        }
    }

    /// The first occupied slot at or after the slot of `elapsed` (wrapping),
    /// with the tick it starts at.
    #[inline]
    pub(crate) fn next_expiration(&self, elapsed: u64) -> Option<Expiration> {
        let now_slot = slot_for(elapsed, self.level);
        let distance = slots_until_occupied(self.occupied, now_slot)?;
        debug_assert!(
            distance > 0,
            "level {} holds entries in its current slot {now_slot} (elapsed {elapsed}, occupied {:#018x})",
            self.level,
            self.occupied
        );
        let tick = slot_start(elapsed, self.level, distance);
        debug_assert!(
            tick - elapsed < level_range(self.level),
            "level {} slot {distance} past elapsed {elapsed} starts at {tick}, beyond the level",
            self.level
        );
        Some(Expiration {
            level: self.level,
            slot: (now_slot + distance as usize) % SLOTS,
            tick,
        })
    }

    /// The list of `slot`, for peeking.
    #[inline]
    pub(crate) fn slot(&self, slot: usize) -> &List {
        &self.slots[slot]
    }

    /// True when no slot holds an entry.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.occupied == 0
    }

    /// The earliest deadline in `slot`, if known (see `mins`).
    #[inline]
    pub(crate) fn slot_min(&self, slot: usize) -> Option<u64> {
        match self.mins[slot] {
            UNKNOWN_MIN | EMPTY_MIN => None,
            min => Some(min),
        }
    }

    /// Appends entry `index`, whose deadline is `deadline`, to `slot`.
    /// Always inlined: it is most of the work of an insert and of a cascade
    /// step, and a call would cost as much as the body.
    #[inline(always)]
    pub(crate) fn push<T>(&mut self, slab: &mut Slab<T>, slot: usize, index: u32, deadline: u64) {
        debug_assert_ne!(
            deadline, UNKNOWN_MIN,
            "entry {index} with deadline 0 pushed on level {} slot {slot}",
            self.level
        );
        let location = Location::Slot {
            level: self.id,
            slot: slot as u8,
        };
        self.slots[slot].push_back(slab, index, location);
        self.occupied |= 1 << slot;
        // An unknown minimum (0) stays unknown.
        self.mins[slot] = self.mins[slot].min(deadline);
    }

    /// The newest entry of `slot`: the predecessor of an entry about to be
    /// stored and pushed there with [`push_stored`](Self::push_stored).
    #[inline(always)]
    pub(crate) fn tail(&self, slot: usize) -> u32 {
        self.slots[slot].tail()
    }

    /// [`push`](Self::push) of an entry stored with its links already set:
    /// `prev` the slot's [`tail`](Self::tail) (passed again here), `next`
    /// `NIL`, and its location this level and `slot`.
    #[inline(always)]
    pub(crate) fn push_stored<T>(
        &mut self,
        slab: &mut Slab<T>,
        slot: usize,
        index: u32,
        prev: u32,
        deadline: u64,
    ) {
        debug_assert_ne!(deadline, UNKNOWN_MIN, "entry {index} with deadline 0");
        self.slots[slot].push_back_stored(slab, index, prev);
        self.occupied |= 1 << slot;
        self.mins[slot] = self.mins[slot].min(deadline);
    }

    /// Unlinks entry `index`, whose deadline is `deadline`, from `slot`.
    /// Returns true when that left the whole level empty.
    #[inline]
    pub(crate) fn remove<T>(
        &mut self,
        slab: &mut Slab<T>,
        slot: usize,
        index: u32,
        deadline: u64,
    ) -> bool {
        if self.slots[slot].remove(slab, index) {
            self.occupied &= !(1 << slot);
            self.mins[slot] = EMPTY_MIN;
            return self.occupied == 0;
        }
        if deadline == self.mins[slot] {
            self.mins[slot] = UNKNOWN_MIN;
        }
        false
    }

    /// Empties `slot` and returns its entries, still linked, in FIFO order,
    /// for a [`drain`](List::drain).
    #[inline]
    pub(crate) fn take_slot<T>(&mut self, slab: &mut Slab<T>, slot: usize) -> List {
        self.occupied &= !(1 << slot);
        self.mins[slot] = EMPTY_MIN;
        self.slots[slot].take(slab)
    }

    /// Empties `slot`, whose entries the caller frees without a walk.
    #[inline]
    pub(crate) fn clear_slot(&mut self, slot: usize) {
        self.occupied &= !(1 << slot);
        self.mins[slot] = EMPTY_MIN;
        self.slots[slot] = List::EMPTY;
    }
}

/// Ticks spanned by one slot of `level`.
#[inline]
pub(crate) const fn slot_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * level)
}

/// Ticks spanned by the whole of `level`.
#[inline]
pub(crate) const fn level_range(level: usize) -> u64 {
    slot_range(level + 1)
}

/// The slot of `level` that holds tick `when`: its base-64 digit number
/// `level`.
#[inline]
pub(crate) const fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (SLOT_BITS as usize * level)) & SLOT_MASK) as usize
}

/// How many slots past `from` (0 to 63, wrapping) the first set bit of
/// `occupied` is, or `None` if no bit is set.
#[inline]
pub(crate) fn slots_until_occupied(occupied: u64, from: usize) -> Option<u32> {
    if occupied == 0 {
        return None;
    }
    Some(occupied.rotate_right(from as u32).trailing_zeros())
}

/// The first tick of the slot of `level` that is `distance` slots after the
/// slot of `elapsed`. Counting whole slots forward from `elapsed` (rather
/// than placing the slot number inside the current level range) is what
/// makes a slot that wrapped past 63 land in the next range.
#[inline]
pub(crate) const fn slot_start(elapsed: u64, level: usize, distance: u32) -> u64 {
    let width = slot_range(level);
    (elapsed & !(width - 1)) + distance as u64 * width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_range_is_a_power_of_64() {
        assert_eq!(slot_range(0), 1);
        assert_eq!(slot_range(1), 64);
        assert_eq!(slot_range(2), 4096);
        assert_eq!(slot_range(6), 1 << 36);
    }

    #[test]
    fn level_range_is_64_slots() {
        for level in 0..7 {
            assert_eq!(level_range(level), 64 * slot_range(level));
        }
        assert_eq!(level_range(6), 1 << 42);
    }

    #[test]
    fn slot_for_takes_the_level_digit() {
        assert_eq!(slot_for(0, 0), 0);
        assert_eq!(slot_for(63, 0), 63);
        assert_eq!(slot_for(64, 0), 0);
        assert_eq!(slot_for(64, 1), 1);
        assert_eq!(slot_for(4095, 1), 63);
        assert_eq!(slot_for(4096, 1), 0);
        assert_eq!(slot_for(4096, 2), 1);
        assert_eq!(slot_for(5 << 36, 6), 5);
        assert_eq!(slot_for(64 << 36, 6), 0);
    }

    #[test]
    fn slots_until_occupied_wraps() {
        assert_eq!(slots_until_occupied(0, 5), None);
        assert_eq!(slots_until_occupied(1 << 7, 5), Some(2));
        assert_eq!(slots_until_occupied(1 << 5, 5), Some(0));
        // Slot 1 seen from slot 62: 62 -> 63 -> 0 -> 1.
        assert_eq!(slots_until_occupied(1 << 1, 62), Some(3));
        // The nearest of several.
        assert_eq!(slots_until_occupied(1 << 2 | 1 << 40, 30), Some(10));
    }

    #[test]
    fn slot_start_counts_whole_slots_forward() {
        assert_eq!(slot_start(10, 0, 3), 13);
        assert_eq!(slot_start(100, 1, 1), 128);
        // Wrapping at level 1: elapsed in slot 63 of its range, target 2 slots on.
        assert_eq!(slot_start(4095, 1, 2), 4096 + 64);
        // Top level wrap.
        assert_eq!(slot_start((1 << 42) - 1, 6, 1), 1 << 42);
    }

    #[test]
    fn level_tracks_occupancy_and_next_expiration() {
        use super::super::entry::Entry;
        let mut slab = Slab::new();
        let a = slab.insert(Entry::new(200, 0, ())).index();
        let b = slab.insert(Entry::new(210, 1, ())).index();
        let mut level = Level::new(1);
        assert_eq!(level.next_expiration(0), None);
        assert_eq!(level.slot_min(3), None);
        level.push(&mut slab, 3, a, 200);
        level.push(&mut slab, 3, b, 210);
        assert_eq!(level.slot_min(3), Some(200));
        assert_eq!(
            slab.entry(a).location,
            Location::Slot {
                level: LevelId::L1,
                slot: 3
            }
        );
        assert_eq!(
            level.next_expiration(70),
            Some(Expiration {
                level: 1,
                slot: 3,
                tick: 192
            })
        );
        assert!(!level.remove(&mut slab, 3, a, 200));
        assert_eq!(level.next_expiration(70).map(|e| e.slot), Some(3));
        // The earliest entry left: its successor's deadline is not tracked.
        assert_eq!(level.slot_min(3), None);
        let taken = level.take_slot(&mut slab, 3);
        assert_eq!(taken.head(), b);
        assert_eq!(level.next_expiration(70), None);
    }
}

#[cfg(test)]
mod slot_min_tests {
    use super::super::entry::Entry;
    use super::*;

    #[test]
    fn slot_min_survives_cancelling_a_later_entry_and_resets_when_empty() {
        let mut slab = Slab::new();
        let mut level = Level::new(0);
        let ids: Vec<u32> = [30, 10, 20]
            .into_iter()
            .map(|d| {
                let i = slab.insert(Entry::new(d, d, ())).index();
                level.push(&mut slab, 5, i, d);
                i
            })
            .collect();
        assert_eq!(level.slot_min(5), Some(10));
        assert!(!level.remove(&mut slab, 5, ids[0], 30));
        assert_eq!(level.slot_min(5), Some(10));
        level.remove(&mut slab, 5, ids[1], 10);
        assert_eq!(level.slot_min(5), None, "unknown after the min left");
        let i = slab.insert(Entry::new(5, 5, ())).index();
        level.push(&mut slab, 5, i, 5);
        assert_eq!(level.slot_min(5), None, "stays unknown");
        level.take_slot(&mut slab, 5);
        assert_eq!(level.slot_min(5), None);
        level.push(&mut slab, 5, ids[2], 20);
        assert_eq!(level.slot_min(5), Some(20), "known again once emptied");
    }
}
