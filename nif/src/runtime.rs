//! The process-wide Python runtime: interpreter start-up and the worker pool
//! that runs every Python job off the Erlang schedulers.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use erlang_python::py::interpreter::{self, InterpreterConfig};
use erlang_python::py::pool::Pool;
use erlang_python::wheel::{MAX_TICK_NS, MIN_TICK_NS};
use pyo3::prelude::*;
use rustler::{Encoder, Env, NifResult, Term};

use crate::atoms;
use crate::proper_list::ProperList;

/// Default for `max_workers` when the application env says nothing.
const DEFAULT_MAX_WORKERS: usize = 32;

static POOL: OnceLock<Pool> = OnceLock::new();

/// Threads for short hand-off jobs (a `py_asyncio` loop's operations on their
/// way to its thread), so that a worker pool busy with long calls does not
/// hold up loops that have threads of their own.
static CONTROL_POOL: OnceLock<Pool> = OnceLock::new();

/// Threads of the control lane: its jobs only hand work over.
const CONTROL_THREADS: usize = 2;

/// The pool of the control lane, once `init` ran.
pub fn control_pool() -> Option<&'static Pool> {
    CONTROL_POOL.get()
}

/// The worker pool, once `init/1` has run.
pub fn pool() -> Option<&'static Pool> {
    POOL.get()
}

/// Runs once on every worker thread: give it a Python thread state that lives
/// as long as the thread, so each job's `Python::attach` is cheap (no thread
/// state created and destroyed per job).
fn adopt_python_thread() {
    // SAFETY: the interpreter is initialised before any worker starts
    // (`init` creates the pool after `interpreter::initialize`). Ensure creates
    // this thread's state and takes the GIL; SaveThread releases the GIL and
    // keeps the state bound to the thread for its whole life.
    unsafe {
        pyo3::ffi::PyGILState_Ensure();
        pyo3::ffi::PyEval_SaveThread();
    }
}

/// Runs on a worker thread that ends: its Python thread state goes (the
/// GIL taken with it, then `PyGILState_Release` clears and deletes it as
/// the last release of the `Ensure` above).
fn release_python_thread() {
    // SAFETY: this thread ran `adopt_python_thread` and holds no GIL now;
    // its state is the one `Ensure` made, with a counter of one.
    unsafe {
        let state = pyo3::ffi::PyGILState_GetThisThreadState();
        pyo3::ffi::PyEval_RestoreThread(state);
        pyo3::ffi::PyGILState_Release(pyo3::ffi::PyGILState_STATE::PyGILState_UNLOCKED);
    }
}

#[derive(rustler::NifMap)]
struct InitOptions {
    paths: ProperList<String>,
    site_dirs: ProperList<String>,
    system_site_packages: bool,
    executable: Option<String>,
    max_workers: usize,
    wheel_resolution_us: u64,
    cancel_grace_ms: u64,
}

