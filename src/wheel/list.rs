//! A FIFO doubly-linked list of slab entries, linked by `u32` indices.
//!
//! The links live in the entries (see `Entry::prev`/`next`), so a list is just
//! its two ends and costs nothing per element. Every wheel slot and the
//! overflow lists are one of these.
//!
//! The head's `prev` is `NIL`, but the tail's `next` may name anything: the
//! list knows its tail, so an unlink of the tail (the usual cancel, of the
//! newest entry of its slot) writes the list alone, not its predecessor. A
//! walk in place stops at the tail ([`iter`](List::iter)); a list
//! [`take`](List::take)n for draining gets its tail's `next` set to `NIL`
//! once, so its drain stays one load and one compare a step.

use super::entry::{Entry, Location};
use super::slab::Slab;

/// The "no entry" index. Never a valid slab index.
pub(crate) const NIL: u32 = u32::MAX;

/// The two ends of a list; the elements are chained through the slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct List {
    /// Oldest entry, or `NIL`. Popping and draining start here.
    head: u32,
    /// Newest entry, or `NIL`. Pushing appends here, which keeps insertion
    /// order.
    tail: u32,
}

impl Default for List {
    fn default() -> Self {
        List::EMPTY
    }
}

impl List {
    pub(crate) const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// The entry of a list of exactly one.
    #[inline]
    pub(crate) fn single(&self) -> Option<u32> {
        (self.head == self.tail && self.head != NIL).then_some(self.head)
    }

    /// The oldest entry, or `NIL`.
    #[cfg(test)]
    pub(crate) fn head(&self) -> u32 {
        self.head
    }

    /// The newest entry, or `NIL`.
    #[inline]
    pub(crate) fn tail(&self) -> u32 {
        self.tail
    }

    /// Appends `index` and records `location` in the entry.
    #[inline(always)]
    pub(crate) fn push_back<T>(&mut self, slab: &mut Slab<T>, index: u32, location: Location) {
        let tail = self.tail;
        let entry = slab.entry_mut(index);
        entry.prev = tail;
        entry.next = NIL;
        entry.location = location;
        if tail == NIL {
            self.head = index;
        } else {
            slab.entry_mut(tail).next = index;
        }
        self.tail = index;
    }

    /// Appends `index`, an entry stored with `prev` the list's
    /// [`tail`](Self::tail) as read before storing it (passed back here, not
    /// read again: the store may have moved it, as far as the compiler
    /// knows), `next` `NIL` and its location: an insert writes its new
    /// entry whole instead of storing it and then relinking.
    #[inline(always)]
    pub(crate) fn push_back_stored<T>(&mut self, slab: &mut Slab<T>, index: u32, prev: u32) {
        debug_assert!(
            prev == self.tail && slab.entry(index).prev == prev && slab.entry(index).next == NIL,
            "entry {index} not stored as the list's new tail"
        );
        if prev == NIL {
            self.head = index;
        } else {
            slab.entry_mut(prev).next = index;
        }
        self.tail = index;
    }

    /// Unlinks `index`, which must be in this list; true when that left
    /// the list empty. The tail's predecessor keeps its `next`, pointing out
    /// of the list now.
    #[inline(always)]
    pub(crate) fn remove<T>(&mut self, slab: &mut Slab<T>, index: u32) -> bool {
        let Entry { prev, next, .. } = *slab.entry(index);
        if index == self.tail {
            self.tail = prev;
            if prev == NIL {
                debug_assert_eq!(
                    self.head, index,
                    "entry {index} has no prev but is not the head"
                );
                self.head = NIL;
                return true;
            }
        } else {
            slab.entry_mut(next).prev = prev;
            if prev == NIL {
                debug_assert_eq!(
                    self.head, index,
                    "entry {index} has no prev but is not the head"
                );
                self.head = next;
            } else {
                slab.entry_mut(prev).next = next;
            }
        }
        false
    }

