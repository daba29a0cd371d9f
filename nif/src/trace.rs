//! Where the `tracing` events of the NIF and the core go. Nothing is printed
//! unless the OS variable `ERLANG_PYTHON_TRACE` asks for it (a filter such
//! as `debug` or `erlang_python=trace,py_nif=debug`); then events go to
//! stderr, with their thread, so a stuck worker or a lost wake-up shows up.
//! Hot paths (per timer, per fd event) carry no events at the default level.

use tracing_subscriber::EnvFilter;

/// The variable that turns tracing on.
pub const TRACE_VAR: &str = "ERLANG_PYTHON_TRACE";

/// Installs the stderr subscriber if `ERLANG_PYTHON_TRACE` is set. Once per
/// process; later calls (a reloaded application) change nothing.
pub fn init_from_env() {
    let Ok(filter) = std::env::var(TRACE_VAR) else {
        return;
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_ansi(false)
        .try_init();
}
