%% @doc Calling Python from Erlang.
%%
%% Python runs on threads owned by the NIF, never on a scheduler: a call
%% queues a job and waits for a message, so a slow Python call blocks only its
%% caller. Python exceptions come back as
%% `{error, {ExceptionName, Message, Traceback}}'.
%%
%% Namespaces: `eval/1,2' and `exec/1' run in a globals dict that belongs to
%% the calling Erlang process. Consecutive calls from one process see each
%% other's names; other processes do not. The dict is dropped when the process
%% exits.
-module(py).

-export([call/3, call/4, call/5,
         call_async/3, call_async/4, await/1, await/2,
         eval/1, eval/2, exec/1, exec/2,
         version/0,
         register_function/2, unregister_function/1,
         is_timeout/1]).

-type name() :: atom() | binary() | string().
%% A module, function or registered name.
-type code() :: binary() | string().
-type py_error() :: {error, {atom() | binary(), binary(), binary()}
                         | timeout | not_initialized}.
-opaque async_ref() :: {py_async, reference(), py_nif:job(), pid()}.
-export_type([name/0, code/0, py_error/0, async_ref/0]).

%% @equiv call(Module, Function, Args, #{})
-spec call(name(), name(), list()) -> {ok, term()} | py_error().
call(Module, Function, Args) ->
    call(Module, Function, Args, #{}).

%% @equiv call(Module, Function, Args, Kwargs, default timeout)
-spec call(name(), name(), list(), map()) -> {ok, term()} | py_error().
call(Module, Function, Args, Kwargs) ->
    call(Module, Function, Args, Kwargs, default_timeout()).

%% @doc Calls `Module.Function(*Args, **Kwargs)'. `Function' may be a dotted
%% path inside the module (`<<"Path.home">>'). On timeout the Python call is
%% interrupted with `TimeoutError' at its next bytecode (an ErlangEventLoop it
%% waits in is woken for it) and the result, if any, is discarded.
-spec call(name(), name(), list(), map(), timeout()) -> {ok, term()} | py_error().
call(Module, Function, Args, Kwargs, Timeout) ->
    valid_timeout(Timeout, [Module, Function, Args, Kwargs, Timeout]),
    Ref = make_ref(),
    submitted(py_nif:call(self(), Ref, text(Module), text(Function), Args, Kwargs), Ref, Timeout).

%% @equiv call_async(Module, Function, Args, #{})
-spec call_async(name(), name(), list()) -> async_ref() | py_error().
call_async(Module, Function, Args) ->
    call_async(Module, Function, Args, #{}).

%% @doc Starts a call and returns at once; collect the result with
%% `await/1,2' from the same process (another process's `await' raises
%% `badarg': the result is sent to the caller, and a timeout would cancel
%% the caller's job).
-spec call_async(name(), name(), list(), map()) -> async_ref() | py_error().
call_async(Module, Function, Args, Kwargs) ->
    Ref = make_ref(),
    case py_nif:call(self(), Ref, text(Module), text(Function), Args, Kwargs) of
        {ok, Job} -> {py_async, Ref, Job, self()};
        {error, _} = Error -> Error
    end.

%% @equiv await(AsyncRef, infinity)
-spec await(async_ref()) -> {ok, term()} | py_error().
await(AsyncRef) ->
    await(AsyncRef, infinity).

-spec await(async_ref(), timeout()) -> {ok, term()} | py_error().
await({py_async, Ref, Job, Owner} = AsyncRef, Timeout) when Owner =:= self() ->
    valid_timeout(Timeout, [AsyncRef, Timeout]),
    wait(Ref, Job, Timeout);
await(AsyncRef, Timeout) ->
    erlang:error(badarg, [AsyncRef, Timeout]).

%% @equiv eval(Expression, #{})
-spec eval(code()) -> {ok, term()} | py_error().
eval(Expression) ->
    eval(Expression, #{}).

%% @doc Evaluates a Python expression in the caller's namespace, with `Locals'
%% (a map with string keys) as local variables.
-spec eval(code(), map()) -> {ok, term()} | py_error().
eval(Expression, Locals) ->
    Timeout = default_timeout(),
    valid_timeout(Timeout, [Expression, Locals]),
    Ref = make_ref(),
    submitted(py_nif:eval(self(), Ref, text(Expression), Locals), Ref, Timeout).

%% @doc Runs Python statements in the caller's namespace.
-spec exec(code()) -> ok | py_error().
exec(Code) ->
    exec(Code, default_timeout()).

-spec exec(code(), timeout()) -> ok | py_error().
exec(Code, Timeout) ->
    valid_timeout(Timeout, [Code, Timeout]),
    Ref = make_ref(),
    case submitted(py_nif:exec(self(), Ref, text(Code)), Ref, Timeout) of
        {ok, none} -> ok;
        Error -> Error
    end.

%% @doc The version of the embedded interpreter (`sys.version').
-spec version() -> binary() | {error, not_initialized}.
version() ->
    case py_nif:python_version() of
        {ok, Version} -> Version;
        Error -> Error
    end.

%% @doc Makes `Fun' callable from Python as `erlang.call(Name, *Args)'.
-spec register_function(name(), function()) -> ok.
register_function(Name, Fun) when is_function(Fun) ->
    case function_name(Name) of
        {ok, Key} -> py_callback:register(Key, Fun);
        error -> erlang:error(badarg, [Name, Fun])
    end;
register_function(Name, Fun) ->
    erlang:error(badarg, [Name, Fun]).

-spec unregister_function(name()) -> ok.
unregister_function(Name) ->
    case function_name(Name) of
        {ok, Key} -> py_callback:unregister(Key);
        error -> erlang:error(badarg, [Name])
    end.

%% Internal

%% A function's name as the registry takes it: an atom or a binary, or an
%% Erlang string as the binary Python's `str' of it matches.
function_name(Name) when is_atom(Name); is_binary(Name) ->
    {ok, Name};
function_name(Name) when is_list(Name) ->
    try unicode:characters_to_binary(Name) of
        Binary when is_binary(Binary) -> {ok, Binary};
        _Invalid -> error
    catch
        error:badarg -> error
    end;
function_name(_Name) ->
    error.

%% Internal

%% Checked before anything is submitted: a bad timeout would only fail in
%% `receive ... after' (which takes at most 2^32-1 ms), with the job already
%% running.
valid_timeout(Timeout, Args) ->
    is_timeout(Timeout) orelse erlang:error(badarg, Args),
    ok.

%% @doc Whether `Timeout' is one `call', `eval' and `exec' take: `infinity'
%% or 0..2^32-1 ms (what `receive ... after' takes); the application checks
%% its `call_timeout' setting by it.
-spec is_timeout(term()) -> boolean().
is_timeout(infinity) -> true;
is_timeout(Timeout) -> is_integer(Timeout) andalso Timeout >= 0 andalso Timeout =< 16#ffffffff.

submitted({ok, Job}, Ref, Timeout) -> wait(Ref, Job, Timeout);
submitted({error, _} = Error, _Ref, _Timeout) -> Error.

wait(Ref, Job, Timeout) ->
    receive
        {py_result, Ref, Result} -> Result
    after Timeout ->
        ok = py_nif:cancel(Job),
        %% The job may have finished just before the cancel: drop its message.
        receive {py_result, Ref, _} -> ok after 0 -> ok end,
        {error, timeout}
    end.

%% A string is a list of characters, not of bytes: hand the NIF its UTF-8
%% encoding (`"'\x{20ac}'"' would otherwise be refused). Anything that is not
%% a string is passed on for the NIF to accept or refuse with `badarg'.
text(Text) when is_list(Text) ->
    try unicode:characters_to_binary(Text) of
        Binary when is_binary(Binary) -> Binary;
        _ -> Text
    catch
        error:badarg -> Text
    end;
text(Text) ->
    Text.

default_timeout() ->
    application:get_env(erlang_python, call_timeout, infinity).
