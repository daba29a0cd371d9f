//! The due list: entries whose tick the wheel has reached, in firing order.
//!
//! Every entry with a tick at or before the wheel's current tick lives here,
//! sorted by (deadline, insertion). That holds the expired entries that a
//! bounded `advance` left behind, past deadlines inserted late, and the
//! entries of the current, partly elapsed tick: those are not due yet, but
//! keeping them sorted here means each `advance` inside the tick pops them in
//! exact deadline order instead of rescanning a slot.

use super::entry::Location;
use super::list::{Drain, List, NIL};
use super::slab::Slab;

/// A sort key and slab index of an entry on its way into the due list.
pub(crate) type Pending = (u64, u64, u32);

/// Backward steps [`DueList::link_run`] may take per slot before it hands
/// the rest of the slot over to sort and merge.
const WALK_BUDGET: u32 = 64;

/// Sorted list of entries whose tick has been reached.
#[derive(Debug, Default)]
pub(crate) struct DueList {
    /// The entries, ascending by `Entry::order_key`.
    list: List,
}

impl DueList {
    /// Deadline of the first entry: the earliest in the whole wheel.
    #[inline]
    pub(crate) fn first_deadline<T>(&self, slab: &Slab<T>) -> Option<u64> {
        match self.list.head() {
            NIL => None,
            head => Some(slab.entry(head).deadline),
        }
    }

    /// Unlinks and returns the first entry if its deadline is at or before
    /// `now`.
    #[inline]
    pub(crate) fn pop_due<T>(&mut self, slab: &mut Slab<T>, now: u64) -> Option<u32> {
        let head = self.list.head();
        if head == NIL || slab.entry(head).deadline > now {
            return None;
        }
        self.list.pop_front(slab);
        Some(head)
    }

    /// Links the entries of a level-0 slot (one tick, in arrival order) at
    /// their places, each searched backwards from the tail. A slot already in
    /// firing order after everything here (the usual case: a later tick, one
    /// entry or FIFO-ordered deadlines) costs one comparison per entry; a
    /// tick holding a few out-of-order deadlines costs a few steps more,
    /// which is cheaper than collecting, sorting and merging them.
    ///
    /// The backward steps are capped at [`WALK_BUDGET`] per slot, so a long
    /// scrambled slot is not sorted by quadratic insertion: past the cap, the
    /// entry at hand and the rest of the slot are handed back for
    /// [`merge`](Self::merge).
    pub(crate) fn link_run<T>(&mut self, slab: &mut Slab<T>, run: List) -> Option<(u32, Drain)> {
        let mut budget = WALK_BUDGET;
        let mut last = match self.list.tail() {
            NIL => (0, 0),
            tail => slab.entry(tail).order_key(),
        };
        let mut drain = run.drain();
        while let Some(index) = drain.next(slab) {
            let key = slab.entry(index).order_key();
            if key > last {
                last = key;
                self.list.push_back(slab, index, Location::Due);
                continue;
            }
            let mut cursor = self.list.tail();
            while cursor != NIL && slab.entry(cursor).order_key() > key {
                if budget == 0 {
                    return Some((index, drain));
                }
                budget -= 1;
                cursor = slab.entry(cursor).prev;
            }
            self.list.insert_after(slab, cursor, index, Location::Due);
        }
        None
    }

    /// Unlinks entry `index` (a cancel).
    #[inline]
    pub(crate) fn remove<T>(&mut self, slab: &mut Slab<T>, index: u32) {
        self.list.remove(slab, index);
    }

