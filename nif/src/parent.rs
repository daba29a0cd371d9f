//! `end_with_parent(ParentOsPid)`: a `bin/erlang-python` run ends when the
//! wrapper script that started it does, even by SIGKILL (which the script
//! cannot forward): Linux then sends this process SIGTERM (its parent-death
//! signal), which `py_cli_signals` answers. Without it a killed wrapper
//! left the node running the program, orphaned.

use rustler::{Encoder, Env, Term};

use crate::atoms;

rustler::atoms! {
    parent_gone,
}

/// `end_with_parent(ParentOsPid)` -> `ok | {error, parent_gone | Errno}`:
/// `parent_gone` when `ParentOsPid` is not the node's parent (it died
/// before the call, or is some other process): then nothing is set.
#[rustler::nif]
fn end_with_parent(env: Env<'_>, parent: i64) -> Term<'_> {
    if !is_parent(parent) {
        return (atoms::error(), parent_gone()).encode(env);
    }
    // SAFETY: prctl(PR_SET_PDEATHSIG) reads only its integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return (atoms::error(), errno).encode(env);
    }
    // Checked again once the signal is set: a parent that died in between
    // is seen here (the node was re-parented) rather than missed.
    if is_parent(parent) {
        return atoms::ok().encode(env);
    }
    // Gone meanwhile: no signal is left armed.
    // SAFETY: prctl(PR_SET_PDEATHSIG) reads only its integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong, 0, 0, 0) };
    (atoms::error(), parent_gone()).encode(env)
}

fn is_parent(pid: i64) -> bool {
    // SAFETY: getppid takes no arguments and cannot fail.
    i64::from(unsafe { libc::getppid() }) == pid
}
