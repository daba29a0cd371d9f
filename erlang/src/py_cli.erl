%% @doc Entry point of `bin/erlang-python': runs a Python script, `-m module'
%% or `-c code' inside this node and halts with its exit status.
-module(py_cli).

-export([main/0]).

-spec main() -> no_return().
main() ->
    Args = [unicode:characters_to_binary(A) || A <- init:get_plain_arguments()],
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
