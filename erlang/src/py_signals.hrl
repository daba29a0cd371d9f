%% The signals `py_signals' routes to Python loops and `py_signal_forwarder'
%% passes on: the ones the BEAM can catch (`os:set_signal/2') and has no use
%% of its own for (src/io/signals.rs `ROUTED', nif/src/signals.rs).
-define(IS_ROUTED_SIGNAL(Signal),
        (Signal =:= sighup orelse Signal =:= sigalrm orelse Signal =:= sigusr2)).
