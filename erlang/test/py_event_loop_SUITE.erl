%% Tests of the low-level event loop API (py_nif event_loop_*, call_later,
%% add_reader, poll_events, get_pending, ...) and of the Erlang processes that
%% serve loops (py_event_router / py_event_worker): timer order and accuracy,
%% cancel, wake-ups, fd readiness (coalesced, never dropped), isolation of
%% loops, destroy, bad arguments, fd leaks, dead workers, stats, idleness.
%%
%% Every wait has a generous deadline (LESSONS 30): a test waits for the event
%% it expects, and asserts the absence of an event only where a bug is the
%% only way to see one.
-module(py_event_loop_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0,
         init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([timers_in_deadline_order/1, timers_never_fire_early/1,
         timers_before_router/1,
         cancel_timer/1, poll_events_wakes/1, many_pollers_wait_in_erlang/1,
         poller_sees_news_from_other_processes/1, dead_router_changes_nothing/1,
         set_router_again_keeps_one_monitor/1, monitored_by_while_loops_come_and_go/1,
         foreign_refs_name_nothing/1, dropped_loops_leak_no_fds_without_a_placer/1,
         stray_messages_leave_the_worker_serving/1, dead_router_refusals_lose_no_wake_up/1,
         reader_and_writer/1, readiness_coalesced_not_dropped/1,
         two_loops_isolated/1, destroy_one_loop/1, destroy_frees_timers/1, bad_arguments/1,
         far_timers/1,
         no_leaked_fds/1, tight_add_remove_piles_up_no_fds/1, worker_dies/1, python_worker_dies/1,
         router_replaced_or_for_a_closed_loop/1, supervised_router_of_a_destroyed_loop/1,
         router_set_back_serves_again/1, selects_of_one_fd_from_many_processes/1,
         init/1, sibling/1, log/2,
         isolated_loop_worker_stops_on_close/1,
         unclosed_native_loops_release_fds_and_workers/1, get_event_loop_on_any_pool_thread/1,
         get_event_loop_after_a_timeout_pending_at_return/1,
         loop_stats/1, idle_loop_does_not_tick/1,
         dead_worker_leaks_no_fds/1, owner_gone_leaks_no_fds/1,
         fd_number_reused_without_remove/1, closed_fd_added_again_loses_no_selects/1,
         get_pending_rearms_fds/1,
         python_loop_refuses_low_level_timers/1, routed_signals_reach_python_loops/1,
         routes_from_before_a_restart_leave_the_new_ones_alone/1,
         a_placement_lost_with_the_placer_is_asked_again/1,
         a_default_loop_is_placed_when_it_first_needs_a_worker/1,
         a_loop_asking_while_the_placer_restarts_is_placed/1,
         the_placer_outlives_the_worker_supervisor/1,
         a_thread_s_loop_whose_worker_died_is_replaced/1,
         a_placement_asked_twice_is_taken_once/1,
         a_second_adopt_keeps_the_armed_timer/1,
         closed_python_loops_are_freed_at_once/1]).

-define(APP, erlang_python).

%% make_and_run(isolated): a Python loop made, run briefly and closed.
-define(MAKE_AND_RUN, <<"
import asyncio, erlang_loop
def make_and_run(isolated):
    loop = erlang_loop.ErlangEventLoop(isolated=isolated)
    try:
        return loop.run_until_complete(asyncio.sleep(0.01, 'ok'))
    finally:
        loop.close()
">>).
-define(LOCALHOST, {127, 0, 0, 1}).

-spec suite() -> [tuple()].
suite() ->
    [{timetrap, {seconds, 30}}].

-spec all() -> [atom()].
all() ->
    [timers_in_deadline_order, timers_never_fire_early, timers_before_router,
     cancel_timer, poll_events_wakes, many_pollers_wait_in_erlang,
     poller_sees_news_from_other_processes, dead_router_changes_nothing,
     set_router_again_keeps_one_monitor, monitored_by_while_loops_come_and_go,
     foreign_refs_name_nothing, dropped_loops_leak_no_fds_without_a_placer,
     stray_messages_leave_the_worker_serving, dead_router_refusals_lose_no_wake_up,
     reader_and_writer, readiness_coalesced_not_dropped,
     two_loops_isolated, destroy_one_loop, destroy_frees_timers, bad_arguments, far_timers,
     no_leaked_fds, tight_add_remove_piles_up_no_fds, worker_dies, python_worker_dies,
     router_replaced_or_for_a_closed_loop, supervised_router_of_a_destroyed_loop,
     router_set_back_serves_again, selects_of_one_fd_from_many_processes,
     isolated_loop_worker_stops_on_close, unclosed_native_loops_release_fds_and_workers,
     get_event_loop_on_any_pool_thread, get_event_loop_after_a_timeout_pending_at_return,
     loop_stats, idle_loop_does_not_tick,
     dead_worker_leaks_no_fds, owner_gone_leaks_no_fds,
     fd_number_reused_without_remove, closed_fd_added_again_loses_no_selects,
     get_pending_rearms_fds,
     python_loop_refuses_low_level_timers, routed_signals_reach_python_loops,
     routes_from_before_a_restart_leave_the_new_ones_alone,
     a_placement_lost_with_the_placer_is_asked_again,
     a_default_loop_is_placed_when_it_first_needs_a_worker,
     the_placer_outlives_the_worker_supervisor,
     a_thread_s_loop_whose_worker_died_is_replaced,
     a_placement_asked_twice_is_taken_once, a_second_adopt_keeps_the_armed_timer,
     closed_python_loops_are_freed_at_once,
     %% Last: it kills the placer (see its first line).
     a_loop_asking_while_the_placer_restarts_is_placed].

-spec init_per_suite(ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    Config.

-spec end_per_suite(ct_suite:ct_config()) -> ok.
end_per_suite(_Config) ->
    ok.

-spec init_per_testcase(atom(), ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_testcase(_Case, Config) ->
    erase(loops),
    Config.

%% Loops (and their routers) made by a case are destroyed and stopped here,
%% whether it passed or not.
-spec end_per_testcase(atom(), ct_suite:ct_config()) -> ok.
end_per_testcase(_Case, _Config) ->
    case get(loops) of
        undefined -> ok;
        Loops -> [catch stop_loop(Loop) || {Loop, _} <- maps:values(Loops)]
    end,
    erase(loops),
    ok.

%%--------------------------------------------------------------------
%% Timers

%% Three timers come out in deadline order, whatever their insertion order;
%% equal delays come out in insertion order (LESSONS 14).
-spec timers_in_deadline_order(ct_suite:ct_config()) -> term().
timers_in_deadline_order(_Config) ->
    Loop = new_loop(),
    {ok, _} = py_nif:call_later(Loop, 30, 30),
    {ok, _} = py_nif:call_later(Loop, 10, 10),
    {ok, _} = py_nif:call_later(Loop, 20, 20),
    ?assertEqual([{10, timer}, {20, timer}, {30, timer}], collect(Loop, 3, 5000)),
    %% Equal delays: FIFO.
    Ids = lists:seq(101, 110),
    [{ok, _} = py_nif:call_later(Loop, 25, Id) || Id <- Ids],
    ?assertEqual([{Id, timer} || Id <- Ids], collect(Loop, length(Ids), 5000)),
    %% A zero delay is due at once, and before a later one.
    {ok, _} = py_nif:call_later(Loop, 15, 2),
    {ok, _} = py_nif:call_later(Loop, 0, 1),
    ?assertEqual([{1, timer}, {2, timer}], collect(Loop, 2, 5000)),
    %% Many equal delays, more than one advance batch: still FIFO, none lost.
    Many = lists:seq(1, 10000),
    [{ok, _} = py_nif:call_later(Loop, 20, Id) || Id <- Many],
    ?assertEqual([{Id, timer} || Id <- Many], collect(Loop, length(Many), 10000)),
    ?assertEqual([], collect(Loop, 1, 100)),
    stop_loop(Loop).

%% A timer is never available before its delay has passed (LESSONS 8),
%% checked by polling without blocking from the moment it is scheduled.
-spec timers_never_fire_early(ct_suite:ct_config()) -> term().
timers_never_fire_early(_Config) ->
    Loop = new_loop(),
    {ok, _} = py_nif:call_later(Loop, 50, 50),
    ?assertEqual(0, py_nif:poll_events(Loop, 0)),
    ?assertEqual([], py_nif:get_pending(Loop)),
    ?assertEqual([{50, timer}], collect(Loop, 1, 5000)),
    Elapsed = [{Delay, first_event_after(Loop, Delay)} || Delay <- [1, 2, 3, 5, 10, 25, 50]],
    ct:log("delay ms -> first seen after us: ~p", [Elapsed]),
    %% Erlang monotonic time may be slewed by up to 1% against CLOCK_MONOTONIC.
    [?assert(Us >= Delay * 990, {fired_early, Delay, Us}) || {Delay, Us} <- Elapsed],
    %% Not early, but not absurdly late either.
    [?assert(Us < Delay * 1000 + 2000000, {late, Delay, Us}) || {Delay, Us} <- Elapsed],
    stop_loop(Loop).

%% Microseconds from just before `call_later(Delay)' to the first poll that
%% saw the event; polls without blocking so an early event would be seen.
first_event_after(Loop, Delay) ->
    T0 = erlang:monotonic_time(microsecond),
    {ok, _} = py_nif:call_later(Loop, Delay, Delay),
    Seen = spin_until_pending(Loop, T0 + 5000000),
    ?assertEqual([{Delay, timer}], py_nif:get_pending(Loop)),
    Seen - T0.

spin_until_pending(Loop, Deadline) ->
    N = py_nif:poll_events(Loop, 0),
    Now = erlang:monotonic_time(microsecond),
    if
        is_integer(N), N > 0 -> Now;
        Now > Deadline -> error(no_event);
        true -> spin_until_pending(Loop, Deadline)
    end.

%% Timers scheduled before a router serves the loop fire once one does; and a
%% loop without any router still fires its timers in poll_events.
-spec timers_before_router(ct_suite:ct_config()) -> term().
timers_before_router(_Config) ->
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, _} = py_nif:call_later(Loop, 20, 1),
    ?assertEqual([{1, timer}], collect(Loop, 1, 5000)),
    {ok, _} = py_nif:call_later(Loop, 10, 2),
    %% A reader added before the router: selected once the router comes.
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, FdRef} = py_nif:add_reader(Loop, Fd, 3),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
    {ok, Router} = py_event_router:start_link(Loop),
    remember(Loop, Router),
    Events = read_and_timer(Loop, S, now_ms() + 5000, []),
    ?assertEqual([{2, timer}, {3, read}], lists:sort(Events)),
    ?assertEqual(ok, py_nif:remove_reader(Loop, FdRef)),
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% Events until both `{2, timer}' and `{3, read}' came; each datagram is read
%% as soon as its event is seen (so it is not reported again).
read_and_timer(Loop, S, Deadline, Acc) ->
    Done = lists:member({2, timer}, Acc) andalso lists:member({3, read}, Acc),
    case Done orelse now_ms() > Deadline of
        true ->
            Acc;
        false ->
            New = collect(Loop, 1, 500),
            [{ok, _} = gen_udp:recv(S, 0, 1000) || {3, read} <- New],
            read_and_timer(Loop, S, Deadline, Acc ++ New)
    end.

%% Cancel before firing: never delivered. Cancel after fire, twice, of a
%% reused slot or of a garbage key: `{error, not_found}', nothing else moves.
-spec cancel_timer(ct_suite:ct_config()) -> term().
cancel_timer(_Config) ->
    Loop = new_loop(),
    {ok, T1} = py_nif:call_later(Loop, 30, 1),
    ?assertEqual(ok, py_nif:cancel_timer(Loop, T1)),
    {ok, T2} = py_nif:call_later(Loop, 60, 2),
    ?assertEqual([{2, timer}], collect(Loop, 1, 5000)),
    ?assertEqual([], collect(Loop, 1, 100)),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, T2)),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, T1)),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, T1)),
    %% Slots of fired and cancelled timers get reused: stale keys must not
    %% cancel the new timers.
    Keys = [element(2, {ok, _} = py_nif:call_later(Loop, 20, Id)) || Id <- [3, 4, 5]],
    ?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, T1)),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, T2)),
    [?assertNotEqual(K, T) || K <- Keys, T <- [T1, T2]],
    ?assertEqual([{3, timer}, {4, timer}, {5, timer}], collect(Loop, 3, 5000)),
    [?assertEqual({error, not_found}, py_nif:cancel_timer(Loop, Garbage))
     || Garbage <- [0, 1, 123456789, 1 bsl 32, (1 bsl 32) + 1, (1 bsl 64) - 1]],
    %% Cancel one of several timers: the others still fire.
    {ok, _} = py_nif:call_later(Loop, 20, 6),
    {ok, T7} = py_nif:call_later(Loop, 20, 7),
    {ok, _} = py_nif:call_later(Loop, 20, 8),
    ?assertEqual(ok, py_nif:cancel_timer(Loop, T7)),
    ?assertEqual([{6, timer}, {8, timer}], collect(Loop, 2, 5000)),
    ?assertEqual([], collect(Loop, 1, 100)),
    ?assertMatch(#{live_timers := 0, timers_cancelled := 2}, py_nif:loop_stats(Loop)),
    stop_loop(Loop).

%% poll_events waits in a receive, not on a scheduler: more processes than
%% the VM has dirty I/O schedulers poll loops at once, all of them waiting
%% (none queued behind another), and the one whose loop is woken returns
%% while the others wait on. No message is left in a poller's mailbox, and
%% no registration with the loop.
-spec many_pollers_wait_in_erlang(ct_suite:ct_config()) -> term().
many_pollers_wait_in_erlang(_Config) ->
    Count = erlang:system_info(dirty_io_schedulers) + 20,
    Loops = [begin {ok, L} = py_nif:event_loop_new(), L end || _ <- lists:seq(1, Count)],
    Self = self(),
    Pollers = [{I, spawn_link(fun() ->
                                      Result = py_nif:poll_events(L, 60000),
                                      {messages, Left} = process_info(self(), messages),
                                      Self ! {polled, I, Result, Left}
                              end)}
               || {I, L} <- lists:zip(lists:seq(1, Count), Loops)],
    [wait_polling(P) || {_, P} <- Pollers],
    ok = py_nif:event_loop_wakeup(lists:last(Loops)),
    receive
        {polled, Woken, Polled, Mailbox} ->
            ?assertEqual({Count, 0, []}, {Woken, Polled, Mailbox})
    after 10000 -> ct:fail(woken_poller_did_not_return)
    end,
    %% The others still wait; each returns when its own loop is woken.
    receive {polled, _, _, _} = Early -> ct:fail({returned_unwoken, Early}) after 0 -> ok end,
    [ok = py_nif:event_loop_wakeup(L) || L <- lists:droplast(Loops)],
    Rest = [receive {polled, I, R, M} -> {R, M} after 10000 -> ct:fail({not_woken, I}) end
            || {I, _} <- lists:droplast(Pollers)],
    ?assertEqual(lists:duplicate(Count - 1, {0, []}), Rest),
    [?assertMatch(#{watchers := 0}, py_nif:loop_stats(L)) || L <- Loops],
    %% Pollers killed while they wait stay registered until the loop's
    %% next news; past 64 on one loop, the next poll drops the dead ones.
    Loop = hd(Loops),
    Killed = [spawn(fun() -> py_nif:poll_events(Loop, 60000) end) || _ <- lists:seq(1, 70)],
    ?assert(wait_until(fun() -> maps:get(watchers, py_nif:loop_stats(Loop)) end,
                       fun(Watching) -> Watching =:= 70 end, 10000) =:= 70),
    Monitors = [monitor(process, P) || P <- Killed],
    [exit(P, kill) || P <- Killed],
    [receive {'DOWN', M, process, _, killed} -> ok end || M <- Monitors],
    ?assertMatch(#{watchers := 70}, py_nif:loop_stats(Loop)),
    ?assertEqual(0, py_nif:poll_events(Loop, 0)),
    ?assertMatch(#{watchers := 0}, py_nif:loop_stats(Loop)),
    [ok = py_nif:event_loop_destroy(L) || L <- Loops].

%% A loop no router serves: its poller waits for the wheel's next deadline
%% itself, and a timer another process inserts meanwhile ends the wait; so
%% does a router that turns out dead (`server_down').
-spec poller_sees_news_from_other_processes(ct_suite:ct_config()) -> term().
poller_sees_news_from_other_processes(_Config) ->
    {ok, Loop} = py_nif:event_loop_new(),
    Self = self(),
    Poll = fun() ->
                   Poller = spawn_link(fun() -> Self ! {polled, py_nif:poll_events(Loop, 60000)} end),
                   wait_polling(Poller)
           end,
    Poll(),
    {ok, _} = py_nif:call_later(Loop, 20, 5),
    receive {polled, N} -> ?assertEqual(1, N)
    after 10000 -> ct:fail(timer_not_seen)
    end,
    ?assertEqual([{5, timer}], py_nif:get_pending(Loop)),
    Poll(),
    Router = spawn(fun() -> receive stop -> ok end end),
    ok = py_nif:event_loop_set_router(Loop, Router),
    RouterMon = monitor(process, Router),
    Router ! stop,
    receive {'DOWN', RouterMon, process, Router, _} -> ok end,
    receive {polled, Down} -> ?assertEqual({error, server_down}, Down)
    after 10000 -> ct:fail(server_down_not_seen)
    end,
    ok = py_nif:event_loop_destroy(Loop).

%% A loop monitors the router it was given, and only that one: setting a
%% router again (the same, or another and back) left a monitor behind per
%% call, for as long as the loop lived (148 bytes each, without bound). The
%% last router set still serves: its death is seen.
-spec set_router_again_keeps_one_monitor(ct_suite:ct_config()) -> term().
set_router_again_keeps_one_monitor(_Config) ->
    Loop = new_loop(),
    Router = spawn(fun() -> receive stop -> ok end end),
    Other = spawn(fun() -> receive stop -> ok end end),
    Monitors = fun(Pid) -> length(element(2, process_info(Pid, monitored_by))) end,
    [ok = py_nif:event_loop_set_router(Loop, Router) || _ <- lists:seq(1, 1000)],
    ?assertEqual(1, Monitors(Router)),
    [ok = py_nif:event_loop_set_router(Loop, Pid) || _ <- lists:seq(1, 500), Pid <- [Other, Router]],
    %% A serving process is watched by one monitor for its life, however
    %% many loops it is given (see monitored_by_while_loops_come_and_go).
    ?assertEqual({1, 1}, {Monitors(Router), Monitors(Other)}),
    Loops = [new_loop() || _ <- lists:seq(1, 100)],
    [ok = py_nif:event_loop_set_router(L, Router) || L <- Loops],
    [ok = py_nif:event_loop_destroy(L) || L <- Loops],
    ?assertEqual(1, Monitors(Router)),
    ?assertEqual({error, served}, py_nif:event_loop_adopt(Loop, Other)),
    ?assertEqual(1, Monitors(Other)),
    RouterMon = monitor(process, Router),
    Router ! stop,
    receive {'DOWN', RouterMon, process, Router, _} -> ok end,
    ?assertEqual({error, server_down}, py_nif:poll_events(Loop, 10000)),
    Other ! stop,
    ok = py_nif:event_loop_destroy(Loop).

%% Observer and recon read `process_info(Router, monitored_by)': with a
%% monitor per loop, a loop freed while its monitor was still listed made
%% that read crash the VM (erts 13), within a second of this churn.
-spec monitored_by_while_loops_come_and_go(ct_suite:ct_config()) -> term().
monitored_by_while_loops_come_and_go(_Config) ->
    Router = spawn(fun() -> receive stop -> ok end end),
    Observer = spawn(fun Observe() ->
                             _ = process_info(Router, monitored_by),
                             Observe()
                     end),
    Churn = fun(Destroy) ->
                    {Pid, Mon} = spawn_monitor(
                                   fun() ->
                                           {ok, Loop} = py_nif:event_loop_new(),
                                           ok = py_nif:event_loop_set_router(Loop, Router),
                                           Destroy andalso py_nif:event_loop_destroy(Loop)
                                   end),
                    receive {'DOWN', Mon, process, Pid, normal} -> ok end
            end,
    [Churn(Destroy) || _ <- lists:seq(1, 5000), Destroy <- [true, false]],
    exit(Observer, kill),
    ?assertMatch({monitored_by, [_]}, process_info(Router, monitored_by)),
    Router ! stop.

%% A router that is dead already is refused ({error, noproc}) and changes
%% nothing: the loop's router serves on (its timers fire, its fds report);
%% a loop without one stays open to timers (not server_down).
-spec dead_router_changes_nothing(ct_suite:ct_config()) -> term().
dead_router_changes_nothing(_Config) ->
    Dead = dead_pid(),
    Loop = new_loop(),
    ?assertEqual({error, noproc}, py_nif:event_loop_set_router(Loop, Dead)),
    {ok, _} = py_nif:call_later(Loop, 10, 1),
    ?assertEqual([{1, timer}], collect(Loop, 1, 5000)),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, FdRef} = py_nif:add_reader(Loop, Fd, 2),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
    ?assertEqual([{2, read}], collect(Loop, 1, 5000)),
    ok = py_nif:remove_reader(Loop, FdRef),
    {ok, Unserved} = py_nif:event_loop_new(),
    ?assertEqual({error, noproc}, py_nif:event_loop_set_router(Unserved, Dead)),
    {ok, _} = py_nif:call_later(Unserved, 10, 3),
    ?assertEqual([{3, timer}], collect(Unserved, 1, 5000)),
    ok = py_nif:event_loop_destroy(Unserved),
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% Messages shaped like the NIF's but not from it (a bad signal list, a
%% delay out of range, a select message without an fd resource or with an
%% unknown readiness) are ignored: the worker serves on, unrestarted.
-spec stray_messages_leave_the_worker_serving(ct_suite:ct_config()) -> term().
stray_messages_leave_the_worker_serving(_Config) ->
    Loop = new_loop(),
    Router = router_of(Loop),
    Id = py_nif:loop_id(Loop),
    Strays = [{py_loop, Id, not_a_list}, {py_loop, Id, [selects | improper]},
              {py_loop, Id, [{arm, -1}]},
              {py_loop, Id, [{arm, 1 bsl 50}]}, {py_loop, Id, [bogus]},
              %% A live loop is not dropped for a `closed' the NIF did not send.
              {py_loop, Id, [closed]},
              {select, not_a_resource, Id, ready_input},
              {select, make_ref(), Id, ready_output}, {select, Loop, Id, sideways}],
    [Router ! Stray || Stray <- Strays],
    {ok, _} = py_nif:call_later(Loop, 10, 1),
    ?assertEqual([{1, timer}], collect(Loop, 1, 5000)),
    ?assert(is_process_alive(Router)),
    Default = whereis(py_event_default),
    [Default ! Stray || Stray <- Strays],
    %% Casts of what is not a LoopRef: refused in the caller, or ignored.
    ?assertError(badarg, py_event_worker:adopt(Default, not_a_loop)),
    [gen_server:cast(Default, {adopt, Junk}) || Junk <- [not_a_loop, make_ref(), Loop]],
    ?assertError(badarg, py_event_router:start_link(not_a_loop)),
    ?assertError(badarg, py_event_worker:start_link([Loop | not_a_loop])),
    %% The placer's messages, with what is not what the NIF sends.
    Placer = whereis(py_event_loops),
    [Placer ! Stray || Stray <- [{py_loop_new, not_a_loop, true}, {py_loop_new, Loop, maybe},
                                 {py_sleep_done, not_a_sleep}, {py_sleep, 1.5, x},
                                 {py_sleep, -1, x}, {py_sleep, infinity, x}]],
    ?assertEqual({ok, none}, py:eval(<<"__import__('asyncio').run(__import__('asyncio').sleep(0.01))">>)),
    ?assertEqual(Default, whereis(py_event_default)),
    ?assertEqual(Placer, whereis(py_event_loops)),
    ?assertNot(py_nif:loop_is_closed(Loop)),
    stop_loop(Loop),
    ?assert(py_nif:loop_is_closed(Loop)).

%% Refusing dead routers again and again while the loop's fds come and go
%% loses no wake-up of the live router: an fd added afterwards reports.
-spec dead_router_refusals_lose_no_wake_up(ct_suite:ct_config()) -> term().
dead_router_refusals_lose_no_wake_up(_Config) ->
    Dead = dead_pid(),
    Tx = sender(),
    lists:foreach(
      fun(Round) ->
              Loop = new_loop(),
              Router = router_of(Loop),
              {S, Fd, Port} = udp(),
              Self = self(),
              Refuser = spawn_link(fun() -> refuse(Loop, Dead, Self) end),
              receive {refusing, Refuser} -> ok end,
              churn(Loop, Fd, Router, now_ms() + 100),
              Refuser ! stop,
              receive {stopped, Refuser} -> ok end,
              {ok, _} = py_nif:add_reader(Loop, Fd, Round),
              ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
              ?assertEqual({Round, [{Round, read}]}, {Round, collect(Loop, 1, 5000)}),
              ok = gen_udp:close(S),
              stop_loop(Loop)
      end, lists:seq(1, 5)),
    ok = gen_udp:close(Tx).

refuse(Loop, Dead, Parent) ->
    Parent ! {refusing, self()},
    refuse_until_stopped(Loop, Dead, Parent).

refuse_until_stopped(Loop, Dead, Parent) ->
    receive stop -> Parent ! {stopped, self()}
    after 0 ->
        {error, noproc} = py_nif:event_loop_set_router(Loop, Dead),
        refuse_until_stopped(Loop, Dead, Parent)
    end.

%% Adds and removes a reader until `Until', the router's queue drained each
%% time.
churn(Loop, Fd, Router, Until) ->
    case now_ms() > Until of
        true -> ok;
        false ->
            {ok, Ref} = py_nif:add_reader(Loop, Fd, 0),
            ok = py_nif:remove_reader(Loop, Ref),
            _ = sys:get_state(Router),
            churn(Loop, Fd, Router, Until)
    end.

%% A timer key or an FdRef of one loop names nothing in another, even when
%% both loops made theirs in the same order.
-spec foreign_refs_name_nothing(ct_suite:ct_config()) -> term().
foreign_refs_name_nothing(_Config) ->
    {ok, A} = py_nif:event_loop_new(),
    {ok, B} = py_nif:event_loop_new(),
    {ok, KeyA} = py_nif:call_later(A, 3600000, 1),
    {ok, KeyB} = py_nif:call_later(B, 3600000, 1),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(B, KeyA)),
    ?assertEqual({error, not_found}, py_nif:cancel_timer(A, KeyB)),
    ?assertMatch(#{live_timers := 1}, py_nif:loop_stats(A)),
    ?assertMatch(#{live_timers := 1}, py_nif:loop_stats(B)),
    {S, Fd, _Port} = udp(),
    {ok, RefA} = py_nif:add_reader(A, Fd, 2),
    {ok, RefB} = py_nif:add_reader(B, Fd, 2),
    ?assertEqual({error, not_found}, py_nif:remove_reader(B, RefA)),
    ?assertEqual({error, not_found}, py_nif:remove_reader(A, RefB)),
    ?assertMatch(#{fds := 1}, py_nif:loop_stats(B)),
    ok = py_nif:cancel_timer(A, KeyA),
    ok = py_nif:cancel_timer(B, KeyB),
    ok = py_nif:remove_reader(A, RefA),
    ok = py_nif:remove_reader(B, RefB),
    ok = py_nif:event_loop_destroy(A),
    ok = py_nif:event_loop_destroy(B),
    ok = gen_udp:close(S).

%% poll_events returns as soon as an event is queued, returns 0 after its
%% timeout when nothing happens, and event_loop_wakeup ends it early.
-spec poll_events_wakes(ct_suite:ct_config()) -> term().
poll_events_wakes(_Config) ->
    Loop = new_loop(),
    {ok, _} = py_nif:call_later(Loop, 20, 1),
    {N, Early} = timed(fun() -> py_nif:poll_events(Loop, 5000) end),
    ?assertEqual(1, N),
    ?assert(Early < 2500, {returned_after_ms, Early}),
    ?assertEqual([{1, timer}], py_nif:get_pending(Loop)),
    %% Nothing happens: 0, after the timeout.
    {Zero, Waited} = timed(fun() -> py_nif:poll_events(Loop, 50) end),
    ?assertEqual(0, Zero),
    ?assert(Waited >= 49, {returned_after_ms, Waited}),
    ?assert(Waited < 3000, {returned_after_ms, Waited}),
    ?assertEqual(0, py_nif:poll_events(Loop, 0)),
    %% A wake-up from another process ends a long poll.
    _ = spawn_link(fun() -> timer:sleep(100), ok = py_nif:event_loop_wakeup(Loop) end),
    {Woken, WokenAfter} = timed(fun() -> py_nif:poll_events(Loop, 20000) end),
    ?assertEqual(0, Woken),
    ?assert(WokenAfter < 10000, {returned_after_ms, WokenAfter}),
    %% The wake-up was consumed: the next poll waits again.
    {Again, AgainAfter} = timed(fun() -> py_nif:poll_events(Loop, 50) end),
    ?assertEqual(0, Again),
    ?assert(AgainAfter >= 49, {returned_after_ms, AgainAfter}),
    ?assertEqual([], py_nif:get_pending(Loop)),
    stop_loop(Loop).

%%--------------------------------------------------------------------
%% File descriptors

%% add_reader on a UDP socket reports `{Id, read}' once data arrives;
%% remove_reader works once; a stale FdRef never removes a newer
%% registration; add_writer reports `{Id, write}'.
-spec reader_and_writer(ct_suite:ct_config()) -> term().
reader_and_writer(_Config) ->
    Loop = new_loop(),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, Ref1} = py_nif:add_reader(Loop, Fd, 11),
    %% Nothing to read yet.
    ?assertEqual([], collect(Loop, 1, 100)),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"a">>),
    ?assertEqual([{11, read}], collect(Loop, 1, 5000)),
    ?assertEqual(ok, py_nif:remove_reader(Loop, Ref1)),
    ?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref1)),
    %% Re-registered: "a" is still unread, so the new id is told at once.
    {ok, Ref2} = py_nif:add_reader(Loop, Fd, 12),
    ?assertNotEqual(Ref1, Ref2),
    ?assertEqual([{12, read}], collect(Loop, 1, 5000)),
    %% The stale FdRef names the same fd but not this registration.
    ?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref1)),
    ?assertEqual({error, not_found}, py_nif:remove_writer(Loop, Ref1)),
    %% A second add_reader on the fd replaces the callback id, same FdRef.
    ?assertEqual({ok, Ref2}, py_nif:add_reader(Loop, Fd, 14)),
    ?assertEqual([{14, read}], collect(Loop, 1, 5000)),
    ?assertEqual({ok, Ref2}, py_nif:add_reader(Loop, Fd, 12)),
    ?assertEqual([{12, read}], collect(Loop, 1, 5000)),
    %% Replaced while its event is queued: the old id's event is dropped,
    %% and the still-unread fd is told to the new id (its select was spent
    %% on the dropped event).
    ok = wait_pending(Loop, 1, 5000),
    ?assertEqual({ok, Ref2}, py_nif:add_reader(Loop, Fd, 15)),
    ?assertEqual([{15, read}], collect(Loop, 1, 5000)),
    ?assertEqual({ok, Ref2}, py_nif:add_reader(Loop, Fd, 12)),
    ?assertEqual([{12, read}], collect(Loop, 1, 5000)),
    {ok, {_, _, <<"a">>}} = gen_udp:recv(S, 0, 1000),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"b">>),
    ?assertEqual([{12, read}], collect(Loop, 1, 5000)),
    {ok, {_, _, <<"b">>}} = gen_udp:recv(S, 0, 1000),
    ?assertEqual(ok, py_nif:remove_reader(Loop, Ref2)),
    %% The fd number is reused by the OS for a new socket: the old FdRef
    %% still removes nothing.
    ok = gen_udp:close(S),
    {S2, Fd2, Port2} = udp(),
    ct:log("fd ~p reused: ~p", [Fd, Fd2 =:= Fd]),
    {ok, Ref3} = py_nif:add_reader(Loop, Fd2, 13),
    ?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref2)),
    ?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref1)),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port2, <<"c">>),
    ?assertEqual([{13, read}], collect(Loop, 1, 5000)),
    {ok, {_, _, <<"c">>}} = gen_udp:recv(S2, 0, 1000),
    %% A writer on the same fd shares its registration (LESSONS 16).
    {ok, Ref4} = py_nif:add_writer(Loop, Fd2, 21),
    ?assertEqual(Ref3, Ref4),
    ?assertEqual([{21, write}], collect(Loop, 1, 5000)),
    ?assertEqual(ok, py_nif:remove_writer(Loop, Ref4)),
    ?assertEqual({error, not_found}, py_nif:remove_writer(Loop, Ref4)),
    %% The reader is still there, and no write event follows the removal.
    ok = gen_udp:send(Tx, ?LOCALHOST, Port2, <<"d">>),
    ?assertEqual([{13, read}], collect(Loop, 1, 5000)),
    ?assertEqual(ok, py_nif:remove_reader(Loop, Ref3)),
    ?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref3)),
    ?assertEqual([], collect(Loop, 1, 100)),
    %% A writer alone.
    {ok, Ref5} = py_nif:add_writer(Loop, Fd2, 22),
    ?assertEqual([{22, write}], collect(Loop, 1, 5000)),
    ?assertEqual(ok, py_nif:remove_writer(Loop, Ref5)),
    ?assertMatch(#{fds := 0}, py_nif:loop_stats(Loop)),
    ok = gen_udp:close(S2),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% Readiness is coalesced while an event is queued (one event for two
%% datagrams), is level-triggered after the event is taken (unread data gives
%% a new event), and new data after draining gives a new event (LESSONS 20).
-spec readiness_coalesced_not_dropped(ct_suite:ct_config()) -> term().
readiness_coalesced_not_dropped(_Config) ->
    Loop = new_loop(),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, Ref} = py_nif:add_reader(Loop, Fd, 31),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"a">>),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"b">>),
    ok = wait_pending(Loop, 1, 5000),
    %% Give a duplicate every chance to show up.
    timer:sleep(50),
    ?assertEqual(1, py_nif:poll_events(Loop, 0)),
    ?assertEqual([{31, read}], py_nif:get_pending(Loop)),
    %% Taken but not read: the fd is still readable, the next poll re-arms
    %% and a new event comes.
    ?assertEqual([{31, read}], collect(Loop, 1, 5000)),
    {ok, {_, _, <<"a">>}} = gen_udp:recv(S, 0, 1000),
    {ok, {_, _, <<"b">>}} = gen_udp:recv(S, 0, 1000),
    %% The re-arm after that event may have seen the data still unread and
    %% queued one more (level-triggered, as a selector: a reader takes a
    %% stale readiness in stride); taking it re-arms nothing readable.
    Stale = length(collect(Loop, 1, 100)),
    ?assert(Stale =< 1, Stale),
    %% Nothing readable any more: no event.
    ?assertEqual([], collect(Loop, 1, 100)),
    %% New data: a new event.
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"c">>),
    ?assertEqual([{31, read}], collect(Loop, 1, 5000)),
    {ok, {_, _, <<"c">>}} = gen_udp:recv(S, 0, 1000),
    %% And again, many times: none is lost.
    lists:foreach(
      fun(I) ->
              ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<I>>),
              ?assertEqual([{31, read}], collect(Loop, 1, 5000)),
              {ok, {_, _, <<I>>}} = gen_udp:recv(S, 0, 1000)
      end, lists:seq(1, 50)),
    ?assertEqual(53 + Stale, maps:get(fd_events, py_nif:loop_stats(Loop))),
    ?assertEqual(ok, py_nif:remove_reader(Loop, Ref)),
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%%--------------------------------------------------------------------
%% Several loops

%% Two loops with their own routers, 100 timers each: each loop gets exactly
%% its own ids (LESSONS 11, 21). Then two loops on one worker, with the same
%% ids in both: still each gets its own.
-spec two_loops_isolated(ct_suite:ct_config()) -> term().
two_loops_isolated(_Config) ->
    L1 = new_loop(),
    L2 = new_loop(),
    Ids1 = lists:seq(1, 100),
    Ids2 = lists:seq(1001, 1100),
    lists:foreach(
      fun({I1, I2}) ->
              {ok, _} = py_nif:call_later(L1, rand:uniform(50), I1),
              {ok, _} = py_nif:call_later(L2, rand:uniform(50), I2)
      end, lists:zip(Ids1, Ids2)),
    check_own_timers(L1, Ids1),
    check_own_timers(L2, Ids2),
    %% One worker serving two loops, the same callback ids in both.
    {ok, L3} = py_nif:event_loop_new(),
    {ok, L4} = py_nif:event_loop_new(),
    {ok, Worker} = py_event_worker:start_link([L3, L4]),
    remember(L3, Worker),
    remember(L4, Worker),
    Ids = lists:seq(1, 50),
    [{ok, _} = py_nif:call_later(L, rand:uniform(30), I) || I <- Ids, L <- [L3, L4]],
    check_own_timers(L3, Ids),
    check_own_timers(L4, Ids),
    [stop_loop(L) || L <- [L1, L2, L3, L4]],
    ok.

check_own_timers(Loop, Ids) ->
    Events = collect(Loop, length(Ids), 10000),
    ?assertEqual(length(Ids), length(Events)),
    ?assertEqual(Ids, lists:sort([I || {I, timer} <- Events])),
    ?assertEqual([], collect(Loop, 1, 100)).

%% event_loop_destroy lets go of the loop's timers, pending and fired, and
%% of the wheel's memory at once: nothing can take them from a closed loop,
%% and its LoopRef may live on in a process that seldom collects.
-spec destroy_frees_timers(ct_suite:ct_config()) -> term().
destroy_frees_timers(_Config) ->
    Loop = new_loop(),
    [{ok, _} = py_nif:call_later(Loop, 3600000, I) || I <- lists:seq(1, 3000)],
    {ok, _} = py_nif:call_later(Loop, 0, 0),
    ?assertMatch(#{pending := 1},
                 wait_until(fun() -> py_nif:loop_stats(Loop) end,
                            fun(#{pending := Pending}) -> Pending =:= 1 end, 10000)),
    #{live_timers := 3000, timer_memory := Held} = py_nif:loop_stats(Loop),
    ?assert(Held > 64 * 1024, Held),
    ok = py_nif:event_loop_destroy(Loop),
    ?assertMatch(#{live_timers := 0, timer_memory := 0, pending := 0},
                 py_nif:loop_stats(Loop)).

%% After event_loop_destroy(L1): calls on L1 return `{error, closed}' (a
%% blocked poll too), L2 keeps working, and a second destroy is harmless.
-spec destroy_one_loop(ct_suite:ct_config()) -> term().
destroy_one_loop(_Config) ->
    L1 = new_loop(),
    L2 = new_loop(),
    {S, Fd, _Port} = udp(),
    {ok, FdRef} = py_nif:add_reader(L1, Fd, 1),
    {ok, T1} = py_nif:call_later(L1, 50, 1),
    {ok, _} = py_nif:call_later(L2, 50, 2),
    %% A poll blocked on L1 ends with {error, closed} when L1 is destroyed.
    Self = self(),
    Poller = spawn_link(fun() -> Self ! {polled, self(), py_nif:poll_events(L1, 20000)} end),
    wait_polling(Poller),
    ?assertEqual(ok, py_nif:event_loop_destroy(L1)),
    receive
        {polled, Poller, Polled} -> ?assertEqual({error, closed}, Polled)
    after 10000 ->
        error(blocked_poll_not_woken_by_destroy)
    end,
    ?assertEqual({error, closed}, py_nif:call_later(L1, 10, 3)),
    ?assertEqual({error, closed}, py_nif:add_reader(L1, Fd, 4)),
    ?assertEqual({error, closed}, py_nif:add_writer(L1, Fd, 4)),
    ?assertEqual({error, closed}, py_nif:remove_reader(L1, FdRef)),
    ?assertEqual({error, closed}, py_nif:poll_events(L1, 100)),
    ?assertEqual({error, closed}, py_nif:poll_events(L1, 0)),
    ?assertEqual({error, closed}, py_nif:get_pending(L1)),
    ?assertMatch({error, closed}, py_nif:event_loop_set_router(L1, self())),
    ?assertEqual({error, closed}, py_nif:cancel_timer(L1, T1)),
    ?assertEqual({error, closed}, py_nif:event_loop_wakeup(L1)),
    %% Its counters and id can still be read.
    ?assert(is_map(py_nif:loop_stats(L1))),
    ?assert(is_integer(py_nif:loop_id(L1))),
    ?assertEqual(ok, py_nif:event_loop_destroy(L1)),
    ?assertEqual(ok, py_nif:event_loop_destroy(L1)),
    %% L2 is untouched.
    ?assertEqual([{2, timer}], collect(L2, 1, 5000)),
    {ok, _} = py_nif:call_later(L2, 10, 5),
    ?assertEqual([{5, timer}], collect(L2, 1, 5000)),
    %% L1's router served only L1: it stops, normally, once L1 is destroyed
    %% (isolated loops must not leave idle workers behind).
    Router1 = router_of(L1),
    Mon = monitor(process, Router1),
    receive
        {'DOWN', Mon, process, Router1, Why} ->
            ?assert(Why =:= normal orelse Why =:= noproc, Why)
    after 5000 ->
        ct:fail({router_still_alive, Router1})
    end,
    ok = gen_udp:close(S),
    stop_loop(L1),
    stop_loop(L2).

%% Bad arguments raise badarg or return `{error, _}': no crash, and the VM,
%% the loop and its router keep working.
-spec bad_arguments(ct_suite:ct_config()) -> term().
bad_arguments(_Config) ->
    Loop = new_loop(),
    Router = router_of(Loop),
    {S, Fd, _Port} = udp(),
    NotResources = [not_a_loop, make_ref(), 1, <<"loop">>, self(), {Loop}],
    [?assertError(badarg, py_nif:call_later(Bad, 10, 1)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:poll_events(Bad, 10)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:get_pending(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:event_loop_destroy(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:event_loop_wakeup(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:loop_stats(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:add_reader(Bad, Fd, 1)) || Bad <- NotResources],
    %% Delays and callback ids: not a non-negative integer of 64 bits.
    [?assertError(badarg, py_nif:call_later(Loop, Delay, 1))
     || Delay <- [-1, -1000, 1.5, foo, 1 bsl 64, 1 bsl 100]],
    [?assertError(badarg, py_nif:call_later(Loop, 10, Id))
     || Id <- [foo, -1, 1.0, 1 bsl 64, "id", {1}]],
    [?assertError(badarg, py_nif:cancel_timer(Loop, Key))
     || Key <- [-1, foo, 1.0, 1 bsl 64, make_ref()]],
    [?assertError(badarg, py_nif:poll_events(Loop, Timeout))
     || Timeout <- [-1, foo, infinity, 1.0]],
    %% Fds: an int that is no open fd is the OS's answer; anything else badarg.
    ?assertEqual({error, ebadf}, py_nif:add_reader(Loop, -1, 1)),
    ?assertEqual({error, ebadf}, py_nif:add_writer(Loop, -1, 1)),
    ?assertEqual({error, ebadf}, py_nif:add_reader(Loop, 999999, 1)),
    ?assertEqual({error, ebadf}, py_nif:add_writer(Loop, 999999, 1)),
    [?assertError(badarg, py_nif:add_reader(Loop, BadFd, 1))
     || BadFd <- [foo, 1 bsl 40, 1.0, -(1 bsl 40)]],
    ?assertError(badarg, py_nif:add_reader(Loop, Fd, -5)),
    ?assertError(badarg, py_nif:add_reader(Loop, Fd, foo)),
    ?assertMatch(#{fds := 0}, py_nif:loop_stats(Loop)),
    %% FdRefs: not a {Fd, Token} of integers in range is badarg; one that
    %% names no registration is not_found.
    [?assertError(badarg, py_nif:remove_reader(Loop, BadRef))
     || BadRef <- [foo, 1, {1}, {a, b}, {1, 2, 3}, make_ref(), {Fd, -1}, {1 bsl 40, 1}]],
    [?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref))
     || Ref <- [{-1, 0}, {Fd, 999}, {999999, 1}]],
    [?assertError(badarg, py_nif:remove_writer(Loop, BadRef)) || BadRef <- [foo, {a, b}]],
    [?assertEqual({error, not_found}, py_nif:remove_writer(Loop, Ref))
     || Ref <- [{Fd, 999}, {999999, 1}]],
    [?assertEqual({error, not_found}, py_nif:remove_reader(Loop, Ref))
     || Ref <- [{Fd, 1}, {0, 1}, {999999, 1}]],
    %% The worker's entry points with a non-resource or a wrong resource.
    {ok, Other} = py_nif:event_loop_new(),
    [?assertError(badarg, py_nif:loop_fd_ready(Loop, NotFd, read))
     || NotFd <- [make_ref(), foo, 1, {Fd, 1}, Loop, Other]],
    [?assertError(badarg, py_nif:loop_fd_ready(Bad, make_ref(), read)) || Bad <- NotResources],
    ?assertError(badarg, py_nif:loop_fd_ready(Loop, make_ref(), sideways)),
    [?assertError(badarg, py_nif:loop_tick(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:loop_apply_selects(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:loop_id(Bad)) || Bad <- NotResources],
    [?assertError(badarg, py_nif:loop_is_closed(Bad)) || Bad <- NotResources],
    ?assertError(badarg, py_nif:event_loop_set_router(Other, not_a_pid)),
    ?assertError(badarg, py_nif:event_loop_set_router(not_a_loop, self())),
    %% The placer is a pid or undefined: a typo must not unset it.
    Placer = whereis(py_event_loops),
    [?assertError(badarg, py_nif:set_loop_placer(Bad))
     || Bad <- [not_a_pid, {Placer}, [Placer], 1, make_ref(), <<"undefined">>]],
    ?assertMatch({ok, _}, py:eval(<<"__import__('asyncio').run(__import__('asyncio').sleep(0))">>)),
    %% A dead router is refused; a live one then serves the loop.
    Dead = dead_pid(),
    ?assertMatch({error, _}, py_nif:event_loop_set_router(Other, Dead)),
    {ok, OtherRouter} = py_event_router:start_link(Other),
    remember(Other, OtherRouter),
    {ok, _} = py_nif:call_later(Other, 10, 77),
    ?assertEqual([{77, timer}], collect(Other, 1, 5000)),
    %% The loop and its router still work.
    ?assert(is_process_alive(Router)),
    {ok, _} = py_nif:call_later(Loop, 10, 1),
    ?assertEqual([{1, timer}], collect(Loop, 1, 5000)),
    ok = gen_udp:close(S),
    stop_loop(Other),
    stop_loop(Loop).


%% Deadlines far away (centuries, and beyond what an Erlang timer can hold)
%% neither crash the router nor disturb near timers (LESSONS 13).
-spec far_timers(ct_suite:ct_config()) -> term().
far_timers(_Config) ->
    Year = 365 * 24 * 3600 * 1000,
    %% 17.7e12 and 18e12 ms are still below u64::MAX ns but beyond the
    %% longest erlang:start_timer/3 (about 2^44 ms).
    Delays = [Year, 100 * Year, 500 * Year, 600 * Year, 1 bsl 45, 1 bsl 50,
              17700000000000, 18000000000000, (1 bsl 64) - 1],
    %% Each far timer alone in its loop, so its deadline is the one armed.
    lists:foreach(
      fun(Delay) ->
              Loop = new_loop(),
              Router = router_of(Loop),
              unlink(Router),
              Mon = monitor(process, Router),
              R = py_nif:call_later(Loop, Delay, 1),
              ?assertMatch({ok, _}, R, {delay, Delay}),
              {ok, Key} = R,
              %% The router has handled the arm signal once it answers.
              ?assertMatch([_], catch gen_server:call(Router, loops, 5000), {delay, Delay}),
              ?assertEqual(0, py_nif:poll_events(Loop, 20), {delay, Delay}),
              {ok, _} = py_nif:call_later(Loop, 10, 2),
              ?assertEqual([{2, timer}], collect(Loop, 1, 5000), {delay, Delay}),
              ?assertEqual(ok, py_nif:cancel_timer(Loop, Key)),
              receive
                  {'DOWN', Mon, process, Router, Reason} ->
                      error({router_died, Delay, Reason})
              after 0 ->
                  demonitor(Mon, [flush])
              end,
              stop_loop(Loop)
      end, Delays),
    %% All of them together with a near timer.
    Loop = new_loop(),
    Keys = [element(2, {ok, _} = py_nif:call_later(Loop, Delay, 1000 + I))
            || {I, Delay} <- lists:enumerate(Delays)],
    {ok, _} = py_nif:call_later(Loop, 10, 1),
    ?assertEqual([{1, timer}], collect(Loop, 1, 5000)),
    [?assertEqual(ok, py_nif:cancel_timer(Loop, Key)) || Key <- Keys],
    ?assertMatch(#{live_timers := 0}, py_nif:loop_stats(Loop)),
    stop_loop(Loop).

%% Adding and removing readers on 50 sockets (some with events taken, some
%% closed by Erlang before the removal, some left to a loop destroy) leaves
%% no fd open once the asynchronous select stops are done (LESSONS 17, 30).
-spec no_leaked_fds(ct_suite:ct_config()) -> term().
no_leaked_fds(_Config) ->
    Tx = sender(),
    Baseline = fd_count(),
    L1 = new_loop(),
    L2 = new_loop(),
    %% 50 readers, data for every other one, all removed, sockets closed.
    Socks = [udp() || _ <- lists:seq(1, 50)],
    Refs = [begin
                {ok, Ref} = py_nif:add_reader(L1, Fd, I),
                Ref
            end || {I, {_, Fd, _}} <- lists:enumerate(Socks)],
    [ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>)
     || {I, {_, _, Port}} <- lists:enumerate(Socks), I rem 2 =:= 1],
    Events = collect_distinct(L1, 25, 10000),
    ?assertEqual([I || I <- lists:seq(1, 50), I rem 2 =:= 1],
                 [I || {I, read} <- Events]),
    %% Half the sockets closed by Erlang before their reader is removed.
    {First, Second} = lists:split(25, lists:zip(Socks, Refs)),
    [ok = gen_udp:close(S) || {{S, _, _}, _} <- First],
    [?assertEqual(ok, py_nif:remove_reader(L1, Ref)) || {_, Ref} <- First ++ Second],
    [ok = gen_udp:close(S) || {{S, _, _}, _} <- Second],
    %% Readers and writers left to event_loop_destroy.
    Socks2 = [udp() || _ <- lists:seq(1, 20)],
    [{ok, _} = py_nif:add_reader(L2, Fd, I) || {I, {_, Fd, _}} <- lists:enumerate(Socks2)],
    [{ok, _} = py_nif:add_writer(L2, Fd, 100 + I) || {I, {_, Fd, _}} <- lists:enumerate(Socks2)],
    [ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>) || {_, _, Port} <- Socks2],
    ?assertEqual(40, length(collect_distinct(L2, 40, 10000))),
    ok = py_nif:event_loop_destroy(L2),
    [ok = gen_udp:close(S) || {S, _, _} <- Socks2],
    %% Never selected: add and remove before the router can apply anything.
    Socks3 = [udp() || _ <- lists:seq(1, 10)],
    [begin
         {ok, Ref} = py_nif:add_reader(L1, Fd, 500),
         ok = py_nif:remove_reader(L1, Ref)
     end || {_, Fd, _} <- Socks3],
    [ok = gen_udp:close(S) || {S, _, _} <- Socks3],
    Final = wait_until(fun() -> fd_count() end, fun(Count) -> Count =< Baseline end, 5000),
    ct:log("fds: baseline ~p, after ~p", [Baseline, Final]),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}),
    ?assertMatch(#{fds := 0}, py_nif:loop_stats(L1)),
    ok = gen_udp:close(Tx),
    stop_loop(L1),
    stop_loop(L2).

fd_count() ->
    {ok, Names} = file:list_dir("/proc/self/fd"),
    length(Names).

%% A caller adding and removing a reader 100k times in a row, faster than
%% the router applies selects: each registration removed before its select
%% was made closes its duplicate fd at once, so the open fds stay few (they
%% grew by one per pair until the router caught up: EMFILE at 50k pairs
%% with 20k fds allowed). The fds are counted by another process meanwhile:
%% a count by the caller would let the router catch up.
-spec tight_add_remove_piles_up_no_fds(ct_suite:ct_config()) -> term().
tight_add_remove_piles_up_no_fds(_Config) ->
    Baseline = fd_count(),
    Loop = new_loop(),
    {Sock, Fd, _} = udp(),
    Self = self(),
    Counter = spawn_link(fun() -> count_fds(Self, Baseline) end),
    [begin
         {ok, Ref} = py_nif:add_reader(Loop, Fd, N),
         ok = py_nif:remove_reader(Loop, Ref)
     end || N <- lists:seq(1, 100000)],
    Counter ! stop,
    Most = receive {most_fds, Counter, M} -> M end,
    ct:log("fds: baseline ~p, most while adding and removing ~p", [Baseline, Most]),
    ?assert(Most < Baseline + 1000, {fds_piled_up, Most - Baseline}),
    ?assertMatch(#{fds := 0, fds_closed_unselected := N} when N > 0, py_nif:loop_stats(Loop)),
    ok = gen_udp:close(Sock),
    Final = wait_until(fun() -> fd_count() end, fun(Count) -> Count =< Baseline end, 5000),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}),
    stop_loop(Loop).

count_fds(Parent, Most) ->
    receive
        stop -> Parent ! {most_fds, self(), max(Most, fd_count())}
    after 0 -> count_fds(Parent, max(Most, fd_count()))
    end.

%%--------------------------------------------------------------------
%% Dead workers

%% A router for a loop destroyed already is `ignore' (it lived on, serving
%% nothing); a router replaced by another lets go of the loop and, serving
%% nothing else, stops (it held the loop, and its fds, for good), unless it
%% was set back before it read that it was replaced.
-spec router_replaced_or_for_a_closed_loop(ct_suite:ct_config()) -> term().
router_replaced_or_for_a_closed_loop(_Config) ->
    {ok, Closed} = py_nif:event_loop_new(),
    ok = py_nif:event_loop_destroy(Closed),
    ?assertEqual(ignore, py_event_router:start_link(Closed)),
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, First} = py_event_router:start_link(Loop),
    unlink(First),
    Monitor = monitor(process, First),
    {ok, _} = py_nif:call_later(Loop, 3600000, 1),
    {ok, Second} = py_event_router:start_link(Loop),
    unlink(Second),
    receive {'DOWN', Monitor, process, First, Reason} -> ?assertEqual(normal, Reason)
    after 10000 -> ct:fail(replaced_router_still_running)
    end,
    ?assertEqual([py_nif:loop_id(Loop)], gen_server:call(Second, loops)),
    {ok, _} = py_nif:call_later(Loop, 10, 2),
    ?assertEqual([{2, timer}], collect(Loop, 1, 5000)),
    %% Replaced, then set back before it reads so: it keeps the loop.
    true = erlang:suspend_process(Second),
    {ok, Third} = py_event_router:start_link(Loop),
    unlink(Third),
    ThirdMonitor = monitor(process, Third),
    ok = py_nif:event_loop_set_router(Loop, Second),
    true = erlang:resume_process(Second),
    receive {'DOWN', ThirdMonitor, process, Third, normal} -> ok
    after 10000 -> ct:fail(replaced_router_still_running)
    end,
    ?assertEqual([py_nif:loop_id(Loop)], gen_server:call(Second, loops)),
    ?assertEqual(Second, py_nif:loop_router(Loop)),
    {ok, _} = py_nif:call_later(Loop, 10, 3),
    ?assertEqual([{3, timer}], collect(Loop, 1, 5000)),
    remember(Loop, Second),
    stop_loop(Loop).

