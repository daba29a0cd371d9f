%% @doc The OS signals of a `bin/erlang-python' run, as CPython's own
%% command line answers them: the process ends at once with status 128 + the
%% signal's number. Installed by `py_cli' only, in place of OTP's
%% `erl_signal_handler' (whose SIGTERM is an orderly `init:stop/0' with
%% status 0). The wrapper script turns Ctrl-C (SIGINT, which the VM keeps
%% for its break handler) into SIGUSR1.
-module(py_cli_signals).
-behaviour(gen_event).

-export([install/0]).
-export([init/1, handle_event/2, handle_call/2, handle_info/2, terminate/2]).

%% 128 + the signal's number, as a shell reports a process it killed.
-define(SIGINT_STATUS, 130).
-define(SIGQUIT_STATUS, 131).
-define(SIGTERM_STATUS, 143).

%% @doc Replaces OTP's handler of `erl_signal_server' by this one.
-spec install() -> ok.
install() ->
    ok = gen_event:swap_handler(erl_signal_server,
                                {erl_signal_handler, []}, {?MODULE, []}),
    [ok = os:set_signal(Signal, handle) || Signal <- [sigusr1, sigterm, sigquit]],
    ok.

-spec init(term()) -> {ok, []}.
init(_Args) ->
    {ok, []}.

-spec handle_event(atom(), []) -> {ok, []}.
handle_event(sigusr1, State) -> stop(?SIGINT_STATUS, State);
handle_event(sigterm, State) -> stop(?SIGTERM_STATUS, State);
handle_event(sigquit, State) -> stop(?SIGQUIT_STATUS, State);
handle_event(_Signal, State) -> {ok, State}.

-spec handle_call(term(), []) -> {ok, ok, []}.
handle_call(_Request, State) ->
    {ok, ok, State}.

-spec handle_info(term(), []) -> {ok, []}.
handle_info(_Info, State) ->
    {ok, State}.

-spec terminate(term(), []) -> ok.
terminate(_Reason, _State) ->
    ok.

%% Without flushing: a full stdout pipe must not keep a killed run alive.
stop(Status, State) ->
    erlang:halt(Status, [{flush, false}]),
    {ok, State}.
