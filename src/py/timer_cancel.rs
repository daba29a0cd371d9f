//! `cancel()` of our `TimerHandle` subclass, native.
//!
//! asyncio's `TimerHandle.cancel` is two Python frames (it calls
//! `Handle.cancel` through `super()`) around two calls into the loop; the
//! ASGI timeout pattern (`wait_for`, `asyncio.timeout`) cancels most timers
//! it makes, so that is a cost paid per request. This does the same steps in
//! the same order, as a method descriptor of the class (no bound method
//! is made per call):
//!
//! 1. nothing if the handle is already cancelled;
//! 2. `loop._timer_handle_cancelled(handle)` (our loop takes the timer out of
//!    the wheel; a subclass overriding it is called);
//! 3. in debug mode, asyncio's own `Handle.cancel` (it records the repr);
//!    otherwise `_cancelled = True` and the callback and arguments dropped.
//!
//! If `asyncio.TimerHandle.cancel` or `asyncio.Handle.cancel` were replaced
//! after start-up (a tracer, a test double), the current
//! `asyncio.TimerHandle.cancel` runs instead, so the patch is honoured. The
//! two class lookups that tell are made again only when `TimerHandle`'s
//! type version tag changed (any change to it or to `Handle` does that),
//! and `_loop` is read from its slot: a cancel is a third cheaper.
//! (`asyncio.sleep` cancels its timer after every sleep.) While the loop's
//! `_timer_handle_cancelled` and `get_debug` are its runner's native paths
//! (see `native_paths_runner`), the runner's `timer_cancelled` is called
//! directly and debug mode is known off: no method look-up and call, each
//! of which cost about as much as the rest of the cancel (5% of the loop
//! thread of 10k tasks sleeping in turn, where every `h.cancel()` finds
//! its timer fired).

use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use super::handles::defined_by_asyncio;
use super::method::{builtin_method_parts, call_method, def_is_named, methods_for, MethodDef};
use super::once::get_or_make;
use super::runner::{handle_kinds, LoopRunner};

/// asyncio's classes and their `cancel` as they were at start-up.
struct Stock {
    timer_class: Py<PyType>,
    handle_class: Py<PyType>,
    timer_cancel: Py<PyAny>,
    handle_cancel: Py<PyAny>,
    /// Whether both `cancel`s were asyncio's own then.
    pristine: bool,
    /// `asyncio.TimerHandle`'s type version tag when both `cancel`s were
    /// last found unchanged (0: none). CPython gives a type a new tag
    /// whenever it or a base class is modified, so while the tag is the
    /// same, neither `cancel` can have been replaced: the two class
    /// lookups per cancel are skipped.
    unpatched_tag: AtomicU32,
}

impl Stock {
    /// Are both `cancel`s still the ones found at start-up, and asyncio's?
    fn unpatched(&self, py: Python<'_>) -> PyResult<bool> {
        if !self.pristine {
            return Ok(false);
        }
        let timer_class = self.timer_class.bind(py);
        let tag = version_tag(timer_class);
        if tag != 0 && tag == self.unpatched_tag.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let unpatched = timer_class
            .getattr(intern!(py, "cancel"))?
            .is(&self.timer_cancel)
            && self
                .handle_class
                .bind(py)
                .getattr(intern!(py, "cancel"))?
                .is(&self.handle_cancel);
        // Read after the lookups, which give the type a tag if it had none.
        let tag = if unpatched {
            version_tag(timer_class)
        } else {
            0
        };
        self.unpatched_tag.store(tag, Ordering::Relaxed);
        Ok(unpatched)
    }
}

/// The type's version tag if it is valid, else 0.
fn version_tag(ty: &Bound<'_, PyType>) -> u32 {
    let raw = ty.as_type_ptr();
    // SAFETY: reading two fields of a live type object, under the GIL (the
    // only place CPython changes them).
    unsafe {
        if (*raw).tp_flags & ffi::Py_TPFLAGS_VALID_VERSION_TAG == 0 {
            return 0;
        }
        (*raw).tp_version_tag
    }
}

fn stock(py: Python<'_>) -> PyResult<&'static Stock> {
    static STOCK: PyOnceLock<Stock> = PyOnceLock::new();
    get_or_make(&STOCK, py, || {
        let events = py.import("asyncio.events")?;
        let timer_class = events.getattr("TimerHandle")?.cast_into::<PyType>()?;
        let handle_class = events.getattr("Handle")?.cast_into::<PyType>()?;
        let timer_cancel = timer_class.getattr("cancel")?;
        let handle_cancel = handle_class.getattr("cancel")?;
        Ok(Stock {
            pristine: defined_by_asyncio(&timer_cancel, "cancel")?
                && defined_by_asyncio(&handle_cancel, "cancel")?,
            unpatched_tag: AtomicU32::new(0),
            timer_cancel: timer_cancel.unbind(),
            handle_cancel: handle_cancel.unbind(),
            timer_class: timer_class.unbind(),
            handle_class: handle_class.unbind(),
        })
    })
}

static CANCEL: MethodDef = MethodDef::noargs(
    c"cancel",
    c"cancel($self)\n--\n\nCancel the call (native TimerHandle.cancel of erlang_loop).",
    cancel_method,
);

/// `_erlang_loop.timer_handle_methods(cls)`: `{"cancel": method}` for
/// `cls`, a subclass of `asyncio.TimerHandle` (set them on it).
#[pyfunction]
pub fn timer_handle_methods<'py>(cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyDict>> {
    let py = cls.py();
    methods_for(cls, stock(py)?.timer_class.bind(py), &[&CANCEL])
}

