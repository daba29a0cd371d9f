%% @doc Entry point of `bin/erlang-python': runs a Python script, `-m module'
%% or `-c code' inside this node and halts with its exit status.
-module(py_cli).

-export([main/0]).

-spec main() -> no_return().
main() ->
    ok = py_cli_signals:install(),
    %% The VM ignores Ctrl-C and Ctrl-Z here (+Bi); the program's children
    %% must not inherit that.
    ok = py_nif:unignore_terminal_signals(),
    end_with_wrapper(os:getenv("ERLANG_PYTHON_WRAPPER")),
    Args = [argument(A) || A <- init:get_plain_arguments()],
    Status = case application:ensure_all_started(erlang_python) of
                 {ok, _} -> run(Args);
                 {error, Reason} ->
                     io:format(standard_error, "erlang-python: cannot start: ~p~n", [Reason]),
                     70
             end,
    erlang:halt(Status, [{flush, true}]).

%% The run ends with the script that started it (bin/erlang-python), even
%% when that script is killed by SIGKILL, which it cannot forward.
end_with_wrapper(false) ->
    ok;
end_with_wrapper(OsPid) ->
    case py_nif:end_with_parent(list_to_integer(OsPid)) of
        ok -> ok;
        {error, _} -> erlang:halt(143, [{flush, false}])
    end.

run(Args) ->
    case py:call(erlang_python_cli, main, [Args], #{exiting => true}, infinity) of
        {ok, Status} when is_integer(Status) ->
            Status;
        {error, {Type, Message, Traceback}} ->
            io:format(standard_error, "~ts~n~p: ~ts~n", [Traceback, Type, Message]),
            error_status(Type);
        Other ->
            io:format(standard_error, "erlang-python: ~p~n", [Other]),
            1
    end.

%% python3's status for an exception that escaped the program: 130 for a
%% Ctrl-C that reached it as it was ending.
error_status('KeyboardInterrupt') -> 130;
error_status(_Type) -> 1.

%% An argument's bytes, as the OS passed them; Python decodes them as
%% CPython does (UTF-8 with surrogateescape, PEP 383 and 540), so a name
%% that is not UTF-8 still opens its file. Under a UTF-8 locale the VM
%% decodes arguments to characters, an invalid one as
%% `{incomplete | error, Decoded, Rest}'; under the C locale it hands over
%% their bytes.
%% (Dialyzer takes `init:get_plain_arguments/0' at its spec, strings only,
%% and would call the first clause unreachable.)
-dialyzer({no_match, argument/1}).
argument({_Invalid, Decoded, Rest}) when is_binary(Rest) ->
    <<(unicode:characters_to_binary(Decoded))/binary, Rest/binary>>;
argument(Arg) ->
    case file:native_name_encoding() of
        latin1 -> list_to_binary(Arg);
        utf8 -> unicode:characters_to_binary(Arg)
    end.
