use super::*;
use crate::io::{SelectHandle, SelectOp};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex as StdMutex;
use std::thread;

/// A host that records what the loop asks of Erlang.
#[derive(Default)]
struct FakeHost {
    delivered: StdMutex<Vec<Wake>>,
    /// Closes handles never selected when asked (as the NIF's host does):
    /// the tokens of handles selected (by `apply_selects`) and of those
    /// closed unselected.
    closes_unselected: Option<StdMutex<(Vec<u64>, Vec<u64>)>>,
    /// `request_server` calls, and whether they find someone to ask.
    server_requests: std::sync::atomic::AtomicUsize,
    refuses_requests: bool,
    /// How long each `deliver` takes, in ms (a send held up).
    deliver_ms: std::sync::atomic::AtomicU64,
    /// `open_fd` fails with EBADF for an fd not open, as the NIF's `dup`.
    checks_fds: bool,
}

impl LoopHost for FakeHost {
    fn open_fd(&self, fd: RawFd, token: u64) -> std::io::Result<SelectHandle> {
        // SAFETY: F_GETFD only reads the fd's flags; a bad fd gives -1.
        if self.checks_fds && unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(token))
    }

    fn deliver(&self, wake: Wake) -> bool {
        thread::sleep(Duration::from_millis(
            self.deliver_ms.load(Ordering::Relaxed),
        ));
        self.delivered.lock().unwrap().push(wake);
        true
    }

    fn request_server(&self) -> bool {
        self.server_requests.fetch_add(1, Ordering::SeqCst);
        !self.refuses_requests
    }

    fn close_unselected(&self, handle: &SelectHandle) -> bool {
        let Some(tokens) = &self.closes_unselected else {
            return false;
        };
        let token = *handle.downcast_ref::<u64>().unwrap();
        let (selected, closed) = &mut *tokens.lock().unwrap();
        if selected.contains(&token) {
            return false;
        }
        closed.push(token);
        true
    }
}

impl FakeHost {
    /// Makes the selects the core owes, as the serving process would.
    fn apply_selects(&self, core: &LoopCore) -> Vec<SelectOp> {
        let requests = core.take_select_requests();
        if let Some(tokens) = &self.closes_unselected {
            let selected = &mut tokens.lock().unwrap().0;
            selected.extend(requests.iter().map(token_of));
        }
        requests.iter().map(|request| request.op).collect()
    }

    /// Tokens of the handles closed without a select.
    fn closed_unselected(&self) -> Vec<u64> {
        self.closes_unselected
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .1
            .clone()
    }
}

fn new_loop() -> (Arc<LoopCore>, Arc<FakeHost>) {
    let host = Arc::new(FakeHost::default());
    let core = LoopCore::new(1_000_000, host.clone()).unwrap();
    (Arc::new(core), host)
}

/// The operations of the select requests the core owes, taken.
fn select_ops(core: &LoopCore) -> Vec<SelectOp> {
    core.take_select_requests()
        .iter()
        .map(|request| request.op)
        .collect()
}

fn ms(n: u64) -> u64 {
    n * 1_000_000
}

#[test]
fn a_timer_is_armed_once_for_the_earliest_deadline() {
    let (core, _) = new_loop();
    assert!(core.set_served().is_empty());
    let now = now_monotonic_ns();
    let (_, first) = core.insert_timer(now + ms(50), 1).unwrap();
    let delay = first.arm_timer_ms.expect("first timer arms");
    assert!((1..=51).contains(&delay), "delay {delay}");
    // A later deadline does not re-arm; an earlier one does.
    let (_, later) = core.insert_timer(now + ms(80), 2).unwrap();
    assert!(later.is_empty());
    let (_, earlier) = core.insert_timer(now + ms(10), 3).unwrap();
    assert!(earlier.arm_timer_ms.is_some());
    assert_eq!(core.stats().timer_arms, 2);
}

#[test]
fn far_deadlines_arm_a_bounded_erlang_timer() {
    let (core, _) = new_loop();
    core.set_served();
    let now = now_monotonic_ns();
    // Centuries away, but below NEVER: beyond what erlang:start_timer takes.
    let far = now + (u64::MAX - now) / 2;
    let (key, wake) = core.insert_timer(far, 1).unwrap();
    assert_eq!(wake.arm_timer_ms, Some(MAX_ARM_MS));
    // The bounded timer fires early: nothing is queued, it is armed again.
    assert_eq!(core.tick().arm_timer_ms, Some(MAX_ARM_MS));
    assert_eq!(core.pending_len(), 0);
    assert!(core.cancel_timer(key).is_some());
}

#[test]
fn nothing_is_armed_without_timers_or_without_a_server() {
    let (core, _) = new_loop();
    let (_, wake) = core.insert_timer(now_monotonic_ns() + ms(5), 1).unwrap();
    assert!(wake.is_empty(), "no server yet");
    // The server arrives: the existing timer gets armed then.
    assert!(core.set_served().arm_timer_ms.is_some());
}

#[test]
fn tick_queues_due_timers_and_wait_returns_them_never_early() {
    let (core, _) = new_loop();
    core.set_served();
    let deadline = now_monotonic_ns() + ms(20);
    let (key, _) = core.insert_timer(deadline, 42).unwrap();
    // An early tick (Erlang's clock is not ours) fires nothing.
    core.tick();
    assert_eq!(core.pending_len(), 0);
    assert_eq!(core.stats().spurious_ticks, 1);
    while now_monotonic_ns() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let next = core.tick();
    assert!(next.arm_timer_ms.is_none(), "no timer left to arm");
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert_eq!(
        out,
        [Event {
            kind: EventKind::Timer,
            id: 42,
            key,
            deadline
        }]
    );
    assert!(now_monotonic_ns() >= deadline);
    assert_eq!(core.cancel_timer(key), None, "cancel after fire is a no-op");
}

#[test]
fn without_a_server_wait_sleeps_until_the_next_deadline() {
    let (core, _) = new_loop();
    let deadline = now_monotonic_ns() + ms(30);
    core.insert_timer(deadline, 7).unwrap();
    let mut out = Vec::new();
    core.prepare_wait();
    core.wait(Some(Duration::from_secs(30)), &mut out, 16)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(now_monotonic_ns() >= deadline, "fired early");
}

#[test]
fn cancelled_timers_never_fire_and_free_at_once() {
    let (core, _) = new_loop();
    let (key, _) = core.insert_timer(now_monotonic_ns(), 1).unwrap();
    assert!(core.cancel_timer(key).is_some());
    assert_eq!(core.cancel_timer(key), None, "double cancel is a no-op");
    assert_eq!(core.cancel_timer(u64::MAX), None, "garbage key is a no-op");
    assert_eq!(core.stats().live_timers, 0);
    core.prepare_wait();
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert!(out.is_empty());
}

