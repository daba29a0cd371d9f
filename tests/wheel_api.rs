//! Behaviour of the public wheel API, one property per test.

use erlang_python::wheel::{
    now_monotonic_ns, Expired, TimerKey, Wheel, WheelError, WheelStats, DEFAULT_TICK_NS,
    MAX_TICK_NS, MIN_TICK_NS, NEVER,
};

const MS: u64 = 1_000_000;
/// A start time that is not tick-aligned, as a real clock would give.
const START: u64 = 5_000 * MS + 123_457;

fn fire_all<T>(wheel: &mut Wheel<T>, now: u64) -> Vec<Expired<T>> {
    let mut out = Vec::new();
    assert!(!wheel.advance(now, &mut out, usize::MAX));
    out
}

fn values<T: Copy>(fired: &[Expired<T>]) -> Vec<T> {
    fired.iter().map(|e| e.value).collect()
}

#[test]
fn fires_at_its_deadline_and_never_before() {
    let mut wheel = Wheel::new(START);
    let deadline = START + 10 * MS + 300_000;
    let key = wheel.insert(deadline, "t");
    assert_eq!(wheel.len(), 1);
    assert!(fire_all(&mut wheel, deadline - 1).is_empty());
    let fired = fire_all(&mut wheel, deadline);
    assert_eq!(
        fired,
        [Expired {
            key,
            deadline,
            value: "t"
        }]
    );
    assert!(wheel.is_empty());
}

#[test]
fn equal_deadlines_fire_fifo() {
    let mut wheel = Wheel::new(START);
    let deadline = START + 70 * MS;
    for v in 0..100 {
        wheel.insert(deadline, v);
    }
    // Same deadline reached through different paths: inserted later, when
    // it sits on a lower level.
    let mut out = Vec::new();
    wheel.advance(START + 69 * MS, &mut out, usize::MAX);
    assert!(out.is_empty());
    for v in 100..110 {
        wheel.insert(deadline, v);
    }
    assert_eq!(
        values(&fire_all(&mut wheel, deadline)),
        (0..110).collect::<Vec<_>>()
    );
}

#[test]
fn sub_tick_deadlines_keep_their_order() {
    let mut wheel = Wheel::new(START - START % MS);
    let base = START - START % MS + 5 * MS;
    wheel.insert(base + 200_000, "1.2");
    wheel.insert(base + 100_000, "1.1");
    wheel.insert(base + 900_000, "1.9");
    wheel.insert(base + 100_000, "1.1 again");
    assert_eq!(
        values(&fire_all(&mut wheel, base + MS)),
        ["1.1", "1.1 again", "1.2", "1.9"]
    );
}

#[test]
fn a_dense_tick_fires_in_deadline_then_insertion_order() {
    // Hundreds of timers in one tick (the bucket-sorted path), with groups
    // of equal deadlines, some cascaded from level 1 and some inserted
    // late, straight into level 0, in no particular order.
    let tick_start = START - START % MS + 100 * MS;
    let mut wheel = Wheel::new(START);
    let mut want: Vec<(u64, usize)> = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut offset = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Few distinct offsets in a third of the cases: many ties.
        if state.is_multiple_of(3) {
            (state >> 8) % 4 * 1000
        } else {
            (state >> 8) % MS
        }
    };
    for seq in 0..300 {
        let deadline = tick_start + offset();
        wheel.insert(deadline, seq);
        want.push((deadline, seq));
    }
    let mut out = Vec::new();
    wheel.advance(tick_start - MS / 2, &mut out, usize::MAX);
    assert!(out.is_empty());
    for seq in 300..600 {
        let deadline = tick_start + offset();
        wheel.insert(deadline, seq);
        want.push((deadline, seq));
    }
    want.sort_unstable();
    let fired = fire_all(&mut wheel, tick_start + MS);
    let got: Vec<(u64, usize)> = fired.iter().map(|e| (e.deadline, e.value)).collect();
    assert_eq!(got, want);
}

