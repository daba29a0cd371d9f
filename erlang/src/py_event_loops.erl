%% @doc Places the event loops that Python creates on a worker: default loops
%% on the shared worker `py_event_default', isolated ones (`isolated=True')
%% on a worker of their own under `py_event_worker_sup'. It also arms the
%% Erlang timers of `py_event_loop._erlang_sleep' (blocking sleeps).
-module(py_event_loops).
-behaviour(gen_server).

-export([start_link/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(state, {}).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec init([]) -> {ok, #state{}}.
init([]) ->
    process_flag(trap_exit, true),
    ok = py_nif:set_loop_placer(self()),
    %% Stops left while no placer ran (the application stopped).
    ok = py_nif:apply_orphan_stops(),
    {ok, #state{}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {noreply, #state{}, hibernate}.
handle_info({py_loop_new, Loop, Isolated}, State) when is_boolean(Isolated) ->
    %% The loop asks again every half second while no worker serves it (a
    %% request may be lost with a placer or worker that died): a loop
    %% placed since, or given up on, is left. Not a LoopRef: a stray
    %% message, ignored as any other. Hibernating drops the message's
    %% reference to the loop now: it would keep a closed loop's memory
    %% until this mostly idle process next collected.
    _ = needs_placing(Loop) andalso place(Loop, Isolated),
    {noreply, State, hibernate};
handle_info(py_orphan_stops, State) ->
    %% Fds of loops whose worker died: take them out of the poll set.
    ok = py_nif:apply_orphan_stops(),
    {noreply, State};
handle_info({py_sleep, Ms, Wait}, State) when is_integer(Ms), Ms >= 0, Ms =< 16#FFFFFFFF ->
    _ = erlang:send_after(Ms, self(), {py_sleep_done, Wait}),
    {noreply, State};
handle_info({py_sleep, TooFar, _Wait}, State) when is_integer(TooFar) ->
    %% Beyond Erlang's timer range: the sleeper wakes on its own deadline.
    {noreply, State};
handle_info({py_sleep_done, Wait}, State) ->
    %% Not a sleep's resource: a stray message, ignored.
    try py_nif:sleep_done(Wait) catch error:badarg -> ok end,
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

needs_placing(Loop) ->
    try py_nif:loop_needs_placing(Loop) catch error:badarg -> false end.

%% Placing fails only with the worker or its supervisor being restarted:
%% nothing to do but wait for the loop's next request.
place(Loop, false) ->
    case whereis(py_event_default) of
        undefined -> ok;
        Worker -> py_event_worker:adopt(Worker, Loop)
    end;
place(Loop, true) ->
    try supervisor:start_child(py_event_worker_sup, [Loop]) of
        {ok, _PidOrUndefined} -> ok; % undefined: served meanwhile, not needed
        {error, Reason} -> logger:error("cannot start an event loop worker: ~p", [Reason])
    catch
        exit:Reason -> logger:warning("event loop worker supervisor gone: ~p", [Reason])
    end.

-spec terminate(term(), #state{}) -> ok.
terminate(Reason, _State) when Reason =:= normal; Reason =:= shutdown;
                               element(1, Reason) =:= shutdown ->
    %% Stopped with the application: loops asking for a worker now give
    %% up at once.
    py_nif:set_loop_placer(undefined);
terminate(_Crashed, _State) ->
    %% Restarted by the supervisor in a moment: left registered (dead), so
    %% that a loop asking meanwhile asks again rather than giving up.
    ok.
