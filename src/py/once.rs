//! Values made once per process under the GIL, safe against re-entry.
//!
//! `PyOnceLock::get_or_try_init` runs its closure inside the cell, and a
//! second initialisation from within the first may deadlock (it did:
//! making a value allocates, an allocation may run the GC's finalizers,
//! and a finalizer that schedules a timer or cancels one comes back for
//! the same value). Here the value is made outside the cell: a re-entrant
//! call makes one of its own, and the first one stored is kept.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeCheck;

/// `cell`'s value, made by `make` if it has none yet (see the module).
pub(crate) fn get_or_make<'a, T>(
    cell: &'a PyOnceLock<T>,
    py: Python<'_>,
    make: impl FnOnce() -> PyResult<T>,
) -> PyResult<&'a T> {
    if let Some(value) = cell.get(py) {
        return Ok(value);
    }
    let value = make()?;
    // Another call (re-entrant, or another thread while `make` released
    // the GIL) may have stored one first: that one is kept.
    let _ = cell.set(py, value);
    Ok(cell.get(py).expect("a PyOnceLock holds a value once set"))
}

/// `module.name`, looked up once and kept in `cell`, as a `T` (`PyAny` for
/// any object; `PyType` for a class, checked once).
pub(crate) fn cached_attr<'py, T: PyTypeCheck>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<T>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, T>> {
    get_or_make(cell, py, || {
        Ok::<_, PyErr>(py.import(module)?.getattr(name)?.cast_into::<T>()?.unbind())
    })
    .map(|value| value.bind(py))
}
