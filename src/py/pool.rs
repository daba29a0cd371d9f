//! Threads of our own that run Python jobs, so that Python never runs on an
//! Erlang scheduler (LESSONS 6, 7d). The pool grows on demand up to a limit:
//! a call that runs for minutes holds one thread, the others keep serving.
//!
//! A job waiting for Erlang ([`Pool::while_waiting_for_erlang`]: an
//! `erlang.call`) lends its place under the limit while it waits: the
//! Erlang side may be calling Python back and waiting for that call, which
//! would otherwise never run once every thread waited so (a deadlock of the
//! whole pool, at any nesting depth, from `max_threads` such calls on).
//! A thread takes a new job only while fewer than `max_threads` jobs run
//! that are not waiting so; a job whose wait ends runs on, even past that
//! (holding it back could deadlock: the jobs run meanwhile may wait for
//! something it holds). Threads beyond `max_threads` plus the lent places
//! end once they have nothing to run.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// One unit of work. It takes the GIL itself when it needs Python.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Whether a queued job was withdrawn (its caller gave up before it
/// started): the pool may then drop it unrun.
pub trait Withdrawn: Send + Sync {
    fn withdrawn(&self) -> bool;
}

/// Withdrawn jobs stay queued, unrun when popped, until they are this many
/// and at least half the queue: then they are dropped in one pass, so that
/// a queue that cannot move (every thread busy for long) holds at most as
/// many of them as live jobs, and each withdrawal costs O(1) amortised.
const WITHDRAWN_KEPT: usize = 64;

struct Queued {
    job: Job,
    withdrawn: Option<Arc<dyn Withdrawn>>,
}

impl Queued {
    fn is_withdrawn(&self) -> bool {
        self.withdrawn.as_ref().is_some_and(|w| w.withdrawn())
    }
}

/// Deep term conversions recurse; give every worker room for them.
const WORKER_STACK_BYTES: usize = 16 * 1024 * 1024;

/// A growable pool of named worker threads fed from one FIFO queue.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Queue and thread accounting, under one lock so that "should we spawn"
    /// is decided on a consistent view.
    state: Mutex<State>,
    /// Signalled once per submitted job.
    work_ready: Condvar,
    /// Most threads the pool may own; can be raised while running.
    max_threads: AtomicUsize,
    /// Thread name prefix, so a stuck thread is recognisable in `gdb`/`top`.
    name: String,
    /// Runs once on each new thread before its first job (Python thread state).
    thread_setup: fn(),
    /// Runs on a thread that ends (a surplus one), after its last job.
    thread_teardown: fn(),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Jobs of `queue` reported withdrawn (see [`Pool::withdrawn`]).
    withdrawn: usize,
    /// Threads started and not ended.
    threads: usize,
    /// Threads waiting for work right now.
    idle: usize,
    /// Threads running a job right now.
    busy: usize,
    /// Threads whose job waits for Erlang right now (their places under
    /// the limit lent, see the module's doc).
    lent: usize,
}

thread_local! {
    /// The pool of this worker thread (None on other threads).
    static WORKER_OF: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
}

/// A snapshot of the pool, for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    pub idle: usize,
    pub queued: usize,
    pub max_threads: usize,
    /// Threads whose job waits for Erlang (see the module's doc).
    pub lent: usize,
}