%% A router that let go of a loop (given to another) and keeps serving
%% others takes the loop up again when it is set back to it.
-spec router_set_back_serves_again(ct_suite:ct_config()) -> term().
router_set_back_serves_again(_Config) ->
    {ok, A} = py_nif:event_loop_new(),
    {ok, B} = py_nif:event_loop_new(),
    {ok, First} = py_event_worker:start_link([A, B]),
    unlink(First),
    {ok, Second} = py_event_router:start_link(A),
    unlink(Second),
    SecondMonitor = monitor(process, Second),
    OnlyB = [py_nif:loop_id(B)],
    ?assertEqual(OnlyB, wait_until(fun() -> gen_server:call(First, loops) end,
                                   fun(Loops) -> Loops =:= OnlyB end, 10000)),
    ok = py_nif:event_loop_set_router(A, First),
    receive {'DOWN', SecondMonitor, process, Second, normal} -> ok
    after 10000 -> ct:fail(replaced_router_still_running)
    end,
    ?assertEqual(lists:sort([py_nif:loop_id(A) | OnlyB]),
                 lists:sort(gen_server:call(First, loops))),
    {ok, _} = py_nif:call_later(A, 10, 1),
    ?assertEqual([{1, timer}], collect(A, 1, 5000)),
    {ok, _} = py_nif:call_later(B, 10, 2),
    ?assertEqual([{2, timer}], collect(B, 1, 5000)),
    remember(A, First),
    remember(B, First),
    stop_loop(A),
    stop_loop(B).

