%% @doc Top supervisor of erlang_python.
%%
%% ```
%% erlang_python_sup (one_for_one)
%% ├── py_callback           Erlang functions called from Python
%% ├── py_event_worker_sup   one py_event_worker per isolated loop
%% ├── py_event_default      the py_event_worker shared by default loops
%% ├── py_event_loops        places new Python loops on a worker
%% ├── py_signals            the OS signals Python loops handle, routed by the BEAM
%% └── py_asyncio_sup        one py_asyncio_loop per long-lived loop (py_asyncio)
%% '''
-module(erlang_python_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    %% Owned here: what Python may call survives a restart of py_callback.
    ok = py_callback:new_table(),
    %% Likewise the signals routed for Python loops (their handlers outlive
    %% a restart of py_signals).
    ok = py_signals:new_table(),
    Children = [
        #{id => py_callback, start => {py_callback, start_link, []}},
        #{id => py_event_worker_sup, start => {py_event_worker_sup, start_link, []},
          type => supervisor},
        #{id => py_event_default,
          start => {py_event_worker, start_link, [py_event_default, []]}},
        #{id => py_event_loops, start => {py_event_loops, start_link, []}},
        #{id => py_signals, start => {py_signals, start_link, []}},
        %% Last: its loops stop first, while the workers serving them still run.
        #{id => py_asyncio_sup, start => {py_asyncio_sup, start_link, []},
          type => supervisor}
    ],
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, Children}}.
