//! asyncio's running loop for this thread, asked as seldom as its answer
//! can change.
//!
//! `asyncio._get_running_loop()` calls `getpid()` on every call in CPython
//! 3.11 (a fork must not see its parent's loop): a system call per
//! `erlang_asyncio.sleep`. CPython keeps the answer in an immutable holder
//! object in the thread's state dictionary, and makes a new holder each
//! time the running loop is set. So this thread's last answer stands while
//! the dictionary still holds the very holder it came with (kept alive
//! here, so its address cannot be reused) and the process has not forked
//! since. Anything else (no such holder: another CPython, which may keep
//! the loop elsewhere) asks asyncio every time.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use super::once::{cached_attr, get_or_make};

/// Forks of this process so far (counted in the child).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// An answer of asyncio and the holder it was read from.
struct Seen {
    holder: Py<PyAny>,
    loop_: Py<PyAny>,
    forks: u64,
}

thread_local! {
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

/// `asyncio.events._get_running_loop()`, answered from this thread's last
/// answer while it stands (see the module).
pub(crate) fn current(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static AT_FORK: Once = Once::new();
    // SAFETY: registers a handler that only bumps an atomic counter.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forked_child));
    });
    let holder = holder(py)?;
    let forks = FORKS.load(Ordering::Relaxed);
    if let Some(holder) = &holder {
        let seen = SEEN.with_borrow(|seen| {
            seen.as_ref()
                .filter(|seen| seen.holder.is(holder) && seen.forks == forks)
                .map(|seen| seen.loop_.clone_ref(py))
        });
        if let Some(loop_) = seen {
            return Ok(loop_.into_bound(py));
        }
    }
    let loop_ =
        cached_attr(py, &GET_RUNNING_LOOP, "asyncio.events", "_get_running_loop")?.call0()?;
    if let Some(holder) = holder.filter(|_| !loop_.is_none()) {
        let replaced = SEEN.replace(Some(Seen {
            holder: holder.unbind(),
            loop_: loop_.clone().unbind(),
            forks,
        }));
        // A holder and a loop: their last references may go, with no
        // borrow of the cell held.
        drop(replaced);
    }
    Ok(loop_)
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Drops this thread's last answer (a loop stopping on it): it would keep
/// the loop alive.
pub(crate) fn forget() {
    let seen = SEEN.take();
    drop(seen);
}

/// The holder of the running loop in this thread's state dictionary, when
/// it is one of asyncio's `_RunningLoopHolder`s.
fn holder(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    // SAFETY: the GIL is held; a borrowed reference to this thread's
    // dictionary (or NULL, no exception set), owned at once.
    let dict = unsafe { Bound::from_borrowed_ptr_or_opt(py, ffi::PyThreadState_GetDict()) };
    let Some(dict) = dict.and_then(|dict| dict.cast_into::<PyDict>().ok()) else {
        return Ok(None);
    };
    let Some(holder) = dict.get_item(intern!(py, "__asyncio_running_event_loop__"))? else {
        return Ok(None);
    };
    Ok(is_holder_type(&holder.get_type())?.then_some(holder))
}

/// Whether `ty` is asyncio's `_RunningLoopHolder` (the first type seen
/// with that name is remembered).
fn is_holder_type(ty: &Bound<'_, PyType>) -> PyResult<bool> {
    static HOLDER: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = ty.py();
    if let Some(holder) = HOLDER.get(py) {
        return Ok(holder.is(ty));
    }
    if ty.name()? != "_RunningLoopHolder" {
        return Ok(false);
    }
    get_or_make(&HOLDER, py, || Ok(ty.clone().unbind())).map(|holder| holder.is(ty))
}