impl Pool {
    /// A pool that starts no thread until the first job arrives.
    pub fn new(name: &str, max_threads: usize, thread_setup: fn(), thread_teardown: fn()) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                work_ready: Condvar::new(),
                max_threads: AtomicUsize::new(max_threads.max(1)),
                name: name.to_owned(),
                thread_setup,
                thread_teardown,
            }),
        }
    }

    /// Queues `job`; starts a thread when every existing one is busy and the
    /// limit allows. Jobs beyond the limit wait in FIFO order.
    pub fn submit(&self, job: Job) {
        self.enqueue(Queued {
            job,
            withdrawn: None,
        });
    }

    /// [`submit`](Self::submit) of a job that may be withdrawn while it
    /// waits: `withdrawn` tells, and [`withdrawn`](Self::withdrawn) is to
    /// be called when it becomes true.
    pub fn submit_withdrawable(&self, job: Job, withdrawn: Arc<dyn Withdrawn>) {
        self.enqueue(Queued {
            job,
            withdrawn: Some(withdrawn),
        });
    }

    /// A job submitted with [`submit_withdrawable`](Self::submit_withdrawable)
    /// was withdrawn before it started. Once such jobs are most of a long
    /// queue they are dropped, unrun, in one pass (O(1) per withdrawal,
    /// amortised; the pass is O(queued), under the lock), and freed after
    /// the lock is let go (dropping one frees what it captured).
    pub fn withdrawn(&self) {
        let dropped: VecDeque<Queued> = {
            let mut state = self.inner.lock_state();
            state.withdrawn += 1;
            if state.withdrawn < WITHDRAWN_KEPT || state.withdrawn * 2 < state.queue.len() {
                return;
            }
            let (dropped, kept) = std::mem::take(&mut state.queue)
                .into_iter()
                .partition(Queued::is_withdrawn);
            state.queue = kept;
            state.withdrawn = 0;
            dropped
        };
        drop(dropped);
    }

    fn enqueue(&self, queued: Queued) {
        let mut state = self.inner.lock_state();
        state.queue.push_back(queued);
        let spawn = self.inner.claim_new_thread(&mut state);
        drop(state);
        if let Some(index) = spawn {
            Inner::spawn_worker(&self.inner, index);
        }
        self.inner.work_ready.notify_one();
    }

    /// Runs `wait` (a wait for Erlang, GIL released) with this thread's
    /// place under the limit lent, if it is a worker of a pool: a queued
    /// job gets a thread meanwhile, beyond the limit if need be.
    pub fn while_waiting_for_erlang<R>(wait: impl FnOnce() -> R) -> R {
        let Some(inner) = WORKER_OF.with(|worker| worker.borrow().clone()) else {
            return wait();
        };
        let spawn = {
            let mut state = inner.lock_state();
            state.lent += 1;
            inner.claim_new_thread(&mut state)
        };
        if let Some(index) = spawn {
            Inner::spawn_worker(&inner, index);
        }
        // An idle thread held back by the limit may take a job now.
        inner.work_ready.notify_one();
        /// Takes the place back even if `wait` panics; a thread now beyond
        /// the limit, idle, is woken to end.
        struct Lent(Arc<Inner>);
        impl Drop for Lent {
            fn drop(&mut self) {
                self.0.lock_state().lent -= 1;
                self.0.work_ready.notify_one();
            }
        }
        let _lent = Lent(inner);
        wait()
    }

    /// Changes the thread limit; threads above a lowered limit end once
    /// they have nothing to run.
    pub fn set_max_threads(&self, max_threads: usize) {
        self.inner
            .max_threads
            .store(max_threads.max(1), Ordering::Relaxed);
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock_state();
        PoolStats {
            threads: state.threads,
            idle: state.idle,
            queued: state.queue.len(),
            lent: state.lent,
            max_threads: self.inner.max_threads.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// Starts thread `index`, counted already in `threads` (uncounted if
    /// it cannot start).
    fn spawn_worker(self: &Arc<Self>, index: usize) {
        let inner = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("{}-{index}", inner.name))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || inner.run_worker());
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a worker thread");
            self.lock_state().threads -= 1;
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of a thread to start, counted in `state`, when a queued
    /// job finds no idle thread and the limit (less the lent places) allows.
    fn claim_new_thread(&self, state: &mut State) -> Option<usize> {
        let max = self.max_threads.load(Ordering::Relaxed);
        if state.queue.len() > state.idle && state.threads - state.lent < max {
            state.threads += 1;
            Some(state.threads)
        } else {
            None
        }
    }

    fn run_worker(self: Arc<Self>) {
        WORKER_OF.with(|worker| *worker.borrow_mut() = Some(Arc::clone(&self)));
        (self.thread_setup)();
        tracing::debug!(pool = %self.name, "worker thread started");
        loop {
            let job = {
                let mut state = self.lock_state();
                loop {
                    let max = self.max_threads.load(Ordering::Relaxed);
                    let admitted = state.busy - state.lent < max;
                    if let Some(queued) = admitted.then(|| state.queue.pop_front()).flatten() {
                        if queued.is_withdrawn() {
                            state.withdrawn = state.withdrawn.saturating_sub(1);
                        }
                        state.busy += 1;
                        break Some(queued.job);
                    }
                    // Beyond the limit and the lent places: end.
                    if state.threads > max + state.lent {
                        state.threads -= 1;
                        break None;
                    }
                    state.idle += 1;
                    state = self
                        .work_ready
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                    state.idle -= 1;
                }
            };
            let Some(job) = job else {
                tracing::debug!(pool = %self.name, "surplus worker thread ends");
                (self.thread_teardown)();
                return;
            };
            // A panicking job must not take the thread (and its queue) with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!(pool = %self.name, "a job panicked");
            }
            self.lock_state().busy -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn no_setup() {}

    #[test]
    fn runs_jobs_in_parallel_up_to_the_limit() {
        use std::sync::atomic::AtomicUsize;
        let pool = Pool::new("test", 4, no_setup, no_setup);
        let running = Arc::new(AtomicUsize::new(0));
        let (done, finished) = mpsc::channel();
        for _ in 0..4 {
            let (done, running) = (done.clone(), Arc::clone(&running));
            pool.submit(Box::new(move || {
                running.fetch_add(1, Ordering::SeqCst);
                // Each job waits until all four run at once (or gives up).
                let deadline = Instant::now() + Duration::from_secs(20);
                while running.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
                done.send(running.load(Ordering::SeqCst)).unwrap();
            }));
        }
        for _ in 0..4 {
            assert_eq!(finished.recv_timeout(Duration::from_secs(30)).unwrap(), 4);
        }
        assert_eq!(pool.stats().threads, 4);
    }

    #[test]
    fn never_exceeds_the_limit_and_keeps_fifo_order() {
        let pool = Pool::new("test", 1, no_setup, no_setup);
        let (done, finished) = mpsc::channel();
        for i in 0..50 {
            let done = done.clone();
            pool.submit(Box::new(move || done.send(i).unwrap()));
        }
        let order: Vec<i32> = (0..50)
            .map(|_| finished.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
        assert_eq!(pool.stats().threads, 1);
    }

    struct Flag(std::sync::atomic::AtomicBool);

    impl Withdrawn for Flag {
        fn withdrawn(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn withdrawn_jobs_are_dropped_once_they_are_most_of_the_queue() {
        let pool = Pool::new("test", 1, no_setup, no_setup);
        let (release, blocked) = mpsc::channel::<()>();
        let (started, blocking) = mpsc::channel::<()>();
        pool.submit(Box::new(move || {
            started.send(()).unwrap();
            let _ = blocked.recv();
        }));
        blocking.recv_timeout(Duration::from_secs(10)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(());
        let flags: Vec<Arc<Flag>> = (0..300).map(|_| Arc::new(Flag(false.into()))).collect();
        for flag in &flags {
            let (ran, dropped) = (Arc::clone(&ran), Arc::clone(&dropped));
            pool.submit_withdrawable(
                Box::new(move || {
                    let _held = dropped;
                    ran.fetch_add(1, Ordering::SeqCst);
                }),
                Arc::clone(flag) as Arc<dyn Withdrawn>,
            );
        }
        // Withdraw all but every tenth.
        for (_, flag) in flags.iter().enumerate().filter(|(i, _)| i % 10 != 0) {
            flag.0.store(true, Ordering::SeqCst);
            pool.withdrawn();
        }
        let queued = pool.stats().queued;
        assert!(queued < 30 + WITHDRAWN_KEPT, "{queued} queued");
        // The dropped jobs freed what they captured, unrun.
        assert!(Arc::strong_count(&dropped) <= queued + 1);
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.stats().queued > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        // What was left queued ran, the 30 kept among them (the pool runs
        // what it pops: a withdrawn job checks its own state).
        assert_eq!(ran.load(Ordering::SeqCst), queued);
    }

    #[test]
    fn a_job_waiting_for_erlang_lends_its_place() {
        // One thread at most; its job waits (as for Erlang) on a second
        // job, which gets a thread of its own meanwhile.
        let pool = Pool::new("test", 1, no_setup, no_setup);
        let (done, finished) = mpsc::channel();
        let inner_pool = pool.clone();
        pool.submit(Box::new(move || {
            let (answer, answered) = mpsc::channel();
            inner_pool.submit(Box::new(move || answer.send(6 * 7).unwrap()));
            let got =
                Pool::while_waiting_for_erlang(|| answered.recv_timeout(Duration::from_secs(20)));
            done.send(got).unwrap();
        }));
        assert_eq!(
            finished.recv_timeout(Duration::from_secs(30)).unwrap(),
            Ok(42)
        );
        // The thread started on the lent place ends once it is past the
        // limit with nothing to run.
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.stats().threads > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let stats = pool.stats();
        assert_eq!((stats.threads, stats.lent), (1, 0));
        // Not a worker thread: nothing lent, `wait` just runs.
        assert_eq!(Pool::while_waiting_for_erlang(|| 5), 5);
        // The pool still serves.
        let (done, again) = mpsc::channel();
        pool.submit(Box::new(move || done.send(()).unwrap()));
        again.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let pool = Pool::new("test", 1, no_setup, no_setup);
        pool.submit(Box::new(|| panic!("boom")));
        let (done, finished) = mpsc::channel();
        pool.submit(Box::new(move || done.send(7).unwrap()));
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        assert_eq!(pool.stats().threads, 1);
    }
}
