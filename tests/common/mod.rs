//! The reference the randomized wheel tests check against: the live timers
//! by (deadline, insertion number), and what `insert`, `cancel` and
//! `advance` must do to them.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use erlang_python::wheel::{Expired, TimerKey, Wheel};

/// A wheel and its model, driven together. Payloads are insertion numbers,
/// so `(deadline, payload)` is the firing order.
pub struct Model {
    pub wheel: Wheel<u64>,
    /// The latest `now` given to `advance` (or the start).
    pub now: u64,
    /// Every key handed out, live or not: cancels pick from these.
    pub keys: Vec<TimerKey>,
    timers: BTreeMap<(u64, u64), TimerKey>,
    live: HashMap<u64, (u64, u64)>,
    seq: u64,
    out: Vec<Expired<u64>>,
}

impl Model {
    pub fn new(start: u64) -> Model {
        Model {
            wheel: Wheel::new(start),
            now: start,
            keys: Vec::new(),
            timers: BTreeMap::new(),
            live: HashMap::new(),
            seq: 0,
            out: Vec::new(),
        }
    }

    pub fn insert(&mut self, deadline: u64) {
        let key = self.wheel.insert(deadline, self.seq);
        self.timers.insert((deadline, self.seq), key);
        self.live.insert(key.to_u64(), (deadline, self.seq));
        self.keys.push(key);
        self.seq += 1;
    }

    /// Cancels the `i`th key handed out (and forgets it): its payload if it
    /// was live, nothing if it had fired or been cancelled.
    pub fn cancel_nth(&mut self, i: usize) {
        let key = self.keys.swap_remove(i);
        let got = self.wheel.cancel(key);
        match self.live.remove(&key.to_u64()) {
            Some((deadline, seq)) => {
                assert_eq!(got, Some(seq));
                self.timers.remove(&(deadline, seq));
            }
            None => assert_eq!(got, None, "a stale key cancelled something"),
        }
    }

    /// The `i`th pending deadline in firing order, if there are that many.
    pub fn nth_deadline(&self, i: usize) -> Option<u64> {
        self.timers.keys().nth(i).map(|&(deadline, _)| deadline)
    }

    pub fn first_deadline(&self) -> Option<u64> {
        self.nth_deadline(0)
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// `advance(to, max)`, checked: exactly the first `max` due timers in
    /// (deadline, insertion) order, their keys stale afterwards, and the
    /// "more" flag. Returns how many fired and the flag.
    pub fn advance(&mut self, to: u64, max: usize, step: u64) -> (usize, bool) {
        self.out.clear();
        let more = self.wheel.advance(to, &mut self.out, max);
        self.now = self.now.max(to);
        let now = self.now;
        let expected: Vec<(u64, u64)> = self
            .timers
            .keys()
            .take_while(|&&(deadline, _)| deadline <= now)
            .take(max)
            .copied()
            .collect();
        let got: Vec<(u64, u64)> = self.out.iter().map(|e| (e.deadline, e.value)).collect();
        assert_eq!(got, expected, "step {step} now {now} max {max}");
        for fired in &self.out {
            assert_eq!(
                self.timers.remove(&(fired.deadline, fired.value)),
                Some(fired.key)
            );
            self.live.remove(&fired.key.to_u64());
        }
        for fired in &self.out {
            assert!(
                self.wheel.cancel(fired.key).is_none(),
                "fired key still live"
            );
        }
        let still = self
            .first_deadline()
            .is_some_and(|deadline| deadline <= now);
        assert_eq!(more, still, "more flag step {step}");
        assert_eq!(self.wheel.len(), self.timers.len());
        (got.len(), more)
    }
}