#[test]
fn wakeup_from_another_thread_ends_an_unbounded_wait() {
    let (core, _) = new_loop();
    core.set_served();
    let waker = Arc::clone(&core);
    let handle = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        waker.wakeup();
    });
    let mut out = Vec::new();
    let waited = core.wait(None, &mut out, 16).unwrap();
    assert!(waited.woken);
    assert!(out.is_empty());
    handle.join().unwrap();
    // The flag was cleared: the next zero-timeout wait reports no wake-up.
    assert!(!core.wait(Some(Duration::ZERO), &mut out, 16).unwrap().woken);
}

#[test]
fn interrupt_ends_an_unbounded_wait_and_is_taken_once() {
    let (core, _) = new_loop();
    core.set_served();
    assert!(!core.take_interrupt());
    let interrupter = Arc::clone(&core);
    let handle = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        interrupter.interrupt();
    });
    let mut out = Vec::new();
    // Bounded, so that a lost wake-up fails instead of hanging.
    let waited = core
        .wait(Some(Duration::from_secs(30)), &mut out, 16)
        .unwrap();
    assert!(waited.woken);
    assert!(out.is_empty());
    handle.join().unwrap();
    assert!(core.take_interrupt());
    assert!(!core.take_interrupt());
    // A plain wake-up is no interrupt.
    core.wakeup();
    assert!(core.wait(Some(Duration::ZERO), &mut out, 16).unwrap().woken);
    assert!(!core.take_interrupt());
}

#[test]
fn close_and_server_death_end_waits_with_a_clear_error() {
    let (core, _) = new_loop();
    core.set_served();
    let closer = Arc::clone(&core);
    let handle = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        closer.server_down();
    });
    let mut out = Vec::new();
    assert_eq!(core.wait(None, &mut out, 16), Err(WaitError::ServerDown));
    handle.join().unwrap();

    let (core, _) = new_loop();
    assert!(core.close().closed);
    assert!(core.close().is_empty(), "close is idempotent");
    assert_eq!(core.wait(None, &mut out, 16), Err(WaitError::Closed));
    assert_eq!(core.insert_timer(0, 1), Err(WaitError::Closed));
    assert!(core.add_interest(3, EventKind::Read, 1).is_err());
}

#[test]
fn timers_outlive_close_until_their_owner_takes_them() {
    // Ids may stand for objects the owner holds (the Python runner's
    // handles): nothing drops one behind its back.
    let (core, _) = new_loop();
    let now = now_monotonic_ns();
    let (live, _) = core.insert_timer(now + ms(60_000), 7).unwrap();
    let (fired, _) = core.insert_timer(now, 8).unwrap();
    core.insert_timer(now + ms(1), 9).unwrap();
    assert_eq!(
        core.cancel_timer_if(live, |id| id != 7),
        None,
        "not ours: left"
    );
    while now_monotonic_ns() < now + 1 {}
    core.set_served();
    core.tick(); // fires 8 (and 9 once due) into the queue
    assert_eq!(
        core.cancel_timer_if(fired, |_| true),
        None,
        "fired: no longer live"
    );
    core.add_interest(3, EventKind::Read, 1).unwrap();
    let mut seen = Vec::new();
    core.for_each_timer_id(|id| seen.push(id));
    seen.sort_unstable();
    assert!(seen == [7, 8, 9], "{seen:?}");
    core.close();
    let mut taken = core.take_all_timers();
    taken.sort_unstable();
    assert_eq!(taken, [7, 8, 9]);
    assert!(core.take_all_timers().is_empty());
    assert_eq!(core.stats().live_timers, 0);
}

fn token_of(request: &SelectRequest) -> u64 {
    *request.handle.downcast_ref::<u64>().unwrap()
}

#[test]
fn a_new_server_selects_every_watched_fd_again() {
    let (core, _) = new_loop();
    core.set_served();
    core.add_interest(5, EventKind::Read, 1).unwrap();
    core.add_interest(6, EventKind::Write, 2).unwrap();
    assert_eq!(core.take_select_requests().len(), 2);
    // The serving process dies with its selects; a new one takes over.
    core.server_down();
    let wake = core.set_served();
    assert!(wake.apply_selects);
    let mut ops = select_ops(&core);
    ops.sort_by_key(|op| format!("{op:?}"));
    assert_eq!(
        ops,
        [
            SelectOp::Arm {
                read: false,
                write: true
            },
            SelectOp::Arm {
                read: true,
                write: false
            }
        ]
    );
}

#[test]
fn a_new_server_is_signalled_what_a_dead_one_was_told_and_never_did() {
    let (core, _) = new_loop();
    core.set_served();
    core.add_interest(5, EventKind::Read, 1).unwrap();
    assert_eq!(core.take_select_requests().len(), 1);
    // The stop is signalled; the server dies without making it, and the
    // stop is made by another process.
    assert!(core.remove_interest(5, EventKind::Read).1.apply_selects);
    core.server_down();
    assert_eq!(core.take_stop_requests().len(), 1);
    core.set_served();
    // The new server is told of the next select.
    assert!(
        core.add_interest(6, EventKind::Read, 2)
            .unwrap()
            .apply_selects
    );
}

#[test]
fn fd_readiness_flows_through_the_queue_and_rearms_after_being_taken() {
    let (core, _) = new_loop();
    core.set_served();
    // A real fd: the same number stays the same open file across the adds.
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let wake = core.add_interest(fd, EventKind::Read, 100).unwrap();
    assert!(wake.apply_selects);
    // A second request while the first is unserved asks for nothing more.
    assert!(
        !core
            .add_interest(fd, EventKind::Write, 101)
            .unwrap()
            .apply_selects
    );
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), 2);
    let token = token_of(&requests[0]);
    assert_eq!(
        requests[0].op,
        SelectOp::Arm {
            read: true,
            write: false
        }
    );

    core.fd_ready(token, EventKind::Read);
    core.fd_ready(token, EventKind::Read);
    assert_eq!(core.stats().events_coalesced, 1);
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert_eq!(
        out,
        [Event {
            kind: EventKind::Read,
            id: 100,
            key: fd as u64,
            deadline: 0
        }]
    );
    // The next wait re-arms the read side (level-triggered like a selector).
    assert!(core.prepare_wait().apply_selects);
    let rearmed = core.take_select_requests();
    assert_eq!(rearmed.len(), 1);
    assert_eq!(
        rearmed[0].op,
        SelectOp::Arm {
            read: true,
            write: false
        }
    );
}

