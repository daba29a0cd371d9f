%% Property-style fuzzing of the Erlang-facing API with bad input: every
%% exported `py_nif' function and the public API (`py', `py_asyncio',
%% `py_event_router', `py_event_worker') is called many times with random
%% and adversarial arguments (wrong types, bignums, floats, deep and
%% improper lists, huge and sub-binaries, NUL bytes and invalid UTF-8,
%% resources of the wrong kind or already destroyed, dead and foreign pids).
%%
%% The rule checked: a call returns a valid value, `{error, _}' or raises
%% `badarg', within a deadline; after each batch the node's fd count is back
%% to its baseline and Python still answers. Python code that raises odd
%% exceptions (BaseException subclasses, a `__str__' or `__name__' that
%% raises, deep chains) answers `{error, {Name, Message, Traceback}}'.
%%
%% The generator is seeded: `PY_FUZZ_SEED' (an integer) picks another seed,
%% `PY_FUZZ_SEEDS' runs that many seeds from it, `PY_FUZZ_CASES' sets the
%% calls per function and seed (default 40). A failure names its seed.
-module(py_fuzz_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1]).
-export([nif_functions_refuse_bad_arguments/1, public_api_refuses_bad_arguments/1,
         python_errors_come_back_as_error_tuples/1,
         resources_of_the_wrong_kind_are_badarg/1,
         exit_now_refuses_a_status_out_of_range/1,
         an_exception_whose_str_exits_leaves_the_asyncio_loop_running/1,
         an_exception_whose_type_name_raises_is_answered_by_the_asyncio_loop/1,
         asyncio_child_spec_of_a_non_map_is_badarg/1]).

-define(APP, erlang_python).
-define(DEFAULT_SEED, 20260513).
-define(DEFAULT_CASES, 40).
%% The longest one fuzzed call may take (a hang otherwise).
-define(CALL_DEADLINE, 10000).

-spec suite() -> [tuple()].
suite() ->
    [{timetrap, {minutes, 10}}].

-spec all() -> [atom()].
all() ->
    [nif_functions_refuse_bad_arguments, public_api_refuses_bad_arguments,
     python_errors_come_back_as_error_tuples, resources_of_the_wrong_kind_are_badarg,
     exit_now_refuses_a_status_out_of_range,
     an_exception_whose_str_exits_leaves_the_asyncio_loop_running,
     an_exception_whose_type_name_raises_is_answered_by_the_asyncio_loop,
     asyncio_child_spec_of_a_non_map_is_badarg].

