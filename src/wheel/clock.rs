//! The clock: CLOCK_MONOTONIC in nanoseconds.
//!
//! This is the ONE clock the event loop and the wheel share: `loop.time()`,
//! every deadline given to the wheel and every `now` passed to `advance`
//! must come from [`now_monotonic_ns`]. Mixing in another clock (a slewed
//! Erlang monotonic time, `Instant` deltas from another origin) makes timers
//! fire early or late.

/// Current CLOCK_MONOTONIC time in nanoseconds (since an arbitrary point,
/// usually boot). `std::time::Instant` reads the same clock but hides the
/// absolute value, which deadlines need.
pub fn now_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call,
    // and CLOCK_MONOTONIC is always supported on Linux and macOS.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_in_step_with_instant() {
        let a = now_monotonic_ns();
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let elapsed = start.elapsed().as_nanos() as u64;
        let b = now_monotonic_ns();
        assert!(b >= a + 2_000_000, "a {a} b {b}");
        assert!(b - a >= elapsed, "a {a} b {b} instant {elapsed}");
    }
}
