//! `_erlang_loop.NativeLoop`: the Python face of one loop core: fd interest
//! (for the loop's selector), the wait for events (GIL released), wake-ups,
//! close and counters. Timers and callbacks go through the loop's
//! `LoopRunner` (`runner.rs`), which uses the crate-level methods here.

use std::any::Any;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::boundary_raise::{BoundaryRaise, BoundarySlot};
use super::os_error::{io_error_err, os_error_err};
use crate::io::{Event, EventKind, LoopCore, WaitError, Wake};
use crate::wheel::NEVER;

/// `selectors.EVENT_READ` / `EVENT_WRITE`.
pub(crate) const EVENT_READ: u8 = 1;
pub(crate) const EVENT_WRITE: u8 = 2;

/// Every queued event goes to Python in one wait, as CPython moves every due
/// timer to `_ready` at once: the loop then orders the batch's timers by
/// deadline, which a partial batch could not guarantee.
const MAX_EVENTS_PER_WAIT: usize = usize::MAX;

/// Fd readiness of one wait: `(fd, selectors mask)`, one entry per fd.
pub type FdEvents = Vec<(RawFd, u8)>;

/// Creates a loop with its Erlang side (set by the NIF at load).
pub type LoopFactory = fn(isolated: bool) -> std::io::Result<NativeLoop>;

static FACTORY: OnceLock<LoopFactory> = OnceLock::new();

/// The node's process id, recorded when the NIF loads: a process forked
/// from the node (`os.fork()`) has another, and no BEAM behind it.
static NODE_PID: OnceLock<u32> = OnceLock::new();

/// Installs the NIF's loop factory (once per process).
pub fn set_factory(factory: LoopFactory) {
    let _ = FACTORY.set(factory);
    let _ = NODE_PID.set(std::process::id());
}

/// Fails in a process forked from the node, where what needs the BEAM (a
/// loop's server, an Erlang call) would wait forever for threads the fork
/// did not copy.
pub fn ensure_in_node() -> PyResult<()> {
    if !in_node() {
        return Err(PyRuntimeError::new_err(
            "this process was forked from the Erlang node (os.fork()): the BEAM did not \
             come with it, so it has no event loops or Erlang calls; start child \
             processes with multiprocessing's 'spawn' or subprocess",
        ));
    }
    Ok(())
}

/// False in a process forked from the node (see `ensure_in_node`).
fn in_node() -> bool {
    NODE_PID.get().is_none_or(|&pid| pid == std::process::id())
}

/// How long `close()` waits for the serving process to stop the loop's
/// fds: it takes a message's round trip (microseconds); a worker that died
/// leaves the stops to `py_event_loops`, as fast.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One native loop, shared by its Python loop and its Erlang server.
#[pyclass(module = "_erlang_loop", name = "NativeLoop", frozen)]
pub struct NativeLoop {
    core: Arc<LoopCore>,
    /// The host's object for this loop (the NIF's host, which makes the
    /// loop's Erlang resource when it is placed), kept alive for as long as
    /// Python holds the loop.
    _host_object: Box<dyn Any + Send + Sync>,
    loop_id: u64,
    isolated: bool,
    /// Timers a direct `wait` (the selector's `select`) fired, kept for the
    /// loop's runner: their ids stand for objects it owns and never reach
    /// Python.
    fired: Mutex<Vec<Event>>,
    /// Whether `fired` may hold timers: written under its lock, read
    /// without, so that a loop's every iteration takes no lock for an empty
    /// list.
    any_fired: AtomicBool,
    /// A `LoopRunner` owns the loop's timers: at most one may ever.
    claimed: AtomicBool,
    /// An exception the runner raises before its next callback.
    boundary: BoundarySlot,
}

