//! `exit_now(Status)`: the end of a `bin/erlang-python` run on a signal.
//!
//! `erlang:halt/2` ends the VM with `exit()`, which runs the process's exit
//! handlers and library destructors while other threads still run: a
//! SIGTERM that came while CPython was starting on another thread made the
//! run end in a segmentation fault (status 139) instead of 143. `_exit`
//! ends the process as the signal would have, running nothing.

use rustler::{NifResult, Term};

use crate::small_int::decode_in_range;

/// Ends this OS process at once with `status` (0..255, else `badarg`: a
/// `u8` argument would take `256` for `0`, ending the node as a success),
/// running no exit handler.
#[rustler::nif]
fn exit_now(status: Term<'_>) -> NifResult<rustler::Atom> {
    let status: u8 = decode_in_range(status)?;
    // SAFETY: `_exit` takes an int, touches no memory of ours and never
    // returns.
    unsafe { libc::_exit(libc::c_int::from(status)) }
}
