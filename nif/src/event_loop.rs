//! The loop resource (`LoopRef`), its Erlang host, and the low-level NIF API
//! of event loops. The core (`erlang_python::io::LoopCore`) decides; this
//! file converts terms and sends the messages the core asks for.
//!
//! Messages to the serving process (`py_event_worker`):
//! `{py_loop, LoopId, [{arm, Ms} | selects | closed]}`; fd readiness comes as
//! `{select, FdResource, LoopId, ready_input | ready_output}`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use erlang_python::io::core::{ASK_SERVER_AGAIN_AFTER, SERVER_TIMEOUT};
use erlang_python::io::{
    Event, EventKind, Look, LoopCore, LoopHost, SelectHandle, SelectRequest, WaitError, Wake,
};
use erlang_python::py::native_loop::NativeLoop;
use erlang_python::wheel::DEFAULT_TICK_NS;
use rustler::env::OwnedEnv;
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};

use crate::sync::lock;
use crate::{atoms, fd_resource, server_watch};

rustler::atoms! {
    py_loop,
    py_loop_new,
    py_loop_ready,
    watching,
    infinity,
    py_orphan_stops,
    arm,
    selects,
    read,
    write,
    timer,
    not_found,
    python_loop,
    server_down,
    noproc,
    ebadf,
    served,
    released,
    attached,
}

static NEXT_LOOP_ID: AtomicU64 = AtomicU64::new(1);

/// Wheel resolution of new loops (app env `wheel_resolution_us`).
static TICK_NS: AtomicU64 = AtomicU64::new(DEFAULT_TICK_NS);

/// The `py_event_loops` server that gives Python-created loops a worker.
static LOOP_PLACER: Mutex<Option<LocalPid>> = Mutex::new(None);

/// Makes the select stops of loops that close while no placer runs (the
/// application stopped: `py_orphan_stopper`), so that their fds leave the
/// poll set and close then, not at the application's next start.
static ORPHAN_STOPPER: Mutex<Option<LocalPid>> = Mutex::new(None);

/// Watchers of one loop past which those no longer alive are dropped when
/// another registers (see `poll_events_watch`).
const WATCHERS_PRUNED_AT: usize = 64;

pub fn set_tick_ns(tick_ns: u64) {
    TICK_NS.store(tick_ns, Ordering::Relaxed);
}

/// Select stops that no serving process will make (it died, or never came):
/// `py_event_loops` makes them on `py_orphan_stops` (LESSONS 17: the fds must
/// still leave the poll set before they are closed).
static ORPHAN_STOPS: Mutex<Vec<SelectRequest>> = Mutex::new(Vec::new());

/// The Erlang side of one loop, as its core sees it.
struct NifHost {
    loop_id: u64,
    /// The live process serving the loop (selects and its timer); `None`
    /// before one is set and after it died.
    server: Mutex<Option<LocalPid>>,
    /// The loop's core (weak: the core owns this host).
    core: OnceLock<Weak<LoopCore>>,
    /// Processes waiting in `py_nif:poll_events/2`, by their token: each is
    /// sent `{py_loop_ready, Token}` once when the loop has news for them
    /// (see `tell_watchers`).
    watchers: Mutex<Vec<(u64, LocalPid)>>,
    /// A Python loop's resource (see [`PythonResource`]).
    resource: Mutex<PythonResource>,
    /// This host, for a resource made later.
    me: Weak<NifHost>,
}

/// The `LoopRef` of a Python loop, which only its placement and its
/// worker need: made when the loop is placed (an isolated one when it is
/// made, a default one when it first sets a timer or sleeps), so that a
/// loop made, run and closed without either makes no Erlang resource, whose last
/// reference, let go of on a Python thread, would wake a scheduler to run
/// its destructor.
enum PythonResource {
    /// Not needed yet (and never for a loop of the low-level API).
    Unmade,
    /// Made: held until the loop closes, as its worker holds it while it
    /// serves the loop. A reference to the resource that owns this host,
    /// let go of when the loop closes, which every Python loop does
    /// (`close()`, or its drop).
    Made(ResourceArc<LoopResource>),
    /// The loop closed: none is made any more.
    Released,
}

impl NifHost {
    /// A Python loop's `LoopRef`, made now if it was not yet; `None` once
    /// the loop closed.
    fn python_resource(&self) -> Option<ResourceArc<LoopResource>> {
        let mut held = lock(&self.resource);
        match &*held {
            PythonResource::Made(resource) => Some(resource.clone()),
            PythonResource::Released => None,
            PythonResource::Unmade => {
                let core = self.core.get().and_then(Weak::upgrade)?;
                let host = self.me.upgrade()?;
                let resource = ResourceArc::new(LoopResource {
                    core,
                    host,
                    python: true,
                    timer_salt: timer_salt(self.loop_id),
                });
                *held = PythonResource::Made(resource.clone());
                Some(resource)
            }
        }
    }

