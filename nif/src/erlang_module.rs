//! The Python module `_erlang` (wrapped by `python/erlang.py`): Python code
//! calling back into the node. `call` runs a function registered with
//! `py:register_function/2`; `send` sends a message to a pid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};

use erlang_python::py::pool::Pool;
use erlang_python::py::sys_modules;

use crate::atoms;
use crate::convert::{binary_term, py_to_term, term_to_py};
use crate::opaque::{OpaqueTerm, Pid, Ref};
use crate::sync::lock;

pyo3::create_exception!(
    erlang,
    ErlangError,
    pyo3::exceptions::PyException,
    "An error raised by an Erlang function called from Python."
);

/// The `py_callback` server that runs registered functions and relays sends.
static CALLBACK_SERVER: Mutex<Option<LocalPid>> = Mutex::new(None);

/// False while the application is stopped: waits end, new calls fail fast.
static ACCEPTING: AtomicBool = AtomicBool::new(false);

/// How often a waiting `erlang.call` checks for shutdown and cancellation.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

pub fn set_accepting_callbacks(accepting: bool) {
    ACCEPTING.store(accepting, Ordering::SeqCst);
}

/// Where one `erlang.call`'s answer lands: Erlang fills it, the waiting
/// Python thread takes it.
struct ReplySlot {
    answer: Mutex<Answer>,
    ready: Condvar,
}

enum Answer {
    Pending,
    Given(OwnedEnv, SavedTerm),
    /// Erlang let go of the call without answering.
    Lost,
    /// The waiting thread took its answer, or gave up: nothing more is
    /// taken.
    Over,
}

/// Erlang's handle on one `erlang.call`, carried by the request. When the
/// last Erlang reference goes without an answer (the server died with the
/// request in its mailbox, or the process running the function was
/// killed), the waiting thread learns at once that none will come: it
/// holds the slot, never this handle, or it would wait for itself.
pub struct CallbackReply {
    slot: Arc<ReplySlot>,
}

impl Drop for CallbackReply {
    // Runs wherever Erlang frees the term: takes no GIL, only the slot.
    fn drop(&mut self) {
        let mut answer = lock(&self.slot.answer);
        if matches!(*answer, Answer::Pending) {
            *answer = Answer::Lost;
            self.slot.ready.notify_all();
        }
    }
}

/// Names each call for `py_callback_abandoned`, which must not hold the
/// handle itself.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(0);

#[rustler::resource_impl]
impl rustler::Resource for CallbackReply {}

/// `set_callback_server(Pid | undefined)` -> `ok`.
#[rustler::nif]
fn set_callback_server(server: Term<'_>) -> NifResult<Atom> {
    let pid = atoms::pid_or_undefined(server)?;
    set_accepting_callbacks(pid.is_some());
    *lock(&CALLBACK_SERVER) = pid;
    Ok(atoms::ok())
}

/// `callback_reply(Reply, Result)` -> `ok`: hands `Result` to the waiting
/// Python thread.
#[rustler::nif]
fn callback_reply(reply: ResourceArc<CallbackReply>, result: Term<'_>) -> Atom {
    let owned = OwnedEnv::new();
    let saved = owned.save(result);
    let mut answer = lock(&reply.slot.answer);
    if matches!(*answer, Answer::Pending) {
        *answer = Answer::Given(owned, saved);
        reply.slot.ready.notify_all();
    }
    atoms::ok()
}

fn callback_server() -> PyResult<LocalPid> {
    if !ACCEPTING.load(Ordering::SeqCst) {
        return Err(not_running());
    }
    lock(&CALLBACK_SERVER).ok_or_else(not_running)
}

fn ensure_foreign_thread() -> PyResult<()> {
    erlang_python::py::native_loop::ensure_in_node()?;
    if rustler::thread::is_scheduler_thread() {
        return Err(PyRuntimeError::new_err(
            "erlang.call/send cannot run on an Erlang scheduler thread",
        ));
    }
    Ok(())
}

/// `erlang.call(name, *args)`: runs the Erlang function registered as `name`
/// and returns its result. Erlang errors raise `erlang.ErlangError`.
#[pyfunction]
#[pyo3(signature = (name, *args))]
fn call(py: Python<'_>, name: &str, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
    ensure_foreign_thread()?;
    let server = callback_server()?;
    let slot = Arc::new(ReplySlot {
        answer: Mutex::new(Answer::Pending),
        ready: Condvar::new(),
    });
    let id = NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed);
    let mut message_env = OwnedEnv::new();
    let message = message_env.run(|env| -> PyResult<SavedTerm> {
        let args = args
            .iter()
            .map(|arg| py_to_term(env, &arg))
            .collect::<PyResult<Vec<_>>>()?;
        let message = (
            atoms::py_callback(),
            binary_term(env, name.as_bytes()),
            args,
            ResourceArc::new(CallbackReply { slot: slot.clone() }),
            id,
        );
        Ok(message_env.save(message))
    })?;
    if message_env
        .send_and_clear(&server, |env| message.load(env))
        .is_err()
    {
        // A server that died and is not replaced yet: as if it had died
        // with the request in its mailbox.
        return Err(match ACCEPTING.load(Ordering::SeqCst) {
            true => lost_error(name),
            false => not_running(),
        });
    }

    // A pool thread lends its place while it waits: the function may call
    // Python back (`py:call`) and wait for that.
    match py.detach(|| Pool::while_waiting_for_erlang(|| wait_for_reply(&slot))) {
        Wait::Reply(owned, saved) => owned.run(|env| decode_reply(py, env, saved.load(env))),
        Wait::Lost => Err(lost_error(name)),
        Wait::Stopped => Err(PyRuntimeError::new_err(
            "erlang_python stopped while waiting for an Erlang reply",
        )),
        // The interrupt of a timed-out job cannot reach a thread blocked
        // here, so the wait itself gives up, and the server stops the
        // function nobody waits for.
        Wait::Cancelled => {
            crate::job::take_current_timeout(py);
            let mut env = OwnedEnv::new();
            let _ = env.send_and_clear(&server, |env| {
                (atoms::py_callback_abandoned(), id).encode(env)
            });
            Err(PyTimeoutError::new_err(
                "the Erlang caller gave up waiting while erlang.call was running",
            ))
        }
    }
}

