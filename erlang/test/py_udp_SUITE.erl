%% Tests of the UDP test NIFs (py_nif:create_test_udp_socket, sendto_test_udp,
%% recvfrom_test_udp, set_udp_broadcast, close_test_fd; nif/src/test_udp.rs),
%% of `py_nif:add_reader' on such a socket through a loop served by
%% py_event_router, and of a Python UDP echo endpoint on ErlangEventLoop
%% answering datagrams sent from Erlang.
%%
%% Every wait has a generous deadline (LESSONS 30).
-module(py_udp_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0,
         init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([send_and_recv/1, echo/1, three_clients/1, host_forms/1,
         broadcast_option/1, empty_socket/1, bad_fds/1, bad_arguments/1,
         close_only_own_sockets/1, add_reader_reports_read/1,
         python_udp_echo/1]).

-define(APP, erlang_python).
-define(WAIT, 5000).

-spec suite() -> [tuple()].
suite() ->
    [{timetrap, {seconds, 60}}].

-spec all() -> [atom()].
all() ->
    [send_and_recv, echo, three_clients, host_forms,
     broadcast_option, empty_socket, bad_fds, bad_arguments,
     close_only_own_sockets, add_reader_reports_read,
     python_udp_echo].

-spec init_per_suite(ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(?APP),
    Config.

-spec end_per_suite(ct_suite:ct_config()) -> ok.
end_per_suite(_Config) ->
    ok.

-spec init_per_testcase(atom(), ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_testcase(_Case, Config) ->
    erase(sockets),
    Config.

%% Sockets a case made (with `udp()') are closed here, passed or not.
-spec end_per_testcase(atom(), ct_suite:ct_config()) -> ok.
end_per_testcase(_Case, _Config) ->
    [py_nif:close_test_fd(Fd) || Fd <- sockets()],
    erase(sockets),
    ok.

%%--------------------------------------------------------------------
%% Sending and receiving

%% A datagram goes from one socket to another, whole, with its sender's
%% address; ports are ephemeral and distinct.
-spec send_and_recv(ct_suite:ct_config()) -> term().
send_and_recv(_Config) ->
    {A, PortA} = udp(),
    {B, PortB} = udp(),
    ?assert(PortA > 0 andalso PortB > 0 andalso PortA =/= PortB),
    ?assertEqual(ok, py_nif:sendto_test_udp(A, <<"hello">>, <<"127.0.0.1">>, PortB)),
    ?assertEqual({<<"hello">>, {<<"127.0.0.1">>, PortA}}, recv(B)),
    %% Binary data of every byte value, an iolist, a large datagram.
    All = list_to_binary(lists:seq(0, 255)),
    ok = py_nif:sendto_test_udp(A, All, "127.0.0.1", PortB),
    ?assertEqual({All, {<<"127.0.0.1">>, PortA}}, recv(B)),
    ok = py_nif:sendto_test_udp(A, [<<"io">>, $l, ["ist"]], "127.0.0.1", PortB),
    ?assertMatch({<<"iolist">>, _}, recv(B)),
    Big = binary:copy(<<"0123456789">>, 6000),
    ok = py_nif:sendto_test_udp(A, Big, "127.0.0.1", PortB),
    ?assertMatch({Big, _}, recv(B, 65536)),
    %% MaxBytes cuts the datagram; the rest is dropped with it.
    ok = py_nif:sendto_test_udp(A, <<"truncated">>, "127.0.0.1", PortB),
    ?assertMatch({<<"trunc">>, _}, recv(B, 5)),
    ?assertEqual({error, eagain}, py_nif:recvfrom_test_udp(B, 100)),
    %% An empty datagram is a datagram.
    ok = py_nif:sendto_test_udp(A, <<>>, "127.0.0.1", PortB),
    ?assertEqual({<<>>, {<<"127.0.0.1">>, PortA}}, recv(B)),
    %% A fixed port.
    close(B),
    {C, PortC} = udp(PortB),
    ?assertEqual(PortB, PortC),
    ok = py_nif:sendto_test_udp(A, <<"again">>, "127.0.0.1", PortC),
    ?assertMatch({<<"again">>, _}, recv(C)),
    %% The port of a socket still open is taken.
    ?assertEqual({error, eaddrinuse}, py_nif:create_test_udp_socket(PortC)).

