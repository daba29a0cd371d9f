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

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let operations = match workload.as_str() {
        "expire-dense" => expire(100 * MS),
        "expire-sparse" => expire(10 * SEC),
        "insert-cancel" => insert_cancel(),
        _ => {
            eprintln!("usage: wheel_instructions expire-dense|expire-sparse|insert-cancel");
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
