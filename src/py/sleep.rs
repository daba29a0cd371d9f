//! `erlang_asyncio.sleep(delay, result=None)`: a coroutine object written
//! natively, so that a sleep on ErlangEventLoop costs no Python frame.
//!
//! Awaited on a loop whose runner may take it directly (running on this
//! thread, no debug mode, `_sleep_future` not replaced), it puts a bare
//! entry in the wheel, yields the future the wheel resolves (as `await
//! future` would: the Task waits for it) and returns `result` once it is
//! done. A throw (the Task's cancellation) or a close takes the entry out
//! at once. A `delay <= 0` yields once, as `asyncio.sleep(0)`. Anywhere else
//! (another loop, debug mode, a delay that is not a real number) it drives
//! the Python coroutine `erlang_asyncio._sleep_elsewhere`, which is asyncio's
//! own behaviour there.
//!
//! It is a coroutine to asyncio: `__await__`, `send`, `throw` and `close`
//! make it a `collections.abc.Coroutine`, which `create_task` accepts.

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::once::{cached_attr, get_or_make};
use super::runner::{running_runner, LoopRunner, RunnerSleep};

/// The `__name__` and `__qualname__` of the function and its coroutines, as
/// the `async def` it replaces had.
const NAME: &str = "sleep";

/// Where a sleep is in its life.
enum State {
    /// Made, not awaited yet.
    New,
    /// Being stepped (a reentrant step is refused, as a running coroutine's).
    Stepping,
    /// `delay <= 0`: has yielded once.
    Yielded,
    /// Waiting for `future`, which `runner`'s wheel entry `key` resolves.
    Waiting {
        runner: Py<LoopRunner>,
        key: u64,
        future: Py<PyAny>,
    },
    /// Not on a runner it can use: driving `_sleep_elsewhere(delay, result)`.
    Elsewhere(Py<PyAny>),
    /// Returned, raised or closed.
    Done,
}

/// What a step of the coroutine does.
enum Step<'py> {
    /// Suspends, handing this to the Task.
    Yield(Bound<'py, PyAny>),
    /// Returns this (`None`: Python's `None`).
    Return(Option<Py<PyAny>>),
}

/// A sleep: `erlang_asyncio.sleep(delay, result=None)`.
#[pyclass(module = "_erlang_loop", name = "Sleep")]
pub struct Sleep {
    /// `None` only once cleared by the GC (as `result`).
    delay: Option<Py<PyAny>>,
    result: Option<Py<PyAny>>,
    state: State,
}

/// `erlang_asyncio._sleep_elsewhere`: the sleep as a Python coroutine.
fn sleep_elsewhere(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static ELSEWHERE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    cached_attr(py, &ELSEWHERE, "erlang_asyncio", "_sleep_elsewhere")
}

/// The `asyncio` module.
fn asyncio_module(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static ASYNCIO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    get_or_make(&ASYNCIO, py, || {
        py.import("asyncio").map(|m| m.into_any().unbind())
    })
    .map(|module| module.bind(py))
}

/// The delay in seconds, when it is a real number the wheel can take
/// (`None` for anything else: the Python coroutine then decides).
fn seconds(delay: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(delay) = delay.cast_exact::<PyFloat>() {
        return Some(delay.value());
    }
    delay.extract::<f64>().ok()
}

/// Raises `StopIteration(value)`: how a coroutine step returns a result
/// (`value` its only argument, even a tuple or an exception). A step that
/// returns `None`, the usual case, raises nothing (see `__next__`).
fn stop_iteration(value: Py<PyAny>) -> PyErr {
    PyStopIteration::new_err((value,))
}

/// The exception `throw(typ, val, tb)` raises, as a generator's `throw`
/// makes it.
fn thrown(
    typ: &Bound<'_, PyAny>,
    val: Option<&Bound<'_, PyAny>>,
    tb: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let py = typ.py();
    let val = val.filter(|val| !val.is_none());
    let exception = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        if val.is_some() {
            return Err(PyTypeError::new_err(
                "instance exception may not have a separate value",
            ));
        }
        typ.clone()
    } else if let Some(class) = typ.cast::<PyType>().ok().filter(|class| {
        class
            .is_subclass_of::<pyo3::exceptions::PyBaseException>()
            .unwrap_or(false)
    }) {
        match val {
            None => class.call0()?,
            Some(val) if val.is_instance(class)? => val.clone(),
            Some(val) => match val.cast::<PyTuple>() {
                Ok(args) => class.call1(args)?,
                Err(_) => class.call1((val,))?,
            },
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "exceptions must be classes or instances deriving from BaseException, not {}",
            typ.get_type().name()?
        )));
    };
    if let Some(tb) = tb.filter(|tb| !tb.is_none()) {
        exception.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(PyErr::from_value(exception))
}

