//! The loop's FIFO of ready events. Fd readiness is coalesced per
//! (fd, direction) by the registry's `pending_*` flags, never dropped
//! (LESSONS 20); timers each fire once.

use std::collections::VecDeque;

use super::core::release_if_drained;
use super::Event;

/// Ready events in arrival order.
#[derive(Debug, Default)]
pub struct PendingQueue {
    events: VecDeque<Event>,
}

impl PendingQueue {
    pub fn push(&mut self, event: Event) {
        self.events.push_back(event);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Moves up to `max` events, oldest first, into `out`; true when more remain.
    pub fn drain_into(&mut self, out: &mut Vec<Event>, max: usize) -> bool {
        let take = self.events.len().min(max);
        out.extend(self.events.drain(..take));
        release_if_drained(&mut self.events);
        !self.events.is_empty()
    }

    /// The queued events, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Keeps only the queued events `keep` accepts (drops a removed fd's readiness).
    pub fn retain(&mut self, keep: impl FnMut(&Event) -> bool) {
        self.events.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::EventKind;

    fn timer(id: u64) -> Event {
        Event {
            kind: EventKind::Timer,
            id,
            key: id,
            deadline: id,
        }
    }

    #[test]
    fn drains_in_fifo_order_with_a_bound_and_a_more_signal() {
        let mut queue = PendingQueue::default();
        for id in 0..5 {
            queue.push(timer(id));
        }
        let mut out = Vec::new();
        assert!(queue.drain_into(&mut out, 3));
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(!queue.drain_into(&mut out, 10));
        assert_eq!(
            out.iter().map(|e| e.id).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert!(queue.is_empty());
    }
}
