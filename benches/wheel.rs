//! The timer wheel against the two heaps event loops use:
//!
//! - `lazy_heap`: `std::collections::BinaryHeap` with lazy cancel, what
//!   asyncio does: cancel sets a flag, cancelled entries stay in the heap
//!   until they reach the top, and the heap is rebuilt without them once
//!   more than half of it is cancelled.
//! - `indexed_heap`: a binary heap with a position map, so cancel removes the
//!   entry in O(log n), what libuv does.
//!
//! Each figure is the time of one operation (one insert, one insert+cancel
//! pair, one fired timer, one step of the mixed workload (two timer
//! operations), one `next_deadline`), with 0, 10k and 1M other timers
//! pending.
//!
//! Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time: the
//! machine is shared, and time spent descheduled is not the structure's
//! cost. Set `WHEEL_BENCH_WALL=1` to measure wall time instead.
//!
//! `cargo bench --bench wheel` (about 3 minutes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use erlang_python::wheel::{Expired, Wheel};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;
const DAY: u64 = 24 * HOUR;

/// A clock reading an hour into the machine's uptime.
const START: u64 = HOUR + 123_457;

/// Other timers pending while measuring.
const PENDING: [usize; 3] = [0, 10_000, 1_000_000];

/// Timers fired per round of the expire benchmark.
const EXPIRE_TIMERS: usize = 10_000;

/// How far the expire benchmark spreads its timers: over 100 ms (the
/// delays of the Python benchmark's timer workloads: about 100 timers a
/// tick, a third of them in a level-1 slot) and over 10 s (sparse: about one
/// timer per 1 ms advance, most in level-2 slots).
const EXPIRE_SPREADS: [(&str, u64); 2] = [("100ms", 100 * MS), ("10s", 10 * SEC)];

/// Size of the precomputed table of random delays (a power of 2).
const TABLE: usize = 1 << 16;

// ---------------------------------------------------------------------------
// Measurement: thread CPU time.

/// Criterion measurement reading this thread's CPU time (or wall time when
/// `WHEEL_BENCH_WALL` is set).
struct CpuTime {
    wall: bool,
}

impl CpuTime {
    fn from_env() -> Self {
        CpuTime {
            wall: std::env::var_os("WHEEL_BENCH_WALL").is_some(),
        }
    }

    /// Nanoseconds of the clock this measurement uses.
    fn now(&self) -> u64 {
        if self.wall {
            return erlang_python::wheel::now_monotonic_ns();
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the
        // call; CLOCK_THREAD_CPUTIME_ID is supported on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        self.now()
    }
    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(self.now() - start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

/// Times a section inside `iter_custom` with the same clock.
struct Stopwatch<'a>(&'a CpuTime, u64);

impl<'a> Stopwatch<'a> {
    fn start(clock: &'a CpuTime) -> Self {
        Stopwatch(clock, clock.now())
    }
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.now() - self.1)
    }
}

type Group<'a> = BenchmarkGroup<'a, CpuTime>;

/// The operations the benchmarks need, over the three implementations.
trait Timers {
    const NAME: &'static str;
    fn new(start: u64) -> Self;
    fn insert(&mut self, deadline: u64, value: u64) -> u64;
    fn cancel(&mut self, key: u64) -> bool;
    /// `&mut` because the lazy heap drops cancelled entries from its top.
    fn next_deadline(&mut self) -> Option<u64>;
    /// Fires everything due at `now`; returns how many fired.
    fn advance(&mut self, now: u64) -> usize;
}

// ---------------------------------------------------------------------------
// The wheel.

struct WheelTimers {
    wheel: Wheel<u64>,
    out: Vec<Expired<u64>>,
}

impl Timers for WheelTimers {
    const NAME: &'static str = "wheel";

    fn new(start: u64) -> Self {
        WheelTimers {
            wheel: Wheel::new(start),
            out: Vec::with_capacity(1024),
        }
    }

    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> u64 {
        self.wheel.insert(deadline, value).to_u64()
    }

    #[inline]
    fn cancel(&mut self, key: u64) -> bool {
        self.wheel
            .cancel(erlang_python::wheel::TimerKey::from_u64(key))
            .is_some()
    }

