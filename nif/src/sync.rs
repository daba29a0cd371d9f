//! Locking that outlives a panicked holder.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex` even if a thread panicked while holding it: the NIF's
/// shared state is changed by each holder in steps that leave it whole, and
/// a panic (answered to its caller as an error) must not make every later
/// call fail on a poisoned lock.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