impl Sleep {
    /// Takes the state out for a step (leaving `Stepping`), refusing a
    /// reentrant one.
    fn take_state(slf: &Bound<'_, Self>) -> PyResult<State> {
        let already = || PyValueError::new_err("coroutine already executing");
        // Borrowed elsewhere: only by a method running Python code
        // meanwhile (a `repr` of the delay that steps the sleep).
        let mut this = slf.try_borrow_mut().map_err(|_| already())?;
        match std::mem::replace(&mut this.state, State::Stepping) {
            State::Stepping => Err(already()),
            state => Ok(state),
        }
    }

    fn set_state(slf: &Bound<'_, Self>, state: State) {
        slf.borrow_mut().state = state;
    }

    /// Ends the sleep; returns `result` (`None`: no object).
    fn finish(slf: &Bound<'_, Self>) -> Option<Py<PyAny>> {
        let mut this = slf.borrow_mut();
        this.state = State::Done;
        this.result
            .as_ref()
            .map(|result| result.clone_ref(slf.py()))
    }

    /// The first step: the wheel entry and its future, or a coroutine of
    /// Python's for anywhere else: `asyncio.sleep` itself on another loop
    /// (for a delay that is a number), `_sleep_elsewhere` otherwise. An
    /// error ends the sleep (`step` marks it done).
    fn start<'py>(slf: &Bound<'py, Self>) -> PyResult<Step<'py>> {
        let py = slf.py();
        let delay = match &slf.borrow().delay {
            Some(delay) => delay.clone_ref(py).into_bound(py),
            None => py.None().into_bound(py),
        };
        let seconds = seconds(&delay).filter(|seconds| !seconds.is_nan());
        let running = match seconds {
            Some(_) => running_runner(py)?,
            None => None,
        };
        // A number, and no ErlangEventLoop runs: asyncio.sleep's own.
        let on_another_loop = seconds.is_some() && running.is_none();
        if let (Some((runner, loop_)), Some(seconds)) = (&running, seconds) {
            // None: the runner may not be used directly.
            if let Some(yielded) = Self::start_on(slf, runner, loop_, seconds)? {
                return Ok(Step::Yield(yielded));
            }
        }
        let result = slf.borrow().result.as_ref().map(|r| r.clone_ref(py));
        let made = if on_another_loop {
            // No loop runs at all: asyncio.sleep raises as it would. Looked
            // up on each sleep, as `asyncio.sleep(...)` in Python code is.
            asyncio_module(py).and_then(|asyncio| asyncio.getattr(intern!(py, "sleep")))
        } else {
            sleep_elsewhere(py).cloned()
        };
        let coroutine = made?.call1((delay, result))?;
        Self::send_elsewhere(slf, coroutine, &py.None().into_bound(py))
    }

    /// The first step on `runner`, whose loop `loop_` runs on this thread
    /// (`seconds` is not NaN): what to yield, or `None` if the runner may
    /// not be used directly.
    fn start_on<'py>(
        slf: &Bound<'py, Self>,
        runner: &Bound<'py, LoopRunner>,
        loop_: &Bound<'py, PyAny>,
        seconds: f64,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        match LoopRunner::sleep_on(runner, loop_, seconds)? {
            RunnerSleep::Elsewhere => Ok(None),
            RunnerSleep::Yield => {
                Self::set_state(slf, State::Yielded);
                Ok(Some(py.None().into_bound(py)))
            }
            RunnerSleep::Entry(key, future) => {
                let blocked = Self::block_on(future.clone());
                if blocked.is_err() {
                    LoopRunner::cancel(runner, key);
                    return blocked.map(Some);
                }
                Self::set_state(
                    slf,
                    State::Waiting {
                        runner: runner.clone().unbind(),
                        key,
                        future: future.unbind(),
                    },
                );
                blocked.map(Some)
            }
        }
    }

    /// A step: `send(value)`.
    fn step<'py>(slf: &Bound<'py, Self>, value: &Bound<'py, PyAny>) -> PyResult<Step<'py>> {
        let py = slf.py();
        match Self::take_state(slf)? {
            State::New if !value.is_none() => {
                Self::set_state(slf, State::New);
                Err(PyTypeError::new_err(
                    "can't send non-None value to a just-started coroutine",
                ))
            }
            State::New => Self::start(slf).inspect_err(|_| Self::set_state(slf, State::Done)),
            State::Yielded => Ok(Step::Return(Self::finish(slf))),
            State::Waiting {
                runner,
                key,
                future,
            } => {
                let future = future.into_bound(py);
                match future.call_method0(intern!(py, "result")) {
                    Ok(_) => Ok(Step::Return(Self::finish(slf))),
                    Err(error) if error.is_instance_of::<InvalidState>(py) => {
                        // Stepped before its future is done: wait on.
                        Self::set_state(
                            slf,
                            State::Waiting {
                                runner,
                                key,
                                future: future.clone().unbind(),
                            },
                        );
                        Self::block_on(future).map(Step::Yield)
                    }
                    Err(error) => {
                        Self::set_state(slf, State::Done);
                        Self::leave_wheel(py, &runner, key);
                        Err(error)
                    }
                }
            }
            State::Elsewhere(coroutine) => {
                Self::send_elsewhere(slf, coroutine.into_bound(py), value)
            }
            State::Done => {
                Self::set_state(slf, State::Done);
                Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ))
            }
            State::Stepping => unreachable!("take_state refuses it"),
        }
    }

    /// Yields `future` to the Task as `await future` does: marked as
    /// blocking, which the Task requires of what it is handed.
    fn block_on(future: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyAny>> {
        let py = future.py();
        future.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(future)
    }

    /// Sends `value` into the coroutine of Python's the sleep drives, as
    /// `await` would (`PyIter_Send`: no method call); its end is the
    /// sleep's.
    fn send_elsewhere<'py>(
        slf: &Bound<'py, Self>,
        coroutine: Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Step<'py>> {
        let py = slf.py();
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: live objects under the GIL; `out` receives a new
        // reference on return and on yield, none on error.
        let sent = unsafe { ffi::PyIter_Send(coroutine.as_ptr(), value.as_ptr(), &mut out) };
        match sent {
            ffi::PySendResult::PYGEN_NEXT => {
                Self::set_state(slf, State::Elsewhere(coroutine.unbind()));
                // SAFETY: a new reference, see above.
                Ok(Step::Yield(unsafe { Bound::from_owned_ptr(py, out) }))
            }
            ffi::PySendResult::PYGEN_RETURN => {
                Self::set_state(slf, State::Done);
                // SAFETY: a new reference, see above.
                let returned = unsafe { Bound::from_owned_ptr(py, out) };
                Ok(Step::Return(
                    (!returned.is_none()).then(|| returned.unbind()),
                ))
            }
            ffi::PySendResult::PYGEN_ERROR => {
                Self::set_state(slf, State::Done);
                Err(PyErr::fetch(py))
            }
        }
    }

    /// A step of the Python coroutine; its end is the sleep's.
    fn forward<'py>(
        slf: &Bound<'py, Self>,
        coroutine: &Bound<'py, PyAny>,
        step: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let stepped = step(coroutine);
        let state = match &stepped {
            Ok(_) => State::Elsewhere(coroutine.clone().unbind()),
            Err(_) => State::Done,
        };
        Self::set_state(slf, state);
        stepped
    }

    /// Takes the wheel entry out (the future stays as it is, as an
    /// abandoned `await future` leaves it).
    fn leave_wheel(py: Python<'_>, runner: &Py<LoopRunner>, key: u64) {
        LoopRunner::cancel(runner.bind(py), key);
    }
}

