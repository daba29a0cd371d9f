//! The wheel against a model on dense ticks (hundreds of timers a tick, the
//! bucket-sorted path): ties, cancels, past deadlines, bounded `advance`s
//! (max 0 to 40), the "more" flag, `next_deadline` never late, and the
//! spurious-advance counter; and deadlines in the last ticks before `NEVER`.
use std::collections::{BTreeMap, HashMap};

use erlang_python::wheel::{TimerKey, Wheel, NEVER};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;

fn run(seed: u64, start: u64, per_tick: u64, distinct: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
    let mut live: HashMap<u64, (u64, u64)> = HashMap::new(); // key -> (deadline, seq)
    let mut keys: Vec<TimerKey> = Vec::new();
    let mut now = start;
    let mut seq = 0u64;
    let mut armed = NEVER;
    let mut spurious = 0u64;
    let mut out = Vec::new();
    for step in 0..15_000u64 {
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
                    let k = wheel.insert(d, seq);
                    model.insert((d, seq), k);
                    live.insert(k.to_u64(), (d, seq));
                    keys.push(k);
                    seq += 1;
                }
            }
            50..=64 => {
                if !keys.is_empty() {
                    let i = rng.random_range(0..keys.len());
                    let k = keys.swap_remove(i);
                    let got = wheel.cancel(k);
                    match live.remove(&k.to_u64()) {
                        Some((d, s)) => {
                            assert_eq!(got, Some(s));
                            model.remove(&(d, s));
                        }
                        None => assert_eq!(got, None),
                    }
                }
            }
            65..=74 => {
                if let Some(n) = wheel.next_deadline() {
                    armed = n;
                    let min = model.keys().next().map(|&(d, _)| d).unwrap();
                    assert!(n <= min, "next_deadline {n} > min {min}");
                } else {
                    armed = NEVER;
                    assert!(model.is_empty());
                }
            }
            _ => {
                let to = now + rng.random_range(0..MS / 3);
                let max = if rng.random_bool(0.3) {
                    usize::MAX
                } else {
                    rng.random_range(0..=40)
                };
                out.clear();
                let more = wheel.advance(to, &mut out, max);
                now = now.max(to);
                let expected: Vec<(u64, u64)> = model
                    .keys()
                    .take_while(|&&(d, _)| d <= now)
                    .take(max)
                    .copied()
                    .collect();
                let got: Vec<(u64, u64)> = out.iter().map(|e| (e.deadline, e.value)).collect();
                assert_eq!(got, expected, "step {step} now {now} max {max}");
                for &(d, s) in &expected {
                    let k = model.remove(&(d, s)).unwrap();
                    live.remove(&k.to_u64());
                }
                let still = model.keys().next().is_some_and(|&(d, _)| d <= now);
                assert_eq!(more, still, "more flag step {step}");
                if armed != NEVER && armed <= now && got.is_empty() && !more {
                    spurious += 1;
                }
                armed = NEVER;
                assert_eq!(
                    wheel.stats().spurious_advances,
                    spurious,
                    "spurious at {step}"
                );
            }
        }
        assert_eq!(wheel.len(), model.len());
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
