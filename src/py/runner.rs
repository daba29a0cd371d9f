//! `_erlang_loop.LoopRunner`: the hot half of `ErlangEventLoop` (LESSONS 27).
//!
//! It holds the loop's ready queue (the loop's `_ready`: `append`,
//! `popleft`, `clear`, `len` as asyncio's deque), makes the handles of
//! `call_soon`/`call_at`/`call_later` natively, keeps the timers it put in
//! the wheel, and runs one loop iteration (`_run_once`) without Python
//! frames of its own: wait (GIL released), fd readiness to the loop's
//! handles (as `_process_events`), fired timers to the ready queue in deadline order,
//! then the callbacks that were ready when the iteration began.
//!
//! Debug mode stays asyncio's Python code (source tracebacks, slow callback
//! warnings); the loop uses this object's pieces from there.
//!
//! No borrow of the runner is held while Python code runs or allocates:
//! callbacks (and finalizers run by the GC) call back into it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyList, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::handles::{HandleKinds, Ran};
use super::native_loop::{deadline_ns, NativeLoop, EVENT_READ, EVENT_WRITE};
use crate::io::LoopCore;

/// The handle classes, the same for every loop of the process.
static KINDS: OnceLock<HandleKinds> = OnceLock::new();

/// `asyncio.Future` (the C one when asyncio has it).
fn future_class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    FUTURE
        .get_or_try_init(py, || {
            py.import("asyncio.futures")?
                .getattr("Future")
                .map(Bound::unbind)
        })
        .map(|future| future.bind(py))
}

fn kinds() -> &'static HandleKinds {
    KINDS
        .get()
        .expect("LoopRunner made before its handle classes")
}

/// The handle classes, once the first runner has been made.
pub(crate) fn handle_kinds() -> Option<&'static HandleKinds> {
    KINDS.get()
}

/// A handle in the loop's custody; `ours` if the runner made it, which
/// means it is out of the cyclic GC while the loop holds it.
struct Held {
    handle: Py<PyAny>,
    ours: bool,
}

impl Held {
    /// The handle leaves the loop: tracked again if anyone else holds it.
    fn release(self, py: Python<'_>) {
        let handle = self.handle.into_bound(py);
        // SAFETY: reading the reference count of a live object.
        if self.ours && unsafe { ffi::Py_REFCNT(handle.as_ptr()) } > 1 {
            kinds().track(&handle);
        }
    }

    /// Back under the GC (the loop stopped running).
    fn track(&self, py: Python<'_>) {
        if self.ours {
            kinds().track(self.handle.bind(py));
        }
    }

    /// What the runner's `__traverse__` reports for this handle: the handle
    /// if the GC tracks it. An untracked one (only while the loop runs) is
    /// left out: what it holds then looks referenced from outside, which
    /// keeps it alive and never clears it early; the loop, on its thread's
    /// stack, is not garbage anyway.
    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: a live object; traverse runs with the GIL held.
        if !self.ours || unsafe { ffi::PyObject_GC_IsTracked(self.handle.as_ptr()) } != 0 {
            visit.call(&self.handle)?;
        }
        Ok(())
    }
}

/// What a wheel key stands for.
enum Item {
    /// A timer handle: made ready when it fires.
    Handle(Held),
    /// An `erlang_asyncio.sleep` future: resolved when it fires.
    Future(Py<PyAny>),
}

/// Hashes wheel keys (already unique integers) with one multiplication:
/// SipHash showed up in profiles of timer-heavy loops.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, key: u64) {
        // Fibonacci hashing: spreads the index and generation bits into the
        // high bits the table's control bytes use.
        self.0 = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Timers = HashMap<u64, Scheduled, BuildHasherDefault<KeyHasher>>;

impl Item {
    fn release(self, py: Python<'_>) {
        if let Item::Handle(held) = self {
            held.release(py);
        }
    }
}

struct Scheduled {
    when: f64,
    item: Item,
}