impl NativeLoop {
    pub fn new(
        core: Arc<LoopCore>,
        host_object: Box<dyn Any + Send + Sync>,
        loop_id: u64,
        isolated: bool,
    ) -> NativeLoop {
        NativeLoop {
            core,
            _host_object: host_object,
            loop_id,
            isolated,
            fired: Mutex::new(Vec::new()),
            any_fired: AtomicBool::new(false),
            claimed: AtomicBool::new(false),
            boundary: BoundarySlot::default(),
        }
    }

    /// Makes the caller the owner of the loop's timers; false if the loop
    /// already has one (each would take the other's).
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    fn fired(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.fired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if a live process was told (nothing to tell: false).
    fn deliver(&self, wake: Wake) -> bool {
        !wake.is_empty() && self.core.host().deliver(wake)
    }

    /// Schedules a timer at `deadline_ns` in the wheel that reports `id`;
    /// returns its key.
    pub(crate) fn insert_timer_ns(&self, deadline_ns: u64, id: u64) -> PyResult<u64> {
        let (key, wake) = self
            .core
            .insert_timer(deadline_ns, id)
            .map_err(wait_error)?;
        self.deliver(wake);
        Ok(key)
    }

    /// Cancels the live timer `key` names if `ours` accepts its id: its id.
    pub(crate) fn cancel_timer_if(&self, key: u64, ours: impl FnOnce(u64) -> bool) -> Option<u64> {
        self.core.cancel_timer_if(key, ours)
    }

    /// See [`LoopCore::take_timers_where`].
    pub(crate) fn take_timers_where(&self, due: impl FnMut(u64) -> bool) -> Vec<Event> {
        self.core.take_timers_where(due)
    }

    /// Calls `visit` with the id of every timer the loop holds: live, or
    /// fired and not yet taken.
    pub(crate) fn for_each_timer_id(&self, mut visit: impl FnMut(u64)) {
        self.core.for_each_timer_id(&mut visit);
        self.fired().iter().for_each(|event| visit(event.id));
    }

    /// Takes every timer the loop holds; their ids.
    pub(crate) fn take_all_timers(&self) -> Vec<u64> {
        let mut ids = self.core.take_all_timers();
        ids.extend(self.take_fired().into_iter().map(|event| event.id));
        ids
    }

    /// Wakes the waiting thread for an exception just set on it from
    /// outside (`PyThreadState_SetAsyncExc`), and marks the wait
    /// interrupted: the loop's runner then raises the exception before
    /// running another callback (`LoopRunner.poll`). Call it right after
    /// setting the exception, with the GIL held and no Python code in
    /// between, so that the runner sees both or neither.
    pub fn interrupt_wait(&self) {
        self.core.interrupt();
    }

    /// Asks the loop's runner to raise `raise`'s exception out of
    /// `run_forever` before it runs another callback, and wakes its wait
    /// (thread-safe; see `boundary_raise`).
    pub fn request_boundary_raise(&self, raise: Arc<BoundaryRaise>) {
        self.boundary.request(raise);
        self.core.wakeup();
    }

    /// Takes back a [`request_boundary_raise`](Self::request_boundary_raise)
    /// the runner has not acted on: whether it was still pending.
    pub fn retract_boundary_raise(&self, raise: &Arc<BoundaryRaise>) -> bool {
        self.boundary.retract(raise)
    }

    /// For the runner, between callbacks: the exception asked for, if any.
    #[inline]
    pub(crate) fn take_boundary_raise(&self, py: Python<'_>) -> Option<PyErr> {
        self.boundary.take(py)
    }

    /// Whether `interrupt` was called since the last look (see
    /// `LoopCore::take_interrupt`).
    pub(crate) fn take_interrupt(&self) -> bool {
        self.core.take_interrupt()
    }

    /// Whether a timer is due, fired and not run yet, or an event waits:
    /// work the next iteration does before it reads a watched fd again.
    pub(crate) fn has_due_work(&self) -> bool {
        self.any_fired.load(Ordering::Acquire) || self.core.has_due_work()
    }

    /// The timers a direct `wait` fired, taken.
    pub(crate) fn take_fired(&self) -> Vec<Event> {
        if !self.any_fired.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut fired = self.fired();
        self.any_fired.store(false, Ordering::Release);
        std::mem::take(&mut *fired)
    }

    /// Keeps fired timers for the loop's runner (`take_fired`).
    fn keep_fired(&self, timers: &mut Vec<Event>) {
        if timers.is_empty() {
            return;
        }
        let mut fired = self.fired();
        fired.append(timers);
        self.any_fired.store(true, Ordering::Release);
    }

    /// Waits for events (GIL released unless `timeout` is zero): the fd
    /// readiness, coalesced per fd, and the timers that fired (with those a
    /// direct `wait` fired before).
    pub(crate) fn wait_events(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<(FdEvents, Vec<Event>)> {
        let core = &self.core;
        let mut events: Vec<Event> = Vec::new();
        let waited = if timeout == Some(Duration::ZERO) {
            core.prepare_and_wait(timeout, &mut events, MAX_EVENTS_PER_WAIT)
        } else {
            py.detach(|| core.prepare_and_wait(timeout, &mut events, MAX_EVENTS_PER_WAIT))
        };
        let mut timers = self.take_fired();
        if let Err(error) = waited {
            self.keep_fired(&mut timers);
            return Err(wait_error(error));
        }
        let mut masks: FdEvents = Vec::new();
        for event in events {
            let bit = match event.kind {
                EventKind::Timer => {
                    timers.push(event);
                    continue;
                }
                EventKind::Read => EVENT_READ,
                EventKind::Write => EVENT_WRITE,
            };
            let fd = event.key as RawFd;
            match masks.iter_mut().find(|(seen, _)| *seen == fd) {
                Some((_, mask)) => *mask |= bit,
                None => masks.push((fd, bit)),
            }
        }
        Ok((masks, timers))
    }
}

/// A loop dropped without `close()` (its `ErlangEventLoop.__init__` failed
/// or was interrupted after making it, or it was made bare) closes here:
/// its serving process stops its selects, which closes its fds, and an
/// isolated loop's worker ends. No wait for that (this runs in a
/// deallocation, under the GIL), and no Python code.
impl Drop for NativeLoop {
    fn drop(&mut self) {
        if !self.core.is_closed() {
            tracing::debug!(loop_id = self.loop_id, "python event loop dropped unclosed");
            let wake = self.core.close();
            // In a forked child nobody is there to tell.
            if in_node() {
                self.deliver(wake);
            }
        }
    }
}

fn wait_error(error: WaitError) -> PyErr {
    PyRuntimeError::new_err(error.to_string())
}

/// A `when` in loop seconds as wheel nanoseconds, rounded up (never early).
pub(crate) fn deadline_ns(when: f64) -> PyResult<u64> {
    if when.is_nan() {
        return Err(PyValueError::new_err("timer deadline is NaN"));
    }
    if when <= 0.0 {
        return Ok(0);
    }
    let nanos = (when * 1e9).ceil();
    // One more ns absorbs the float rounding of `time()` = ns / 1e9.
    Ok(if nanos >= (NEVER - 1) as f64 {
        NEVER
    } else {
        nanos as u64 + 1
    })
}

#[pymethods]
impl NativeLoop {
    /// CLOCK_MONOTONIC in seconds: the clock of `loop.time()` and the wheel.
    #[staticmethod]
    fn time() -> f64 {
        LoopCore::now_ns() as f64 / 1e9
    }

    #[getter]
    fn loop_id(&self) -> u64 {
        self.loop_id
    }

    #[getter]
    fn isolated(&self) -> bool {
        self.isolated
    }

    /// Watches `fd` for reading (`events` & 1) and/or writing (`events` & 2),
    /// and stops watching the directions not asked for.
    fn set_interest(&self, fd: RawFd, events: u8) -> PyResult<()> {
        for (bit, kind) in [
            (EVENT_READ, EventKind::Read),
            (EVENT_WRITE, EventKind::Write),
        ] {
            if events & bit != 0 {
                let wake = self
                    .core
                    .add_interest(fd, kind, fd as u64)
                    .map_err(|e| Python::attach(|py| io_error_err(py, &e)))?;
                self.deliver(wake);
            } else {
                let (_, wake) = self.core.remove_interest(fd, kind);
                self.deliver(wake);
            }
        }
        Ok(())
    }

    /// Waits for events (GIL released): `timeout` None = until one comes,
    /// 0 = just look. Returns `([(fd, mask), ...], fired)`: `fired` timers
    /// are kept for the loop's runner (`LoopRunner.fire_timers()`).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(FdEvents, usize)> {
        let timeout = match timeout {
            None => None,
            Some(t) if t.is_nan() => return Err(PyValueError::new_err("timeout is NaN")),
            Some(t) if t <= 0.0 => Some(Duration::ZERO),
            Some(t) => Some(Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX)),
        };
        let (fds, timers) = self.wait_events(py, timeout)?;
        // Python code runs next: an interrupt of the wait needs nothing
        // more (see `interrupt`).
        self.core.take_interrupt();
        let mut timers = timers;
        let fired = timers.len();
        self.keep_fired(&mut timers);
        Ok((fds, fired))
    }

