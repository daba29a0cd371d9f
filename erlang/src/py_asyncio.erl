%% @doc Long-lived asyncio loops driven from Erlang.
%%
%% A loop is a `py_asyncio_loop' process that owns a Python thread running
%% `run_forever' on an `ErlangEventLoop(isolated=True)'. Erlang processes,
%% on this node or another, submit coroutines to it and get each result as a
%% message:
%%
%% ```
%% {ok, Loop} = py_asyncio:start_loop(#{name => my_loop}),
%% Ref = py_asyncio:submit(my_loop, erlang_asyncio, sleep, [0.01, 42]),
%% receive {py_result, Ref, {ok, 42}} -> ok end,
%% {ok, 42} = py_asyncio:call(my_loop, erlang_asyncio, sleep, [0.01, 42], 1000),
%% ok = py_asyncio:stop_loop(my_loop).
%% '''
%%
%% A result is `{ok, Term}', `{error, {ExceptionName, Message, Traceback}}'
%% (as `py:call'), or `{error, cancelled}' when the task was cancelled
%% (`cancel/2', `stop_loop/1'). A caller that dies has its tasks cancelled.
%% Messages sent to the loop process that are not part of its protocol are
%% for the coroutines: `await erlang.receive(Timeout)' returns them, and
%% `erlang.self()' is the loop process.
-module(py_asyncio).

-export([start_loop/1, stop_loop/1, child_spec/1,
         submit/4, call/4, call/5, cancel/2]).

-type loop() :: pid() | atom() | {atom(), node()}.
%% A loop process, its local name, or `{Name, Node}' for a named loop on
%% another node.
-type options() :: #{name => atom(),
                     stop_timeout => non_neg_integer(),
                     id => term(),
                     restart => permanent | transient | temporary}.
%% `name': register the loop locally. `stop_timeout' (ms, default 5000, at
%% most 20000): how long stopping may wait for Python (tasks, the thread).
%% `id', `restart': for `child_spec/1' only (default `py_asyncio_loop',
%% `transient').
-type result() :: {ok, term()}
                | {error, {atom() | binary(), binary(), binary()}
                        | cancelled | timeout | {loop_down, term()}}.
-export_type([loop/0, options/0, result/0]).

%% How long `call' waits for a result before it checks, once, that its
%% `Loop' is a loop at all.
-define(LOOP_CHECK_AFTER, 1000).
%% The longest a look at whether a process is a loop waits for its node.
-define(LOOK_TIMEOUT, 5000).

%% @doc Starts a loop under `py_asyncio_sup' (stopped with the application).
-spec start_loop(options()) -> {ok, pid()} | {error, term()}.
start_loop(Opts) when is_map(Opts) ->
    ok = py_asyncio_loop:check_options(Opts),
    supervisor:start_child(py_asyncio_sup, [Opts]);
start_loop(Opts) ->
    erlang:error(badarg, [Opts]).

%% @doc Stops a loop: its tasks are cancelled (their callers get
%% `{error, cancelled}'), its async generators and default executor shut down,
%% the Python loop closed and its thread joined. Waits for Python at most the
%% loop's `stop_timeout' plus 2 s. A loop under your own supervisor is stopped
%% for good only if its restart type is `transient' or `temporary'.
-spec stop_loop(loop()) -> ok | {error, not_found}.
stop_loop(Loop) when is_pid(Loop); is_atom(Loop); is_tuple(Loop), tuple_size(Loop) =:= 2 ->
    %% Any other process is not ours to stop (a plain one would never answer).
    case reachable(Loop) andalso is_loop(Loop) of
        Maybe when Maybe =:= true; Maybe =:= unknown ->
            Monitor = erlang:monitor(process, Loop),
            try gen_server:stop(Loop, normal, infinity) of
                ok -> erlang:demonitor(Monitor, [flush]), ok
            catch
                exit:Reason:Stack ->
                    %% It ended some other way under us (another process
                    %% stopped it, or it failed by itself): stopped, as
                    %% asked, unless it was never there or is out of reach.
                    receive
                        {'DOWN', Monitor, process, _, noproc} -> {error, not_found};
                        {'DOWN', Monitor, process, _, noconnection} ->
                            erlang:raise(exit, Reason, Stack);
                        {'DOWN', Monitor, process, _, _} -> ok
                    after 5000 ->
                        erlang:demonitor(Monitor, [flush]),
                        erlang:raise(exit, Reason, Stack)
                    end
            end;
        false ->
            {error, not_found}
    end;
stop_loop(Loop) ->
    erlang:error(badarg, [Loop]).

%% @doc A child spec that runs a loop under your own supervisor.
-spec child_spec(options()) -> supervisor:child_spec().
child_spec(Opts) when is_map(Opts) ->
    ok = py_asyncio_loop:check_options(Opts),
    #{id => maps:get(id, Opts, py_asyncio_loop),
      start => {py_asyncio_loop, start_link, [Opts]},
      restart => maps:get(restart, Opts, transient),
      shutdown => py_asyncio_loop:shutdown_time(Opts),
      type => worker,
      modules => [py_asyncio_loop]};
child_spec(Opts) ->
    erlang:error(badarg, [Opts]).

%% @doc Schedules `Module.Function(*Args)' on the loop and returns at once.
%% `Function' is usually a coroutine function (a plain function's result is
%% fine too) and may be a dotted path. The caller later receives
%% `{py_result, Ref, result()}'; `{error, {loop_down, noproc}}' at once if
%% the loop is not there. A loop that goes away later (killed) answers
%% nothing: monitor it, or use `call/5', which does.
-spec submit(loop(), py:name(), py:name(), list()) -> reference().
submit(Loop, Module, Function, Args) when is_list(Args) ->
    is_loop_name(Loop) orelse error(badarg),
    Ref = make_ref(),
    submit(Loop, self(), Ref, Module, Function, Args),
    Ref;
submit(_Loop, _Module, _Function, _Args) ->
    error(badarg).

%% Submits a task whose result goes to `ReplyTo' (the caller, or an alias of
%% its) as `{py_result, Ref, Result}'.
submit(Loop, ReplyTo, Ref, Module, Function, Args) ->
    Submit = {submit, self(), ReplyTo, Ref, text(Module), text(Function), Args},
    case is_there(Loop) of
        true -> gen_server:cast(Loop, Submit);
        false -> self() ! {py_result, Ref, {error, {loop_down, noproc}}}
    end.

%% @equiv call(Loop, Module, Function, Args, infinity)
-spec call(loop(), py:name(), py:name(), list()) -> result().
call(Loop, Module, Function, Args) ->
    call(Loop, Module, Function, Args, infinity).

%% @doc Submits and waits for the result. On timeout the task is cancelled
%% and `{error, timeout}' returned, with no message left behind. If the loop
%% goes away meanwhile: `{error, {loop_down, Reason}}'.
-spec call(loop(), py:name(), py:name(), list(), timeout()) -> result().
call(Loop, Module, Function, Args, Timeout)
  when Timeout =:= infinity;
       is_integer(Timeout), Timeout >= 0, Timeout =< 16#ffffffff ->
    is_list(Args) orelse error(badarg, [Loop, Module, Function, Args, Timeout]),
    {ModuleText, FunctionText} = {text(Module), text(Function)},
    case reachable(Loop) of
        true -> call_reachable(Loop, ModuleText, FunctionText, Args, Timeout);
        false -> {error, {loop_down, noconnection}}
    end;
call(Loop, Module, Function, Args, Timeout) ->
    %% Refused before anything is submitted (`after' would fail later).
    erlang:error(badarg, [Loop, Module, Function, Args, Timeout]).

