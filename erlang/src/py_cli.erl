%% @doc Entry point of `bin/erlang-python': runs a Python script, `-m module'
%% or `-c code' inside this node and halts with its exit status.
-module(py_cli).

-export([main/0]).

-spec main() -> no_return().
main() ->
    Args = [argument(A) || A <- init:get_plain_arguments()],
    Status = case application:ensure_all_started(erlang_python) of
                 {ok, _} -> run(Args);
                 {error, Reason} ->
                     io:format(standard_error, "erlang-python: cannot start: ~p~n", [Reason]),
                     70
             end,
    erlang:halt(Status, [{flush, true}]).

run(Args) ->
    case py:call(erlang_python_cli, main, [Args], #{}, infinity) of
        {ok, Status} when is_integer(Status) ->
            Status;
        {error, {Type, Message, Traceback}} ->
            io:format(standard_error, "~ts~n~p: ~ts~n", [Traceback, Type, Message]),
            1;
        Other ->
            io:format(standard_error, "erlang-python: ~p~n", [Other]),
            1
    end.

%% The VM decodes its arguments to characters under a UTF-8 locale only;
%% under the C locale it hands over their bytes, which we read as UTF-8 when
%% they are, as CPython does there (PEP 538, 540).
argument(Arg) ->
    Bytes = case file:native_name_encoding() of
                latin1 -> try list_to_binary(Arg) catch error:badarg -> none end;
                utf8 -> none
            end,
    case Bytes =/= none andalso unicode:characters_to_binary(Bytes) of
        Utf8 when is_binary(Utf8) -> Utf8;
        _ -> unicode:characters_to_binary(Arg)
    end.
