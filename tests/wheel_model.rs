//! Randomized model test: the wheel against a `BTreeMap<(deadline, seq), key>`.
//!
//! Every operation is applied to both; after each one the wheel must agree
//! with the model: the exact entries `advance` hands out (never early, in
//! (deadline, insertion) order, bounded by `max`, with the right "more"
//! flag), the result of every cancel (stale and garbage keys inert), `len`,
//! and `next_deadline` (never later than the true minimum, equal to it when
//! the minimum is due or on level 0). At the end everything finite must fire.
//!
//! Wheels start from clock offsets just below level boundaries (`2^6`,
//! `2^12`, ... `2^42` ticks) to catch wrap-around bugs. The whole file runs
//! a few million operations in well under 20 s in debug builds; set
//! `WHEEL_MODEL_SCALE=10` (or more) for a longer soak.

use std::collections::{BTreeMap, HashMap};

use erlang_python::wheel::{Expired, TimerKey, Wheel, NEVER};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;
const YEAR: u64 = 365 * 24 * HOUR;

/// Largest finite deadline the test uses (`NEVER` is `u64::MAX`).
const LAST: u64 = u64::MAX - 1;

/// Operations per (tick, start) configuration, times `WHEEL_MODEL_SCALE`.
const OPS: usize = 350_000;

