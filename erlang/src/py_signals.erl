%% @doc Routes the OS signals Python loops ask for through the BEAM's own
%% signal handling. `loop.add_signal_handler(signal.SIGHUP, ...)' (or
%% SIGALRM, SIGUSR2) calls `route(Signal, true)' (through `erlang.call');
%% while at least one handler wants a signal it is set to `handle'
%% (`os:set_signal/2') and `py_signal_forwarder', a handler of
%% `erl_signal_server', passes it to the loops' signal pipes. The last
%% `route(Signal, false)' sets it back to `default' (the OS's action: for
%% these three, the end of the node), as does this server's stop.
%%
%% The BEAM's own signals (SIGINT, SIGTERM, SIGQUIT, SIGUSR1) are never
%% routed; SIGCHLD is caught by the loops' library itself.
-module(py_signals).
-behaviour(gen_server).

-export([start_link/0, route/2, routed/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% What Python calls (`erlang.call(?CALLBACK, Name, On)').
-define(CALLBACK, <<"_erlang_python.route_signal">>).

-type signal() :: sighup | sigalrm | sigusr2.
-export_type([signal/0]).

%% Handlers wanting each routed signal (absent: none).
-type state() :: #{signal() => pos_integer()}.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc One more (`true') or one fewer (`false') handler wants `Signal'.
%% `Signal' as Python passes it (`<<"sighup">>') or as an atom; any other
%% signal is `{error, {not_routed, Signal}}'.
-spec route(signal() | binary(), boolean()) -> ok | {error, term()}.
route(Signal, On) when is_boolean(On) ->
    case signal(Signal) of
        {ok, Name} -> gen_server:call(?MODULE, {route, Name, On});
        error -> {error, {not_routed, Signal}}
    end;
route(Signal, On) ->
    {error, {badarg, [Signal, On]}}.

%% @doc The signals routed now, with how many handlers want each.
-spec routed() -> state().
routed() ->
    gen_server:call(?MODULE, routed).

-spec init([]) -> {ok, state()}.
init([]) ->
    process_flag(trap_exit, true),
    ok = py_callback:register(?CALLBACK, fun route/2),
    {ok, #{}}.

-spec handle_call(term(), gen_server:from(), state()) -> {reply, term(), state()}.
handle_call({route, Signal, true}, _From, State) ->
    case maps:get(Signal, State, 0) of
        0 ->
            ok = ensure_forwarder(),
            ok = os:set_signal(Signal, handle),
            {reply, ok, State#{Signal => 1}};
        Count ->
            {reply, ok, State#{Signal := Count + 1}}
    end;
handle_call({route, Signal, false}, _From, State) ->
    case maps:get(Signal, State, 0) of
        0 ->
            {reply, {error, {not_routed, Signal}}, State};
        1 ->
            ok = os:set_signal(Signal, default),
            {reply, ok, maps:remove(Signal, State)};
        Count ->
            {reply, ok, State#{Signal := Count - 1}}
    end;
handle_call(routed, _From, State) ->
    {reply, State, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), state()) -> {noreply, state()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), state()) -> {noreply, state()}.
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), state()) -> ok.
terminate(_Reason, State) ->
    [os:set_signal(Signal, default) || Signal <- maps:keys(State)],
    _ = gen_event:delete_handler(erl_signal_server, py_signal_forwarder, stop),
    ok.

signal(Signal) when Signal =:= sighup; Signal =:= sigalrm; Signal =:= sigusr2 ->
    {ok, Signal};
signal(<<"sighup">>) -> {ok, sighup};
signal(<<"sigalrm">>) -> {ok, sigalrm};
signal(<<"sigusr2">>) -> {ok, sigusr2};
signal(_) -> error.

%% Added once, kept: it passes on only what is set to `handle' for us.
ensure_forwarder() ->
    case lists:member(py_signal_forwarder, gen_event:which_handlers(erl_signal_server)) of
        true -> ok;
        false -> gen_event:add_handler(erl_signal_server, py_signal_forwarder, [])
    end.