#[test]
fn advance_inside_a_tick_fires_only_what_is_due() {
    let mut wheel = Wheel::new(START - START % MS);
    let base = START - START % MS + 5 * MS;
    wheel.insert(base + 200_000, 2);
    wheel.insert(base + 100_000, 1);
    assert_eq!(wheel.next_deadline(), Some(base + 100_000));
    assert_eq!(values(&fire_all(&mut wheel, base + 150_000)), [1]);
    assert_eq!(wheel.next_deadline(), Some(base + 200_000));
    assert_eq!(values(&fire_all(&mut wheel, base + 200_000)), [2]);
    assert_eq!(wheel.stats().spurious_advances, 0);
}

#[test]
fn max_bounds_each_advance_and_signals_more() {
    let mut wheel = Wheel::new(START);
    for v in 0..10 {
        wheel.insert(START + MS + v, v);
    }
    let now = START + 2 * MS;
    let mut out = Vec::new();
    assert!(wheel.advance(now, &mut out, 4));
    assert_eq!(values(&out), [0, 1, 2, 3]);
    assert!(wheel.advance(now, &mut out, 4));
    assert!(!wheel.advance(now, &mut out, 4));
    assert_eq!(values(&out), (0..10).collect::<Vec<_>>());
    // `max == 0` moves nothing but still says more is due.
    wheel.insert(now, 10);
    assert!(wheel.advance(now, &mut out, 0));
    assert_eq!(out.len(), 10);
    assert!(!wheel.advance(now, &mut out, 1));
    assert_eq!(out.len(), 11);
}

#[test]
fn more_is_false_when_only_future_timers_remain() {
    let mut wheel = Wheel::new(START);
    wheel.insert(START + MS, 0);
    wheel.insert(START + MS + 1, 1);
    let mut out = Vec::new();
    assert!(!wheel.advance(START + MS, &mut out, 1));
    assert_eq!(values(&out), [0]);
}

#[test]
fn past_deadlines_come_out_on_the_next_advance_in_order() {
    let mut wheel = Wheel::new(START);
    let mut out = Vec::new();
    wheel.advance(START + 100 * MS, &mut out, usize::MAX);
    wheel.insert(START + 50 * MS, "later past");
    wheel.insert(START + 10 * MS, "earlier past");
    wheel.insert(0, "zero");
    assert_eq!(wheel.next_deadline(), Some(0));
    assert_eq!(
        values(&fire_all(&mut wheel, START + 100 * MS)),
        ["zero", "earlier past", "later past"]
    );
}

#[test]
fn cancelled_due_timers_stay_cancelled_when_their_memory_is_reused() {
    // Due timers (past deadlines, and a bounded advance's leftovers) are
    // cancelled in every position; their slots are reused by new due timers.
    let mut wheel = Wheel::new(START);
    let mut out = Vec::new();
    wheel.advance(START + 100 * MS, &mut out, usize::MAX);
    let keys: Vec<TimerKey> = (0..1000u64)
        .map(|v| wheel.insert(START + (v * 7919) % 1000 * 1000, v))
        .collect();
    // Leaves 999 due behind, then cancels all but every 10th.
    assert!(wheel.advance(START + 100 * MS, &mut out, 1));
    let first = out[0].value;
    let mut expected: Vec<(u64, u64)> = Vec::new();
    for (v, &key) in keys.iter().enumerate() {
        let v = v as u64;
        if v == first {
            continue;
        }
        if v.is_multiple_of(10) {
            expected.push(((v * 7919) % 1000, v));
        } else {
            assert_eq!(wheel.cancel(key), Some(v));
        }
    }
    for v in 1000..1100u64 {
        wheel.insert(START + (v * 13) % 1000 * 1000, v);
        expected.push(((v * 13) % 1000, v));
    }
    expected.sort();
    assert_eq!(wheel.len(), expected.len());
    assert_eq!(wheel.next_deadline(), Some(START + expected[0].0 * 1000));
    let fired = fire_all(&mut wheel, START + 100 * MS);
    let fired: Vec<u64> = fired.iter().map(|e| e.value).collect();
    let expected: Vec<u64> = expected.iter().map(|&(_, v)| v).collect();
    assert_eq!(fired, expected);
    assert!(wheel.is_empty());
}