#[pyclass(module = "_erlang_loop", name = "LoopRunner")]
pub struct LoopRunner {
    native: Py<NativeLoop>,
    loop_: Option<Py<PyAny>>,
    /// The loop selector's `_fd_to_key`: fd -> SelectorKey.
    fd_to_key: Py<PyDict>,
    ready: VecDeque<Held>,
    timers: Timers,
    closed: bool,
    /// Inside `run_forever`: the handles made meanwhile leave the GC.
    running: bool,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

impl LoopRunner {
    /// The Python loop, or the closed error once it is cleared.
    fn loop_object<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.borrow();
        match &this.loop_ {
            Some(loop_) if !this.closed => Ok(loop_.bind(slf.py()).clone()),
            _ => Err(closed_error()),
        }
    }

    /// Queues a handle the runner made, under one borrow with the checks
    /// that must see the same state: the loop may have closed or stopped
    /// while the handle was built (allocation can run the GC, whose
    /// finalizers can let other threads run). It leaves the GC if the loop
    /// runs (see `HandleKinds::untrack`).
    fn queue_new(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut this = slf.borrow_mut();
        if this.closed {
            return Err(closed_error());
        }
        let ours = this.running && kinds().untrackable();
        if ours {
            kinds().untrack(handle);
        }
        this.ready.push_back(Held {
            handle: handle.clone().unbind(),
            ours,
        });
        Ok(())
    }

    /// Records what wheel key `key` stands for. A timer handle the runner
    /// made (`ours`) leaves the GC if the loop runs, decided here, under the
    /// same borrow as the closed check (as in `queue_new`).
    fn schedule(slf: &Bound<'_, Self>, when: f64, key: u64, mut item: Item) -> PyResult<()> {
        let displaced = {
            let mut this = slf.borrow_mut();
            if this.closed {
                this.native.get().cancel_timer_key(key);
                drop(this);
                item.release(slf.py());
                return Err(closed_error());
            }
            if let Item::Handle(held) = &mut item {
                held.ours = held.ours && this.running && kinds().untrackable();
                if held.ours {
                    kinds().untrack(held.handle.bind(slf.py()));
                }
            }
            this.timers.insert(key, Scheduled { when, item })
        };
        // Keys carry a generation: a live key is never reused. Released
        // outside the borrow all the same.
        debug_assert!(displaced.is_none(), "wheel key {key} reused while live");
        if let Some(displaced) = displaced {
            displaced.item.release(slf.py());
        }
        Ok(())
    }

    /// A new wheel key due at `seconds` (loop time), on an open loop.
    fn wheel_key(slf: &Bound<'_, Self>, seconds: f64) -> PyResult<u64> {
        Self::loop_object(slf)?;
        let deadline = deadline_ns(seconds)?;
        slf.borrow().native.get().insert_timer_ns(deadline)
    }

    /// Puts `item` in the wheel at `seconds`; returns its key.
    fn insert(slf: &Bound<'_, Self>, seconds: f64, item: Item) -> PyResult<u64> {
        let key = Self::wheel_key(slf, seconds)?;
        Self::schedule(slf, seconds, key, item)?;
        Ok(key)
    }

