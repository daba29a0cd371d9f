//! One Python call submitted from Erlang: its life cycle, and cancellation
//! when the caller gave up waiting (`py:call/5` timeout) or died.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Deref;
use std::os::raw::{c_long, c_ulong};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Duration;

use erlang_python::py::boundary_raise::BoundaryRaise;
use erlang_python::py::native_loop::NativeLoop;
use erlang_python::py::pool::{Pool, Withdrawn};
use pyo3::prelude::*;
use pyo3::types::PyType;
use rustler::{Env, LocalPid, Monitor, ResourceArc};

use crate::interrupt::{self, Mark};
use crate::sync::lock;

/// Where a job is. Transitions happen under the job's lock; the ones that
/// touch the Python thread state also hold the GIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued,
    /// Running on the Python thread with this `threading.get_ident()`.
    Running(c_ulong),
    /// The caller gave up; an interrupt for this thread is on its way.
    CancelRequested(c_ulong),
    /// The ErlangEventLoop this thread runs was asked to end the job (see
    /// `interrupt_by_its_loop`); the `TimeoutError` is injected after
    /// the grace ([`LOOP_GRACE_MS`]) if it has not.
    LoopAsked(c_ulong),
    /// A `TimeoutError` was injected into this thread.
    Interrupted(c_ulong),
    /// A wait inside the job (`erlang.call`) on this thread gave up and
    /// raised the `TimeoutError` itself: no interrupt at a bytecode is to
    /// come, but a loop the thread runs is still asked to end the job (a
    /// plain callback's error goes to the loop's handler, and the loop runs
    /// on).
    TimeoutRaised(c_ulong),
    /// Cancelled before it started: it will never run.
    Cancelled,
    Done,
}

impl JobState {
    /// The caller gave up (timed out or died).
    fn cancelled(self) -> bool {
        matches!(
            self,
            JobState::CancelRequested(_)
                | JobState::LoopAsked(_)
                | JobState::Interrupted(_)
                | JobState::TimeoutRaised(_)
                | JobState::Cancelled
        )
    }

    /// The caller gave up and nothing of ours raised the `TimeoutError`
    /// yet (no loop asked, no wait raised it): at most injected, which a
    /// finalizer or a logging handler run at that bytecode swallows.
    fn timeout_unraised(self) -> bool {
        matches!(
            self,
            JobState::CancelRequested(_) | JobState::Interrupted(_)
        )
    }
}

/// The Erlang handle of a submitted call (`py_nif:cancel/1` takes it). Its
/// caller is watched while it runs: a caller that dies cancels its job, as
/// one that timed out does (a killed `py:call` caller would otherwise hold a
/// pool thread until the call ends, if ever).
pub struct Job {
    /// Shared with the thread that interrupts a running job (it needs the
    /// GIL, never waited for on a scheduler) and with its caller's watcher.
    shared: Arc<JobShared>,
    /// The caller, and this job's number among its jobs (see [`CALLERS`]).
    caller: LocalPid,
    id: u64,
}

/// A job's state, what the cancelling thread needs.
pub struct JobShared {
    state: Mutex<JobState>,
    /// The pool it is queued on: told when it is withdrawn.
    pool: Pool,
    /// Notified when the job leaves `LoopAsked` (it ended, or raised its
    /// `TimeoutError`): the interrupting thread waits on it for
    /// at most the grace ([`LOOP_GRACE_MS`]), and ends as soon as the job does.
    left_loop_asked: Condvar,
    /// The loop asked to raise between callbacks, and the request: taken
    /// back when the job ends, so that a loop the thread keeps (its default
    /// loop) does not raise in a later job. Locked after `state`.
    boundary: Mutex<Option<(Py<NativeLoop>, Arc<BoundaryRaise>)>>,
}

/// After a job an exception was injected into (its timeout): the import
/// locks this thread still holds, let go. The exception fires at a
/// bytecode, which may be between code's taking an import lock and the
/// `try` that gives it back: CPython's global import lock left held made
/// every later import of a new module in the node wait forever. Importlib's
/// own code is not interrupted (see `interrupt::raise_in_thread`),
/// but code outside it takes that lock too (`_imp.acquire_lock()`:
/// pkg_resources' `declare_namespace`, cffi), and its `acquire_lock` may
/// return with the exception pending (CT
/// `timeout_after_taking_the_import_lock_leaks_it_not`). The job is over,
/// so whatever import lock its thread holds now is such a leftover. Best
/// effort: what fails is left.
fn release_leaked_import_locks(py: Python<'_>) {
    const RELEASE: &std::ffi::CStr = c"
import _imp, _thread, _frozen_importlib as _bootstrap
_me = _thread.get_ident()
for _ref in list(_bootstrap._module_locks.values()):
    _lock = _ref()
    while _lock is not None and getattr(_lock, 'owner', None) == _me:
        _lock.release()
while True:
    try:
        _imp.release_lock()
    except RuntimeError:
        break
";
    if let Err(error) = py.run(RELEASE, Some(&pyo3::types::PyDict::new(py)), None) {
        tracing::warn!(%error, "cannot release the import locks of an interrupted job");
    }
}