#[test]
fn prepare_and_wait_tells_the_server_and_returns_what_is_due() {
    let (core, host) = new_loop();
    core.set_served();
    core.add_interest(4, EventKind::Read, 100).unwrap();
    let token = token_of(&core.take_select_requests()[0]);
    core.fd_ready(token, EventKind::Read);
    let mut out = Vec::new();
    core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
        .unwrap();
    assert_eq!(out.len(), 1, "the fd event");
    // The next look re-arms the fd (told to the server, the loop unlocked
    // meanwhile) and queues a timer already due, in the same call.
    let told = host.delivered.lock().unwrap().len();
    let (key, _) = core.insert_timer(now_monotonic_ns(), 7).unwrap();
    out.clear();
    core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
        .unwrap();
    let delivered = host.delivered.lock().unwrap()[told..].to_vec();
    assert!(
        delivered.iter().any(|wake| wake.apply_selects),
        "{delivered:?}"
    );
    assert!(matches!(
        core.take_select_requests()[..],
        [SelectRequest {
            op: SelectOp::Arm { read: true, .. },
            ..
        }]
    ));
    assert_eq!(out.iter().map(|event| event.key).collect::<Vec<_>>(), [key]);
    core.close();
    assert_eq!(
        core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16),
        Err(WaitError::Closed)
    );
}

#[test]
fn removing_interest_drops_a_queued_event_and_stops_the_select() {
    let (core, _) = new_loop();
    core.set_served();
    core.add_interest(4, EventKind::Read, 1).unwrap();
    let token = token_of(&core.take_select_requests()[0]);
    core.fd_ready(token, EventKind::Read);
    let (had, wake) = core.remove_interest(4, EventKind::Read);
    assert!(had && wake.apply_selects);
    assert_eq!(core.take_select_requests()[0].op, SelectOp::Stop);
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert!(out.is_empty(), "a removed reader's event must not run");
    // Readiness arriving after the removal is stale.
    core.fd_ready(token, EventKind::Read);
    assert_eq!(core.stats().stale_events, 1);
    // Re-adding the same fd number selects again (fresh registration).
    core.add_interest(4, EventKind::Read, 2).unwrap();
    let fresh = core.take_select_requests();
    assert_ne!(token_of(&fresh[0]), token);
}

/// A caller adding and removing fds faster than its serving process
/// applies selects: each registration removed before its arm was applied is
/// closed at once and its arm withdrawn, so nothing piles up.
#[test]
fn a_registration_removed_before_its_select_is_closed_at_once() {
    let host = Arc::new(FakeHost {
        closes_unselected: Some(StdMutex::default()),
        ..FakeHost::default()
    });
    let core = LoopCore::new(1_000_000, host.clone()).unwrap();
    core.set_served();
    for id in 0..1000 {
        core.add_interest(4, EventKind::Read, id).unwrap();
        core.remove_interest(4, EventKind::Read);
    }
    assert_eq!(host.apply_selects(&core), [], "no arm or stop left owed");
    assert_eq!(host.closed_unselected().len(), 1000);
    assert_eq!(core.stats().fds_closed_unselected, 1000);
    // Selected once, a registration needs its stop.
    core.add_interest(4, EventKind::Read, 1).unwrap();
    host.apply_selects(&core);
    core.add_interest(4, EventKind::Write, 2).unwrap();
    core.remove_interest(4, EventKind::Read);
    core.remove_interest(4, EventKind::Write);
    assert_eq!(
        host.apply_selects(&core),
        [SelectOp::Stop],
        "the queued arm of the write direction is withdrawn, the stop stays"
    );
    assert_eq!(host.closed_unselected().len(), 1000);
}

#[test]
fn two_loops_never_see_each_others_events() {
    let (a, _) = new_loop();
    let (b, _) = new_loop();
    let now = now_monotonic_ns();
    for id in 0..100 {
        a.insert_timer(now + ms(1), id).unwrap();
        b.insert_timer(now + ms(1), 1000 + id).unwrap();
    }
    let collect = |core: Arc<LoopCore>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            while out.len() < 100 {
                core.prepare_wait();
                core.wait(Some(Duration::from_secs(10)), &mut out, 1000)
                    .unwrap();
            }
            out
        })
    };
    let (from_a, from_b) = (collect(a).join().unwrap(), collect(b).join().unwrap());
    assert!(from_a.iter().all(|e| e.id < 1000) && from_a.len() == 100);
    assert!(from_b.iter().all(|e| e.id >= 1000) && from_b.len() == 100);
}

#[test]
fn stop_requests_can_be_taken_apart_from_arms() {
    let (core, _) = new_loop();
    core.add_interest(3, EventKind::Read, 1).unwrap();
    core.add_interest(4, EventKind::Read, 2).unwrap();
    core.take_select_requests();
    core.remove_interest(3, EventKind::Read);
    core.add_interest(5, EventKind::Write, 3).unwrap();
    let stops = core.take_stop_requests();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].op, SelectOp::Stop);
    let rest = core.take_select_requests();
    assert_eq!(rest.len(), 1, "the arm stays for a future server");
    assert_eq!(
        rest[0].op,
        SelectOp::Arm {
            read: false,
            write: true
        }
    );
}

#[test]
fn a_served_loop_runs_a_due_timer_even_if_the_erlang_timer_is_late() {
    // The Erlang timer is only the backstop: no tick ever comes here, and
    // the waiting thread still wakes for the deadline, never before it.
    let (core, _) = new_loop();
    core.set_served();
    let deadline = now_monotonic_ns() + ms(20);
    core.insert_timer(deadline, 9).unwrap();
    core.prepare_wait();
    let mut out = Vec::new();
    core.wait(Some(Duration::from_secs(30)), &mut out, 16)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, 9);
    assert!(now_monotonic_ns() >= deadline, "fired early");
    assert_eq!(core.stats().ticks, 0);
}

#[test]
fn timers_less_than_a_tick_apart_are_run_by_one_wake_up_per_tick() {
    // 400 deadlines 5 us apart (2 ms in all, a busy loop's timers): woken
    // for each one, the thread slept about once per timer (the kernel's
    // timer slack merging a few); waiting a tick once a deadline is less
    // than a tick away, it sleeps about once per tick. Never early.
    let (core, _) = new_loop();
    let first = now_monotonic_ns() + ms(5);
    for n in 0..400 {
        core.insert_timer(first + n * 5_000, n).unwrap();
    }
    let mut out = Vec::new();
    let mut batch = Vec::new();
    while out.len() < 400 {
        batch.clear();
        core.wait(Some(Duration::from_secs(30)), &mut batch, 1024)
            .unwrap();
        let now = now_monotonic_ns();
        assert!(
            batch.iter().all(|event| event.deadline <= now),
            "fired early"
        );
        out.extend_from_slice(&batch);
    }
    let ids: Vec<u64> = out.iter().map(|event| event.id).collect();
    assert_eq!(ids, (0..400).collect::<Vec<_>>());
    let wakeups = core.stats().wakeups;
    assert!(wakeups <= 10, "{wakeups} wake-ups for 2 ms of timers");
}

