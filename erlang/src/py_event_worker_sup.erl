%% @doc Supervises the workers of isolated event loops (one each). They are
%% temporary: a dead worker's loop fails with a clear error in Python, and a
%% new loop gets a new worker.
-module(py_event_worker_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Worker = #{id => py_event_worker,
               start => {py_event_worker, start_placed, []},
               restart => temporary},
    {ok, {#{strategy => simple_one_for_one, intensity => 10, period => 10}, [Worker]}}.
