%% @doc The NIF library `py_nif` (Rust, in nif/). Low level: use `py' instead.
%% Every function here raises `badarg' on arguments of the wrong type.
-module(py_nif).

-export([init/1, python_version/0, pool_stats/0,
         call/6, control_call/6, eval/4, exec/3, cancel/1, namespace_count/0,
         set_callback_server/1, callback_reply/2,
         %% event loops, low level
         event_loop_new/0, event_loop_set_router/2, event_loop_destroy/1,
         event_loop_wakeup/1, loop_id/1, loop_stats/1,
         add_reader/3, remove_reader/2, add_writer/3, remove_writer/2,
         call_later/3, cancel_timer/2, poll_events/2, get_pending/1,
         %% used by py_event_worker / py_event_loops
         loop_apply_selects/1, loop_fd_ready/3, loop_tick/1, set_loop_placer/1, set_orphan_stopper/1,
         event_loop_adopt/2, loop_needs_placing/1, loop_router/1, loop_is_closed/1,
         sleep_done/1, apply_orphan_stops/0,
         %% used by py_cli
         end_with_parent/1, exit_now/1, unignore_terminal_signals/0,
         %% used by py_signal_forwarder
         deliver_signal/1,
         %% UDP helpers for tests (nif/src/test_udp.rs)
         create_test_udp_socket/1, sendto_test_udp/4, recvfrom_test_udp/2,
         set_udp_broadcast/2, close_test_fd/1]).

-on_load(load/0).

-nifs([init/1, python_version/0, pool_stats/0,
       call/6, control_call/6, eval/4, exec/3, cancel/1, namespace_count/0,
       set_callback_server/1, callback_reply/2,
       event_loop_new/0, event_loop_set_router/2, event_loop_destroy/1,
       event_loop_wakeup/1, loop_id/1, loop_stats/1,
       add_reader/3, remove_reader/2, add_writer/3, remove_writer/2,
       call_later/3, cancel_timer/2, poll_events_watch/3, poll_events_unwatch/3,
       get_pending/1,
       loop_apply_selects/1, loop_fd_ready/3, loop_tick/1, set_loop_placer/1, set_orphan_stopper/1,
       event_loop_adopt/2, loop_needs_placing/1, loop_router/1, loop_is_closed/1,
       sleep_done/1, apply_orphan_stops/0, end_with_parent/1, exit_now/1, unignore_terminal_signals/0,
       deliver_signal/1,
       create_test_udp_socket/1, sendto_test_udp/4, recvfrom_test_udp/2,
       set_udp_broadcast/2, close_test_fd/1]).

