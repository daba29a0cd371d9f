//! Core of erlang_python.
//!
//! - [`wheel`]: a hierarchical timer wheel, pure Rust, generic over its payload.
//! - [`io`]: the per-loop native core (pending queue, fd registry, wait/wake).
//! - [`py`]: the embedded interpreter and the Python-facing native module.

pub mod wheel;
