//! `py_event_loop._erlang_sleep(ms)`: a blocking sleep for synchronous Python
//! code in the node. The wait is an Erlang timer (`py_event_loops` arms it
//! and calls back), the GIL is released meanwhile, and every call has its own
//! wait state, so concurrent sleepers each wake at their own time.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use rustler::env::OwnedEnv;
use rustler::{Atom, Encoder, ResourceArc};

use erlang_python::py::sys_modules;

use crate::atoms;
use crate::sync::lock;

rustler::atoms! {
    py_sleep,
}

/// How long past its deadline a sleep waits for the Erlang timer before it
/// gives up on Erlang (application stopped) and returns on its own.
const ERLANG_GRACE: Duration = Duration::from_secs(1);

/// The wait state of one `_erlang_sleep` call.
pub struct SleepWait {
    fired: Mutex<bool>,
    ring: Condvar,
}

#[rustler::resource_impl]
impl rustler::Resource for SleepWait {}

/// `sleep_done(Wait)` -> `ok`: the Erlang timer of a sleep fired.
#[rustler::nif]
fn sleep_done(wait: ResourceArc<SleepWait>) -> Atom {
    *lock(&wait.fired) = true;
    wait.ring.notify_all();
    atoms::ok()
}

/// Sleeps `ms` milliseconds without holding the GIL; never returns early.
#[pyfunction]
fn _erlang_sleep(py: Python<'_>, ms: f64) -> PyResult<()> {
    if ms.is_nan() || ms < 0.0 {
        return Err(PyValueError::new_err(
            "sleep length must be a non-negative number",
        ));
    }
    if ms == 0.0 {
        return Ok(());
    }
    // Too large for a Duration or an Instant (grace included): refused as
    // `time.sleep` refuses what its clock cannot hold.
    let now = Instant::now();
    let deadline = Duration::try_from_secs_f64(ms / 1000.0)
        .ok()
        .and_then(|length| now.checked_add(length))
        .filter(|deadline| deadline.checked_add(ERLANG_GRACE).is_some())
        .ok_or_else(|| PyOverflowError::new_err("sleep length is too large"))?;
    let wait = ResourceArc::new(SleepWait {
        fired: Mutex::new(false),
        ring: Condvar::new(),
    });
    let asked = crate::event_loop::placer().is_some_and(|server| {
        let mut env = OwnedEnv::new();
        let timer_ms = ms.ceil() as u64;
        env.send_and_clear(&server, |env| {
            (py_sleep(), timer_ms, wait.clone()).encode(env)
        })
        .is_ok()
    });
    py.detach(|| {
        let mut fired = lock(&wait.fired);
        loop {
            let now = Instant::now();
            if now >= deadline && (*fired || !asked || now >= deadline + ERLANG_GRACE) {
                return;
            }
            let until = if *fired || !asked {
                deadline - now.min(deadline)
            } else {
                (deadline + ERLANG_GRACE).saturating_duration_since(now)
            };
            fired = wait
                .ring
                .wait_timeout(fired, until.max(Duration::from_micros(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    });
    Ok(())
}

/// Creates `py_event_loop` and puts it in `sys.modules`. Idempotent.
pub fn install(py: Python<'_>) -> PyResult<()> {
    sys_modules::install(py, "py_event_loop", |module| {
        module.add_function(wrap_pyfunction!(_erlang_sleep, module)?)
    })
}