    /// A timer handle at `when` (kept as given; `seconds` is it as loop
    /// seconds) for `callback(*args)`, in the wheel.
    fn new_timer<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        seconds: f64,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let loop_ = Self::loop_object(slf)?;
        let key = Self::wheel_key(slf, seconds)?;
        let made = kinds().new_timer(when, key, callback, args, &loop_, context);
        match made {
            Ok(timer) => {
                let held = Held {
                    handle: timer.clone().unbind(),
                    ours: true, // out of the GC if the loop runs: `schedule`
                };
                Self::schedule(slf, seconds, key, Item::Handle(held))?;
                Ok(timer)
            }
            Err(error) => {
                slf.borrow().native.get().cancel_timer_key(key);
                Err(error)
            }
        }
    }

    /// Makes the reader and writer handles of ready fds ready, as
    /// `BaseSelectorEventLoop._process_events` does (a cancelled handle
    /// unregisters its fd instead), reading the selector's own keys.
    fn ready_fds(
        slf: &Bound<'_, Self>,
        loop_: &Bound<'_, PyAny>,
        fd_events: &[(RawFd, u8)],
    ) -> PyResult<()> {
        let py = slf.py();
        let fd_to_key = slf.borrow().fd_to_key.clone_ref(py).into_bound(py);
        for &(fd, mask) in fd_events {
            let Some(key) = fd_to_key.get_item(fd)? else {
                continue;
            };
            // A SelectorKey: (fileobj, fd, events, (reader, writer)).
            let key = key.cast_into::<PyTuple>()?;
            let mask = mask & key.get_item(2)?.extract::<u8>()?;
            let data = key.get_item(3)?;
            let Ok((reader, writer)) = data.extract::<(Bound<PyAny>, Bound<PyAny>)>() else {
                // Not a loop registration: asyncio's code decides.
                let list = PyList::new(py, [(key, mask)])?;
                loop_.call_method1(intern!(py, "_process_events"), (list,))?;
                continue;
            };
            let directions = [
                (EVENT_READ, reader, intern!(py, "_remove_reader")),
                (EVENT_WRITE, writer, intern!(py, "_remove_writer")),
            ];
            for (bit, handle, remove) in directions {
                if mask & bit == 0 || handle.is_none() {
                    continue;
                }
                if kinds().is_cancelled(&handle)? {
                    loop_.call_method1(remove, (key.get_item(0)?,))?;
                } else {
                    let held = Held {
                        handle: handle.unbind(),
                        ours: false,
                    };
                    slf.borrow_mut().ready.push_back(held);
                }
            }
        }
        Ok(())
    }

    /// Moves fired timers to the ready queue (futures: resolved) in
    /// deadline order, FIFO for equal deadlines, as CPython's heap does. The
    /// wheel reports them in the order they were queued, and a timer given
    /// a past deadline after an Erlang tick queued later ones still runs first.
    fn fire(slf: &Bound<'_, Self>, keys: &[u64]) -> PyResult<()> {
        let py = slf.py();
        let mut due: Vec<Scheduled> = {
            let mut this = slf.borrow_mut();
            keys.iter()
                .filter_map(|key| this.timers.remove(key))
                .collect()
        };
        // A stable sort: equal deadlines keep the wheel's (insertion) order.
        due.sort_by(|a, b| a.when.total_cmp(&b.when));
        // Every fired timer is handled even if one future fails: the wheel
        // has let go of them all. The first error is raised at the end.
        let mut first_error = None;
        for scheduled in due {
            match scheduled.item {
                Item::Handle(held) => {
                    kinds().mark_fired(held.handle.bind(py));
                    slf.borrow_mut().ready.push_back(held);
                }
                Item::Future(future) => {
                    if let Err(error) = resolve_sleep(future.bind(py)) {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Resolves a fired `erlang_asyncio.sleep` future. One cancelled since (its
/// sleep not yet told) refuses the result: the only error to ignore.
fn resolve_sleep(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    match future.call_method1(intern!(py, "set_result"), (py.None(),)) {
        Ok(_) => Ok(()),
        Err(_) if future.call_method0(intern!(py, "done"))?.is_truthy()? => Ok(()),
        Err(error) => Err(error),
    }
}

/// A deadline or delay in seconds as asyncio accepts them (anything
/// `float()` takes); integers too large for a float are +-infinity.
fn seconds_of(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let seconds = match value.extract::<f64>() {
        Ok(seconds) => seconds,
        Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => {
            if value.gt(0)? {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }
        }
        Err(error) => return Err(error),
    };
    if seconds.is_nan() {
        return Err(PyValueError::new_err("when must not be NaN"));
    }
    Ok(seconds)
}

impl Drop for LoopRunner {
    /// An unclosed loop's runner going away: the handles others still hold
    /// go back under the GC. (Deallocation runs with the GIL held.)
    fn drop(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        let timers = std::mem::take(&mut self.timers);
        if ready.is_empty() && timers.is_empty() {
            return;
        }
        Python::attach(|py| {
            ready.into_iter().for_each(|held| held.release(py));
            timers
                .into_values()
                .for_each(|scheduled| scheduled.item.release(py));
        });
    }
}

#[pymethods]
impl LoopRunner {
    /// The runner of `loop_` (an `ErlangEventLoop`) over its native loop.
    /// `handle_class` is `asyncio.Handle`, `timer_class` the loop's
    /// `TimerHandle` subclass with a `_key` slot, `fd_to_key` the loop
    /// selector's map of registrations.
    #[new]
    fn new(
        native: Py<NativeLoop>,
        loop_: Py<PyAny>,
        handle_class: &Bound<'_, PyType>,
        timer_class: &Bound<'_, PyType>,
        fd_to_key: Py<PyDict>,
    ) -> PyResult<LoopRunner> {
        if KINDS.get().is_none() {
            let _ = KINDS.set(HandleKinds::new(handle_class, timer_class)?);
        }
        if !kinds().same_classes(handle_class, timer_class) {
            return Err(PyTypeError::new_err(
                "every LoopRunner must use the same handle classes",
            ));
        }
        Ok(LoopRunner {
            native,
            loop_: Some(loop_),
            fd_to_key,
            ready: VecDeque::new(),
            timers: Timers::default(),
            closed: false,
            running: false,
        })
    }

    // -- the ready queue, as asyncio's `_ready` deque --

    fn append(&mut self, handle: Py<PyAny>) {
        self.ready.push_back(Held {
            handle,
            ours: false,
        });
    }

    fn popleft(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let held = slf
            .borrow_mut()
            .ready
            .pop_front()
            .ok_or_else(|| PyIndexError::new_err("pop from an empty deque"))?;
        // Python code gets it: under the GC from now on.
        if held.ours {
            kinds().track(held.handle.bind(slf.py()));
        }
        Ok(held.handle)
    }

    fn clear(slf: &Bound<'_, Self>) {
        // Released outside the borrow: a handle's last reference may run
        // Python finalizers that schedule callbacks.
        let dropped = std::mem::take(&mut slf.borrow_mut().ready);
        for held in dropped {
            held.release(slf.py());
        }
    }

    fn __len__(&self) -> usize {
        self.ready.len()
    }

    fn __bool__(&self) -> bool {
        !self.ready.is_empty()
    }

    // -- scheduling --

    /// `loop.call_soon` outside debug mode.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::push_new(slf, callback, args, context)
    }

    /// `loop._call_soon(callback, args, context)` outside debug mode.
    fn push_new<'py>(
        slf: &Bound<'py, Self>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let loop_ = Self::loop_object(slf)?;
        let handle = kinds().new_handle(callback, args, &loop_, context)?;
        Self::queue_new(slf, &handle)?;
        Ok(handle)
    }

    /// `loop.call_at` outside debug mode.
    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let seconds = seconds_of(when)?;
        Self::new_timer(slf, when, seconds, callback, args, context)
    }

    /// `loop.call_later` outside debug mode.
    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later<'py>(
        slf: &Bound<'py, Self>,
        delay: &Bound<'py, PyAny>,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        // `self.time() + delay` with Python's own addition, so that what
        // asyncio accepts (int, float, Fraction) and refuses (Decimal) is
        // the same here.
        let now = PyFloat::new(py, LoopCore::now_ns() as f64 / 1e9);
        let when = now.add(delay)?;
        let seconds = seconds_of(&when).map_err(|error| {
            if error.is_instance_of::<PyValueError>(py) {
                PyValueError::new_err("delay must not be NaN")
            } else {
                error
            }
        })?;
        Self::new_timer(slf, &when, seconds, callback, args, context)
    }

    /// Puts a timer handle made in Python (debug mode) in the wheel at
    /// `when`; returns its key.
    fn add_timer(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        timer: Py<PyAny>,
    ) -> PyResult<u64> {
        Self::loop_object(slf)?; // a closed loop says so first
        if !kinds().is_timer(timer.bind(slf.py())) {
            return Err(PyTypeError::new_err(
                "not a timer handle of this loop class",
            ));
        }
        let held = Held {
            handle: timer,
            ours: false,
        };
        Self::insert(slf, seconds_of(when)?, Item::Handle(held))
    }

    /// Puts `future` in the wheel, resolved (`set_result(None)`) at `when`;
    /// returns its key (the `erlang_asyncio.sleep` fast path).
    fn add_future(slf: &Bound<'_, Self>, when: f64, future: Py<PyAny>) -> PyResult<u64> {
        Self::insert(slf, when, Item::Future(future))
    }

    /// `loop._sleep_future(delay)` outside debug mode: a new future of the
    /// loop resolved `delay` seconds from now straight from the wheel, and
    /// its key (the `erlang_asyncio.sleep` fast path).
    fn sleep_future<'py>(slf: &Bound<'py, Self>, delay: f64) -> PyResult<(u64, Bound<'py, PyAny>)> {
        if delay.is_nan() {
            return Err(PyValueError::new_err("delay must not be NaN"));
        }
        Self::loop_object(slf)?;
        let future = Self::create_future(slf)?;
        let when = LoopCore::now_ns() as f64 / 1e9 + delay;
        let key = Self::add_future(slf, when, future.clone().unbind())?;
        Ok((key, future))
    }

    /// `loop.create_future()` as BaseEventLoop has it, without its frame
    /// (a closed loop still makes futures, as asyncio's does).
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let loop_ = slf
            .borrow()
            .loop_
            .as_ref()
            .map(|loop_| loop_.clone_ref(py))
            .ok_or_else(closed_error)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), loop_)?;
        future_class(py)?.call((), Some(&kwargs))
    }

    /// `loop.get_debug()` while the native paths are in use: they are used
    /// outside debug mode only. (Every `Handle.cancel()` asks.)
    #[staticmethod]
    fn get_debug() -> bool {
        false
    }

    /// `loop.time()`: CLOCK_MONOTONIC in seconds, as `time.monotonic()`.
    #[staticmethod]
    fn time() -> f64 {
        LoopCore::now_ns() as f64 / 1e9
    }

    /// Takes a key out of the wheel; False if it already fired or left.
    fn cancel(slf: &Bound<'_, Self>, key: u64) -> bool {
        let removed = {
            let mut this = slf.borrow_mut();
            let removed = this.timers.remove(&key);
            if removed.is_some() {
                this.native.get().cancel_timer_key(key);
            }
            removed
        };
        // Released outside the borrow (the last reference may run Python).
        match removed {
            Some(scheduled) => {
                scheduled.item.release(slf.py());
                true
            }
            None => false,
        }
    }

    /// `loop._timer_handle_cancelled(handle)`: our scheduled timer handles
    /// leave the wheel; anything else is ignored.
    fn timer_cancelled(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> bool {
        let Some(key) = kinds().unschedule(handle) else {
            return false;
        };
        // The key must name this very handle (its `_key` is writable).
        let ours = matches!(
            slf.borrow().timers.get(&key),
            Some(Scheduled { item: Item::Handle(held), .. }) if held.handle.is(handle)
        );
        ours && Self::cancel(slf, key)
    }

    // -- one iteration --

    /// The I/O half of an iteration: waits for events (no wait when
    /// callbacks are ready or the loop is stopping), hands fd readiness to
    /// its reader and writer handles and makes fired timers ready.
    fn poll(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (loop_, native, busy) = {
            let this = slf.borrow();
            let loop_ = match &this.loop_ {
                Some(loop_) if !this.closed => loop_.bind(py).clone(),
                _ => return Err(closed_error()),
            };
            (loop_, this.native.clone_ref(py), !this.ready.is_empty())
        };
        let no_wait = busy || loop_.getattr(intern!(py, "_stopping"))?.is_truthy()?;
        let timeout = no_wait.then_some(Duration::ZERO);
        let (fd_events, timer_keys) = native.get().wait_events(py, timeout)?;
        let fds = if fd_events.is_empty() {
            Ok(())
        } else {
            Self::ready_fds(slf, &loop_, &fd_events)
        };
        // The fired timers are out of the wheel: they are made ready even
        // if an fd callback's bookkeeping failed.
        let timers = if timer_keys.is_empty() {
            Ok(())
        } else {
            Self::fire(slf, &timer_keys)
        };
        fds.and(timers)
    }

    /// Runs the callbacks that are ready now (not those they schedule), as
    /// `Handle._run` would, errors to the loop's exception handler.
    fn run_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let todo = slf.borrow().ready.len();
        let stock_run = kinds().stock_run_intact(py);
        for _ in 0..todo {
            let Some(held) = slf.borrow_mut().ready.pop_front() else {
                break;
            };
            let ours = held.ours;
            let handle = held.handle.into_bound(py);
            let ran = kinds().run(&handle, stock_run);
            if let Ok(Ran::Failed(error)) = ran {
                // The exception handler may keep the handle: under the GC.
                if ours {
                    kinds().track(&handle);
                }
                let loop_ = Self::loop_object(slf)?;
                let exception = error.into_value(py);
                loop_.call_method1(intern!(py, "_report_callback_error"), (&handle, exception))?;
                continue;
            }
            Held {
                handle: handle.unbind(),
                ours,
            }
            .release(py);
            ran?;
        }
        Ok(())
    }

    /// `run_forever` starts (True) or ends (False). The handles made while
    /// the loop runs stay out of the GC; when it stops, those still pending
    /// go back under it, so that an idle loop's handles are as asyncio's.
    fn set_running(slf: &Bound<'_, Self>, running: bool) {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        this.running = running;
        if !running {
            // Tracking allocates nothing and runs no Python.
            for held in &this.ready {
                held.track(py);
            }
            for scheduled in this.timers.values() {
                if let Item::Handle(held) = &scheduled.item {
                    held.track(py);
                }
            }
        }
    }

    /// Makes the timers of these keys ready (those a direct
    /// `selector.select()` fired).
    fn fire_timers(slf: &Bound<'_, Self>, keys: Vec<u64>) -> PyResult<()> {
        Self::fire(slf, &keys)
    }

    /// `loop._run_once` outside debug mode.
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::poll(slf)?;
        Self::run_ready(slf)
    }

    /// The loop closed: its timers are no longer scheduled; new work fails.
    fn close(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let (timers, ready) = {
            let mut this = slf.borrow_mut();
            this.closed = true;
            (
                std::mem::take(&mut this.timers),
                std::mem::take(&mut this.ready),
            )
        };
        for scheduled in timers.into_values() {
            if let Item::Handle(held) = &scheduled.item {
                kinds().mark_fired(held.handle.bind(py));
            }
            scheduled.item.release(py);
        }
        for held in ready {
            held.release(py);
        }
    }

    /// How many timer handles and futures this runner has in the wheel.
    fn scheduled(slf: &Bound<'_, Self>) -> (usize, usize) {
        // Counted under a borrow that ends before the result is built.
        let this = slf.borrow();
        let handles = this
            .timers
            .values()
            .filter(|s| matches!(s.item, Item::Handle(_)))
            .count();
        (handles, this.timers.len() - handles)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(loop_) = &self.loop_ {
            visit.call(loop_)?;
        }
        visit.call(&self.fd_to_key)?;
        for held in &self.ready {
            held.visit(&visit)?;
        }
        for scheduled in self.timers.values() {
            match &scheduled.item {
                Item::Handle(held) => held.visit(&visit)?,
                Item::Future(future) => visit.call(future)?,
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.loop_ = None;
        let ready = std::mem::take(&mut self.ready);
        let timers = std::mem::take(&mut self.timers);
        Python::attach(|py| {
            ready.into_iter().for_each(|held| held.release(py));
            timers
                .into_values()
                .for_each(|scheduled| scheduled.item.release(py));
        });
    }
}
