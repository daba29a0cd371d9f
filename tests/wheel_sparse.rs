//! The wheel against a model on sparse ticks (about one timer a tick, over
//! seconds: every timer cascades from level 2 to level 1 to level 0), the
//! shape the fast paths are for: the lone level-0 entry fired without the
//! due queue, and the level-1 slot cascaded straight to level 0. Ties, past
//! deadlines, cancels of entries in every place, bounded `advance`s (max 0
//! to 3), loops that sleep until `next_deadline` exactly (which is what
//! makes a lone entry due when its tick is reached) and loops that advance
//! 1 ms at a time from an offset inside the tick.
mod common;

use common::Model;
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
    let mut model = Model::new(start);
    for _ in 0..3_000 {
        model.insert(start + rng.random_range(0..10 * SEC));
    }
    for step in 0..40_000u64 {
        let now = model.now;
        match rng.random_range(0..100) {
            0..=4 => {
                // A new timer, sometimes a tie with a pending one, sometimes
                // already past.
                let d = match rng.random_range(0..4) {
                    0 => model
                        .nth_deadline(rng.random_range(0..model.len().max(1)))
                        .unwrap_or(now),
                    1 => now.saturating_sub(rng.random_range(0..3 * MS)),
                    _ => now + rng.random_range(0..10 * SEC),
                };
                model.insert(d);
            }
            5..=9 => {
                if !model.keys.is_empty() {
                    model.cancel_nth(rng.random_range(0..model.keys.len()));
                }
            }
            _ => {
                let next = model.wheel.next_deadline();
                let first = model.first_deadline();
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
                model.advance(to, max, step);
            }
        }
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

/// Advances 1 ms at a time up to `to`, collecting what fires.
fn step_to(wheel: &mut Wheel<u64>, now: &mut u64, to: u64, fired: &mut Vec<(u64, u64)>) {
    let mut out = Vec::new();
    while *now < to {
        *now = (*now + MS).min(to);
        out.clear();
        while wheel.advance(*now, &mut out, usize::MAX) {}
        fired.extend(out.iter().map(|e| (e.deadline, e.value)));
    }
}

#[test]
fn a_slot_sorted_ahead_merges_with_later_inserts_in_order() {
    let start = 3_600 * SEC + 123_457;
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let d = start + 5 * SEC; // a level-2 slot away
    let a = wheel.insert(d, 0);
    let spread: Vec<TimerKey> = (1..200)
        .map(|v| wheel.insert(d - 300 * MS + v * MS, v))
        .collect();
    let mut now = start;
    let mut fired = Vec::new();
    step_to(&mut wheel, &mut now, d - 400 * MS, &mut fired);
    assert!(fired.is_empty());
    // The slot of `d` has been reached and sorted ahead by now: its earliest
    // deadline is known exactly.
    assert_eq!(wheel.next_deadline(), Some(d - 299 * MS));
    // Cancels in the middle of the sorted run, enough to compact it.
    for key in spread.iter().step_by(2) {
        assert!(wheel.cancel(*key).is_some());
    }
    // Same deadline as `a` but inserted later, from the levels; and one
    // already past when inserted, to the due queue.
    wheel.insert(d, 1000);
    step_to(&mut wheel, &mut now, d - MS, &mut fired);
    wheel.insert(d - 2 * MS, 1001);
    wheel.insert(d, 1002);
    step_to(&mut wheel, &mut now, d + MS, &mut fired);
    // Values are in insertion order, so (deadline, value) is firing order.
    let mut want: Vec<(u64, u64)> = (1..200)
        .filter(|v| v % 2 == 0)
        .map(|v| (d - 300 * MS + v * MS, v))
        .chain([(d, 0), (d, 1000), (d - 2 * MS, 1001), (d, 1002)])
        .collect();
    want.sort_unstable();
    assert_eq!(fired, want);
    assert!(wheel.cancel(a).is_none(), "fired key still live");
    assert!(wheel.is_empty());
}

#[test]
fn a_bounded_advance_leaves_the_rest_of_a_sorted_slot_in_order() {
    let start = 3_600 * SEC + 1;
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let d = start + 6 * SEC;
    for v in 0..300 {
        wheel.insert(d + (v % 7) * MS, v);
    }
    let mut out = Vec::new();
    let mut got = Vec::new();
    // One jump past every deadline, three timers at a time.
    while wheel.advance(d + 10 * MS, &mut out, 3) {
        assert_eq!(out.len(), 3);
        got.append(&mut out);
    }
    got.append(&mut out);
    let got: Vec<(u64, u64)> = got.iter().map(|e| (e.deadline, e.value)).collect();
    let mut want: Vec<(u64, u64)> = (0..300).map(|v| (d + (v % 7) * MS, v)).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn a_past_insert_fires_before_a_later_timer_sorted_ahead() {
    // Against `advance`'s path for a sparse wheel, which pops `ahead` alone
    // when the due queue is empty: here it is not, and holds the earliest
    // timer.
    let start = 3_600 * SEC + 123_457;
    let mut wheel: Wheel<u64> = Wheel::new(start);
    let d = start + 5 * SEC; // a level-2 slot away: sorted ahead
    wheel.insert(d, 0);
    wheel.insert(d + MS, 1);
    let mut now = start;
    let mut fired = Vec::new();
    step_to(&mut wheel, &mut now, d - 10 * MS, &mut fired);
    assert!(fired.is_empty());
    wheel.insert(now - 1, 2); // already past: into the due queue
    let mut out = Vec::new();
    // One at a time, at a `now` past all three; no `while`, so a wrong path
    // fails instead of spinning.
    for _ in 0..3 {
        wheel.advance(d + 2 * MS, &mut out, 1);
    }
    let got: Vec<u64> = out.iter().map(|e| e.value).collect();
    assert_eq!(got, [2, 0, 1]);
    assert!(wheel.is_empty());
}
