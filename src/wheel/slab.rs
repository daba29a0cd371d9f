//! Storage of the entries, and the keys that name them.
//!
//! A `Vec` of slots with an intrusive free list: inserting reuses the most
//! recently freed slot, removing returns the slot at once. Each slot carries a
//! generation that is bumped when the slot is freed, so a [`TimerKey`] of a
//! fired or cancelled timer never matches the timer that reuses its slot. A
//! slot whose generations have run out (2^31 - 1 timers in one slot) is
//! retired rather than wrapped: it is never reused, so no key ever matches
//! again once stale (40 bytes kept per 2^31 timers of one slot).

use super::entry::Entry;
use super::list::NIL;

/// The handle of a timer: the slab index and the generation of the slot.
///
/// `Copy` and 8 bytes, so the loop can pass it to Python as one integer
/// ([`to_u64`](Self::to_u64) / [`from_u64`](Self::from_u64)). Any `u64` is
/// accepted back: a key that does not name a live timer is simply not found.
/// Generations start at 1, skip 0 and stay below 2^31, so `0` never names a
/// timer and a key's top bit is always clear (the Python loop keeps a flag
/// of its own there, beside the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerKey {
    /// Index of the slot in the slab.
    index: u32,
    /// Generation the slot had when the timer was inserted.
    generation: u32,
}