%% An Erlang process echoes every datagram to its sender, 100 times.
-spec echo(ct_suite:ct_config()) -> term().
echo(_Config) ->
    {Server, ServerPort} = udp(),
    Echo = spawn_link(fun() -> echo_loop(Server) end),
    {Client, _} = udp(),
    Messages = [<<"message ", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 100)],
    lists:foreach(
      fun(Message) ->
              ok = py_nif:sendto_test_udp(Client, Message, "127.0.0.1", ServerPort),
              ?assertEqual({Message, {<<"127.0.0.1">>, ServerPort}}, recv(Client))
      end, Messages),
    unlink(Echo),
    exit(Echo, kill).

echo_loop(Fd) ->
    {Data, {Host, Port}} = recv(Fd, 65536, 60000),
    ok = py_nif:sendto_test_udp(Fd, Data, Host, Port),
    echo_loop(Fd).

%% Three clients on three distinct ports: the server sees the three senders
%% and answers each one; each client gets its own answer only.
-spec three_clients(ct_suite:ct_config()) -> term().
three_clients(_Config) ->
    {Server, ServerPort} = udp(),
    Clients = [udp() || _ <- [1, 2, 3]],
    Ports = [Port || {_, Port} <- Clients],
    ?assertEqual(4, length(lists:usort([ServerPort | Ports]))),
    [ok = py_nif:sendto_test_udp(Fd, integer_to_binary(Port), "127.0.0.1", ServerPort)
     || {Fd, Port} <- Clients],
    Got = [recv(Server) || _ <- Clients],
    ?assertEqual(lists:sort([{integer_to_binary(P), {<<"127.0.0.1">>, P}} || P <- Ports]),
                 lists:sort(Got)),
    [ok = py_nif:sendto_test_udp(Server, <<"for ", Data/binary>>, Host, Port)
     || {Data, {Host, Port}} <- Got],
    [?assertEqual({<<"for ", (integer_to_binary(Port))/binary>>,
                   {<<"127.0.0.1">>, ServerPort}}, recv(Fd))
     || {Fd, Port} <- Clients],
    [?assertEqual({error, eagain}, py_nif:recvfrom_test_udp(Fd, 100)) || {Fd, _} <- Clients].

%% Host as a binary, a string or a tuple; text that is no IPv4 literal is
%% `{error, einval}'.
-spec host_forms(ct_suite:ct_config()) -> term().
host_forms(_Config) ->
    {A, _} = udp(),
    {B, PortB} = udp(),
    [begin
         ?assertEqual(ok, py_nif:sendto_test_udp(A, <<"x">>, Host, PortB)),
         ?assertMatch({<<"x">>, _}, recv(B))
     end || Host <- [<<"127.0.0.1">>, "127.0.0.1", {127, 0, 0, 1}]],
    [?assertEqual({error, einval}, py_nif:sendto_test_udp(A, <<"x">>, Host, PortB))
     || Host <- [<<"localhost">>, "", <<"127.0.0">>, <<"::1">>, <<"127.0.0.256">>,
                 <<255, 0>>]].

%% SO_BROADCAST: without it a send to 255.255.255.255 is refused (EACCES);
%% with it the kernel takes the datagram (or finds no route, without a
%% broadcast-capable interface). true/false/1/0 only; other values badarg.
-spec broadcast_option(ct_suite:ct_config()) -> term().
broadcast_option(_Config) ->
    {Fd, Port} = udp(),
    Broadcast = fun() -> py_nif:sendto_test_udp(Fd, <<"all">>, {255, 255, 255, 255}, Port) end,
    ?assertEqual({error, eacces}, Broadcast()),
    ?assertEqual(ok, py_nif:set_udp_broadcast(Fd, true)),
    Allowed = Broadcast(),
    ct:log("broadcast allowed: ~p", [Allowed]),
    ?assertNotEqual({error, eacces}, Allowed),
    ?assertEqual(ok, py_nif:set_udp_broadcast(Fd, false)),
    ?assertEqual({error, eacces}, Broadcast()),
    ?assertEqual(ok, py_nif:set_udp_broadcast(Fd, 1)),
    ?assertNotEqual({error, eacces}, Broadcast()),
    ?assertEqual(ok, py_nif:set_udp_broadcast(Fd, 0)),
    ?assertEqual({error, eacces}, Broadcast()),
    [?assertError(badarg, py_nif:set_udp_broadcast(Fd, Bad))
     || Bad <- [2, -1, yes, undefined, <<"true">>, "true", 1.0, [], {true}]],
    %% Still off after the refused values.
    ?assertEqual({error, eacces}, Broadcast()),
    ?assertEqual({error, ebadf}, py_nif:set_udp_broadcast(-1, true)).

%% Nothing waiting: `{error, eagain}' at once (never blocks), again and again.
-spec empty_socket(ct_suite:ct_config()) -> term().
empty_socket(_Config) ->
    {Fd, _} = udp(),
    T0 = erlang:monotonic_time(millisecond),
    [?assertEqual({error, eagain}, py_nif:recvfrom_test_udp(Fd, 1500)) || _ <- lists:seq(1, 100)],
    ct:log("100 empty receives took ~p ms", [erlang:monotonic_time(millisecond) - T0]).

