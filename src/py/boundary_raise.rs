//! An exception a loop's runner raises out of `run_forever` between two
//! callbacks, asked for by another thread: the `TimeoutError` of a timed-out
//! `py:call` whose thread runs an ErlangEventLoop. Raised inside a callback
//! instead (at its next bytecode, as `PyThreadState_SetAsyncExc` does), it
//! would go to the loop's exception handler like any error of a plain
//! callback, and the loop would run on with that callback's work half done:
//! a transport whose `connection_lost` was never called, an `asyncio.run`
//! waiting on it forever, its pool thread lost.

use std::os::raw::c_ulong;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyType;

/// One request: the exception's class, the thread it is for (a
/// `threading.get_ident()`: a loop run by another thread meanwhile leaves
/// it), and whether the runner took it.
pub struct BoundaryRaise {
    exception: Py<PyType>,
    thread: c_ulong,
    taken: AtomicBool,
}

impl BoundaryRaise {
    pub fn new(exception: Py<PyType>, thread: c_ulong) -> Arc<BoundaryRaise> {
        Arc::new(BoundaryRaise {
            exception,
            thread,
            taken: AtomicBool::new(false),
        })
    }
}

/// The request a loop holds, if any.
#[derive(Default)]
pub struct BoundarySlot {
    /// Whether `request` holds one: read without the lock before every
    /// callback.
    requested: AtomicBool,
    request: Mutex<Option<Arc<BoundaryRaise>>>,
}

impl BoundarySlot {
    // Each holder leaves the slot whole: a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, Option<Arc<BoundaryRaise>>> {
        self.request.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, raise: Arc<BoundaryRaise>) {
        *self.lock() = Some(raise);
        self.requested.store(true, Ordering::Release);
    }

    /// Takes `raise` back if the runner has not taken it: whether it was
    /// still pending.
    pub fn retract(&self, raise: &Arc<BoundaryRaise>) -> bool {
        let mut request = self.lock();
        if !request
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, raise))
        {
            return false;
        }
        *request = None;
        self.requested.store(false, Ordering::Release);
        true
    }

    /// For the runner, between callbacks: the exception to raise now, if
    /// one was asked for.
    #[inline(always)]
    pub fn take(&self, py: Python<'_>) -> Option<PyErr> {
        if !self.requested.load(Ordering::Acquire) {
            return None;
        }
        self.take_requested(py)
    }

    /// `take` once a request was seen: out of line, as it is rare.
    #[cold]
    #[inline(never)]
    fn take_requested(&self, py: Python<'_>) -> Option<PyErr> {
        let mut request = self.lock();
        // SAFETY: reads the calling thread's identifier; nothing is touched.
        let here = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
        if request.as_ref()?.thread != here {
            return None;
        }
        let raise = request.take()?;
        drop(request);
        self.requested.store(false, Ordering::Release);
        raise.taken.store(true, Ordering::Release);
        Some(PyErr::from_type(raise.exception.bind(py).clone(), ()))
    }
}