#[pymethods]
impl Sleep {
    #[new]
    #[pyo3(signature = (delay, result=None))]
    fn new(py: Python<'_>, delay: Py<PyAny>, result: Option<Py<PyAny>>) -> Self {
        Sleep {
            delay: Some(delay),
            result: result.filter(|result| !result.is_none(py)),
            state: State::New,
        }
    }

    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// `send(None)`; the Task and `await` step a coroutine through this.
    /// The end without a result object is the end of iteration without an
    /// exception (CPython reads it as `StopIteration(None)`).
    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        match Self::step(slf, &py.None().into_bound(py))? {
            Step::Yield(yielded) => Ok(Some(yielded)),
            Step::Return(None) => Ok(None),
            Step::Return(Some(result)) => Err(stop_iteration(result)),
        }
    }

    fn send<'py>(slf: &Bound<'py, Self>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match Self::step(slf, value)? {
            Step::Yield(yielded) => Ok(yielded),
            Step::Return(result) => Err(stop_iteration(result.unwrap_or_else(|| py.None()))),
        }
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw<'py>(
        slf: &Bound<'py, Self>,
        typ: &Bound<'py, PyAny>,
        val: Option<&Bound<'py, PyAny>>,
        tb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match Self::take_state(slf)? {
            State::Elsewhere(coroutine) => {
                let coroutine = coroutine.into_bound(py);
                let throw = intern!(py, "throw");
                // Only the arguments given: from Python 3.12 a coroutine's
                // three-argument `throw` warns.
                Self::forward(slf, &coroutine, |coroutine| match (val, tb) {
                    (None, None) => coroutine.call_method1(throw, (typ,)),
                    (Some(val), None) => coroutine.call_method1(throw, (typ, val)),
                    _ => coroutine.call_method1(throw, (typ, val, tb)),
                })
            }
            State::Done => {
                // A finished coroutine, as CPython's says.
                Self::set_state(slf, State::Done);
                Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ))
            }
            state => {
                // Arguments that name no exception leave the sleep as it was.
                let exception = match thrown(typ, val, tb) {
                    Ok(exception) => exception,
                    Err(error) => {
                        Self::set_state(slf, state);
                        return Err(error);
                    }
                };
                Self::set_state(slf, State::Done);
                if let State::Waiting { runner, key, .. } = state {
                    Self::leave_wheel(py, &runner, key);
                }
                Err(exception)
            }
        }
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let state = Self::take_state(slf)?;
        Self::set_state(slf, State::Done);
        match state {
            State::Elsewhere(coroutine) => {
                coroutine.call_method0(py, intern!(py, "close"))?;
            }
            State::Waiting { runner, key, .. } => Self::leave_wheel(py, &runner, key),
            _ => {}
        }
        Ok(())
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        NAME
    }

    #[getter]
    fn __qualname__(&self) -> &'static str {
        NAME
    }

    /// What the sleep waits for, as a coroutine's `cr_await`.
    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.state {
            State::Waiting { future, .. } => Some(future.clone_ref(py)),
            State::Elsewhere(coroutine) => Some(coroutine.clone_ref(py)),
            _ => None,
        }
    }

    /// A coroutine's frame: a native one has none.
    #[getter]
    fn cr_frame(&self) -> Option<Py<PyAny>> {
        None
    }

    #[getter]
    fn cr_running(&self) -> bool {
        matches!(self.state, State::Stepping)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        // Read, then released before the delay's `repr` runs Python code.
        let (delay, state) = {
            let this = slf.borrow();
            let state = match this.state {
                State::New => "created",
                State::Done => "done",
                _ => "pending",
            };
            (this.delay.as_ref().map(|d| d.clone_ref(py)), state)
        };
        let delay = match delay {
            Some(delay) => delay.bind(py).repr()?.to_string(),
            None => "?".to_owned(),
        };
        Ok(format!("<erlang_asyncio.sleep({delay}) {state}>"))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(delay) = &self.delay {
            visit.call(delay)?;
        }
        if let Some(result) = &self.result {
            visit.call(result)?;
        }
        match &self.state {
            State::Waiting { runner, future, .. } => {
                visit.call(runner)?;
                visit.call(future)
            }
            State::Elsewhere(coroutine) => visit.call(coroutine),
            _ => Ok(()),
        }
    }

    fn __clear__(&mut self) {
        self.delay = None;
        self.result = None;
        self.state = State::Done;
    }
}

