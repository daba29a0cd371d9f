//! The due queue: entries whose tick the wheel has reached, in firing order.
//!
//! Every entry with a tick at or before the wheel's current tick is here,
//! sorted by (deadline, insertion). That holds the expired entries that a
//! bounded `advance` left behind, past deadlines inserted late, and the
//! entries of the current, partly elapsed tick: those are not due yet, but
//! keeping them sorted here means each `advance` inside the tick pops them in
//! exact deadline order instead of rescanning a slot.
//!
//! A sorted `Vec` of (deadline, index, generation) with a read cursor, rather than a
//! linked list: entries reach it a whole slot at a time, and a slot's tick
//! is later than every tick already here, so a slot is appended (and sorted
//! in place when its entries arrived out of order) instead of linked entry
//! by entry, and popping is a read at the cursor.
//!
//! A cancel does not search the queue: the wheel frees the slab slot and the
//! queue's copy of the key turns into a tombstone, recognised because the
//! slab no longer holds an entry of that generation at that index (freeing a
//! slot bumps its generation, and a slot out of generations retires instead
//! of wrapping around: see `slab`). Tombstones are skipped at the cursor,
//! which is always left on a live entry so the head deadline is exact, and
//! compacted away once they are the majority.
//!
//! Keys are 16 bytes and sort by deadline alone; only entries with equal
//! deadlines (rare outside `call_at` with one `when`) look up their
//! insertion numbers in the slab to keep FIFO order. A dense tick (asyncio's
//! usual hundreds of timers per millisecond) is a run sorted in one go, so a
//! small key is most of the cost of expiring it.

use super::slab::Slab;
use super::sort::{sort_into, sort_run, Bounds, Scratch, SCRATCH_KEEP};

/// A sort key and slab index of a due entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DueKey {
    /// The exact deadline; what keys sort by.
    pub(crate) deadline: u64,
    /// Where the entry lives.
    pub(crate) index: u32,
    /// The slot's generation when the entry was queued: tells a live entry
    /// from a tombstone.
    pub(crate) generation: u32,
}

const _: () = assert!(std::mem::size_of::<DueKey>() == 16);

/// Whether the entry of `a` fires before the one of `b`: earlier deadline,
/// or the same one and inserted first.
#[inline]
pub(crate) fn fires_before<T>(a: &DueKey, b: &DueKey, slab: &Slab<T>) -> bool {
    a.deadline < b.deadline
        || (a.deadline == b.deadline && slab.entry(a.index).seq < slab.entry(b.index).seq)
}

/// Tombstones tolerated before a compaction is considered; below this a
/// compaction would cost more than skipping them.
const COMPACT_MIN: usize = 32;

/// Entries whose tick has been reached, in firing order.
#[derive(Debug, Default)]
pub(crate) struct DueQueue {
    /// Keys ascending from `head`; the ones before `head` were popped.
    keys: Vec<DueKey>,
    /// The next key to pop. `keys[head]` is always a live entry (or
    /// `head == keys.len()`), so `first_deadline` is exact.
    head: usize,
    /// Tombstones (cancelled entries) in `keys[head..]`.
    dead: usize,
    /// Memory for sorting runs.
    scratch: Scratch,
    /// Memory kept for the keys of the next run, which the caller gathers
    /// in arrival order (see [`take_gathered`](Self::take_gathered)) and
    /// [`append_gathered`](Self::append_gathered) sorts straight into
    /// `keys`.
    gathered: Vec<DueKey>,
}

impl DueQueue {
    /// Bytes held for keys (queued, gathered or sort scratch).
    pub(crate) fn allocated_bytes(&self) -> usize {
        (self.keys.capacity() + self.gathered.capacity()) * std::mem::size_of::<DueKey>()
            + self.scratch.allocated_bytes()
    }

    /// Deadline of the first entry: the earliest due in the whole wheel.
    #[inline]
    pub(crate) fn first_deadline(&self) -> Option<u64> {
        self.keys.get(self.head).map(|key| key.deadline)
    }

