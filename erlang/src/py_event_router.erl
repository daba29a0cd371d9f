%% @doc The low-level way to serve a loop made with `py_nif:event_loop_new/0':
%% `start_link(LoopRef)' starts a `py_event_worker' that routes the loop's
%% select and timer events into its pending queue (`py_nif:get_pending/1').
%% It stops (`normal') once the loop is destroyed or another router is set
%% for it (supervise it as `transient'); `ignore' for a loop destroyed
%% already, which a supervisor takes as nothing to run.
-module(py_event_router).

-export([start_link/1]).

-spec start_link(py_nif:loop_ref()) -> {ok, pid()} | ignore | {error, term()}.
start_link(Loop) ->
    py_event_worker:start_link([Loop]).