    /// Wakes the waiting thread for an exception set on it from outside (a
    /// timed-out `py:call`, Ctrl-C), which the loop's runner raises before
    /// it runs another callback (thread-safe; see `interrupt_wait`).
    fn interrupt(&self) {
        self.interrupt_wait();
    }

    /// Wakes the waiting thread (thread-safe).
    fn wakeup(&self) {
        self.core.wakeup();
    }

    /// Closes the native loop: fd selects stop, waiters fail. Returns once
    /// the BEAM's duplicate of the loop's epoll fd is closed (its serving
    /// process makes the stop; at most `CLOSE_WAIT`), so that the loop's
    /// fds are released when `close()` returns, as a stdlib loop's are; at
    /// once if that fd never entered the BEAM's poll set (closed here).
    /// Idempotent.
    fn close(&self, py: Python<'_>) {
        tracing::debug!(loop_id = self.loop_id, "python event loop closed");
        let (wake, stopping) = self.core.close_stopping();
        // No live process told (the application stopping, say; or a child
        // forked from the node, which has no BEAM): nobody makes the stops
        // before it starts again, no wait.
        if !in_node() || !self.deliver(wake) || stopping.is_empty() {
            return;
        }
        let host = self.core.host();
        if !py.detach(|| host.wait_closed(&stopping, CLOSE_WAIT)) {
            tracing::warn!(
                loop_id = self.loop_id,
                "the loop's fds were not closed within {CLOSE_WAIT:?} of close()"
            );
        }
    }

    fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Whether the Erlang process that served the loop died (the loop can
    /// no longer wait for anything).
    fn server_lost(&self) -> bool {
        self.core.server_lost()
    }

    /// The loop's counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.core.stats().fields() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

/// Signal subscriptions made from Python, by the read end of their pipe.
static SIGNAL_SUBSCRIPTIONS: std::sync::Mutex<Vec<crate::io::signals::Subscription>> =
    std::sync::Mutex::new(Vec::new());

/// `_erlang_loop.subscribe_signals()`: a non-blocking fd from which the
/// numbers of delivered signals can be read (one byte per delivery), of
/// every signal caught ([`catch_signal`]) or routed by the BEAM.
#[pyfunction]
fn subscribe_signals(py: Python<'_>) -> PyResult<RawFd> {
    let subscription = crate::io::signals::subscribe().map_err(|error| os_error_err(py, &error))?;
    let fd = subscription.read_fd;
    SIGNAL_SUBSCRIPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(subscription);
    Ok(fd)
}

/// `_erlang_loop.unsubscribe_signals(fd)`: ends the subscription whose pipe
/// is `fd` (and closes it). Unknown fds: False.
#[pyfunction]
fn unsubscribe_signals(fd: RawFd) -> bool {
    let mut subscriptions = SIGNAL_SUBSCRIPTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match subscriptions.iter().position(|s| s.read_fd == fd) {
        Some(index) => {
            crate::io::signals::unsubscribe(subscriptions.swap_remove(index));
            true
        }
        None => false,
    }
}

/// `_erlang_loop.catch_signal(signum)`: our handler writes `signum` to the
/// pipes until the matching `uncatch_signal`. Only `CAUGHT_SIGNALS`
/// (SIGCHLD); `ValueError` for the others.
#[pyfunction]
fn catch_signal(py: Python<'_>, signum: i32) -> PyResult<()> {
    crate::io::signals::catch(signum).map_err(|error| {
        if error.raw_os_error() == Some(libc::EINVAL) {
            PyValueError::new_err(format!("signal {signum} is not caught by the loop itself"))
        } else {
            os_error_err(py, &error)
        }
    })
}

/// `_erlang_loop.uncatch_signal(signum)`: ends one `catch_signal`; False if
/// none was in force.
#[pyfunction]
fn uncatch_signal(signum: i32) -> bool {
    crate::io::signals::uncatch(signum)
}

/// `_erlang_loop.new_loop(isolated)`: a native loop with its Erlang server.
#[pyfunction]
fn new_loop(py: Python<'_>, isolated: bool) -> PyResult<NativeLoop> {
    ensure_in_node()?;
    let factory = FACTORY
        .get()
        .ok_or_else(|| PyRuntimeError::new_err("erlang_python is not running"))?;
    py.detach(|| factory(isolated))
        .map_err(|e| io_error_err(py, &e))
}

/// Creates `_erlang_loop` and puts it in `sys.modules`. Idempotent.
pub fn install(py: Python<'_>) -> PyResult<()> {
    super::sys_modules::install(py, "_erlang_loop", |module| {
        module.add_class::<NativeLoop>()?;
        module.add_class::<super::runner::LoopRunner>()?;
        module.add_class::<super::sleep::Sleep>()?;
        module.add_class::<super::sleep::SleepFunction>()?;
        module.add_class::<super::instance_clock::InstanceClock>()?;
        module.add_function(wrap_pyfunction!(new_loop, module)?)?;
        module.add_function(wrap_pyfunction!(
            super::timer_handle::timer_handle_base,
            module
        )?)?;
        module.add_function(wrap_pyfunction!(
            super::timer_cancel::timer_handle_methods,
            module
        )?)?;
        module.add_function(wrap_pyfunction!(
            super::socket_transport::socket_transport_methods,
            module
        )?)?;
        module.add_function(wrap_pyfunction!(
            super::datagram_transport::datagram_transport_methods,
            module
        )?)?;
        module.add_function(wrap_pyfunction!(subscribe_signals, module)?)?;
        module.add_function(wrap_pyfunction!(unsubscribe_signals, module)?)?;
        module.add_function(wrap_pyfunction!(catch_signal, module)?)?;
        module.add_function(wrap_pyfunction!(uncatch_signal, module)?)?;
        module.add("CAUGHT_SIGNALS", crate::io::signals::CAUGHT)?;
        module.add("ROUTED_SIGNALS", crate::io::signals::ROUTED)?;
        module.add(
            "SOCKET_TRANSPORT_SLOTS",
            super::socket_transport::SOCKET_TRANSPORT_SLOTS,
        )?;
        module.add(
            "DATAGRAM_TRANSPORT_SLOTS",
            super::datagram_transport::DATAGRAM_TRANSPORT_SLOTS,
        )
    })
}