fn lost_error(name: &str) -> PyErr {
    ErlangError::new_err(format!(
        "erlang.call('{name}') got no answer: the Erlang process handling it ended \
         (py_callback restarted, or that process was killed)"
    ))
}

fn not_running() -> PyErr {
    PyRuntimeError::new_err("erlang_python is not running")
}

/// How a wait for an Erlang reply ended.
enum Wait {
    Reply(OwnedEnv, SavedTerm),
    /// Erlang let go of the call without answering.
    Lost,
    /// The application stopped.
    Stopped,
    /// The job running this code timed out.
    Cancelled,
}

fn wait_for_reply(slot: &ReplySlot) -> Wait {
    let mut answer = lock(&slot.answer);
    loop {
        match std::mem::replace(&mut *answer, Answer::Over) {
            Answer::Given(owned, saved) => return Wait::Reply(owned, saved),
            // The server ends its calls after saying it stops.
            Answer::Lost if !ACCEPTING.load(Ordering::SeqCst) => return Wait::Stopped,
            Answer::Lost | Answer::Over => return Wait::Lost,
            Answer::Pending => *answer = Answer::Pending,
        }
        if !ACCEPTING.load(Ordering::SeqCst) {
            *answer = Answer::Over;
            return Wait::Stopped;
        }
        if crate::job::current_job_cancelled() {
            *answer = Answer::Over;
            return Wait::Cancelled;
        }
        answer = slot
            .ready
            .wait_timeout(answer, SHUTDOWN_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// `{ok, Value}` -> Value; `{error, Text}` -> raise ErlangError(Text).
fn decode_reply(py: Python<'_>, _env: Env<'_>, result: Term<'_>) -> PyResult<Py<PyAny>> {
    let (tag, value): (Atom, Term) = result
        .decode()
        .map_err(|_| PyRuntimeError::new_err("malformed reply from Erlang"))?;
    let value = term_to_py(py, value)?;
    if tag == atoms::ok() {
        Ok(value.unbind())
    } else {
        Err(ErlangError::new_err(value.unbind()))
    }
}

/// `_erlang.timeout_raised()`: code running a timed-out job raised its
/// `TimeoutError` itself (an ErlangEventLoop's `run_until_complete`, whose
/// future the timeout cancelled): no other is injected later. Nothing for a
/// thread running no job, or one not timed out.
#[pyfunction]
fn timeout_raised(py: Python<'_>) {
    if crate::job::current_job_cancelled_holding_gil(py) {
        crate::job::take_current_timeout(py);
    }
}

/// `_erlang.job_cancelled()`: whether this thread runs a job whose caller
/// gave up (timed out or died) and whose `TimeoutError` was at most
/// injected. That one may have been lost (raised inside a finalizer or a
/// logging handler run by a collection, which swallow it): an
/// ErlangEventLoop's `run_until_complete` started after that asks here and
/// ends the job itself, as `erlang.call` does, instead of running on for
/// as long as its future does (a pool thread, the loop and its fds held).
#[pyfunction]
fn job_cancelled(py: Python<'_>) -> bool {
    crate::job::current_job_timeout_unraised(py)
}

/// `erlang.send(pid, term)`: sends `term` to the process `pid`.
#[pyfunction]
fn send(pid: &Bound<'_, PyAny>, term: &Bound<'_, PyAny>) -> PyResult<()> {
    ensure_foreign_thread()?;
    let pid = pid
        .cast::<Pid>()
        .map_err(|_| PyTypeError::new_err("erlang.send needs an erlang.Pid"))?;
    let mut owned = OwnedEnv::new();
    let (target, message) = owned.run(|env| -> PyResult<_> {
        let pid_term = pid.get().to_term(env)?;
        let message = py_to_term(env, term)?;
        Ok(match pid_term.decode::<LocalPid>() {
            Ok(local) => (Some(local), owned.save(message)),
            // A pid of another node: the callback server relays it.
            Err(_) => (None, owned.save((atoms::py_callback(), pid_term, message))),
        })
    })?;
    let recipient = match target {
        Some(local) => local,
        None => callback_server()?,
    };
    // Sending to a dead process is not an error in Erlang either.
    let _ = owned.send_and_clear(&recipient, |env| message.load(env));
    Ok(())
}

/// Creates `_erlang` and puts it in `sys.modules`. Idempotent.
pub fn install(py: Python<'_>) -> PyResult<()> {
    sys_modules::install(py, "_erlang", |module| {
        module.add_function(wrap_pyfunction!(call, module)?)?;
        module.add_function(wrap_pyfunction!(send, module)?)?;
        module.add_function(wrap_pyfunction!(
            crate::interrupt::interrupt_thread,
            module
        )?)?;
        module.add_function(wrap_pyfunction!(timeout_raised, module)?)?;
        module.add_function(wrap_pyfunction!(job_cancelled, module)?)?;
        module.add_class::<Pid>()?;
        module.add_class::<Ref>()?;
        module.add_class::<OpaqueTerm>()?;
        module.add("ErlangError", py.get_type::<ErlangError>())
    })
}