#[test]
fn a_timer_due_within_a_short_wait_is_returned_not_timed_out() {
    // The caller's limit (0.7 ms) ends the wait before the tick a timer
    // less than a tick away is waited for, but after that timer's deadline
    // (0.3 ms): the wait returns the timer, not a timeout.
    for _ in 0..20 {
        let (core, _) = new_loop();
        let deadline = now_monotonic_ns() + 300_000;
        core.insert_timer(deadline, 5).unwrap();
        let mut out = Vec::new();
        core.wait(Some(Duration::from_micros(700)), &mut out, 16)
            .unwrap();
        assert_eq!(out.len(), 1, "the due timer was not returned");
        assert!(now_monotonic_ns() >= deadline, "fired early");
    }
}

fn new_polled_loop() -> (Arc<LoopCore>, Arc<FakeHost>) {
    let host = Arc::new(FakeHost::default());
    let core = LoopCore::with_own_poller(1_000_000, host.clone()).unwrap();
    (Arc::new(core), host)
}

fn arms_delivered(host: &FakeHost) -> usize {
    let delivered = host.delivered.lock().unwrap();
    delivered.iter().filter(|wake| wake.apply_selects).count()
}

#[test]
fn an_own_poller_loop_arms_its_backstop_after_the_deadline_and_still_fires_on_time() {
    // Its thread bounds each sleep by the deadline itself; the Erlang timer
    // is armed `BACKSTOP_SLACK_NS` later, and deadlines within that slack of
    // the armed one arm nothing more.
    let (core, _) = new_polled_loop();
    core.set_served();
    let now = now_monotonic_ns();
    let slack_ms = BACKSTOP_SLACK_NS / 1_000_000;
    let (_, first) = core.insert_timer(now + ms(20), 1).unwrap();
    let delay = first.arm_timer_ms.expect("first timer arms");
    assert!((slack_ms..=slack_ms + 21).contains(&delay), "delay {delay}");
    let (_, near) = core.insert_timer(now + ms(15), 2).unwrap();
    assert!(near.is_empty(), "re-armed for a deadline within the slack");
    assert_eq!(core.stats().timer_arms, 1);
    // Both fire on time, with no tick from the BEAM.
    core.prepare_wait();
    let mut out = Vec::new();
    while out.len() < 2 {
        core.wait(Some(Duration::from_secs(30)), &mut out, 16)
            .unwrap();
    }
    assert!(now_monotonic_ns() >= now + ms(20), "fired early");
    assert_eq!(out.iter().map(|event| event.id).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(core.stats().ticks, 0);
}

#[test]
fn a_timer_inserted_by_another_thread_wakes_the_sleeping_owner_for_it() {
    // No tick ever comes here: without the insert's notify, the wait would
    // end only at its 60 s bound.
    let (core, _) = new_polled_loop();
    core.set_served();
    let owner = {
        let core = core.clone();
        thread::spawn(move || {
            core.prepare_wait();
            let mut out = Vec::new();
            core.wait(Some(Duration::from_secs(60)), &mut out, 16)
                .unwrap();
            out
        })
    };
    thread::sleep(Duration::from_millis(50)); // most likely asleep by now
    let inserted = std::time::Instant::now();
    let deadline = now_monotonic_ns() + ms(10);
    core.insert_timer(deadline, 7).unwrap();
    let out = owner.join().unwrap();
    assert_eq!(out.iter().map(|event| event.id).collect::<Vec<_>>(), [7]);
    assert!(now_monotonic_ns() >= deadline, "fired early");
    assert!(
        inserted.elapsed() < Duration::from_secs(30),
        "woken by the bound"
    );
    assert_eq!(core.stats().ticks, 0);
}

#[test]
fn an_own_poller_loop_polls_its_fds_and_asks_the_beam_only_when_it_sleeps() {
    let (core, host) = new_polled_loop();
    core.set_served();
    let (a, mut b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    assert!(core
        .add_interest(fd, EventKind::Read, 41)
        .unwrap()
        .is_empty());
    assert_eq!(core.stats().fds, 1);
    // Busy: readiness comes from the loop's own look, no select asked for.
    b.write_all(b"x").unwrap();
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind, out[0].id, out[0].key),
        (EventKind::Read, 41, fd as u64)
    );
    assert!(core.take_select_requests().is_empty());
    assert_eq!(arms_delivered(&host), 0);
    // Still unread: level-triggered, reported again.
    out.clear();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert_eq!(out.len(), 1);
    std::io::Read::read_exact(&mut &a, &mut [0u8; 1]).unwrap();
    // About to sleep: the epoll fd's select is asked for, once.
    out.clear();
    core.wait(Some(Duration::from_millis(5)), &mut out, 16)
        .unwrap();
    core.wait(Some(Duration::from_millis(5)), &mut out, 16)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(arms_delivered(&host), 1);
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(token_of(&requests[0]), crate::io::poller::POLLER_TOKEN);
    // Asleep with no limit, the loop wakes when the BEAM reports the epoll fd.
    let sleeper = {
        let core = Arc::clone(&core);
        thread::spawn(move || {
            let mut out = Vec::new();
            core.wait(None, &mut out, 16).unwrap();
            out
        })
    };
    while core.lock().waiters == 0 {
        thread::yield_now();
    }
    b.write_all(b"y").unwrap();
    core.fd_ready(crate::io::poller::POLLER_TOKEN, EventKind::Read);
    let woke_with = sleeper.join().unwrap();
    assert_eq!(woke_with.len(), 1);
    assert_eq!(woke_with[0].id, 41);
    // The select was spent: the next sleep asks again.
    std::io::Read::read_exact(&mut &a, &mut [0u8; 1]).unwrap();
    core.wait(Some(Duration::from_millis(5)), &mut Vec::new(), 16)
        .unwrap();
    assert_eq!(arms_delivered(&host), 2);
}

#[test]
fn an_own_poller_loop_keeps_its_select_handle_until_close() {
    let (core, _) = new_polled_loop();
    core.set_served();
    let (a, _b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Write, 2)
        .unwrap();
    assert!(core.remove_interest(a.as_raw_fd(), EventKind::Write).0);
    assert!(core.take_select_requests().is_empty());
    // The last fd goes: the handle on the epoll fd stays, so a later
    // add_reader takes no fd of the process.
    let (had, wake) = core.remove_interest(a.as_raw_fd(), EventKind::Read);
    assert!(had && !wake.apply_selects);
    assert!(select_ops(&core).is_empty());
    assert_eq!(core.stats().fds, 0);
    // Watched again, then closed: the select stops with the loop, once.
    core.add_interest(a.as_raw_fd(), EventKind::Read, 3)
        .unwrap();
    assert!(core.close().apply_selects);
    assert_eq!(select_ops(&core), [SelectOp::Stop]);
    assert!(core
        .add_interest(a.as_raw_fd(), EventKind::Read, 4)
        .is_err());
}