fn scale() -> usize {
    std::env::var("WHEEL_MODEL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// The tick of a deadline, as the wheel computes it (rounded up).
fn tick_of(ns: u64, tick_ns: u64) -> u64 {
    ns.div_ceil(tick_ns)
}

struct Harness {
    wheel: Wheel<u64>,
    rng: SmallRng,
    /// Description of the configuration, for failure messages.
    label: String,
    tick_ns: u64,
    /// The model's time: the largest `now` given to `advance`.
    now: u64,
    /// Next insertion number; also the payload, to check identity.
    seq: u64,
    /// Live finite timers in firing order.
    pending: BTreeMap<(u64, u64), TimerKey>,
    /// Every live timer (finite or `NEVER`): key -> (deadline, seq).
    live: HashMap<u64, (u64, u64)>,
    /// Live keys, for picking one at random (swap-remove via `live_pos`).
    live_keys: Vec<TimerKey>,
    live_pos: HashMap<u64, usize>,
    /// Keys of fired or cancelled timers (a bounded sample).
    dead: Vec<TimerKey>,
    out: Vec<Expired<u64>>,
    ops: u64,
    /// Population the insert bias aims for in the current phase.
    target: usize,
    /// Times the wheel gave its memory back (`release_memory`) while empty.
    releases: u64,
}

impl Harness {
    fn new(tick_ns: u64, start: u64, seed: u64) -> Self {
        Harness {
            wheel: Wheel::with_tick(tick_ns, start).unwrap(),
            rng: SmallRng::seed_from_u64(seed),
            label: format!("tick {tick_ns} start {start} seed {seed}"),
            tick_ns,
            now: start,
            seq: 0,
            pending: BTreeMap::new(),
            live: HashMap::new(),
            live_keys: Vec::new(),
            live_pos: HashMap::new(),
            dead: Vec::new(),
            out: Vec::new(),
            ops: 0,
            target: 0,
            releases: 0,
        }
    }

    fn run(&mut self, ops: usize) {
        for _ in 0..ops {
            self.step();
        }
        self.drain_everything();
    }

    fn step(&mut self) {
        self.ops += 1;
        if self.ops % 5_000 == 1 {
            // Population phases: a few timers, hundreds, thousands.
            self.target = [10, 300, 3_000][self.rng.random_range(0..3)];
        }
        let insert_bias = if self.live.len() < self.target { 30 } else { 0 };
        if self.rng.random_range(0..100) < insert_bias {
            let kind = self.rng.random_range(0..44);
            self.insert_kind(kind);
        } else {
            self.any_op();
        }
        self.check_next_deadline();
        assert_eq!(self.wheel.len(), self.live.len(), "{}: len", self.label);
        self.maybe_release_memory();
    }

    /// Now and then, the memory of an emptied wheel given back, as a loop
    /// does after a burst: the stale keys of before (`dead`) must stay
    /// stale for the entries made anew at their indices.
    fn maybe_release_memory(&mut self) {
        if self.live.is_empty() && self.rng.random_range(0..4) == 0 {
            assert!(self.wheel.release_memory(), "{}: release", self.label);
            assert_eq!(self.wheel.allocated_bytes(), 0, "{}: released", self.label);
            self.releases += 1;
        } else if !self.live.is_empty() && self.rng.random_range(0..1000) == 0 {
            assert!(
                !self.wheel.release_memory(),
                "{}: release with timers",
                self.label
            );
        }
    }

    fn any_op(&mut self) {
        let tick = self.tick_ns;
        let now = self.now;
        match self.rng.random_range(0..100) {
            kind @ 0..=43 => self.insert_kind(kind),
            // Cancels.
            44..=58 => {
                self.cancel_live();
            }
            59..=60 => self.cancel_stale(),
            61 => {
                if let Some(key) = self.cancel_live() {
                    self.cancel_expect(key);
                }
            }
            62..=63 => self.cancel_garbage(),
            // Advances.
            64..=79 => {
                let to = now.saturating_add(self.rng.random_range(0..2 * tick));
                self.advance(to);
            }
            80..=87 => {
                // Sleep until the wheel's next deadline, as the loop does.
                if let Some(next) = self.wheel.next_deadline() {
                    self.advance(next.min(LAST));
                }
            }
            88..=91 => {
                // Until just past the true next timer.
                if let Some((&(d, _), _)) = self.pending.iter().next() {
                    let slack = self.rng.random_range(0..tick);
                    self.advance(d.saturating_add(slack).min(LAST));
                }
            }
            92..=94 => {
                let to = now.saturating_add(self.rng.random_range(0..3 * HOUR));
                self.advance(to.min(LAST));
            }
            95 => {
                // Rarely, years at once (capped so the clock does not run out).
                if self.rng.random_range(0..200) == 0 && now < u64::MAX / 2 {
                    let to = now + self.rng.random_range(0..20 * YEAR);
                    self.advance(to);
                }
            }
            _ => {
                let to = now.saturating_sub(self.rng.random_range(0..20 * MS));
                self.advance(to);
            }
        }
    }

    /// Inserts a timer of one of several kinds (`kind` in `0..44`).
    fn insert_kind(&mut self, kind: u32) {
        let tick = self.tick_ns;
        let now = self.now;
        let deadline = match kind {
            // Near: within a few ticks, sub-tick precision.
            0..=21 => now.saturating_add(self.rng.random_range(0..4 * tick)),
            // Equal to a live deadline, or exactly on a tick boundary.
            22..=26 => match self.random_pending_deadline() {
                Some(d) if self.rng.random_bool(0.7) => d,
                _ => (tick_of(now, tick) + self.rng.random_range(0..200)).saturating_mul(tick),
            },
            // Past.
            27..=30 => now.saturating_sub(self.rng.random_range(0..50 * MS)),
            // Minutes to hours.
            31..=40 => now.saturating_add(self.rng.random_range(0..2 * HOUR)),
            // Years, up to beyond the top level.
            41..=42 => now.saturating_add(self.rng.random_range(0..300 * YEAR)),
            _ => NEVER,
        };
        self.insert(if deadline == NEVER {
            NEVER
        } else {
            deadline.min(LAST)
        });
    }

    fn random_pending_deadline(&mut self) -> Option<u64> {
        if self.live_keys.is_empty() {
            return None;
        }
        let key = self.live_keys[self.rng.random_range(0..self.live_keys.len())];
        Some(self.live[&key.to_u64()].0)
    }

    fn insert(&mut self, deadline: u64) {
        let seq = self.seq;
        self.seq += 1;
        let key = self.wheel.insert(deadline, seq);
        let raw = key.to_u64();
        assert!(
            self.live.insert(raw, (deadline, seq)).is_none(),
            "{}: key {key:?} handed out twice",
            self.label
        );
        self.live_pos.insert(raw, self.live_keys.len());
        self.live_keys.push(key);
        if deadline != NEVER {
            self.pending.insert((deadline, seq), key);
        }
    }

    /// Removes `key` from the model and returns its (deadline, seq).
    fn forget(&mut self, key: TimerKey) -> (u64, u64) {
        let raw = key.to_u64();
        let (deadline, seq) = self.live.remove(&raw).expect("live key");
        let pos = self.live_pos.remove(&raw).expect("live position");
        self.live_keys.swap_remove(pos);
        if let Some(moved) = self.live_keys.get(pos) {
            self.live_pos.insert(moved.to_u64(), pos);
        }
        if deadline != NEVER {
            self.pending.remove(&(deadline, seq));
        }
        if self.dead.len() < 4096 {
            self.dead.push(key);
        } else {
            let i = self.rng.random_range(0..self.dead.len());
            self.dead[i] = key;
        }
        (deadline, seq)
    }

    /// Cancels `key` in the wheel and checks the answer against the model.
    fn cancel_expect(&mut self, key: TimerKey) {
        let expected = self.live.get(&key.to_u64()).map(|&(_, seq)| seq);
        let got = self.wheel.cancel(key);
        assert_eq!(got, expected, "{}: cancel {key:?}", self.label);
        if got.is_some() {
            self.forget(key);
        }
    }

    fn cancel_live(&mut self) -> Option<TimerKey> {
        if self.live_keys.is_empty() {
            return None;
        }
        let key = self.live_keys[self.rng.random_range(0..self.live_keys.len())];
        self.cancel_expect(key);
        Some(key)
    }

    fn cancel_stale(&mut self) {
        if let Some(&key) = self
            .dead
            .get(self.rng.random_range(0..self.dead.len().max(1)))
        {
            assert_eq!(
                self.wheel.cancel(key),
                None,
                "{}: stale key {key:?}",
                self.label
            );
        }
    }

    fn cancel_garbage(&mut self) {
        let raw = match self.rng.random_range(0..3) {
            0 => self.rng.random(),
            // A live index with another generation.
            1 if !self.live_keys.is_empty() => {
                let key = self.live_keys[self.rng.random_range(0..self.live_keys.len())];
                key.to_u64() ^ (self.rng.random_range(1..u64::from(u32::MAX)) << 32)
            }
            _ => [0, u64::MAX, u64::from(u32::MAX)][self.rng.random_range(0..3)],
        };
        self.cancel_expect(TimerKey::from_u64(raw));
    }

    fn advance(&mut self, to: u64) {
        let max = if self.rng.random_bool(0.5) {
            usize::MAX
        } else {
            self.rng.random_range(0..=8)
        };
        self.advance_with(to, max);
    }

    fn advance_with(&mut self, to: u64, max: usize) -> bool {
        self.out.clear();
        let more = self.wheel.advance(to, &mut self.out, max);
        self.now = self.now.max(to);
        let now = self.now;
        assert_eq!(self.wheel.now(), now, "{}: clamped time", self.label);

        let expected: Vec<(u64, u64, TimerKey)> = self
            .pending
            .iter()
            .take_while(|(&(d, _), _)| d <= now)
            .take(max)
            .map(|(&(d, s), &k)| (d, s, k))
            .collect();
        let got: Vec<(u64, u64, TimerKey)> = self
            .out
            .iter()
            .map(|e| (e.deadline, e.value, e.key))
            .collect();
        assert_eq!(
            got, expected,
            "{}: advance to {to} (now {now}, max {max}) after {} ops",
            self.label, self.ops
        );
        for &(_, _, key) in &expected {
            self.forget(key);
        }
        let still_due = self.pending.keys().next().is_some_and(|&(d, _)| d <= now);
        assert_eq!(more, still_due, "{}: more flag at {now}", self.label);
        more
    }

    fn check_next_deadline(&mut self) {
        let next = self.wheel.next_deadline();
        let min = self.pending.keys().next().map(|&(d, _)| d);
        let (next, min) = match (next, min) {
            (None, None) => return,
            (Some(n), Some(m)) => (n, m),
            other => panic!("{}: next_deadline vs true min {other:?}", self.label),
        };
        assert!(
            next <= min,
            "{}: next_deadline {next} later than the earliest timer {min} (now {})",
            self.label,
            self.now
        );
        let elapsed = tick_of(self.now, self.tick_ns);
        let when = tick_of(min, self.tick_ns);
        if when <= elapsed || (when ^ elapsed) < 64 {
            assert_eq!(
                next, min,
                "{}: earliest timer is due or on level 0 but next_deadline is inexact (now {})",
                self.label, self.now
            );
        }
        if next != min {
            assert!(
                next > self.now,
                "{}: inexact next_deadline {next} not ahead of now {}",
                self.label,
                self.now
            );
        }
    }

    /// Advances to the end of time: every finite timer fires, in order.
    fn drain_everything(&mut self) {
        loop {
            let max = self.rng.random_range(1..=64);
            if !self.advance_with(LAST, max) {
                break;
            }
        }
        assert!(
            self.pending.is_empty(),
            "{}: timers lost: {:?}",
            self.label,
            self.pending.iter().take(5).collect::<Vec<_>>()
        );
        assert_eq!(self.wheel.next_deadline(), None, "{}", self.label);
        let nevers: Vec<TimerKey> = self.live_keys.clone();
        for key in nevers {
            self.cancel_expect(key);
        }
        assert!(self.wheel.is_empty(), "{}", self.label);
        let stats = self.wheel.stats();
        assert_eq!(stats.live, 0);
        assert_eq!(stats.inserted, self.seq);
        assert_eq!(stats.inserted, stats.fired + stats.cancelled, "{stats:?}");
        eprintln!("{}: {} ops {stats:?}", self.label, self.ops);
    }
}

/// Start offsets: a small random one, then just below each level boundary
/// (`2^6 .. 2^42` ticks) and past the top level's reach (`2^48`), wherever
/// it leaves room for a few hundred years of deadlines.
fn starts(tick_ns: u64, rng: &mut SmallRng) -> Vec<u64> {
    let mut starts = vec![rng.random_range(0..HOUR)];
    for bits in (6..=48).step_by(6) {
        let Some(boundary) = (1u64 << bits).checked_mul(tick_ns) else {
            continue;
        };
        if boundary > u64::MAX / 4 {
            continue;
        }
        // Just below the boundary: within a few ticks, not tick-aligned.
        starts.push(boundary - rng.random_range(1..4 * tick_ns));
    }
    starts
}

fn run_config(tick_ns: u64, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let starts = starts(tick_ns, &mut rng);
    let ops = OPS * scale() / starts.len();
    let mut releases = 0;
    for (i, start) in starts.into_iter().enumerate() {
        let mut harness = Harness::new(tick_ns, start, seed * 1000 + i as u64);
        harness.run(ops);
        releases += harness.releases;
    }
    assert!(
        releases > 0,
        "tick {tick_ns} seed {seed}: no wheel ever emptied"
    );
}

#[test]
fn model_default_tick() {
    run_config(MS, 1);
    run_config(MS, 2);
}

#[test]
fn model_fine_tick() {
    run_config(100 * US, 3);
    run_config(100 * US, 4);
}

#[test]
fn model_coarse_tick() {
    run_config(100 * MS, 5);
    run_config(7_777_777, 6);
}

/// Few timers, long jumps: at 100 µs the top level reaches only 13.9 years,
/// so far deadlines migrate from the overflow list many times.
#[test]
fn model_far_migration() {
    let mut rng = SmallRng::seed_from_u64(7);
    for round in 0..20 * scale() as u64 {
        let tick_ns = 100 * US;
        let start = rng.random_range(0..YEAR);
        let mut h = Harness::new(tick_ns, start, 70 + round);
        for _ in 0..200 {
            let d = h.now + h.rng.random_range(0..60 * YEAR);
            h.insert(d);
            if h.rng.random_bool(0.1) {
                h.insert(NEVER);
            }
            if h.rng.random_bool(0.2) {
                h.cancel_live();
            }
            let to = h.now + h.rng.random_range(0..2 * YEAR);
            h.advance(to);
            h.check_next_deadline();
        }
        // Walk the rest as a sleeping loop would.
        while let Some(next) = h.wheel.next_deadline() {
            h.advance_with(next, usize::MAX);
            h.check_next_deadline();
        }
        h.drain_everything();
    }
}
