//! Core of erlang_python.
//!
//! - [`wheel`]: a hierarchical timer wheel, pure Rust, generic over its payload.
//! - [`py`]: the embedded interpreter and the threads that run Python.

pub mod io;
pub mod py;
pub mod wheel;
