//! `deliver_signal(Name)`: a signal the BEAM caught for the Python loops
//! (`py_signal_forwarder`), written to their signal pipes (see
//! `erlang_python::io::signals`).

use rustler::{Atom, Error, NifResult};

use crate::atoms;

rustler::atoms! {
    sighup,
    sigalrm,
    sigusr2,
}

/// `deliver_signal(sighup | sigalrm | sigusr2)` -> `ok`; `badarg` for any
/// other term (the BEAM's own signals are never passed on).
#[rustler::nif]
fn deliver_signal(name: Atom) -> NifResult<Atom> {
    let signum = if name == sighup() {
        libc::SIGHUP
    } else if name == sigalrm() {
        libc::SIGALRM
    } else if name == sigusr2() {
        libc::SIGUSR2
    } else {
        return Err(Error::BadArg);
    };
    debug_assert!(erlang_python::io::signals::ROUTED.contains(&signum));
    erlang_python::io::signals::notify(signum);
    Ok(atoms::ok())
}