%% The router's entry points called by many processes at once (each its
%% own router, or none) on one fd: each arm's `enif_select' is made before a
%% stop closes the duplicate, so ERTS never sees a closed or reused fd (it
%% complained of fds "stolen" and "bad input fd" in erts_poll).
-spec selects_of_one_fd_from_many_processes(ct_suite:ct_config()) -> term().
selects_of_one_fd_from_many_processes(_Config) ->
    ok = logger:add_handler(py_select_complaints, ?MODULE, #{config => #{pid => self()}}),
    {S, Fd, _Port} = udp(),
    {ok, Loop} = py_nif:event_loop_new(),
    Self = self(),
    Churn = fun(SetRouter, Rounds) ->
                    fun() ->
                            [begin
                                 {ok, Ref} = py_nif:add_reader(Loop, Fd, 1),
                                 _ = SetRouter andalso py_nif:event_loop_set_router(Loop, self()),
                                 ok = py_nif:loop_apply_selects(Loop),
                                 %% Another's add or remove of the fd
                                 %% may have taken this registration.
                                 _ = py_nif:remove_reader(Loop, Ref),
                                 ok = py_nif:loop_apply_selects(Loop)
                             end || _ <- lists:seq(1, Rounds)],
                            Self ! {churned, self()}
                    end
            end,
    try
        Churners = [spawn_link(Churn(false, 5000)) || _ <- lists:seq(1, 3)]
            ++ [spawn_link(Churn(true, 1000)) || _ <- lists:seq(1, 4)],
        [receive {churned, Pid} -> ok end || Pid <- Churners],
        receive {erts_complaint, Text} -> ct:fail({erts_complaint, Text})
        after 500 -> ok
        end
    after
        ok = logger:remove_handler(py_select_complaints),
        ok = py_nif:event_loop_destroy(Loop),
        ok = gen_udp:close(S)
    end.

%% Logger handler of `selects_of_one_fd_from_many_processes': ERTS's
%% complaints about selects go to the test process.
-spec log(logger:log_event(), logger:handler_config()) -> ok.
log(#{msg := Msg}, #{config := #{pid := Pid}}) ->
    Text = case Msg of
               {string, String} -> unicode:characters_to_list(String);
               {report, Report} -> io_lib:format("~p", [Report]);
               {Format, Args} -> io_lib:format(Format, Args)
           end,
    case re:run(Text, "stealing control|Bad input fd") of
        nomatch -> ok;
        _ -> Pid ! {erts_complaint, lists:flatten(Text)}, ok
    end.

%% A router under a supervisor (restart `permanent', the default) whose loop
%% is destroyed: restarted, it is `ignore', which the supervisor takes; the
%% supervisor and its other children live on (an error there used it up).
-spec supervised_router_of_a_destroyed_loop(ct_suite:ct_config()) -> term().
supervised_router_of_a_destroyed_loop(_Config) ->
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, Sup} = supervisor:start_link(?MODULE, {routers, Loop}),
    unlink(Sup),
    [{sibling, Sibling, _, _}] = [C || {sibling, _, _, _} = C <- supervisor:which_children(Sup)],
    [{router, Router, _, _}] = [C || {router, _, _, _} = C <- supervisor:which_children(Sup)],
    Monitor = monitor(process, Router),
    ok = py_nif:event_loop_destroy(Loop),
    receive {'DOWN', Monitor, process, Router, normal} -> ok
    after 10000 -> ct:fail(router_still_running)
    end,
    ?assert(wait_until(fun() ->
                               lists:keyfind(router, 1, supervisor:which_children(Sup)) =:=
                                   {router, undefined, worker, [py_event_worker]}
                       end, fun(Done) -> Done end, 10000)),
    ?assert(is_process_alive(Sup)),
    ?assert(is_process_alive(Sibling)),
    exit(Sup, shutdown).

%% The supervisor of `supervised_router_of_a_destroyed_loop'.
-spec init({routers, py_nif:loop_ref()}) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({routers, Loop}) ->
    {ok, {#{strategy => one_for_one, intensity => 3, period => 10},
          [#{id => sibling, start => {proc_lib, start_link, [?MODULE, sibling, [self()]]}},
           #{id => router, start => {py_event_router, start_link, [Loop]},
             modules => [py_event_worker]}]}}.