    /// The stops the core owes, for a process other than the (gone) server.
    fn take_orphan_stops(&self) -> Vec<SelectRequest> {
        self.core
            .get()
            .and_then(Weak::upgrade)
            .map(|core| core.take_stop_requests())
            .unwrap_or_default()
    }
}

/// Queues `stops` for `py_event_loops` (or, while the application is
/// stopped, `py_orphan_stopper`) and has `notify` tell it (with whichever
/// env the caller may send from).
fn hand_to_placer(stops: Vec<SelectRequest>, notify: impl FnOnce(&LocalPid) -> bool) -> bool {
    if stops.is_empty() {
        // Taken already, by whoever makes them.
        return true;
    }
    lock(&ORPHAN_STOPS).extend(stops);
    placer()
        .or_else(|| *lock(&ORPHAN_STOPPER))
        .is_some_and(|maker| notify(&maker))
}

/// Makes select stops with the env of whichever process or callback calls
/// (`pid` is ignored by a stop, but the call wants one).
fn apply_stops(env: Env<'_>, pid: LocalPid, stops: Vec<SelectRequest>) {
    let reference = atoms::none().encode(env);
    for request in stops {
        if let Some(handle) = fd_resource::downcast(&request.handle) {
            handle.select(env, request.op, pid.as_c_arg(), reference);
        }
    }
}

impl LoopHost for NifHost {
    fn open_fd(&self, fd: RawFd, token: u64) -> std::io::Result<SelectHandle> {
        fd_resource::open(fd, token)
    }

    fn deliver(&self, wake: Wake) -> bool {
        if wake.closed {
            // Dropped with no lock of ours held: it may be the last
            // reference, whose destructor locks the loop.
            let resource = std::mem::replace(&mut *lock(&self.resource), PythonResource::Released);
            drop(resource);
        }
        if rustler::thread::is_scheduler_thread() {
            // An OwnedEnv cannot send from there.
            tracing::error!(
                loop_id = self.loop_id,
                "wake delivered from a scheduler thread"
            );
            return false;
        }
        let Some(server) = *lock(&self.server) else {
            if !(wake.apply_selects || wake.closed) {
                return false;
            }
            return hand_to_placer(self.take_orphan_stops(), |placer| {
                let mut env = OwnedEnv::new();
                env.send_and_clear(placer, |env| py_orphan_stops().encode(env))
                    .is_ok()
            });
        };
        let mut env = OwnedEnv::new();
        env.send_and_clear(&server, |env| wake_message(env, self.loop_id, wake))
            .is_ok()
    }

    fn wait_closed(&self, handles: &[SelectHandle], timeout: Duration) -> bool {
        fd_resource::wait_closed(handles, timeout)
    }

    fn request_server(&self) -> bool {
        let Some(resource) = self.python_resource() else {
            return false;
        };
        // A placer registered but dead (killed: its successor registers
        // in a moment) loses the request as one killed with it in its
        // queue does: asked again in `ASK_SERVER_AGAIN_AFTER`, up to
        // `SERVER_TIMEOUT`. Only without any placer (the application
        // stopped) does the loop give up at once.
        ask_placer(&resource, false).is_ok() || placer().is_some()
    }

    fn close_unselected(&self, handle: &SelectHandle) -> bool {
        fd_resource::downcast(handle).is_some_and(|handle| handle.close_if_never_selected())
    }
}

/// `LoopRef`: one native loop.
pub struct LoopResource {
    core: Arc<LoopCore>,
    host: Arc<NifHost>,
    /// Made for a Python `ErlangEventLoop`: its timer ids stand for Python
    /// objects its runner owns, so the low-level API's timer, fd, poll and
    /// queue calls refuse it (`{error, python_loop}`): an Erlang id in its
    /// wheel, a Python id taken by Erlang, an Erlang fd interest or poll
    /// (which eats its wake-ups) would break the Python loop.
    python: bool,
    /// XORed into the generation half of the timer keys the low-level API
    /// hands out and takes back: wheel keys of different loops collide
    /// (every wheel numbers its slots from 0, generation 1), and a key of
    /// another loop must not cancel this loop's timer. Random per loop, 31
    /// bits (a generation's): a foreign key names a live timer here once in
    /// 2^31.
    timer_salt: u64,
}

#[rustler::resource_impl]
impl rustler::Resource for LoopResource {
    const IMPLEMENTS_DESTRUCTOR: bool = true;

