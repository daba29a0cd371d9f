//! Converting between nanosecond deadlines and wheel ticks.
//!
//! Ticks are counted from zero of CLOCK_MONOTONIC, not from the wheel's
//! start, so a tick's base-64 digits (which pick its slot on each level) are
//! the same whatever the wheel's age.
//!
//! A deadline belongs to the tick that ends at or after it, `ceil(d / tick)`:
//! tick `t` holds the deadlines in `((t - 1) * tick, t * tick]`. Rounding up
//! is what makes a whole slot due once the clock reaches the end of its tick.

/// The tick of a deadline `ns`: the first tick boundary at or after it.
#[inline]
pub(crate) const fn tick_of(ns: u64, tick_ns: u64) -> u64 {
    ns.div_ceil(tick_ns)
}

/// The earliest nanosecond whose tick is `tick`: one past the end of the
/// previous tick. No deadline in tick `tick` is earlier.
#[inline]
pub(crate) const fn first_ns_of(tick: u64, tick_ns: u64) -> u64 {
    match tick {
        0 => 0,
        t => (t - 1).saturating_mul(tick_ns).saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn tick_of_rounds_up() {
        assert_eq!(tick_of(0, MS), 0);
        assert_eq!(tick_of(1, MS), 1);
        assert_eq!(tick_of(MS, MS), 1);
        assert_eq!(tick_of(MS + 1, MS), 2);
        assert_eq!(tick_of(u64::MAX, MS), u64::MAX / MS + 1);
    }

    #[test]
    fn first_ns_of_is_the_start_of_the_tick() {
        assert_eq!(first_ns_of(0, MS), 0);
        assert_eq!(first_ns_of(1, MS), 1);
        assert_eq!(first_ns_of(2, MS), MS + 1);
        for ns in [1, MS - 1, MS, MS + 1, 7 * MS + 3, u64::MAX] {
            let t = tick_of(ns, MS);
            assert!(first_ns_of(t, MS) <= ns, "ns {ns} tick {t}");
            assert_eq!(tick_of(first_ns_of(t, MS), MS), t, "ns {ns}");
        }
    }
}