%% A child that only lives.
-spec sibling(pid()) -> no_return().
sibling(_Parent) ->
    proc_lib:init_ack({ok, self()}),
    receive after infinity -> ok end.

%% The router of a loop dies: a poll fails with an error instead of hanging;
%% a new router can serve the loop again; a new loop works.
-spec worker_dies(ct_suite:ct_config()) -> term().
worker_dies(_Config) ->
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, Router} = py_event_router:start_link(Loop),
    unlink(Router),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, FdRef} = py_nif:add_reader(Loop, Fd, 9),
    %% The router has made the select once it answers.
    [_] = gen_server:call(Router, loops),
    {ok, _} = py_nif:call_later(Loop, 10000, 1),
    Mon = monitor(process, Router),
    exit(Router, kill),
    receive {'DOWN', Mon, process, Router, _} -> ok end,
    {Polled, After} = timed(fun() -> py_nif:poll_events(Loop, 3000) end),
    ct:log("poll after the router died: ~p after ~p ms", [Polled, After]),
    ?assertMatch({error, _}, Polled),
    ?assertEqual({error, server_down}, Polled),
    ?assertMatch({error, _}, py_nif:call_later(Loop, 10, 2)),
    %% A blocked poll is woken when the router dies.
    {ok, Loop2} = py_nif:event_loop_new(),
    {ok, Router2} = py_event_router:start_link(Loop2),
    unlink(Router2),
    {ok, _} = py_nif:call_later(Loop2, 10000, 1),
    Self = self(),
    Poller = spawn_link(fun() -> Self ! {polled, self(), py_nif:poll_events(Loop2, 20000)} end),
    wait_polling(Poller),
    exit(Router2, kill),
    receive
        {polled, Poller, Polled2} -> ?assertEqual({error, server_down}, Polled2)
    after 10000 ->
        error(blocked_poll_not_woken_by_router_death)
    end,
    %% A new router serves the old loop again: timers, and the fd the dead
    %% router had selected (its select died with it).
    {ok, Router3} = py_event_router:start_link(Loop),
    remember(Loop, Router3),
    {ok, _} = py_nif:call_later(Loop, 10, 3),
    ?assertEqual([{3, timer}], collect(Loop, 1, 5000)),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
    ?assertEqual([{9, read}], collect(Loop, 1, 5000)),
    ?assertEqual(ok, py_nif:remove_reader(Loop, FdRef)),
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    %% A new loop with a new router works.
    Fresh = new_loop(),
    {ok, _} = py_nif:call_later(Fresh, 10, 4),
    ?assertEqual([{4, timer}], collect(Fresh, 1, 5000)),
    ok = py_nif:event_loop_destroy(Loop2),
    stop_loop(Loop),
    stop_loop(Fresh).