#[test]
fn close_stopping_names_the_handles_it_stops() {
    let token = |handle: &SelectHandle| *handle.downcast_ref::<u64>().unwrap();
    let (core, _) = new_loop();
    let (a, b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    core.add_interest(b.as_raw_fd(), EventKind::Write, 2)
        .unwrap();
    core.take_select_requests();
    let (wake, stopping) = core.close_stopping();
    assert!(wake.closed && wake.apply_selects);
    let mut stopped: Vec<u64> = core
        .take_select_requests()
        .iter()
        .inspect(|request| assert_eq!(request.op, SelectOp::Stop))
        .map(|request| token(&request.handle))
        .collect();
    let mut named: Vec<u64> = stopping.iter().map(token).collect();
    stopped.sort_unstable();
    named.sort_unstable();
    assert_eq!(named.len(), 2);
    assert_eq!(named, stopped);
    // Closed already: nothing more to stop or wait for.
    let (wake, stopping) = core.close_stopping();
    assert!(wake.is_empty() && stopping.is_empty());
}

#[test]
fn events_of_an_own_poller_loop_beyond_max_are_reported_by_the_next_wait() {
    let (core, _) = new_polled_loop();
    let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
    for (id, (a, b)) in pairs.iter().enumerate() {
        core.add_interest(a.as_raw_fd(), EventKind::Read, id as u64)
            .unwrap();
        (&*b).write_all(b"x").unwrap();
    }
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 2).unwrap();
    assert_eq!(out.len(), 2);
    let mut again = Vec::new();
    core.wait(Some(Duration::ZERO), &mut again, 16).unwrap();
    let mut ids: Vec<u64> = again.iter().map(|event| event.id).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
}

#[test]
fn a_new_server_selects_an_own_poller_loop_s_epoll_fd_at_once() {
    let (core, _) = new_polled_loop();
    core.set_served();
    let (a, _b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    core.wait(Some(Duration::from_millis(1)), &mut Vec::new(), 16)
        .unwrap();
    assert_eq!(core.take_select_requests().len(), 1);
    // The server dies with its select while the loop sleeps; the new one
    // must select the epoll fd without waiting for the loop's next sleep.
    core.server_down();
    assert!(core.set_served().apply_selects);
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(token_of(&requests[0]), crate::io::poller::POLLER_TOKEN);
}

/// The sockets of `leave_a_ready_registration`, kept open while held.
struct Leftover {
    _idle: [UnixStream; 2],
    _alive: UnixStream,
    _peer: UnixStream,
}

/// A watched idle socket (so that a look polls the loop's set), and a
/// readable socket whose fd was closed and its interest removed while
/// another descriptor of it lives: its registration is left in the set.
fn leave_a_ready_registration(core: &LoopCore) -> Leftover {
    let (idle, idle_peer) = UnixStream::pair().unwrap();
    core.add_interest(idle.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    let (a, mut peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    core.add_interest(fd, EventKind::Read, 2).unwrap();
    let alive = a.try_clone().unwrap();
    drop(a);
    core.remove_interest(fd, EventKind::Read);
    peer.write_all(b"x").unwrap();
    Leftover {
        _idle: [idle, idle_peer],
        _alive: alive,
        _peer: peer,
    }
}

#[test]
fn a_leftover_registration_makes_the_loop_rebuild_its_set_and_stop_the_old_select() {
    let (core, _) = new_polled_loop();
    core.set_served();
    let _leftover = leave_a_ready_registration(&core);
    let mut out = Vec::new();
    core.wait(Some(Duration::from_millis(5)), &mut out, 16)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(core.stats().poller_rebuilds, 1);
    // The old set's select is stopped, the new one's armed for the sleep.
    assert_eq!(
        select_ops(&core),
        [
            SelectOp::Stop,
            SelectOp::Arm {
                read: true,
                write: false
            }
        ]
    );
    core.wait(Some(Duration::from_millis(5)), &mut out, 16)
        .unwrap();
    assert_eq!(core.stats().poller_rebuilds, 1, "shed for good");
}

#[test]
fn a_timer_due_while_a_rebuild_is_delivered_is_seen_by_the_same_look() {
    // The look unlocks to tell the server of the rebuilt set: the clock
    // read before that (by `prepare`) is stale once it locks again, and a
    // timer that became due meanwhile must not wait for another look.
    let (core, host) = new_polled_loop();
    core.set_served();
    let _leftover = leave_a_ready_registration(&core);
    let (key, _) = core.insert_timer(now_monotonic_ns() + ms(20), 7).unwrap();
    core.take_select_requests();
    host.deliver_ms.store(100, Ordering::Relaxed);
    let mut out = Vec::new();
    core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
        .unwrap();
    assert_eq!(core.stats().poller_rebuilds, 1);
    assert_eq!(out.iter().map(|event| event.key).collect::<Vec<_>>(), [key]);
}

#[test]
fn an_fd_number_reused_for_another_file_gets_a_registration_of_its_own() {
    let (core, _) = new_loop();
    core.set_served();
    let (a, _peer_a) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    core.add_interest(fd, EventKind::Read, 1).unwrap();
    core.add_interest(fd, EventKind::Write, 2).unwrap();
    let old = token_of(&core.take_select_requests()[0]);
    core.fd_ready(old, EventKind::Read);
    // The number now names another socket, as if closed without a remove
    // and reused at once (dup2 swaps the file under the number atomically:
    // no other thread of the test process can take the number meanwhile).
    let (b, _peer_b) = UnixStream::pair().unwrap();
    // SAFETY: `fd` is ours (`a`'s); dup2 closes a's file and makes the
    // number b's, still owned by `a`, which closes it when dropped.
    assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), fd) }, fd);
    let wake = core.add_interest(fd, EventKind::Read, 3).unwrap();
    assert!(wake.apply_selects);
    // The old registration (a duplicate of the closed socket) is stopped,
    // a new one armed for the read alone; the old file's event is gone.
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].op, SelectOp::Stop);
    assert_eq!(token_of(&requests[0]), old);
    assert_eq!(
        requests[1].op,
        SelectOp::Arm {
            read: true,
            write: false
        }
    );
    assert_ne!(token_of(&requests[1]), old);
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert!(out.is_empty(), "the closed socket's event must not run");
    // The same file again: the registration stays.
    core.add_interest(fd, EventKind::Write, 4).unwrap();
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].op,
        SelectOp::Arm {
            read: false,
            write: true
        }
    );
    drop(a);
}

