%% @doc Runs the Erlang functions that Python calls with `erlang.call/2+', and
%% relays `erlang.send' to pids on other nodes. Each call runs in a process of
%% its own, so a slow function never blocks the others.
-module(py_callback).
-behaviour(gen_server).

-export([start_link/0, register/2, unregister/1, new_table/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TABLE, py_callbacks).

%% Most characters of an error's text (see `describe/2').
-define(ERROR_CHARS, 4000).

-record(state, {
    %% The process answering each `erlang.call' still unanswered, with the
    %% call's reply handle, by the call's id, and that id by the process: a
    %% call Python stopped waiting for (its job timed out) is abandoned, its
    %% function killed.
    runs = #{} :: #{non_neg_integer() => {pid(), reference()}},
    calls = #{} :: #{pid() => non_neg_integer()},
    %% The process running each call's function, by its answer process:
    %% killed with it (a function that traps exits would outlive it).
    runners = #{} :: #{pid() => pid()}
}).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec register(atom() | binary(), function()) -> ok.
register(Name, Fun) ->
    gen_server:call(?MODULE, {register, to_key(Name), Fun}).

-spec unregister(atom() | binary()) -> ok.
unregister(Name) ->
    gen_server:call(?MODULE, {unregister, to_key(Name)}).

%% @doc The table of registrations (Name => Fun), made by the application's
%% top supervisor, which owns it: registrations then outlive a restart of
%% this server. Written only through `register/2' and `unregister/1' (this
%% server); the functions' processes read it without a round trip.
-spec new_table() -> ok.
new_table() ->
    ?TABLE = ets:new(?TABLE, [named_table, public, {read_concurrency, true}]),
    ok.

-spec init([]) -> {ok, #state{}}.
init([]) ->
    process_flag(trap_exit, true),
    ok = py_nif:set_callback_server(self()),
    {ok, #state{}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({register, Name, Fun}, _From, State) ->
    true = ets:insert(?TABLE, {Name, Fun}),
    {reply, ok, State};
handle_call({unregister, Name}, _From, State) ->
    true = ets:delete(?TABLE, Name),
    {reply, ok, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({py_callback, Name, Args, Reply, Id}, State = #state{runs = Runs, calls = Calls})
  when is_binary(Name), is_list(Args), is_reference(Reply), not is_map_key(Id, Runs) ->
    %% Linked: the call's processes end with this server, and with them
    %% `Reply', whose end tells the waiting Python thread that no answer
    %% will come (as for a request still in the mailbox when it dies).
    Server = self(),
    Pid = spawn_link(fun() -> answer(Server, Reply, Name, Args) end),
    {noreply, State#state{runs = Runs#{Id => {Pid, Reply}}, calls = Calls#{Pid => Id}}};
handle_info({py_callback_abandoned, Id}, State = #state{runs = Runs}) ->
    case Runs of
        #{Id := {Pid, _}} -> Pid ! abandon;
        #{} -> ok
    end,
    {noreply, State};
handle_info({py_callback_runner, Pid, Runner}, State = #state{calls = Calls, runners = Runners})
  when is_map_key(Pid, Calls) ->
    {noreply, State#state{runners = Runners#{Pid => Runner}}};
handle_info({'EXIT', Pid, Reason}, State = #state{runs = Runs, calls = Calls}) ->
    {Runner, Runners} = case maps:take(Pid, State#state.runners) of
                            error -> {undefined, State#state.runners};
                            Taken -> Taken
                        end,
    case maps:take(Pid, Calls) of
        {Id, Left} ->
            {{Pid, Reply}, Running} = maps:take(Id, Runs),
            %% Killed before it answered: answered here, at once (the
            %% request's copy of `Reply' lives in this heap until a garbage
            %% collection, so its end would tell the caller late). It ends
            %% `normal' only once it answered or the call was abandoned.
            _ = case Reason of
                    normal -> ok;
                    _ ->
                        is_pid(Runner) andalso exit(Runner, kill),
                        reply(Reply, exit_error(Reason))
                end,
            {noreply, State#state{runs = Running, calls = Left, runners = Runners}};
        error ->
            {noreply, State#state{runners = Runners}}
    end;
handle_info({py_callback, Pid, Message}, State) when is_pid(Pid) ->
    Pid ! Message,
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

%% The application's `prep_stop' tells the waiting Python threads that it
%% stops; a restart of this server alone is not a stop (its calls in
%% flight raise ErlangError, not RuntimeError).
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok.

%% Runs the function in a process of its own and watches it: the Python
%% thread waiting in `erlang.call' gets an answer even when that process is
%% killed (`exit(self(), kill)', a linked process dying, `exit/2' from
%% elsewhere), which no `catch' sees.
answer(Server, Reply, Name, Args) ->
    process_flag(trap_exit, true),
    Answer = self(),
    %% The result comes as a message and the runner ends `normal': an exit
    %% reason carrying it would kill the processes the function linked to.
    Runner = spawn_link(fun() -> Answer ! {self(), ?MODULE, run(Name, Args)} end),
    %% Before anything else: the server kills the runner if this process is
    %% killed (until the function runs, the link does).
    Server ! {py_callback_runner, self(), Runner},
    receive
        {Runner, ?MODULE, Result} ->
            reply(Reply, Result);
        {'EXIT', Runner, Reason} ->
            reply(Reply, exit_error(Reason));
        {'EXIT', Server, _Reason} ->
            %% The server ended: so does the call, unanswered.
            exit(Runner, kill);
        abandon ->
            %% Nobody waits for the answer any more (the first reply to a
            %% call is the one taken: this one only reaches a caller still
            %% waiting, told by a message that was not the NIF's).
            exit(Runner, kill),
            reply(Reply, {error, <<"the call was abandoned">>})
    end.

%% A reply from this server: `Reply' came in a message, so it may not be
%% one of the NIF's (a message shaped like its requests, sent by anyone).
reply(Reply, Result) ->
    try
        py_nif:callback_reply(Reply, Result)
    catch
        error:badarg -> ok
    end.

run(Name, Args) ->
    case ets:lookup(?TABLE, Name) of
        [{_, Fun}] ->
            try
                {ok, apply(Fun, Args)}
            catch
                Class:Reason ->
                    {error, describe("~tp:~tp", [Class, Reason])}
            end;
        [] ->
            {error, <<"no Erlang function registered as ", Name/binary>>}
    end.

exit_error(Reason) ->
    {error, describe("exit:~tp", [Reason])}.

%% An error's text for Python, bounded: a reason that carries a Python
%% error (`{badmatch, {error, {Type, Message, Traceback}}}' of a nested
%% `py:call') quotes its text, which the next level up quotes again, four
%% times the size at each level (a chain of a dozen failing levels took
%% gigabytes). `~tp': a UTF-8 binary prints as its characters, which go to
%% Python as they were (`~p' gave their bytes as Latin-1 characters).
describe(Format, Args) ->
    unicode:characters_to_binary(io_lib:format(Format, Args, [{chars_limit, ?ERROR_CHARS}])).

to_key(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
to_key(Name) when is_binary(Name) -> Name.
