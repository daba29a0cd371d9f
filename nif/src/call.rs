//! `py:call`, `py:eval`, `py:exec`: the NIFs copy their arguments into a
//! process-independent env, queue a job on the worker pool and return at once.
//! The worker sends `{py_result, Ref, {ok, Term} | {error, Reason}}` to the
//! caller when Python is done.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifResult, ResourceArc, Term, TermType};

use crate::atoms;
use crate::convert::{args_to_py, atom_text, entries_to_py, py_to_term};
use crate::errors::{error_result, panic_result};
use crate::job::Job;
use crate::namespace;
use erlang_python::py::pool::Pool;
use erlang_python::py::sys_modules::imported;

/// What a job does with its data term.
enum Work {
    /// data = `{Args, Kwargs}`.
    Call { module: String, function: String },
    /// data = `Locals` map or `none`.
    Eval { code: String },
    /// data unused.
    Exec { code: String },
}

/// Text arguments (module, function, code) may be atoms, binaries or iolists.
fn decode_text(term: Term<'_>) -> NifResult<String> {
    if term.get_type() == TermType::Atom {
        return atom_text(term).ok_or(rustler::Error::BadArg);
    }
    let binary = if term.is_binary() {
        Binary::from_term(term)?
    } else {
        Binary::from_iolist(term)?
    };
    std::str::from_utf8(binary.as_slice())
        .map(str::to_owned)
        .map_err(|_| rustler::Error::BadArg)
}

/// `call(CallerPid, Ref, Module, Function, Args, Kwargs)` -> `{ok, Job}`.
#[rustler::nif]
fn call<'a>(
    env: Env<'a>,
    caller: LocalPid,
    reference: Term<'a>,
    module: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
) -> NifResult<Term<'a>> {
    let (work, data) = call_work(env, module, function, positional, kwargs)?;
    submit(env, crate::runtime::pool(), caller, reference, work, data)
}

/// `control_call(CallerPid, Ref, Module, Function, Args, Kwargs)` ->
/// `{ok, Job}`: `call` on the control lane, for jobs that only hand work
/// over to a thread of its own (a `py_asyncio` loop's): they do not wait
/// behind the worker pool's long calls.
#[rustler::nif]
fn control_call<'a>(
    env: Env<'a>,
    caller: LocalPid,
    reference: Term<'a>,
    module: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
) -> NifResult<Term<'a>> {
    let (work, data) = call_work(env, module, function, positional, kwargs)?;
    submit(
        env,
        crate::runtime::control_pool(),
        caller,
        reference,
        work,
        data,
    )
}

fn call_work<'a>(
    env: Env<'a>,
    module: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
) -> NifResult<(Work, Term<'a>)> {
    // An improper list (`[1 | 2]`) is not a list of arguments either.
    if positional.list_length().is_err() || !kwargs.is_map() {
        return Err(rustler::Error::BadArg);
    }
    let work = Work::Call {
        module: decode_text(module)?,
        function: decode_text(function)?,
    };
    Ok((work, (positional, kwargs).encode(env)))
}

/// `eval(CallerPid, Ref, Code, Locals)` -> `{ok, Job}`.
#[rustler::nif]
fn eval<'a>(
    env: Env<'a>,
    caller: LocalPid,
    reference: Term<'a>,
    code: Term<'a>,
    locals: Term<'a>,
) -> NifResult<Term<'a>> {
    if !locals.is_map() {
        return Err(rustler::Error::BadArg);
    }
    let work = Work::Eval {
        code: decode_text(code)?,
    };
    namespace::watch(env, caller);
    submit(env, crate::runtime::pool(), caller, reference, work, locals)
}

/// `exec(CallerPid, Ref, Code)` -> `{ok, Job}`.
#[rustler::nif]
fn exec<'a>(
    env: Env<'a>,
    caller: LocalPid,
    reference: Term<'a>,
    code: Term<'a>,
) -> NifResult<Term<'a>> {
    let work = Work::Exec {
        code: decode_text(code)?,
    };
    namespace::watch(env, caller);
    submit(
        env,
        crate::runtime::pool(),
        caller,
        reference,
        work,
        atoms::none().encode(env),
    )
}

/// `cancel(Job)` -> `ok`: the caller no longer wants the result. A queued job
/// never runs; a running one gets a `TimeoutError` at its next bytecode.
#[rustler::nif]
fn cancel(job: ResourceArc<Job>) -> Atom {
    job.cancel();
    atoms::ok()
}

/// `namespace_count()` -> how many per-process namespaces are alive.
#[rustler::nif]
fn namespace_count() -> usize {
    namespace::count()
}