/// How long a job's loop has to end it (see `interrupt_by_its_loop`)
/// before its `TimeoutError` is injected into the code still running, at
/// its next bytecode, in ms: the application's `cancel_grace_ms`.
static LOOP_GRACE_MS: AtomicU64 = AtomicU64::new(2000);

/// Threads interrupting a cancelled job now, and the jobs whose loop did
/// not end them within the grace (`py_nif:pool_stats()`).
static INTERRUPTING: AtomicU64 = AtomicU64::new(0);
static GRACES_RUN_OUT: AtomicU64 = AtomicU64::new(0);

/// Sets the grace of the jobs cancelled from now on (`init`).
pub fn set_loop_grace(grace: Duration) {
    let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    LOOP_GRACE_MS.store(ms, Ordering::Relaxed);
}

/// `(interrupting, graces_run_out)`, see [`INTERRUPTING`].
pub fn interrupt_counts() -> (u64, u64) {
    (
        INTERRUPTING.load(Ordering::Relaxed),
        GRACES_RUN_OUT.load(Ordering::Relaxed),
    )
}

#[rustler::resource_impl]
impl rustler::Resource for Job {}

/// Receives the `DOWN` of a process with jobs: one per process, living as
/// long as it does, rather than a monitor per job. A monitor per job left a
/// busy caller with thousands, and a job resource freed while its monitor
/// was still listed made `process_info(Caller, monitored_by)` (observer,
/// recon) crash the VM, demonitored or not (the demonitor reaches the
/// process later, as a signal).
pub struct CallerWatcher;

#[rustler::resource_impl]
impl rustler::Resource for CallerWatcher {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        let Some(watched) = lock(&CALLERS).remove(&pid) else {
            return;
        };
        for job in watched.jobs.into_values() {
            job.cancel();
        }
    }
}

/// A watched process: its watcher and its unfinished jobs.
struct Caller {
    /// Kept while the process lives: its `down` cancels `jobs`.
    _watcher: ResourceArc<CallerWatcher>,
    jobs: HashMap<u64, Arc<JobShared>>,
}

/// The processes with jobs, watched until they die.
static CALLERS: LazyLock<Mutex<HashMap<LocalPid, Caller>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Numbers the jobs of one caller apart.
static NEXT_JOB_ID: AtomicU64 = AtomicU64::new(0);

impl Deref for Job {
    type Target = JobShared;

    fn deref(&self) -> &JobShared {
        &self.shared
    }
}

