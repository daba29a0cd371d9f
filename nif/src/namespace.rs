//! Globals for `py:eval`/`py:exec`: one namespace per calling Erlang process,
//! so consecutive calls from a process see each other's names. The namespace
//! is dropped (on a worker, with the GIL) when the process dies.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rustler::{Env, LocalPid, Monitor, ResourceArc};

use crate::sync::lock;

/// The globals dicts, only touched with the GIL held.
static NAMESPACES: LazyLock<Mutex<HashMap<LocalPid, Py<PyDict>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Processes we monitor, with the resource that receives their `DOWN`.
static WATCHED: LazyLock<Mutex<HashMap<LocalPid, ResourceArc<NamespaceOwner>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Receives the `DOWN` of a process that owns a namespace.
pub struct NamespaceOwner;

#[rustler::resource_impl]
impl rustler::Resource for NamespaceOwner {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        lock(&WATCHED).remove(&pid);
        // Never take the GIL in a VM callback (LESSONS 4): drop it on a worker.
        if let Some(pool) = crate::runtime::pool() {
            pool.submit(Box::new(move || {
                Python::attach(|_py| {
                    let namespace = lock(&NAMESPACES).remove(&pid);
                    drop(namespace);
                })
            }));
        }
    }
}

/// Makes sure the namespace of `pid` will be dropped when it dies. Called in
/// the NIF, where a caller env exists to monitor from.
pub fn watch(env: Env<'_>, pid: LocalPid) {
    let mut watched = lock(&WATCHED);
    if watched.contains_key(&pid) {
        return;
    }
    let owner = ResourceArc::new(NamespaceOwner);
    if owner.monitor(Some(env), &pid).is_some() {
        watched.insert(pid, owner);
    }
}

/// The globals of `pid`, created on first use. A process that is not watched
/// (it died before its job ran: its `DOWN` came and went) gets a throwaway
/// dict: storing it would leak it, as no `DOWN` will ever drop it. The check
/// and the insert happen under the GIL, which the drop in `down` needs too,
/// so a `DOWN` racing with this call still drops what we insert.
pub fn globals<'py>(py: Python<'py>, pid: LocalPid) -> PyResult<Bound<'py, PyDict>> {
    if let Some(existing) = lock(&NAMESPACES).get(&pid) {
        return Ok(existing.bind(py).clone());
    }
    let fresh = PyDict::new(py);
    fresh.set_item("__builtins__", py.import("builtins")?)?;
    fresh.set_item("__name__", "__erlang__")?;
    if lock(&WATCHED).contains_key(&pid) {
        lock(&NAMESPACES).insert(pid, fresh.clone().unbind());
    }
    Ok(fresh)
}

/// How many namespaces exist (for tests of the clean-up).
pub fn count() -> usize {
    lock(&NAMESPACES).len()
}
