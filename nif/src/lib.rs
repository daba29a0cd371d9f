//! `py_nif`: the rustler glue of erlang_python. It decodes NIF arguments, owns
//! the resource types and calls into the core crate; it decides nothing else.

mod atoms;
mod call;
mod convert;
mod erlang_module;
mod errors;
mod job;
mod namespace;
mod opaque;
mod runtime;

rustler::init!("py_nif");