/// `init(#{paths := [binary()], site_dirs := [binary()], system_site_packages :=
/// boolean(), executable := binary() | nil, max_workers := pos_integer(), ...})`
/// -> `ok | {error, Reason}`. Starts CPython once; later calls add paths and
/// raise the worker limit.
#[rustler::nif(schedule = "DirtyCpu")]
fn init<'a>(env: Env<'a>, options: Term<'a>) -> NifResult<Term<'a>> {
    // Decoded here, not by the signature: a field of the wrong type is then
    // `badarg`, not the derive's error message raised as a binary.
    let options: InitOptions = options.decode().map_err(|_| rustler::Error::BadArg)?;
    // A NUL byte would go into `sys.path` and fail every import after.
    let has_nul = |text: &String| text.contains('\0');
    if options
        .paths
        .0
        .iter()
        .chain(&options.site_dirs.0)
        .any(has_nul)
        || options.executable.as_ref().is_some_and(has_nul)
    {
        return Err(rustler::Error::BadArg);
    }
    let tick_ns = options.wheel_resolution_us.saturating_mul(1000);
    if !(MIN_TICK_NS..=MAX_TICK_NS).contains(&tick_ns) {
        let reason = format!(
            "wheel_resolution_us must be {}..={}",
            MIN_TICK_NS / 1000,
            MAX_TICK_NS / 1000
        );
        return Ok((atoms::error(), reason).encode(env));
    }
    crate::event_loop::set_tick_ns(tick_ns);
    let config = InterpreterConfig {
        paths: options.paths.0.into_iter().map(PathBuf::from).collect(),
        site_dirs: options.site_dirs.0.into_iter().map(PathBuf::from).collect(),
        system_site_packages: options.system_site_packages,
        executable: options.executable.map(PathBuf::from),
    };
    let first_start = !interpreter::is_initialized();
    if let Err(reason) = interpreter::initialize(&config) {
        return Ok((atoms::error(), reason).encode(env));
    }
    if first_start {
        let_python_reap_its_children();
    }
    let installed = Python::attach(|py| {
        crate::erlang_module::install(py)?;
        crate::sleep::install(py)?;
        crate::test_panic::install(py)?;
        erlang_python::py::native_loop::install(py)
    });
    if let Err(reason) = installed {
        return Ok((atoms::error(), reason.to_string()).encode(env));
    }
    let max_workers = if options.max_workers == 0 {
        DEFAULT_MAX_WORKERS
    } else {
        options.max_workers
    };
    crate::job::set_loop_grace(Duration::from_millis(options.cancel_grace_ms));
    let pool = POOL.get_or_init(|| {
        Pool::new(
            "py-worker",
            max_workers,
            adopt_python_thread,
            release_python_thread,
        )
    });
    pool.set_max_threads(max_workers);
    CONTROL_POOL.get_or_init(|| {
        Pool::new(
            "py-control",
            CONTROL_THREADS,
            adopt_python_thread,
            release_python_thread,
        )
    });
    crate::erlang_module::set_accepting_callbacks(true);
    Ok(atoms::ok().encode(env))
}

/// The BEAM ignores SIGCHLD, and with SIG_IGN the kernel reaps children at
/// once and discards their exit status: `subprocess.run(...).returncode` is
/// then always 0 and asyncio's `process.wait()` 255. The BEAM's own children
/// are forked by `erl_child_setup`, so its only direct child is that helper:
/// the default disposition is safe for it and gives Python its statuses.
fn let_python_reap_its_children() {
    // SAFETY: reads the current disposition into a zeroed struct, then sets
    // SIG_DFL only if it was SIG_IGN; no handler code is installed.
    unsafe {
        let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), current.as_mut_ptr());
        if current.assume_init().sa_sigaction == libc::SIG_IGN {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        }
    }
}

/// `python_version()` -> the running interpreter's `sys.version` as a binary.
#[rustler::nif(schedule = "DirtyCpu")]
fn python_version(env: Env<'_>) -> Term<'_> {
    if !interpreter::is_initialized() {
        return (atoms::error(), atoms::not_initialized()).encode(env);
    }
    let version = Python::version_str().to_owned();
    (atoms::ok(), version).encode(env)
}

/// `pool_stats()` -> `#{threads, idle, queued, max_threads,
/// waiting_for_erlang, interrupting, graces_run_out}`.
#[rustler::nif]
fn pool_stats(env: Env<'_>) -> Term<'_> {
    let Some(pool) = pool() else {
        return (atoms::error(), atoms::not_initialized()).encode(env);
    };
    let stats = pool.stats();
    let (interrupting, graces_run_out) = crate::job::interrupt_counts();
    let keys = [
        "threads",
        "idle",
        "queued",
        "max_threads",
        "waiting_for_erlang",
        "interrupting",
        "graces_run_out",
        "event_loops",
    ]
    .map(|k| rustler::Atom::from_str(env, k).unwrap().encode(env));
    let values = [
        stats.threads as u64,
        stats.idle as u64,
        stats.queued as u64,
        stats.max_threads as u64,
        stats.lent as u64,
        interrupting,
        graces_run_out,
        erlang_python::io::LoopCore::live_count() as u64,
    ]
    .map(|v| v.encode(env));
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::error().encode(env))
}
