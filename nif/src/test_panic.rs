//! `_py_nif_testing`, a Python module for the tests only: `panic(message)`
//! panics in Rust, which pyo3 raises in Python as `PanicException` and
//! resumes as a Rust panic where a caller fetches it. The tests check that a
//! `py:call` meeting one still answers its caller.

use erlang_python::py::sys_modules;
use pyo3::prelude::*;

#[pyfunction]
fn panic(message: &str) {
    panic!("{message}");
}

/// Creates `_py_nif_testing` and puts it in `sys.modules`. Idempotent.
pub fn install(py: Python<'_>) -> PyResult<()> {
    sys_modules::install(py, "_py_nif_testing", |module| {
        module.add_function(wrap_pyfunction!(panic, module)?)
    })
}