    /// The last reference is gone without `event_loop_destroy` (its owner
    /// crashed, say): the loop closes here, or the BEAM would keep its
    /// watched fds' duplicates in the poll set, open, for good. No serving
    /// process is left to stop them: `py_event_loops` does (LESSONS 17).
    fn destructor(self, env: Env<'_>) {
        let _ = self.core.close();
        // An fd that never entered the poll set needs no stop (nor a
        // placer, which a node without the application lacks): closed here.
        let mut stops = self.core.take_stop_requests();
        stops.retain(|request| !self.host.close_unselected(&request.handle));
        hand_to_placer(stops, |placer| env.send(placer, py_orphan_stops()).is_ok());
    }
}

impl server_watch::Served for NifHost {
    fn server_lost(&self, env: Env<'_>, pid: LocalPid) {
        if let Some(core) = self.core.get().and_then(Weak::upgrade) {
            lose_server(env, self, &core, pid);
        }
    }
}

/// The loop's server `pid` died: the loop is told (`server_down`) if `pid`
/// still serves it. Whoever sees the death first does it.
fn lose_server(env: Env<'_>, host: &NifHost, core: &LoopCore, pid: LocalPid) {
    let mut server = lock(&host.server);
    if *server != Some(pid) {
        return;
    }
    *server = None;
    // Marked under the server's lock: a `set_router` naming a new server
    // now comes before (and this finds it named) or after (and its
    // `set_served` clears the mark), never in between.
    core.server_down();
    drop(server);
    tracing::warn!(loop_id = host.loop_id, "the loop's Erlang worker died");
    // Stops the dead server owed (a loop closed just before it died).
    apply_stops(env, pid, core.take_stop_requests());
    tell_host_watchers(env, host, core);
}

impl LoopResource {
    fn new(python: bool) -> std::io::Result<LoopResource> {
        let loop_id = NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed);
        let host = Arc::new_cyclic(|me| NifHost {
            loop_id,
            server: Mutex::new(None),
            core: OnceLock::new(),
            watchers: Mutex::new(Vec::new()),
            resource: Mutex::new(PythonResource::Unmade),
            me: me.clone(),
        });
        let tick_ns = TICK_NS.load(Ordering::Relaxed);
        let core = if python {
            LoopCore::with_own_poller(tick_ns, host.clone())?
        } else {
            LoopCore::new(tick_ns, host.clone()).map_err(std::io::Error::other)?
        };
        let core = Arc::new(core);
        let _ = host.core.set(Arc::downgrade(&core));
        Ok(LoopResource {
            core,
            host,
            python,
            timer_salt: timer_salt(loop_id),
        })
    }

    /// The core, for the low-level API's calls: not a Python loop's (see
    /// `python`).
    fn erlang_owned(&self) -> Result<&LoopCore, Atom> {
        if self.python {
            Err(python_loop())
        } else {
            Ok(&self.core)
        }
    }

    /// `open` and `erlang_owned`: the core for the low-level API's fd,
    /// poll and queue calls.
    fn open_erlang_owned(&self) -> Result<&LoopCore, Atom> {
        self.erlang_owned()?;
        self.open()
    }

    fn open(&self) -> Result<&LoopCore, Atom> {
        if self.core.is_closed() {
            Err(atoms::closed())
        } else {
            Ok(&self.core)
        }
    }
}

fn signals<'a>(env: Env<'a>, wake: Wake) -> Term<'a> {
    let mut list = Vec::with_capacity(3);
    if wake.closed {
        list.push(atoms::closed().encode(env));
    }
    if wake.apply_selects {
        list.push(selects().encode(env));
    }
    if let Some(ms) = wake.arm_timer_ms {
        list.push((arm(), ms).encode(env));
    }
    list.encode(env)
}

fn wake_message<'a>(env: Env<'a>, loop_id: u64, wake: Wake) -> Term<'a> {
    (py_loop(), loop_id, signals(env, wake)).encode(env)
}

/// Sends `wake` to the loop's server from a NIF (with the caller's env);
/// without a live server, the caller makes the owed select stops itself.
fn deliver_from_nif(env: Env<'_>, resource: &LoopResource, wake: Wake) {
    if wake.is_empty() {
        return;
    }
    match *lock(&resource.host.server) {
        Some(server) => {
            let _ = env.send(&server, wake_message(env, resource.host.loop_id, wake));
        }
        None => apply_stops(env, env.pid(), resource.core.take_stop_requests()),
    }
}

/// `apply_orphan_stops()` -> `ok`: makes the select stops of loops whose
/// server is gone (called by `py_event_loops` on `py_orphan_stops`).
#[rustler::nif]
fn apply_orphan_stops(env: Env<'_>) -> Atom {
    make_orphan_stops(env);
    atoms::ok()
}

