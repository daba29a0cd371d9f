//! `py_nif`: the rustler glue of erlang_python. It decodes NIF arguments, owns
//! the resource types and calls into the core crate; it decides nothing else.

mod atoms;
mod call;
mod convert;
mod erlang_module;
mod errors;
mod event_loop;
mod exit_now;
mod fd_resource;
mod interrupt;
mod job;
mod namespace;
mod opaque;
mod parent;
mod proper_list;
mod runtime;
mod server_watch;
mod signals;
mod sleep;
mod small_int;
mod sync;
mod terminal_signals;
mod test_panic;
mod test_udp;
mod trace;

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    trace::init_from_env();
    erlang_python::py::native_loop::set_factory(event_loop::python_loop_factory);
    fd_resource::register(env)
}

rustler::init!("py_nif", load = load);
