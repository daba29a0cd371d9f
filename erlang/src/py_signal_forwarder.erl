%% @doc A handler of `erl_signal_server' (the BEAM's signal events) that
%% passes the signals `py_signals' routes to the Python loops' signal pipes
%% (`py_nif:deliver_signal/1'). Every other signal is left to the other
%% handlers (OTP's `erl_signal_handler', or the CLI's `py_cli_signals').
-module(py_signal_forwarder).
-behaviour(gen_event).

-export([init/1, handle_event/2, handle_call/2, handle_info/2, terminate/2]).
-include("py_signals.hrl").

-spec init(term()) -> {ok, []}.
init(_Args) ->
    {ok, []}.

-spec handle_event(atom(), []) -> {ok, []}.
handle_event(Signal, State) when ?IS_ROUTED_SIGNAL(Signal) ->
    ok = py_nif:deliver_signal(Signal),
    {ok, State};
handle_event(_Signal, State) ->
    {ok, State}.

-spec handle_call(term(), []) -> {ok, ok, []}.
handle_call(_Request, State) ->
    {ok, ok, State}.

-spec handle_info(term(), []) -> {ok, []}.
handle_info(_Info, State) ->
    {ok, State}.

-spec terminate(term(), []) -> ok.
terminate(_Reason, _State) ->
    ok.
