//! Modules made in Rust and put into `sys.modules`, where `import` finds
//! them: the interpreter is embedded, so they are not extension modules on
//! a path.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

/// The module `name` if it was imported, without importing it.
pub fn imported<'py>(py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    py.import("sys")?
        .getattr("modules")?
        .cast_into::<PyDict>()?
        .get_item(name)
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