%% The fds a worker selected must leave the poll set and close even when it
%% dies: event_loop_destroy (or the loop's DOWN callback) makes the stops the
%% dead worker owed.
-spec dead_worker_leaks_no_fds(ct_suite:ct_config()) -> term().
dead_worker_leaks_no_fds(_Config) ->
    Tx = sender(),
    Baseline = fd_count(),
    {Pid, Mon} = spawn_monitor(
                   fun() ->
                           {ok, Loop} = py_nif:event_loop_new(),
                           {ok, Router} = py_event_router:start_link(Loop),
                           unlink(Router),
                           Socks = [udp() || _ <- lists:seq(1, 10)],
                           [{ok, _} = py_nif:add_reader(Loop, Fd, I)
                            || {I, {_, Fd, _}} <- lists:enumerate(Socks)],
                           [ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>)
                            || {_, _, Port} <- Socks],
                           10 = length(collect_distinct(Loop, 10, 5000)),
                           RMon = monitor(process, Router),
                           exit(Router, kill),
                           receive {'DOWN', RMon, process, Router, _} -> ok end,
                           ok = py_nif:event_loop_destroy(Loop),
                           [ok = gen_udp:close(S) || {S, _, _} <- Socks]
                   end),
    receive {'DOWN', Mon, process, Pid, normal} -> ok end,
    Final = wait_until(fun() ->
                               [erlang:garbage_collect(P) || P <- processes()],
                               fd_count()
                       end, fun(Count) -> Count =< Baseline end, 5000),
    ok = gen_udp:close(Tx),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}).

%% A loop's owner ends without `event_loop_destroy', by a crash (its linked
%% router dies with it) or normally (its router, whose parent it is, stops
%% too): once the loop is unreferenced, its watched fds leave the poll set and
%% their duplicates close, so the sockets' ports are free again.
-spec owner_gone_leaks_no_fds(ct_suite:ct_config()) -> term().
owner_gone_leaks_no_fds(_Config) ->
    Baseline = fd_count(),
    Self = self(),
    Socks = [udp() || _ <- lists:seq(1, 6)],
    Owners = [begin
                  {Pid, Mon} = spawn_monitor(
                                 fun() ->
                                         {ok, Loop} = py_nif:event_loop_new(),
                                         {ok, Router} = py_event_router:start_link(Loop),
                                         {ok, _} = py_nif:add_reader(Loop, Fd, I),
                                         %% The router has made the select once it answers.
                                         [_] = gen_server:call(Router, loops),
                                         Self ! {router, self(), Router},
                                         case I rem 2 of
                                             0 -> error(owner_crashed);
                                             1 -> ok
                                         end
                                 end),
                  Router = receive {router, Pid, R} -> R end,
                  {Pid, Mon, Router}
              end || {I, {_, Fd, _}} <- lists:enumerate(Socks)],
    [receive {'DOWN', Mon, process, Pid, _} -> ok end || {Pid, Mon, _} <- Owners],
    %% Every router ends with its owner, whatever the owner's reason.
    [?assertEqual(false, wait_until(fun() -> is_process_alive(Router) end,
                                    fun(Alive) -> not Alive end, 5000))
     || {_, _, Router} <- Owners],
    Ports = [begin {ok, Port} = inet:port(S), ok = gen_udp:close(S), Port end
             || {S, _, _} <- Socks],
    Final = wait_until(fun() ->
                               [erlang:garbage_collect(P) || P <- processes()],
                               fd_count()
                       end, fun(Count) -> Count =< Baseline end, 5000),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}),
    %% The ports are free: no duplicate keeps the sockets bound.
    [begin
         {ok, Again} = gen_udp:open(Port, [{ip, ?LOCALHOST}]),
         ok = gen_udp:close(Again)
     end || Port <- Ports].