#[test]
fn backwards_clock_is_clamped() {
    let mut wheel = Wheel::new(START);
    let mut out = Vec::new();
    wheel.advance(START + 10 * MS, &mut out, usize::MAX);
    let key = wheel.insert(START + 11 * MS, ());
    wheel.advance(START, &mut out, usize::MAX);
    wheel.advance(0, &mut out, usize::MAX);
    assert_eq!(wheel.now(), START + 10 * MS);
    assert!(out.is_empty());
    assert!(wheel.contains(key));
    // A deadline between the backwards `now` and the real time is past.
    wheel.insert(START + 5 * MS, ());
    assert_eq!(fire_all(&mut wheel, START).len(), 1);
    assert_eq!(fire_all(&mut wheel, START + 11 * MS).len(), 1);
}

#[test]
fn tick_range_is_enforced() {
    assert_eq!(Wheel::<()>::new(0).tick_ns(), DEFAULT_TICK_NS);
    assert_eq!(DEFAULT_TICK_NS, MS);
    assert!(Wheel::<()>::with_tick(MIN_TICK_NS, START).is_ok());
    assert!(Wheel::<()>::with_tick(MAX_TICK_NS, START).is_ok());
    for bad in [0, 99_999, 100_000_001, u64::MAX] {
        let err = Wheel::<()>::with_tick(bad, START).err();
        assert_eq!(err, Some(WheelError::TickOutOfRange { tick_ns: bad }));
        assert!(err.unwrap().to_string().contains(&bad.to_string()));
    }
}

#[test]
fn coarse_and_fine_ticks_never_fire_early() {
    for tick in [MIN_TICK_NS, 250_000, MS, 16 * MS, MAX_TICK_NS] {
        let mut wheel = Wheel::with_tick(tick, START).unwrap();
        let deadlines: Vec<u64> = (1..50).map(|i| START + i * 7_654_321).collect();
        for &d in &deadlines {
            wheel.insert(d, d);
        }
        let mut now = START;
        let mut out = Vec::new();
        while !wheel.is_empty() {
            now += 1_000_003;
            out.clear();
            wheel.advance(now, &mut out, usize::MAX);
            for e in &out {
                assert!(
                    e.deadline <= now,
                    "tick {tick}: {} fired at {now}",
                    e.deadline
                );
                assert!(now - e.deadline <= 1_000_003, "tick {tick}: late");
            }
        }
    }
}

#[test]
fn never_timers_are_cancellable_and_never_fire() {
    let mut wheel = Wheel::new(START);
    let a = wheel.insert(NEVER, 'a');
    let b = wheel.insert(NEVER, 'b');
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.next_deadline(), None);
    assert!(fire_all(&mut wheel, u64::MAX).is_empty());
    assert_eq!(wheel.cancel(a), Some('a'));
    assert_eq!(wheel.cancel(a), None);
    assert_eq!(wheel.deadline(b), Some(NEVER));
    assert_eq!(wheel.cancel(b), Some('b'));
    assert!(wheel.is_empty());
}

