//! Atoms the NIF returns or matches.

rustler::atoms! {
    ok,
    error,
    true_ = "true",
    false_ = "false",
    none,
    inf,
    neg_inf = "-inf",
    nan,
    py_result,
    py_callback,
    py_callback_abandoned,
    timeout,
    closed,
    not_initialized,
    cancelled,
    undefined,
}

/// A `Pid | undefined` argument: `None` for `undefined`, `badarg` for
/// anything else (a typo must not unset a server).
pub fn pid_or_undefined(term: rustler::Term<'_>) -> rustler::NifResult<Option<rustler::LocalPid>> {
    if let Ok(pid) = term.decode::<rustler::LocalPid>() {
        return Ok(Some(pid));
    }
    if term
        .decode::<rustler::Atom>()
        .is_ok_and(|atom| atom == undefined())
    {
        return Ok(None);
    }
    Err(rustler::Error::BadArg)
}
