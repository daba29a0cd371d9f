%% @doc One long-lived asyncio loop (see `py_asyncio'): this process owns a
%% Python thread running `run_forever' on an `ErlangEventLoop(isolated=True)'
%% (started by `erlang_python_loops.start', never a pool job: LESSONS 6).
%%
%% Submissions, cancels and forwarded messages are queued as operations and
%% handed to the loop thread in batches, by short `erlang_python_loops.dispatch'
%% jobs of the worker pool, one at a time (so they reach Python in order, and
%% this process never blocks on Python while serving). The loop thread reports
%% each task with `erlang.send(self(), {Tag, Key, Status, Value})'; this
%% process turns it into `{py_result, Ref, Result}' for the caller, whom it
%% monitors: a caller's death cancels its tasks.
%%
%% Any other message is forwarded into the loop's mailbox for
%% `erlang.receive()'.
-module(py_asyncio_loop).
-behaviour(gen_server).

-export([start_link/1, check_options/1, shutdown_time/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
%% The reaper's wait, called as `?MODULE:reap/4' when it wakes (see start_reaper/2).
-export([reap/4]).

%% How long starting the Python thread may take.
-define(START_TIMEOUT, 10000).
%% Added to `stop_timeout' for the whole stop (asking, then waiting for the
%% loop thread's "stopped").
-define(STOP_MARGIN, 2000).
-define(DEFAULT_STOP_TIMEOUT, 5000).
-define(MAX_STOP_TIMEOUT, 20000).
%% How long the reaper of a killed loop process waits for Python to take
%% its stop.
-define(REAPER_PATIENCE, 60000).

-type key() :: pos_integer().
%% This process's name for a task, the one Python sees.
-type op() :: {submit, key(), py:name(), py:name(), list()}
            | {cancel, key()}
            | {message, term()}.
%% An operation for the loop thread (`erlang_python_loops.apply').

-record(task, {
    caller :: pid(),
    %% Where the result goes: the caller, or an alias of its (`call/5').
    reply_to :: pid() | reference(),
    %% The caller's reference, from `py_asyncio:submit/4'.
    ref :: reference()
}).

-record(state, {
    %% A reference only we and our Python loop know: it marks the loop
    %% thread's reports, so no user message passes for one.
    tag :: reference(),
    %% Next task key.
    next_key = 1 :: key(),
    %% Tasks submitted and not reported yet.
    tasks = #{} :: #{key() => #task{}},
    %% The same tasks by the caller's reference (for `cancel').
    keys = #{} :: #{reference() => key()},
    %% Callers with tasks: their monitor and their tasks' keys.
    callers = #{} :: #{pid() => {reference(), #{key() => true}}},
    %% Operations not handed to Python yet, newest first.
    queue = [] :: [op()],
    %% A `{Tag, flush}' is on its way to us: the queue goes out when it comes,
    %% together with everything that arrived before it.
    flush_sent = false :: boolean(),
    %% Operations to send one per job, oldest first, before the queue: their
    %% batch failed as a whole.
    singles = [] :: [op()],
    %% The dispatch job running: `{JobRef, Ops}', or `undefined'. One at a
    %% time keeps operations in order.
    inflight = undefined :: {reference(), [op()]} | undefined,
    %% How long stopping may wait for Python (ms).
    stop_timeout :: non_neg_integer()
}).

%% @doc Starts a loop, registered locally if `Opts' has a `name'.
-spec start_link(py_asyncio:options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    case Opts of
        #{name := Name} -> gen_server:start_link({local, Name}, ?MODULE, Opts, []);
        _ -> gen_server:start_link(?MODULE, Opts, [])
    end.

%% @doc `ok', or raises `badarg' for options that are not valid.
-spec check_options(py_asyncio:options()) -> ok.
check_options(Opts) ->
    Valid = fun
        %% `register/2' refuses `undefined' (it was reported as a loop
        %% already started under that name).
        (name, Name) -> is_atom(Name) andalso Name =/= undefined;
        (stop_timeout, T) -> is_integer(T) andalso T >= 0 andalso T =< ?MAX_STOP_TIMEOUT;
        (id, _) -> true;
        (restart, R) -> lists:member(R, [permanent, transient, temporary]);
        (_, _) -> false
    end,
    case maps:fold(fun(K, V, Ok) -> Ok andalso Valid(K, V) end, true, Opts) of
        true -> ok;
        false -> error(badarg, [Opts])
    end.

%% @doc The supervisor shutdown time for a loop with these options: its stop
%% is bounded by it (a loop killed anyway has its Python side reaped).
-spec shutdown_time(py_asyncio:options()) -> pos_integer().
shutdown_time(Opts) ->
    stop_timeout(Opts) + ?STOP_MARGIN + 1000.

-spec init(py_asyncio:options()) -> {ok, #state{}} | {stop, term()}.
init(Opts) ->
    process_flag(trap_exit, true),
    StopTimeout = stop_timeout(Opts),
    %% First, so that the Python side goes even if we are killed.
    Reaper = start_reaper(self(), StopTimeout),
    Tag = make_ref(),
    %% Python gives up first; if we time out anyway the reaper cleans up.
    case py:call(erlang_python_loops, start, [self(), Tag, ?START_TIMEOUT / 2000], #{},
                 ?START_TIMEOUT) of
        {ok, _} ->
            Reaper ! {started, self()},
            {ok, #state{tag = Tag, stop_timeout = StopTimeout}};
        {error, Reason} ->
            {stop, {python_loop, Reason}}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({submit, Caller, ReplyTo, Ref, Module, Function, Args}, State) ->
    {noreply, enqueue({submit, State#state.next_key, Module, Function, Args},
                      add_task(Caller, ReplyTo, Ref, State))};
handle_cast({cancel_quietly, Ref}, State) ->
    %% A caller that gave up (timeout): cancel, and forget the task (its
    %% alias is gone anyway).
    case State#state.keys of
        #{Ref := Key} -> {noreply, enqueue({cancel, Key}, forget(Key, State))};
        _ -> {noreply, State}
    end;
handle_cast({cancel, Ref}, State) ->
    case State#state.keys of
        #{Ref := Key} -> {noreply, enqueue({cancel, Key}, State)};
        _ -> {noreply, State}
    end;
handle_cast(Msg, State) ->
    {noreply, enqueue({message, {'$gen_cast', Msg}}, State)}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({Tag, Key, Status, Value}, State = #state{tag = Tag}) when is_integer(Key) ->
    {noreply, report(Key, result(Status, Value), State)};
handle_info({Tag, flush}, State = #state{tag = Tag}) ->
    {noreply, dispatch(State#state{flush_sent = false})};
handle_info({Tag, <<"exit">>, Reason}, State = #state{tag = Tag}) ->
    {stop, {python_loop_exited, Reason}, State};
handle_info({py_result, JobRef, {ok, <<"import">>}}, State = #state{inflight = {JobRef, Ops}}) ->
    {noreply, send_ops(pool, Ops, State#state{inflight = undefined})};
handle_info({py_result, JobRef, Result}, State = #state{inflight = {JobRef, Ops}}) ->
    State1 = dispatched(Ops, Result, State#state{inflight = undefined}),
    {noreply, dispatch(State1)};
handle_info({'DOWN', Monitor, process, Caller, _} = Down, State) ->
    case State#state.callers of
        #{Caller := {Monitor, Keys}} ->
            Cancel = fun(Key, _, Acc) -> enqueue({cancel, Key}, forget(Key, Acc)) end,
            {noreply, maps:fold(Cancel, State, Keys)};
        _ ->
            {noreply, enqueue({message, Down}, State)}
    end;
handle_info(Info, State) ->
    {noreply, enqueue({message, Info}, State)}.

%% Stops the Python loop (bounded), then tells every caller still waiting:
%% the reports Python sent while stopping, else `{error, cancelled}'.
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, State = #state{tag = Tag, stop_timeout = StopTimeout}) ->
    Deadline = erlang:monotonic_time(millisecond) + StopTimeout + ?STOP_MARGIN,
    case stop_python_loop(self(), StopTimeout, Deadline, false) of
        {ok, <<"stopping">>} ->
            %% Sent by the loop thread after its last report.
            receive {Tag, <<"stopped">>} -> ok
            after max(0, Deadline - erlang:monotonic_time(millisecond)) -> ok
            end;
        _ ->
            ok
    end,
    Drain = fun Drain(S) ->
                receive
                    {Tag, Key, Status, Value} when is_integer(Key) ->
                        Drain(report(Key, result(Status, Value), S))
                after 0 ->
                    S
                end
            end,
    Left = Drain(State),
    maps:foreach(fun(_, #task{reply_to = ReplyTo, ref = Ref}) ->
                         ReplyTo ! {py_result, Ref, {error, cancelled}}
                 end, Left#state.tasks).

%% Internal

stop_timeout(Opts) ->
    maps:get(stop_timeout, Opts, ?DEFAULT_STOP_TIMEOUT).

%% A process that stops the Python loop if we die without `terminate/2'
%% (killed): the loop thread must not outlive us. After a clean stop its
%% call finds nothing to do. It waits hibernated, in no code of this
%% module: a process waiting in a module's code is killed when that code is
%% purged (a second `code:load_file', an upgrade), and the loops whose
%% reapers died then ran on for good once killed.
-spec start_reaper(pid(), non_neg_integer()) -> pid().
start_reaper(Server, StopTimeout) ->
    proc_lib:spawn(fun() ->
            Monitor = erlang:monitor(process, Server),
            erlang:hibernate(?MODULE, reap, [Server, Monitor, StopTimeout, starting])
        end).

%% `starting' until the server's start call returned: a server dying before
%% that may leave a start job running on, whose caller's death does not
%% always interrupt it in time (the interrupting thread waits for the GIL
%% while the job ends), and whose loop is not registered yet when our stop
%% comes. Such a stop is kept by Python for the start to find.
-spec reap(pid(), reference(), non_neg_integer(), starting | started) -> ok.
reap(Server, Monitor, StopTimeout, Phase) ->
    receive
        {started, Server} ->
            erlang:hibernate(?MODULE, reap, [Server, Monitor, StopTimeout, started]);
        {'DOWN', Monitor, process, Server, _} ->
            %% Nothing waits for us: a stop held up (the GIL
            %% taken by a long call) is still made, not cancelled
            %% with its caller.
            Deadline = erlang:monotonic_time(millisecond) + ?REAPER_PATIENCE,
            _ = stop_python_loop(Server, StopTimeout, Deadline, Phase =:= starting),
            ok
    end.

%% Asks the loop thread of `Server' to stop, on the control lane: a pool busy
%% with long calls must not keep running a loop that was asked to stop (the
%% stop used to wait in the pool's queue, time out, and leave it running).
%% Waits for the answer until `Deadline' (monotonic ms): a job whose caller
%% gives up is cancelled, and the loop would run on. `BeforeStart': the
%% server died before its start returned (see `reap/4').
stop_python_loop(Server, StopTimeout, Deadline, BeforeStart) ->
    JobRef = make_ref(),
    case py_nif:control_call(self(), JobRef, <<"erlang_python_loops">>, <<"stop">>,
                             [Server, StopTimeout / 1000],
                             #{<<"before_start">> => BeforeStart}) of
        {ok, _Job} ->
            receive {py_result, JobRef, Result} -> Result
            after max(0, Deadline - erlang:monotonic_time(millisecond)) -> {error, timeout}
            end;
        {error, _} = Error ->
            Error
    end.

add_task(Caller, ReplyTo, Ref, State = #state{next_key = Key, callers = Callers}) ->
    Callers1 = case Callers of
                   #{Caller := {Monitor, Keys}} ->
                       Callers#{Caller := {Monitor, Keys#{Key => true}}};
                   _ ->
                       Callers#{Caller => {erlang:monitor(process, Caller), #{Key => true}}}
               end,
    State#state{next_key = Key + 1,
                tasks = (State#state.tasks)#{Key => #task{caller = Caller, reply_to = ReplyTo,
                                                          ref = Ref}},
                keys = (State#state.keys)#{Ref => Key},
                callers = Callers1}.

%% Drops a task; its result, if Python still sends one, goes nowhere.
forget(Key, State = #state{tasks = Tasks, keys = Keys, callers = Callers}) ->
    case Tasks of
        #{Key := #task{caller = Caller, ref = Ref}} ->
            Callers1 = case Callers of
                           #{Caller := {Monitor, #{Key := _} = Own}} when map_size(Own) =:= 1 ->
                               erlang:demonitor(Monitor, [flush]),
                               maps:remove(Caller, Callers);
                           #{Caller := {Monitor, Own}} ->
                               Callers#{Caller := {Monitor, maps:remove(Key, Own)}};
                           _ ->
                               Callers
                       end,
            State#state{tasks = maps:remove(Key, Tasks), keys = maps:remove(Ref, Keys),
                        callers = Callers1};
        _ ->
            State
    end.

report(Key, Result, State) ->
    case State#state.tasks of
        #{Key := #task{reply_to = ReplyTo, ref = Ref}} ->
            ReplyTo ! {py_result, Ref, Result},
            forget(Key, State);
        _ ->
            State
    end.

result(<<"ok">>, Value) ->
    {ok, Value};
result(<<"cancelled">>, _) ->
    {error, cancelled};
result(<<"error">>, {Name, Message, Traceback}) ->
    {error, {exception_name(Name), Message, Traceback}}.

%% An exception class name is an atom if the node has it already, as in
%% `py:call' (see py_exception_names): Python data never creates atoms.
exception_name(Name) when is_binary(Name), byte_size(Name) =< 1020 ->
    try binary_to_existing_atom(Name, utf8) catch error:_ -> Name end;
exception_name(Name) ->
    Name.

enqueue(Op, State = #state{queue = Queue}) ->
    maybe_flush(State#state{queue = [Op | Queue]}).

%% Batching: the first operation sends us a flush; whatever arrives before it
%% goes out in the same batch. While a dispatch runs the queue just grows.
maybe_flush(State = #state{inflight = undefined, flush_sent = false, tag = Tag}) ->
    self() ! {Tag, flush},
    State#state{flush_sent = true};
maybe_flush(State) ->
    State.

dispatch(State = #state{inflight = {_, _}}) ->
    State;
dispatch(State = #state{singles = [Op | Rest]}) ->
    send_ops([Op], State#state{singles = Rest});
dispatch(State = #state{queue = []}) ->
    State;
dispatch(State = #state{queue = Queue}) ->
    send_ops(lists:reverse(Queue), State#state{queue = []}).

send_ops(Ops, State) ->
    send_ops(control, Ops, State).

%% On the control lane first: a worker pool busy with long calls does not
%% hold up a loop that has a thread of its own. A batch that needs an
%% import comes back (`<<"import">>') and goes to the pool: an import may
%% take long, and the lane serves every loop.
send_ops(Lane, Ops, State) ->
    JobRef = make_ref(),
    {Call, Kwargs} = case Lane of
                         control -> {fun py_nif:control_call/6, #{<<"may_import">> => false}};
                         pool -> {fun py_nif:call/6, #{}}
                     end,
    case Call(self(), JobRef, <<"erlang_python_loops">>, <<"dispatch">>, [self(), Ops], Kwargs) of
        {ok, _Job} -> State#state{inflight = {JobRef, Ops}};
        {error, _} = Error -> dispatch(dispatched(Ops, Error, State))
    end.

%% The outcome of a dispatch job.
dispatched(_Ops, {ok, <<"ok">>}, State) ->
    State;
dispatched(Ops, {ok, <<"closed">>}, State) ->
    %% The loop thread is gone (its "exit" report is on its way).
    lists:foldl(fun({submit, Key, _, _, _}, S) -> report(Key, {error, cancelled}, S);
                   (_, S) -> S
                end, State, Ops);
dispatched([_, _ | _] = Ops, {error, _}, State) ->
    %% One operation Python cannot take (a term it cannot hold, such as an
    %% improper list) spoils its batch: send them one by one, in order.
    State#state{singles = Ops ++ State#state.singles};
dispatched([{submit, Key, _, _, _}], {error, Reason}, State) ->
    report(Key, {error, Reason}, State);
dispatched([{message, Message}], {error, Reason}, State) ->
    logger:warning("py_asyncio_loop ~p: dropped a message Python cannot hold: ~p (~p)",
                   [self(), Message, Reason]),
    State;
dispatched(_Ops, _Other, State) ->
    State.