    #[inline]
    fn next_deadline(&mut self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    #[inline]
    fn advance(&mut self, now: u64) -> usize {
        self.out.clear();
        while self.wheel.advance(now, &mut self.out, usize::MAX) {}
        self.out.len()
    }
}

// ---------------------------------------------------------------------------
// asyncio: BinaryHeap with lazy cancel.

struct LazyHeap {
    /// (deadline, insertion, handle), smallest first.
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Per handle: `TimerHandle._cancelled`.
    cancelled: Vec<bool>,
    /// Per handle: the payload.
    values: Vec<u64>,
    /// Handles no longer in the heap.
    free: Vec<u32>,
    /// Cancelled handles still in the heap (`_timer_cancelled_count`).
    cancelled_count: usize,
    seq: u64,
    fired: Vec<u64>,
}

impl LazyHeap {
    fn release(&mut self, handle: u32) {
        self.free.push(handle);
    }

    /// asyncio's `_run_once` clean-up: rebuild once more than half of a
    /// heap of over 100 entries is cancelled. Checked on cancel here, so the
    /// heap stays bounded in benchmarks that never advance.
    fn maybe_purge(&mut self) {
        if self.heap.len() > 100 && self.cancelled_count * 2 > self.heap.len() {
            let mut items = std::mem::take(&mut self.heap).into_vec();
            items.retain(|&Reverse((_, _, h))| {
                let keep = !self.cancelled[h as usize];
                if !keep {
                    self.free.push(h);
                }
                keep
            });
            self.heap = BinaryHeap::from(items);
            self.cancelled_count = 0;
        }
    }
}

impl Timers for LazyHeap {
    const NAME: &'static str = "lazy_heap";

    fn new(_start: u64) -> Self {
        LazyHeap {
            heap: BinaryHeap::new(),
            cancelled: Vec::new(),
            values: Vec::new(),
            free: Vec::new(),
            cancelled_count: 0,
            seq: 0,
            fired: Vec::with_capacity(1024),
        }
    }

    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> u64 {
        let handle = match self.free.pop() {
            Some(h) => {
                self.cancelled[h as usize] = false;
                self.values[h as usize] = value;
                h
            }
            None => {
                self.cancelled.push(false);
                self.values.push(value);
                (self.values.len() - 1) as u32
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((deadline, self.seq, handle)));
        u64::from(handle)
    }

    #[inline]
    fn cancel(&mut self, key: u64) -> bool {
        let flag = &mut self.cancelled[key as usize];
        if *flag {
            return false;
        }
        *flag = true;
        self.cancelled_count += 1;
        self.maybe_purge();
        true
    }

    #[inline]
    fn next_deadline(&mut self) -> Option<u64> {
        while let Some(&Reverse((deadline, _, h))) = self.heap.peek() {
            if !self.cancelled[h as usize] {
                return Some(deadline);
            }
            self.heap.pop();
            self.cancelled_count -= 1;
            self.release(h);
        }
        None
    }

    #[inline]
    fn advance(&mut self, now: u64) -> usize {
        self.maybe_purge();
        self.fired.clear();
        while let Some(&Reverse((deadline, _, h))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if self.cancelled[h as usize] {
                self.cancelled_count -= 1;
            } else {
                self.fired.push(self.values[h as usize]);
            }
            self.release(h);
        }
        self.fired.len()
    }
}

// ---------------------------------------------------------------------------
// libuv: binary heap with a position map, O(log n) cancel.

#[derive(Clone, Copy)]
struct Item {
    deadline: u64,
    seq: u64,
    id: u32,
}

impl Item {
    #[inline]
    fn before(&self, other: &Item) -> bool {
        (self.deadline, self.seq) < (other.deadline, other.seq)
    }
}

const NOT_IN_HEAP: u32 = u32::MAX;

struct IndexedHeap {
    heap: Vec<Item>,
    /// Per id: its index in `heap`, or `NOT_IN_HEAP`.
    pos: Vec<u32>,
    values: Vec<u64>,
    free: Vec<u32>,
    seq: u64,
    fired: Vec<u64>,
}

impl IndexedHeap {
    #[inline]
    fn set(&mut self, i: usize, item: Item) {
        self.heap[i] = item;
        self.pos[item.id as usize] = i as u32;
    }

    #[inline]
    fn sift_up(&mut self, mut i: usize) {
        let item = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            if !item.before(&self.heap[parent]) {
                break;
            }
            let p = self.heap[parent];
            self.set(i, p);
            i = parent;
        }
        self.set(i, item);
    }

    #[inline]
    fn sift_down(&mut self, mut i: usize) {
        let item = self.heap[i];
        let len = self.heap.len();
        loop {
            let left = 2 * i + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.heap[right].before(&self.heap[left]) {
                right
            } else {
                left
            };
            if !self.heap[child].before(&item) {
                break;
            }
            let c = self.heap[child];
            self.set(i, c);
            i = child;
        }
        self.set(i, item);
    }

