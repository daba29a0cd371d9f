%% @doc The NIF library `py_nif` (Rust, in nif/). Low level: use `py' instead.
%% Every function here raises `badarg' on arguments of the wrong type.
-module(py_nif).

-export([init/1, python_version/0, pool_stats/0,
         call/6, eval/4, exec/3, cancel/1, namespace_count/0,
         set_callback_server/1, callback_reply/2]).

-on_load(load/0).

-nifs([init/1, python_version/0, pool_stats/0,
       call/6, eval/4, exec/3, cancel/1, namespace_count/0,
       set_callback_server/1, callback_reply/2]).

-type job() :: reference().
-export_type([job/0]).

-spec load() -> ok | {error, term()}.
load() ->
    Dir = case code:priv_dir(erlang_python) of
              {error, bad_name} ->
                  filename:join([filename:dirname(code:which(?MODULE)), "..", "priv"]);
              PrivDir ->
                  PrivDir
          end,
    erlang:load_nif(filename:join(Dir, "py_nif"), 0).

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE})).

-spec init(#{paths := [binary()], executable := binary() | nil,
             max_workers := non_neg_integer()}) -> ok | {error, term()}.
init(_Options) -> ?NOT_LOADED.

-spec python_version() -> {ok, binary()} | {error, not_initialized}.
python_version() -> ?NOT_LOADED.

-spec pool_stats() -> map() | {error, not_initialized}.
pool_stats() -> ?NOT_LOADED.

-spec call(pid(), reference(), py:name(), py:name(), list(), map()) ->
          {ok, job()} | {error, not_initialized}.
call(_Caller, _Ref, _Module, _Function, _Args, _Kwargs) -> ?NOT_LOADED.

-spec eval(pid(), reference(), iodata() | atom(), map()) -> {ok, job()} | {error, not_initialized}.
eval(_Caller, _Ref, _Code, _Locals) -> ?NOT_LOADED.

-spec exec(pid(), reference(), iodata() | atom()) -> {ok, job()} | {error, not_initialized}.
exec(_Caller, _Ref, _Code) -> ?NOT_LOADED.

-spec cancel(job()) -> ok.
cancel(_Job) -> ?NOT_LOADED.

-spec namespace_count() -> non_neg_integer().
namespace_count() -> ?NOT_LOADED.

-spec set_callback_server(pid() | undefined) -> ok.
set_callback_server(_Pid) -> ?NOT_LOADED.

-spec callback_reply(reference(), {ok, term()} | {error, binary()}) -> ok.
callback_reply(_Reply, _Result) -> ?NOT_LOADED.
