%% @doc Routes the OS signals Python loops ask for through the BEAM's own
%% signal handling. `loop.add_signal_handler(signal.SIGHUP, ...)' (or
%% SIGALRM, SIGUSR2) calls `route(Signal, true)' (through `erlang.call'),
%% which answers a route of its own; while at least one route wants a
%% signal it is set to `handle' (`os:set_signal/2') and
%% `py_signal_forwarder', a handler of `erl_signal_server', passes it to the
%% loops' signal pipes. `unroute(Route)' of the last one sets it back to
%% `default' (the OS's action: for these three, the end of the node), as
%% does the application's stop.
%%
%% The routes live in a table the application's top supervisor owns: a
%% restart of this server after a crash finds them, sets their signals to
%% `handle' again and puts the forwarder back (the loops' handlers, in
%% Python, outlive it). The application's stop forgets them: a route made
%% before is unknown after a new start, and its `unroute' changes nothing
%% (a handler added since keeps its signal). The BEAM's own signals
%% (SIGINT, SIGTERM, SIGQUIT, SIGUSR1) are never routed; SIGCHLD is caught
%% by the loops' library itself.
-module(py_signals).
-behaviour(gen_server).

-export([start_link/0, new_table/0, route/2, unroute/1, routed/0]).
-include("py_signals.hrl").
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TABLE, py_signal_routes).
-define(FORWARDER, py_signal_forwarder).

%% What Python calls (`erlang.call(?ROUTE, Name, true)',
%% `erlang.call(?UNROUTE, Route)').
-define(ROUTE, <<"_erlang_python.route_signal">>).
-define(UNROUTE, <<"_erlang_python.unroute_signal">>).

-type signal() :: sighup | sigalrm | sigusr2.
%% One handler's wish for a signal, as `route/2' answers it.
-type route() :: pos_integer().
-export_type([signal/0, route/0]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The table of routes (`{Route, Signal}'), made by the application's
%% top supervisor, which owns it; written only by this server.
-spec new_table() -> ok.
new_table() ->
    ?TABLE = ets:new(?TABLE, [named_table, public]),
    ok.

%% @doc One more handler wants `Signal': its route, for `unroute/1'.
%% `Signal' as Python passes it (`<<"sighup">>') or as an atom; any other
%% signal is `{error, {not_routed, Signal}}'.
-spec route(signal() | binary(), term()) -> {ok, route()} | {error, term()}.
route(Signal, true) ->
    case signal(Signal) of
        {ok, Name} -> gen_server:call(?MODULE, {route, Name});
        error -> {error, {not_routed, Signal}}
    end;
route(Signal, On) ->
    {error, {badarg, [Signal, On]}}.

%% @doc The handler that had `Route' wants its signal no more. A route this
%% run of the application never made (made before its stop, or none) is
%% `{error, not_routed}' and changes nothing.
-spec unroute(route()) -> ok | {error, term()}.
unroute(Route) when is_integer(Route) ->
    gen_server:call(?MODULE, {unroute, Route});
unroute(Route) ->
    {error, {badarg, [Route]}}.

%% @doc The signals routed now, with how many handlers want each.
-spec routed() -> #{signal() => pos_integer()}.
routed() ->
    lists:foldl(fun({_Route, Signal}, Counts) ->
                        maps:update_with(Signal, fun(N) -> N + 1 end, 1, Counts)
                end, #{}, ets:tab2list(?TABLE)).

-spec init([]) -> {ok, []}.
init([]) ->
    process_flag(trap_exit, true),
    ok = py_callback:register(?ROUTE, fun route/2),
    ok = py_callback:register(?UNROUTE, fun unroute/1),
    ok = add_forwarder(),
    %% After a crash: what the loops still want.
    [ok = os:set_signal(Signal, handle) || Signal <- maps:keys(routed())],
    {ok, []}.

-spec handle_call(term(), gen_server:from(), []) -> {reply, term(), []}.
handle_call({route, Signal}, _From, State) ->
    Route = erlang:unique_integer([positive]),
    ok = os:set_signal(Signal, handle),
    true = ets:insert(?TABLE, {Route, Signal}),
    {reply, {ok, Route}, State};
handle_call({unroute, Route}, _From, State) ->
    Reply = case ets:take(?TABLE, Route) of
                [] ->
                    {error, not_routed};
                [{Route, Signal}] ->
                    case ets:match(?TABLE, {'_', Signal}) of
                        [] -> ok = os:set_signal(Signal, default);
                        _ -> ok
                    end
            end,
    {reply, Reply, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), []) -> {noreply, []}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% The forwarder left `erl_signal_server' (it crashed): back it goes, or the
%% routed signals would be dropped.
-spec handle_info(term(), []) -> {noreply, []}.
handle_info({gen_event_EXIT, ?FORWARDER, Reason}, State) when Reason =/= shutdown ->
    ok = add_forwarder(),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

%% Stopped (the application stops): the signals go back to `default'. A
%% crash leaves them to the restart (`init/1').
-spec terminate(term(), []) -> ok.
terminate(Reason, _State) when Reason =:= shutdown; Reason =:= normal ->
    [os:set_signal(Signal, default) || Signal <- maps:keys(routed())],
    true = ets:delete_all_objects(?TABLE),
    _ = gen_event:delete_handler(erl_signal_server, ?FORWARDER, stop),
    ok;
terminate(_Reason, _State) ->
    ok.

signal(Signal) when ?IS_ROUTED_SIGNAL(Signal) ->
    {ok, Signal};
signal(<<"sighup">>) -> {ok, sighup};
signal(<<"sigalrm">>) -> {ok, sigalrm};
signal(<<"sigusr2">>) -> {ok, sigusr2};
signal(_) -> error.

%% Linked to this server (`add_sup_handler'): it goes with the server and
%% tells it when it goes alone. It passes on only the three signals, which
%% only this server sets to `handle'.
add_forwarder() ->
    case lists:member(?FORWARDER, gen_event:which_handlers(erl_signal_server)) of
        true -> ok;
        false -> gen_event:add_sup_handler(erl_signal_server, ?FORWARDER, [])
    end.
