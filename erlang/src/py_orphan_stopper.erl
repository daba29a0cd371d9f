%% @doc Takes out of the VM's poll set the fds of event loops that close
%% while the application is stopped: a loop still running at
%% `application:stop' loses its worker and closes afterwards, and its fds
%% may only close once a process has made their `enif_select' stops
%% (LESSONS 17). Started by the application's `stop/1' and stopped by its
%% next start (whose `py_event_loops' takes the job back); it is left out of
%% the application's processes (another group leader), which the
%% application master kills after `stop/1'. Not a placer: loops asking for
%% a worker while the application is stopped still give up at once.
-module(py_orphan_stopper).
-behaviour(gen_server).

-export([start/0, stop/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(state, {}).

%% @doc Started unless running; not linked to the caller.
-spec start() -> ok.
start() ->
    case gen_server:start({local, ?MODULE}, ?MODULE, [], []) of
        {ok, Pid} -> outlive_the_application(Pid);
        {error, {already_started, _}} -> ok
    end.

%% @doc Stopped if running: the application's placer makes the stops again.
-spec stop() -> ok.
stop() ->
    try gen_server:stop(?MODULE, normal, 5000)
    catch exit:noproc -> ok
    end.

-spec init([]) -> {ok, #state{}}.
init([]) ->
    ok = py_nif:set_orphan_stopper(self()),
    %% Stops queued before this process was there.
    ok = py_nif:apply_orphan_stops(),
    {ok, #state{}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, ok, #state{}}.
handle_call(_Request, _From, State) ->
    {reply, ok, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Request, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(py_orphan_stops, State) ->
    ok = py_nif:apply_orphan_stops(),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok = py_nif:set_orphan_stopper(undefined).

%% The application master kills, after `stop/1', every process whose group
%% leader it is; the node's `user' (or `init', without one) leads this one.
outlive_the_application(Pid) ->
    Leader = case whereis(user) of
                 undefined -> whereis(init);
                 User -> User
             end,
    true = group_leader(Leader, Pid),
    ok.