%% Fds that are not UDP sockets of ours are errors, never a crash and never
%% a use of someone else's file: negative, unused, closed, a TCP socket.
-spec bad_fds(ct_suite:ct_config()) -> term().
bad_fds(_Config) ->
    {Live, LivePort} = udp(),
    Unused = unused_fd(),
    [begin
         ?assertEqual({error, ebadf}, py_nif:recvfrom_test_udp(Fd, 100)),
         ?assertEqual({error, ebadf}, py_nif:sendto_test_udp(Fd, <<"x">>, "127.0.0.1", LivePort)),
         ?assertEqual({error, ebadf}, py_nif:set_udp_broadcast(Fd, true)),
         ?assertEqual({error, ebadf}, py_nif:close_test_fd(Fd))
     end || Fd <- [-1, Unused]],
    %% A stream socket of the VM's: not_udp, and it keeps working.
    {ok, Listen} = gen_tcp:listen(0, [binary, {active, false}, {ip, {127, 0, 0, 1}}]),
    {ok, TcpPort} = inet:port(Listen),
    {ok, TcpFd} = inet:getfd(Listen),
    ?assertEqual({error, not_udp}, py_nif:recvfrom_test_udp(TcpFd, 100)),
    ?assertEqual({error, not_udp}, py_nif:sendto_test_udp(TcpFd, <<"x">>, "127.0.0.1", LivePort)),
    ?assertEqual({error, not_udp}, py_nif:set_udp_broadcast(TcpFd, true)),
    ?assertEqual({error, ebadf}, py_nif:close_test_fd(TcpFd)),
    {ok, Conn} = gen_tcp:connect({127, 0, 0, 1}, TcpPort, [binary, {active, false}]),
    {ok, Accepted} = gen_tcp:accept(Listen, ?WAIT),
    ok = gen_tcp:send(Conn, <<"still fine">>),
    ?assertEqual({ok, <<"still fine">>}, gen_tcp:recv(Accepted, 0, ?WAIT)),
    [ok = gen_tcp:close(S) || S <- [Conn, Accepted, Listen]],
    %% Our own socket, closed: its number is bad now (unless the VM reused
    %% it meanwhile, which only changes the error).
    close(Live),
    ?assertMatch({error, _}, py_nif:recvfrom_test_udp(Live, 100)),
    ?assertMatch({error, _}, py_nif:close_test_fd(Live)).

%% Arguments of the wrong type or out of range raise badarg.
-spec bad_arguments(ct_suite:ct_config()) -> term().
bad_arguments(_Config) ->
    {Fd, Port} = udp(),
    [?assertError(badarg, py_nif:create_test_udp_socket(Bad))
     || Bad <- [-1, 65536, port, <<"0">>, 1.0]],
    [?assertError(badarg, py_nif:recvfrom_test_udp(BadFd, 100))
     || BadFd <- [fd, <<"3">>, 1.5, 1 bsl 40]],
    [?assertError(badarg, py_nif:recvfrom_test_udp(Fd, Bad))
     || Bad <- [0, -1, 65537, 1 bsl 40, many]],
    [?assertError(badarg, py_nif:sendto_test_udp(Fd, BadData, "127.0.0.1", Port))
     || BadData <- [data, 42, [256], {<<"x">>}]],
    [?assertError(badarg, py_nif:sendto_test_udp(Fd, <<"x">>, BadHost, Port))
     || BadHost <- [localhost, 127001, {127, 0, 0}, {127, 0, 0, 256}, [-1], [$1 | foo]]],
    [?assertError(badarg, py_nif:sendto_test_udp(Fd, <<"x">>, "127.0.0.1", BadPort))
     || BadPort <- [-1, 65536, "80"]],
    [?assertError(badarg, py_nif:close_test_fd(Bad)) || Bad <- [fd, <<>>]],
    %% The socket is unharmed.
    ok = py_nif:sendto_test_udp(Fd, <<"fine">>, "127.0.0.1", Port),
    ?assertMatch({<<"fine">>, _}, recv(Fd)).

