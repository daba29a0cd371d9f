%% Tests of bin/erlang-python: each case runs it as an OS process.
-module(py_cli_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1]).
-export([exit_status/1, clean_exit/1, uncaught_exception/1, dash_c/1,
         argv_forwarded/1, c_locale/1, not_started/1, sigint_stops_node/1, dash_m/1, script_path_and_main/1, usage/1,
         tracing_on_request/1, exit_status_as_python3/1, missing_script/1,
         argument_not_utf8/1, signals_end_the_run/1, routed_signals_reach_the_program/1,
         early_sigterm_ends_the_run/1, threads_are_joined/1,
         dash_c_runs_in_main/1, uncaught_as_python3/1,
         children_get_terminal_signals/1, warning_options/1,
         program_from_stdin/1, environment_as_started/1,
         finalized_as_python3/1, interrupt_main_in_the_program/1,
         conformance_typo_fails/1, ctrl_c_in_an_atexit_handler/1,
         unflushed_output_is_written_at_exit/1]).

%% A run of the CLI boots a VM and Python: give it room on a loaded machine.
-define(RUN_TIMEOUT_MS, 60000).

-spec suite() -> [tuple()].
suite() ->
    [{timetrap, {seconds, 120}}].

-spec all() -> [atom()].
all() ->
    [exit_status, clean_exit, uncaught_exception, dash_c, argv_forwarded, c_locale,
     dash_m, script_path_and_main, usage, not_started, sigint_stops_node,
     tracing_on_request, exit_status_as_python3, missing_script,
     argument_not_utf8, signals_end_the_run, routed_signals_reach_the_program,
     early_sigterm_ends_the_run, threads_are_joined,
     dash_c_runs_in_main, uncaught_as_python3, children_get_terminal_signals,
     warning_options, program_from_stdin, environment_as_started,
     finalized_as_python3, interrupt_main_in_the_program, conformance_typo_fails,
     ctrl_c_in_an_atexit_handler, unflushed_output_is_written_at_exit].

-spec init_per_suite(ct_suite:ct_config()) -> ct_suite:ct_config().
init_per_suite(Config) ->
    Root = repo_root(),
    Cli = filename:join([Root, "bin", "erlang-python"]),
    ?assert(filelib:is_regular(Cli)),
    [{cli, Cli} | Config].

-spec end_per_suite(ct_suite:ct_config()) -> ok.
end_per_suite(_Config) ->
    ok.

%%--------------------------------------------------------------------

%% As python3 ends: atexit handlers run (logging's flushes a buffered
%% handler there) after the threads are joined, with the program's exit
%% status kept; then what the program's module held is collected and
%% reports what was left behind.
-spec finalized_as_python3(ct_suite:ct_config()) -> term().
finalized_as_python3(Config) ->
    Program =
        "import asyncio, atexit, logging, logging.handlers, sys, threading, time\n"
        "target = logging.StreamHandler(sys.stdout)\n"
        "logging.getLogger('app').addHandler(logging.handlers.MemoryHandler(100, target=target))\n"
        "logging.getLogger('app').warning('buffered record')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "async def fail(): raise ValueError('left behind')\n"
        "loop = asyncio.new_event_loop()\n"
        "task = loop.create_task(fail())\n"
        "loop.run_until_complete(asyncio.sleep(0.01))\n"
        "loop.close()\n"
        "class Scratch:\n"
        "    def __del__(self): print('finalizer sees sys:', sys is not None)\n"
        "scratch = Scratch()\n"
        "sys.exit(4)\n",
    Script = write_script(Config, "finalized.py", Program),
    {Status, Out, Err} = run(Config, [Script]),
    ?assertEqual(4, Status),
    ?assertEqual(<<"thread done\natexit ran\nbuffered record\nfinalizer sees sys: True\n">>, Out),
    [?assertMatch({_, _}, binary:match(Err, Part))
     || Part <- [<<"Task exception was never retrieved">>, <<"ValueError: left behind">>]],
    %% A module run with -m: what it leaves is reported where python3 does.
    _ = write_script(Config, "s22_never.py", "async def never(): pass\nco = never()\n"),
    {0, _, ModuleErr} = run(Config, ["-m", "s22_never"]),
    ?assertMatch({_, _}, binary:match(ModuleErr, <<"sys:1: RuntimeWarning: coroutine 'never' was never awaited">>)).

