//! Python exceptions as Erlang terms: `{ExceptionName, Message, Traceback}`.

use std::any::Any;

use pyo3::prelude::*;
use pyo3::types::PyString;
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::convert::{binary_term, existing_atom_or_binary};

/// `{error, {'ValueError', <<"message">>, <<"Traceback ...">>}}`.
pub fn error_result<'a>(env: Env<'a>, py: Python<'_>, error: &PyErr) -> Term<'a> {
    (atoms::error(), exception_term(env, py, error)).encode(env)
}

/// `{'ValueError', <<"message">>, <<"Traceback ...">>}`.
pub fn exception_term<'a>(env: Env<'a>, py: Python<'_>, error: &PyErr) -> Term<'a> {
    let name = error
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    let message = error
        .value(py)
        .str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if crate::job::current_job_cancelled_holding_gil(py) {
        // Nobody takes this result. And the job's one interrupt may have
        // been spent in that `str()` (an endless `__str__`): formatting the
        // traceback would call it again, with no interrupt to come.
        return reason_term(env, &name, &message, "");
    }
    let traceback = format_traceback(py, error).unwrap_or_default();
    reason_term(env, &name, &message, &traceback)
}

/// `{Name, <<Message>>, <<Traceback>>}`, the name an atom when the node
/// has that atom (see `existing_atom_or_binary`).
fn reason_term<'a>(env: Env<'a>, name: &str, message: &str, traceback: &str) -> Term<'a> {
    (
        existing_atom_or_binary(env, name),
        binary_term(env, message.as_bytes()),
        binary_term(env, traceback.as_bytes()),
    )
        .encode(env)
}

/// `{error, {'PanicException', <<"message">>, <<>>}}` for a panic caught
/// while running a call: the name pyo3 gives a Rust panic in Python.
pub fn panic_result<'a>(env: Env<'a>, payload: &(dyn Any + Send)) -> Term<'a> {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    tracing::error!(message, "a Python call panicked");
    (
        atoms::error(),
        reason_term(env, "PanicException", message, ""),
    )
        .encode(env)
}

fn format_traceback(py: Python<'_>, error: &PyErr) -> PyResult<String> {
    let traceback = py.import("traceback")?;
    // The traceback travels with the PyErr: before Python 3.12 an exception
    // that no `except` caught has no `__traceback__` of its own.
    let lines = traceback.call_method1(
        "format_exception",
        (error.get_type(py), error.value(py), error.traceback(py)),
    )?;
    let text = PyString::new(py, "").call_method1("join", (lines,))?;
    // Lossy: a message with a lone surrogate must not cost the traceback.
    Ok(text.cast::<PyString>()?.to_string_lossy().into_owned())
}