%% Without a loop placer (a node that uses the low-level API but does not
%% run the application), loops dropped without event_loop_destroy still
%% close their fds: those never selected at once, those a live router had
%% selected by the next event_loop_new.
-spec dropped_loops_leak_no_fds_without_a_placer(ct_suite:ct_config()) -> term().
dropped_loops_leak_no_fds_without_a_placer(_Config) ->
    Placer = whereis(py_event_loops),
    ok = py_nif:set_loop_placer(undefined),
    try
        Baseline = fd_count(),
        {S, Fd, _Port} = udp(),
        Self = self(),
        Unselected = [spawn_monitor(fun() ->
                                            {ok, Loop} = py_nif:event_loop_new(),
                                            {ok, _} = py_nif:add_reader(Loop, Fd, I)
                                    end) || I <- lists:seq(1, 50)],
        [receive {'DOWN', Mon, process, Pid, _} -> ok end || {Pid, Mon} <- Unselected],
        %% A process serving its own loop (selects applied) drops it, alive.
        Router = spawn_link(fun() ->
                                    {ok, Loop} = py_nif:event_loop_new(),
                                    ok = py_nif:event_loop_set_router(Loop, self()),
                                    {ok, _} = py_nif:add_reader(Loop, Fd, 1),
                                    ok = py_nif:loop_apply_selects(Loop),
                                    Self ! {selected, self()},
                                    receive stop -> ok end
                            end),
        receive {selected, Router} -> ok end,
        erlang:garbage_collect(Router),
        ok = gen_udp:close(S),
        Closed = fun() ->
                         [erlang:garbage_collect(P) || P <- processes()],
                         {ok, Next} = py_nif:event_loop_new(),
                         ok = py_nif:event_loop_destroy(Next),
                         fd_count()
                 end,
        Final = wait_until(Closed, fun(Count) -> Count =< Baseline end, 5000),
        ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}),
        unlink(Router),
        Router ! stop
    after
        ok = py_nif:set_loop_placer(Placer),
        %% Stops left queued by a failure part-way: made now.
        ok = py_nif:apply_orphan_stops()
    end.

%% get_pending alone (no poll_events) keeps an fd's events coming: the fds
%% whose events it drained are armed again, and a still-ready socket (its
%% datagram unread) reports again.
-spec get_pending_rearms_fds(ct_suite:ct_config()) -> term().
get_pending_rearms_fds(_Config) ->
    Loop = new_loop(),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, FdRef} = py_nif:add_reader(Loop, Fd, 7),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
    Drain = fun() -> py_nif:get_pending(Loop) end,
    ?assertEqual([{7, read}], wait_until(Drain, fun(Events) -> Events =/= [] end, 5000)),
    ?assertEqual([{7, read}], wait_until(Drain, fun(Events) -> Events =/= [] end, 5000)),
    ok = py_nif:remove_reader(Loop, FdRef),
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% A watched socket closed without remove_reader, its fd number taken at once
%% by a new socket: add_reader on that number watches the new socket (the
%% old registration, holding a duplicate of the closed one, is stopped).
-spec fd_number_reused_without_remove(ct_suite:ct_config()) -> term().
fd_number_reused_without_remove(_Config) ->
    Loop = new_loop(),
    Tx = sender(),
    {S1, Fd, _} = udp(),
    {ok, _} = py_nif:add_reader(Loop, Fd, 1),
    [_] = gen_server:call(router_of(Loop), loops),
    ok = gen_udp:close(S1),
    {{S2, Fd, Port2}, Others} = udp_with_fd(Fd, 20, []),
    [ok = gen_udp:close(S) || {S, _, _} <- Others],
    {ok, _} = py_nif:add_reader(Loop, Fd, 2),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port2, <<"x">>),
    ?assertEqual([{2, read}], collect(Loop, 1, 5000)),
    ?assertMatch(#{fds := 1}, py_nif:loop_stats(Loop)),
    ok = gen_udp:close(S2),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% An fd closed without a remove and added again is `{error, ebadf}', and
%% the loop's later selects are still made: another fd's reader is told,
%% and the old registration's FdRef still removes it.
-spec closed_fd_added_again_loses_no_selects(ct_suite:ct_config()) -> term().
closed_fd_added_again_loses_no_selects(_Config) ->
    Loop = new_loop(),
    Tx = sender(),
    {S1, Fd1, _} = udp(),
    {ok, Ref1} = py_nif:add_reader(Loop, Fd1, 1),
    [_] = gen_server:call(router_of(Loop), loops),
    ok = gen_udp:close(S1),
    %% (Unless another process took the number at once: then it names
    %% that socket now, and the add makes it a new registration.)
    Again = py_nif:add_reader(Loop, Fd1, 2),
    ct:log("add of the closed fd ~p: ~p", [Fd1, Again]),
    {S2, Fd2, Port2} = udp(),
    {ok, _} = py_nif:add_reader(Loop, Fd2, 3),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port2, <<"x">>),
    ?assertEqual([{3, read}], collect(Loop, 1, 5000)),
    case Again of
        {error, ebadf} when Fd2 =/= Fd1 ->
            ?assertEqual(ok, py_nif:remove_reader(Loop, Ref1));
        _ ->
            ok
    end,
    ok = gen_udp:close(S2),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% A new UDP socket whose fd number is `Fd' (the lowest free number, unless
%% another process took it first: then the next ones are tried), and the
%% sockets opened on the way.
udp_with_fd(Fd, 0, _Others) ->
    ct:fail({fd_number_not_reused, Fd});
udp_with_fd(Fd, Tries, Others) ->
    case udp() of
        {_, Fd, _} = Sock -> {Sock, Others};
        Other -> udp_with_fd(Fd, Tries - 1, [Other | Others])
    end.

%% A Python ErlangEventLoop(isolated=True) whose worker is killed raises a
%% clear RuntimeError in Python instead of hanging.
%% Each isolated Python loop gets a worker of its own; closing the loop ends
%% it, so a program that makes many short-lived isolated loops leaves no idle
%% workers behind.
-spec isolated_loop_worker_stops_on_close(ct_suite:ct_config()) -> term().
isolated_loop_worker_stops_on_close(_Config) ->
    Workers = fun() -> length(supervisor:which_children(py_event_worker_sup)) end,
    Before = Workers(),
    ok = py:exec(<<"import erlang_loop\n"
                   "loops = [erlang_loop.ErlangEventLoop(isolated=True) for _ in range(5)]\n">>),
    ?assertEqual(Before + 5, Workers()),
    ok = py:exec(<<"for l in loops: l.close()\n">>),
    ?assertEqual(Before, wait_until(Workers, fun(N) -> N =:= Before end, 5000)).