#[test]
fn far_future_deadlines_fire_after_a_long_jump() {
    let year = 365 * 24 * 3600 * 1_000 * MS;
    let mut wheel = Wheel::new(START);
    wheel.insert(START + 500 * year, "500y");
    wheel.insert(START + 2 * year, "2y");
    wheel.insert(u64::MAX - 1, "max");
    wheel.insert(NEVER, "never");
    assert_eq!(wheel.next_deadline(), Some(START + 2 * year));
    assert!(fire_all(&mut wheel, START + 2 * year - 1).is_empty());
    assert_eq!(values(&fire_all(&mut wheel, START + 2 * year)), ["2y"]);
    assert_eq!(wheel.next_deadline(), Some(START + 500 * year));
    assert_eq!(values(&fire_all(&mut wheel, START + 500 * year)), ["500y"]);
    assert_eq!(values(&fire_all(&mut wheel, u64::MAX)), ["max"]);
    assert_eq!(wheel.len(), 1);
}

#[test]
fn stale_and_garbage_keys_are_inert() {
    let mut wheel = Wheel::new(START);
    let fired = wheel.insert(START + MS, 1);
    fire_all(&mut wheel, START + MS);
    assert_eq!(wheel.cancel(fired), None, "cancel after fire");

    let cancelled = wheel.insert(START + MS * 3, 2);
    assert_eq!(wheel.cancel(cancelled), Some(2));
    assert_eq!(wheel.cancel(cancelled), None, "double cancel");

    // The slot of `cancelled` is reused by the next insert.
    let reused = wheel.insert(START + MS * 4, 3);
    assert_eq!(reused.index(), cancelled.index());
    assert_eq!(wheel.cancel(cancelled), None, "reused slot");
    assert_eq!(wheel.cancel(fired), None, "reused slot");

    for raw in [
        0,
        1,
        u64::MAX,
        0xffff_ffff,
        1 << 32 | 77,
        0x1234_5678_9abc_def0,
    ] {
        assert_eq!(
            wheel.cancel(TimerKey::from_u64(raw)),
            None,
            "garbage {raw:#x}"
        );
    }
    let round_trip = TimerKey::from_u64(reused.to_u64());
    assert_eq!(wheel.cancel(round_trip), Some(3));
    assert!(wheel.is_empty());
}

#[test]
fn cancelled_memory_is_reused_at_once() {
    let mut wheel = Wheel::new(START);
    let keys: Vec<TimerKey> = (0..1000).map(|i| wheel.insert(START + i * MS, i)).collect();
    for k in keys {
        wheel.cancel(k);
    }
    let max_index = (0..1000)
        .map(|i| wheel.insert(START + i * MS, i).index())
        .max();
    assert_eq!(max_index, Some(999), "the slab did not grow");
}

#[test]
fn stats_count_everything() {
    let mut wheel = Wheel::new(START);
    let a = wheel.insert(START + 100 * MS, ());
    wheel.insert(START + 200 * MS, ());
    wheel.insert(START + 300 * MS, ());
    wheel.cancel(a);
    wheel.cancel(a);
    let mut out = Vec::new();
    wheel.advance(START + 250 * MS, &mut out, usize::MAX);
    let stats = wheel.stats();
    assert_eq!(
        WheelStats {
            cascaded: 0,
            ..stats
        },
        WheelStats {
            inserted: 3,
            cancelled: 1,
            fired: 1,
            cascaded: 0,
            spurious_advances: 0,
            live: 1,
        }
    );
    assert!(stats.cascaded >= 1, "{stats:?}");
}

#[test]
fn spurious_advance_is_counted() {
    let mut wheel = Wheel::new(START);
    let key = wheel.insert(START + 10 * MS, ());
    let next = wheel.next_deadline().unwrap();
    wheel.cancel(key);
    let mut out = Vec::new();
    wheel.advance(next, &mut out, usize::MAX);
    assert_eq!(wheel.stats().spurious_advances, 1);
    // Without a next_deadline call in between, an empty advance is not one.
    wheel.advance(next + MS, &mut out, usize::MAX);
    assert_eq!(wheel.stats().spurious_advances, 1);
}

