//! Workloads of the wheel for counting instructions under callgrind
//! (`scripts/wheel-instructions.sh`, `make wheel-instructions`). Instruction
//! counts do not move with the machine's load, unlike criterion's times on a
//! shared VM: a change to `src/wheel` is compared by them.
//!
//! `wheel_instructions WORKLOAD` runs the workload; only the function
//! `measured` is counted (`--toggle-collect`), and the program prints how
//! many operations it did, to divide by.

use std::hint::black_box;

use erlang_python::wheel::{Expired, TimerKey, Wheel};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;
/// Not a multiple of the tick, as a real clock is not.
const START: u64 = HOUR + 123_457;
const TIMERS: usize = 10_000;
const ROUNDS: usize = 20;
/// The mixed workload: a request every 100 us, 90% done after 10 ms.
const MIXED_STEP: u64 = 100_000;
const MIXED_HOLD: u64 = 10 * MS;

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let operations = match workload.as_str() {
        "expire-dense" => expire(100 * MS),
        "expire-sparse" => expire(10 * SEC),
        "insert-cancel" => insert_cancel(),
        "mixed" => mixed(),
        _ => {
            eprintln!("usage: wheel_instructions expire-dense|expire-sparse|insert-cancel|mixed");
            std::process::exit(2);
        }
    };
    println!("operations {operations}");
}

fn delays(spread: u64, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..TIMERS).map(|_| rng.random_range(0..spread)).collect()
}

/// `TIMERS` timers spread over `spread`, fired by 1 ms advances (the
/// criterion `expire` benchmark's loop); counts the firing only. One wheel
/// for every round, as a loop keeps its wheel, after a round that is not
/// counted: the first growth of the wheel's vectors is not a cost per
/// timer.
fn expire(spread: u64) -> usize {
    let table = delays(spread, 3);
    let mut out = Vec::with_capacity(1024);
    let mut wheel = Wheel::new(START);
    let mut now = START;
    let mut fired = 0;
    for round in 0..=ROUNDS {
        for (value, &delay) in table.iter().enumerate() {
            wheel.insert(now + delay, value as u64);
        }
        if round == 0 {
            now = fire_all(&mut wheel, &mut out, now).0;
        } else {
            let (later, count) = measured_expire(&mut wheel, &mut out, now);
            now = later;
            fired += count;
        }
        black_box(&wheel);
    }
    fired
}

#[inline(never)]
fn measured_expire(wheel: &mut Wheel<u64>, out: &mut Vec<Expired<u64>>, now: u64) -> (u64, usize) {
    fire_all(wheel, out, now)
}

/// Advances 1 ms at a time from `now` until `TIMERS` timers fired; returns
/// the clock then and how many fired.
#[inline(never)]
fn fire_all(wheel: &mut Wheel<u64>, out: &mut Vec<Expired<u64>>, mut now: u64) -> (u64, usize) {
    let mut fired = 0;
    while fired < TIMERS {
        now += MS;
        out.clear();
        while wheel.advance(now, out, usize::MAX) {}
        fired += out.len();
    }
    (now, fired)
}

/// Insert-then-cancel pairs with `TIMERS` timers pending (a second to an
/// hour away); counts the pairs only.
fn insert_cancel() -> usize {
    let mut wheel = Wheel::new(START);
    let mut rng = SmallRng::seed_from_u64(42);
    for value in 0..TIMERS {
        wheel.insert(START + rng.random_range(SEC..HOUR), value as u64);
    }
    let table = delays(HOUR, 1);
    let pairs = ROUNDS * TIMERS;
    measured_insert_cancel(&mut wheel, &table, pairs);
    pairs
}

#[inline(never)]
fn measured_insert_cancel(wheel: &mut Wheel<u64>, table: &[u64], pairs: usize) {
    for i in 0..pairs {
        let key: TimerKey = wheel.insert(START + MS + table[i % table.len()], i as u64);
        black_box(wheel.cancel(key));
    }
}

/// The criterion `mixed` benchmark's steady state (the ASGI timeout
/// pattern): each step inserts a 1 s timeout 100 us after the previous one,
/// cancels the 90% whose request finished 10 ms ago, and advances the clock;
/// the rest fire. Counts the steps after a second of warm-up (the first
/// timeouts firing), `TIMERS` pending timers a day away.
fn mixed() -> usize {
    let mut wheel = Wheel::new(START);
    let mut rng = SmallRng::seed_from_u64(4);
    for value in 0..TIMERS {
        wheel.insert(START + 24 * HOUR + rng.random_range(0..HOUR), value as u64);
    }
    let cancels: Vec<bool> = (0..TIMERS).map(|_| rng.random_bool(0.9)).collect();
    let mut state = Mixed {
        now: START,
        step: 0,
        to_cancel: std::collections::VecDeque::with_capacity(1024),
        out: Vec::with_capacity(64),
    };
    let warm_up = (SEC / MIXED_STEP) as usize;
    mixed_steps(&mut wheel, &cancels, &mut state, warm_up);
    let steps = ROUNDS * TIMERS;
    measured_mixed(&mut wheel, &cancels, &mut state, steps);
    steps
}

struct Mixed {
    now: u64,
    step: usize,
    to_cancel: std::collections::VecDeque<(u64, TimerKey)>,
    out: Vec<Expired<u64>>,
}

#[inline(never)]
fn measured_mixed(wheel: &mut Wheel<u64>, cancels: &[bool], state: &mut Mixed, steps: usize) {
    mixed_steps(wheel, cancels, state, steps);
}

#[inline(never)]
fn mixed_steps(wheel: &mut Wheel<u64>, cancels: &[bool], state: &mut Mixed, steps: usize) {
    for _ in 0..steps {
        state.step += 1;
        state.now += MIXED_STEP;
        let now = state.now;
        let key = wheel.insert(now + SEC, state.step as u64);
        if cancels[state.step % cancels.len()] {
            state.to_cancel.push_back((now + MIXED_HOLD, key));
        }
        while let Some(&(at, key)) = state.to_cancel.front() {
            if at > now {
                break;
            }
            state.to_cancel.pop_front();
            black_box(wheel.cancel(key));
        }
        state.out.clear();
        while wheel.advance(now, &mut state.out, usize::MAX) {}
        black_box(&state.out);
    }
}
