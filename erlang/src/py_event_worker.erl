%% @doc Serves native event loops: owns their `enif_select' calls (LESSONS 18)
%% and their one Erlang timer each, armed only for the wheel's next deadline
%% (no periodic tick). One worker may serve many loops (the shared default
%% worker) or one (an isolated loop's own worker).
-module(py_event_worker).
-behaviour(gen_server).

-export([start_link/1, start_link/2, start_placed/1, adopt/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2,
         format_status/1]).

-record(loop, {
    %% The LoopRef resource; kept so the loop outlives its Python owner until
    %% it is closed.
    ref :: py_nif:loop_ref(),
    %% The armed `erlang:start_timer/3' reference, or `undefined'.
    timer :: reference() | undefined
}).

-record(state, {
    %% Loops served, by the integer id the NIF puts in its messages.
    loops = #{} :: #{pos_integer() => #loop{}},
    %% A worker started for given loops (an isolated loop's, or the
    %% low-level API's) stops once they are all closed; the shared named
    %% worker stays.
    dedicated :: boolean()
}).

%% @doc A worker serving `Loops' (LoopRefs), not registered; `ignore' if
%% every one of them is closed.
-spec start_link([py_nif:loop_ref()]) -> {ok, pid()} | ignore | {error, term()}.
start_link(Loops) ->
    ok = check_loops(Loops),
    gen_server:start_link(?MODULE, {dedicated, Loops}, []).

%% @doc A worker registered as `Name' serving `Loops'.
-spec start_link(atom(), [py_nif:loop_ref()]) -> {ok, pid()} | {error, term()}.
start_link(Name, Loops) ->
    ok = check_loops(Loops),
    gen_server:start_link({local, Name}, ?MODULE, {shared, Loops}, []).

%% @doc A worker of its own for the Python loop `Loop' (an isolated one),
%% not registered; `ignore' if another live worker serves it already (its
%% placement was asked for again meanwhile).
-spec start_placed(py_nif:loop_ref()) -> {ok, pid()} | ignore | {error, term()}.
start_placed(Loop) ->
    ok = check_loops([Loop]),
    gen_server:start_link(?MODULE, {placed, Loop}, []).

%% @doc Makes `Worker' serve the Python loop `Loop' too, unless another live
%% worker does already. `badarg' if `Loop' is not a LoopRef (checked here:
%% the worker, serving other loops, must not crash on it).
-spec adopt(pid() | atom(), py_nif:loop_ref()) -> ok.
adopt(Worker, Loop) when is_pid(Worker); is_atom(Worker) ->
    ok = check_loops([Loop]),
    gen_server:cast(Worker, {adopt, Loop});
adopt(_Worker, _Loop) ->
    %% Not gen_server:cast's function_clause.
    erlang:error(badarg).