%% A Python loop asks to be placed again while no worker serves it: a
%% request lost in a placer that was killed with it queued is made again to
%% the next placer, for a default loop and an isolated one alike.
-spec a_placement_lost_with_the_placer_is_asked_again(ct_suite:ct_config()) -> term().
a_placement_lost_with_the_placer_is_asked_again(_Config) ->
    [begin
         Placer = whereis(py_event_loops),
         erlang:suspend_process(Placer),
         Self = self(),
         spawn_link(fun() ->
                            ok = py:exec(?MAKE_AND_RUN),
                            Self ! {made, py:eval(<<"make_and_run(iso)">>,
                                                  #{<<"iso">> => Isolated})}
                    end),
         wait_until(fun() -> process_info(Placer, message_queue_len) end,
                    fun({message_queue_len, N}) -> N > 0 end, 10000),
         exit(Placer, kill),
         receive {made, Made} -> ?assertEqual({ok, <<"ok">>}, Made, Isolated) end,
         %% The kill is a signal: the next round's placer is the new one.
         wait_until(fun() -> whereis(py_event_loops) end,
                    fun(Now) -> is_pid(Now) andalso Now =/= Placer end, 10000)
     end || Isolated <- [false, true]].

%% A default loop is placed when it first sets a timer or sleeps: one that
%% does neither (`asyncio.run` of a coroutine that awaits nothing slow)
%% needs no Erlang process at all, here with the placer and the shared
%% worker both suspended; one that sleeps while its placement is lost
%% with the placer asks the next placer, and is served (its Erlang timer
%% armed) before its sleep ends.
-spec a_default_loop_is_placed_when_it_first_needs_a_worker(ct_suite:ct_config()) -> term().
a_default_loop_is_placed_when_it_first_needs_a_worker(_Config) ->
    Placer = whereis(py_event_loops),
    Default = whereis(py_event_default),
    erlang:suspend_process(Placer),
    ok = sys:suspend(Default),
    try
        ok = py:exec(<<"
import asyncio, erlang_loop
async def _nothing_slow():
    await asyncio.sleep(0)
    return 'ok'
def _cycles():
    for _ in range(50):
        loop = erlang_loop.ErlangEventLoop()
        try:
            assert loop.run_until_complete(_nothing_slow()) == 'ok'
        finally:
            loop.close()
    return [asyncio.run(_nothing_slow()) for _ in range(50)] == ['ok'] * 50
">>),
        ?assertEqual({ok, true}, py:eval(<<"_cycles()">>)),
        ?assertEqual({message_queue_len, 0}, process_info(Placer, message_queue_len)),
        ?assertEqual({message_queue_len, 0}, process_info(Default, message_queue_len))
    after
        ok = sys:resume(Default),
        erlang:resume_process(Placer)
    end,
    erlang:suspend_process(Placer),
    sleep_on_a_default_loop(Placer, 1.5),
    exit(Placer, kill),
    receive {slept, Slept} -> ?assertEqual({ok, true}, Slept) end,
    wait_until(fun() -> whereis(py_event_loops) end,
               fun(Now) -> is_pid(Now) andalso Now =/= Placer end, 10000).

%% Has a linked process sleep `Seconds' on a new default loop, then send
%% `{slept, {ok, Armed}}' (Armed: the loop armed an Erlang timer, so a
%% worker served it); returns once the loop has asked the suspended
%% `Placer' for its worker.
-spec sleep_on_a_default_loop(pid(), float()) -> ok.
sleep_on_a_default_loop(Placer, Seconds) ->
    Self = self(),
    spawn_link(fun() ->
                       ok = py:exec(<<"
import asyncio, erlang_loop
def _sleeps_on_a_default_loop(seconds):
    loop = erlang_loop.ErlangEventLoop()
    try:
        loop.run_until_complete(asyncio.sleep(seconds))
        return loop.stats()['timer_arms'] > 0
    finally:
        loop.close()
">>),
                       Self ! {slept, py:eval(<<"_sleeps_on_a_default_loop(seconds)">>,
                                              #{<<"seconds">> => Seconds})}
               end),
    _ = wait_until(fun() -> process_info(Placer, message_queue_len) end,
                   fun({message_queue_len, N}) -> N > 0 end, 10000),
    ok.

%% A default loop sleeps unserved; its request is lost with the placer,
%% killed, whose restart takes a while (its supervisor busy, here
%% suspended): the loop's next request, made while no live placer is
%% registered, is lost too, and the one after is served. It was fatal
%% (`NoServer' at once, though the placer came back 0.5 s later).
-spec a_loop_asking_while_the_placer_restarts_is_placed(ct_suite:ct_config()) -> term().
a_loop_asking_while_the_placer_restarts_is_placed(_Config) ->
    %% A fresh supervisor: the restarts of the cases before count against
    %% its intensity (5 in 10 s), and the kill below would pass it.
    ok = application:stop(erlang_python),
    {ok, _} = application:ensure_all_started(erlang_python),
    Sup = whereis(erlang_python_sup),
    Placer = whereis(py_event_loops),
    erlang:suspend_process(Placer),
    sleep_on_a_default_loop(Placer, 2.0),
    true = erlang:suspend_process(Sup),
    exit(Placer, kill),
    timer:sleep(900),
    true = erlang:resume_process(Sup),
    receive {slept, Slept} -> ?assertEqual({ok, true}, Slept) end,
    wait_until(fun() -> whereis(py_event_loops) end,
               fun(Now) -> is_pid(Now) andalso Now =/= Placer end, 10000).

%% The placer waiting on the isolated workers' supervisor when that dies
%% lives on (it was taken down with it: two restarts of the top
%% supervisor's budget per kill), and the loop is placed once the
%% supervisor is back.
-spec the_placer_outlives_the_worker_supervisor(ct_suite:ct_config()) -> term().
the_placer_outlives_the_worker_supervisor(_Config) ->
    Placer = whereis(py_event_loops),
    Sup = whereis(py_event_worker_sup),
    erlang:suspend_process(Sup),
    Self = self(),
    spawn_link(fun() ->
                       ok = py:exec(?MAKE_AND_RUN),
                       Self ! {made, py:eval(<<"make_and_run(True)">>)}
               end),
    wait_until(fun() -> process_info(Placer, current_function) end,
               fun(Now) -> Now =:= {current_function, {gen, do_call, 4}} end, 10000),
    exit(Sup, kill),
    receive {made, Made} -> ?assertEqual({ok, <<"ok">>}, Made) end,
    ?assertEqual(Placer, whereis(py_event_loops)).

%% asyncio.get_event_loop() on a pool thread whose loop lost its worker
%% (py_event_default killed and restarted by its supervisor) gives a new
%% loop: calls that land on that thread work again, as on a fresh thread.
-spec a_thread_s_loop_whose_worker_died_is_replaced(ct_suite:ct_config()) -> term().
a_thread_s_loop_whose_worker_died_is_replaced(_Config) ->
    ok = py:register_function(restart_default_worker,
                              fun() ->
                                      Worker = whereis(py_event_default),
                                      exit(Worker, kill),
                                      wait_until(fun() -> whereis(py_event_default) end,
                                                 fun(Pid) -> is_pid(Pid) andalso Pid =/= Worker end,
                                                 10000),
                                      ok
                              end),
    ok = py:exec(<<"
import asyncio, erlang
def _across_a_restart():
    # One call: the same pool thread before and after the restart.
    first = asyncio.get_event_loop()
    before = first.run_until_complete(asyncio.sleep(0.01, 'before'))
    erlang.call('restart_default_worker')
    then = asyncio.get_event_loop()
    after = then.run_until_complete(asyncio.sleep(0.01, 'after'))
    return [before, after, then is not first, first.is_closed()]
">>),
    ?assertEqual({ok, [<<"before">>, <<"after">>, true, true]},
                 py:eval(<<"_across_a_restart()">>)),
    ok = py:unregister_function(restart_default_worker).

%% A default loop whose worker is slow asks to be placed again; the worker
%% takes it once, however many of its requests it finds (each taking
%% re-armed the loop's fds and timer and added a monitor): it runs, and the
%% worker is still watched by one monitor.
-spec a_placement_asked_twice_is_taken_once(ct_suite:ct_config()) -> term().
a_placement_asked_twice_is_taken_once(_Config) ->
    Default = whereis(py_event_default),
    Monitors = fun() ->
                       {monitored_by, By} = process_info(Default, monitored_by),
                       length(By)
               end,
    Before = Monitors(),
    ok = sys:suspend(Default),
    Self = self(),
    Maker = spawn_link(fun() ->
                       ok = py:exec(<<"import asyncio, erlang_loop\n"
                                      "_twice = erlang_loop.ErlangEventLoop()\n">>),
                       Self ! {made, py:eval(<<"_twice.run_until_complete("
                                               "asyncio.sleep(0.01, 'ok'))">>)},
                       receive close -> ok = py:exec(<<"_twice.close()">>) end,
                       Self ! closed
               end),
    wait_until(fun() -> process_info(Default, message_queue_len) end,
               fun({message_queue_len, N}) -> N >= 2 end, 10000),
    ok = sys:resume(Default),
    receive {made, Made} -> ?assertEqual({ok, <<"ok">>}, Made) end,
    ?assertEqual(1, Monitors()),
    ?assert(Before =< 1),
    Maker ! close,
    receive closed -> ok end.

%% A placement the worker finds again after it armed the loop's timer (the
%% placer looked before the worker's attach) keeps the loop's entry: it
%% was overwritten, the armed timer forgotten, and that timer's tick then
%% ignored.
-spec a_second_adopt_keeps_the_armed_timer(ct_suite:ct_config()) -> term().
a_second_adopt_keeps_the_armed_timer(_Config) ->
    Default = whereis(py_event_default),
    %% The loops of the default worker with a timer armed (its state is
    %% `#state{loops = #{Id => #loop{ref, timer}}, dedicated}').
    Armed = fun() ->
                    {state, Loops, _Dedicated} = sys:get_state(Default),
                    lists:sort([{Id, Ref, Timer} || {Id, {loop, Ref, Timer}} <- maps:to_list(Loops),
                                                   Timer =/= undefined])
            end,
    Before = Armed(),
    Self = self(),
    spawn_link(fun() ->
                       ok = py:exec(<<"import asyncio, erlang_loop
"
                                      "_adopted = erlang_loop.ErlangEventLoop()
">>),
                       Slept = py:eval(<<"_adopted.run_until_complete("
                                         "asyncio.sleep(2, 'ok'))">>),
                       ok = py:exec(<<"_adopted.close()">>),
                       Self ! {slept, Slept}
               end),
    [{Id, Ref, Timer}] = wait_until(fun() -> Armed() -- Before end,
                                    fun(New) -> length(New) =:= 1 end, 10000),
    gen_server:cast(Default, {adopt, Ref}),
    ?assert(lists:member({Id, Ref, Timer}, Armed())),
    receive {slept, Slept} -> ?assertEqual({ok, <<"ok">>}, Slept)
    after 10000 -> ct:fail(not_slept)
    end.

%% A native loop Python drops without close() (ErlangEventLoop.__init__
%% failing or interrupted after making it, a timed-out py:call say) closes
%% as it is freed: its fds are released and an isolated loop's worker ends.
-spec unclosed_native_loops_release_fds_and_workers(ct_suite:ct_config()) -> term().
unclosed_native_loops_release_fds_and_workers(_Config) ->
    Workers = fun() -> length(supervisor:which_children(py_event_worker_sup)) end,
    Idle = Workers(),
    ok = py:exec(<<"import gc, _erlang_loop, erlang_loop\n"
                   "from erlang_loop import _loop\n"
                   "_erlang_loop.new_loop(True).close()\n">>),
    %% The worker of the loop just closed ends too, a little later.
    Before = wait_until(Workers, fun(N) -> N =< Idle end, 5000),
    Baseline = fd_count(),
    ok = py:exec(<<"for i in range(20): _erlang_loop.new_loop(bool(i % 2))\n"
                   "def failing(self, native): raise KeyboardInterrupt\n"
                   "stock, _loop._ErlangSelector.__init__ = _loop._ErlangSelector.__init__, failing\n"
                   "try:\n"
                   "    for i in range(20):\n"
                   "        try: erlang_loop.ErlangEventLoop(isolated=bool(i % 2))\n"
                   "        except KeyboardInterrupt: pass\n"
                   "finally:\n"
                   "    _loop._ErlangSelector.__init__ = stock\n"
                   "gc.collect()\n">>),
    After = wait_until(Workers, fun(N) -> N =< Before end, 5000),
    ?assert(After =< Before, {workers_left, After - Before}),
    Fds = wait_until(fun fd_count/0, fun(N) -> N =< Baseline end, 5000),
    ?assert(Fds =< Baseline, {leaked_fds, Fds - Baseline}).

%% asyncio.run leaves its thread with set_event_loop(None); the next py:call
%% that lands on that pool thread must still get a loop from
%% asyncio.get_event_loop(), as on a fresh thread.
-spec get_event_loop_on_any_pool_thread(ct_suite:ct_config()) -> term().
get_event_loop_on_any_pool_thread(_Config) ->
    Run = <<"__import__('asyncio').run(__import__('asyncio').sleep(0.05))">>,
    Self = self(),
    %% Occupy several pool threads with asyncio.run at once.
    Pids = [spawn_link(fun() -> Self ! {ran, self(), py:eval(Run)} end)
            || _ <- lists:seq(1, 8)],
    [receive {ran, Pid, Result} -> ?assertEqual({ok, none}, Result) end || Pid <- Pids],
    Get = <<"type(__import__('asyncio').get_event_loop()).__name__">>,
    [?assertEqual({ok, <<"ErlangEventLoop">>}, py:eval(Get)) || _ <- lists:seq(1, 64)].

%% A timed-out call's TimeoutError is injected at its next bytecode: one
%% set while the call is in C that returns to the worker with no bytecode
%% run (a `time.sleep` called from `map`, itself called from C) is still
%% pending when the call ends. It fired in the worker's own reset of the
%% thread's loop state, which it skipped, so the next call on that thread
%% got `RuntimeError` from asyncio.get_event_loop() after an asyncio.run.
-spec get_event_loop_after_a_timeout_pending_at_return(ct_suite:ct_config()) -> term().
get_event_loop_after_a_timeout_pending_at_return(_Config) ->
    ok = py:exec(<<"
import asyncio, functools, operator, sys, time, types
async def _main():
    return 1
def _run():
    asyncio.run(_main())
_m = types.ModuleType('pending_timeout_at_return')
sys.modules[_m.__name__] = _m
def _arm():
    # Python code around the sleep would take the TimeoutError itself.
    _m.go = functools.partial(
        list, map(operator.call, [_run, functools.partial(time.sleep, 0.3)]))
_m.arm = _arm
">>),
    Get = <<"type(__import__('asyncio').get_event_loop()).__name__">>,
    lists:foreach(
      fun(_) ->
              {ok, none} = py:call(pending_timeout_at_return, arm, []),
              {error, timeout} = py:call(pending_timeout_at_return, go, [], #{}, 50),
              timer:sleep(400),
              [?assertEqual({ok, <<"ErlangEventLoop">>}, py:eval(Get))
               || _ <- lists:seq(1, 40)]
      end, lists:seq(1, 3)).

%% A closed Python loop's native core (its wheel, queues, fd tables) goes
%% with the last reference to it: the Python object's, dropped here, and
%% the terms of the processes that placed and served it, which let go of
%% theirs when it closes (they hibernate) rather than at a collection that
%% an idle process may not make for long.
-spec closed_python_loops_are_freed_at_once(ct_suite:ct_config()) -> term().
closed_python_loops_are_freed_at_once(_Config) ->
    Live = fun() -> maps:get(event_loops, py_nif:pool_stats()) end,
    Before = Live(),
    ok = py:exec(<<"
import asyncio, erlang_loop
for _ in range(20):
    _loop = erlang_loop.ErlangEventLoop()
    _loop.run_until_complete(asyncio.sleep(0.001))
    _loop.close()
del _loop
">>),
    ?assert(wait_until(Live, fun(N) -> N =< Before end, 10000) =< Before).

-spec python_worker_dies(ct_suite:ct_config()) -> term().
python_worker_dies(_Config) ->
    Before = workers(),
    ok = py:exec(<<"
import asyncio, threading, erlang_loop
_loop_error = None
_loops = []
def _run_loop():
    global _loop_error
    try:
        loop = _loops.append(erlang_loop.ErlangEventLoop(isolated=True)) or _loops[0]
        try:
            loop.run_until_complete(asyncio.sleep(30))
            _loop_error = 'finished without error'
        finally:
            loop.close()
    except BaseException as e:
        _loop_error = type(e).__name__ + ': ' + str(e)
_loop_thread = threading.Thread(target=_run_loop, daemon=True)
_loop_thread.start()
">>),
    [Worker] = wait_until(fun() -> workers() -- Before end, fun(New) -> New =/= [] end, 10000),
    %% The loop waits (asleep in its wait) before its worker dies.
    Sleeping = <<"bool(_loops) and _loops[0].stats()['sleeping'] == 1">>,
    ?assertEqual({ok, true}, wait_until(fun() -> py:eval(Sleeping) end,
                                        fun(R) -> R =:= {ok, true} end, 10000)),
    ?assertEqual({ok, none}, py:eval(<<"_loop_error">>)),
    Mon = monitor(process, Worker),
    exit(Worker, kill),
    receive {'DOWN', Mon, process, Worker, _} -> ok end,
    {ok, Error} = wait_until(fun() -> py:eval(<<"_loop_error">>) end,
                             fun(R) -> R =/= {ok, none} end, 15000),
    ct:log("Python saw: ~ts", [Error]),
    ?assert(is_binary(Error), {no_error_in_python, Error}),
    ?assertMatch(<<"RuntimeError: ", _/binary>>, Error),
    ?assertNotEqual(nomatch, binary:match(Error, <<"died">>)),
    ?assertNotEqual(nomatch, binary:match(Error, <<"Erlang process">>)),
    {ok, false} = wait_until(fun() -> py:eval(<<"_loop_thread.is_alive()">>) end,
                             fun(R) -> R =:= {ok, false} end, 5000),
    %% A new isolated loop gets a new worker and runs.
    ?assertEqual({ok, 42}, py:eval(<<"(lambda l: (l.run_until_complete(asyncio.sleep(0.01, 42)),"
                                     " l.close())[0])(erlang_loop.ErlangEventLoop(isolated=True))">>)).

%% A Python loop's timers stand for Python objects its runner owns: the
%% low-level timer, fd, poll and queue calls refuse its LoopRef (obtained here from its
%% worker's state, as a curious user could), and the loop keeps working.
-spec python_loop_refuses_low_level_timers(ct_suite:ct_config()) -> term().
python_loop_refuses_low_level_timers(_Config) ->
    Before = workers(),
    ok = py:exec(<<"
import asyncio, erlang_loop
_refusing = erlang_loop.ErlangEventLoop(isolated=True)
_refusing_timer = _refusing.call_later(3600, print)
">>),
    [Worker] = wait_until(fun() -> workers() -- Before end, fun(New) -> New =/= [] end, 10000),
    {state, Loops, _} = sys:get_state(Worker),
    [{loop, Loop, _}] = maps:values(Loops),
    ?assertEqual({error, python_loop}, py_nif:call_later(Loop, 0, 7)),
    ?assertEqual({error, python_loop}, py_nif:get_pending(Loop)),
    ?assertEqual({error, python_loop}, py_nif:poll_events(Loop, 0)),
    {ok, S} = gen_udp:open(0),
    {ok, Fd} = inet:getfd(S),
    ?assertEqual({error, python_loop}, py_nif:add_reader(Loop, Fd, 1)),
    ?assertEqual({error, python_loop}, py_nif:add_writer(Loop, Fd, 1)),
    ?assertEqual({error, python_loop}, py_nif:remove_reader(Loop, {Fd, 1})),
    ok = gen_udp:close(S),
    [?assertEqual({error, python_loop}, py_nif:cancel_timer(Loop, Key))
     || Key <- [0, 1 bsl 32, 16#FFFFFFFFFFFFFFFF]],
    ?assertEqual({ok, 42},
                 py:eval(<<"(_refusing.run_until_complete(asyncio.sleep(0.01, 42)),"
                           " _refusing_timer.cancel(), _refusing.close())[0]">>)).

workers() ->
    [Pid || {_, Pid, _, _} <- supervisor:which_children(py_event_worker_sup), is_pid(Pid)].

%% A loop's handler for SIGUSR2 sets it to `handle' and puts the forwarder in
%% `erl_signal_server', once however many handlers a loop adds; a SIGUSR2 sent
%% to the node then runs it; its removal routes it no more. The BEAM's own
%% signals are never routed nor delivered.
-spec routed_signals_reach_python_loops(ct_suite:ct_config()) -> term().
routed_signals_reach_python_loops(_Config) ->
    ?assertEqual({error, {not_routed, sigterm}}, py_signals:route(sigterm, true)),
    ?assertEqual({error, {not_routed, <<"sigint">>}}, py_signals:route(<<"sigint">>, true)),
    ?assertMatch({error, {badarg, _}}, py_signals:route(sigusr2, false)),
    ?assertMatch({error, {badarg, _}}, py_signals:route(sigusr2, yes)),
    ?assertEqual({error, not_routed}, py_signals:unroute(12345)),
    ?assertMatch({error, {badarg, _}}, py_signals:unroute(sigusr2)),
    [?assertError(badarg, py_nif:deliver_signal(Bad))
     || Bad <- [sigterm, sigint, sigusr1, sigquit, foo, 12, "sighup"]],
    ?assertEqual(#{}, py_signals:routed()),
    ok = py:exec(<<"
import asyncio, erlang_loop, signal
_signal_loop = erlang_loop.ErlangEventLoop()
_signal_seen = []
_signal_loop.add_signal_handler(signal.SIGUSR2, _signal_seen.append, 'replaced')
_signal_loop.add_signal_handler(signal.SIGUSR2, _signal_seen.append, 'usr2')

async def _signal_wait():
    while not _signal_seen:
        await asyncio.sleep(0.01)
    return _signal_seen
">>),
    ?assertEqual(#{sigusr2 => 1}, py_signals:routed()),
    ?assert(lists:member(py_signal_forwarder, gen_event:which_handlers(erl_signal_server))),
    _ = os:cmd("kill -USR2 " ++ os:getpid()),
    ?assertEqual({ok, [<<"usr2">>]},
                 py:eval(<<"_signal_loop.run_until_complete(asyncio.wait_for(_signal_wait(), 20))">>)),
    %% A crash of the router loses neither the route nor the forwarder: the
    %% node lives through the next SIGUSR2 and the handler runs again.
    Router = whereis(py_signals),
    exit(Router, kill),
    NewRouter = wait_until(fun() -> whereis(py_signals) end,
                           fun(Pid) -> is_pid(Pid) andalso Pid =/= Router end, 10000),
    ?assertEqual(#{sigusr2 => 1}, py_signals:routed()),
    _ = sys:get_state(NewRouter),
    ?assert(lists:member(py_signal_forwarder, gen_event:which_handlers(erl_signal_server))),
    ok = py:exec(<<"_signal_seen.clear()">>),
    _ = os:cmd("kill -USR2 " ++ os:getpid()),
    ?assertEqual({ok, [<<"usr2">>]},
                 py:eval(<<"_signal_loop.run_until_complete(asyncio.wait_for(_signal_wait(), 20))">>)),
    ?assertEqual({ok, [true, false]},
                 py:eval(<<"[_signal_loop.remove_signal_handler(signal.SIGUSR2),"
                           " _signal_loop.remove_signal_handler(signal.SIGUSR2)]">>)),
    ?assertEqual(#{}, py_signals:routed()),
    ok = py:exec(<<"_signal_loop.close()">>).

%% A loop that took SIGUSR2 before the application restarted, closed after
%% it, leaves the route of a loop that took it since: SIGUSR2 stays
%% handled (set back to `default', the next one would end the node) and
%% reaches the live loop.
-spec routes_from_before_a_restart_leave_the_new_ones_alone(ct_suite:ct_config()) -> term().
routes_from_before_a_restart_leave_the_new_ones_alone(_Config) ->
    ok = py:exec(<<"
import asyncio, erlang_loop, signal
def _loop_taking_usr2(seen):
    loop = erlang_loop.ErlangEventLoop(isolated=True)
    loop.add_signal_handler(signal.SIGUSR2, seen.append, 'usr2')
    return loop
async def _signal_wait_for(seen):
    while not seen:
        await asyncio.sleep(0.01)
    return seen
_old_seen, _new_seen = [], []
_old_loop = _loop_taking_usr2(_old_seen)
">>),
    ?assertEqual(#{sigusr2 => 1}, py_signals:routed()),
    ok = application:stop(?APP),
    {ok, _} = application:ensure_all_started(?APP),
    ?assertEqual(#{}, py_signals:routed()),
    ok = py:exec(<<"_new_loop = _loop_taking_usr2(_new_seen)\n_old_loop.close()\n">>),
    ?assertEqual(#{sigusr2 => 1}, py_signals:routed()),
    _ = os:cmd("kill -USR2 " ++ os:getpid()),
    ?assertEqual({ok, [<<"usr2">>]},
                 py:eval(<<"_new_loop.run_until_complete(asyncio.wait_for("
                           "_signal_wait_for(_new_seen), 20))">>)),
    ok = py:exec(<<"_new_loop.close()">>),
    ?assertEqual(#{}, py_signals:routed()).

%%--------------------------------------------------------------------
%% Stats and idleness

%% loop_stats: integer counters that move as expected.
-spec loop_stats(ct_suite:ct_config()) -> term().
loop_stats(_Config) ->
    Loop = new_loop(),
    S0 = py_nif:loop_stats(Loop),
    Keys = [timers_inserted, timers_cancelled, timers_fired, wakeups, spurious_wakeups,
            ticks, spurious_ticks, fd_events, events_coalesced, stale_events, timer_arms,
            poller_rebuilds, fds_closed_unselected, pending, live_timers, fds, timer_memory,
            sleeping],
    [?assert(is_integer(maps:get(K, S0)) andalso maps:get(K, S0) >= 0, K) || K <- Keys],
    ?assertMatch(#{timers_inserted := 0, timers_fired := 0, fd_events := 0,
                   live_timers := 0, fds := 0, pending := 0, sleeping := 0}, S0),
    {ok, _} = py_nif:call_later(Loop, 10, 1),
    {ok, T2} = py_nif:call_later(Loop, 20, 2),
    {ok, _} = py_nif:call_later(Loop, 30, 3),
    ok = py_nif:cancel_timer(Loop, T2),
    ?assertMatch(#{timers_inserted := 3, timers_cancelled := 1, live_timers := 2},
                 py_nif:loop_stats(Loop)),
    ok = wait_pending(Loop, 1, 5000),
    ?assert(maps:get(pending, py_nif:loop_stats(Loop)) >= 1),
    Fired = [{1, timer}, {3, timer}],
    ?assertEqual(Fired, collect(Loop, 2, 5000)),
    S1 = py_nif:loop_stats(Loop),
    ?assertMatch(#{timers_fired := 2, live_timers := 0, pending := 0}, S1),
    ?assert(maps:get(ticks, S1) >= 1),
    ?assert(maps:get(timer_arms, S1) >= 1),
    ?assert(maps:get(wakeups, S1) >= 1),
    Tx = sender(),
    {S, Fd, Port} = udp(),
    {ok, Ref} = py_nif:add_reader(Loop, Fd, 9),
    ?assertMatch(#{fds := 1}, py_nif:loop_stats(Loop)),
    ok = gen_udp:send(Tx, ?LOCALHOST, Port, <<"x">>),
    ?assertEqual([{9, read}], collect(Loop, 1, 5000)),
    ?assertMatch(#{fd_events := 1, fds := 1}, py_nif:loop_stats(Loop)),
    ok = py_nif:remove_reader(Loop, Ref),
    S2 = py_nif:loop_stats(Loop),
    ?assertMatch(#{fds := 0, fd_events := 1, timers_fired := 2}, S2),
    %% Counters never go back.
    [?assert(maps:get(K, S2) >= maps:get(K, S1), K)
     || K <- Keys -- [pending, live_timers, fds]],
    ok = gen_udp:close(S),
    ok = gen_udp:close(Tx),
    stop_loop(Loop).

%% A loop with 1000 timers an hour away is idle: its router's timer does not
%% tick periodically (LESSONS 12).
-spec idle_loop_does_not_tick(ct_suite:ct_config()) -> term().
idle_loop_does_not_tick(_Config) ->
    Loop = new_loop(),
    [{ok, _} = py_nif:call_later(Loop, 3600 * 1000 + I, I) || I <- lists:seq(1, 1000)],
    #{ticks := Ticks0, timer_arms := Arms0} = py_nif:loop_stats(Loop),
    %% 2 s of nothing (several polls, as a loop would do).
    [?assertEqual(0, py_nif:poll_events(Loop, 500)) || _ <- lists:seq(1, 4)],
    #{ticks := Ticks1, timer_arms := Arms1, live_timers := Live} = py_nif:loop_stats(Loop),
    ct:log("ticks ~p -> ~p, timer arms ~p -> ~p", [Ticks0, Ticks1, Arms0, Arms1]),
    ?assertEqual(1000, Live),
    ?assert(Ticks1 =< 2, {ticks, Ticks1}),
    ?assert(Arms1 =< 3, {timer_arms, Arms1}),
    ?assertEqual([], py_nif:get_pending(Loop)),
    stop_loop(Loop).

%%--------------------------------------------------------------------
%% Helpers

%% A loop served by its own router (linked to the test case).
new_loop() ->
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, Router} = py_event_router:start_link(Loop),
    remember(Loop, Router),
    Loop.

remember(Loop, Router) ->
    Loops = case get(loops) of undefined -> #{}; L -> L end,
    put(loops, Loops#{py_nif:loop_id(Loop) => {Loop, Router}}).

router_of(Loop) ->
    {_, Router} = maps:get(py_nif:loop_id(Loop), get(loops)),
    Router.

%% Destroys the loop and stops its router (unless another loop still uses it).
stop_loop(Loop) ->
    ok = py_nif:event_loop_destroy(Loop),
    Loops = case get(loops) of undefined -> #{}; L -> L end,
    Id = py_nif:loop_id(Loop),
    case maps:take(Id, Loops) of
        {{_, Router}, Rest} ->
            put(loops, Rest),
            case lists:member(Router, [R || {_, R} <- maps:values(Rest)]) of
                true -> ok;
                false ->
                    unlink(Router),
                    catch gen_server:stop(Router, normal, 5000),
                    ok
            end;
        error ->
            ok
    end.

%% Events of `Loop' in arrival order, until `N' arrived or `Timeout' ms passed.
collect(Loop, N, Timeout) ->
    collect(Loop, N, now_ms() + Timeout, []).

collect(_Loop, N, _Deadline, Acc) when length(Acc) >= N ->
    Acc;
collect(Loop, N, Deadline, Acc) ->
    Left = Deadline - now_ms(),
    case Left =< 0 of
        true ->
            Acc;
        false ->
            case py_nif:poll_events(Loop, min(Left, 500)) of
                Count when is_integer(Count) ->
                    Events = py_nif:get_pending(Loop),
                    ?assert(is_list(Events), Events),
                    collect(Loop, N, Deadline, Acc ++ Events);
                Error ->
                    error({poll_events, Error, Acc})
            end
    end.

%% Like collect/3, but counts distinct events and returns them sorted: a
%% reader whose data nobody reads is re-armed after each event taken, so it
%% may fire again while slower sockets are still awaited.
collect_distinct(Loop, N, Timeout) ->
    collect_distinct(Loop, N, now_ms() + Timeout, []).

collect_distinct(Loop, N, Deadline, Seen) ->
    case length(Seen) >= N orelse Deadline =< now_ms() of
        true ->
            Seen;
        false ->
            New = collect(Loop, 1, Deadline - now_ms()),
            collect_distinct(Loop, N, Deadline, lists:usort(Seen ++ New))
    end.

%% Waits (without draining) until at least `N' events are queued.
wait_pending(Loop, N, Timeout) ->
    Count = wait_until(fun() -> py_nif:poll_events(Loop, 100) end,
                       fun(C) -> is_integer(C) andalso C >= N end, Timeout),
    ?assert(is_integer(Count) andalso Count >= N, {pending, Count}),
    ok.

%% Calls `Get' until `Done' accepts its value or `Timeout' ms pass; returns
%% the last value.
%% A pid whose process has ended.
dead_pid() ->
    {Pid, Mon} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Mon, process, Pid, _} -> Pid end.

%% Waits until `Poller' waits inside py_nif:poll_events (its receive).
wait_polling(Poller) ->
    InPoll = fun() ->
                     process_info(Poller, [status, current_function]) =:=
                         [{status, waiting}, {current_function, {py_nif, poll_events, 4}}]
             end,
    ?assert(wait_until(InPoll, fun(Polling) -> Polling end, 10000), not_polling).

wait_until(Get, Done, Timeout) ->
    wait_until(Get, Done, now_ms() + Timeout, undefined).

wait_until(Get, Done, Deadline, _Last) ->
    Value = Get(),
    case Done(Value) orelse now_ms() > Deadline of
        true -> Value;
        false ->
            timer:sleep(10),
            wait_until(Get, Done, Deadline, Value)
    end.

timed(Fun) ->
    T0 = now_ms(),
    Result = Fun(),
    {Result, now_ms() - T0}.

now_ms() ->
    erlang:monotonic_time(millisecond).

udp() ->
    {ok, S} = gen_udp:open(0, [binary, {active, false}, {ip, ?LOCALHOST}]),
    {ok, Fd} = inet:getfd(S),
    {ok, Port} = inet:port(S),
    {S, Fd, Port}.

sender() ->
    {ok, Tx} = gen_udp:open(0, [binary, {active, false}, {ip, ?LOCALHOST}]),
    Tx.
