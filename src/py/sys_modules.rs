//! Modules made in Rust and put into `sys.modules`, where `import` finds
//! them: the interpreter is embedded, so they are not extension modules on
//! a path.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

/// The module `name` if it was imported, without importing it. Runs no
/// Python code (`py.import("sys")` would: it calls `builtins.__import__`,
/// which a debugger or an import tracer may have replaced), so it may be
/// called under a lock that a thread holding the GIL may wait for (the
/// interrupt of a timed-out job, `nif/src/interrupt.rs`).
pub fn imported<'py>(py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    sys_attribute(py, c"modules")?
        .cast_into::<PyDict>()?
        .get_item(name)
}

/// `sys.<name>`, read from the `sys` module's dict as CPython's own code
/// does: no import, no Python code.
pub fn sys_attribute<'py>(py: Python<'py>, name: &std::ffi::CStr) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held (`py`) and `name` is a NUL-terminated string;
    // the result is a borrowed reference (or NULL, with no exception set),
    // made an owned one at once, before any other Python call.
    let attribute =
        unsafe { Bound::from_borrowed_ptr_or_opt(py, pyo3::ffi::PySys_GetObject(name.as_ptr())) };
    attribute.ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("lost sys.{}", name.to_string_lossy()))
    })
}

/// Makes the module `name`, has `fill` add its contents, and puts it in
/// `sys.modules`. Idempotent: a module already there is left as it is.
pub fn install(
    py: Python<'_>,
    name: &str,
    fill: impl FnOnce(&Bound<'_, PyModule>) -> PyResult<()>,
) -> PyResult<()> {
    let modules = py.import("sys")?.getattr("modules")?;
    if modules.contains(name)? {
        return Ok(());
    }
    let module = PyModule::new(py, name)?;
    fill(&module)?;
    modules.set_item(name, module)
}