/// Makes the queued stops of loops whose server is gone, with the caller's
/// env.
fn make_orphan_stops(env: Env<'_>) {
    let stops = std::mem::take(&mut *lock(&ORPHAN_STOPS));
    tracing::debug!(
        count = stops.len(),
        "select stops of loops without a worker"
    );
    apply_stops(env, env.pid(), stops);
}

fn error<'a>(env: Env<'a>, reason: impl Encoder) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

fn wait_error_atom(error: WaitError) -> Atom {
    match error {
        WaitError::Closed => atoms::closed(),
        // Only Python loops are placed lazily; the low-level API never
        // sees it.
        WaitError::ServerDown | WaitError::NoServer => server_down(),
    }
}

// ---- Python-created loops ----

fn not_running() -> std::io::Error {
    std::io::Error::other("erlang_python is not running")
}

/// Asks `py_event_loops` to place the Python loop `resource`.
fn ask_placer(resource: &ResourceArc<LoopResource>, isolated: bool) -> std::io::Result<()> {
    let placer = placer().ok_or_else(not_running)?;
    OwnedEnv::new()
        .send_and_clear(&placer, |env| {
            (py_loop_new(), resource.clone(), isolated).encode(env)
        })
        .map_err(|_| not_running())
}

/// The factory behind `_erlang_loop.new_loop`: a loop resource, placed on an
/// Erlang worker by `py_event_loops`. A default loop (on the shared worker)
/// asks for it when it first sets a timer or sleeps
/// (`LoopCore::defer_server`): many loops
/// made per call never do, and placing one, and then waiting in `close()`
/// for its worker, were cross-thread round trips that cost more than the
/// stdlib loop's whole life. An isolated loop is placed now (a worker of its
/// own, started under `py_event_worker_sup`). Runs on a Python thread with
/// the GIL released.
pub fn python_loop_factory(isolated: bool) -> std::io::Result<NativeLoop> {
    if placer().is_none() {
        return Err(not_running());
    }
    let LoopResource { core, host, .. } = LoopResource::new(true)?;
    if isolated {
        let resource = host.python_resource().ok_or_else(not_running)?;
        place_now(&resource)?;
    } else {
        core.defer_server();
    }
    let loop_id = host.loop_id;
    tracing::debug!(loop_id, isolated, "python event loop created");
    Ok(NativeLoop::new(core, Box::new(host), loop_id, isolated))
}

/// Has an isolated loop placed, and waits until its worker serves it.
fn place_now(resource: &ResourceArc<LoopResource>) -> std::io::Result<()> {
    ask_placer(resource, true)?;
    let give_up = Instant::now() + SERVER_TIMEOUT;
    let served = loop {
        let left = give_up.saturating_duration_since(Instant::now());
        let served = resource.core.wait_served(ASK_SERVER_AGAIN_AFTER.min(left));
        if served || left.is_zero() || resource.core.is_closed() {
            break served;
        }
        // A placer restarting is registered again in a moment.
        let _ = ask_placer(resource, true);
    };
    if served {
        return Ok(());
    }
    // A worker that took the loop at the last moment is told, and ends.
    let _ = resource.core.host().deliver(resource.core.close());
    tracing::error!(loop_id = resource.host.loop_id, "no worker took the loop");
    Err(std::io::Error::other(
        "no Erlang worker took the event loop",
    ))
}

/// The `py_event_loops` server, if the application runs.
pub fn placer() -> Option<LocalPid> {
    *lock(&LOOP_PLACER)
}

/// `set_loop_placer(Pid | undefined)` -> `ok`.
#[rustler::nif]
fn set_loop_placer(placer: Term<'_>) -> NifResult<Atom> {
    *lock(&LOOP_PLACER) = atoms::pid_or_undefined(placer)?;
    Ok(atoms::ok())
}

/// `set_orphan_stopper(Pid | undefined)` -> `ok`: who makes the select
/// stops of loops that close while no placer runs.
#[rustler::nif]
fn set_orphan_stopper(stopper: Term<'_>) -> NifResult<Atom> {
    *lock(&ORPHAN_STOPPER) = atoms::pid_or_undefined(stopper)?;
    Ok(atoms::ok())
}

// ---- the low-level API ----

/// A loop's `timer_salt`: 31 random bits (the process's random hash keys
/// over the loop id) in the generation half of a key.
fn timer_salt(loop_id: u64) -> u64 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(loop_id);
    (random & 0x7fff_ffff) << 32
}