call_reachable(Loop, ModuleText, FunctionText, Args, Timeout) ->
    %% The monitor is also the alias the result is sent to: once it is
    %% gone (timeout, or the loop's death) a result sent later is dropped
    %% by the runtime, never left in our mailbox.
    Ref = erlang:monitor(process, Loop, [{alias, demonitor}]),
    submit(Loop, Ref, Ref, ModuleText, FunctionText, Args),
    Started = erlang:monotonic_time(millisecond),
    %% `min': a number is less than `infinity'.
    case wait_result(Ref, min(Timeout, ?LOOP_CHECK_AFTER)) of
        waiting when Timeout =:= infinity; Timeout > ?LOOP_CHECK_AFTER ->
            %% A process that is not a loop (a pid or name given by
            %% mistake) never answers: looked at once, here, rather than on
            %% every call (`process_info' of another process costs a
            %% signal's round trip, about 5 us).
            %% Its node may be slow to answer (stopped, cut off before the
            %% net tick says so): asked for no longer than the call has left.
            Asked = erlang:monotonic_time(millisecond),
            case is_loop(Loop, min(?LOOK_TIMEOUT, left(Timeout, Asked - Started))) of
                false ->
                    %% Its answer or death may have come during the look.
                    case wait_result(Ref, 0) of
                        waiting ->
                            erlang:demonitor(Ref, [flush]),
                            receive {py_result, Ref, _} -> ok after 0 -> ok end,
                            {error, {loop_down, noproc}};
                        Result ->
                            Result
                    end;
                _LoopOrUnknown ->
                    Spent = erlang:monotonic_time(millisecond) - Started,
                    case wait_result(Ref, left(Timeout, Spent)) of
                        waiting -> give_up(Loop, Ref);
                        Result -> Result
                    end
            end;
        waiting ->
            give_up(Loop, Ref);
        Result ->
            Result
    end.

%% The result of the call `Ref', or `waiting' after `Timeout' ms.
wait_result(Ref, Timeout) ->
    receive
        {py_result, Ref, Result} ->
            erlang:demonitor(Ref, [flush]),
            Result;
        {'DOWN', Ref, process, _, Reason} ->
            %% `submit' answers at once for a loop that is not there.
            receive {py_result, Ref, _} -> ok after 0 -> ok end,
            {error, {loop_down, Reason}}
    after Timeout ->
        waiting
    end.

left(infinity, _Spent) -> infinity;
left(Timeout, Spent) -> max(0, Timeout - Spent).

%% The call timed out: its task is cancelled, its result dropped.
give_up(Loop, Ref) ->
    erlang:demonitor(Ref, [flush]),
    gen_server:cast(Loop, {cancel_quietly, Ref}),
    receive {py_result, Ref, _} -> ok after 0 -> ok end,
    {error, timeout}.

%% @doc Cancels the task `Ref' (from `submit/4'); its caller gets
%% `{py_result, Ref, {error, cancelled}}' unless it had finished already (or
%% the coroutine chose to return despite the cancellation).
-spec cancel(loop(), reference()) -> ok.
cancel(Loop, Ref) when is_reference(Ref) ->
    is_loop_name(Loop) orelse erlang:error(badarg, [Loop, Ref]),
    gen_server:cast(Loop, {cancel, Ref});
cancel(Loop, Ref) ->
    erlang:error(badarg, [Loop, Ref]).

%% Internal

%% Whether `Loop' names a `py_asyncio_loop' now: `unknown' if its node
%% could not tell (unreachable, busy): then it is stopped as any server.
%% Asked with plain BIFs, which any node running any release has.
is_loop(Loop) ->
    is_loop(Loop, ?LOOK_TIMEOUT).

%% As is_loop/1, answering within about `Timeout' ms (`unknown' then).
is_loop(Loop, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    case where(Loop) of
        {Node, Target} ->
            try
                Pid = case Target of
                          Name when is_atom(Name) ->
                              erpc:call(Node, erlang, whereis, [Name], until(Deadline));
                          Pid0 -> Pid0
                      end,
                is_pid(Pid) andalso
                    is_loop_dictionary(erpc:call(Node, erlang, process_info, [Pid, dictionary],
                                                 until(Deadline)))
            catch
                _:_ -> unknown
            end;
        nowhere ->
            false
    end.

%% The ms left until `Deadline' (monotonic ms).
until(Deadline) ->
    max(0, Deadline - erlang:monotonic_time(millisecond)).

%% Whether `Loop' has the shape of a loop (`gen_server:cast' raises
%% `function_clause' for any other, `{1, 2}' included).
is_loop_name(Loop) ->
    where(Loop) =/= nowhere.

%% The node of `Loop' and the pid or name to ask it about.
where(Pid) when is_pid(Pid) -> {node(Pid), Pid};
where(Name) when is_atom(Name) -> {node(), Name};
where({Name, Node}) when is_atom(Name), is_atom(Node) -> {Node, Name};
where(_) -> nowhere.

is_loop_dictionary({dictionary, Dictionary}) ->
    proplists:get_value('$initial_call', Dictionary) =:= {py_asyncio_loop, init, 1};
is_loop_dictionary(undefined) ->
    false.

%% False for a loop on another node while this node is not distributed
%% (where `erlang:monitor/2' of it raises `badarg').
reachable({_Name, Node}) when Node =/= node() -> erlang:is_alive();
reachable(_Loop) -> true.

%% Whether a process answers to `Loop' now (on another node: assumed,
%% unless it cannot be reached at all).
is_there(Pid) when is_pid(Pid), node(Pid) =:= node() ->
    is_process_alive(Pid);
is_there(Name) when is_atom(Name) ->
    whereis(Name) =/= undefined;
is_there({Name, Node}) when is_atom(Name), Node =:= node() ->
    whereis(Name) =/= undefined;
is_there(Loop) ->
    reachable(Loop).

%% A string is characters: hand Python its UTF-8 text, as `py' does. A
%% binary must be UTF-8 already (`py''s NIF refuses one that is not).
text(Text) when is_list(Text); is_binary(Text) ->
    case unicode:characters_to_binary(Text) of
        Binary when is_binary(Binary) -> Binary;
        _ -> error(badarg)
    end;
text(Text) when is_atom(Text) ->
    Text;
text(_) ->
    error(badarg).