-spec init_per_suite(ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    %% Python's first uses open what stays open (the import system's
    %% caches, the default loop's worker): before the baseline is taken.
    {ok, 2} = py:eval(<<"1+1">>),
    {ok, _} = py:eval(<<"__import__('asyncio').run(__import__('asyncio').sleep(0))">>),
    Config.

-spec end_per_suite(ct_suite:ct_config()) -> ok.
end_per_suite(_Config) ->
    ok.

%%--------------------------------------------------------------------
%% Cases

%% Every exported py_nif function, with random and near-valid arguments.
-spec nif_functions_refuse_bad_arguments(ct_suite:ct_config()) -> term().
nif_functions_refuse_bad_arguments(_Config) ->
    each_seed(fun(Seed) -> fuzz_table(Seed, nif_table()) end).

%% py, py_asyncio, py_event_router and py_event_worker, the same way.
-spec public_api_refuses_bad_arguments(ct_suite:ct_config()) -> term().
public_api_refuses_bad_arguments(_Config) ->
    {ok, Loop} = py_asyncio:start_loop(#{}),
    try
        each_seed(fun(Seed) -> fuzz_table(Seed, api_table(Loop)) end)
    after
        ok = py_asyncio:stop_loop(Loop)
    end.

%% Python code that raises what a naive error path chokes on answers an
%% error tuple, from `py:exec', `py:eval', `py:call' and `py_asyncio:call'.
-spec python_errors_come_back_as_error_tuples(ct_suite:ct_config()) -> term().
python_errors_come_back_as_error_tuples(_Config) ->
    Baseline = fd_count(),
    {ok, Loop} = py_asyncio:start_loop(#{}),
    try
        Failures = lists:append([python_error(Snippet, Loop) || Snippet <- raisers()])
            ++ unconvertible_results(),
        ?assertEqual([], Failures)
    after
        ok = py_asyncio:stop_loop(Loop)
    end,
    healthy(Baseline, python_errors).

%% A loop resource where a job, fd, reply or sleep resource is expected and
%% the other way round, live or destroyed: badarg, never a crash.
-spec resources_of_the_wrong_kind_are_badarg(ct_suite:ct_config()) -> term().
resources_of_the_wrong_kind_are_badarg(_Config) ->
    Baseline = fd_count(),
    Ctx = context(),
    Resources = maps:to_list(maps:with([loop, closed_loop, job, fd_resource, reply], Ctx)),
    Expect = #{
        {py_nif, cancel, 1} => job,
        {py_nif, callback_reply, 2} => reply,
        {py_nif, sleep_done, 1} => none,
        {py_nif, loop_id, 1} => loop,
        {py_nif, loop_stats, 1} => loop,
        {py_nif, loop_tick, 1} => loop,
        {py_nif, loop_apply_selects, 1} => loop,
        {py_nif, loop_is_closed, 1} => loop,
        {py_nif, loop_router, 1} => loop,
        {py_nif, loop_needs_placing, 1} => loop,
        {py_nif, get_pending, 1} => loop,
        {py_nif, event_loop_wakeup, 1} => loop
    },
    Failures =
        [{F, Kind, Outcome}
         || {{py_nif, F, Arity}, Right} <- maps:to_list(Expect),
            {Kind, Resource} <- Resources,
            not same_kind(Kind, Right),
            Outcome <- [outcome(py_nif, F, pad_args(Arity, Resource))],
            Outcome =/= {raised, error, badarg}],
    %% The fd resource of another loop, given as the fd of a readiness.
    Wrong = [outcome(py_nif, loop_fd_ready, [maps:get(loop, Ctx), R, read])
             || {Kind, R} <- Resources, Kind =/= fd_resource],
    done(Ctx),
    ?assertEqual([], Failures),
    ?assertEqual([], [W || W <- Wrong, W =/= {raised, error, badarg}]),
    healthy(Baseline, wrong_resources).

%% Found by the fuzzer: `exit_now(256)' ended the node with status 0 (a
%% `u8' argument takes the low byte: 257 was 1). Out of 0..255 is badarg.
%% Run in a peer node, which the bug ends.
-spec exit_now_refuses_a_status_out_of_range(ct_suite:ct_config()) -> term().
exit_now_refuses_a_status_out_of_range(_Config) ->
    Ebin = filename:dirname(code:which(py_nif)),
    {ok, Peer, _Node} = peer:start_link(#{connection => standard_io, args => ["-pa", Ebin]}),
    try
        [?assertEqual({raised, badarg}, peer_exit_now(Peer, Bad))
         || Bad <- [256, 257, 1 bsl 32, 1 bsl 32 + 1, -1, 1 bsl 64]],
        ?assert(is_integer(peer:call(Peer, erlang, system_time, [])))
    after
        catch peer:stop(Peer)
    end.

%% Found by the fuzzer: a call's exception whose `__str__' raises SystemExit
%% (or KeyboardInterrupt) ended the py_asyncio loop every caller shares
%% (`python_loop_exited'): its report's `str(error)' let the BaseException
%% out of `run_forever'. It answers as py:call does: no message.
-spec an_exception_whose_str_exits_leaves_the_asyncio_loop_running(ct_suite:ct_config()) -> term().
an_exception_whose_str_exits_leaves_the_asyncio_loop_running(_Config) ->
    {ok, Loop} = py_asyncio:start_loop(#{}),
    Mon = erlang:monitor(process, Loop),
    Define = <<"class StrExits(Exception):\n"
               "    def __str__(self):\n"
               "        raise Exit('from __str__')\n"
               "async def go():\n"
               "    raise StrExits()\n">>,
    try
        lists:foreach(
          fun(Exit) ->
                  Source = <<"Exit = ", Exit/binary, "\n", Define/binary>>,
                  %% A plain call, and a coroutine (its task's done callback).
                  ?assertMatch({error, {_, <<>>, _}},
                               py_asyncio:call(Loop, builtins, exec,
                                               [<<Source/binary, "raise StrExits()">>, #{}], 10000)),
                  ?assertMatch({error, {_, <<>>, _}},
                               py_asyncio:call(Loop, builtins, eval,
                                               [<<"[exec(s, d := {}), d['go']()][1]">>,
                                                #{<<"s">> => Source}], 10000))
          end, [<<"SystemExit">>, <<"KeyboardInterrupt">>]),
        ?assertEqual({ok, 3}, py_asyncio:call(Loop, operator, add, [1, 2], 10000)),
        receive {'DOWN', Mon, process, Loop, Reason} -> ct:fail({loop_ended, Reason}) after 0 -> ok end
    after
        erlang:demonitor(Mon, [flush]),
        py_asyncio:stop_loop(Loop)
    end.

%% Found by the fuzzer: an exception whose class's `__name__' raises (a
%% metaclass property) was never answered by a py_asyncio loop (the report
%% failed in a loop callback): the caller waited until its timeout, for
%% good without one. It is named as py:call names it: by the class's own
%% name, which the property does not hide.
-spec an_exception_whose_type_name_raises_is_answered_by_the_asyncio_loop(ct_suite:ct_config()) ->
          term().
an_exception_whose_type_name_raises_is_answered_by_the_asyncio_loop(_Config) ->
    {ok, Loop} = py_asyncio:start_loop(#{}),
    Source = <<"class NameRaisesMeta(type):\n"
               "    @property\n"
               "    def __name__(cls):\n"
               "        raise RuntimeError('no name')\n"
               "class NameRaises(Exception, metaclass=NameRaisesMeta):\n"
               "    pass\n"
               "raise NameRaises('n')\n">>,
    try
        ?assertMatch({error, {<<"NameRaises">>, <<"n">>, _}},
                     py_asyncio:call(Loop, builtins, exec, [Source, #{}], 10000)),
        ?assertMatch({error, {<<"NameRaises">>, <<"n">>, _}},
                     py:call(builtins, exec, [Source, #{}], #{}, 10000))
    after
        py_asyncio:stop_loop(Loop)
    end.

%% Found by the fuzzer: `function_clause', where `start_loop/1' and
%% `adopt/2''s loop argument say badarg.
-spec asyncio_child_spec_of_a_non_map_is_badarg(ct_suite:ct_config()) -> term().
asyncio_child_spec_of_a_non_map_is_badarg(_Config) ->
    [?assertError(badarg, py_asyncio:child_spec(Bad)) || Bad <- [[], foo, [{name, x}], {}]],
    %% The same for a worker that is no process name or pid.
    {ok, Loop} = py_nif:event_loop_new(),
    [?assertError(badarg, py_event_worker:adopt(Bad, Loop)) || Bad <- [{}, "w", 1, make_ref()]],
    ok = py_nif:event_loop_destroy(Loop).

%% peer:call raises in the caller what the call raised.
peer_exit_now(Peer, Status) ->
    try peer:call(Peer, py_nif, exit_now, [Status], 10000)
    catch
        error:badarg -> {raised, badarg};
        Class:Reason -> {peer_gone, Status, Class, Reason}
    end.

same_kind(closed_loop, loop) -> true;
same_kind(Kind, Kind) -> true;
same_kind(_, _) -> false.

pad_args(1, Resource) -> [Resource];
pad_args(2, Resource) -> [Resource, {ok, 1}].

%%--------------------------------------------------------------------
%% The tables: {Module, Function, ArgKinds, ValidResult}

nif_table() ->
    [{py_nif, init, [init_options], fun(_) -> false end},
     {py_nif, python_version, [], fun({ok, V}) -> is_binary(V); (_) -> false end},
     {py_nif, pool_stats, [], fun is_map/1},
     {py_nif, namespace_count, [], fun is_integer/1},
     {py_nif, call, [pid, any, name, name, args, kwargs], fun submitted/1},
     {py_nif, control_call, [pid, any, name, name, args, kwargs], fun submitted/1},
     {py_nif, eval, [pid, any, code, kwargs], fun submitted/1},
     {py_nif, exec, [pid, any, code], fun submitted/1},
     {py_nif, cancel, [job], fun is_ok/1},
     {py_nif, set_callback_server, [pid_or_undefined], fun is_ok/1},
     {py_nif, callback_reply, [reply, reply_value], fun is_ok/1},
     {py_nif, event_loop_new, [], fun({ok, L}) -> is_reference(L); (_) -> false end},
     {py_nif, event_loop_set_router, [loop, pid], fun ok_or_error/1},
     {py_nif, event_loop_destroy, [loop], fun is_ok/1},
     {py_nif, event_loop_wakeup, [loop], fun ok_or_error/1},
     {py_nif, loop_id, [loop], fun is_integer/1},
     {py_nif, loop_stats, [loop], fun is_map/1},
     {py_nif, add_reader, [loop, fd, callback_id], fun fd_registered/1},
     {py_nif, add_writer, [loop, fd, callback_id], fun fd_registered/1},
     {py_nif, remove_reader, [loop, fdref], fun ok_or_error/1},
     {py_nif, remove_writer, [loop, fdref], fun ok_or_error/1},
     {py_nif, call_later, [loop, delay, callback_id], fun ok_pair_or_error/1},
     {py_nif, cancel_timer, [loop, timer_key], fun ok_or_error/1},
     {py_nif, poll_events, [loop, short_timeout], fun count_or_error/1},
     {py_nif, get_pending, [loop], fun pending/1},
     {py_nif, loop_apply_selects, [loop], fun is_ok/1},
     {py_nif, loop_fd_ready, [loop, fd_resource, direction], fun is_ok/1},
     {py_nif, loop_tick, [loop], fun is_list/1},
     {py_nif, set_loop_placer, [pid_or_undefined], fun is_ok/1},
     {py_nif, set_orphan_stopper, [pid_or_undefined], fun is_ok/1},
     {py_nif, event_loop_adopt, [loop, pid], fun ok_or_error/1},
     {py_nif, loop_needs_placing, [loop], fun is_boolean/1},
     {py_nif, loop_router, [loop], fun(R) -> is_pid(R) orelse R =:= undefined end},
     {py_nif, loop_is_closed, [loop], fun is_boolean/1},
     {py_nif, sleep_done, [sleep], fun is_ok/1},
     {py_nif, apply_orphan_stops, [], fun is_ok/1},
     {py_nif, end_with_parent, [not_the_parent], fun ok_or_error/1},
     {py_nif, exit_now, [not_a_status], fun(_) -> false end},
     {py_nif, unignore_terminal_signals, [], fun ok_or_error/1},
     {py_nif, deliver_signal, [signal], fun is_ok/1},
     {py_nif, create_test_udp_socket, [port], fun ok_pair_or_error/1},
     {py_nif, sendto_test_udp, [udp_fd, data, host, port], fun ok_or_error/1},
     {py_nif, recvfrom_test_udp, [udp_fd, max_bytes], fun ok_pair_or_error/1},
     {py_nif, set_udp_broadcast, [udp_fd, flag], fun ok_or_error/1},
     {py_nif, close_test_fd, [udp_fd], fun ok_or_error/1}].

api_table(AsyncLoop) ->
    Result = fun py_result/1,
    [{py, call, [name, name, args], Result},
     {py, call, [name, name, args, kwargs], Result},
     {py, call, [name, name, args, kwargs, timeout], Result},
     {py, call_async, [name, name, args], fun async_or_error/1},
     {py, call_async, [name, name, args, kwargs], fun async_or_error/1},
     {py, await, [foreign_async_ref], Result},
     {py, await, [async_ref, timeout], Result},
     {py, eval, [code], Result},
     {py, eval, [code, kwargs], Result},
     {py, exec, [code], fun exec_result/1},
     {py, exec, [code, timeout], fun exec_result/1},
     {py, version, [], fun is_binary/1},
     {py, register_function, [name, function], fun is_ok/1},
     {py, unregister_function, [name], fun is_ok/1},
     {py, is_timeout, [any], fun is_boolean/1},
     {py_asyncio, start_loop, [asyncio_options], fun ok_pair_or_error/1},
     {py_asyncio, stop_loop, [not_a_loop], fun(R) -> R =:= {error, not_found} end},
     {py_asyncio, child_spec, [asyncio_options], fun is_map/1},
     {py_asyncio, submit, [{asyncio_loop, AsyncLoop}, name, name, args], fun is_reference/1},
     {py_asyncio, call, [{asyncio_loop, AsyncLoop}, name, name, args], Result},
     {py_asyncio, call, [{asyncio_loop, AsyncLoop}, name, name, args, timeout], Result},
     {py_asyncio, cancel, [{asyncio_loop, AsyncLoop}, any], fun is_ok/1},
     {py_event_router, start_link, [loop], fun started/1},
     {py_event_worker, start_link, [loops], fun started/1},
     {py_event_worker, start_link, [worker_name, loops], fun started/1},
     {py_event_worker, start_placed, [loop], fun started/1},
     {py_event_worker, adopt, [worker, loop], fun is_ok/1}].

%%--------------------------------------------------------------------
%% Running a table

each_seed(Run) ->
    First = env_integer("PY_FUZZ_SEED", ?DEFAULT_SEED),
    Seeds = env_integer("PY_FUZZ_SEEDS", 1),
    lists:foreach(fun(Seed) -> ct:log("seed ~p", [Seed]), Run(Seed) end,
                  lists:seq(First, First + Seeds - 1)).

env_integer(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        Text -> list_to_integer(Text)
    end.

%% One batch per function: a context of live and dead resources made, the
%% calls run, the context ended, then the node checked.
fuzz_table(Seed, Table) ->
    Cases = env_integer("PY_FUZZ_CASES", ?DEFAULT_CASES),
    lists:foreach(
      fun({M, F, Kinds, _Valid} = Entry) ->
              _ = rand:seed(exsss, {Seed, erlang:phash2({M, F}), length(Kinds)}),
              Baseline = fd_count(),
              Ctx = context(),
              N = case Kinds of [] -> 3; _ -> Cases end,
              Failures = lists:append([fuzz_one(Entry, Ctx) || _ <- lists:seq(1, N)]),
              done(Ctx),
              Failures =:= [] orelse ct:fail({seed, Seed, {M, F, length(Kinds)}, Failures}),
              healthy(Baseline, {M, F, length(Kinds), seed, Seed})
      end, Table).

fuzz_one({M, F, Kinds, Valid}, Ctx) ->
    Args = [gen(Kind, Ctx) || Kind <- Kinds],
    trace(M, F, Args),
    Outcome = outcome(M, F, Args),
    after_call(M, F, Args, Outcome, Ctx),
    case acceptable(Outcome, Valid) orelse unreachable_node(M, Outcome) of
        true -> [];
        false -> [{M, F, shown(Args), Outcome}]
    end.

%% py_asyncio on a pid of a node that cannot be reached exits as
%% gen_server does (`stop_loop' documents it: out of reach is not "not
%% found").
unreachable_node(py_asyncio, {raised, exit, {{nodedown, _}, _}}) -> true;
unreachable_node(_M, _Outcome) -> false.

acceptable({raised, error, badarg}, _Valid) -> true;
acceptable({returned, {error, _}}, _Valid) -> true;
acceptable({returned, Value}, Valid) -> Valid(Value);
acceptable(_, _) -> false.

%% The call, in a process of its own (its mailbox, links and namespace go
%% with it), under a deadline. A submitted Python job's answer is awaited
%% too: it must be `{ok, _}' or `{error, _}'.
outcome(M, F, Args0) ->
    Parent = self(),
    {Pid, Mon} = spawn_monitor(
                   fun() ->
                           process_flag(trap_exit, true),
                           Args = [caller(A) || A <- Args0],
                           Result = try {returned, apply(M, F, Args)}
                                    catch Class:Reason -> {raised, Class, Reason}
                                    end,
                           Parent ! {self(), Result, answer(M, F, Args, Result)}
                   end),
    receive
        {Pid, Result, ok} ->
            erlang:demonitor(Mon, [flush]),
            Result;
        {Pid, _Result, Bad} ->
            erlang:demonitor(Mon, [flush]),
            {bad_answer, Bad};
        {'DOWN', Mon, process, Pid, Reason} ->
            {died, Reason}
    after ?CALL_DEADLINE ->
        exit(Pid, kill),
        receive {'DOWN', Mon, process, Pid, _} -> ok end,
        {hang, M, F}
    end.

%% `'$caller'' stands for the calling process (generated before it exists).
caller('$caller') -> self();
caller({py_async, Ref, Job, '$caller'}) -> {py_async, Ref, Job, self()};
caller(Arg) -> Arg.

%% A job submitted for this process: its answer, under the deadline.
answer(py_nif, F, [Caller, Ref | _], {returned, {ok, Job}})
  when F =:= call; F =:= control_call; F =:= eval; F =:= exec ->
    case Caller =:= self() of
        true ->
            receive
                {py_result, Ref, {ok, _}} -> ok;
                {py_result, Ref, {error, _}} -> ok;
                {py_result, Ref, Other} -> {odd_result, Other}
            after ?CALL_DEADLINE - 2000 ->
                py_nif:cancel(Job),
                no_result
            end;
        false ->
            ok
    end;
answer(_M, _F, _Args, _Result) ->
    ok.

%% What a call made that outlives it is undone: a loop or socket made, a
%% loop started, a function registered, a server or placer replaced.
after_call(py_nif, event_loop_new, [], {returned, {ok, Loop}}, _Ctx) ->
    ok = py_nif:event_loop_destroy(Loop);
after_call(py_nif, create_test_udp_socket, _, {returned, {ok, {Fd, _}}}, _Ctx) ->
    ok = py_nif:close_test_fd(Fd);
after_call(py_nif, set_callback_server, _, _, _Ctx) ->
    ok = py_nif:set_callback_server(whereis(py_callback));
after_call(py_nif, set_loop_placer, _, _, _Ctx) ->
    ok = py_nif:set_loop_placer(whereis(py_event_loops));
after_call(py_nif, set_orphan_stopper, _, _, _Ctx) ->
    ok = py_nif:set_orphan_stopper(whereis(py_orphan_stopper));
after_call(py, register_function, [Name | _], {returned, ok}, _Ctx) ->
    ok = py:unregister_function(Name);
after_call(py_asyncio, start_loop, _, {returned, {ok, Pid}}, _Ctx) ->
    ok = py_asyncio:stop_loop(Pid);
after_call(_M, _F, _Args, _Outcome, _Ctx) ->
    ok.

%% With `PY_FUZZ_TRACE' set to a file name, each call is appended to it
%% before it is made: the last line names the call that took the node down.
trace(M, F, Args) ->
    case os:getenv("PY_FUZZ_TRACE") of
        false -> ok;
        File -> ok = file:write_file(File, io_lib:format("~0p.~n", [{M, F, shown(Args)}]), [append, sync])
    end.

%% Shown in a failure: huge terms cut down.
shown(Args) ->
    [shrink(A) || A <- Args].

shrink(B) when is_binary(B), byte_size(B) > 64 -> {binary, byte_size(B), binary:part(B, 0, 32)};
shrink(I) when is_integer(I), abs(I) > 1 bsl 70 -> {bignum, I band 16#ffff};
shrink(L) when is_list(L) ->
    try lists:sublist([shrink(E) || E <- L], 8) catch error:_ -> improper_list end;
shrink(T) when is_tuple(T), tuple_size(T) < 8 -> list_to_tuple([shrink(E) || E <- tuple_to_list(T)]);
shrink(T) -> T.

%%--------------------------------------------------------------------
%% Health after a batch

%% Alive (we run), Python answers, and the fd count is back to its
%% baseline: closes of selected fds finish asynchronously, so it is waited
%% for, with a generous deadline.
healthy(Baseline, Batch) ->
    {ok, 2} =:= py:eval(<<"1+1">>) orelse ct:fail({python_dead_after, Batch}),
    Deadline = erlang:monotonic_time(millisecond) + 15000,
    case wait_fds(Baseline, Deadline) of
        ok -> ok;
        {leaked, Now} -> ct:fail({fd_leak, Batch, {baseline, Baseline}, {now, Now}, fds()})
    end.

wait_fds(Baseline, Deadline) ->
    case fd_count() of
        N when N =< Baseline -> ok;
        N ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {leaked, N};
                false -> receive after 20 -> wait_fds(Baseline, Deadline) end
            end
    end.

%% The fds the NIFs and Python make (sockets, pipes, epoll and timer fds):
%% files by path are left out, as Common Test opens and closes its own log
%% files in this node while the cases run.
fd_count() ->
    length([Fd || {Fd, {ok, Link}} <- fds(), not lists:prefix("/", Link)]).

fds() ->
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    [{Fd, file:read_link(filename:join("/proc/self/fd", Fd))} || Fd <- Fds].

%%--------------------------------------------------------------------
%% The context: resources, live and dead, the generators draw from

context() ->
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, Router} = py_event_router:start_link(Loop),
    unlink(Router),
    {ok, Closed} = py_nif:event_loop_new(),
    ok = py_nif:event_loop_destroy(Closed),
    {ok, {UdpFd, UdpPort}} = py_nif:create_test_udp_socket(0),
    {ok, TimerKey} = py_nif:call_later(Loop, 3600000, 7),
    {ok, FdRef} = py_nif:add_reader(Loop, UdpFd, 8),
    Sink = spawn(fun() -> receive stop -> ok end end),
    #{loop => Loop, router => Router, closed_loop => Closed,
      udp_fd => UdpFd, udp_port => UdpPort, timer_key => TimerKey, fdref => FdRef,
      job => finished_job(), cancelled_job => cancelled_job(),
      fd_resource => fd_resource(UdpFd, UdpPort), reply => used_reply(),
      sleep => sleep_wait(), sink => Sink, dead => dead_pid(),
      foreign_pid => foreign_pid(), foreign_ref => foreign_ref(),
      port => hd(erlang:ports())}.

done(#{loop := Loop, router := Router, udp_fd := UdpFd, sink := Sink}) ->
    Mon = erlang:monitor(process, Router),
    ok = py_nif:event_loop_destroy(Loop),
    receive {'DOWN', Mon, process, Router, _} -> ok after 5000 -> exit(Router, kill) end,
    _ = py_nif:close_test_fd(UdpFd),
    Sink ! stop,
    ok.

%% The Job resource of a call that has answered.
finished_job() ->
    Ref = make_ref(),
    {ok, Job} = py_nif:call(self(), Ref, <<"math">>, <<"sqrt">>, [4], #{}),
    receive {py_result, Ref, {ok, 2.0}} -> Job end.

cancelled_job() ->
    Ref = make_ref(),
    {ok, Job} = py_nif:call(dead_pid(), Ref, <<"math">>, <<"sqrt">>, [4], #{}),
    ok = py_nif:cancel(Job),
    Job.

%% The select resource of a watched fd: this process is made the router of
%% a loop of its own, which is destroyed after (the resource stays, closed).
fd_resource(UdpFd, UdpPort) ->
    {ok, Loop} = py_nif:event_loop_new(),
    ok = py_nif:event_loop_set_router(Loop, self()),
    {ok, _} = py_nif:add_reader(Loop, UdpFd, 1),
    ok = py_nif:loop_apply_selects(Loop),
    ok = py_nif:sendto_test_udp(UdpFd, <<"x">>, "127.0.0.1", UdpPort),
    Id = py_nif:loop_id(Loop),
    Resource = receive {select, R, Id, ready_input} -> R after 5000 -> ct:fail(no_select) end,
    {ok, _} = recv_until_empty(UdpFd),
    ok = py_nif:event_loop_destroy(Loop),
    flush_loop_messages(Id),
    Resource.

recv_until_empty(Fd) ->
    case py_nif:recvfrom_test_udp(Fd, 100) of
        {ok, _} -> recv_until_empty(Fd);
        {error, eagain} -> {ok, empty}
    end.

flush_loop_messages(Id) ->
    receive
        {py_loop, Id, _} -> flush_loop_messages(Id);
        {select, _, Id, _} -> flush_loop_messages(Id)
    after 0 -> ok
    end.

%% The reply resource of an `erlang.call' from Python, answered already:
%% this process stands in for the callback server meanwhile.
used_reply() ->
    ok = py_nif:set_callback_server(self()),
    try
        Async = py:call_async(erlang, call, [<<"py_fuzz_nothing">>]),
        Reply = receive
                    {py_callback, _Name, _Args, R, _Id} -> R
                after 10000 -> ct:fail(no_callback)
                end,
        ok = py_nif:callback_reply(Reply, {ok, 1}),
        {ok, 1} = py:await(Async, 10000),
        Reply
    after
        ok = py_nif:set_callback_server(whereis(py_callback))
    end.

%% The wait resource of a blocking `_erlang_sleep', woken already: this
%% process stands in for the placer meanwhile.
sleep_wait() ->
    ok = py_nif:set_loop_placer(self()),
    try
        Async = py:call_async(py_event_loop, '_erlang_sleep', [1.0]),
        Wait = receive
                   {py_sleep, _Ms, W} -> W
               after 10000 -> ct:fail(no_sleep)
               end,
        ok = py_nif:sleep_done(Wait),
        {ok, _} = py:await(Async, 10000),
        Wait
    after
        ok = py_nif:set_loop_placer(whereis(py_event_loops))
    end.

dead_pid() ->
    {Pid, Mon} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Mon, process, Pid, _} -> Pid end.

%% A pid and a ref of a node that does not exist.
foreign_pid() ->
    binary_to_term(<<131, 88, 100, 0, 13, "fake@nohost12", 0:32, 1:32, 0:32>>).

foreign_ref() ->
    binary_to_term(<<131, 90, 0, 3, 100, 0, 13, "fake@nohost12", 0:32, 1:32, 2:32, 3:32>>).

%%--------------------------------------------------------------------
%% Generators

%% One argument of a kind: half the time one near-valid for it (so that
%% later arguments get checked too), else anything.
gen(Kind, Ctx) ->
    case rand:uniform(2) of
        1 -> near(Kind, Ctx);
        2 -> unsafe_free(Kind, any(Ctx, 3))
    end.

%% Anything is not safe for a few kinds: a status would end the node, the
%% parent's pid would arm its death signal, a long valid timeout would wait
%% for good, an init map could apply.
unsafe_free(not_a_status, S) when is_integer(S), S >= 0, S =< 255 -> -1;
unsafe_free(not_the_parent, P) when is_integer(P) -> -abs(P) - 1;
unsafe_free(short_timeout, T) when is_integer(T), T > 200 -> 0;
unsafe_free(timeout, T) when is_integer(T), T > 2000 -> 0;
unsafe_free(timeout, infinity) -> 0;
unsafe_free(init_options, M) when is_map(M) -> maps:put(paths, [<<"a", 0>>], M);
unsafe_free(not_a_loop, T) ->
    %% Only ours: a registered name could be a real loop of another suite.
    case is_atom(T) andalso whereis(T) =/= undefined of
        true -> nonexistent_name;
        false -> T
    end;
unsafe_free(_Kind, T) -> T.

near(init_options, _Ctx) ->
    maps:put(executable, <<"py", 0>>,
             maps:from_list(pick([[], [{paths, []}], [{max_workers, any_int()}],
                                  [{wheel_resolution_us, any_int()}, {site_dirs, [<<"x">>]}]])));
near(pid, Ctx) -> pick(['$caller', maps:get(dead, Ctx), maps:get(sink, Ctx), maps:get(foreign_pid, Ctx)]);
near(pid_or_undefined, Ctx) -> pick([undefined, near(pid, Ctx)]);
near(name, _Ctx) -> name();
near(code, _Ctx) -> code();
near(args, Ctx) -> [any(Ctx, 2) || _ <- lists:seq(1, rand:uniform(3) - 1)];
near(kwargs, Ctx) -> maps:from_list([{pick([<<"x">>, <<"key">>, "x", x, 1]), any(Ctx, 2)}
                                     || _ <- lists:seq(1, rand:uniform(3) - 1)]);
near(job, Ctx) -> maps:get(pick([job, cancelled_job]), Ctx);
near(reply, Ctx) -> maps:get(reply, Ctx);
near(reply_value, Ctx) -> pick([{ok, any(Ctx, 2)}, {error, <<"no">>}, {error, any(Ctx, 1)}]);
near(loop, Ctx) -> maps:get(pick([loop, loop, closed_loop]), Ctx);
near(loops, Ctx) -> [near(loop, Ctx) || _ <- lists:seq(1, rand:uniform(3) - 1)];
near(fd, Ctx) -> pick([maps:get(udp_fd, Ctx), -1, 0, 1 bsl 31 - 1, 999999]);
near(udp_fd, Ctx) -> pick([maps:get(udp_fd, Ctx), 0, 1, 2, -1, 1 bsl 31 - 1]);
near(callback_id, _Ctx) -> pick([0, 1, 1 bsl 64 - 1, rand:uniform(1000)]);
near(fdref, Ctx) -> pick([maps:get(fdref, Ctx), {maps:get(udp_fd, Ctx), any_int()},
                          {any_int(), any_int()}]);
near(delay, _Ctx) -> pick([0, 1, 3600000, 1 bsl 32, 1 bsl 64 - 1, 1 bsl 63]);
near(timer_key, Ctx) -> pick([maps:get(timer_key, Ctx), 0, 1 bsl 64 - 1, any_int()]);
near(short_timeout, _Ctx) -> pick([0, 1, 10]);
near(timeout, _Ctx) -> pick([0, 1, 100, 2000]);
near(fd_resource, Ctx) -> maps:get(fd_resource, Ctx);
near(direction, _Ctx) -> pick([read, write, sideways]);
near(sleep, Ctx) -> maps:get(sleep, Ctx);
near(not_the_parent, _Ctx) -> pick([0, -1, 1, 1 bsl 31, 1 bsl 40]);
near(not_a_status, _Ctx) -> pick([-1, 256, 1 bsl 64, 1.0, '0']);
near(signal, _Ctx) -> pick([sighup, sigalrm, sigusr2, sigterm, sigkill, sigint]);
near(port, _Ctx) -> pick([0, 65535, 65536, -1]);
near(data, Ctx) -> pick([<<"x">>, [<<"a">>, $b], <<>>, big_binary(), sub_binary(), any(Ctx, 2)]);
near(host, _Ctx) -> pick(["127.0.0.1", <<"127.0.0.1">>, {127, 0, 0, 1}, "::1", "", [0]]);
near(max_bytes, _Ctx) -> pick([1, 100, 65536, 65537, 0]);
near(flag, _Ctx) -> pick([true, false, 0, 1, 2]);
near(async_ref, Ctx) -> pick([{py_async, make_ref(), maps:get(job, Ctx), '$caller'},
                              {py_async, make_ref(), make_ref(), '$caller'},
                              {py_async, make_ref(), maps:get(loop, Ctx), maps:get(dead, Ctx)}]);
%% Another process's: `await/1' would wait for good on one of ours.
near(foreign_async_ref, Ctx) -> {py_async, make_ref(), maps:get(job, Ctx), self()};
near(function, Ctx) -> pick([fun() -> ok end, fun(X) -> X end, fun erlang:self/0, any(Ctx, 1)]);
near(asyncio_options, Ctx) -> pick([#{}, #{stop_timeout => any_int()}, #{name => pick(atoms())},
                                    #{restart => any(Ctx, 1)}, #{bad_key => 1}]);
near(not_a_loop, Ctx) -> pick([maps:get(sink, Ctx), maps:get(dead, Ctx), nonexistent_name,
                               {nonexistent_name, node()}, {a, 'fake@nohost12'}]);
near({asyncio_loop, Loop}, _Ctx) -> Loop;
near(worker_name, _Ctx) -> pick([py_fuzz_worker, py_event_default, undefined]);
near(worker, Ctx) -> pick([maps:get(sink, Ctx), nonexistent_name, maps:get(dead, Ctx)]);
near(any, Ctx) -> any(Ctx, 3).

%% A random term, `Depth' levels deep at most.
any(Ctx, 0) -> leaf(Ctx);
any(Ctx, Depth) ->
    case rand:uniform(12) of
        N when N =< 7 -> leaf(Ctx);
        8 -> [any(Ctx, Depth - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        9 -> list_to_tuple([any(Ctx, Depth - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        10 -> maps:from_list([{any(Ctx, Depth - 1), any(Ctx, Depth - 1)}
                              || _ <- lists:seq(1, rand:uniform(3) - 1)]);
        11 -> [any(Ctx, Depth - 1) | leaf(Ctx)];
        12 -> pick(deep_terms())
    end.

leaf(Ctx) ->
    case rand:uniform(9) of
        1 -> any_int();
        2 -> pick(floats());
        3 -> pick(atoms());
        4 -> pick(binaries());
        5 -> pick(strings());
        6 -> maps:get(pick([loop, closed_loop, job, cancelled_job, fd_resource, reply, sleep,
                            foreign_ref, port]), Ctx);
        7 -> pick([self(), maps:get(dead, Ctx), maps:get(sink, Ctx), maps:get(foreign_pid, Ctx)]);
        8 -> pick([make_ref(), fun() -> ok end, fun lists:map/2, #{}, [], {}]);
        9 -> name()
    end.

any_int() ->
    pick([0, 1, -1, 255, 256, 65535, 65536, 1 bsl 31, 1 bsl 32, 1 bsl 63 - 1, 1 bsl 63,
          1 bsl 64 - 1, 1 bsl 64, -(1 bsl 63), -(1 bsl 63) - 1, -(1 bsl 64), 1 bsl 1000,
          -(1 bsl 1000), rand:uniform(2000) - 1000]).

%% Erlang has no NaN or infinity: the floats nearest to trouble.
floats() ->
    [0.0, -0.0, 1.0, -1.0, 0.5, 1.0e308, -1.0e308, 5.0e-324, 1.8446744073709552e19,
     9.223372036854776e18, 4294967296.0].

atoms() ->
    [ok, error, true, false, undefined, nil, none, infinity, '', 'None', '__import__',
     '__builtins__', builtins, math, sys, 'os.path', 'math.sqrt', '__class__', read, write,
     list_to_atom([$a, 0, $b]), list_to_atom([16#1F600]), list_to_atom(lists:duplicate(255, $x))].

binaries() ->
    [<<>>, <<0>>, <<"math">>, <<"sqrt">>, <<"a", 0, "b">>, <<255, 254>>,
     <<16#ed, 16#a0, 16#80>>,                   % a lone surrogate, UTF-8 encoded
     <<16#c0, 16#80>>,                          % an overlong NUL
     <<"1+1">>, <<"math.sqrt">>, big_binary(), sub_binary(), <<1:3>>, <<"é"/utf8>>].

%% A megabyte, and a piece of one (a sub-binary).
big_binary() ->
    binary:copy(<<"x">>, 1 bsl 20).

sub_binary() ->
    Big = binary:copy(<<"sqrt">>, 1000),
    binary:part(Big, 1, 3999).

strings() ->
    ["math", "sqrt", "1+1", [0], [$a, 0], [-1], [256], [16#110000], [1 bsl 40],
     [<<"ma">>, [$t, [<<"h">>]]], [<<"ma">> | <<"th">>], [<<"ma">> | foo], "\x{1F600}"].

%% Module and function names: mostly real, harmless ones (nothing that
%% exits, blocks on stdin, or computes for long on a huge argument).
name() ->
    pick([math, sqrt, <<"math">>, <<"builtins">>, "json", <<"dumps">>, <<"loads">>, repr, str,
          len, hash, abs, sorted, getattr, isinstance, <<"Path.home">>, <<"..">>, <<".">>, <<>>,
          <<"math", 0>>, <<"no_such_module_py_fuzz">>, '__builtins__', 'os.path',
          <<"erlang">>, <<"send">>, <<"call">>, <<255>>, [$m, $a, $t, $h | <<>>],
          "\x{1F600}", list_to_atom([$a, 0, $b])]).

%% Python text: valid, invalid, deep or with bytes Python refuses.
code() ->
    pick([<<"1+1">>, "1+1", <<"x = 1">>, <<"'''never closed">>, <<"(">>, <<"1", 0, "+1">>,
          <<"'", 255, "'">>, <<"raise SystemExit(1)">>, <<"raise KeyboardInterrupt">>,
          <<"raise GeneratorExit">>, <<"1/0">>, <<"__import__('json').loads('[' * 100000)">>,
          iolist_to_binary([lists:duplicate(100000, "("), "1", lists:duplicate(100000, ")")]),
          iolist_to_binary(["1", lists:duplicate(50000, "+1")]),
          iolist_to_binary([lists:duplicate(50000, "-"), "1"]),
          <<"(lambda f: f(f))(lambda f: f(f))">>, <<"x">>, <<>>, <<" ">>, <<"\n\n">>,
          <<"# only a comment">>, <<"b'\\xff'">>, <<"'\\ud800'">>, <<"object()">>,
          <<"10 ** 10000">>, <<"[[[]]] * 3">>, <<"{1: 2, 'a': [3]}">>, <<"__builtins__">>,
          <<"lambda: 1">>, <<"globals()">>, <<"\t1">>, <<"1\r\n">>, <<"\xef\xbb\xbf1">>]).

deep_terms() ->
    [lists:foldl(fun(_, Acc) -> [Acc] end, [], lists:seq(1, 5000)),
     lists:foldl(fun(_, Acc) -> {Acc} end, {}, lists:seq(1, 5000)),
     lists:foldl(fun(_, Acc) -> #{a => Acc} end, #{}, lists:seq(1, 2000)),
     lists:foldl(fun(I, Acc) -> [I | Acc] end, tail, lists:seq(1, 1000)),
     lists:seq(1, 100000),
     maps:from_list([{I, I} || I <- lists:seq(1, 1000)]),
     maps:from_list([{<<I:8>>, I} || I <- lists:seq(0, 255)])].

pick(List) ->
    lists:nth(rand:uniform(length(List)), List).

%%--------------------------------------------------------------------
%% Valid results

is_ok(ok) -> true;
is_ok(_) -> false.

ok_or_error(ok) -> true;
ok_or_error({error, _}) -> true;
ok_or_error(_) -> false.

ok_pair_or_error({ok, _}) -> true;
ok_pair_or_error(Other) -> ok_or_error(Other).

submitted({ok, Job}) -> is_reference(Job);
submitted(_) -> false.

fd_registered({ok, {Fd, Token}}) -> is_integer(Fd) andalso is_integer(Token);
fd_registered(_) -> false.

count_or_error(N) -> is_integer(N) andalso N >= 0.

pending(List) when is_list(List) ->
    lists:all(fun({Id, Kind}) -> is_integer(Id) andalso lists:member(Kind, [read, write, timer]);
                 (_) -> false
              end, List);
pending(_) -> false.

py_result({ok, _}) -> true;
py_result(_) -> false.

exec_result(ok) -> true;
exec_result(_) -> false.

async_or_error({py_async, _, _, _}) -> true;
async_or_error(_) -> false.

started({ok, Pid}) -> is_pid(Pid);
started(ignore) -> true;
started(_) -> false.

%%--------------------------------------------------------------------
%% Python errors

%% Definitions the raisers use, exec'd into the caller's namespace.
bad_python() ->
    <<"
import sys

class StrRaises(Exception):
    def __str__(self):
        raise ValueError('no str')

class StrNotText(Exception):
    def __str__(self):
        return 42

class StrExits(Exception):
    def __str__(self):
        raise SystemExit('from __str__')

class ReprRaises:
    def __repr__(self):
        raise RuntimeError('no repr')
    __str__ = __repr__

class ClassRaises:
    @property
    def __class__(self):
        raise RuntimeError('no class')

class NameRaisesMeta(type):
    @property
    def __name__(cls):
        raise RuntimeError('no name')

class NameRaises(Exception, metaclass=NameRaisesMeta):
    pass

class NotesOdd(Exception):
    pass

class BaseSub(BaseException):
    pass

class IterRaises(list):
    def __iter__(self):
        raise RuntimeError('no iter')

class ItemsRaise(dict):
    def items(self):
        raise RuntimeError('no items')
    def keys(self):
        raise RuntimeError('no keys')

class HashRaisesOnEq:
    def __hash__(self):
        return 1
    def __eq__(self, other):
        raise RuntimeError('no eq')

def chained(n):
    error = ValueError('root')
    for i in range(n):
        try:
            raise KeyError(i) from error
        except KeyError as e:
            error = e
    raise error

def cyclic():
    a = ValueError('a')
    b = ValueError('b')
    a.__cause__ = b
    b.__cause__ = a
    raise a

def notes():
    e = NotesOdd('n')
    e.__notes__ = ReprRaises()
    raise e

def group(n):
    raise ExceptionGroup('g', [ValueError(i) for i in range(n)])

def nested_group(n):
    e = ValueError('leaf')
    for i in range(n):
        e = ExceptionGroup('g%d' % i, [e])
    raise e

def recurse():
    return recurse()

async def raise_async(kind):
    await asyncio.sleep(0)
    raise kind('async')
">>.

%% {How, Code}: exec'd, eval'd, called (builtins.exec) and submitted to a
%% py_asyncio loop (as `eval' of a raising expression in a coroutine).
raisers() ->
    [<<"raise SystemExit(3)">>, <<"raise SystemExit">>, <<"sys.exit('bye')">>,
     <<"raise KeyboardInterrupt">>, <<"raise GeneratorExit">>, <<"raise BaseSub('b')">>,
     <<"raise StrRaises()">>, <<"raise StrNotText()">>, <<"raise StrExits()">>,
     <<"raise NameRaises('n')">>, <<"notes()">>, <<"chained(3000)">>, <<"cyclic()">>,
     <<"group(1000)">>, <<"nested_group(3000)">>, <<"recurse()">>,
     <<"raise StopIteration">>, <<"raise StopAsyncIteration">>, <<"raise MemoryError">>,
     <<"raise RecursionError">>, <<"raise SystemError('s')">>,
     <<"raise Exception(ReprRaises())">>, <<"raise ValueError('\\ud800' * 10)">>,
     <<"raise ValueError('\\x00' * 10)">>, <<"raise ValueError('x' * 1000000)">>,
     <<"raise type('E' * 300, (Exception,), {})('long name')">>,
     <<"raise type('\\u00e9', (Exception,), {})('non-ascii name')">>,
     <<"raise BaseExceptionGroup('bg', [KeyboardInterrupt()])">>].

%% Values that do not convert, or whose conversion runs odd code.
unconvertibles() ->
    [<<"ReprRaises()">>, <<"ClassRaises()">>, <<"IterRaises([1, 2])">>,
     <<"ItemsRaise(a=1)">>, <<"{HashRaisesOnEq(): 1}">>, <<"[ReprRaises()]">>,
     <<"(lambda: (yield))()">>, <<"sys">>, <<"type">>, <<"NotImplemented">>, <<"...">>].

python_error(Raise, Loop) ->
    Standalone = <<"import asyncio\n", (bad_python())/binary, "\n", Raise/binary>>,
    Checks = [{exec, fun() -> py:exec(Raise, 30000) end},
              {eval, fun() -> py:eval(<<"exec(", (quoted(Raise))/binary, ")">>) end},
              {call, fun() -> py:call(builtins, exec, [Standalone, #{}], #{}, 30000) end},
              {asyncio, fun() -> py_asyncio:call(Loop, builtins, exec, [Standalone, #{}], 30000) end}],
    [{How, Raise, shrink(Outcome)}
     || {How, Call} <- Checks,
        Outcome <- [in_process(Call)],
        not is_error_tuple(Outcome)].

unconvertible_results() ->
    [{unconvertible, Code, shrink(Outcome)}
     || Code <- unconvertibles(),
        Outcome <- [in_process(fun() -> py:eval(Code) end)],
        not (is_error_tuple(Outcome) orelse element(1, Outcome) =:= ok)].

%% The exec'd definitions live in the caller's namespace: run in this
%% process, under the deadline.
in_process(Call) ->
    Parent = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
                                       ok = py:exec(<<"import asyncio\n", (bad_python())/binary>>),
                                       Parent ! {self(), catch Call()}
                               end),
    receive
        {Pid, Result} -> erlang:demonitor(Mon, [flush]), Result;
        {'DOWN', Mon, process, Pid, Reason} -> {died, Reason}
    after 60000 ->
        exit(Pid, kill),
        {hang, Call}
    end.

is_error_tuple({error, {Name, Message, Traceback}}) ->
    (is_atom(Name) orelse is_binary(Name)) andalso is_binary(Message) andalso is_binary(Traceback);
is_error_tuple(_) -> false.

quoted(Code) ->
    <<"'", (binary:replace(binary:replace(Code, <<"\\">>, <<"\\\\">>, [global]),
                           <<"'">>, <<"\\'">>, [global]))/binary, "'">>.
