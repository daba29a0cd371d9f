%% @doc Supervises the loops started with `py_asyncio:start_loop/1', one
%% `py_asyncio_loop' each. Children are temporary: a loop that stops or
%% crashes is not restarted behind its users' backs (run it under your own
%% supervisor with `py_asyncio:child_spec/1' for that).
-module(py_asyncio_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Loop = #{id => py_asyncio_loop,
             start => {py_asyncio_loop, start_link, []},
             restart => temporary,
             shutdown => py_asyncio_loop:shutdown_time(#{stop_timeout => 20000}),
             type => worker,
             modules => [py_asyncio_loop]},
    {ok, {#{strategy => simple_one_for_one, intensity => 5, period => 10}, [Loop]}}.