-spec init({dedicated | shared, [py_nif:loop_ref()]} | {placed, py_nif:loop_ref()}) ->
          {ok, #state{}} | ignore.
init({placed, Loop}) ->
    process_flag(trap_exit, true),
    State = adopt_loop(Loop, #state{dedicated = true}),
    case map_size(State#state.loops) of
        0 -> ignore;
        _ -> {ok, State}
    end;
init({Kind, Loops}) ->
    %% Ends with its parent whatever the reason (gen_server does so for a
    %% trapped parent exit): a low-level router whose owner returned without
    %% `event_loop_destroy' would otherwise hold the loop, and its fds, for
    %% good.
    process_flag(trap_exit, true),
    case lists:foldl(fun serve/2, #state{dedicated = Kind =:= dedicated}, Loops) of
        %% Given only closed loops: nothing to serve, ever.
        #state{dedicated = true, loops = Served} when map_size(Served) =:= 0, Loops =/= [] ->
            ignore;
        State ->
            {ok, State}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(loops, _From, State) ->
    {reply, maps:keys(State#state.loops), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({adopt, Loop}, State) ->
    {noreply, adopt_loop(Loop, State)};
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) ->
          {noreply, #state{}} | {noreply, #state{}, hibernate} | {stop, normal, #state{}}.
%% `length/1' fails (and the guard with it) on an improper list.
handle_info({py_loop, Id, Signals}, State) when length(Signals) >= 0 ->
    case signals(Id, Signals, State) of
        #state{dedicated = true, loops = Loops} = Done when map_size(Loops) =:= 0 ->
            {stop, normal, Done};
        #state{loops = Loops} = Serving when map_size(Loops) < map_size(State#state.loops) ->
            %% A loop it served is gone: hibernating collects this
            %% process's references to it now, and with the last one the
            %% loop's native memory goes, rather than at a collection that
            %% an idle worker may not make for long.
            {noreply, Serving, hibernate};
        Serving ->
            {noreply, Serving}
    end;
handle_info({timeout, Timer, {py_tick, Id}}, State) ->
    case State#state.loops of
        #{Id := #loop{ref = Ref, timer = Timer} = Loop} ->
            Loops = (State#state.loops)#{Id := Loop#loop{timer = undefined}},
            {noreply, signals(Id, py_nif:loop_tick(Ref), State#state{loops = Loops})};
        _ ->
            %% A timer cancelled too late to stop its message.
            {noreply, State}
    end;
handle_info({select, FdResource, Id, Ready}, State)
  when Ready =:= ready_input; Ready =:= ready_output ->
    case State#state.loops of
        #{Id := #loop{ref = Ref}} ->
            %% Not an fd resource: a message that did not come from
            %% enif_select, ignored as any other stray message is.
            try py_nif:loop_fd_ready(Ref, FdResource, direction(Ready))
            catch error:badarg -> ok
            end;
        _ ->
            ok
    end,
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok.

%% Crash reports and `sys:get_status' show the loops' ids, not their
%% LoopRefs: a report kept by a log handler would keep the loops (and the
%% fds they watch) alive.
-spec format_status(gen_server:format_status()) -> gen_server:format_status().
format_status(Status = #{state := #state{loops = Loops, dedicated = Dedicated}}) ->
    Status#{state := #{loops => maps:keys(Loops), dedicated => Dedicated}};
format_status(Status) ->
    Status.

%% Internal

%% `badarg' in the caller for anything but a list of LoopRefs, rather than
%% a worker crashing in its `init'.
check_loops([]) ->
    ok;
check_loops([Loop | Loops]) ->
    _ = py_nif:loop_id(Loop),
    check_loops(Loops);
check_loops(_NotAList) ->
    erlang:error(badarg).

serve(Ref, State) ->
    %% May send us {py_loop, Id, ...} at once (timers or fds added before).
    case py_nif:event_loop_set_router(Ref, self()) of
        ok -> State#state{loops = (State#state.loops)#{py_nif:loop_id(Ref) => #loop{ref = Ref}}};
        {error, _Closed} -> State
    end.

%% A Python loop, served unless another live worker serves it (a cast
%% that is not a LoopRef: ignored).
adopt_loop(Ref, State) ->
    try py_nif:event_loop_adopt(Ref, self()) of
        ok ->
            Id = py_nif:loop_id(Ref),
            case State#state.loops of
                %% Asked again after we took it (the placer looked before
                %% our attach): its entry, and the timer armed since, stay.
                #{Id := _} -> State;
                Loops -> State#state{loops = Loops#{Id => #loop{ref = Ref}}}
            end;
        {error, _} ->
            State
    catch
        error:badarg -> State
    end.

signals(Id, Signals, State) ->
    lists:foldl(fun(Signal, Acc) -> signal(Id, Signal, Acc) end, State, order(Signals)).

%% Selects before close, so a closing loop's fds leave the poll set.
order(Signals) ->
    [S || S <- Signals, S =:= selects] ++ [S || S <- Signals, S =/= selects].

signal(Id, Signal, State = #state{loops = Loops}) ->
    case {Loops, Signal} of
        {#{Id := Loop}, _} -> apply_signal(Id, Signal, Loop, State);
        {_, {attached, Ref}} -> take_up(Id, Ref, State);
        _ -> State
    end.

%% Made our loop's router by another process (`event_loop_set_router'): one
%% we do not serve (let go of when it was given to another router, then set
%% back to us) is served again, unless given to yet another meanwhile.
take_up(Id, Ref, State) ->
    try py_nif:loop_id(Ref) =:= Id andalso py_nif:loop_router(Ref) =:= self() of
        true ->
            %% Its wake-ups may have come before this message (sent from
            %% another thread, and ignored then): its selects and its
            %% timer are done now, as its router's next look would.
            Served = State#state{loops = (State#state.loops)#{Id => #loop{ref = Ref}}},
            ok = py_nif:loop_apply_selects(Ref),
            signals(Id, py_nif:loop_tick(Ref), Served);
        false ->
            State
    catch
        error:badarg -> State
    end.

apply_signal(_Id, selects, #loop{ref = Ref}, State) ->
    ok = py_nif:loop_apply_selects(Ref),
    State;
%% The NIF arms at most 2^32 ms ahead (MAX_ARM_MS in src/io/core.rs).
apply_signal(Id, {arm, Ms}, Loop, State) when is_integer(Ms), Ms >= 0, Ms =< 1 bsl 32 ->
    cancel(Loop#loop.timer),
    Timer = erlang:start_timer(Ms, self(), {py_tick, Id}),
    State#state{loops = (State#state.loops)#{Id := Loop#loop{timer = Timer}}};
apply_signal(Id, closed, Loop = #loop{ref = Ref}, State) ->
    %% Only when it is: a stray `closed' must not drop a live loop, whose
    %% Python thread would then wait for its selects and timer forever.
    case py_nif:loop_is_closed(Ref) of
        true -> forget(Id, Loop, State);
        false -> State
    end;
apply_signal(Id, released, Loop = #loop{ref = Ref}, State) ->
    %% Served by another router now, unless set back to us since.
    case py_nif:loop_router(Ref) =:= self() of
        true -> State;
        false -> forget(Id, Loop, State)
    end;
apply_signal(_Id, {attached, _Ref}, _Loop, State) ->
    %% Served already.
    State;
apply_signal(_Id, _Unknown, _Loop, State) ->
    %% Not one the NIF sends: a stray message, ignored.
    State.

forget(Id, Loop, State) ->
    cancel(Loop#loop.timer),
    State#state{loops = maps:remove(Id, State#state.loops)}.

cancel(undefined) -> ok;
cancel(Timer) -> _ = erlang:cancel_timer(Timer, [{async, true}, {info, false}]), ok.

direction(ready_input) -> read;
direction(ready_output) -> write.
