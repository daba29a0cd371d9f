//! `unignore_terminal_signals()`: the programs a `bin/erlang-python` run
//! starts get Ctrl-C and Ctrl-Z as they get them under python3.
//!
//! The CLI's node ignores SIGINT and SIGTSTP (`erl +Bi`: the wrapper script
//! forwards Ctrl-C as SIGUSR1), and an ignored signal stays ignored across
//! `exec`: a child of the program (`subprocess.run(["sleep", "60"])`, a
//! Python child's KeyboardInterrupt) would outlive a Ctrl-C and never see
//! `send_signal(SIGINT)`. A handler, unlike `SIG_IGN`, is reset to the
//! default by `exec`, so each ignored one becomes a handler that does
//! nothing: the node still ignores the signal, its children do not. Never
//! SIGFPE (also ignored by the VM): a handler that returns from a fault
//! would run the faulting instruction again, forever.

use erlang_python::io::signals::disposition;
use rustler::{Encoder, Env, Term};

use crate::atoms;

/// The terminal's signals the CLI's node ignores.
const TERMINAL_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTSTP];

extern "C" fn ignore(_signal: libc::c_int) {}

/// `unignore_terminal_signals()` -> `ok | {error, Errno}`: each of SIGINT
/// and SIGTSTP that is `SIG_IGN` gets a handler that does nothing (restarting
/// interrupted calls); one with a handler or the default is left alone.
#[rustler::nif]
fn unignore_terminal_signals(env: Env<'_>) -> Term<'_> {
    for signal in TERMINAL_SIGNALS {
        if let Err(errno) = unignore(signal) {
            return (atoms::error(), errno).encode(env);
        }
    }
    atoms::ok().encode(env)
}

fn unignore(signal: libc::c_int) -> Result<(), i32> {
    let errno = |error: std::io::Error| error.raw_os_error().unwrap_or(0);
    if disposition(signal).map_err(errno)? != libc::SIG_IGN {
        return Ok(());
    }
    // SAFETY: an all-zero sigaction is valid (an empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is a complete sigaction whose handler touches nothing.
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(errno(std::io::Error::last_os_error()));
    }
    Ok(())
}
