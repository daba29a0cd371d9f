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
}
