//! Sorting one run of the due queue by deadline.
//!
//! A run is the entries of one tick, in the order they reached their slot
//! (insertion order, not deadline order). A dense tick holds hundreds of
//! timers (asyncio programs schedule that many per millisecond) with
//! deadlines spread over the tick, and a comparison sort of them was half of
//! the cost of expiring a timer. Their deadlines lie in one small range, so a
//! bucket sort on the high bits of the offset into that range is linear for
//! them; buckets that still hold several keys (clustered deadlines) are
//! sorted on their own, which keeps the worst case at O(n log n).
//!
//! Keys of equal deadline fire in insertion order. Keys do not carry their
//! insertion number (it would make them 24 bytes instead of 16), so ties,
//! rare outside `call_at` with one `when`, ask the caller for it.

use super::due::DueKey;

/// Runs this short are sorted by comparison: the buckets would cost more.
const BUCKET_MIN: usize = 32;

/// Scratch memory kept for the next run at most (keys); a larger run's is
/// given back, so one burst of timers does not pin its memory for good.
pub(crate) const SCRATCH_KEEP: usize = 1 << 16;

/// The least and greatest deadline of some keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl Bounds {
    /// The bounds of no key: any key's deadline is both a new min and max.
    pub(crate) const EMPTY: Bounds = Bounds {
        min: u64::MAX,
        max: 0,
    };

    /// Widens the bounds to take in `deadline`.
    #[inline(always)]
    pub(crate) fn take_in(&mut self, deadline: u64) {
        self.min = self.min.min(deadline);
        self.max = self.max.max(deadline);
    }

    /// The bounds of `keys`.
    pub(crate) fn of(keys: &[DueKey]) -> Bounds {
        let mut bounds = Bounds::EMPTY;
        for key in keys {
            bounds.take_in(key.deadline);
        }
        bounds
    }
}

/// Reusable memory for [`sort_run`], kept by the due queue so a
/// steady state allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    keys: Vec<DueKey>,
    starts: Vec<u32>,
}

impl Scratch {
    /// Bytes held.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<DueKey>()
            + self.starts.capacity() * std::mem::size_of::<u32>()
    }
}

/// Sorts `run` by deadline, then by insertion number `seq_of(index)`. A run
/// already in order (one entry, or deadlines inserted in order) costs one
/// pass.
pub(crate) fn sort_run(run: &mut [DueKey], scratch: &mut Scratch, seq_of: impl Fn(u32) -> u64) {
    if run.is_sorted_by(|a, b| !fires_after(a, b, &seq_of)) {
        return;
    }
    if run.len() < BUCKET_MIN {
        insertion_sort(run, &seq_of);
        return;
    }
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    keys.resize(run.len(), DueKey::default());
    bucket_sort_into(
        run,
        Bounds::of(run),
        &mut keys,
        &mut scratch.starts,
        &seq_of,
    );
    run.copy_from_slice(&keys);
    if keys.capacity() <= SCRATCH_KEEP {
        scratch.keys = keys;
    } else {
        scratch.starts = Vec::new();
    }
}

/// Writes the keys of `src` into `dst` (of the same length) in the order of
/// [`sort_run`]. For a run gathered apart from its destination: the keys
/// are scattered straight into place, without `sort_run`'s copy back.
/// `bounds` hold every deadline of `src`: its least and greatest, or a
/// range known to the caller without a pass over the keys (the span of the
/// slot they came from), wider by little.
pub(crate) fn sort_into(
    src: &[DueKey],
    bounds: Bounds,
    dst: &mut [DueKey],
    scratch: &mut Scratch,
    seq_of: impl Fn(u32) -> u64,
) {
    if src.len() < BUCKET_MIN || src.is_sorted_by(|a, b| !fires_after(a, b, &seq_of)) {
        dst.copy_from_slice(src);
        insertion_sort(dst, &seq_of);
        return;
    }
    bucket_sort_into(src, bounds, dst, &mut scratch.starts, &seq_of);
    if scratch.starts.capacity() > SCRATCH_KEEP {
        scratch.starts = Vec::new();
    }
}

/// The bucket sort of `src` into `dst` (see the module documentation), for
/// runs of `BUCKET_MIN` keys or more; `starts` is scratch memory.
fn bucket_sort_into(
    src: &[DueKey],
    Bounds { min, max }: Bounds,
    dst: &mut [DueKey],
    starts: &mut Vec<u32>,
    seq_of: &impl Fn(u32) -> u64,
) {
    debug_assert_eq!(src.len(), dst.len());
    debug_assert!(
        src.iter().all(|key| (min..=max).contains(&key.deadline)),
        "keys outside {min}..={max}"
    );
    let span = max - min;
    if span == 0 {
        dst.copy_from_slice(src);
        dst.sort_unstable_by_key(|key| seq_of(key.index));
        return;
    }
    // About one bucket per key: keep the top `bits` significant bits of the
    // offset, so there are at most 2^bits <= src.len() buckets.
    let bits = src.len().ilog2();
    let shift = (u64::BITS - span.leading_zeros()).saturating_sub(bits);
    let buckets = (span >> shift) as usize + 1;
    let bucket = |key: &DueKey| ((key.deadline - min) >> shift) as usize;

    starts.clear();
    starts.resize(buckets + 1, 0);
    for key in src {
        starts[bucket(key)] += 1;
    }
    // Counts to start offsets, the sum in a register (not carried through
    // memory from one bucket to the next).
    let mut sum = 0;
    let mut crowded = false;
    for start in starts.iter_mut() {
        let count = *start;
        *start = sum;
        sum += count;
        crowded |= count as usize >= BUCKET_MIN;
    }
    // `starts[b]` walks bucket b's range as keys land in it; afterwards it is
    // the end of bucket b, that is the start of bucket b + 1.
    for key in src {
        let at = &mut starts[bucket(key)];
        dst[*at as usize] = *key;
        *at += 1;
    }
    if crowded {
        // Clustered deadlines: a bucket this full is sorted on its own, in
        // O(k log k) rather than by the insertions below.
        let mut start = 0;
        for &end in &starts[..buckets] {
            let end = end as usize;
            if end - start >= BUCKET_MIN {
                comparison_sort(&mut dst[start..end], seq_of);
            }
            start = end;
        }
    }
    // Every bucket's keys sort before the next bucket's, and what is still
    // out of order lies inside a bucket of fewer than `BUCKET_MIN` keys: one
    // insertion pass over the whole run finishes it, a key moving only within
    // its bucket. Cheaper than visiting every bucket (most hold one key).
    insertion_sort(dst, seq_of);
}

