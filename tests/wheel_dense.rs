//! The wheel against a model on dense ticks (hundreds of timers a tick, the
//! bucket-sorted path): ties, cancels, past deadlines, bounded `advance`s
//! (max 0 to 40), the "more" flag, `next_deadline` never late, and the
//! spurious-advance counter; and deadlines in the last ticks before `NEVER`.
mod common;

use common::Model;
use erlang_python::wheel::{Wheel, NEVER};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;

fn run(seed: u64, start: u64, per_tick: u64, distinct: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = Model::new(start);
    let mut armed = NEVER;
    let mut spurious = 0u64;
    for step in 0..15_000u64 {
        let now = model.now;
        match rng.random_range(0..100) {
            0..=49 => {
                // Dense: many timers in the next few ticks, few distinct offsets.
                let base = now - now % MS + rng.random_range(0..4) * MS;
                let off = if distinct == 0 {
                    rng.random_range(0..MS)
                } else {
                    rng.random_range(0..distinct) * (MS / distinct.max(1))
                };
                let d = if rng.random_bool(0.05) {
                    now.saturating_sub(rng.random_range(0..MS))
                } else {
                    base + off
                };
                for _ in 0..rng.random_range(1..per_tick) {
                    model.insert(d);
                }
            }
            50..=64 => {
                if !model.keys.is_empty() {
                    model.cancel_nth(rng.random_range(0..model.keys.len()));
                }
            }
            65..=74 => {
                if let Some(n) = model.wheel.next_deadline() {
                    armed = n;
                    let min = model.first_deadline().unwrap();
                    assert!(n <= min, "next_deadline {n} > min {min}");
                } else {
                    armed = NEVER;
                    assert_eq!(model.len(), 0);
                }
            }
            _ => {
                let to = now + rng.random_range(0..MS / 3);
                let max = if rng.random_bool(0.3) {
                    usize::MAX
                } else {
                    rng.random_range(0..=40)
                };
                let (fired, more) = model.advance(to, max, step);
                if armed != NEVER && armed <= model.now && fired == 0 && !more {
                    spurious += 1;
                }
                armed = NEVER;
                assert_eq!(
                    model.wheel.stats().spurious_advances,
                    spurious,
                    "spurious at {step}"
                );
            }
        }
    }
}

#[test]
fn dense_ticks_spread() {
    for seed in 0..4 {
        run(seed, 5_000 * MS + 123_457, 300, 0);
    }
}

#[test]
fn dense_ticks_ties() {
    for seed in 10..14 {
        run(seed, 5_000 * MS + 999_999, 200, 3);
    }
}

#[test]
fn dense_ticks_single_deadline_runs() {
    for seed in 20..24 {
        run(seed, 7 * MS, 70, 1);
    }
}

#[test]
fn near_the_end_of_time() {
    // Deadlines in the last representable ticks (not NEVER).
    let start = u64::MAX - 50 * MS;
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let mut want = Vec::new();
    let mut rng = SmallRng::seed_from_u64(1);
    for s in 0..2000u64 {
        let d = u64::MAX - 1 - rng.random_range(0..3 * MS);
        wheel.insert(d, s);
        want.push((d, s));
    }
    want.sort_unstable();
    let mut out = Vec::new();
    wheel.advance(u64::MAX - 1, &mut out, usize::MAX);
    let got: Vec<(u64, u64)> = out.iter().map(|e| (e.deadline, e.value)).collect();
    assert_eq!(got, want);
}