impl Job {
    /// A job of `caller` to be queued on `pool`.
    pub fn new(caller: LocalPid, pool: &Pool) -> Job {
        Job {
            shared: Arc::new(JobShared {
                state: Mutex::new(JobState::Queued),
                pool: pool.clone(),
                left_loop_asked: Condvar::new(),
                boundary: Mutex::new(None),
            }),
            caller,
            id: NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Watches the caller: its death cancels the job, until
    /// [`Job::stop_watching_caller`]. False when it is dead already.
    pub fn watch_caller(&self, env: Env<'_>) -> bool {
        let mut callers = lock(&CALLERS);
        let watched = match callers.entry(self.caller) {
            Entry::Occupied(watched) => watched.into_mut(),
            Entry::Vacant(vacant) => {
                let watcher = ResourceArc::new(CallerWatcher);
                if watcher.monitor(Some(env), &self.caller).is_none() {
                    return false;
                }
                vacant.insert(Caller {
                    _watcher: watcher,
                    jobs: HashMap::new(),
                })
            }
        };
        watched.jobs.insert(self.id, Arc::clone(&self.shared));
        true
    }

    /// The job ended (or will never run): its caller's death no longer
    /// matters.
    pub fn stop_watching_caller(&self) {
        if let Some(watched) = lock(&CALLERS).get_mut(&self.caller) {
            watched.jobs.remove(&self.id);
        }
    }

    /// The caller no longer wants the result. A queued job never runs (and
    /// is no longer watched for); a running one gets a `TimeoutError` at its
    /// next bytecode, from another thread (the interrupt needs the GIL,
    /// which may be busy for long).
    pub fn cancel(&self) {
        if self.shared.cancel() {
            self.stop_watching_caller();
        }
    }

    /// What the pool checks to drop the job unrun.
    pub fn withdrawn_check(&self) -> Arc<dyn Withdrawn> {
        Arc::clone(&self.shared) as Arc<dyn Withdrawn>
    }
}

impl Withdrawn for JobShared {
    fn withdrawn(&self) -> bool {
        *self.lock() == JobState::Cancelled
    }
}

/// What `Job::request_cancel` asks the caller to do next.
enum CancelAction {
    Nothing,
    /// The job was queued: it never runs, and its pool is told.
    Withdraw,
    /// The job is running: interrupt it from a thread that may take the GIL.
    Interrupt,
}

impl JobShared {
    /// See [`Job::cancel`]. True when the job was queued, and now never runs.
    fn cancel(self: &Arc<Self>) -> bool {
        match self.request_cancel() {
            CancelAction::Nothing => false,
            CancelAction::Withdraw => {
                self.pool.withdrawn();
                true
            }
            CancelAction::Interrupt => {
                self.spawn_interrupter();
                false
            }
        }
    }

    /// Interrupts the running job from a thread that may take the GIL.
    fn spawn_interrupter(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        INTERRUPTING.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("py-cancel".into())
            .spawn(move || {
                Python::attach(|py| shared.interrupt(py));
                INTERRUPTING.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(error) = spawned {
            INTERRUPTING.fetch_sub(1, Ordering::Relaxed);
            // Runs on a scheduler (the cancel NIF, a caller's DOWN): no
            // GIL to take here. The job runs on, as one blocked in C.
            tracing::error!(%error, "cannot start a thread to interrupt a cancelled job");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        lock(&self.state)
    }

    /// The job's lock, for a thread that holds the GIL: while another holds
    /// the lock, waits for it with the GIL let go. That other is the
    /// interrupting thread, looking at where the job's thread is with the
    /// GIL (`interrupt::raise_in_thread`): if anything in its look lets the
    /// GIL go (Python code: an `__import__` hook, a finalizer), waiting for
    /// the lock with the GIL held would stop both threads, and every other
    /// Python thread, for good.
    fn lock_holding_gil(&self, py: Python<'_>) -> std::sync::MutexGuard<'_, JobState> {
        loop {
            match self.state.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => py.detach(|| drop(self.lock())),
            }
        }
    }

    /// Called by the worker before running; false when cancelled meanwhile.
    pub fn start(&self) -> bool {
        let mut state = self.lock();
        if *state != JobState::Queued {
            return false;
        }
        // SAFETY: reads the calling thread's identifier; no state is touched.
        *state = JobState::Running(unsafe { pyo3::ffi::PyThread_get_thread_ident() });
        true
    }

    /// Called by the worker, GIL held, after the Python work: `deliver` sends
    /// the result unless the caller gave up meanwhile. The send happens under
    /// the job's lock, so once `request_cancel` has returned the result is
    /// either in the caller's mailbox already or will never be sent; the
    /// caller can then drop a late result with a `receive ... after 0`.
    /// Clears an interrupt that arrived too late to fire, so it cannot hit the
    /// thread's next job.
    pub fn finish(&self, py: Python<'_>, deliver: impl FnOnce()) {
        let mut state = self.lock_holding_gil(py);
        if let Some((native, raise)) = lock(&self.boundary).take() {
            native.get().retract_boundary_raise(&raise);
        }
        let interrupted = if let JobState::Interrupted(thread) = *state {
            // SAFETY: GIL held; a NULL exception clears the pending one.
            unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(thread as c_long, std::ptr::null_mut()) };
            true
        } else {
            false
        };
        if matches!(*state, JobState::Running(_)) {
            deliver();
        }
        *state = JobState::Done;
        self.left_loop_asked.notify_all();
        drop(state);
        if interrupted {
            release_leaked_import_locks(py);
        }
    }

    fn request_cancel(&self) -> CancelAction {
        let mut state = self.lock();
        match *state {
            JobState::Queued => {
                *state = JobState::Cancelled;
                CancelAction::Withdraw
            }
            JobState::Running(thread) => {
                *state = JobState::CancelRequested(thread);
                CancelAction::Interrupt
            }
            _ => CancelAction::Nothing,
        }
    }

    /// True once the caller gave up on the job (timeout): waits inside it
    /// that no interrupt can reach (`erlang.call`) should end.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled()
    }

    /// A wait inside the job saw it cancelled and raises the `TimeoutError`
    /// itself (`erlang.call`): the interrupt still to come is called off,
    /// one already set is cleared, so that the job's `except` sees one
    /// exception, not a second at its first bytecode.
    pub fn take_timeout(&self, py: Python<'_>) {
        let mut state = self.lock_holding_gil(py);
        match *state {
            // The interrupt to come still has the thread's loop end the
            // job (see `interrupt`): the wait's own TimeoutError may be
            // handled inside a callback.
            JobState::CancelRequested(thread) => *state = JobState::TimeoutRaised(thread),
            // The loop asked raised it (or a wait did, the loop asked
            // already): no injection after the grace.
            JobState::LoopAsked(thread) => {
                *state = JobState::TimeoutRaised(thread);
                self.left_loop_asked.notify_all();
            }
            JobState::Interrupted(thread) => {
                // SAFETY: GIL held; a NULL exception clears the pending one.
                unsafe {
                    pyo3::ffi::PyThreadState_SetAsyncExc(thread as c_long, std::ptr::null_mut())
                };
                *state = JobState::TimeoutRaised(thread);
            }
            _ => {}
        }
    }

    /// Raises `TimeoutError` inside the job's thread at its next bytecode, if
    /// the job is still running. A job blocked in C (a `time.sleep`) sees it
    /// when it returns to Python; one waiting in an ErlangEventLoop is woken
    /// for it (see `interrupt.rs`); one running an ErlangEventLoop gets it
    /// from the loop (see `interrupt_by_its_loop`).
    pub fn interrupt(&self, py: Python<'_>) {
        // The loop is looked up first, the lock free: the lookup runs Python
        // code, which may let the job's thread take the GIL and `finish`,
        // which takes the lock. A job that ends meanwhile is left alone.
        let (thread, raised) = match *self.lock() {
            JobState::CancelRequested(thread) => (thread, false),
            JobState::TimeoutRaised(thread) => (thread, true),
            _ => return,
        };
        let native = interrupt::native_loop_of(py, thread);
        let exception = py.get_type::<pyo3::exceptions::PyTimeoutError>();
        if let Some(native) = &native {
            if self.interrupt_by_its_loop(py, thread, native, &exception) {
                return;
            }
        } else if raised {
            // No loop: the wait's own TimeoutError was the interrupt.
            return;
        }
        // Tried under the lock, and again with the lock free (and the GIL
        // let go) while the thread's identifier is ambiguous or it runs
        // importlib's lock code; the latter for as long as the job runs:
        // the job is still cancelled when its thread leaves importlib.
        let attempt = || {
            let mut state = self.lock();
            let JobState::CancelRequested(thread) = *state else {
                return Mark::NoThread;
            };
            let mark = interrupt::raise_in_thread(py, thread, exception.as_any(), native.as_ref());
            if mark != Mark::Ambiguous && mark != Mark::Importing {
                *state = JobState::Interrupted(thread);
            }
            mark
        };
        let marked = interrupt::retry_while_importing(py, attempt);
        if marked == Mark::Ambiguous {
            // Given up: left as a job blocked in C is.
            let mut state = self.lock();
            if let JobState::CancelRequested(thread) = *state {
                *state = JobState::Interrupted(thread);
            }
        }
        if marked != Mark::Marked {
            return;
        }
        // The lookup ran Python code, during which the thread may have gone
        // on to wait in another loop: that one is woken too (a late mark is
        // harmless, see `LoopRunner.poll`).
        interrupt::interrupt_again(py, thread, native.as_ref());
    }
}

impl JobShared {
    /// A job's thread running an ErlangEventLoop is interrupted by its loop
    /// rather than at its next bytecode, where a plain callback's error
    /// would go to the loop's exception handler and the loop would run on
    /// with that callback's work half done (a transport never closed: an
    /// `asyncio.run` waiting forever on a pool thread). The future of a
    /// `run_until_complete` (`asyncio.run`) is cancelled, as asyncio answers
    /// Ctrl-C (its `run_until_complete` then raises `TimeoutError`);
    /// otherwise the loop raises `TimeoutError` out of `run_forever` before
    /// its next callback (see `boundary_raise`). True if the job ended
    /// within the grace ([`LOOP_GRACE_MS`]); otherwise the request is taken
    /// back and the job is left to the injection at the next bytecode.
    fn interrupt_by_its_loop(
        &self,
        py: Python<'_>,
        thread: c_ulong,
        native: &Py<NativeLoop>,
        exception: &Bound<'_, PyType>,
    ) -> bool {
        // The job may have ended while the loop was looked up (Python code):
        // its thread may run another job's loop by now.
        let askable = |state: &JobState| {
            *state == JobState::CancelRequested(thread) || *state == JobState::TimeoutRaised(thread)
        };
        if !askable(&self.lock()) {
            return true;
        }
        // Runs Python code: the job's lock free (see `interrupt`). A future
        // cancelled late is a finished one, or one nobody runs.
        let cancelled = interrupt::cancel_main_of(py, thread);
        let raise = BoundaryRaise::new(exception.clone().unbind(), thread);
        {
            // Under the job's lock: a job that finishes meanwhile takes the
            // boundary request back.
            let mut state = self.lock();
            if !askable(&state) {
                return true;
            }
            if !cancelled {
                native.get().request_boundary_raise(Arc::clone(&raise));
                *lock(&self.boundary) = Some((native.clone_ref(py), Arc::clone(&raise)));
            }
            *state = JobState::LoopAsked(thread);
        }
        let grace = Duration::from_millis(LOOP_GRACE_MS.load(Ordering::Relaxed));
        // Without the GIL, which the job needs to end; the lock is let go
        // before the GIL is taken back (`finish` takes them the other way).
        py.detach(|| {
            let asked = self.lock();
            let waited = self
                .left_loop_asked
                .wait_timeout_while(asked, grace, |state| *state == JobState::LoopAsked(thread));
            drop(waited.unwrap_or_else(|e| e.into_inner()));
        });
        let mut state = self.lock();
        if *state != JobState::LoopAsked(thread)
            || (!cancelled && !native.get().retract_boundary_raise(&raise))
        {
            return true;
        }
        lock(&self.boundary).take();
        *state = JobState::CancelRequested(thread);
        GRACES_RUN_OUT.fetch_add(1, Ordering::Relaxed);
        false
    }
}

thread_local! {
    /// The job this worker thread is running.
    static CURRENT: RefCell<Option<ResourceArc<Job>>> = const { RefCell::new(None) };
}

/// Clears `CURRENT` when the job ends, even by a panic.
struct CurrentGuard;

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
    }
}

/// Runs `work` with `job` as the current job of this thread.
pub fn run_as_current<R>(job: &ResourceArc<Job>, work: impl FnOnce() -> R) -> R {
    CURRENT.with(|current| *current.borrow_mut() = Some(job.clone()));
    let _guard = CurrentGuard;
    work()
}

/// `JobShared::take_timeout` of this thread's job, if any.
pub fn take_current_timeout(py: Python<'_>) {
    CURRENT.with(|current| {
        if let Some(job) = current.borrow().as_ref() {
            job.take_timeout(py);
        }
    });
}

/// True when this thread runs a job whose caller gave up. A thread that runs
/// no job (a Python thread of the user's) is never cancelled. For a thread
/// that let the GIL go; one holding it asks [`current_job_cancelled_holding_gil`].
pub fn current_job_cancelled() -> bool {
    CURRENT.with(|current| {
        current
            .borrow()
            .as_ref()
            .is_some_and(|job| job.is_cancelled())
    })
}

/// [`current_job_cancelled`] for a thread holding the GIL: the job's lock is
/// waited for with the GIL let go (see `JobShared::lock_holding_gil`).
pub fn current_job_cancelled_holding_gil(py: Python<'_>) -> bool {
    current_job_state_is(py, JobState::cancelled)
}

/// True when this thread runs a job whose caller gave up and whose
/// `TimeoutError` may have been swallowed (see `JobState::timeout_unraised`;
/// `_erlang.job_cancelled`).
pub fn current_job_timeout_unraised(py: Python<'_>) -> bool {
    current_job_state_is(py, JobState::timeout_unraised)
}

/// Whether this thread runs a job whose state `holds`, read by a thread
/// holding the GIL.
fn current_job_state_is(py: Python<'_>, holds: fn(JobState) -> bool) -> bool {
    CURRENT.with(|current| {
        current
            .borrow()
            .as_ref()
            .is_some_and(|job| holds(*job.lock_holding_gil(py)))
    })
}
