%% @doc The OS signals of a `bin/erlang-python' run, as CPython's own
%% command line answers them. Installed by `py_cli' only, in place of OTP's
%% `erl_signal_handler' (whose SIGTERM is an orderly `init:stop/0' with
%% status 0). The wrapper script turns Ctrl-C (SIGINT, which the VM keeps
%% for its break handler) into SIGUSR1.
%%
%% Ctrl-C raises `KeyboardInterrupt' in the program, as python3's default
%% SIGINT handler does (`erlang_python_cli:interrupt/0'); a second one, or
%% one while no program runs, ends the process at once with status 130.
%% SIGTERM and SIGQUIT end it at once with 128 + the signal's number, as
%% they end python3, which has no handler for them.
-module(py_cli_signals).
-behaviour(gen_event).

-export([install/0]).
-export([init/1, handle_event/2, handle_call/2, handle_info/2, terminate/2]).

%% 128 + the signal's number, as a shell reports a process it killed.
-define(SIGINT_STATUS, 130).
-define(SIGQUIT_STATUS, 131).
-define(SIGTERM_STATUS, 143).

%% How long the program's interpreter may take to accept a Ctrl-C (a free
%% worker thread and the GIL) before the run ends without it.
-define(INTERRUPT_TIMEOUT_MS, 5000).

%% Whether a Ctrl-C was passed on to the program already.
-type state() :: running | interrupted.

%% @doc Replaces OTP's handler of `erl_signal_server' by this one.
-spec install() -> ok.
install() ->
    ok = gen_event:swap_handler(erl_signal_server,
                                {erl_signal_handler, []}, {?MODULE, []}),
    [ok = os:set_signal(Signal, handle) || Signal <- [sigusr1, sigterm, sigquit]],
    ok.

-spec init(term()) -> {ok, state()}.
init(_Args) ->
    {ok, running}.

-spec handle_event(atom(), state()) -> {ok, state()}.
handle_event(sigusr1, running) ->
    %% Out of the signal server: the call waits for the GIL.
    spawn(fun interrupt_program/0),
    {ok, interrupted};
handle_event(sigusr1, interrupted) -> stop(?SIGINT_STATUS);
handle_event(sigterm, _State) -> stop(?SIGTERM_STATUS);
handle_event(sigquit, _State) -> stop(?SIGQUIT_STATUS);
handle_event(_Signal, State) -> {ok, State}.

-spec handle_call(term(), state()) -> {ok, ok, state()}.
handle_call(_Request, State) ->
    {ok, ok, State}.

-spec handle_info(term(), state()) -> {ok, state()}.
handle_info(_Info, State) ->
    {ok, State}.

-spec terminate(term(), state()) -> ok.
terminate(_Reason, _State) ->
    ok.

interrupt_program() ->
    case py:call(erlang_python_cli, interrupt, [], #{}, ?INTERRUPT_TIMEOUT_MS) of
        {ok, true} -> ok;
        _NoProgram -> stop(?SIGINT_STATUS)
    end.

%% Without flushing (a full stdout pipe must not keep a killed run alive)
%% and without `exit()''s handlers, which could crash under a Python thread.
-spec stop(0..255) -> no_return().
stop(Status) ->
    py_nif:exit_now(Status).