/// `event_loop_new()` -> `{ok, LoopRef}`.
#[rustler::nif]
fn event_loop_new(env: Env<'_>) -> Term<'_> {
    if placer().is_none_or(|placer| !env.is_process_alive(placer)) {
        // Without the application (or with its placer killed), nobody else
        // makes the stops that loops dropped while their server lived left
        // behind: the next caller.
        make_orphan_stops(env);
    }
    match LoopResource::new(false) {
        Ok(resource) => (atoms::ok(), ResourceArc::new(resource)).encode(env),
        Err(reason) => error(env, reason.to_string()),
    }
}

/// `event_loop_set_router(LoopRef, Pid)` -> `ok`: `Pid` now serves the loop
/// (its selects and its timer); the loop is told if it dies. A `Pid` dead
/// already is `{error, noproc}` and leaves the loop as it was.
#[rustler::nif]
fn event_loop_set_router<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    server: LocalPid,
) -> Term<'a> {
    attach(env, &resource, server, false)
}

/// `event_loop_adopt(LoopRef, Pid)` -> `ok`: `event_loop_set_router`, unless
/// another live process serves the loop already: `{error, served}`, and
/// nothing changes. How the workers take a Python loop, whose placement
/// may be asked for more than once (see `ASK_SERVER_AGAIN_AFTER`).
#[rustler::nif]
fn event_loop_adopt<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    server: LocalPid,
) -> Term<'a> {
    attach(env, &resource, server, true)
}

/// `loop_router(LoopRef)` -> the process serving the loop, or `undefined`:
/// how a worker told it was replaced sees that it was set again since.
#[rustler::nif]
fn loop_router(env: Env<'_>, resource: ResourceArc<LoopResource>) -> Term<'_> {
    match *lock(&resource.host.server) {
        Some(pid) => pid.encode(env),
        None => crate::atoms::undefined().encode(env),
    }
}

/// `loop_is_closed(LoopRef)` -> whether the loop is closed: how a worker
/// told `closed` checks that the NIF said so, not a stray message.
#[rustler::nif]
fn loop_is_closed(resource: ResourceArc<LoopResource>) -> bool {
    resource.core.is_closed()
}

/// `loop_needs_placing(LoopRef)` -> whether no worker ever served the loop
/// and it is open: a placement request for any other is left.
#[rustler::nif]
fn loop_needs_placing(resource: ResourceArc<LoopResource>) -> bool {
    resource.core.needs_server()
}

/// Makes `server` the loop's; if `exclusive`, only while no other live
/// process serves it.
fn attach<'a>(
    env: Env<'a>,
    resource: &ResourceArc<LoopResource>,
    server: LocalPid,
    exclusive: bool,
) -> Term<'a> {
    if let Err(reason) = resource.open() {
        return error(env, reason);
    }
    // A placement asked for again reaches the worker that took the loop
    // already: nothing to do.
    if exclusive && *lock(&resource.host.server) == Some(server) {
        return atoms::ok().encode(env);
    }
    // Watched first: a dead pid is refused before anything is sent to it
    // (the loop's wake-ups are coalesced: one sent to a dead pid is lost
    // and leaves the live router without its selects). Listed with a
    // server it ends up not having, the loop ignores that one's death.
    if !server_watch::watch(env, server, &resource.host) {
        return error(env, noproc());
    }
    // Named and served under the server's lock (then the core's, the
    // order every path takes): a `lose_server` of the previous server
    // marks the loop down before or after, not between.
    let (wake, replaced, changed) = {
        let mut named = lock(&resource.host.server);
        let refused =
            if exclusive && named.is_some_and(|pid| pid != server && env.is_process_alive(pid)) {
                Some(served())
            } else if exclusive && resource.core.is_closed() {
                // Given up on meanwhile (see `python_loop_factory`): not taken.
                Some(atoms::closed())
            } else {
                None
            };
        if let Some(reason) = refused {
            return error(env, reason);
        }
        let previous = named.replace(server);
        let replaced = previous.filter(|&previous| previous != server);
        (
            resource.core.set_served(),
            replaced,
            previous != Some(server),
        )
    };
    // The router it replaces lets go of the loop (a worker of its own then
    // stops), instead of holding it, and its fds, for as long as it lives.
    if let Some(previous) = replaced {
        let _ = env.send(
            &previous,
            (py_loop(), resource.host.loop_id, vec![released()]).encode(env),
        );
    }
    // Set by another process: the router is told which loop it serves now
    // (before the loop's own messages), so that one which had let go of it
    // (`released` above, then set back to it) takes it up again.
    if changed && env.pid() != server {
        let attached = (attached(), resource.clone()).encode(env);
        let _ = env.send(
            &server,
            (py_loop(), resource.host.loop_id, vec![attached]).encode(env),
        );
    }
    tracing::debug!(
        loop_id = resource.host.loop_id,
        "worker attached to the loop"
    );
    deliver_from_nif(env, resource, wake);
    if !env.is_process_alive(server) {
        // Died since the monitor. Its `down` is still to come (the loop
        // still names it: done here instead), or it came before
        // `set_served` cleared its mark (the loop names none): marked again.
        let current = lock(&resource.host.server);
        match *current {
            Some(pid) if pid == server => {
                drop(current);
                lose_server(env, &resource.host, &resource.core, server);
            }
            None => {
                resource.core.server_down();
                drop(current);
                tell_watchers(env, resource);
            }
            Some(_) => {} // another router was set since
        }
    }
    atoms::ok().encode(env)
}