#[test]
fn poll_ready_looks_without_waiting() {
    let idle = |next_deadline_in| Look::Idle { next_deadline_in };
    let (core, _) = new_loop();
    core.set_served();
    assert_eq!(core.poll_ready(false, false).unwrap(), idle(None));
    assert!(!core.has_news());
    // A wake-up is news, seen once, with nothing queued.
    core.wakeup();
    assert!(core.has_news());
    assert_eq!(core.poll_ready(true, false).unwrap(), Look::Ready(0));
    assert!(!core.has_news());
    assert_eq!(core.poll_ready(true, false).unwrap(), idle(None));
    // A timer an hour away bounds the caller's wait; one already due is
    // queued by the look itself (no loop timer needed).
    core.insert_timer(now_monotonic_ns() + 3_600 * ms(1_000), 1)
        .unwrap();
    let Look::Idle {
        next_deadline_in: Some(left),
    } = core.poll_ready(false, false).unwrap()
    else {
        panic!("a look with only a timer an hour away found something");
    };
    assert!(left > Duration::from_secs(3_500) && left <= Duration::from_secs(3_600));
    core.insert_timer(now_monotonic_ns().saturating_sub(ms(1)), 2)
        .unwrap();
    assert_eq!(core.poll_ready(false, false).unwrap(), Look::Ready(1));
    // A wait that timed out finding nothing is a wake-up, not a spurious one.
    assert_eq!(core.poll_ready(true, true).unwrap(), Look::Ready(1));
    core.take_pending(&mut Vec::new(), usize::MAX);
    assert!(matches!(
        core.poll_ready(true, true).unwrap(),
        Look::Idle {
            next_deadline_in: Some(_)
        }
    ));
    let stats = core.stats();
    assert_eq!((stats.wakeups, stats.spurious_wakeups), (4, 1));
    // Closed: news, and every look fails.
    core.close();
    assert!(core.has_news());
    assert!(matches!(
        core.poll_ready(true, false),
        Err(WaitError::Closed)
    ));
}

/// A loop placed lazily, on a host that closes handles never selected.
fn new_deferred_loop(refuses_requests: bool) -> (Arc<LoopCore>, Arc<FakeHost>) {
    let host = Arc::new(FakeHost {
        closes_unselected: Some(StdMutex::default()),
        refuses_requests,
        ..FakeHost::default()
    });
    let core = LoopCore::with_own_poller(1_000_000, host.clone()).unwrap();
    core.defer_server();
    (Arc::new(core), host)
}

fn server_requests(host: &FakeHost) -> usize {
    host.server_requests.load(Ordering::SeqCst)
}

#[test]
fn a_deferred_loop_asks_for_its_server_when_it_first_sleeps_and_not_before() {
    let (core, host) = new_deferred_loop(false);
    let mut out = Vec::new();
    // Busy iterations (looks without a wait) and fds: no server.
    let (a, _b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
        .unwrap();
    assert_eq!(server_requests(&host), 0);
    // Its first sleep asks, and is not held up by it.
    core.prepare_and_wait(Some(Duration::from_millis(2)), &mut out, 16)
        .unwrap();
    assert_eq!(server_requests(&host), 1);
    assert_eq!(arms_delivered(&host), 0, "nobody to tell yet");
    // The server that comes makes the epoll fd's select owed meanwhile.
    let wake = core.set_served();
    assert!(wake.apply_selects);
    assert_eq!(
        host.apply_selects(&core),
        [SelectOp::Arm {
            read: true,
            write: false
        }]
    );
    // Served: later sleeps ask nothing more.
    core.insert_timer(now_monotonic_ns() + ms(2), 3).unwrap();
    out.clear();
    while out.is_empty() {
        core.prepare_and_wait(Some(Duration::from_secs(30)), &mut out, 16)
            .unwrap();
    }
    assert_eq!(server_requests(&host), 1);
    // Its epoll fd was selected: its close owes the stop.
    let (wake, stopping) = core.close_stopping();
    assert!(wake.apply_selects && wake.closed);
    assert_eq!(stopping.len(), 1);
}

#[test]
fn a_deferred_loop_asks_for_its_server_with_its_first_timer() {
    let (core, host) = new_deferred_loop(false);
    let deadline = now_monotonic_ns() + ms(5);
    let (_, wake) = core.insert_timer(deadline, 1).unwrap();
    assert!(wake.is_empty(), "no timer armed without a server");
    assert_eq!(server_requests(&host), 1);
    core.insert_timer(deadline + ms(1), 2).unwrap();
    // Asked already: its sleeps ask no more meanwhile, and its timers fire
    // on time with nobody serving yet.
    let mut out = Vec::new();
    while out.len() < 2 {
        core.prepare_and_wait(Some(Duration::from_secs(30)), &mut out, 16)
            .unwrap();
    }
    assert!(now_monotonic_ns() >= deadline + ms(1), "fired early");
    assert_eq!(server_requests(&host), 1);
    // The server that comes arms the next timer.
    core.insert_timer(now_monotonic_ns() + ms(50), 3).unwrap();
    assert!(core.set_served().arm_timer_ms.is_some());
}

#[test]
fn a_deferred_loop_never_placed_closes_its_epoll_fd_itself() {
    let (core, host) = new_deferred_loop(false);
    let (a, _b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    let mut out = Vec::new();
    core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
        .unwrap();
    // Nothing owed to anybody: `close()` has nobody to wait for.
    let (wake, stopping) = core.close_stopping();
    assert_eq!(
        wake,
        Wake {
            closed: true,
            ..Wake::default()
        }
    );
    assert!(stopping.is_empty());
    assert!(core.take_select_requests().is_empty());
    assert_eq!(host.closed_unselected(), [POLLER_TOKEN]);
    assert_eq!(server_requests(&host), 0);
}

#[test]
fn a_deferred_loop_asleep_before_its_server_came_drops_the_epoll_fd_s_arm_at_close() {
    // Slept with fds (the epoll fd's arm queued for a server that never
    // came), then closed: the arm is void, the fd closed unselected.
    let (core, host) = new_deferred_loop(false);
    let (a, _b) = UnixStream::pair().unwrap();
    core.add_interest(a.as_raw_fd(), EventKind::Read, 1)
        .unwrap();
    let mut out = Vec::new();
    core.prepare_and_wait(Some(Duration::from_millis(5)), &mut out, 16)
        .unwrap();
    assert_eq!(server_requests(&host), 1);
    let (wake, stopping) = core.close_stopping();
    assert!(!wake.apply_selects);
    assert!(stopping.is_empty());
    assert!(core.take_select_requests().is_empty());
    assert_eq!(host.closed_unselected(), [POLLER_TOKEN]);
}

#[test]
fn a_deferred_loop_nobody_can_serve_fails_its_sleep_and_counts_as_lost() {
    let (core, host) = new_deferred_loop(true);
    let mut out = Vec::new();
    assert!(!core.server_lost());
    assert_eq!(
        core.prepare_and_wait(Some(Duration::from_millis(5)), &mut out, 16),
        Err(WaitError::NoServer)
    );
    assert_eq!(server_requests(&host), 1);
    assert!(core.server_lost(), "its owner replaces it");
}

/// LESSONS 20: the readiness of many fds reported at once, far more than a
/// batch, is all delivered (coalesced per fd and direction while queued,
/// never dropped by a cap on the queue), each fd's once.
#[test]
fn readiness_of_many_fds_at_once_is_never_dropped() {
    const FDS: usize = 300;
    let (core, _) = new_loop();
    core.set_served();
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..FDS).map(|_| UnixStream::pair().unwrap()).collect();
    for (id, (a, _)) in pairs.iter().enumerate() {
        core.add_interest(a.as_raw_fd(), EventKind::Read, id as u64)
            .unwrap();
    }
    let requests = core.take_select_requests();
    assert_eq!(requests.len(), FDS);
    // Every fd reports twice before the owner looks.
    for request in requests.iter().chain(&requests) {
        core.fd_ready(token_of(request), EventKind::Read);
    }
    assert_eq!(core.stats().events_coalesced, FDS as u64);
    let mut out = Vec::new();
    // Taken in batches of 16; a dropped event would never come.
    for _ in 0..FDS {
        core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
        if core.pending_len() == 0 {
            break;
        }
    }
    let mut ids: Vec<u64> = out.iter().map(|event| event.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..FDS as u64).collect::<Vec<_>>());
    assert!(out.iter().all(|event| event.kind == EventKind::Read));
}

