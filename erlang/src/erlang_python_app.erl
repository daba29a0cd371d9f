%% @doc The erlang_python application: starts CPython (once per VM) with the
%% configured paths, then the supervisor tree.
-module(erlang_python_app).
-behaviour(application).

-export([start/2, prep_stop/1, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    %% Loaded, so that their atoms exist before any Python error.
    _ = py_exception_names:known(),
    try
        ok = check_settings(),
        init_options()
    of
        Options -> start_with(Options)
    catch
        throw:{bad_config, _} = Bad -> {error, Bad}
    end.

start_with(Options) ->
    %% badarg: a setting of the wrong type (`max_workers => -1').
    try py_nif:init(Options) of
        ok -> start_tree();
        {error, Reason} -> {error, {python_init_failed, Reason}}
    catch
        error:badarg -> {error, {bad_config, Options}}
    end.

start_tree() ->
    {ok, Sup} = erlang_python_sup:start_link(),
    %% `py_event_loops' makes the stops of closing loops again.
    ok = py_orphan_stopper:stop(),
    case install_policy(env(install_event_loop_policy, true)) of
        ok -> {ok, Sup};
        {error, Reason} -> {error, {event_loop_policy, Reason}}
    end.

%% Wake every Python thread waiting on Erlang before the tree goes away, so
%% that stopping never waits on Python (LESSONS 7).
-spec prep_stop(term()) -> term().
prep_stop(State) ->
    ok = py_nif:set_callback_server(undefined),
    State.

-spec stop(term()) -> ok.
stop(_State) ->
    %% A placer killed (its `terminate' not run) and not restarted (the
    %% supervisor gave up) is left registered by the NIF: loops asking for
    %% a worker from now on give up at once, not after their 10 s.
    ok = py_nif:set_loop_placer(undefined),
    %% The loops still running close later, with no process of ours left
    %% to take their fds out of the poll set.
    py_orphan_stopper:start().

%% Makes plain `asyncio.run' inside the node use ErlangEventLoop.
install_policy(true) ->
    case py:call(erlang_loop, install, []) of
        {ok, none} -> ok;
        {error, _} = Error -> Error
    end;
install_policy(false) ->
    ok.

%% Throws `{bad_config, {Key, Value}}' for the first number or flag setting
%% out of its range: the start fails naming it, not in the NIF, Python or
%% the first `py:call' (a `call_timeout' of `foo').
check_settings() ->
    Checks = [{max_workers, fun(V) -> is_integer(V) andalso V >= 0 end},
              {wheel_resolution_us, fun(V) -> is_integer(V) andalso V >= 100 andalso V =< 100000 end},
              {cancel_grace_ms, fun(V) -> is_integer(V) andalso V >= 0 andalso V < 1 bsl 64 end},
              {call_timeout, fun py:is_timeout/1},
              {install_event_loop_policy, fun is_boolean/1}],
    lists:foreach(
      fun({Key, Valid}) ->
              case application:get_env(erlang_python, Key) of
                  undefined -> ok;
                  {ok, Value} ->
                      Valid(Value) orelse throw({bad_config, {Key, Value}})
              end
      end, Checks).

init_options() ->
    Venv = venv(),
    #{paths => [text(python_dir()) | python_paths()],
      site_dirs => [text(P) || P <- site_packages(Venv)],
      system_site_packages => system_site_packages(Venv),
      executable => executable(Venv),
      max_workers => env(max_workers, 32),
      wheel_resolution_us => env(wheel_resolution_us, 1000),
      cancel_grace_ms => env(cancel_grace_ms, 2000)}.

python_dir() ->
    filename:join(code:priv_dir(erlang_python), "python").

%% `{bad_config, {python_paths, Value}}' unless a list of paths.
python_paths() ->
    Paths = env(python_paths, []),
    try
        [text(P) || P <- Paths]
    catch
        _:_ -> throw({bad_config, {python_paths, Paths}})
    end.

venv() ->
    case env(venv, undefined) of
        undefined ->
            case os:getenv("ERLANG_PYTHON_VENV") of
                false -> undefined;
                "" -> undefined;
                Dir -> Dir
            end;
        Dir ->
            _ = setting_text(venv, Dir),
            Dir
    end.

site_packages(undefined) -> [];
site_packages(Venv) -> filelib:wildcard(filename:join([Venv, "lib", "python3*", "site-packages"])).

%% As the venv's python decides it (site.py): the last
%% `include-system-site-packages' line of its pyvenv.cfg, the key in any
%% case, false when absent.
system_site_packages(undefined) ->
    true;
system_site_packages(Venv) ->
    case file:read_file(filename:join(Venv, "pyvenv.cfg")) of
        {ok, Cfg} ->
            Values = [Value || Line <- string:split(Cfg, "\n", all),
                               {ok, Value} <- [system_site_value(Line)]],
            lists:last([false | Values]);
        {error, _} ->
            true
    end.

system_site_value(Line) ->
    case string:split(Line, "=") of
        [Key, Value] ->
            case string:lowercase(string:trim(Key)) of
                <<"include-system-site-packages">> ->
                    {ok, string:lowercase(string:trim(Value)) =:= <<"true">>};
                _ ->
                    skip
            end;
        _ ->
            skip
    end.

executable(Venv) ->
    case {env(executable, undefined), Venv} of
        {undefined, undefined} -> nil;
        {undefined, _} ->
            Python = filename:join([Venv, "bin", "python"]),
            case filelib:is_file(Python) of
                true -> text(Python);
                false -> nil
            end;
        {Path, _} -> setting_text(executable, Path)
    end.

env(Key, Default) ->
    application:get_env(erlang_python, Key, Default).

%% A path as the NIF takes it: Unicode text as a binary (else an error).
text(Value) ->
    case unicode:characters_to_binary(Value) of
        Binary when is_binary(Binary) -> Binary
    end.

%% `text/1' of the setting `Key', or `{bad_config, {Key, Value}}'.
setting_text(Key, Value) ->
    try
        text(Value)
    catch
        _:_ -> throw({bad_config, {Key, Value}})
    end.
