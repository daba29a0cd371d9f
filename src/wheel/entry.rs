//! One timer as the wheel stores it: its deadline, its payload, and the links
//! that chain it into at most one list (a slot or an overflow
//! list).

use super::list::NIL;
use super::NUM_LEVELS;

/// A level's number as an entry's [`Location`] records it. An enum rather
/// than a `u8`: the compiler then knows it is below `NUM_LEVELS`, and a
/// cancel indexes the levels with it without a bounds check (the unused
/// values also give `Location` and the slab's vacant slots their tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LevelId {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
}

impl LevelId {
    /// Every level, finest first: `ALL[l]` is level `l`.
    pub(crate) const ALL: [LevelId; NUM_LEVELS] = [
        LevelId::L0,
        LevelId::L1,
        LevelId::L2,
        LevelId::L3,
        LevelId::L4,
        LevelId::L5,
        LevelId::L6,
    ];

    /// The level's number.
    #[inline(always)]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// Which list an entry is linked into.
///
/// Cancelling needs it: an entry is removed from its list in O(1) through its
/// `prev`/`next` links, but the list's head, tail and (for a slot) the
/// level's occupancy bit live outside the entry, so the entry must say which
/// list owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// A slot of a wheel level.
    Slot {
        /// The level, 0 the finest.
        level: LevelId,
        /// The slot within the level.
        slot: u8,
    },
    /// The due queue: the tick of the deadline has been reached. Not linked
    /// into a list; the queue holds a copy of its key.
    Due,
    /// The wheel's `ahead` queue: a whole level-1 or level-2 slot was sorted
    /// into it when the wheel reached the slot. Not linked into a list; the
    /// queue holds a copy of its key.
    Ahead,
    /// The overflow list of finite deadlines beyond the top level's reach.
    Far,
    /// The overflow list of `NEVER` deadlines.
    Never,
}

/// A live timer.
///
/// Kept small on purpose (40 bytes with a `u64` payload, see the test below):
/// a loop may hold a million of them, and the wheel walks them when it
/// cascades a slot.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    /// The exact deadline in CLOCK_MONOTONIC nanoseconds. The wheel places the
    /// entry by its tick, but the never-early check and the firing order use
    /// this exact value.
    pub(crate) deadline: u64,

    /// Insertion number, unique per wheel. Breaks ties between equal
    /// deadlines so they fire in insertion order, whatever path (cascade,
    /// overflow, straight to the due queue) each entry took.
    pub(crate) seq: u64,

    /// The caller's payload, handed back when the timer fires or is cancelled.
    pub(crate) value: T,

    /// Previous entry in the same list, or `NIL`. Makes removal O(1).
    pub(crate) prev: u32,

    /// Next entry in the same list, or `NIL`. Lists are FIFO: new entries go
    /// to the tail.
    pub(crate) next: u32,

    /// Generation of the slab slot this entry occupies. A key is valid only
    /// while its generation matches, which makes stale keys inert.
    pub(crate) generation: u32,

    /// Where the entry is queued; see [`Location`].
    pub(crate) location: Location,
}

impl<T> Entry<T> {
    /// A fresh, unlinked entry. The slab fills in `generation`, the wheel
    /// `location` (via the list it pushes the entry on).
    pub(crate) fn new(deadline: u64, seq: u64, value: T) -> Self {
        Entry {
            deadline,
            seq,
            value,
            prev: NIL,
            next: NIL,
            generation: 0,
            location: Location::Due,
        }
    }

    /// A fresh entry linked after `prev` at `location`, for a list's tail.
    #[inline(always)]
    pub(crate) fn linked(deadline: u64, seq: u64, value: T, prev: u32, location: Location) -> Self {
        Entry {
            deadline,
            seq,
            value,
            prev,
            next: NIL,
            generation: 0,
            location,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_small() {
        // 8 deadline + 8 seq + 8 payload + 3 * 4 links/generation + location.
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 40);
        // The level byte holds the tag of the other variants.
        assert_eq!(std::mem::size_of::<Location>(), 2);
    }
}
