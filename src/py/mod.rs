//! The embedded CPython: start-up of the interpreter inside the BEAM and the
//! threads that run Python off the Erlang schedulers.

pub mod boundary_raise;
pub mod context_snapshot;
pub mod datagram_transport;
pub mod handles;
pub(crate) mod handling;
pub mod held;
pub(crate) mod instance_attrs;
pub mod instance_clock;
pub mod interpreter;
pub mod method;
pub mod native_loop;
pub(crate) mod once;
mod os_error;
pub mod pool;
pub mod runner;
pub(crate) mod running_loop;
pub mod sleep;
pub mod socket_transport;
pub mod stack;
pub mod sys_modules;
pub(crate) mod task_steps;
pub mod timer_cancel;
pub mod timer_handle;
pub mod transport_io;