/// `loop_id(LoopRef)` -> the integer that names the loop in messages.
#[rustler::nif]
fn loop_id(resource: ResourceArc<LoopResource>) -> u64 {
    resource.host.loop_id
}

/// `loop_apply_selects(LoopRef)` -> `ok`: makes the select calls the loop
/// owes, with the calling (serving) process as their owner.
#[rustler::nif]
fn loop_apply_selects<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> Term<'a> {
    let owner = env.pid();
    let reference = resource.host.loop_id.encode(env);
    for request in resource.core.take_select_requests() {
        if let Some(handle) = fd_resource::downcast(&request.handle) {
            let result = handle.select(env, request.op, owner.as_c_arg(), reference);
            if result < 0 {
                tracing::warn!(result, token = handle.token(), "enif_select failed");
            }
        }
    }
    atoms::ok().encode(env)
}

/// `loop_fd_ready(LoopRef, FdResource, read | write)` -> `ok`.
#[rustler::nif]
fn loop_fd_ready<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    fd: Term<'a>,
    direction: Atom,
) -> NifResult<Atom> {
    let handle = fd_resource::from_term(fd).ok_or(rustler::Error::BadArg)?;
    let kind = direction_kind(direction)?;
    resource.core.fd_ready(handle.token(), kind);
    tell_watchers(env, &resource);
    Ok(atoms::ok())
}

/// `loop_tick(LoopRef)` -> signals (`[{arm, Ms}]` or `[]`): the loop's timer
/// fired; due timers are queued and the next deadline comes back.
#[rustler::nif]
fn loop_tick<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> Term<'a> {
    if resource.core.is_closed() {
        return Vec::<Term>::new().encode(env);
    }
    let wake = resource.core.tick();
    tell_watchers(env, &resource);
    signals(env, wake)
}

fn direction_kind(direction: Atom) -> NifResult<EventKind> {
    if direction == read() {
        Ok(EventKind::Read)
    } else if direction == write() {
        Ok(EventKind::Write)
    } else {
        Err(rustler::Error::BadArg)
    }
}

fn add_interest<'a>(
    env: Env<'a>,
    resource: &LoopResource,
    fd: RawFd,
    kind: EventKind,
    callback_id: u64,
) -> Term<'a> {
    let core = match resource.open_erlang_owned() {
        Ok(core) => core,
        Err(reason) => return error(env, reason),
    };
    match core.add_interest(fd, kind, callback_id) {
        Ok(wake) => {
            deliver_from_nif(env, resource, wake);
            let token = core.registration_token(fd).unwrap_or(0);
            (atoms::ok(), (fd, token)).encode(env)
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::EBADF) => error(env, ebadf()),
            _ => error(env, e.to_string()),
        },
    }
}

fn remove_interest<'a>(
    env: Env<'a>,
    resource: &LoopResource,
    fd_ref: Term<'a>,
    kind: EventKind,
) -> NifResult<Term<'a>> {
    let (fd, token): (RawFd, u64) = fd_ref.decode()?;
    let core = match resource.open_erlang_owned() {
        Ok(core) => core,
        Err(reason) => return Ok(error(env, reason)),
    };
    // A stale FdRef (its fd re-registered since) must not touch the new one.
    if core.registration_token(fd) != Some(token) {
        return Ok(error(env, not_found()));
    }
    let (had, wake) = core.remove_interest(fd, kind);
    deliver_from_nif(env, resource, wake);
    Ok(if had {
        atoms::ok().encode(env)
    } else {
        error(env, not_found())
    })
}

/// `add_reader(LoopRef, Fd, CallbackId)` -> `{ok, FdRef} | {error, Reason}`.
#[rustler::nif]
fn add_reader<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    fd: RawFd,
    callback_id: u64,
) -> Term<'a> {
    add_interest(env, &resource, fd, EventKind::Read, callback_id)
}

/// `add_writer(LoopRef, Fd, CallbackId)` -> `{ok, FdRef} | {error, Reason}`.
#[rustler::nif]
fn add_writer<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    fd: RawFd,
    callback_id: u64,
) -> Term<'a> {
    add_interest(env, &resource, fd, EventKind::Write, callback_id)
}

