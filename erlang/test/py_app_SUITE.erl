%% The application as a whole: each long-lived process of its tree killed
%% while Python loops run and calls are in flight; the tree recovers, new
%% calls and loops work, and no process, port or fd is left behind.
-module(py_app_SUITE).

-include_lib("stdlib/include/assert.hrl").

-export([suite/0, all/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([killed_tree_processes_recover_and_leak_nothing/1,
         stopped_application_leaves_no_loop_fds/1]).

-define(APP, erlang_python).
-define(WAIT, 10000).

-spec suite() -> [tuple()].
suite() ->
    [{timetrap, {seconds, 120}}].

-spec all() -> [atom()].
all() ->
    [killed_tree_processes_recover_and_leak_nothing,
     stopped_application_leaves_no_loop_fds].

-spec init_per_suite(ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    Config.

-spec end_per_suite(ct_suite:ct_config()) -> ok.
end_per_suite(_Config) ->
    ok.

-spec init_per_testcase(atom(), ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_testcase(_Case, Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    Dir = unicode:characters_to_binary(proplists:get_value(data_dir, Config)),
    ok = py:exec(<<"import sys\nif ", (quoted(Dir))/binary, " not in sys.path: sys.path.insert(0, ",
                   (quoted(Dir))/binary, ")\n">>),
    Config.

-spec end_per_testcase(atom(), ct_suite:ct_config()) -> ok.
end_per_testcase(_Case, _Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    ok.

%% Killed one at a time (apart enough for the top supervisor's restart
%% intensity), while a default loop, an isolated loop, a plain call and a
%% py_asyncio loop run: every caller gets an answer (a result or an error,
%% never a hang), the killed process is back, and afterwards calls, both
%% kinds of loop and a new py_asyncio loop work, with the process, port and
%% fd counts back where they were.
-spec killed_tree_processes_recover_and_leak_nothing(ct_suite:ct_config()) -> term().
killed_tree_processes_recover_and_leak_nothing(_Config) ->
    {ok, _} = py:call(app_helpers, default_loop, [0.05]),
    {ok, _} = py:call(app_helpers, isolated_loop, [0.05]),
    Baseline = counts(),
    lists:foreach(fun kill_while_busy/1,
                  [py_callback, py_event_worker_sup, py_event_default,
                   py_event_loops, py_signals, py_asyncio_sup]),
    Final = wait_until(fun() -> {ok, _} = py:call(app_helpers, collect, []), counts() end,
                       fun(Counts) -> not_above(Counts, Baseline) end),
    ?assert(not_above(Final, Baseline), {leaked, Baseline, Final}).

kill_while_busy(Name) ->
    Self = self(),
    Calls = [{app_helpers, default_loop, [1.0]}, {app_helpers, isolated_loop, [1.0]},
             {time, sleep, [0.5]}],
    Callers = [spawn_link(fun() -> Self ! {answer, self(), py:call(M, F, A, #{}, ?WAIT)} end)
               || {M, F, A} <- Calls],
    {ok, Loop} = py_asyncio:start_loop(#{stop_timeout => 1000}),
    Task = py_asyncio:submit(Loop, app_helpers, sleeper, [1.0]),
    wait_holding(2),
    Victim = whereis(Name),
    exit(Victim, kill),
    [receive {answer, Caller, _Answer} -> ok after ?WAIT -> ct:fail({no_answer, Name}) end
     || Caller <- Callers],
    %% The loop answers, or was stopped with its supervisor (cancelled).
    receive {py_result, Task, _} -> ok after ?WAIT -> ct:fail({no_task_answer, Name}) end,
    _ = py_asyncio:stop_loop(Loop),
    Back = wait_until(fun() -> whereis(Name) end,
                      fun(Pid) -> is_pid(Pid) andalso Pid =/= Victim end),
    ?assert(is_pid(Back) andalso Back =/= Victim, {not_restarted, Name}),
    {ok, _} = py:call(app_helpers, default_loop, [0.05], #{}, ?WAIT),
    {ok, _} = py:call(app_helpers, isolated_loop, [0.05], #{}, ?WAIT),
    {ok, <<"slept">>} = with_asyncio_loop(fun(L) ->
                                                  py_asyncio:call(L, app_helpers, sleeper,
                                                                  [0.01], ?WAIT)
                                          end),
    %% Apart: the top supervisor allows 5 restarts in 10 s.
    timer:sleep(2100).

with_asyncio_loop(Fun) ->
    {ok, Loop} = py_asyncio:start_loop(#{}),
    try Fun(Loop) after ok = py_asyncio:stop_loop(Loop) end.

%% Loops running when the application stops lose their worker and close
%% afterwards, with no process of the application left: `py_orphan_stopper'
%% takes their epoll fds out of the VM's poll set (LESSONS 17: only then
%% may they close), and the application's next start stops it.
-spec stopped_application_leaves_no_loop_fds(ct_suite:ct_config()) -> term().
stopped_application_leaves_no_loop_fds(_Config) ->
    {ok, _} = py:call(app_helpers, default_loop, [0.05]),
    {ok, _} = py:call(app_helpers, isolated_loop, [0.05]),
    {ok, 0} = py:call(app_helpers, holding, []),
    Baseline = fd_count(),
    Self = self(),
    Callers = [spawn_link(fun() -> Self ! {answer, self(), py:call(app_helpers, F, [30.0])} end)
               || F <- [default_loop, default_loop, isolated_loop, isolated_loop]],
    ?assertEqual(4, wait_holding(4)),
    ok = application:stop(?APP),
    [receive {answer, Caller, _} -> ok after ?WAIT -> ct:fail(no_answer) end || Caller <- Callers],
    Final = wait_until(fun() ->
                               {ok, _} = py:call(app_helpers, collect, []),
                               fd_count()
                       end, fun(Count) -> Count =< Baseline end),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}),
    Stopper = whereis(py_orphan_stopper),
    ?assert(is_pid(Stopper)),
    {ok, _} = application:ensure_all_started(?APP),
    ?assertEqual(undefined, whereis(py_orphan_stopper)),
    ?assertNot(is_process_alive(Stopper)).

%% Until N loops (or more) hold their socket: how many do.
wait_holding(N) ->
    wait_until(fun() -> {ok, H} = py:call(app_helpers, holding, []), H end,
               fun(H) -> H >= N end).

counts() ->
    #{processes => erlang:system_info(process_count), ports => length(erlang:ports()),
      fds => fd_count()}.

not_above(Counts, Baseline) ->
    maps:fold(fun(K, V, Ok) -> Ok andalso V =< maps:get(K, Baseline) end, true, Counts).

fd_count() ->
    {ok, Names} = file:list_dir("/proc/self/fd"),
    length(Names).

wait_until(Get, Done) ->
    wait_until(Get, Done, erlang:monotonic_time(millisecond) + ?WAIT).

wait_until(Get, Done, Deadline) ->
    Value = Get(),
    case Done(Value) orelse erlang:monotonic_time(millisecond) > Deadline of
        true -> Value;
        false -> timer:sleep(100), wait_until(Get, Done, Deadline)
    end.

quoted(Text) ->
    <<"'", (binary:replace(Text, <<"'">>, <<"\\'">>, [global]))/binary, "'">>.