%% close_test_fd closes only sockets made by create_test_udp_socket: a
%% gen_udp socket's fd is refused and keeps working; ours is closed once.
-spec close_only_own_sockets(ct_suite:ct_config()) -> term().
close_only_own_sockets(_Config) ->
    {ok, S} = gen_udp:open(0, [binary, {active, false}, {ip, {127, 0, 0, 1}}]),
    {ok, SFd} = inet:getfd(S),
    {ok, SPort} = inet:port(S),
    ?assertEqual({error, ebadf}, py_nif:close_test_fd(SFd)),
    {Fd, _} = udp(),
    %% The helpers work on any UDP socket, gen_udp's included.
    ok = py_nif:sendto_test_udp(Fd, <<"to gen_udp">>, "127.0.0.1", SPort),
    ?assertMatch({ok, {_, _, <<"to gen_udp">>}}, gen_udp:recv(S, 0, ?WAIT)),
    ?assertEqual(ok, py_nif:close_test_fd(Fd)),
    forget(Fd),
    ?assertEqual({error, ebadf}, py_nif:close_test_fd(Fd)),
    ok = gen_udp:close(S).

%%--------------------------------------------------------------------
%% Event loop

%% add_reader on a socket from create_test_udp_socket: nothing until a
%% datagram comes, then `{CallbackId, read}' (level-triggered until it is
%% read); remove_reader stops it; no fd is left open afterwards.
-spec add_reader_reports_read(ct_suite:ct_config()) -> term().
add_reader_reports_read(_Config) ->
    Baseline = fd_count(),
    {ok, Loop} = py_nif:event_loop_new(),
    {ok, Router} = py_event_router:start_link(Loop),
    {Fd, Port} = udp(),
    {Tx, TxPort} = udp(),
    {ok, FdRef} = py_nif:add_reader(Loop, Fd, 42),
    ?assertEqual([], collect(Loop, 1, 100)),
    ok = py_nif:sendto_test_udp(Tx, <<"wake up">>, "127.0.0.1", Port),
    ?assertEqual([{42, read}], collect(Loop, 1, ?WAIT)),
    %% Not read yet: told again.
    ?assertEqual([{42, read}], collect(Loop, 1, ?WAIT)),
    ?assertMatch({<<"wake up">>, _}, recv(Fd)),
    ?assertEqual([], collect(Loop, 1, 100)),
    %% Every datagram wakes it.
    lists:foreach(
      fun(I) ->
              ok = py_nif:sendto_test_udp(Tx, integer_to_binary(I), "127.0.0.1", Port),
              ?assertEqual([{42, read}], collect(Loop, 1, ?WAIT)),
              ?assertEqual({integer_to_binary(I), {<<"127.0.0.1">>, TxPort}}, recv(Fd))
      end, lists:seq(1, 20)),
    ?assertEqual(ok, py_nif:remove_reader(Loop, FdRef)),
    ok = py_nif:sendto_test_udp(Tx, <<"unheard">>, "127.0.0.1", Port),
    ?assertEqual([], collect(Loop, 1, 200)),
    ?assertMatch(#{fds := 0}, py_nif:loop_stats(Loop)),
    %% The router served only this loop: destroying it ends the router.
    Mon = monitor(process, Router),
    unlink(Router),
    ok = py_nif:event_loop_destroy(Loop),
    receive {'DOWN', Mon, process, Router, normal} -> ok
    after ?WAIT -> ct:fail({router_still_alive, Router})
    end,
    close(Fd),
    close(Tx),
    %% The loop's duplicate fd goes with the asynchronous select stop.
    Final = wait_until(fun fd_count/0, fun(Count) -> Count =< Baseline end, ?WAIT),
    ?assert(Final =< Baseline, {leaked_fds, Final - Baseline}).

%%--------------------------------------------------------------------
%% Python

%% A UDP echo endpoint on ErlangEventLoop (asyncio's DatagramProtocol, in a
%% Python thread) answers datagrams sent from Erlang with the NIFs.
-spec python_udp_echo(ct_suite:ct_config()) -> term().
python_udp_echo(_Config) ->
    ok = py:exec(<<"
import asyncio, threading, erlang_loop

class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)

_udp_ready = threading.Event()
_udp = {}

def _serve():
    loop = erlang_loop.ErlangEventLoop()
    _udp['loop'] = loop
    try:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(_Echo, local_addr=('127.0.0.1', 0)))
        _udp['port'] = transport.get_extra_info('sockname')[1]
        _udp['class'] = type(transport).__name__
        _udp_ready.set()
        loop.run_forever()
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        _udp_ready.set()

_udp_thread = threading.Thread(target=_serve, daemon=True)
_udp_thread.start()
_udp_ready.wait(10)
">>),
    {ok, PyPort} = py:eval(<<"_udp['port']">>),
    ?assertEqual({ok, <<"_ErlangDatagramTransport">>}, py:eval(<<"_udp['class']">>)),
    {Fd, _} = udp(),
    [begin
         Message = <<"datagram ", (integer_to_binary(I))/binary>>,
         ok = py_nif:sendto_test_udp(Fd, Message, "127.0.0.1", PyPort),
         ?assertEqual({string:uppercase(Message), {<<"127.0.0.1">>, PyPort}}, recv(Fd))
     end || I <- lists:seq(1, 50)],
    ok = py:exec(<<"_udp['loop'].call_soon_threadsafe(_udp['loop'].stop); _udp_thread.join(10)">>),
    ?assertEqual({ok, false}, py:eval(<<"_udp_thread.is_alive()">>)).

%%--------------------------------------------------------------------
%% Helpers

%% A new socket, closed by end_per_testcase if the case does not close it.
udp() ->
    udp(0).

udp(Port) ->
    {ok, {Fd, Bound}} = py_nif:create_test_udp_socket(Port),
    put(sockets, [Fd | sockets()]),
    {Fd, Bound}.

sockets() ->
    case get(sockets) of undefined -> []; S -> S end.

close(Fd) ->
    ok = py_nif:close_test_fd(Fd),
    forget(Fd).

forget(Fd) ->
    put(sockets, lists:delete(Fd, sockets())).

%% The next datagram on `Fd', waiting for it (polling: the socket is
%% non-blocking) up to the deadline.
recv(Fd) ->
    recv(Fd, 65536).