#[test]
fn busy_looks_without_timers_leave_later_timers_on_time() {
    // Looks at an empty wheel read no clock and leave the wheel's time
    // behind: a timer inserted after a while of them must still fire at
    // its deadline, not before, and not later than the first look after.
    let (core, _host) = new_loop();
    core.set_served();
    let mut out = Vec::new();
    let busy_until = now_monotonic_ns() + 30_000_000;
    while now_monotonic_ns() < busy_until {
        core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
            .unwrap();
    }
    assert!(out.is_empty());
    let deadline = now_monotonic_ns() + 5_000_000;
    let (key, _) = core.insert_timer(deadline, 9).unwrap();
    loop {
        core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
            .unwrap();
        let now = now_monotonic_ns();
        if let Some(event) = out.first() {
            assert!(now >= deadline, "fired {} ns early", deadline - now);
            assert_eq!(event.key, key);
            assert_eq!(event.deadline, deadline);
            break;
        }
        assert!(now < deadline + 5_000_000_000, "never fired");
    }
}

/// Looks without a wait until one finds nothing (the later ones then
/// answer without the lock), then runs `news` on another thread and
/// returns what the next look finds.
fn look_after_quiet_looks(
    core: &Arc<LoopCore>,
    news: impl FnOnce(&LoopCore) + Send + 'static,
) -> (Result<Waited, WaitError>, Vec<Event>) {
    let mut out = Vec::new();
    for _ in 0..3 {
        core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
            .unwrap();
    }
    assert!(out.is_empty());
    let other = Arc::clone(core);
    thread::spawn(move || news(&other)).join().unwrap();
    let waited = core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16);
    (waited, out)
}

#[test]
fn a_look_after_quiet_looks_sees_a_wakeup_from_another_thread() {
    let (core, _host) = new_loop();
    core.set_served();
    let (waited, _) = look_after_quiet_looks(&core, |core| core.wakeup());
    assert!(waited.unwrap().woken);
}

#[test]
fn a_look_after_quiet_looks_sees_a_due_timer_inserted_by_another_thread() {
    let (core, _host) = new_loop();
    core.set_served();
    let (waited, out) = look_after_quiet_looks(&core, |core| {
        core.insert_timer(now_monotonic_ns(), 5).unwrap();
    });
    waited.unwrap();
    assert_eq!(out.iter().map(|event| event.id).collect::<Vec<_>>(), [5]);
}

#[test]
fn a_look_after_quiet_looks_sees_an_fd_event_from_another_thread() {
    let (core, _host) = new_loop();
    core.set_served();
    core.add_interest(4, EventKind::Read, 100).unwrap();
    let token = token_of(&core.take_select_requests()[0]);
    let (waited, out) = look_after_quiet_looks(&core, move |core| {
        core.fd_ready(token, EventKind::Read);
    });
    waited.unwrap();
    assert_eq!(out.iter().map(|event| event.id).collect::<Vec<_>>(), [100]);
}

#[test]
fn a_look_after_quiet_looks_sees_the_loop_closed_or_its_server_gone() {
    let (core, _host) = new_loop();
    core.set_served();
    let (waited, _) = look_after_quiet_looks(&core, |core| {
        core.close();
    });
    assert_eq!(waited, Err(WaitError::Closed));
    let (core, _host) = new_loop();
    core.set_served();
    let (waited, _) = look_after_quiet_looks(&core, |core| core.server_down());
    assert_eq!(waited, Err(WaitError::ServerDown));
}

#[test]
fn quiet_looks_fire_a_pending_timer_at_its_deadline() {
    // Looks that answer without the lock while a timer is pending must
    // still fire it once due: not before its deadline, and not never.
    let (core, _host) = new_loop();
    core.set_served();
    let deadline = now_monotonic_ns() + 20_000_000;
    let (key, _) = core.insert_timer(deadline, 3).unwrap();
    let give_up = now_monotonic_ns() + 5_000_000_000;
    let mut out = Vec::new();
    loop {
        core.prepare_and_wait(Some(Duration::ZERO), &mut out, 16)
            .unwrap();
        let now = now_monotonic_ns();
        if let Some(event) = out.first() {
            assert!(now >= deadline, "fired {} ns early", deadline - now);
            assert_eq!(event.key, key);
            break;
        }
        assert!(now < give_up, "never fired");
    }
}

/// What the other thread of `quiet_looks_under_news_from_another_thread`
/// did last: its number (0: nothing yet), kind and timer deadline, and
/// when it was done (after the call returned).
#[derive(Default)]
struct News {
    done: std::sync::atomic::AtomicU64,
    kind: std::sync::atomic::AtomicU64,
    deadline: std::sync::atomic::AtomicU64,
    done_at: std::sync::atomic::AtomicU64,
    /// The last news the loop's thread saw; the other thread waits for it
    /// before making the next.
    seen: std::sync::atomic::AtomicU64,
}

const WOKEN: u64 = 0;
const FD: u64 = 1;
const DUE_TIMER: u64 = 2;
const LATER_TIMER: u64 = 3;

