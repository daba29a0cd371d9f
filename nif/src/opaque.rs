//! Erlang values Python cannot represent natively (pids, references, funs,
//! ports) travel through Python as opaque objects holding the term's external
//! format, so they compare, hash and convert back exactly, whatever node they
//! come from.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rustler::{Env, Term};

macro_rules! opaque_class {
    ($rust:ident, $python:literal, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "erlang", name = $python, frozen, eq, hash)]
        #[derive(PartialEq, Eq, Hash)]
        pub struct $rust {
            /// `term_to_binary` of the value: self-contained and node-independent.
            external: Vec<u8>,
        }

        impl $rust {
            pub fn from_term(term: Term<'_>) -> Self {
                $rust {
                    external: term.to_binary().as_slice().to_vec(),
                }
            }

            pub fn to_term<'a>(&self, env: Env<'a>) -> PyResult<Term<'a>> {
                env.binary_to_term(&self.external)
                    .map(|(term, _)| term)
                    .ok_or_else(|| PyValueError::new_err("corrupt Erlang term"))
            }
        }

        #[pymethods]
        impl $rust {
            fn __repr__(&self) -> String {
                format!("<erlang.{} {}>", $python, describe(&self.external))
            }
        }
    };
}

opaque_class!(Pid, "Pid", "An Erlang process identifier.");
opaque_class!(Ref, "Ref", "An Erlang reference.");
opaque_class!(
    OpaqueTerm,
    "OpaqueTerm",
    "An Erlang fun or port, kept as it is."
);

/// A short, stable fingerprint of an external term for `repr`.
fn describe(external: &[u8]) -> String {
    let hash = external.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("#{:012x}", hash & 0xffff_ffff_ffff)
}
