//! Converting between nanosecond deadlines and wheel ticks.
//!
//! Ticks are counted from zero of CLOCK_MONOTONIC, not from the wheel's
//! start, so a tick's base-64 digits (which pick its slot on each level) are
//! the same whatever the wheel's age.
//!
//! A deadline belongs to the tick that ends at or after it, `ceil(d / tick)`:
//! tick `t` holds the deadlines in `((t - 1) * tick, t * tick]`. Rounding up
//! is what makes a whole slot due once the clock reaches the end of its tick.
//!
//! The division runs on every insert, cascade and advance, and a 64-bit
//! `div` costs tens of cycles, so [`Resolution`] divides by multiplying with
//! a precomputed reciprocal instead (exact, see [`reciprocal`]).

/// The tick length and its reciprocal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// Nanoseconds per tick.
    tick_ns: u64,
    /// `floor(2^(64 + shift) / tick_ns) + 1`: the high half of the product
    /// with it, shifted right by `shift`, is the quotient by `tick_ns`
    /// (exact below `2^63`).
    multiplier: u64,
    /// `ceil(log2(tick_ns)) - 1`.
    shift: u32,
}

/// `ns - 1` below this (`ns` from 1 to `2^63`, 292 years of uptime),
/// `tick_of` divides with the reciprocal, as `floor((ns - 1) / tick_ns) + 1`;
/// otherwise (0 and the far end, `NEVER` among them) it divides for real.
/// Taking 1 off rather than adding `tick_ns - 1` makes the test one on the
/// sign bit of the number the division needs anyway.
const FAST_LIMIT: u64 = 1 << 63;

impl Resolution {
    /// `tick_ns` must be in `2..2^32` (the wheel allows 100 µs to 100 ms).
    pub(crate) const fn new(tick_ns: u64) -> Self {
        let (multiplier, shift) = reciprocal(tick_ns);
        Resolution {
            tick_ns,
            multiplier,
            shift,
        }
    }

    /// Nanoseconds per tick.
    #[inline]
    pub(crate) const fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// `floor(n / tick_ns)` for `n < 2^63`: one multiplication and a shift.
    #[inline]
    const fn fast_div(&self, n: u64) -> u64 {
        let high = ((n as u128 * self.multiplier as u128) >> 64) as u64;
        high >> self.shift
    }

    /// The tick of a deadline `ns`: the first tick boundary at or after it,
    /// `ceil(ns / tick_ns)`.
    #[inline]
    pub(crate) const fn tick_of(&self, ns: u64) -> u64 {
        match self.tick_of_usual(ns) {
            Some(tick) => tick,
            None => ns.div_ceil(self.tick_ns),
        }
    }

    /// [`tick_of`](Self::tick_of) of a deadline from 1 ns to 292 years of
    /// uptime, `None` outside (0, and `NEVER`): an insert's one compare for
    /// both its division's limit and its `NEVER` check.
    #[inline(always)]
    pub(crate) const fn tick_of_usual(&self, ns: u64) -> Option<u64> {
        let below = ns.wrapping_sub(1);
        if below < FAST_LIMIT {
            Some(self.fast_div(below) + 1)
        } else {
            None
        }
    }

    /// The earliest nanosecond whose tick is `tick`: one past the end of the
    /// previous tick. No deadline in tick `tick` is earlier.
    #[inline]
    pub(crate) const fn first_ns_of(&self, tick: u64) -> u64 {
        match tick {
            0 => 0,
            t => (t - 1).saturating_mul(self.tick_ns).saturating_add(1),
        }
    }
}

/// The multiplier and shift that divide numerators below `2^63` by `d`
/// (`2 <= d < 2^32`): `floor(n / d) = ((n * m) >> 64) >> shift`.
///
/// With `l = ceil(log2 d)`, `k = 63 + l` and `m = floor(2^k / d) + 1`,
/// `m = 2^k / d + e` with `0 < e <= 1`, so for `n < 2^63`
/// `n * m / 2^k = n / d + n * e / 2^k`, and the error term is below
/// `2^63 / 2^(63 + l) <= 1 / d`: too small to carry `n / d` past the next
/// integer, since its fractional part is at most `(d - 1) / d`. `m` fits in
/// 64 bits because `d > 2^(l - 1)` (or `d = 2^l`, giving `m = 2^63 + 1`).
/// `d >= 2` makes `k >= 64`, so the shift is "take the high half, shift it by
/// `l - 1`".
pub(crate) const fn reciprocal(d: u64) -> (u64, u32) {
    assert!(d >= 2 && d < 1 << 32, "tick length out of range");
    let l = u64::BITS - (d - 1).leading_zeros(); // ceil(log2 d)
    let m = (1u128 << (63 + l)) / d as u128 + 1;
    assert!(m <= u64::MAX as u128, "reciprocal overflows");
    (m as u64, l - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn reciprocal_of_small_and_power_of_two_divisors() {
        assert_eq!(reciprocal(2), ((1 << 63) + 1, 0));
        assert_eq!(reciprocal(4), ((1 << 63) + 1, 1));
        assert_eq!(reciprocal(3).1, 1);
        assert_eq!(reciprocal(MS).1, 19);
    }

    /// `fast_div` against `/`, on edges and on pseudo-random numerators of
    /// every size below `2^63`.
    #[test]
    fn fast_div_is_exact() {
        let divisors = [2, 3, 7, 100_000, 123_457, MS, 7_777_777, 100 * MS];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for d in divisors.into_iter().chain([(1 << 32) - 1]) {
            let r = Resolution::new(d);
            for n in [0, 1, d - 1, d, d + 1, (1 << 63) - 1] {
                assert_eq!(r.fast_div(n), n / d, "{n} / {d}");
            }
            for k in [1u64, 2, 1000, ((1 << 63) - 1) / d] {
                for n in [k * d - 1, k * d, k * d + 1] {
                    assert_eq!(r.fast_div(n), n / d, "{n} / {d}");
                }
            }
            for _ in 0..20_000 {
                // xorshift
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x >> 1) >> (x % 63);
                assert_eq!(r.fast_div(n), n / d, "{n} / {d}");
            }
        }
    }

    #[test]
    fn tick_of_rounds_up() {
        let r = Resolution::new(MS);
        assert_eq!(r.tick_of(0), 0);
        assert_eq!(r.tick_of(1), 1);
        assert_eq!(r.tick_of(MS), 1);
        assert_eq!(r.tick_of(MS + 1), 2);
        assert_eq!(r.tick_of(u64::MAX), u64::MAX / MS + 1);
        assert_eq!(r.tick_of(u64::MAX - u64::MAX % MS), u64::MAX / MS);
        for ns in [FAST_LIMIT - 1, FAST_LIMIT, FAST_LIMIT + 1, 12_345 * MS + 1] {
            assert_eq!(r.tick_of(ns), ns.div_ceil(MS), "{ns}");
        }
    }

    #[test]
    fn first_ns_of_is_the_start_of_the_tick() {
        let r = Resolution::new(MS);
        assert_eq!(r.first_ns_of(0), 0);
        assert_eq!(r.first_ns_of(1), 1);
        assert_eq!(r.first_ns_of(2), MS + 1);
        for ns in [1, MS - 1, MS, MS + 1, 7 * MS + 3, u64::MAX] {
            let t = r.tick_of(ns);
            assert!(r.first_ns_of(t) <= ns, "ns {ns} tick {t}");
            assert_eq!(r.tick_of(r.first_ns_of(t)), t, "ns {ns}");
        }
    }
}