unsafe extern "C" fn cancel_method(
    slf: *mut ffi::PyObject,
    no_arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method of ours; the descriptor
    // checked that `slf` is an instance of our timer class.
    unsafe {
        call_method(slf, no_arg, |handle, _| {
            cancel(handle).map(|()| handle.py().None())
        })
    }
}

fn cancel(handle: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = handle.py();
    let stock = stock(py)?;
    let kinds = match handle_kinds() {
        Some(kinds) if stock.unpatched(py)? => kinds,
        _ => {
            let timer_cancel = stock.timer_class.bind(py).getattr(intern!(py, "cancel"))?;
            return timer_cancel.call1((handle,)).map(drop);
        }
    };
    // TimerHandle.cancel
    if kinds.is_cancelled(handle)? {
        return Ok(());
    }
    let loop_ = kinds.loop_of(handle)?;
    if let Some(runner) = native_paths_runner(&loop_) {
        // What the two loop calls below come to, called directly.
        LoopRunner::timer_cancelled(&runner, handle);
        if !kinds.is_cancelled(handle)? {
            kinds.set_cancelled(handle)?;
            kinds.drop_callback(handle)?;
        }
        return Ok(());
    }
    loop_.call_method1(intern!(py, "_timer_handle_cancelled"), (handle,))?;
    // Handle.cancel
    if kinds.is_cancelled(handle)? {
        return Ok(());
    }
    kinds.set_cancelled(handle)?;
    let loop_ = kinds.loop_of(handle)?;
    if loop_.call_method0(intern!(py, "get_debug"))?.is_truthy()? {
        // Keeps callback and arguments in the repr, as asyncio does.
        handle.setattr(intern!(py, "_repr"), handle.repr()?)?;
    }
    kinds.drop_callback(handle)
}

/// The runner whose native paths `loop_`'s `_timer_handle_cancelled` and
/// `get_debug` are: the runner's own `timer_cancelled` (a method of a
/// `LoopRunner`, bound to it) and `LoopRunner.get_debug` in the loop's
/// `__dict__`, where `ErlangEventLoop` puts them while it uses them (never
/// in debug mode) and where they shadow the class's methods (the loop
/// installs none that its class overrides). Calling that runner's
/// `timer_cancelled` is then what `loop._timer_handle_cancelled` does, and
/// `loop.get_debug()` is False. None for anything else, or on any error.
fn native_paths_runner<'py>(loop_: &Bound<'py, PyAny>) -> Option<Bound<'py, LoopRunner>> {
    let py = loop_.py();
    // SAFETY: a live object, under the GIL; a new reference or an error
    // (an object without a `__dict__`), which is cleared.
    let dict = unsafe { ffi::PyObject_GenericGetDict(loop_.as_ptr(), std::ptr::null_mut()) };
    // SAFETY: a new reference, or null with an error set.
    let Some(dict) = (unsafe { Bound::from_owned_ptr_or_opt(py, dict) }) else {
        drop(PyErr::take(py));
        return None;
    };
    let dict = dict.cast_into::<PyDict>().ok()?;
    let cancelled = dict
        .get_item(intern!(py, "_timer_handle_cancelled"))
        .ok()??;
    let runner = bound_runner_method(&cancelled, c"timer_cancelled")?;
    let get_debug = dict.get_item(intern!(py, "get_debug")).ok()??;
    get_debug.is(runner_get_debug(py).ok()?).then_some(runner)
}

/// The runner `method` is bound to, if it is a `LoopRunner`'s builtin
/// method named `name` (the class cannot be subclassed).
fn bound_runner_method<'py>(
    method: &Bound<'py, PyAny>,
    name: &std::ffi::CStr,
) -> Option<Bound<'py, LoopRunner>> {
    // SAFETY: a live object, under the GIL (we hold `method`); its parts
    // live while it does.
    unsafe {
        let (def, bound) = builtin_method_parts(method.as_ptr())?;
        if !def_is_named(def, name) {
            return None;
        }
        Bound::from_borrowed_ptr_or_opt(method.py(), bound)?
            .cast_into_exact::<LoopRunner>()
            .ok()
    }
}

/// `LoopRunner.get_debug`, the native `get_debug` path (a static method:
/// the same object from the class or any runner).
fn runner_get_debug(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static GET_DEBUG: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_DEBUG
        .get_or_try_init(py, || {
            Ok(py
                .get_type::<LoopRunner>()
                .getattr(intern!(py, "get_debug"))?
                .unbind())
        })
        .map(|get_debug| get_debug.bind(py))
}
