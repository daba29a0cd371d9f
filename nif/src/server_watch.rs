//! The processes that serve event loops (routers, `py_event_worker`s),
//! each watched by one monitor for as long as it lives, rather than a
//! monitor per loop: a loop freed while its monitor of its server was
//! still listed made `process_info(Server, monitored_by)` (observer,
//! recon) crash the VM, demonitored or not (the demonitor reaches the
//! process later, as a signal); see `job::CallerWatcher`, the same for
//! callers.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use rustler::{Env, LocalPid, Monitor, ResourceArc};

use crate::sync::lock;

/// A loop as its server's watcher sees it.
pub trait Served: Send + Sync {
    /// `pid`, which the loop was given as its server, died (it may serve
    /// another one since).
    fn server_lost(&self, env: Env<'_>, pid: LocalPid);
}

/// Receives the `DOWN` of one serving process.
pub struct ServerWatcher;

#[rustler::resource_impl]
impl rustler::Resource for ServerWatcher {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, env: Env<'a>, pid: LocalPid, _monitor: Monitor) {
        let Some(server) = lock(&SERVERS).remove(&pid) else {
            return;
        };
        // Told with no lock of ours held: they take their loops' locks.
        for served in server.loops.into_values().filter_map(|weak| weak.upgrade()) {
            served.server_lost(env, pid);
        }
    }
}

/// A watched process: its watcher and the loops it was given, by address
/// (weak: a loop goes when its owners let go, served or not).
struct Server {
    /// Kept while the process lives: its `down` tells `loops`.
    _watcher: ResourceArc<ServerWatcher>,
    loops: HashMap<usize, Weak<dyn Served>>,
    /// Gone loops are swept out when `loops` reaches this size.
    sweep_at: usize,
}

/// The serving processes, watched until they die.
static SERVERS: LazyLock<Mutex<HashMap<LocalPid, Server>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The fewest loops a server lists before gone ones are swept out.
const SWEEP_AT_LEAST: usize = 64;

/// Lists `served` as a loop of `server`, whose death it is then told,
/// watching `server` first if it is not yet. False if `server` is dead (or
/// died before it could be watched): nothing is listed.
pub fn watch<S: Served + 'static>(env: Env<'_>, server: LocalPid, served: &Arc<S>) -> bool {
    let mut servers = lock(&SERVERS);
    let entry = match servers.entry(server) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(vacant) => {
            let watcher = ResourceArc::new(ServerWatcher);
            if watcher.monitor(Some(env), &server).is_none() {
                return false;
            }
            vacant.insert(Server {
                _watcher: watcher,
                loops: HashMap::new(),
                sweep_at: SWEEP_AT_LEAST,
            })
        }
    };
    if entry.loops.len() >= entry.sweep_at {
        entry.loops.retain(|_, weak| weak.strong_count() > 0);
        entry.sweep_at = SWEEP_AT_LEAST.max(2 * entry.loops.len());
    }
    let weak: Weak<dyn Served> = Arc::downgrade(served) as Weak<dyn Served>;
    // A freed loop's address may be a new loop's: that one replaces it.
    entry
        .loops
        .insert(Arc::as_ptr(served) as *const () as usize, weak);
    true
}