    #[inline]
    fn remove_at(&mut self, i: usize) -> Item {
        let removed = self.heap[i];
        let last = self.heap.pop().expect("non-empty heap");
        if i < self.heap.len() {
            self.set(i, last);
            self.sift_down(i);
            self.sift_up(self.pos[last.id as usize] as usize);
        }
        self.pos[removed.id as usize] = NOT_IN_HEAP;
        self.free.push(removed.id);
        removed
    }
}

impl Timers for IndexedHeap {
    const NAME: &'static str = "indexed_heap";

    fn new(_start: u64) -> Self {
        IndexedHeap {
            heap: Vec::new(),
            pos: Vec::new(),
            values: Vec::new(),
            free: Vec::new(),
            seq: 0,
            fired: Vec::with_capacity(1024),
        }
    }

    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> u64 {
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = value;
                id
            }
            None => {
                self.values.push(value);
                self.pos.push(NOT_IN_HEAP);
                (self.values.len() - 1) as u32
            }
        };
        self.seq += 1;
        let item = Item {
            deadline,
            seq: self.seq,
            id,
        };
        self.heap.push(item);
        self.sift_up(self.heap.len() - 1);
        u64::from(id)
    }

    #[inline]
    fn cancel(&mut self, key: u64) -> bool {
        match self.pos.get(key as usize) {
            Some(&p) if p != NOT_IN_HEAP => {
                self.remove_at(p as usize);
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn next_deadline(&mut self) -> Option<u64> {
        self.heap.first().map(|item| item.deadline)
    }

    #[inline]
    fn advance(&mut self, now: u64) -> usize {
        self.fired.clear();
        while self.heap.first().is_some_and(|item| item.deadline <= now) {
            let item = self.remove_at(0);
            self.fired.push(self.values[item.id as usize]);
        }
        self.fired.len()
    }
}

// ---------------------------------------------------------------------------
// Workloads.

/// Random delays in `lo..hi`, precomputed so the RNG is not measured.
fn delays(lo: u64, hi: u64, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..TABLE).map(|_| rng.random_range(lo..hi)).collect()
}

/// A structure holding `pending` timers due in a second to an hour.
fn filled<T: Timers>(pending: usize) -> T {
    let mut t = T::new(START);
    let mut rng = SmallRng::seed_from_u64(42);
    for v in 0..pending {
        t.insert(START + rng.random_range(SEC..HOUR), v as u64);
    }
    t
}

fn insert_cancel<T: Timers>(g: &mut Group<'_>, pending: usize) {
    let mut t = filled::<T>(pending);
    let table = delays(MS, HOUR, 1);
    let mut i = 0usize;
    g.bench_function(BenchmarkId::new(T::NAME, pending), |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = t.insert(START + table[i % TABLE], i as u64);
            black_box(t.cancel(key))
        })
    });
}

fn insert<T: Timers>(g: &mut Group<'_>, pending: usize) {
    const BATCH: u64 = 8192;
    let mut t = filled::<T>(pending);
    let table = delays(MS, HOUR, 2);
    let mut keys = Vec::with_capacity(BATCH as usize);
    let mut i = 0usize;
    let clock = CpuTime::from_env();
    g.bench_function(BenchmarkId::new(T::NAME, pending), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = BATCH.min(iters - done);
                let started = Stopwatch::start(&clock);
                for _ in 0..n {
                    i = i.wrapping_add(1);
                    keys.push(t.insert(START + table[i % TABLE], i as u64));
                }
                total += started.elapsed();
                // Back to `pending` timers, unmeasured.
                for key in keys.drain(..) {
                    t.cancel(key);
                }
                done += n;
            }
            total
        })
    });
}

/// Fires 10k timers spread over `spread`, the clock moving 1 ms per
/// advance, as a loop would see them, with `pending` other timers (due in
/// 10 to 20 days: never reached) in the structure all along. The clock keeps moving from
/// round to round: each round inserts its 10k timers from the current time.
fn expire<T: Timers>(g: &mut Group<'_>, spread: u64, pending: usize) {
    let table = delays(0, spread, 3);
    let clock = CpuTime::from_env();
    let mut t = T::new(START);
    let mut rng = SmallRng::seed_from_u64(5);
    for v in 0..pending {
        t.insert(START + 10 * DAY + rng.random_range(0..10 * DAY), v as u64);
    }
    let mut now = START;
    g.bench_function(BenchmarkId::new(T::NAME, pending), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                for (v, &delay) in table[..EXPIRE_TIMERS].iter().enumerate() {
                    t.insert(now + delay, v as u64);
                }
                let started = Stopwatch::start(&clock);
                let mut fired = 0;
                while fired < EXPIRE_TIMERS {
                    now += MS;
                    fired += t.advance(now);
                }
                let elapsed = started.elapsed();
                let n = (EXPIRE_TIMERS as u64).min(iters - done);
                total += elapsed.mul_f64(n as f64 / EXPIRE_TIMERS as f64);
                done += n;
            }
            total
        })
    });
    assert!(now < START + 10 * DAY, "the pending timers would fire");
    drop(black_box(t));
}