fn submit<'a>(
    env: Env<'a>,
    pool: Option<&Pool>,
    caller: LocalPid,
    reference: Term<'a>,
    work: Work,
    data: Term<'a>,
) -> NifResult<Term<'a>> {
    let Some(pool) = pool else {
        return Ok((atoms::error(), atoms::not_initialized()).encode(env));
    };
    let job = Job::new(caller, pool);
    if !job.watch_caller(env) {
        // The caller is dead already: nobody will take the result.
        job.cancel();
    }
    let job = ResourceArc::new(job);
    let owned = OwnedEnv::new();
    let saved_ref = owned.save(reference);
    let saved_data = owned.save(data);
    let worker_job = job.clone();
    pool.submit_withdrawable(
        Box::new(move || run(worker_job, owned, caller, saved_ref, saved_data, work)),
        job.withdrawn_check(),
    );
    Ok((atoms::ok(), job).encode(env))
}

fn run(
    job: ResourceArc<Job>,
    mut owned: OwnedEnv,
    caller: LocalPid,
    saved_ref: SavedTerm,
    saved_data: SavedTerm,
    work: Work,
) {
    if !job.start() {
        job.stop_watching_caller();
        return;
    }
    // Current job of this thread: a wait inside it (`erlang.call`) ends when
    // the caller gives up.
    crate::job::run_as_current(&job, || {
        Python::attach(|py| {
            let message = owned.run(|env| {
                // A panic (ours, or a Python-side `PanicException` that pyo3
                // resumes as one) still answers the caller, who may wait
                // without a timeout.
                let executed = catch_unwind(AssertUnwindSafe(|| {
                    execute(py, env, caller, &work, saved_data.load(env))
                }));
                let result = match executed {
                    Ok(Ok(term)) => (atoms::ok(), term).encode(env),
                    Ok(Err(error)) => error_result(env, py, &error),
                    Err(payload) => panic_result(env, payload.as_ref()),
                };
                owned.save((atoms::py_result(), saved_ref.load(env), result))
            });
            // Sent under the job's lock (see `Job::finish`): a cancel that
            // returned before this point means the result is never sent.
            job.finish(py, || {
                // A dead caller is not an error: nobody is waiting any more.
                let _ = owned.send_and_clear(&caller, |env| message.load(env));
            });
            // After `finish`, which clears a timeout's TimeoutError still
            // pending (one set while the call was in C, returning to us with
            // no bytecode run): before it, that error fired in the reset's
            // Python code, which it cut short, and the thread's next call
            // found the loop state of an `asyncio.run` gone.
            reset_thread_event_loop_state(py);
        })
    });
    job.stop_watching_caller();
}

/// A pool thread starts every call as a fresh thread would, whatever the
/// previous call on it did: `asyncio.run` ends with `set_event_loop(None)`,
/// after which asyncio's policies refuse `get_event_loop()` on that thread.
/// Only when `erlang_loop`'s policy is in use; costs a dict lookup otherwise.
fn reset_thread_event_loop_state(py: Python<'_>) {
    let reset = imported(py, "erlang_loop._policy").and_then(|policy| match policy {
        Some(policy) => policy.call_method0("forget_unset_loop").map(drop),
        None => Ok(()),
    });
    if let Err(error) = reset {
        tracing::warn!(%error, "cannot reset the thread's event loop state");
    }
}

fn execute<'a>(
    py: Python<'_>,
    env: Env<'a>,
    caller: LocalPid,
    work: &Work,
    data: Term<'a>,
) -> PyResult<Term<'a>> {
    match work {
        Work::Call { module, function } => {
            let (args, kwargs): (Term, Term) = data
                .decode()
                .map_err(|_| pyo3::exceptions::PyValueError::new_err("bad call arguments"))?;
            let target = resolve(py, module, function)?;
            let args = args_to_py(py, args)?;
            let kwargs = entries_to_py(py, kwargs)?;
            let result = target.call(PyTuple::new(py, args.iter())?, Some(&kwargs))?;
            py_to_term(env, &result)
        }
        Work::Eval { code } => {
            let globals = namespace::globals(py, caller)?;
            let locals = entries_to_py(py, data)?;
            let builtins = py.import("builtins")?;
            let compiled = builtins.call_method1("compile", (code, "<erlang>", "eval"))?;
            let result = builtins.call_method1("eval", (compiled, globals, locals))?;
            py_to_term(env, &result)
        }
        Work::Exec { code } => {
            let globals = namespace::globals(py, caller)?;
            let builtins = py.import("builtins")?;
            let compiled = builtins.call_method1("compile", (code, "<erlang>", "exec"))?;
            builtins.call_method1("exec", (compiled, globals))?;
            Ok(atoms::none().encode(env))
        }
    }
}

/// `module` imported, then `function` looked up as a dotted attribute path
/// (`"Path.home"` works on module `pathlib`).
fn resolve<'py>(py: Python<'py>, module: &str, function: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = match module {
        "__builtins__" | "__builtin__" => "builtins",
        other => other,
    };
    let mut target = py.import(module)?.into_any();
    for part in function.split('.') {
        target = target.getattr(part)?;
    }
    Ok(target)
}
