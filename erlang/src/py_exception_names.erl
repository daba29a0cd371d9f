%% @doc The exception class names that are atoms in every node running
%% erlang_python. A Python exception's name reaches Erlang as an atom only
%% when the node already has that atom (Python never creates atoms: a
%% program raising classes made on the fly would fill the atom table, which
%% is never collected, and stop the VM). These names always exist: Python's
%% built-in exceptions and the common ones of asyncio and the stdlib; any
%% other name is an atom once an Erlang module mentions it (a pattern that
%% matches it), and a binary otherwise.
-module(py_exception_names).

-export([known/0]).

-spec known() -> [atom(), ...].
known() ->
    ['ArithmeticError', 'AssertionError', 'AttributeError', 'BaseException',
     'BaseExceptionGroup', 'BlockingIOError', 'BrokenPipeError', 'BufferError',
     'BytesWarning', 'ChildProcessError', 'ConnectionAbortedError', 'ConnectionError',
     'ConnectionRefusedError', 'ConnectionResetError', 'DeprecationWarning', 'EOFError',
     'EncodingWarning', 'EnvironmentError', 'Exception', 'ExceptionGroup',
     'FileExistsError', 'FileNotFoundError', 'FloatingPointError', 'FutureWarning',
     'GeneratorExit', 'IOError', 'ImportError', 'ImportWarning', 'IndentationError',
     'IndexError', 'InterruptedError', 'IsADirectoryError', 'KeyError',
     'KeyboardInterrupt', 'LookupError', 'MemoryError', 'ModuleNotFoundError',
     'NameError', 'NotADirectoryError', 'NotImplementedError', 'OSError',
     'OverflowError', 'PendingDeprecationWarning', 'PermissionError',
     'ProcessLookupError', 'RecursionError', 'ReferenceError', 'ResourceWarning',
     'RuntimeError', 'RuntimeWarning', 'StopAsyncIteration', 'StopIteration',
     'SyntaxError', 'SyntaxWarning', 'SystemError', 'SystemExit', 'TabError',
     'TimeoutError', 'TypeError', 'UnboundLocalError', 'UnicodeDecodeError',
     'UnicodeEncodeError', 'UnicodeError', 'UnicodeTranslateError', 'UnicodeWarning',
     'UserWarning', 'ValueError', 'Warning', 'ZeroDivisionError',
     %% asyncio, concurrent.futures and common stdlib modules.
     'CancelledError', 'InvalidStateError', 'IncompleteReadError',
     'LimitOverrunError', 'SendfileNotAvailableError', 'BrokenBarrierError',
     'BrokenProcessPool', 'BrokenThreadPool', 'JSONDecodeError', 'PicklingError',
     'UnpicklingError', 'CalledProcessError', 'TimeoutExpired', 'SSLError',
     'SSLCertVerificationError', 'SSLZeroReturnError', 'SSLWantReadError',
     'SSLWantWriteError', 'SSLEOFError', 'gaierror', 'herror', 'Empty', 'Full',
     'QueueEmpty', 'QueueFull', 'error',
     %% Ours: an Erlang function's error, raised by `erlang.call'.
     'ErlangError',
     %% A Rust panic in a call, as pyo3 names it.
     'PanicException'].