/// `remove_reader(LoopRef, FdRef)` -> `ok | {error, not_found | closed}`.
#[rustler::nif]
fn remove_reader<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    fd_ref: Term<'a>,
) -> NifResult<Term<'a>> {
    remove_interest(env, &resource, fd_ref, EventKind::Read)
}

/// `remove_writer(LoopRef, FdRef)` -> `ok | {error, not_found | closed}`.
#[rustler::nif]
fn remove_writer<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    fd_ref: Term<'a>,
) -> NifResult<Term<'a>> {
    remove_interest(env, &resource, fd_ref, EventKind::Write)
}

/// `call_later(LoopRef, DelayMs, CallbackId)` -> `{ok, TimerRef}`: a timer in
/// the loop's wheel; `{CallbackId, timer}` is queued when it fires.
#[rustler::nif]
fn call_later<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    delay_ms: u64,
    callback_id: u64,
) -> Term<'a> {
    let core = match resource.erlang_owned() {
        Ok(core) => core,
        Err(reason) => return error(env, reason),
    };
    let deadline = LoopCore::now_ns().saturating_add(delay_ms.saturating_mul(1_000_000));
    match core.insert_timer(deadline, callback_id) {
        Ok((key, wake)) => {
            let key = key ^ resource.timer_salt;
            deliver_from_nif(env, &resource, wake);
            // No router arms the loop's timer yet: the pollers wait for its
            // next deadline themselves, which may now be earlier.
            if lock(&resource.host.server).is_none() {
                tell_all_watchers(env, &resource);
            }
            (atoms::ok(), key).encode(env)
        }
        Err(e) => error(env, wait_error_atom(e)),
    }
}

/// `cancel_timer(LoopRef, TimerRef)` -> `ok | {error, not_found}`. Stale,
/// fired and unknown refs are harmless.
#[rustler::nif]
fn cancel_timer<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>, key: u64) -> Term<'a> {
    match resource
        .open_erlang_owned()
        .map(|core| core.cancel_timer(key ^ resource.timer_salt))
    {
        Ok(Some(_)) => atoms::ok().encode(env),
        Ok(None) => error(env, not_found()),
        Err(reason) => error(env, reason),
    }
}

/// `poll_events_watch(LoopRef, Token, Woken)` -> `N | {watching, Ms |
/// infinity} | {error, Reason}`: a look of `py_nif:poll_events/2`, which
/// waits in Erlang rather than on a scheduler. `N`: events queued (or a
/// wake-up asked for: then maybe 0). Otherwise the caller is now watching:
/// it is sent `{py_loop_ready, Token}` when the loop has news, and looks
/// again then or in `Ms` (the wheel's next deadline, for a loop whose timer
/// no router arms). `Woken`: the caller waited since its last look (for a
/// message or that deadline; counted as a wake-up, spurious if it finds
/// nothing).
#[rustler::nif]
fn poll_events_watch<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    token: u64,
    woken: bool,
) -> Term<'a> {
    let core = match resource.open_erlang_owned() {
        Ok(core) => core,
        Err(reason) => {
            // Watching since an earlier look: no message must follow.
            unwatch(&resource, token);
            return error(env, reason);
        }
    };
    deliver_from_nif(env, &resource, core.prepare_wait());
    // Watch first, then look: news queued meanwhile by another process
    // (which queues, then tells the watchers) is either seen by the look
    // or told to this watch.
    {
        let mut watchers = lock(&resource.host.watchers);
        watchers.retain(|&(watching, _)| watching != token);
        // Pollers killed while watching stay until the loop's next news:
        // on an idle loop, only up to a bound.
        if watchers.len() >= WATCHERS_PRUNED_AT {
            watchers.retain(|&(_, pid)| env.is_process_alive(pid));
        }
        watchers.push((token, env.pid()));
    }
    let looked = core.poll_ready(woken, false);
    if !matches!(looked, Ok(Look::Idle { .. })) {
        unwatch(&resource, token);
    }
    match looked {
        Ok(Look::Idle { next_deadline_in }) => {
            let timer = match next_deadline_in {
                Some(left) => (left.as_nanos().div_ceil(1_000_000) as u64).encode(env),
                None => infinity().encode(env),
            };
            (watching(), timer).encode(env)
        }
        Ok(Look::Ready(count)) => count.encode(env),
        Err(e) => error(env, wait_error_atom(e)),
    }
}

