//! The wheel against a model on sparse ticks (about one timer a tick, over
//! seconds: every timer cascades from level 2 to level 1 to level 0), the
//! shape the fast paths are for: the lone level-0 entry fired without the
//! due queue, and the level-1 slot cascaded straight to level 0. Ties, past
//! deadlines, cancels of entries in every place, bounded `advance`s (max 0
//! to 3), loops that sleep until `next_deadline` exactly (which is what
//! makes a lone entry due when its tick is reached) and loops that advance
//! 1 ms at a time from an offset inside the tick.
use std::collections::{BTreeMap, HashMap};

use erlang_python::wheel::{TimerKey, Wheel};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// How the simulated loop chooses its next `now`.
#[derive(Clone, Copy, Debug)]
enum Clock {
    /// 1 ms steps from an offset inside the tick (the benchmark's loop).
    Steps,
    /// Sleeps until `next_deadline`, sometimes a little past it.
    Sleeps,
}

fn run(seed: u64, start: u64, clock: Clock) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
    let mut live: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut keys: Vec<TimerKey> = Vec::new();
    let mut now = start;
    let mut seq = 0u64;
    let mut out = Vec::new();
    let mut insert = |wheel: &mut Wheel<u64>,
                      model: &mut BTreeMap<(u64, u64), TimerKey>,
                      live: &mut HashMap<u64, (u64, u64)>,
                      keys: &mut Vec<TimerKey>,
                      d: u64| {
        let k = wheel.insert(d, seq);
        model.insert((d, seq), k);
        live.insert(k.to_u64(), (d, seq));
        keys.push(k);
        seq += 1;
    };
    for _ in 0..3_000 {
        let d = start + rng.random_range(0..10 * SEC);
        insert(&mut wheel, &mut model, &mut live, &mut keys, d);
    }
    for step in 0..40_000u64 {
        match rng.random_range(0..100) {
            0..=4 => {
                // A new timer, sometimes a tie with a pending one, sometimes
                // already past.
                let d = match rng.random_range(0..4) {
                    0 => model
                        .keys()
                        .nth(rng.random_range(0..model.len().max(1)))
                        .map_or(now, |&(d, _)| d),
                    1 => now.saturating_sub(rng.random_range(0..3 * MS)),
                    _ => now + rng.random_range(0..10 * SEC),
                };
                insert(&mut wheel, &mut model, &mut live, &mut keys, d);
            }
            5..=9 => {
                if !keys.is_empty() {
                    let k = keys.swap_remove(rng.random_range(0..keys.len()));
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
            _ => {
                let next = wheel.next_deadline();
                let first = model.keys().next().map(|&(d, _)| d);
                assert!(
                    next <= first || first.is_none(),
                    "next {next:?} first {first:?}"
                );
                let to = match (clock, next) {
                    (Clock::Sleeps, Some(n)) if rng.random_bool(0.9) => {
                        n + if rng.random_bool(0.7) {
                            0
                        } else {
                            rng.random_range(0..MS)
                        }
                    }
                    _ => now + MS,
                };
                let max = match rng.random_range(0..10) {
                    0 => 0,
                    1 => 1,
                    2 => 3,
                    _ => usize::MAX,
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
                for e in &out {
                    assert_eq!(model.remove(&(e.deadline, e.value)), Some(e.key));
                    live.remove(&e.key.to_u64());
                    assert!(wheel.cancel(e.key).is_none(), "fired key still live");
                }
                let still = model.keys().next().is_some_and(|&(d, _)| d <= now);
                assert_eq!(more, still, "more flag step {step}");
            }
        }
        assert_eq!(wheel.len(), model.len());
    }
}

#[test]
fn sparse_steps_from_inside_the_tick() {
    for seed in 0..3 {
        run(seed, 3_600 * SEC + 123_457, Clock::Steps);
    }
}

#[test]
fn sparse_sleeps_until_next_deadline() {
    for seed in 10..13 {
        run(seed, 3_600 * SEC + 999_999, Clock::Sleeps);
    }
}

#[test]
fn sparse_from_a_level_boundary() {
    // Start on the first tick of a level-2 slot: cascades line up with it.
    run(20, 4096 * 900 * MS, Clock::Steps);
    run(21, 4096 * 900 * MS + 1, Clock::Sleeps);
}