    /// True when no live entry is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.keys.len()
    }

    /// The first key, live: tombstones before it are passed first. For
    /// merging two queues in the middle of a batch of
    /// [`take_due`](Self::take_due)s, which may leave `head` on a tombstone.
    #[inline]
    pub(crate) fn first_live<T>(&mut self, slab: &Slab<T>) -> Option<DueKey> {
        self.skip_dead(slab);
        self.keys.get(self.head).copied()
    }

    /// Deadline of the last key queued (live or not): every key queued sorts
    /// at or before it.
    #[inline]
    pub(crate) fn last_deadline(&self) -> Option<u64> {
        self.keys[self.head..].last().map(|key| key.deadline)
    }

    /// Whether the first entry is due at `now`.
    #[inline]
    pub(crate) fn head_due(&self, now: u64) -> bool {
        self.keys
            .get(self.head)
            .is_some_and(|key| key.deadline <= now)
    }

    /// Pops the first entry if its deadline is at or before `now`, and
    /// returns its slab index. The entry is still in the slab.
    #[inline]
    #[cfg(test)]
    pub(crate) fn pop_due<T>(&mut self, slab: &Slab<T>, now: u64) -> Option<u32> {
        let index = self.take_due(slab, now);
        self.settle(slab);
        index
    }

    /// [`pop_due`](Self::pop_due) for a batch: pops the first live entry if
    /// it is due, skipping tombstones before it rather than after, so the
    /// entry just checked is the one returned (its slab line is then warm for
    /// the caller). Leaves `head` possibly on a tombstone: end the batch with
    /// [`settle`](Self::settle).
    #[inline]
    pub(crate) fn take_due<T>(&mut self, slab: &Slab<T>, now: u64) -> Option<u32> {
        while let Some(key) = self.keys.get(self.head) {
            if key.deadline > now {
                return None;
            }
            self.head += 1;
            if self.is_live(slab, key) {
                return Some(key.index);
            }
            self.dead = self.dead.saturating_sub(1);
        }
        None
    }

    /// Whether the key after the first (live or not) is due at `now`.
    #[inline]
    pub(crate) fn second_due(&self, now: u64) -> bool {
        self.keys
            .get(self.head + 1)
            .is_some_and(|key| key.deadline <= now)
    }

    /// Pops the first entry if its deadline is at or before `now`, and
    /// returns its slab index (the entry is still in the slab). One
    /// [`fire_due`](Self::fire_due) step without the set-up of its loop,
    /// for the usual advance of a sparse wheel: one timer. The first key is
    /// live (see `head`), so it is not looked up.
    #[inline(always)]
    pub(crate) fn pop_first_due<T>(&mut self, slab: &Slab<T>, now: u64) -> Option<u32> {
        let key = *self.keys.get(self.head)?;
        if key.deadline > now {
            return None;
        }
        debug_assert!(
            slab.holds(key.index, key.generation, key.deadline),
            "first key {key:?} is a tombstone"
        );
        self.head += 1;
        self.settle(slab);
        Some(key.index)
    }

    /// Pops every live entry due at `now`, up to `max`, handing each
    /// index to `fire`, which must free it from the slab; returns how many.
    /// [`take_due`](Self::take_due) in a loop, with the cursor and the
    /// tombstone count in registers: the stores `fire` makes (into the slab
    /// and the caller's vector) would otherwise have them reloaded for every
    /// entry. Leaves `head` on a live entry, as [`settle`](Self::settle).
    #[inline(always)]
    pub(crate) fn fire_due<T>(
        &mut self,
        slab: &mut Slab<T>,
        now: u64,
        max: usize,
        mut fire: impl FnMut(&mut Slab<T>, u32),
    ) -> usize {
        let keys: &[DueKey] = &self.keys;
        let mut head = self.head;
        let mut dead = self.dead;
        let mut fired = 0;
        while fired < max {
            let Some(&key) = keys.get(head) else {
                break;
            };
            if key.deadline > now {
                break;
            }
            head += 1;
            // With no tombstone counted, every key is live (see `is_live`).
            if dead != 0 && !slab.holds(key.index, key.generation, key.deadline) {
                dead -= 1;
                continue;
            }
            fire(slab, key.index);
            fired += 1;
        }
        self.head = head;
        self.dead = dead;
        self.settle(slab);
        fired
    }

    /// Whether `key` names a live entry rather than a tombstone. Every
    /// tombstone was counted in `dead` when its entry was cancelled, and
    /// `dead` only drops when one is passed or compacted away, so with
    /// `dead` at 0 every queued key is live and the slab need not be read.
    #[inline(always)]
    fn is_live<T>(&self, slab: &Slab<T>, key: &DueKey) -> bool {
        let live = self.dead == 0 || slab.holds(key.index, key.generation, key.deadline);
        debug_assert!(
            !live || slab.holds(key.index, key.generation, key.deadline),
            "{key:?} is a tombstone yet no tombstone is counted"
        );
        live
    }

    /// Restores the invariant that `head` is on a live entry (so
    /// `first_deadline` is exact) after [`take_due`](Self::take_due)s.
    #[inline]
    pub(crate) fn settle<T>(&mut self, slab: &Slab<T>) {
        if self.dead == 0 && self.head < self.keys.len() {
            // No tombstone: the head is live.
            return;
        }
        self.skip_dead(slab);
    }

    /// The position the next [`push`](Self::push)ed run starts at.
    #[inline]
    pub(crate) fn run_start(&self) -> usize {
        self.keys.len()
    }

    /// Appends a key of a run (the entries of one slot, or of the tick a
    /// cascade starts at). Every key of a run must sort after every key
    /// already queued: a run's tick is later than theirs. End the run with
    /// [`end_run`](Self::end_run).
    #[inline]
    pub(crate) fn push(&mut self, key: DueKey) {
        self.keys.push(key);
    }

    /// Puts the run pushed since `start` in order. Entries of one tick
    /// mostly arrive in order (one entry, or deadlines in insertion order),
    /// so this is usually one pass.
    #[inline]
    pub(crate) fn end_run<T>(&mut self, start: usize, slab: &Slab<T>) {
        // A sparse tick's run is one key: in order, without a call.
        if self.keys.len() - start <= 1 {
            return;
        }
        sort_run(&mut self.keys[start..], &mut self.scratch, |index| {
            slab.entry(index).seq
        });
        debug_assert!(
            start == 0
                || start == self.keys.len()
                || self.keys[start - 1].deadline <= self.keys[start].deadline,
            "run at {start} sorts before the queued keys"
        );
    }

    /// An empty vector to gather the keys of the next run into, for
    /// [`append_gathered`](Self::append_gathered): the same contract as
    /// [`push`](Self::push). Gathering apart and sorting into place saves
    /// `end_run`'s copy back: for a large run (a whole slot of a higher
    /// level) that copy is a good part of the sort.
    #[inline]
    pub(crate) fn take_gathered(&mut self) -> Vec<DueKey> {
        std::mem::take(&mut self.gathered)
    }

    /// Appends the keys of `gathered` (from
    /// [`take_gathered`](Self::take_gathered)), sorted; `bounds` hold every
    /// deadline among them (the range of the slot they came from: the sort
    /// needs a range, and would otherwise read every key once more).
    pub(crate) fn append_gathered<T>(
        &mut self,
        gathered: Vec<DueKey>,
        slab: &Slab<T>,
        bounds: Bounds,
    ) {
        self.gathered = gathered;
        let start = self.keys.len();
        self.keys
            .resize(start + self.gathered.len(), DueKey::default());
        sort_into(
            &self.gathered,
            bounds,
            &mut self.keys[start..],
            &mut self.scratch,
            |index| slab.entry(index).seq,
        );
        debug_assert!(
            start == 0
                || start == self.keys.len()
                || self.keys[start - 1].deadline < self.keys[start].deadline,
            "gathered run at {start} sorts before the queued keys"
        );
        self.gathered.clear();
        if self.gathered.capacity() > SCRATCH_KEEP {
            self.gathered = Vec::new();
        }
    }

    /// Queues one entry at its place (an insert whose tick is already
    /// reached). The keys after it are only entries of ticks up to the
    /// current one, few unless a bounded `advance` left many behind.
    pub(crate) fn insert(&mut self, key: DueKey) {
        // The new entry has the highest insertion number: it goes after
        // every queued key with its deadline or an earlier one. Tombstones
        // compare by deadline only (their slab entry is gone), which keeps
        // the live keys in order.
        match self.keys.last() {
            Some(last) if last.deadline > key.deadline => {
                let at = self.head
                    + self.keys[self.head..].partition_point(|k| k.deadline <= key.deadline);
                self.keys.insert(at, key);
            }
            _ => self.keys.push(key),
        }
    }

    /// Notes that a queued entry was cancelled; its slab slot must already
    /// be freed.
    #[inline]
    pub(crate) fn cancelled<T>(&mut self, slab: &Slab<T>) {
        self.dead += 1;
        self.skip_dead(slab);
        let queued = self.keys.len() - self.head;
        if self.dead > COMPACT_MIN && self.dead * 2 > queued {
            self.compact(slab);
        }
    }

    /// Moves `head` past tombstones, and empties the vector once everything
    /// in it was popped, so it does not grow.
    #[inline]
    fn skip_dead<T>(&mut self, slab: &Slab<T>) {
        while let Some(key) = self.keys.get(self.head) {
            if self.is_live(slab, key) {
                return;
            }
            self.head += 1;
            self.dead = self.dead.saturating_sub(1);
        }
        debug_assert_eq!(self.dead, 0, "tombstones counted past the end");
        self.keys.clear();
        self.head = 0;
    }

    /// Drops the popped keys and every tombstone.
    #[cold]
    fn compact<T>(&mut self, slab: &Slab<T>) {
        self.keys.drain(..self.head);
        self.keys
            .retain(|key| slab.holds(key.index, key.generation, key.deadline));
        self.head = 0;
        self.dead = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::Entry;
    use super::*;

    fn add(slab: &mut Slab<u64>, deadline: u64, seq: u64) -> DueKey {
        let key = slab.insert(Entry::new(deadline, seq, seq));
        DueKey {
            deadline,
            index: key.index(),
            generation: key.generation(),
        }
    }

    fn run(due: &mut DueQueue, slab: &Slab<u64>, keys: &[DueKey]) {
        let start = due.run_start();
        for &key in keys {
            due.push(key);
        }
        due.end_run(start, slab);
    }

    fn drain_all(due: &mut DueQueue, slab: &mut Slab<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(i) = due.pop_due(slab, u64::MAX) {
            out.push(slab.remove(i).value);
        }
        out
    }

    #[test]
    fn runs_are_appended_and_sorted() {
        let mut slab = Slab::new();
        let mut due = DueQueue::default();
        let first = [add(&mut slab, 1, 0), add(&mut slab, 2, 1)];
        run(&mut due, &slab, &first);
        let second = [
            add(&mut slab, 5, 2),
            add(&mut slab, 3, 3),
            add(&mut slab, 3, 4),
        ];
        run(&mut due, &slab, &second);
        assert_eq!(drain_all(&mut due, &mut slab), [0, 1, 3, 4, 2]);
        assert_eq!(due.first_deadline(), None);
    }

    #[test]
    fn insert_finds_its_place() {
        let mut slab = Slab::new();
        let mut due = DueQueue::default();
        let keys = [
            add(&mut slab, 10, 0),
            add(&mut slab, 20, 1),
            add(&mut slab, 30, 2),
        ];
        run(&mut due, &slab, &keys);
        for key in [
            add(&mut slab, 5, 3),
            add(&mut slab, 20, 4),
            add(&mut slab, 25, 5),
            add(&mut slab, 40, 6),
        ] {
            due.insert(key);
        }
        assert_eq!(drain_all(&mut due, &mut slab), [3, 0, 1, 4, 5, 2, 6]);
    }

    #[test]
    fn pop_due_never_returns_a_future_entry() {
        let mut slab = Slab::new();
        let mut due = DueQueue::default();
        let keys = [add(&mut slab, 10, 0), add(&mut slab, 11, 1)];
        run(&mut due, &slab, &keys);
        assert_eq!(due.first_deadline(), Some(10));
        assert_eq!(due.pop_due(&slab, 9), None);
        assert_eq!(due.pop_due(&slab, 10), Some(keys[0].index));
        slab.remove(keys[0].index);
        assert_eq!(due.pop_due(&slab, 10), None);
        slab.remove(keys[1].index);
        due.cancelled(&slab);
        assert_eq!(due.first_deadline(), None);
    }

    #[test]
    fn cancelled_entries_are_skipped_even_when_their_slot_is_reused() {
        let mut slab = Slab::new();
        let mut due = DueQueue::default();
        let keys: Vec<DueKey> = (0..4).map(|s| add(&mut slab, 10 + s, s)).collect();
        run(&mut due, &slab, &keys);
        // Cancel the head and a middle entry.
        for k in [keys[0], keys[2]] {
            slab.remove(k.index);
            due.cancelled(&slab);
        }
        assert_eq!(due.first_deadline(), Some(11));
        // The freed slot of keys[2] now holds a live entry that is not queued.
        let reuse = add(&mut slab, 99, 99);
        assert_eq!(reuse.index, keys[2].index);
        assert_eq!(due.pop_due(&slab, u64::MAX), Some(keys[1].index));
        slab.remove(keys[1].index);
        assert_eq!(due.first_deadline(), Some(13));
        assert_eq!(due.pop_due(&slab, u64::MAX), Some(keys[3].index));
        assert_eq!(due.pop_due(&slab, u64::MAX), None);
    }

    #[test]
    fn tombstones_are_compacted() {
        let mut slab = Slab::new();
        let mut due = DueQueue::default();
        let keys: Vec<DueKey> = (0..1000).map(|s| add(&mut slab, 10 + s, s)).collect();
        run(&mut due, &slab, &keys);
        // Cancel all but the first and last: the head stays live, so only
        // compaction bounds the tombstones.
        for k in &keys[1..999] {
            slab.remove(k.index);
            due.cancelled(&slab);
            assert!(due.dead <= COMPACT_MIN.max(due.keys.len() / 2));
        }
        assert!(due.keys.len() <= 2 * COMPACT_MIN + 2, "{}", due.keys.len());
        assert_eq!(drain_all(&mut due, &mut slab), [0, 999]);
    }
}