impl TimerKey {
    /// The key of the entry at `index` with `generation`.
    #[inline]
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        TimerKey { index, generation }
    }

    /// Packs the key into one integer: generation in the high half, index in
    /// the low half.
    #[inline]
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The inverse of [`to_u64`](Self::to_u64). Never fails; a garbage value
    /// gives a key that matches no timer.
    #[inline]
    pub fn from_u64(raw: u64) -> Self {
        TimerKey {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }

    /// The slab index.
    #[inline]
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot generation.
    #[inline]
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// One slab slot.
#[derive(Debug)]
enum Slot<T> {
    /// Holds a live timer; its generation is in the entry.
    Occupied(Entry<T>),
    /// Free. `generation` is the one the next occupant gets; `next_free`
    /// chains the free list (`NIL` ends it).
    Vacant { generation: u32, next_free: u32 },
}

/// Bytes one slab slot takes for payload `T`: the whole per-timer memory
/// of the wheel, since lists are linked through the entries.
pub(crate) const fn slot_bytes<T>() -> usize {
    std::mem::size_of::<Slot<T>>()
}

/// Largest generation: a key's top bit stays clear (see [`TimerKey`]). A
/// slot freed at this generation gets `MAX_GENERATION + 1` and retires when
/// `insert` meets it (wrapping would let a stale key match again).
const MAX_GENERATION: u32 = (1 << 31) - 1;

/// Largest number of slots: `NIL` (`u32::MAX`) must stay unused as an index.
const MAX_SLOTS: usize = NIL as usize;

/// Entries by index, with a free list.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    /// The slots; an index never moves, so keys and list links stay valid.
    slots: Vec<Slot<T>>,
    /// Most recently freed slot, or `NIL`. LIFO reuse keeps the hot part of
    /// `slots` small and cached.
    free_head: u32,
    /// The generation a slot gets when `push` adds it: 1, and after
    /// [`release_memory`](Self::release_memory) the highest generation any
    /// dropped slot had reached, so that no key of a dropped slot matches
    /// the slot made anew at its index.
    first_generation: u32,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free_head: NIL,
            first_generation: 1,
        }
    }

    /// Makes room for `additional` more entries without reallocating,
    /// `live` of them being live now (the wheel counts them: the slab does
    /// not, which spares every insert and removal a count). A free slot out
    /// of generations still counts as free here until `insert` meets and
    /// retires it: after 2^31 reuses of one slot, an insert after a
    /// `reserve` may reallocate once (never a wrong key).
    pub(crate) fn reserve(&mut self, additional: usize, live: usize) {
        let free = self.slots.len() - live;
        self.slots.reserve(additional.saturating_sub(free));
    }

    /// Stores `entry` and returns its key.
    ///
    /// # Panics
    /// If `u32::MAX - 1` entries are already live (160 GiB of timers).
    #[inline(always)]
    pub(crate) fn insert(&mut self, mut entry: Entry<T>) -> TimerKey {
        let index = self.free_head;
        if index == NIL {
            return self.push(entry);
        }
        let slot = &mut self.slots[index as usize];
        let Slot::Vacant {
            generation,
            next_free,
        } = *slot
        else {
            unreachable!("free list head {index} is occupied");
        };
        self.free_head = next_free;
        if generation > MAX_GENERATION {
            return self.insert_past_retired(index, entry);
        }
        entry.generation = generation;
        *slot = Slot::Occupied(entry);
        TimerKey { index, generation }
    }

    /// `insert` when the free slot at `index` (already off the free list)
    /// is out of generations: it retires, vacant for good (generation 0 is
    /// never handed out), and the next free slot is taken.
    #[cold]
    #[inline(never)]
    fn insert_past_retired(&mut self, index: u32, entry: Entry<T>) -> TimerKey {
        self.slots[index as usize] = Slot::Vacant {
            generation: 0,
            next_free: NIL,
        };
        self.insert(entry)
    }

    /// `insert` when no slot is free: grows `slots`. Out of line, so the
    /// usual reuse of a freed slot stays small enough to inline.
    #[inline(never)]
    fn push(&mut self, mut entry: Entry<T>) -> TimerKey {
        assert!(
            self.slots.len() < MAX_SLOTS,
            "timer slab full ({} entries)",
            self.slots.len()
        );
        let index = self.slots.len() as u32;
        let generation = self.first_generation;
        entry.generation = generation;
        self.slots.push(Slot::Occupied(entry));
        TimerKey { index, generation }
    }

    /// Bytes held for slots, occupied or free.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * slot_bytes::<T>()
    }

    /// Drops every slot of an empty slab, giving back what its largest
    /// burst of timers took; false, nothing changed, if an entry is live or
    /// the generations would not stay apart (a retired slot, or one at the
    /// last generation). O(slots). A key of a dropped slot had a generation
    /// below that slot's next one, and every slot made anew starts at the
    /// highest of those: stale keys stay stale.
    pub(crate) fn release_memory(&mut self) -> bool {
        let mut first = self.first_generation;
        for slot in &self.slots {
            match *slot {
                Slot::Vacant { generation, .. } if generation != 0 => {
                    first = first.max(generation);
                }
                // Retired (generation 0): its old keys reach the last
                // generation. Occupied: a live entry.
                _ => return false,
            }
        }
        if first > MAX_GENERATION {
            return false;
        }
        self.first_generation = first;
        self.slots = Vec::new();
        self.free_head = NIL;
        true
    }

    /// The live entry `key` names, if any. Any key is safe here.
    #[inline]
    pub(crate) fn get(&self, key: TimerKey) -> Option<&Entry<T>> {
        match self.slots.get(key.index as usize) {
            Some(Slot::Occupied(entry)) if entry.generation == key.generation => Some(entry),
            _ => None,
        }
    }

    /// Every live entry with its key, by index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TimerKey, &Entry<T>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Occupied(entry) => {
                    Some((TimerKey::new(index as u32, entry.generation), entry))
                }
                Slot::Vacant { .. } => None,
            })
    }

    /// Whether the slot at `index` holds a live entry of `generation` due
    /// at `deadline`. Any index is safe here; a slot freed and reused since
    /// has another generation, never an old one (the deadline is compared
    /// too, a second guard costing one compare).
    #[inline]
    pub(crate) fn holds(&self, index: u32, generation: u32, deadline: u64) -> bool {
        matches!(
            self.slots.get(index as usize),
            Some(Slot::Occupied(entry)) if entry.generation == generation && entry.deadline == deadline
        )
    }

    /// The live entry at `index`. Only for indices taken from a list or a
    /// key checked by [`get`](Self::get): a vacant slot here is a wheel bug.
    ///
    /// Unchecked in release builds: this is on every step of every list
    /// walk, and the wheel's invariant (an index is in a list, or popped from
    /// the due queue as live, only while its entry is occupied; entries are
    /// unlinked before [`remove`](Self::remove)) is checked by the debug
    /// assertion under the model and API tests.
    #[inline(always)]
    pub(crate) fn entry(&self, index: u32) -> &Entry<T> {
        debug_assert!(
            matches!(self.slots.get(index as usize), Some(Slot::Occupied(_))),
            "slab index {index} is vacant or out of bounds"
        );
        // SAFETY: by the invariant above, `index` names an occupied slot of
        // `slots`, so it is in bounds and the `Vacant` arm cannot be taken.
        match unsafe { self.slots.get_unchecked(index as usize) } {
            Slot::Occupied(entry) => entry,
            // SAFETY: as above, the slot is occupied.
            Slot::Vacant { .. } => unsafe { std::hint::unreachable_unchecked() },
        }
    }

    /// Mutable form of [`entry`](Self::entry), with the same contract.
    #[inline(always)]
    pub(crate) fn entry_mut(&mut self, index: u32) -> &mut Entry<T> {
        debug_assert!(
            matches!(self.slots.get(index as usize), Some(Slot::Occupied(_))),
            "slab index {index} is vacant or out of bounds"
        );
        // SAFETY: see `entry`: `index` names an occupied slot of `slots`.
        match unsafe { self.slots.get_unchecked_mut(index as usize) } {
            Slot::Occupied(entry) => entry,
            // SAFETY: as above, the slot is occupied.
            Slot::Vacant { .. } => unsafe { std::hint::unreachable_unchecked() },
        }
    }

    /// [`remove`](Self::remove) of an entry being fired: its index was
    /// popped from a due queue as live, or taken from a slot's list. The
    /// contract of [`entry`](Self::entry), unchecked in release builds: this
    /// runs once per fired timer.
    #[inline(always)]
    pub(crate) fn remove_live(&mut self, index: u32) -> Entry<T> {
        debug_assert!(
            matches!(self.slots.get(index as usize), Some(Slot::Occupied(_))),
            "slab index {index} is vacant or out of bounds"
        );
        let vacant = Slot::Vacant {
            generation: self.entry(index).generation + 1,
            next_free: self.free_head,
        };
        // SAFETY: as in `entry`, `index` names an occupied slot of `slots`.
        let slot = unsafe { self.slots.get_unchecked_mut(index as usize) };
        let Slot::Occupied(entry) = std::mem::replace(slot, vacant) else {
            // SAFETY: as above, the slot is occupied.
            unsafe { std::hint::unreachable_unchecked() }
        };
        self.free_head = index;
        entry
    }

    /// Frees the slot at `index` and returns its entry. The caller must have
    /// unlinked the entry from its list.
    #[inline]
    pub(crate) fn remove(&mut self, index: u32) -> Entry<T> {
        let slot = &mut self.slots[index as usize];
        let generation = match slot {
            Slot::Occupied(entry) => entry.generation + 1,
            Slot::Vacant { generation, .. } => {
                unreachable!("removing vacant slab index {index} (next generation {generation})")
            }
        };
        let vacant = Slot::Vacant {
            generation,
            next_free: self.free_head,
        };
        let Slot::Occupied(entry) = std::mem::replace(slot, vacant) else {
            unreachable!("slot {index} checked occupied above");
        };
        self.free_head = index;
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline: u64) -> Entry<u64> {
        Entry::new(deadline, 0, deadline)
    }

    #[test]
    fn key_round_trips_through_u64() {
        let key = TimerKey {
            index: 7,
            generation: 0x5ead_beef,
        };
        assert_eq!(key.to_u64(), 0x5ead_beef_0000_0007);
        assert_eq!(TimerKey::from_u64(key.to_u64()), key);
        assert_eq!(TimerKey::from_u64(u64::MAX).index(), u32::MAX);
    }

    #[test]
    fn the_last_generation_keeps_the_top_bit_clear() {
        let key = TimerKey::new(u32::MAX - 1, MAX_GENERATION);
        assert_eq!(key.to_u64() >> 63, 0);
    }

    #[test]
    fn a_slot_out_of_generations_retires() {
        let mut slab = Slab::new();
        let first = slab.insert(entry(1));
        slab.remove(first.index());
        // As if the slot had held 2^31 - 2 timers since.
        slab.slots[first.index() as usize] = Slot::Vacant {
            generation: MAX_GENERATION,
            next_free: NIL,
        };
        let last = slab.insert(entry(2));
        assert_eq!(last, TimerKey::new(first.index(), MAX_GENERATION));
        slab.remove(last.index());
        // Every key the slot ever had stays stale: it is never reused.
        let next = slab.insert(entry(3));
        assert_ne!(next.index(), first.index());
        assert_eq!(next.generation(), 1);
        for generation in [0, 1, 2, MAX_GENERATION - 1, MAX_GENERATION] {
            assert!(slab.get(TimerKey::new(first.index(), generation)).is_none());
        }
        assert!(!slab.holds(first.index(), 1, 1));
        assert_eq!(slab.iter().count(), 1);
        slab.remove(next.index());
        assert_eq!(slab.insert(entry(4)).index(), next.index());
    }

    #[test]
    fn slot_size_with_u64_payload() {
        // The vacant variant hides in the niche of `Location`: no tag word.
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 40);
        assert_eq!(slot_bytes::<u64>(), 40);
        assert_eq!(slot_bytes::<()>(), 32);
    }

    #[test]
    fn freed_slot_is_reused_with_a_new_generation() {
        let mut slab = Slab::new();
        let a = slab.insert(entry(1));
        assert_eq!(a.generation(), 1);
        assert_eq!(slab.get(a).map(|e| e.value), Some(1));
        assert_eq!(slab.remove(a.index()).value, 1);
        assert!(slab.get(a).is_none());
        let b = slab.insert(entry(2));
        assert_eq!(b.index(), a.index());
        assert_eq!(b.generation(), 2);
        assert!(slab.get(a).is_none());
        assert_eq!(slab.get(b).map(|e| e.value), Some(2));
        assert_eq!(slab.iter().count(), 1);
    }

    #[test]
    fn iter_yields_the_live_entries_with_their_keys() {
        let mut slab = Slab::new();
        let a = slab.insert(entry(1));
        let b = slab.insert(entry(2));
        let c = slab.insert(entry(3));
        slab.remove(b.index());
        let d = slab.insert(entry(4)); // reuses b's slot, a new generation
        let live: Vec<(TimerKey, u64)> = slab.iter().map(|(k, e)| (k, e.value)).collect();
        assert_eq!(live, [(a, 1), (d, 4), (c, 3)]);
        assert!(slab.get(d).is_some() && slab.get(b).is_none());
    }

    #[test]
    fn garbage_keys_find_nothing() {
        let mut slab = Slab::new();
        slab.insert(entry(1));
        for raw in [0, u64::MAX, 1 << 32 | 5, 0xffff_ffff] {
            assert!(slab.get(TimerKey::from_u64(raw)).is_none(), "key {raw:#x}");
        }
    }
}