/// Busy looks (most answered without the lock) and an occasional wait on
/// one thread, wake-ups, fd events and timers (due or a few hundred µs
/// away, a far timer pending or not) from another at random moments:
/// each piece of news is seen by the first look that starts after it
/// was made (a timer: after it was made and due), never before it is
/// due, and a wait never sleeps through it. `QUIET_STRESS_NEWS` sets how
/// many (a few thousand by default).
#[test]
fn quiet_looks_under_news_from_another_thread() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let count: u64 = std::env::var("QUIET_STRESS_NEWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000);
    let (core, _host) = new_loop();
    core.set_served();
    core.add_interest(4, EventKind::Read, 100).unwrap();
    let token = token_of(&core.take_select_requests()[0]);
    let news = Arc::new(News::default());
    let maker = {
        let core = Arc::clone(&core);
        let news = Arc::clone(&news);
        thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(7);
            let mut far = None;
            for n in 1..=count {
                while news.seen.load(Ordering::Acquire) < n - 1 {
                    thread::yield_now();
                }
                // A far timer pending makes quiet looks end at the wheel's
                // next deadline rather than never.
                if rng.random_ratio(1, 8) {
                    match far.take() {
                        Some(key) => {
                            core.cancel_timer(key);
                        }
                        None => {
                            far = Some(
                                core.insert_timer(now_monotonic_ns() + 3_600_000_000_000, u64::MAX)
                                    .unwrap()
                                    .0,
                            )
                        }
                    }
                }
                for _ in 0..rng.random_range(0..20_000) {
                    std::hint::spin_loop();
                }
                let kind = rng.random_range(0..4);
                news.kind.store(kind, Ordering::Relaxed);
                match kind {
                    WOKEN => core.wakeup(),
                    FD => core.fd_ready(token, EventKind::Read),
                    DUE_TIMER => {
                        let deadline = now_monotonic_ns();
                        news.deadline.store(deadline, Ordering::Relaxed);
                        core.insert_timer(deadline, n).unwrap();
                    }
                    _ => {
                        let deadline = now_monotonic_ns() + rng.random_range(0..300_000);
                        news.deadline.store(deadline, Ordering::Relaxed);
                        core.insert_timer(deadline, n).unwrap();
                    }
                }
                news.done_at.store(now_monotonic_ns(), Ordering::Relaxed);
                news.done.store(n, Ordering::Release);
            }
        })
    };
    let mut rng = SmallRng::seed_from_u64(11);
    let mut out = Vec::new();
    let (mut looks, mut unlocked) = (0u64, 0u64);
    let give_up = now_monotonic_ns() + 600_000_000_000;
    let mut seen = 0;
    while seen < count {
        let next = seen + 1;
        let done = news.done.load(Ordering::Acquire);
        let started = now_monotonic_ns();
        let wait = rng.random_ratio(1, 4096);
        // A wait that misses its news sleeps to this limit; one that
        // sees it ends at once. The bound below lies far from both, for a
        // loaded machine's stalls.
        let timeout = if wait {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        let locks = core.locks.load(Ordering::Relaxed);
        out.clear();
        let waited = core.prepare_and_wait(Some(timeout), &mut out, 16).unwrap();
        let ended = now_monotonic_ns();
        looks += 1;
        unlocked += u64::from(core.locks.load(Ordering::Relaxed) == locks);
        let (kind, deadline) = if done >= next || !out.is_empty() || waited.woken {
            (
                news.kind.load(Ordering::Relaxed),
                news.deadline.load(Ordering::Relaxed),
            )
        } else {
            (u64::MAX, 0)
        };
        let mut got = waited.woken;
        assert!(
            !waited.woken || kind == WOKEN,
            "news {next}: woken for {kind}"
        );
        for event in &out {
            match event.kind {
                EventKind::Timer => {
                    assert_eq!(event.id, next, "news {next}: timer {event:?}");
                    assert!(ended >= event.deadline, "news {next} early");
                    assert_eq!(event.deadline, deadline);
                }
                _ => assert_eq!((event.id, kind), (100, FD), "news {next}"),
            }
            got = true;
        }
        assert!(out.len() <= 1, "news {next}: {out:?}");
        let due = match kind {
            LATER_TIMER => started >= deadline,
            _ => true,
        };
        assert!(
            got || done < next || !due,
            "news {next} ({kind}) missed by a look started after it (done {done})"
        );
        if wait {
            // Woken well after the news was made (and due): it slept
            // through it, to its time limit.
            let done_now = news.done.load(Ordering::Acquire);
            let kind = news.kind.load(Ordering::Relaxed);
            let made = news.done_at.load(Ordering::Relaxed);
            let due_at = match kind {
                LATER_TIMER | DUE_TIMER => made.max(news.deadline.load(Ordering::Relaxed)),
                _ => made,
            };
            assert!(
                done_now < next || ended < due_at.max(started) + 5_000_000_000,
                "news {next} ({kind}) slept through, {} ns",
                ended - due_at.max(started)
            );
        }
        if got {
            seen = next;
            news.seen.store(seen, Ordering::Release);
        }
        assert!(ended < give_up, "stuck at news {next}");
    }
    maker.join().unwrap();
    eprintln!("{looks} looks, {unlocked} without the lock, {count} news");
    assert!(unlocked > 0, "the shortcut was never taken");
}

/// asyncio's `add_reader` of an fd already read replaces the callback. An
/// event queued for the old callback is not the new one's, but the fd's
/// readiness must still reach the new one: the fd is selected again.
#[test]
fn a_reader_replaced_while_its_event_is_queued_is_selected_again() {
    let (core, _) = new_loop();
    core.set_served();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    core.add_interest(fd, EventKind::Read, 1).unwrap();
    let token = token_of(&core.take_select_requests()[0]);
    core.fd_ready(token, EventKind::Read);
    core.add_interest(fd, EventKind::Read, 2).unwrap();
    let mut out = Vec::new();
    core.wait(Some(Duration::ZERO), &mut out, 16).unwrap();
    assert!(
        out.iter().all(|event| event.id != 1),
        "the old reader's event must not run: {out:?}"
    );
    if out.is_empty() {
        core.prepare_wait();
        assert_eq!(
            select_ops(&core),
            [SelectOp::Arm {
                read: true,
                write: false
            }],
            "the new reader is never told of the fd's readiness"
        );
    }
}

/// An fd closed without a remove and added again fails (EBADF). Whatever
/// that add did to the old registration, the serving process must still
/// be told of every select owed: a later fd's arm is signalled.
#[test]
fn an_add_of_a_closed_fd_leaves_later_selects_signalled() {
    let host = Arc::new(FakeHost {
        checks_fds: true,
        ..FakeHost::default()
    });
    let core = LoopCore::new(1_000_000, host.clone()).unwrap();
    core.set_served();
    let (a, _peer_a) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    core.add_interest(fd, EventKind::Read, 1).unwrap();
    host.apply_selects(&core);
    drop(a);
    let failed = core.add_interest(fd, EventKind::Read, 2);
    assert_eq!(failed.unwrap_err().raw_os_error(), Some(libc::EBADF));
    let (b, _peer_b) = UnixStream::pair().unwrap();
    let wake = core
        .add_interest(b.as_raw_fd(), EventKind::Read, 3)
        .unwrap();
    assert!(
        wake.apply_selects,
        "the arm of a new fd is never signalled: {wake:?}, owed {:?}",
        select_ops(&core)
    );
}
