//! Erlang values Python cannot represent natively (pids, references, funs,
//! ports) travel through Python as opaque objects holding the term's external
//! format, so they compare, hash and convert back exactly, whatever node they
//! come from.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rustler::env::{OwnedEnv, SavedTerm};
use rustler::{Env, Term};

use crate::sync::lock;

/// A copy of a term in an env kept with it. It keeps alive what the term
/// refers to (the NIF resource behind a reference such as an `atomics` or
/// a LoopRef, a fun's captured values), which the external format alone
/// does not: such a term comes back from Python as it went in, usable. The
/// terms of one conversion share one env (see [`conversion_scope`]).
struct KeptTerm {
    env: Arc<Mutex<OwnedEnv>>,
    /// Behind a lock of its own only to be `Sync` (rustler's is not).
    saved: Mutex<SavedTerm>,
}

impl KeptTerm {
    fn new(term: Term<'_>) -> Self {
        let env = SCOPE.with(|scope| {
            let mut scope = scope.borrow_mut();
            match &mut *scope {
                Some(shared) => {
                    Arc::clone(shared.get_or_insert_with(|| Arc::new(Mutex::new(OwnedEnv::new()))))
                }
                None => Arc::new(Mutex::new(OwnedEnv::new())),
            }
        });
        let saved = Mutex::new(lock(&env).save(term));
        KeptTerm { env, saved }
    }

    fn copy_into<'a>(&self, env: Env<'a>) -> Term<'a> {
        let saved = lock(&self.saved);
        lock(&self.env).run(|own| saved.load(own).in_env(env))
    }
}

thread_local! {
    // Inside a conversion: the env its kept terms share, once one is made.
    static SCOPE: RefCell<Option<Option<Arc<Mutex<OwnedEnv>>>>> = const { RefCell::new(None) };
}

/// Runs one conversion of a term to Python: the references and funs it
/// meets keep their copies in one env (an env each cost 4x the conversion
/// of a list of references).
pub fn conversion_scope<R>(convert: impl FnOnce() -> R) -> R {
    struct Restore(Option<Option<Arc<Mutex<OwnedEnv>>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SCOPE.with(|scope| *scope.borrow_mut() = previous);
        }
    }
    // A conversion started inside another (Python code run by a GC hook)
    // has a scope of its own.
    let _restore = Restore(SCOPE.with(|scope| scope.replace(Some(None))));
    convert()
}

macro_rules! opaque_class {
    ($rust:ident, $python:literal, $doc:literal, $tags:expr, keep = $keep:literal) => {
        #[doc = $doc]
        #[pyclass(module = "erlang", name = $python, frozen, eq, hash)]
        pub struct $rust {
            /// `term_to_binary` of the value: self-contained and node-independent.
            external: Vec<u8>,
            /// The term itself, for the kinds that may hold resources.
            kept: Option<KeptTerm>,
        }

        // By the external format: a kept copy is the same term.
        impl PartialEq for $rust {
            fn eq(&self, other: &Self) -> bool {
                self.external == other.external
            }
        }

        impl Eq for $rust {}

        impl std::hash::Hash for $rust {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.external.hash(state)
            }
        }

        impl $rust {
            pub fn from_term(term: Term<'_>) -> Self {
                $rust {
                    external: term.to_binary().as_slice().to_vec(),
                    kept: $keep.then(|| KeptTerm::new(term)),
                }
            }

            pub fn to_term<'a>(&self, env: Env<'a>) -> PyResult<Term<'a>> {
                if let Some(kept) = &self.kept {
                    return Ok(kept.copy_into(env));
                }
                env.binary_to_term(&self.external)
                    .map(|(term, _)| term)
                    .ok_or_else(|| PyValueError::new_err("corrupt Erlang term"))
            }
        }

        #[pymethods]
        impl $rust {
            /// From its external format (what `pickle` and `copy` use): the
            /// bytes must hold a term of this kind.
            #[new]
            fn new(external: Vec<u8>) -> PyResult<Self> {
                match external.as_slice() {
                    [131, tag, _, ..] if $tags.contains(tag) => Ok($rust {
                        external,
                        kept: None,
                    }),
                    _ => Err(PyValueError::new_err(concat!(
                        "not the external format of an Erlang ",
                        $python
                    ))),
                }
            }

            fn __repr__(&self) -> String {
                format!("<erlang.{} {}>", $python, describe(&self.external))
            }

            /// Pickled as its external format.
            fn __reduce__<'py>(
                slf: &Bound<'py, Self>,
            ) -> (Bound<'py, pyo3::types::PyType>, (Bound<'py, PyBytes>,)) {
                let external = PyBytes::new(slf.py(), &slf.get().external);
                (slf.get_type(), (external,))
            }

            /// Immutable: a copy is the object itself, as for `int`.
            fn __copy__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
                slf
            }

            fn __deepcopy__<'py>(
                slf: Bound<'py, Self>,
                _memo: &Bound<'py, PyAny>,
            ) -> Bound<'py, Self> {
                slf
            }
        }
    };
}

// External format tags (erts' external.h): NEW_PID_EXT, PID_EXT;
// NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT, REFERENCE_EXT; NEW_FUN_EXT,
// EXPORT_EXT, PORT_EXT, NEW_PORT_EXT, V4_PORT_EXT.
opaque_class!(
    Pid,
    "Pid",
    "An Erlang process identifier.",
    [88, 103],
    keep = false
);
opaque_class!(
    Ref,
    "Ref",
    "An Erlang reference.",
    [90, 114, 101],
    keep = true
);
opaque_class!(
    OpaqueTerm,
    "OpaqueTerm",
    "An Erlang fun or port, kept as it is.",
    [112, 113, 102, 89, 120],
    keep = true
);

/// A short, stable fingerprint of an external term for `repr`.
fn describe(external: &[u8]) -> String {
    let hash = external.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("#{:012x}", hash & 0xffff_ffff_ffff)
}
