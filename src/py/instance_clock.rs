//! `ErlangEventLoop.time`: a data descriptor that reads the clock from the
//! loop's own `__dict__`.
//!
//! The loop keeps its clock in its instance dict: the runner's native
//! `time` while the native paths are in, or a clock a test put there
//! (`mock.patch.object(loop, "time", ...)`), which the loop must notice to
//! take the paths that read it. Noticing a write needs a data descriptor on
//! the class (a class `__setattr__` ran as Python code for each of the sixty
//! attributes an `asyncio.run` sets); a data descriptor is also asked on
//! every read, and written in Python it made `loop.time()` some 90 ns
//! slower. This one answers a read with one dict lookup in C.

use pyo3::exceptions::{PyAttributeError, PyKeyError};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The descriptor. `fallback` is asyncio's `BaseEventLoop.time`, the
/// loop's clock when its dict holds none (debug mode, closed); `bind` makes
/// a bound method of it (`types.MethodType`); `on_change(loop)` runs after
/// a clock is set on or deleted from a loop.
#[pyclass(module = "_erlang_loop", frozen)]
pub struct InstanceClock {
    fallback: Py<PyAny>,
    bind: Py<PyAny>,
    on_change: Py<PyAny>,
}

#[pymethods]
impl InstanceClock {
    #[new]
    fn new(fallback: Py<PyAny>, bind: Py<PyAny>, on_change: Py<PyAny>) -> Self {
        InstanceClock {
            fallback,
            bind,
            on_change,
        }
    }

    fn __get__(
        &self,
        py: Python<'_>,
        loop_: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        // Looked up on the class (`inspect`, `mock.patch.object`'s save):
        // asyncio's function, as a method's class attribute is.
        let Some(loop_) = loop_.filter(|loop_| !loop_.is_none()) else {
            return Ok(self.fallback.clone_ref(py));
        };
        match instance_dict(loop_)?.get_item(intern!(py, "time"))? {
            Some(clock) => Ok(clock.unbind()),
            None => Ok(self.bind.call1(py, (self.fallback.clone_ref(py), loop_))?),
        }
    }

    fn __set__(&self, loop_: &Bound<'_, PyAny>, clock: &Bound<'_, PyAny>) -> PyResult<()> {
        instance_dict(loop_)?.set_item(intern!(loop_.py(), "time"), clock)?;
        self.on_change.call1(loop_.py(), (loop_,))?;
        Ok(())
    }

    fn __delete__(&self, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = loop_.py();
        match instance_dict(loop_)?.del_item(intern!(py, "time")) {
            Err(error) if error.is_instance_of::<PyKeyError>(py) => {
                return Err(PyAttributeError::new_err("time"));
            }
            result => result?,
        }
        self.on_change.call1(py, (loop_,))?;
        Ok(())
    }

    // `on_change` reaches back to the class holding the descriptor (through
    // its module's globals): unreported, that cycle is never collected, nor
    // a class made at run time with one of these (no `__clear__`: a frozen
    // class cannot drop them, and the class's own clear breaks the cycle).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.fallback)?;
        visit.call(&self.bind)?;
        visit.call(&self.on_change)
    }
}

/// `object.__dict__` without a lookup of `__dict__` through the type (which
/// this descriptor's own read would pay on every `loop.time()`).
fn instance_dict<'py>(object: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let py = object.py();
    // SAFETY: `object` is a live object and the GIL is held (`py`); the
    // call returns a new reference or NULL with an exception set, which
    // `from_owned_ptr_or_err` takes either way.
    let dict = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_GenericGetDict(object.as_ptr(), std::ptr::null_mut()),
        )
    }?;
    Ok(dict.cast_into::<PyDict>()?)
}