-type job() :: reference().
-type loop_ref() :: reference().
%% A native event loop (a NIF resource).
-type fd_ref() :: {integer(), pos_integer()}.
%% One fd registration of a loop: `{Fd, RegistrationToken}'.
-type callback_id() :: non_neg_integer().
-type loop_signal() :: {arm, non_neg_integer()} | selects | closed | released.
-export_type([job/0, loop_ref/0, fd_ref/0, callback_id/0, loop_signal/0]).

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

-spec init(#{paths := [binary()], site_dirs := [binary()],
             system_site_packages := boolean(), executable := binary() | nil,
             max_workers := non_neg_integer(),
             wheel_resolution_us := pos_integer(),
             cancel_grace_ms := non_neg_integer()}) -> ok | {error, term()}.
init(_Options) -> ?NOT_LOADED.

-spec python_version() -> {ok, binary()} | {error, not_initialized}.
python_version() -> ?NOT_LOADED.

-spec pool_stats() -> map() | {error, not_initialized}.
pool_stats() -> ?NOT_LOADED.

-spec call(pid(), reference(), py:name(), py:name(), list(), map()) ->
          {ok, job()} | {error, not_initialized}.
call(_Caller, _Ref, _Module, _Function, _Args, _Kwargs) -> ?NOT_LOADED.

%% @doc `call/6' on a lane of its own (two threads), for short jobs that hand
%% work to a thread of its own (`py_asyncio' loops): they never wait behind
%% the worker pool's long calls.
-spec control_call(pid(), reference(), py:name(), py:name(), list(), map()) ->
          {ok, job()} | {error, not_initialized}.
control_call(_Caller, _Ref, _Module, _Function, _Args, _Kwargs) -> ?NOT_LOADED.

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

%% Event loops (see the README, "Low-level event loop API").

-spec event_loop_new() -> {ok, loop_ref()} | {error, term()}.
event_loop_new() -> ?NOT_LOADED.

-spec event_loop_set_router(loop_ref(), pid()) -> ok | {error, closed | noproc}.
event_loop_set_router(_Loop, _Pid) -> ?NOT_LOADED.

-spec event_loop_destroy(loop_ref()) -> ok.
event_loop_destroy(_Loop) -> ?NOT_LOADED.

-spec event_loop_wakeup(loop_ref()) -> ok | {error, closed}.
event_loop_wakeup(_Loop) -> ?NOT_LOADED.

-spec loop_id(loop_ref()) -> pos_integer().
loop_id(_Loop) -> ?NOT_LOADED.

-spec loop_stats(loop_ref()) -> #{atom() => non_neg_integer()}.
loop_stats(_Loop) -> ?NOT_LOADED.

-spec add_reader(loop_ref(), integer(), callback_id()) -> {ok, fd_ref()} | {error, term()}.
add_reader(_Loop, _Fd, _CallbackId) -> ?NOT_LOADED.

-spec remove_reader(loop_ref(), fd_ref()) -> ok | {error, not_found | closed | python_loop}.
remove_reader(_Loop, _FdRef) -> ?NOT_LOADED.

-spec add_writer(loop_ref(), integer(), callback_id()) -> {ok, fd_ref()} | {error, term()}.
add_writer(_Loop, _Fd, _CallbackId) -> ?NOT_LOADED.

-spec remove_writer(loop_ref(), fd_ref()) -> ok | {error, not_found | closed | python_loop}.
remove_writer(_Loop, _FdRef) -> ?NOT_LOADED.

-spec call_later(loop_ref(), non_neg_integer(), callback_id()) ->
          {ok, non_neg_integer()} | {error, closed | server_down | python_loop}.
call_later(_Loop, _DelayMs, _CallbackId) -> ?NOT_LOADED.

-spec cancel_timer(loop_ref(), non_neg_integer()) -> ok | {error, not_found | closed | python_loop}.
cancel_timer(_Loop, _TimerRef) -> ?NOT_LOADED.

%% @doc Waits at most `TimeoutMs' for events of the loop; returns how many
%% are queued as soon as one is (0 after the timeout, or at once after
%% `event_loop_wakeup/1'). The caller waits in a `receive', holding no
%% scheduler: any number of processes may poll loops at once.
-spec poll_events(loop_ref(), non_neg_integer()) -> non_neg_integer() | {error, term()}.
poll_events(Loop, TimeoutMs)
  when is_integer(TimeoutMs), TimeoutMs >= 0, TimeoutMs < 1 bsl 64 ->
    Token = erlang:unique_integer([positive]),
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    Result = poll_events(Loop, Token, Deadline, false),
    flush_ready(Token),
    Result;
poll_events(_Loop, _TimeoutMs) ->
    erlang:error(badarg).

-spec poll_events(loop_ref(), pos_integer(), integer(), boolean()) ->
          non_neg_integer() | {error, term()}.
poll_events(Loop, Token, Deadline, Woken) ->
    case poll_events_watch(Loop, Token, Woken) of
        {watching, TimerMs} ->
            Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
            %% A due timer of a loop no router serves is this wait's to see;
            %% `after' takes at most 2^32-1 ms.
            Wait = lists:min([Left, TimerMs, 16#ffffffff]),
            receive
                {py_loop_ready, Token} ->
                    poll_events(Loop, Token, Deadline, true)
            after Wait ->
                case Wait < Left of
                    true ->
                        poll_events(Loop, Token, Deadline, true);
                    false ->
                        poll_events_unwatch(Loop, Token, Wait > 0)
                end
            end;
        Result ->
            Result
    end.

%% A look that found news may have been told of it too, even twice (news
%% just after a wait for the timer ended, and again during the next look).
-spec flush_ready(pos_integer()) -> ok.
flush_ready(Token) ->
    receive {py_loop_ready, Token} -> flush_ready(Token) after 0 -> ok end.

%% One look of `poll_events/2': the count, or watching (the caller is sent
%% `{py_loop_ready, Token}' on news; look again then or in `TimerMs').
-spec poll_events_watch(loop_ref(), pos_integer(), boolean()) ->
          non_neg_integer() | {watching, non_neg_integer() | infinity} | {error, term()}.
poll_events_watch(_Loop, _Token, _Woken) -> ?NOT_LOADED.

%% The end of a `poll_events/2' that timed out (after a wait, if `Slept'):
%% the count now.
-spec poll_events_unwatch(loop_ref(), pos_integer(), boolean()) ->
          non_neg_integer() | {error, term()}.
poll_events_unwatch(_Loop, _Token, _Slept) -> ?NOT_LOADED.

-spec get_pending(loop_ref()) ->
          [{callback_id(), read | write | timer}] | {error, closed | python_loop}.
get_pending(_Loop) -> ?NOT_LOADED.

-spec loop_apply_selects(loop_ref()) -> ok.
loop_apply_selects(_Loop) -> ?NOT_LOADED.

-spec loop_fd_ready(loop_ref(), reference(), read | write) -> ok.
loop_fd_ready(_Loop, _FdResource, _Direction) -> ?NOT_LOADED.

-spec loop_tick(loop_ref()) -> [loop_signal()].
loop_tick(_Loop) -> ?NOT_LOADED.

-spec set_loop_placer(pid() | undefined) -> ok.
set_loop_placer(_Pid) -> ?NOT_LOADED.

%% @doc Who makes the select stops of loops that close while no placer runs.
-spec set_orphan_stopper(pid() | undefined) -> ok.
set_orphan_stopper(_Pid) -> ?NOT_LOADED.

%% @doc `event_loop_set_router/2', unless another live process serves the
%% loop: how a worker takes a Python loop (asked for again while unserved).
-spec event_loop_adopt(loop_ref(), pid()) -> ok | {error, closed | noproc | served}.
event_loop_adopt(_Loop, _Pid) -> ?NOT_LOADED.

%% @doc Whether the loop is open and no worker ever served it.
-spec loop_needs_placing(loop_ref()) -> boolean().
loop_needs_placing(_Loop) -> ?NOT_LOADED.

%% @doc The process serving the loop, or `undefined'.
-spec loop_router(loop_ref()) -> pid() | undefined.
loop_router(_Loop) -> ?NOT_LOADED.

%% @doc Whether the loop is closed.
-spec loop_is_closed(loop_ref()) -> boolean().
loop_is_closed(_Loop) -> ?NOT_LOADED.

-spec sleep_done(reference()) -> ok.
sleep_done(_Wait) -> ?NOT_LOADED.

-spec apply_orphan_stops() -> ok.
apply_orphan_stops() -> ?NOT_LOADED.

%% @doc This OS process gets SIGTERM when its parent, the OS process
%% `ParentOsPid', ends (Linux's parent-death signal): `parent_gone' when it
%% has already.
-spec end_with_parent(integer()) -> ok | {error, parent_gone | integer()}.
end_with_parent(_ParentOsPid) -> ?NOT_LOADED.

%% @doc Ends this OS process at once with `Status', as a signal would: no
%% exit handler or library destructor runs (`erlang:halt/2''s `exit()' ran
%% them under CPython starting on another thread: a segmentation fault).
%% For `bin/erlang-python''s end on a signal only.
-spec exit_now(0..255) -> no_return().
exit_now(_Status) -> ?NOT_LOADED.

%% @doc SIGINT and SIGTSTP, if ignored, get a handler that does nothing: the
%% node still ignores them, but the programs it starts get the default
%% (an ignored signal stays ignored across `exec', a handler does not).
-spec unignore_terminal_signals() -> ok | {error, integer()}.
unignore_terminal_signals() -> ?NOT_LOADED.

%% @doc Writes a signal the BEAM caught to the signal pipes of the Python
%% loops (their handlers for it run; the others ignore it). Only the
%% signals `py_signals' routes; `badarg' for any other.
-spec deliver_signal(sighup | sigalrm | sigusr2) -> ok.
deliver_signal(_Signal) -> ?NOT_LOADED.

%% UDP helpers for tests (nif/src/test_udp.rs): non-blocking IPv4 UDP
%% sockets bound on 127.0.0.1, used by fd number. A number that is not a UDP
%% socket gives `{error, ebadf | enotsock | not_udp}'; other OS errors are
%% errno atoms (`eaddrinuse', `emsgsize', ...) or `{errno, Code}'.

%% Port 0: an ephemeral port. Returns the fd and the port bound.
-spec create_test_udp_socket(0..65535) ->
          {ok, {non_neg_integer(), 0..65535}} | {error, term()}.
create_test_udp_socket(_Port) -> ?NOT_LOADED.

%% Host: an IPv4 literal (binary or string, else `{error, einval}') or an
%% IPv4 tuple. Never blocks.
-spec sendto_test_udp(integer(), iodata(), binary() | string() | inet:ip4_address(),
                      0..65535) -> ok | {error, term()}.
sendto_test_udp(_Fd, _Data, _Host, _Port) -> ?NOT_LOADED.

%% One waiting datagram (at most MaxBytes of it, 1..65536) and its sender,
%% the host as a binary such as `<<"127.0.0.1">>'; `{error, eagain}' when
%% none is waiting. Never blocks.
-spec recvfrom_test_udp(integer(), 1..65536) ->
          {ok, {binary(), {binary(), 0..65535}}} | {error, term()}.
recvfrom_test_udp(_Fd, _MaxBytes) -> ?NOT_LOADED.

%% SO_BROADCAST on or off; any other value than these four raises badarg.
-spec set_udp_broadcast(integer(), boolean() | 0 | 1) -> ok | {error, term()}.
set_udp_broadcast(_Fd, _Enable) -> ?NOT_LOADED.

%% Closes a socket made by create_test_udp_socket/1; any other fd (never
%% closed here): `{error, ebadf}'.
-spec close_test_fd(integer()) -> ok | {error, ebadf}.
close_test_fd(_Fd) -> ?NOT_LOADED.