#[test]
fn next_deadline_is_none_when_empty_and_exact_in_level_zero() {
    let mut wheel = Wheel::new(START);
    assert_eq!(wheel.next_deadline(), None);
    wheel.insert(START + 20 * MS + 5, ());
    wheel.insert(START + 20 * MS + 3, ());
    assert_eq!(wheel.next_deadline(), Some(START + 20 * MS + 3));
}

#[test]
fn a_u64_timer_takes_40_bytes() {
    // At most 48 bytes per timer besides the payload; 32 in fact.
    assert_eq!(Wheel::<u64>::BYTES_PER_TIMER, 40);
    const {
        assert!(Wheel::<u64>::BYTES_PER_TIMER - std::mem::size_of::<u64>() <= 48);
        assert!(Wheel::<[u64; 4]>::BYTES_PER_TIMER - 32 <= 48);
    }
}

#[test]
fn clock_is_monotonic() {
    let a = now_monotonic_ns();
    let b = now_monotonic_ns();
    assert!(b >= a);
    assert!(a > 0);
}

#[test]
fn get_and_iter_see_exactly_the_live_timers_wherever_they_are() {
    let mut wheel = Wheel::new(START);
    let due = wheel.insert(START, "due"); // the due queue on the next advance
    let near = wheel.insert(START + 5 * MS, "near"); // level 0
    let far = wheel.insert(START + 3_600_000 * MS, "far"); // a higher level
    let never = wheel.insert(NEVER, "never"); // the overflow list
    let gone = wheel.insert(START + 7 * MS, "gone");
    assert_eq!(wheel.cancel(gone), Some("gone"));
    let mut out = Vec::new();
    wheel.advance(START + 1, &mut out, 0); // `due` moves to the due queue, unfired
    assert!(out.is_empty());
    assert_eq!(wheel.get(due), Some(&"due"));
    assert_eq!(wheel.get(gone), None);
    let mut live: Vec<(TimerKey, &str)> = wheel.iter().map(|(k, v)| (k, *v)).collect();
    live.sort_by_key(|(k, _)| k.to_u64());
    let mut expected = vec![(due, "due"), (near, "near"), (far, "far"), (never, "never")];
    expected.sort_by_key(|(k, _)| k.to_u64());
    assert_eq!(live, expected);
    assert_eq!(
        values(&fire_all(&mut wheel, START + 5 * MS)),
        ["due", "near"]
    );
    assert_eq!(wheel.get(near), None);
    assert_eq!(wheel.iter().count(), 2);
}

#[test]
fn an_emptied_wheel_gives_its_memory_back_and_old_keys_stay_stale() {
    let mut wheel = Wheel::new(START);
    let old: Vec<TimerKey> = (0..10_000u64)
        .map(|i| wheel.insert(START + (i % 500) * MS, i))
        .collect();
    assert!(!wheel.release_memory(), "timers are live");
    let burst = wheel.allocated_bytes();
    assert!(burst >= 10_000 * 40, "{burst} bytes for 10k timers");
    // Half fire (through the due queue), half are cancelled.
    for key in &old[..5_000] {
        wheel.cancel(*key);
    }
    assert_eq!(fire_all(&mut wheel, START + 500 * MS).len(), 5_000);
    assert!(wheel.release_memory());
    assert_eq!(wheel.allocated_bytes(), 0);
    // The slots made anew are not the ones the old keys named.
    let new: Vec<TimerKey> = (0..10_000u64)
        .map(|i| wheel.insert(START + 600 * MS, 100_000 + i))
        .collect();
    for key in &old {
        assert!(!wheel.contains(*key), "{key:?}");
        assert_eq!(wheel.cancel(*key), None, "{key:?}");
        assert!(!new.contains(key), "{key:?} handed out again");
    }
    assert_eq!(wheel.len(), 10_000);
    let fired = fire_all(&mut wheel, START + 600 * MS);
    assert_eq!(values(&fired), (100_000..110_000).collect::<Vec<u64>>());
}
