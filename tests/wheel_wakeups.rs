//! Wake-up count: a loop that sleeps until `next_deadline()` and then
//! advances must wake (almost) only when a timer is really due, not for the
//! wheel's cascade bookkeeping. Deterministic: seeded deadlines, simulated
//! time.

use erlang_python::wheel::{Wheel, DEFAULT_TICK_NS, MAX_TICK_NS, MIN_TICK_NS};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;
const HOUR: u64 = 3_600_000 * MS;
const WEEK: u64 = 7 * 24 * HOUR;

/// Largest accepted (wake-ups / fired timers).
const MAX_RATIO: f64 = 1.05;

/// A clock reading somewhere in a machine's uptime, not tick-aligned.
const START: u64 = 987_654 * MS + 321_987;

struct Outcome {
    advances: u64,
    fired: u64,
    spurious: u64,
}

impl Outcome {
    fn ratio(&self) -> f64 {
        self.advances as f64 / self.fired as f64
    }
}

/// Inserts `deadlines`, then runs `now = next_deadline(); advance(now)` until
/// no timer is left, checking that nothing fires early.
fn sleep_loop(tick_ns: u64, deadlines: &[u64]) -> Outcome {
    sleep_loop_after_cancels(tick_ns, deadlines, 0)
}

/// [`sleep_loop`], after cancelling every `cancel_every`-th timer (none for
/// 0): cancels invalidate the tracked slot minima.
fn sleep_loop_after_cancels(tick_ns: u64, deadlines: &[u64], cancel_every: usize) -> Outcome {
    let mut wheel = Wheel::with_tick(tick_ns, START).unwrap();
    let keys: Vec<_> = deadlines.iter().map(|&d| wheel.insert(d, d)).collect();
    if cancel_every != 0 {
        for key in keys.into_iter().step_by(cancel_every) {
            wheel.cancel(key);
        }
    }
    let live = wheel.len() as u64;
    let mut out = Vec::new();
    let mut advances = 0;
    let mut fired = 0;
    while let Some(now) = wheel.next_deadline() {
        advances += 1;
        out.clear();
        wheel.advance(now, &mut out, usize::MAX);
        for e in &out {
            assert!(e.deadline <= now, "fired {} at {now}", e.deadline);
        }
        fired += out.len() as u64;
    }
    assert_eq!(fired, live, "timers lost");
    let stats = wheel.stats();
    assert_eq!(stats.fired, fired);
    Outcome {
        advances,
        fired,
        spurious: stats.spurious_advances,
    }
}

fn uniform(n: usize, span: u64, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| START + rng.random_range(1..=span)).collect()
}

/// Delays spread evenly on a log scale from 1 ms to a week.
fn log_uniform(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (lo, hi) = ((MS as f64).ln(), (WEEK as f64).ln());
    (0..n)
        .map(|_| START + rng.random_range(lo..hi).exp() as u64)
        .collect()
}

fn check(name: &str, deadlines: &[u64]) {
    for tick_ns in [DEFAULT_TICK_NS, MIN_TICK_NS, MAX_TICK_NS] {
        let o = sleep_loop(tick_ns, deadlines);
        eprintln!(
            "{name} tick {tick_ns}: {} advances, {} fired, {} spurious, ratio {:.4}",
            o.advances,
            o.fired,
            o.spurious,
            o.ratio()
        );
        assert!(
            o.ratio() <= MAX_RATIO,
            "{name} tick {tick_ns}: {} advances for {} timers",
            o.advances,
            o.fired
        );
        assert!(o.advances - o.spurious <= o.fired);
    }
}

#[test]
fn ten_timers_over_an_hour() {
    for seed in 0..20 {
        check("10/hour", &uniform(10, HOUR, seed));
    }
}

#[test]
fn thousand_timers_over_an_hour() {
    check("1000/hour", &uniform(1_000, HOUR, 1));
    check("1000/hour", &uniform(1_000, HOUR, 2));
}

#[test]
fn random_deadlines_from_a_millisecond_to_a_week() {
    check("log-uniform 5000", &log_uniform(5_000, 3));
}

#[test]
fn cancels_do_not_cost_many_wake_ups() {
    // Sorted deadlines cancelled in order: the earliest entry of many slots
    // goes, so their tracked minimum becomes unknown.
    let mut deadlines = uniform(1_000, HOUR, 4);
    deadlines.sort();
    for cancel_every in [2, 3, 10] {
        for tick_ns in [DEFAULT_TICK_NS, MIN_TICK_NS, MAX_TICK_NS] {
            let o = sleep_loop_after_cancels(tick_ns, &deadlines, cancel_every);
            eprintln!(
                "1000/hour, cancel 1/{cancel_every}, tick {tick_ns}: {} advances, {} fired, ratio {:.4}",
                o.advances,
                o.fired,
                o.ratio()
            );
            assert!(o.ratio() <= MAX_RATIO, "ratio {}", o.ratio());
        }
    }
}

#[test]
fn a_lone_timer_costs_one_wake_up() {
    for delay in [1, MS / 2, MS, 63 * MS, 64 * MS + 1, HOUR, 30 * 24 * HOUR] {
        let o = sleep_loop(DEFAULT_TICK_NS, &[START + delay]);
        assert_eq!(o.advances, 1, "delay {delay}");
        assert_eq!(o.spurious, 0, "delay {delay}");
    }
}