    /// Links the entries of `batch`, which must be sorted ascending, at their
    /// places. Walks back from the tail, so a batch that sorts after
    /// everything already here (the usual case: a later tick) costs O(batch).
    pub(crate) fn merge<T>(&mut self, slab: &mut Slab<T>, batch: &[Pending]) {
        debug_assert!(batch.is_sorted(), "due batch not sorted: {batch:?}");
        let mut cursor = self.list.tail();
        for &(deadline, seq, index) in batch.iter().rev() {
            while cursor != NIL && slab.entry(cursor).order_key() > (deadline, seq) {
                cursor = slab.entry(cursor).prev;
            }
            self.list.insert_after(slab, cursor, index, Location::Due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::Entry;
    use super::*;

    fn add(slab: &mut Slab<u64>, deadline: u64, seq: u64) -> Pending {
        let index = slab.insert(Entry::new(deadline, seq, seq)).index();
        (deadline, seq, index)
    }

    fn drain_all(due: &mut DueList, slab: &mut Slab<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(i) = due.pop_due(slab, u64::MAX) {
            out.push(slab.remove(i).value);
        }
        out
    }

    #[test]
    fn merge_appends_a_later_batch() {
        let mut slab = Slab::new();
        let mut due = DueList::default();
        let first = [add(&mut slab, 1, 0), add(&mut slab, 2, 1)];
        due.merge(&mut slab, &first);
        let second = [add(&mut slab, 3, 2), add(&mut slab, 3, 3)];
        due.merge(&mut slab, &second);
        assert_eq!(drain_all(&mut due, &mut slab), [0, 1, 2, 3]);
    }

    #[test]
    fn merge_interleaves_by_deadline_then_seq() {
        let mut slab = Slab::new();
        let mut due = DueList::default();
        let first = [
            add(&mut slab, 10, 0),
            add(&mut slab, 20, 1),
            add(&mut slab, 30, 2),
        ];
        due.merge(&mut slab, &first);
        let mut second = [
            add(&mut slab, 5, 3),
            add(&mut slab, 20, 4),
            add(&mut slab, 25, 5),
        ];
        second.sort();
        due.merge(&mut slab, &second);
        assert_eq!(drain_all(&mut due, &mut slab), [3, 0, 1, 4, 5, 2]);
    }

    fn run(slab: &mut Slab<u64>, keys: &[(u64, u64)]) -> List {
        let mut list = List::EMPTY;
        for &(d, s) in keys {
            let (_, _, i) = add(slab, d, s);
            list.push_back(slab, i, Location::Slot { level: 0, slot: 1 });
        }
        list
    }

    #[test]
    fn link_run_places_ordered_and_unordered_runs() {
        let mut slab = Slab::new();
        let mut due = DueList::default();
        let first = run(&mut slab, &[(10, 0), (10, 1), (12, 2)]);
        assert!(due.link_run(&mut slab, first).is_none());
        let unsorted = run(&mut slab, &[(20, 3), (15, 4)]);
        assert!(due.link_run(&mut slab, unsorted).is_none());
        let before_tail = run(&mut slab, &[(11, 5)]);
        assert!(due.link_run(&mut slab, before_tail).is_none());
        let after = run(&mut slab, &[(20, 6), (13, 7)]);
        assert!(due.link_run(&mut slab, after).is_none());
        let mut keys = Vec::new();
        while let Some(i) = due.pop_due(&mut slab, u64::MAX) {
            let entry = slab.remove(i);
            assert_eq!(entry.location, Location::Due);
            keys.push(entry.value);
        }
        assert_eq!(keys, [0, 1, 5, 2, 7, 4, 3, 6]);
    }

    #[test]
    fn link_run_hands_back_a_long_reversed_run() {
        let mut slab = Slab::new();
        let mut due = DueList::default();
        let keys: Vec<(u64, u64)> = (0..100).map(|s| (1000 - s, s)).collect();
        let reversed = run(&mut slab, &keys);
        let (index, mut rest) = due.link_run(&mut slab, reversed).expect("budget exceeded");
        let mut batch = Vec::new();
        let mut next = Some(index);
        while let Some(i) = next {
            let entry = slab.entry(i);
            batch.push((entry.deadline, entry.seq, i));
            next = rest.next(&slab);
        }
        batch.sort_unstable();
        due.merge(&mut slab, &batch);
        let mut fired = Vec::new();
        while let Some(i) = due.pop_due(&mut slab, u64::MAX) {
            fired.push(slab.remove(i).value);
        }
        assert_eq!(fired, (0..100).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn pop_due_never_returns_a_future_entry() {
        let mut slab = Slab::new();
        let mut due = DueList::default();
        let batch = [add(&mut slab, 10, 0), add(&mut slab, 11, 1)];
        due.merge(&mut slab, &batch);
        assert_eq!(due.first_deadline(&slab), Some(10));
        assert_eq!(due.pop_due(&mut slab, 9), None);
        assert_eq!(due.pop_due(&mut slab, 10), Some(batch[0].2));
        assert_eq!(due.pop_due(&mut slab, 10), None);
        due.remove(&mut slab, batch[1].2);
        assert_eq!(due.first_deadline(&slab), None);
    }
}