/// Sorts a few keys; cheaper than a call into the general sort for the one
/// or two keys a bucket usually holds.
#[inline]
fn insertion_sort(keys: &mut [DueKey], seq_of: &impl Fn(u32) -> u64) {
    for i in 1..keys.len() {
        if !fires_after(&keys[i - 1], &keys[i], seq_of) {
            // Already in place: the usual case, without a store.
            continue;
        }
        let key = keys[i];
        let mut j = i;
        while j > 0 && fires_after(&keys[j - 1], &key, seq_of) {
            keys[j] = keys[j - 1];
            j -= 1;
        }
        keys[j] = key;
    }
}

#[inline(always)]
fn fires_after(a: &DueKey, b: &DueKey, seq_of: &impl Fn(u32) -> u64) -> bool {
    a.deadline > b.deadline || (a.deadline == b.deadline && seq_of(a.index) > seq_of(b.index))
}

/// Sorts many keys: by deadline alone (a fast key), then each group of
/// equal deadlines by insertion number.
fn comparison_sort(keys: &mut [DueKey], seq_of: &impl Fn(u32) -> u64) {
    keys.sort_unstable_by_key(|key| key.deadline);
    let mut start = 0;
    while start < keys.len() {
        let deadline = keys[start].deadline;
        let mut end = start + 1;
        while end < keys.len() && keys[end].deadline == deadline {
            end += 1;
        }
        if end - start > 1 {
            keys[start..end].sort_unstable_by_key(|key| seq_of(key.index));
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn keys(deadlines: &[u64]) -> Vec<DueKey> {
        deadlines
            .iter()
            .enumerate()
            .map(|(i, &deadline)| DueKey {
                deadline,
                index: i as u32,
                generation: 1,
            })
            .collect()
    }

    /// Sorts keys whose insertion number is their index reversed (so a
    /// tie kept in arrival order would be wrong) and checks the order.
    fn check(deadlines: &[u64]) {
        let n = deadlines.len() as u64;
        let seq_of = |index: u32| n - u64::from(index);
        let src = keys(deadlines);
        let mut into = vec![DueKey::default(); src.len()];
        sort_into(
            &src,
            Bounds::of(&src),
            &mut into,
            &mut Scratch::default(),
            seq_of,
        );
        // Bounds wider than the keys' (a slot's range) sort alike.
        let mut wide = vec![DueKey::default(); src.len()];
        let bounds = Bounds::of(&src);
        sort_into(
            &src,
            Bounds {
                min: bounds.min.saturating_sub(1_000_000),
                max: bounds.max.saturating_add(1_000_000),
            },
            &mut wide,
            &mut Scratch::default(),
            seq_of,
        );
        assert_eq!(into, wide, "wider bounds sort otherwise");
        let mut run = src;
        sort_run(&mut run, &mut Scratch::default(), seq_of);
        assert_eq!(into, run, "sort_into and sort_run disagree");
        let got: Vec<(u64, u64)> = run.iter().map(|k| (k.deadline, seq_of(k.index))).collect();
        let mut want: Vec<(u64, u64)> = (0..deadlines.len())
            .map(|i| (deadlines[i], seq_of(i as u32)))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn sorts_runs_of_every_shape() {
        let mut rng = SmallRng::seed_from_u64(7);
        for len in [0, 1, 2, 31, 32, 33, 100, 1000, 5000] {
            let tick = 1_000_000u64;
            let base = 3_600_000 * tick;
            // Spread over a tick, clustered, equal, with an outlier, huge.
            check(
                &(0..len)
                    .map(|_| base + rng.random_range(0..tick))
                    .collect::<Vec<_>>(),
            );
            check(
                &(0..len)
                    .map(|_| base + rng.random_range(0..8))
                    .collect::<Vec<_>>(),
            );
            check(&vec![base; len]);
            let mut outlier: Vec<u64> = (0..len).map(|i| base + (i as u64 % 3)).collect();
            outlier.push(u64::MAX - 1);
            check(&outlier);
            check(&(0..len).map(|_| rng.random::<u64>()).collect::<Vec<_>>());
            check(&(0..len as u64).rev().collect::<Vec<_>>());
        }
    }

    #[test]
    fn scratch_is_reused() {
        let mut scratch = Scratch::default();
        for len in [100, 40, 300] {
            let mut run = keys(&(0..len as u64).rev().map(|d| d * 1000).collect::<Vec<_>>());
            sort_run(&mut run, &mut scratch, u64::from);
            assert!(run.is_sorted_by_key(|k| k.deadline));
        }
    }
}