pyo3::import_exception!(asyncio.exceptions, InvalidStateError);
use InvalidStateError as InvalidState;

/// `erlang_asyncio.sleep(delay, result=None)` itself: makes a [`Sleep`]
/// without a Python frame of its own, and is a coroutine function to
/// asyncio (`_is_coroutine`) and, from Python 3.12, to `inspect`
/// (`_is_coroutine_marker`), as the `async def` it stands for.
#[pyclass(module = "_erlang_loop", name = "SleepFunction", frozen)]
pub struct SleepFunction;

#[pymethods]
impl SleepFunction {
    #[new]
    fn new() -> Self {
        SleepFunction
    }

    #[pyo3(signature = (delay, result=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        delay: Py<PyAny>,
        result: Option<Py<PyAny>>,
    ) -> PyResult<Py<Sleep>> {
        Py::new(py, Sleep::new(py, delay, result))
    }

    #[classattr]
    fn _is_coroutine(py: Python<'_>) -> PyResult<Py<PyAny>> {
        py.import("asyncio.coroutines")?
            .getattr("_is_coroutine")
            .map(Bound::unbind)
    }

    #[classattr]
    fn _is_coroutine_marker(py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inspect = py.import("inspect")?;
        Ok(match inspect.getattr("_is_coroutine_mark") {
            Ok(mark) => mark.unbind(),
            Err(_) => py.None(),
        })
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        NAME
    }

    #[getter]
    fn __qualname__(&self) -> &'static str {
        NAME
    }

    fn __repr__(&self) -> &'static str {
        "<function erlang_asyncio.sleep>"
    }
}