recv(Fd, Max) ->
    recv(Fd, Max, ?WAIT).

recv(Fd, Max, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    recv_until(Fd, Max, Deadline).

recv_until(Fd, Max, Deadline) ->
    case py_nif:recvfrom_test_udp(Fd, Max) of
        {ok, Datagram} ->
            Datagram;
        {error, eagain} ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({no_datagram, Fd});
                false -> timer:sleep(1), recv_until(Fd, Max, Deadline)
            end;
        Error ->
            error({recvfrom_test_udp, Fd, Error})
    end.

%% Events of `Loop' in arrival order, until `N' arrived or `Timeout' ms passed.
collect(Loop, N, Timeout) ->
    collect(Loop, N, erlang:monotonic_time(millisecond) + Timeout, []).

collect(_Loop, N, _Deadline, Acc) when length(Acc) >= N ->
    Acc;
collect(Loop, N, Deadline, Acc) ->
    Left = Deadline - erlang:monotonic_time(millisecond),
    case Left =< 0 of
        true ->
            Acc;
        false ->
            Count = py_nif:poll_events(Loop, min(Left, 500)),
            ?assert(is_integer(Count), {poll_events, Count}),
            collect(Loop, N, Deadline, Acc ++ py_nif:get_pending(Loop))
    end.

%% Calls `Get' until `Done' accepts its value or `Timeout' ms pass; returns
%% the last value.
wait_until(Get, Done, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    wait_until_deadline(Get, Done, Deadline).

wait_until_deadline(Get, Done, Deadline) ->
    Value = Get(),
    case Done(Value) orelse erlang:monotonic_time(millisecond) > Deadline of
        true -> Value;
        false -> timer:sleep(10), wait_until_deadline(Get, Done, Deadline)
    end.

fd_count() ->
    {ok, Names} = file:list_dir("/proc/self/fd"),
    length(Names).

%% An fd number no file uses (above every open one).
unused_fd() ->
    {ok, Names} = file:list_dir("/proc/self/fd"),
    lists:max([list_to_integer(N) || N <- Names]) + 1000.