%% Python is never finalised in the VM, so nothing flushes the program's
%% stdio at exit but the CLI itself (LESSONS 7c). With stdout and stderr
%% pipes (block- and line-buffered once PYTHONUNBUFFERED, set in some
%% environments, is removed), what the program wrote without a newline or
%% a flush is all there.
-spec unflushed_output_is_written_at_exit(ct_suite:ct_config()) -> term().
unflushed_output_is_written_at_exit(Config) ->
    Script = write_script(Config, "unflushed.py",
                          "import sys\n"
                          "sys.stdout.write('out, no newline')\n"
                          "sys.stderr.write('err, no newline')\n"),
    {Status, Out, Err} = run(Config, [Script], #{env => [{"PYTHONUNBUFFERED", false}]}),
    ?assertEqual(0, Status),
    ?assertEqual(<<"out, no newline">>, Out),
    ?assertMatch({_, _}, binary:match(Err, <<"err, no newline">>)).

%% A Ctrl-C while an atexit handler runs is raised in that handler, as
%% python3 raises it; the other handlers run and the run ends with its
%% status (it halted the node at once, the handlers left undone).
-spec ctrl_c_in_an_atexit_handler(ct_suite:ct_config()) -> term().
ctrl_c_in_an_atexit_handler(Config) ->
    Helper = write_script(Config, "atexit_helper.py", "
import signal, subprocess, sys, time
def interrupted(program, delay):
    node = subprocess.Popen(
        [sys.argv[1], '-c', program], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ready = node.stdout.readline().strip()
    time.sleep(delay)
    node.send_signal(signal.SIGINT)
    try:
        status = node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        status = 'still running'
    print(ready, status, node.stdout.read().splitlines())
HANDLERS = '''
import atexit, time
def second():
    print('second handler ran', flush=True)
def first():
    print('ready', flush=True)
    try:
        # Short sleeps: one long call in C sees a Ctrl-C only as it returns.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            time.sleep(0.01)
    except KeyboardInterrupt:
        print('handler got KeyboardInterrupt', flush=True)
atexit.register(second)
atexit.register(first)
'''
interrupted(HANDLERS, 0)
# A Ctrl-C while a thread that never ends is joined at exit: the waiting
# ends, the atexit handlers run, status 0 (as python3).
JOINED = '''
import atexit, threading
atexit.register(lambda: print('atexit ran', flush=True))
threading.Thread(target=threading.Event().wait).start()
print('ready', flush=True)
'''
interrupted(JOINED, 0.5)
"),
    {Status, Out} = run_helper(Config, Helper),
    ?assertEqual({0, <<"ready 0 ['handler got KeyboardInterrupt', 'second handler ran']\n"
                       "ready 0 ['atexit ran']\n">>},
                 {Status, Out}).

%% `_thread.interrupt_main()' raises KeyboardInterrupt in the program, as in
%% python3's main thread: an asyncio.run waiting in its loop ends with its
%% task cancelled, and a second one in plain code ends the run with 130.
-spec interrupt_main_in_the_program(ct_suite:ct_config()) -> term().
interrupt_main_in_the_program(Config) ->
    Program =
        "import asyncio, _thread, time\n"
        "async def main():\n"
        "    asyncio.get_running_loop().call_later(0.05, _thread.interrupt_main)\n"
        "    try:\n"
        "        await asyncio.sleep(30)\n"
        "    except asyncio.CancelledError:\n"
        "        print('main cancelled')\n"
        "        raise\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('out of asyncio.run')\n"
        "_thread.interrupt_main()\n"
        "time.sleep(30)\n",
    Script = write_script(Config, "interrupt_main.py", Program),
    {Status, Out, Err} = run(Config, [Script]),
    ?assertEqual(130, Status),
    ?assertEqual(<<"main cancelled\nout of asyncio.run\n">>, Out),
    ?assertMatch({_, _}, binary:match(Err, <<"KeyboardInterrupt">>)),
    ?assertEqual(nomatch, binary:match(Err, <<"erlang_python_cli">>)).

%% A test named to the conformance runner that names none fails the run
%% (it passed, as nothing failed); one that names a test runs it.
-spec conformance_typo_fails(ct_suite:ct_config()) -> term().
conformance_typo_fails(Config) ->
    Real = "test_events.ErlangEventLoopTests.test_call_soon",
    {Status, Out, Err} = run(Config, ["conformance", Real, "test_events.NoSuchTests"]),
    ?assertEqual(2, Status),
    ?assertMatch({_, _}, binary:match(Out, <<"1 passed, 0 failed">>)),
    ?assertMatch({_, _}, binary:match(Err, <<"no test is named test_events.NoSuchTests">>)),
    ?assertEqual(nomatch, binary:match(Err, list_to_binary(Real))),
    ?assertMatch({0, _, _}, run(Config, ["conformance", Real])).

-spec exit_status(ct_suite:ct_config()) -> term().
exit_status(Config) ->
    Script = write_script(Config, "exit3.py", "import sys\nprint('before exit')\nsys.exit(3)\n"),
    {Status, Out, _Err} = run(Config, [Script]),
    ?assertEqual(3, Status),
    ?assertEqual(<<"before exit\n">>, Out),
    ?assertMatch({3, _, _}, run(Config, ["-c", "raise SystemExit(3)"])).

-spec clean_exit(ct_suite:ct_config()) -> term().
clean_exit(Config) ->
    ?assertMatch({0, <<>>, _}, run(Config, ["-c", "pass"])),
    ?assertMatch({0, _, _}, run(Config, ["-c", "import sys; sys.exit(0)"])),
    %% A message as the exit code goes to stderr, with status 1.
    {1, _, Err} = run(Config, ["-c", "import sys; sys.exit('bad thing')"]),
    ?assertMatch({_, _}, binary:match(Err, <<"bad thing">>)).

-spec uncaught_exception(ct_suite:ct_config()) -> term().
uncaught_exception(Config) ->
    Script = write_script(Config, "raises.py",
                          "def fail():\n    raise ZeroDivisionError('on purpose')\nfail()\n"),
    {Status, Out, Err} = run(Config, [Script]),
    ct:log("stderr:~n~ts", [Err]),
    ?assertEqual(1, Status),
    ?assertEqual(<<>>, Out),
    [?assertMatch({_, _}, binary:match(Err, Part))
     || Part <- [<<"Traceback (most recent call last)">>, <<"in fail">>,
                 <<"ZeroDivisionError: on purpose">>]].

-spec dash_c(ct_suite:ct_config()) -> term().
dash_c(Config) ->
    ?assertMatch({0, <<"42\n">>, _}, run(Config, ["-c", "print(42)"])),
    %% stdout written without a newline is flushed before the VM halts.
    ?assertMatch({0, <<"no newline">>, _},
                 run(Config, ["-c", "import sys; sys.stdout.write('no newline')"])).

-spec argv_forwarded(ct_suite:ct_config()) -> term().
argv_forwarded(Config) ->
    {0, Out, _} = run(Config, ["-c", "import sys; print(sys.argv)", "a", "b c", "-x", "--"]),
    ?assertEqual(<<"['-c', 'a', 'b c', '-x', '--']\n">>, Out),
    Script = write_script(Config, "argv.py", "import sys\nprint(sys.argv[1:])\n"),
    %% Arguments are bytes for the OS: pass UTF-8 as a shell would.
    ?assertMatch({0, <<"['one', '2', '\x{e9}\x{20ac}']\n"/utf8>>, _},
                 run(Config, [Script, "one", "2", <<"\x{e9}\x{20ac}"/utf8>>])).

-spec c_locale(ct_suite:ct_config()) -> term().
c_locale(Config) ->
    %% Under the C locale python3 still reads UTF-8 arguments and prints
    %% non-ASCII text (PEP 538, 540); so must we.
    Env = [{"LANG", "C"}, {"LC_ALL", "C"}, {"LC_CTYPE", false}],
    Code = "import sys; print(sys.argv[1], len(sys.argv[1]))",
    ?assertMatch({0, <<"\x{e9}\x{20ac} 2\n"/utf8>>, _},
                 run(Config, ["-c", Code, <<"\x{e9}\x{20ac}"/utf8>>], #{env => Env})).

%% tracing events reach stderr only when ERLANG_PYTHON_TRACE asks for them.
-spec tracing_on_request(ct_suite:ct_config()) -> term().
tracing_on_request(Config) ->
    Code = "import asyncio; asyncio.run(asyncio.sleep(0))",
    {0, _, Quiet} = run(Config, ["-c", Code], #{env => [{"ERLANG_PYTHON_TRACE", false}]}),
    ?assertEqual(nomatch, binary:match(Quiet, <<"CPython initialised">>)),
    {0, _, Traced} = run(Config, ["-c", Code], #{env => [{"ERLANG_PYTHON_TRACE", "debug"}]}),
    [?assertMatch({_, _}, binary:match(Traced, Event))
     || Event <- [<<"CPython initialised">>, <<"python event loop created">>,
                  <<"python event loop closed">>]].

-spec dash_m(ct_suite:ct_config()) -> term().
dash_m(Config) ->
    Dir = ?config(priv_dir, Config),
    ok = file:write_file(filename:join(Dir, "cli_mod_for_test.py"),
                         <<"import sys\n"
                           "if __name__ == '__main__':\n"
                           "    print(sys.argv[1:])\n"
                           "    sys.exit(int(sys.argv[1]))\n">>),
    %% -m finds modules in the working directory, as python -m does.
    ?assertMatch({5, <<"['5', 'x']\n">>, _}, run(Config, ["-m", "cli_mod_for_test", "5", "x"], #{cwd => Dir})),
    {Status, _, Err} = run(Config, ["-m", "no_such_module_for_cli_test"], #{cwd => Dir}),
    ?assertNotEqual(0, Status),
    ?assertMatch({_, _}, binary:match(Err, <<"no_such_module_for_cli_test">>)).

-spec script_path_and_main(ct_suite:ct_config()) -> term().
script_path_and_main(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "pkg"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "helper_for_cli_test.py"), <<"VALUE = 7\n">>),
    Script = filename:join(Dir, "main.py"),
    ok = file:write_file(Script, <<"import helper_for_cli_test\n"
                                   "print(__name__, helper_for_cli_test.VALUE)\n">>),
    %% The script's folder is on sys.path; it runs as __main__.
    ?assertMatch({0, <<"__main__ 7\n">>, _}, run(Config, [Script])).

-spec usage(ct_suite:ct_config()) -> term().
usage(Config) ->
    {Status, _, Err} = run(Config, ["-c"]),
    ?assertEqual(2, Status),
    ?assertMatch({_, _}, binary:match(Err, <<"usage">>)),
    {0, _, Help} = run(Config, ["--help"]),
    ?assertMatch({_, _}, binary:match(Help, <<"usage">>)),
    %% No arguments and a stdin that is not a terminal: an empty program,
    %% as python3 reads one from /dev/null.
    ?assertMatch({0, <<>>, _}, run(Config, [])).

%% `-` and no arguments read the program from stdin, as python3 does; it
%% runs on ErlangEventLoop like any other.
-spec program_from_stdin(ct_suite:ct_config()) -> term().
program_from_stdin(Config) ->
    Program = write_script(Config, "from_stdin.py",
                           "import asyncio, sys\n"
                           "async def main():\n"
                           "    await asyncio.sleep(0.01)\n"
                           "    return type(asyncio.get_running_loop()).__name__\n"
                           "print(asyncio.run(main()), __name__, sys.argv)\n"
                           "sys.exit(4)\n"),
    ?assertMatch({4, <<"ErlangEventLoop __main__ ['-', 'x']\n">>, _},
                 run(Config, ["-", "x"], #{stdin => Program})),
    ?assertMatch({4, <<"ErlangEventLoop __main__ ['']\n">>, _},
                 run(Config, [], #{stdin => Program})).

-spec not_started(ct_suite:ct_config()) -> term().
not_started(_Config) ->
    %% A fresh node with the NIF loaded but the application not started.
    Ebin = filename:dirname(code:which(py)),
    Code = "io:format(\"~p~n\", [{py:call(math, sqrt, [4]), py:eval(<<\"1\">>), "
           "py:exec(<<\"x = 1\">>), py:version(), py_nif:pool_stats()}]), halt().",
    Port = open_port({spawn_executable, os:find_executable("erl")},
                     [exit_status, binary, stream, stderr_to_stdout,
                      {args, ["-noshell", "-pa", Ebin, "-eval", Code]}]),
    {Status, Out} = collect(Port, erlang:monotonic_time(millisecond) + ?RUN_TIMEOUT_MS, []),
    ct:log("status ~b:~n~ts", [Status, Out]),
    ?assertEqual(0, Status),
    NotInit = {error, not_initialized},
    ?assertEqual({NotInit, NotInit, NotInit, NotInit, NotInit}, parse(Out)).

-spec sigint_stops_node(ct_suite:ct_config()) -> term().
sigint_stops_node(Config) ->
    %% `erl +B': Ctrl-C (SIGINT) kills the node. Python, once started (and
    %% asyncio and signal imported), must not take SIGINT over (LESSONS 2).
    %% A python3 helper starts the node with SIGINT at its default, whatever
    %% our own disposition is.
    Helper = write_script(Config, "sigint_helper.py", "
import signal, subprocess, sys
code = ('{ok, _} = application:ensure_all_started(erlang_python), '
        'ok = py:exec(<<\"import asyncio, signal\">>), '
        'io:format(\"ready~n\"), timer:sleep(60000), halt(3).')
node = subprocess.Popen(
    ['erl', '-noshell', '+B', '-pa', sys.argv[1], '-eval', code],
    stdout=subprocess.PIPE, text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
ready = node.stdout.readline().strip()
node.send_signal(signal.SIGINT)
try:
    status = node.wait(timeout=30)
except subprocess.TimeoutExpired:
    node.kill()
    status = 'still running'
print(ready, status)
"),
    Ebin = filename:dirname(code:which(py)),
    Port = open_port({spawn_executable, os:find_executable("python3")},
                     [exit_status, binary, stream, stderr_to_stdout, {args, [Helper, Ebin]}]),
    {Status, Out} = collect(Port, erlang:monotonic_time(millisecond) + ?RUN_TIMEOUT_MS, []),
    ct:log("helper status ~b:~n~ts", [Status, Out]),
    ?assertEqual({0, <<"ready -2\n">>}, {Status, Out}).

%% sys.exit's argument becomes the status python3 exits with: the low byte
%% of an int (bool included), 255 beyond a C long; no VM crash, no output.
-spec exit_status_as_python3(ct_suite:ct_config()) -> term().
exit_status_as_python3(Config) ->
    [?assertEqual({Status, <<>>, <<>>},
                  run(Config, ["-c", "import sys; sys.exit(" ++ Code ++ ")"]))
     || {Code, Status} <- [{"-1", 255}, {"-256", 0}, {"256", 0}, {"300", 44},
                           {"False", 0}, {"True", 1}, {"2**70", 255}, {"-2**70", 255}]],
    ?assertEqual([], filelib:wildcard(filename:join(?config(priv_dir, Config), "erl_crash.dump"))).

%% The node ignores SIGINT and SIGTSTP (+Bi); the program's children must
%% not inherit that (an ignored signal stays ignored across exec): Ctrl-C
%% and send_signal(SIGINT) end them, as under python3.
-spec children_get_terminal_signals(ct_suite:ct_config()) -> term().
children_get_terminal_signals(Config) ->
    Code = "import signal, subprocess, sys\n"
           "ignored = subprocess.run(['sh', '-c', 'grep SigIgn /proc/self/status'],\n"
           "                         capture_output=True, text=True, check=True).stdout\n"
           "mask = int(ignored.split()[1], 16)\n"
           "print(bool(mask & 1 << signal.SIGINT - 1), bool(mask & 1 << signal.SIGTSTP - 1))\n"
           "child = subprocess.Popen([sys.executable, '-c',\n"
           "    'import signal; print(signal.getsignal(signal.SIGINT).__name__, flush=True); input()'],\n"
           "    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
           "print(child.stdout.readline().strip())\n"
           "child.send_signal(signal.SIGINT)\n"
           "print(child.wait(timeout=30) != 0)\n"
           "sleeper = subprocess.Popen(['sleep', '60'])\n"
           "sleeper.send_signal(signal.SIGINT)\n"
           "print(sleeper.wait(timeout=30))\n",
    {Status, Out, Err} = run(Config, ["-c", Code]),
    ct:log("stderr:~n~ts", [Err]),
    ?assertEqual({0, <<"False False\ndefault_int_handler\nTrue\n-2\n">>}, {Status, Out}).

%% The program and its children get the environment the CLI was started
%% with, as under python3: not erl's launcher variables (BINDIR, ROOTDIR,
%% PROGNAME), its PATH prefix, or the CLI's bookkeeping; one the user set
%% is theirs.
-spec environment_as_started(ct_suite:ct_config()) -> term().
environment_as_started(Config) ->
    Path = "/usr/local/bin:/usr/bin:/bin",
    Env = [{"PATH", Path}, {"EMU", "mine"}, {"BINDIR", false}, {"ROOTDIR", false},
           {"PROGNAME", false}, {"ERLANG_PYTHON_VENV", false}],
    Code = "import os, subprocess\n"
           "print(os.environ['PATH'], os.environ.get('EMU'))\n"
           "print(sorted(k for k in os.environ if k in ('BINDIR', 'ROOTDIR', 'PROGNAME')\n"
           "             or k == 'ERLANG_PYTHON_WRAPPER' or k.startswith('ERLANG_PYTHON_SAVED')))\n"
           "print(subprocess.run(['sh', '-c', 'echo $PATH $EMU'], capture_output=True,\n"
           "                     text=True, check=True).stdout, end='')\n",
    {Status, Out, Err} = run(Config, ["-c", Code], #{env => Env}),
    ct:log("stderr:~n~ts", [Err]),
    Line = list_to_binary(Path ++ " mine\n"),
    ?assertEqual({0, <<Line/binary, "[]\n", Line/binary>>}, {Status, Out}).

%% python3's -W, before the program: here as the interpreter already runs.
-spec warning_options(ct_suite:ct_config()) -> term().
warning_options(Config) ->
    Warn = "import sys, warnings; print(sys.warnoptions); warnings.warn('careful')",
    {1, <<"['error']\n">>, Err} = run(Config, ["-W", "error", "-c", Warn]),
    ?assertMatch({_, _}, binary:match(Err, <<"UserWarning: careful">>)),
    ?assertMatch({0, <<"['ignore', 'default::DeprecationWarning']\n">>, <<>>},
                 run(Config, ["-Wignore", "-W", "default::DeprecationWarning", "-c", Warn])).

-spec missing_script(ct_suite:ct_config()) -> term().
missing_script(Config) ->
    {Status, <<>>, Err} = run(Config, ["no_such_script.py"]),
    ?assertEqual(2, Status),
    ?assertMatch({_, _}, binary:match(Err, <<"can't open file">>)),
    ?assertMatch({_, _}, binary:match(Err, <<"No such file or directory">>)).

%% An argument that is not UTF-8 (a file name in Latin-1, say) reaches
%% Python as python3 decodes it (surrogateescape), under a UTF-8 locale and
%% under C: the file it names opens.
-spec argument_not_utf8(ct_suite:ct_config()) -> term().
argument_not_utf8(Config) ->
    Dir = ?config(priv_dir, Config),
    Name = <<"caf", 16#e9, ".txt">>,
    ok = file:write_file(filename:join(Dir, Name), <<"latin-1 name">>),
    Code = "import os, sys; a = sys.argv[1]; "
           "print(repr(a), os.fsencode(a) == b'caf\\xe9.txt', open(a).read())",
    [?assertMatch({0, <<"'caf\\udce9.txt' True latin-1 name\n">>, _},
                  run(Config, ["-c", Code, Name], #{env => Env}))
     || Env <- [[{"LC_ALL", "C.UTF-8"}], [{"LANG", "C"}, {"LC_ALL", "C"}, {"LC_CTYPE", false}]]],
    %% After a `--', the script and its arguments as usual.
    ?assertMatch({0, <<"['-c', 'x']\n">>, _},
                 run(Config, ["--", "-c", "import sys; print(sys.argv)", "x"])).

%% Ctrl-C (SIGINT) raises KeyboardInterrupt in the program, as python3's
%% default handler does: an asyncio program waiting in its loop is woken for
%% it, its tasks' `finally' blocks run, and the run ends with 130 and the
%% traceback; a program blocked in C sees it when the call returns, and a
%% second Ctrl-C ends the run at once. SIGTERM ends a run at once with 143;
%% the VM's break menu never shows; the node ends with the wrapper script
%% even when that is killed by SIGKILL.
-spec signals_end_the_run(ct_suite:ct_config()) -> term().
signals_end_the_run(Config) ->
    Helper = write_script(Config, "signal_helper.py", "
import signal, subprocess, sys, time
ASYNCIO = '''
import asyncio
async def main():
    try:
        print('ready', flush=True)  # inside: Ctrl-C may come at once
        await asyncio.sleep(60)
    finally:
        print('cleanup', flush=True)
asyncio.run(main())
'''
BLOCKED = 'import time; print(\"ready\", flush=True); time.sleep(60)'
def run(code, name, repeat):
    node = subprocess.Popen(
        [sys.argv[1], '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ready = node.stdout.readline().strip()
    give_up = time.monotonic() + 20
    status = 'still running'
    while time.monotonic() < give_up:
        node.send_signal(getattr(signal, name))
        try:
            status = node.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            if not repeat:
                break
    if status == 'still running':
        node.kill()
        node.wait()
    rest = node.stdout.read()
    err = node.stderr.read()
    return (name, ready, status, rest, 'KeyboardInterrupt' in err)
# Blocked in C, the program sees the first Ctrl-C when the call returns
# and the second ends the run; one that comes before the call starts is
# raised at once (a traceback): either way 130.
results = [run(ASYNCIO, 'SIGINT', False), run(BLOCKED, 'SIGINT', True)[:4],
           run(BLOCKED, 'SIGTERM', False)]
# SIGKILL of the wrapper script, which cannot forward it: the node ends too.
node = subprocess.Popen(
    [sys.argv[1], '-c', 'import os, time; print(os.getpid(), flush=True); time.sleep(60)'],
    stdout=subprocess.PIPE, text=True)
beam = int(node.stdout.readline())
node.kill()
node.wait()
def running(pid):
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
give_up = time.monotonic() + 20
while running(beam) and time.monotonic() < give_up:
    time.sleep(0.05)
results.append(('SIGKILL of the wrapper', 'node running' if running(beam) else 'node gone'))
print(results)
"),
    {Status, Out} = run_helper(Config, Helper),
    ?assertEqual({0, <<"[('SIGINT', 'ready', 130, 'cleanup\\n', True), "
                       "('SIGINT', 'ready', 130, ''), "
                       "('SIGTERM', 'ready', 143, '', False), "
                       "('SIGKILL of the wrapper', 'node gone')]\n">>},
                 {Status, Out}).

%% A SIGTERM that comes while the node boots, before it handles signals,
%% still ends the run (it was lost: the program ran to its end with 0).
-spec early_sigterm_ends_the_run(ct_suite:ct_config()) -> term().
early_sigterm_ends_the_run(Config) ->
    Helper = write_script(Config, "early_term_helper.py", "
import subprocess, sys, time
CODE = 'import time; time.sleep(20); print(\"ran to the end\")'
ended = []
for delay in range(0, 400, 40):
    # OTP's own report of a SIGTERM taken while the node boots goes to
    # stderr: not what is checked here.
    node = subprocess.Popen([sys.argv[1], '-c', CODE], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    time.sleep(delay / 1000)
    node.terminate()
    try:
        status = node.wait(timeout=15)
    except subprocess.TimeoutExpired:
        node.kill()
        status = 'still running'
    # Killed before its trap is set, the wrapper dies of the signal (-15).
    ended.append(status in (143, -15) and 'ran to the end' not in node.stdout.read())
print(all(ended), ended)
"),
    {Status, Out} = run_helper(Config, Helper),
    %% The helper's verdict is its last line (a node may print OTP's report
    %% of the SIGTERM before it).
    Verdict = lists:last(binary:split(string:trim(Out), <<"\n">>, [global])),
    ?assertMatch({0, <<"True ", _/binary>>}, {Status, Verdict}).

%% SIGHUP, SIGUSR2 and SIGALRM sent to the run reach a handler the program's
%% loop added for them; without one they end the run as they end python3
%% (128 + the signal's number).
-spec routed_signals_reach_the_program(ct_suite:ct_config()) -> term().
routed_signals_reach_the_program(Config) ->
    Helper = write_script(Config, "routed_signal_helper.py", "
import signal, subprocess, sys
HANDLED = '''
import asyncio, signal, sys
async def main():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_signal_handler(getattr(signal, sys.argv[1]), got.set_result, sys.argv[1])
    print('ready', flush=True)
    print('got', await asyncio.wait_for(got, 30), flush=True)
asyncio.run(main())
'''
UNHANDLED = 'import time; print(\"ready\", flush=True); time.sleep(30)'
def run(code, name):
    node = subprocess.Popen([sys.argv[1], '-c', code, name], stdout=subprocess.PIPE, text=True)
    ready = node.stdout.readline().strip()
    node.send_signal(getattr(signal, name))
    try:
        status = node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        status = 'still running'
    return (name, ready, status, node.stdout.read())
print([run(HANDLED, name) for name in ('SIGHUP', 'SIGUSR2', 'SIGALRM')]
      + [run(UNHANDLED, name) for name in ('SIGHUP', 'SIGUSR2')])
"),
    {Status, Out} = run_helper(Config, Helper),
    ?assertEqual({0, <<"[('SIGHUP', 'ready', 0, 'got SIGHUP\\n'), "
                       "('SIGUSR2', 'ready', 0, 'got SIGUSR2\\n'), "
                       "('SIGALRM', 'ready', 0, 'got SIGALRM\\n'), "
                       "('SIGHUP', 'ready', 129, ''), "
                       "('SIGUSR2', 'ready', 140, '')]\n">>},
                 {Status, Out}).

%% As python3 before it exits: the threads the program started that are not
%% daemons are joined, and an executor left open finishes its work.
-spec threads_are_joined(ct_suite:ct_config()) -> term().
threads_are_joined(Config) ->
    Code = "import threading, time\n"
           "from concurrent.futures import ThreadPoolExecutor\n"
           "threading.Thread(target=lambda: (time.sleep(0.5), print('thread'))).start()\n"
           "ThreadPoolExecutor(1).submit(lambda: (time.sleep(0.3), print('task')))\n"
           "print('main', threading.Thread(target=print).daemon)\n",
    ?assertMatch({0, <<"main False\ntask\nthread\n">>, _}, run(Config, ["-c", Code])).

%% `-c' code runs in a module registered as __main__, as python3 runs it.
-spec dash_c_runs_in_main(ct_suite:ct_config()) -> term().
dash_c_runs_in_main(Config) ->
    Code = "import pickle, sys\n"
           "def f(): pass\n"
           "x = 1\n"
           "print(pickle.loads(pickle.dumps(f)) is f, sys.modules['__main__'].x)\n",
    ?assertMatch({0, <<"True 1\n">>, _}, run(Config, ["-c", Code])).

%% An uncaught exception goes through sys.excepthook, its traceback from the
%% program's own frames; KeyboardInterrupt ends the run with 130.
-spec uncaught_as_python3(ct_suite:ct_config()) -> term().
uncaught_as_python3(Config) ->
    Hook = "import sys\n"
           "sys.excepthook = lambda t, v, tb: print('hook', t.__name__, v, file=sys.stderr)\n"
           "raise ValueError('boom')\n",
    ?assertEqual({1, <<>>, <<"hook ValueError boom\n">>}, run(Config, ["-c", Hook])),
    Script = write_script(Config, "interrupted.py", "raise KeyboardInterrupt\n"),
    {130, <<>>, Err} = run(Config, [Script]),
    ?assertEqual(nomatch, binary:match(Err, <<"erlang_python_cli">>)),
    ?assertEqual(nomatch, binary:match(Err, <<"runpy">>)),
    ?assertMatch({_, _}, binary:match(Err, <<"interrupted.py\", line 1, in <module>">>)).

%%--------------------------------------------------------------------
%% Helpers

-spec parse(binary()) -> term().
parse(Text) ->
    {ok, Tokens, _} = erl_scan:string(binary_to_list(Text) ++ "."),
    {ok, Term} = erl_parse:parse_term(Tokens),
    Term.


%% Runs the python3 script `Helper' with the CLI's path as its argument:
%% its exit status and output.
run_helper(Config, Helper) ->
    Port = open_port({spawn_executable, os:find_executable("python3")},
                     [exit_status, binary, stream, stderr_to_stdout,
                      {args, [Helper, ?config(cli, Config)]}]),
    {Status, Out} = collect(Port, erlang:monotonic_time(millisecond) + ?RUN_TIMEOUT_MS, []),
    ct:log("helper status ~b:~n~ts", [Status, Out]),
    {Status, Out}.

%% The checkout: $ERLANG_PYTHON_ROOT (set by the Makefile), else the folder
%% that holds erlang/_build, found from where this application's code is.
-spec repo_root() -> file:filename().
repo_root() ->
    case os:getenv("ERLANG_PYTHON_ROOT") of
        Root when is_list(Root), Root =/= "" ->
            Root;
        _ ->
            Parts = filename:split(filename:absname(code:which(py))),
            {Before, ["_build" | _]} = lists:splitwith(fun(P) -> P =/= "_build" end, Parts),
            %% Before ends with the erlang/ folder.
            filename:join(lists:droplast(Before))
    end.

-spec write_script(ct_suite:ct_config(), string(), string()) -> file:filename().
write_script(Config, Name, Text) ->
    Path = filename:join(?config(priv_dir, Config), Name),
    ok = file:write_file(Path, Text),
    Path.

-spec run(ct_suite:ct_config(), [string() | binary()]) -> {integer(), binary(), binary()}.
run(Config, Args) ->
    run(Config, Args, #{}).

%% Runs the CLI: {ExitStatus, Stdout, Stderr}. Options: cwd (default: the
%% case's priv_dir), env (changes to the environment, as open_port takes
%% them), stdin (a file to read stdin from; default /dev/null).
-spec run(ct_suite:ct_config(), [string() | binary()], map()) -> {integer(), binary(), binary()}.
run(Config, Args, Options) ->
    Cwd = maps:get(cwd, Options, ?config(priv_dir, Config)),
    Env = maps:get(env, Options, []),
    ErrFile = filename:join(?config(priv_dir, Config),
                            "stderr-" ++ integer_to_list(erlang:unique_integer([positive]))),
    %% sh sends stderr to a file, so that stdout and stderr stay apart.
    Port = open_port({spawn_executable, "/bin/sh"},
                     [exit_status, binary, stream, {cd, Cwd}, {env, Env},
                      {args, ["-c", "err=$1; in=$2; shift 2; exec \"$@\" 2>\"$err\" <\"$in\"",
                              "sh", ErrFile, maps:get(stdin, Options, "/dev/null"),
                              ?config(cli, Config) | Args]}]),
    Deadline = erlang:monotonic_time(millisecond) + ?RUN_TIMEOUT_MS,
    {Status, Out} = collect(Port, Deadline, []),
    {ok, Err} = file:read_file(ErrFile),
    ct:log("erlang-python ~p~nstatus ~b~nstdout:~n~ts~nstderr:~n~ts", [Args, Status, Out, Err]),
    {Status, Out, Err}.

-spec collect(port(), integer(), iolist()) -> {integer(), binary()}.
collect(Port, Deadline, Acc) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} -> collect(Port, Deadline, [Acc, Data]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(Acc)}
    after Left ->
            catch port_close(Port),
            ct:fail({cli_did_not_exit, iolist_to_binary(Acc)})
    end.