/// `poll_events_unwatch(LoopRef, Token, Slept)` -> `N | {error, Reason}`:
/// the end of a `py_nif:poll_events/2` that timed out (after a wait, when
/// `Slept`): no more watching; the events queued now.
#[rustler::nif]
fn poll_events_unwatch<'a>(
    env: Env<'a>,
    resource: ResourceArc<LoopResource>,
    token: u64,
    slept: bool,
) -> Term<'a> {
    unwatch(&resource, token);
    let core = match resource.open_erlang_owned() {
        Ok(core) => core,
        Err(reason) => return error(env, reason),
    };
    match core.poll_ready(slept, true) {
        Ok(Look::Ready(count)) => count.encode(env),
        Ok(Look::Idle { .. }) => 0.encode(env),
        Err(e) => error(env, wait_error_atom(e)),
    }
}

fn unwatch(resource: &LoopResource, token: u64) {
    lock(&resource.host.watchers).retain(|&(watching, _)| watching != token);
}

/// Sends `{py_loop_ready, Token}` to every process watching the loop
/// (`poll_events_watch`) if it has news for them, after a call that may
/// have brought some (an event, a due timer, a wake-up, the close, the
/// server's death). They look again, and watch again if another took it.
fn tell_watchers(env: Env<'_>, resource: &LoopResource) {
    tell_host_watchers(env, &resource.host, &resource.core);
}

/// [`tell_watchers`] of the loop `host` and `core` make.
fn tell_host_watchers(env: Env<'_>, host: &NifHost, core: &LoopCore) {
    if !lock(&host.watchers).is_empty() && core.has_news() {
        tell_all_host_watchers(env, host);
    }
}

/// Has every process watching the loop look again.
fn tell_all_watchers(env: Env<'_>, resource: &LoopResource) {
    tell_all_host_watchers(env, &resource.host);
}

fn tell_all_host_watchers(env: Env<'_>, host: &NifHost) {
    let watchers = std::mem::take(&mut *lock(&host.watchers));
    for (token, pid) in watchers {
        let _ = env.send(&pid, (py_loop_ready(), token).encode(env));
    }
}

/// `event_loop_wakeup(LoopRef)` -> `ok | {error, closed}`.
#[rustler::nif]
fn event_loop_wakeup<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> Term<'a> {
    match resource.open() {
        Ok(core) => {
            core.wakeup();
            tell_watchers(env, &resource);
            atoms::ok().encode(env)
        }
        Err(reason) => error(env, reason),
    }
}

/// `get_pending(LoopRef)` -> `[{CallbackId, read | write | timer}]`, oldest
/// first; drains the queue. The fds whose events it took are armed again
/// (level-triggered, as `poll_events` does before it waits): a consumer
/// that only drains still gets a still-ready fd's next event.
#[rustler::nif]
fn get_pending<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> Term<'a> {
    let core = match resource.open_erlang_owned() {
        Ok(core) => core,
        Err(reason) => return error(env, reason),
    };
    let mut events: Vec<Event> = Vec::new();
    core.take_pending(&mut events, usize::MAX);
    deliver_from_nif(env, &resource, core.prepare_wait());
    let list: Vec<Term> = events
        .iter()
        .map(|event| {
            let kind = match event.kind {
                EventKind::Read => read(),
                EventKind::Write => write(),
                EventKind::Timer => timer(),
            };
            (event.id, kind).encode(env)
        })
        .collect();
    list.encode(env)
}

/// `event_loop_destroy(LoopRef)` -> `ok`: closes the loop (idempotent).
#[rustler::nif]
fn event_loop_destroy<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> Term<'a> {
    tracing::debug!(loop_id = resource.host.loop_id, "loop destroyed");
    let wake = resource.core.close();
    if !resource.python {
        // The low-level API's timer ids are plain integers that nobody can
        // take from a closed loop: the wheel's memory goes now, not when
        // the last copy of the LoopRef is collected. (A Python loop's ids
        // are objects its runner releases.)
        drop(resource.core.take_all_timers());
    }
    deliver_from_nif(env, &resource, wake);
    tell_watchers(env, &resource);
    atoms::ok().encode(env)
}

/// `loop_stats(LoopRef)` -> a map of the loop's counters, and `watchers`:
/// the registrations of `poll_events` waits (see `poll_events_watch`).
#[rustler::nif]
fn loop_stats<'a>(env: Env<'a>, resource: ResourceArc<LoopResource>) -> NifResult<Term<'a>> {
    let mut fields = resource.core.stats().fields().to_vec();
    fields.push(("watchers", lock(&resource.host.watchers).len() as u64));
    let keys: Vec<Term> = fields
        .iter()
        .map(|(name, _)| rustler::Atom::from_str(env, name).map(|a| a.encode(env)))
        .collect::<NifResult<_>>()?;
    let values: Vec<Term> = fields.iter().map(|(_, value)| value.encode(env)).collect();
    Term::map_from_term_arrays(env, &keys, &values)
}