/// The ASGI timeout pattern, steady state: each step is a request arriving
/// every 100 µs with a 1 s timeout; 90% of requests finish after 10 ms and
/// cancel their timeout, the rest time out and fire. Each step inserts one
/// timer, cancels 0.9 on average, fires 0.1 and advances the clock: two
/// timer operations (an insert, then a cancel or a fire) per step. The
/// `pending` timers are background ones due in a day or two.
fn mixed<T: Timers>(g: &mut Group<'_>, pending: usize) {
    const STEP: u64 = 100 * US;
    const TIMEOUT: u64 = SEC;
    const HOLD: u64 = 10 * MS;
    let mut t = T::new(START);
    let mut rng = SmallRng::seed_from_u64(4);
    for v in 0..pending {
        t.insert(START + DAY + rng.random_range(0..DAY), v as u64);
    }
    let cancels: Vec<bool> = (0..TABLE).map(|_| rng.random_bool(0.9)).collect();
    let mut to_cancel: VecDeque<(u64, u64)> = VecDeque::with_capacity(1024);
    let mut now = START;
    let mut i = 0usize;
    g.bench_function(BenchmarkId::new(T::NAME, pending), |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now += STEP;
            let key = t.insert(now + TIMEOUT, i as u64);
            if cancels[i % TABLE] {
                to_cancel.push_back((now + HOLD, key));
            }
            while let Some(&(at, key)) = to_cancel.front() {
                if at > now {
                    break;
                }
                to_cancel.pop_front();
                t.cancel(key);
            }
            black_box(t.advance(now))
        })
    });
}

fn next_deadline<T: Timers>(g: &mut Group<'_>, pending: usize) {
    let mut t = filled::<T>(pending);
    g.bench_function(BenchmarkId::new(T::NAME, pending), |b| {
        // As a plain u64: black-boxing a 16-byte `Option` stalls on store
        // forwarding and would dominate the figure.
        b.iter(|| t.next_deadline().unwrap_or(u64::MAX))
    });
}

// ---------------------------------------------------------------------------

fn configure<'a>(c: &'a mut Criterion<CpuTime>, name: &str) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g
}

fn per_pending(c: &mut Criterion<CpuTime>, name: &str, run: [fn(&mut Group<'_>, usize); 3]) {
    let mut g = configure(c, name);
    for pending in PENDING {
        for f in run {
            f(&mut g, pending);
        }
    }
    g.finish();
}

fn benches(c: &mut Criterion<CpuTime>) {
    per_pending(
        c,
        "insert_cancel",
        [
            insert_cancel::<WheelTimers>,
            insert_cancel::<LazyHeap>,
            insert_cancel::<IndexedHeap>,
        ],
    );
    per_pending(
        c,
        "insert",
        [
            insert::<WheelTimers>,
            insert::<LazyHeap>,
            insert::<IndexedHeap>,
        ],
    );
    for (name, spread) in EXPIRE_SPREADS {
        let mut g = configure(c, &format!("expire_10k_over_{name}"));
        for pending in PENDING {
            expire::<WheelTimers>(&mut g, spread, pending);
            expire::<LazyHeap>(&mut g, spread, pending);
            expire::<IndexedHeap>(&mut g, spread, pending);
        }
        g.finish();
    }
    per_pending(
        c,
        "mixed_90pct_cancel",
        [
            mixed::<WheelTimers>,
            mixed::<LazyHeap>,
            mixed::<IndexedHeap>,
        ],
    );
    per_pending(
        c,
        "next_deadline",
        [
            next_deadline::<WheelTimers>,
            next_deadline::<LazyHeap>,
            next_deadline::<IndexedHeap>,
        ],
    );
}

criterion_group! {
    name = wheel_benches;
    config = Criterion::default().with_measurement(CpuTime::from_env());
    targets = benches
}
criterion_main!(wheel_benches);