    /// Empties the list and returns what it held, its tail's `next` set to
    /// `NIL` so that the caller can walk it with [`Drain`] while relinking
    /// its entries.
    #[inline]
    pub(crate) fn take<T>(&mut self, slab: &mut Slab<T>) -> List {
        if self.tail != NIL {
            slab.entry_mut(self.tail).next = NIL;
        }
        std::mem::replace(self, List::EMPTY)
    }

    /// Walks a [`take`](Self::take)n list from head to tail; the current
    /// entry may be relinked elsewhere (its `next` is read before it is
    /// yielded).
    #[inline]
    pub(crate) fn drain(self) -> Drain {
        Drain { next: self.head }
    }

    /// The entries of a list left in place, head to tail.
    pub(crate) fn iter<'a, T>(&self, slab: &'a Slab<T>) -> impl Iterator<Item = u32> + 'a {
        let (mut next, tail) = (self.head, self.tail);
        std::iter::from_fn(move || {
            let index = next;
            if index == NIL {
                return None;
            }
            next = if index == tail {
                NIL
            } else {
                slab.entry(index).next
            };
            Some(index)
        })
    }
}

/// Cursor over a list that was [`take`](List::take)n: yields each index once,
/// reading the successor before the caller relinks the entry.
pub(crate) struct Drain {
    /// The entry to yield next, or `NIL` when done.
    next: u32,
}

impl Drain {
    #[inline]
    pub(crate) fn next<T>(&mut self, slab: &Slab<T>) -> Option<u32> {
        let index = self.next;
        if index == NIL {
            return None;
        }
        self.next = slab.entry(index).next;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(list: &List, slab: &Slab<u64>) -> Vec<u64> {
        list.iter(slab).map(|i| slab.entry(i).value).collect()
    }

    fn slab_with(n: u64) -> (Slab<u64>, Vec<u32>) {
        let mut slab = Slab::new();
        let ids = (0..n)
            .map(|v| slab.insert(Entry::new(v, v, v)).index())
            .collect();
        (slab, ids)
    }

    #[test]
    fn push_back_keeps_fifo_order() {
        let (mut slab, ids) = slab_with(3);
        let mut list = List::EMPTY;
        for &i in &ids {
            list.push_back(&mut slab, i, Location::Due);
        }
        assert_eq!(collect(&list, &slab), [0, 1, 2]);
        assert_eq!(list.head(), ids[0]);
        assert_eq!(list.tail(), ids[2]);
    }

    #[test]
    fn remove_head_middle_tail() {
        let (mut slab, ids) = slab_with(4);
        let mut list = List::EMPTY;
        for &i in &ids {
            list.push_back(&mut slab, i, Location::Far);
        }
        assert!(!list.remove(&mut slab, ids[1]));
        assert_eq!(collect(&list, &slab), [0, 2, 3]);
        assert!(!list.remove(&mut slab, ids[0]));
        assert_eq!(collect(&list, &slab), [2, 3]);
        assert!(!list.remove(&mut slab, ids[3]));
        assert_eq!(collect(&list, &slab), [2]);
        list.push_back(&mut slab, ids[3], Location::Far);
        assert_eq!(collect(&list, &slab), [2, 3]);
        assert!(!list.remove(&mut slab, ids[3]));
        assert!(list.remove(&mut slab, ids[2]));
        assert!(list.is_empty());
        assert_eq!(list.tail(), NIL);
    }

    #[test]
    fn take_leaves_the_list_empty() {
        let (mut slab, ids) = slab_with(3);
        let mut list = List::EMPTY;
        list.push_back(&mut slab, ids[0], Location::Never);
        list.push_back(&mut slab, ids[1], Location::Never);
        list.push_back(&mut slab, ids[2], Location::Never);
        list.remove(&mut slab, ids[2]);
        let taken = list.take(&mut slab);
        assert!(list.is_empty());
        assert_eq!(collect(&taken, &slab), [0, 1]);
        // The tail's stale `next` was cut: a drain ends there too.
        let mut drain = taken.drain();
        let mut drained = Vec::new();
        while let Some(i) = drain.next(&slab) {
            drained.push(slab.entry(i).value);
        }
        assert_eq!(drained, [0, 1]);
    }
}
