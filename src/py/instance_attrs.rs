//! Reading an object's own attributes straight from its instance dict.
//!
//! The native transport methods read several of asyncio's attributes per
//! readiness event (`_conn_lost`, `_sock`, `_protocol`, `_buffer`, ...).
//! A `getattr` first looks the name up along the type's MRO (a data
//! descriptor there would win over the instance), then in the instance; in
//! a profile of TCP echo those generic lookups were about 6% of the loop
//! thread, the largest difference from uvloop, whose transport keeps such
//! state in C fields. These names are plain instance attributes that
//! asyncio's `__init__`s set, and one dict lookup with an interned key
//! finds them.
//!
//! The answer is always `getattr`'s: a name not in the dict (a class
//! attribute such as `max_size`, or a slot in some other asyncio) falls
//! back to `getattr`, and a name that is a data descriptor of the type
//! (a property, a slot) never lands in the instance dict, since assigning
//! it goes through the descriptor. Only a write to `__dict__` behind a
//! descriptor's back could tell the two apart.
//!
//! Asking for the dict makes CPython keep the instance's attributes in a
//! real dict from then on instead of its inline values; Python code reading
//! them stays specialised (by dict hint instead of by index).

use std::ptr::null_mut;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// An object and its instance dict, for several attribute reads.
pub(crate) struct InstanceAttrs<'a, 'py> {
    object: &'a Bound<'py, PyAny>,
    /// None when the object has no dict: every read is a `getattr`.
    dict: Option<Bound<'py, PyDict>>,
}

impl<'a, 'py> InstanceAttrs<'a, 'py> {
    /// The attributes of `object`.
    pub(crate) fn of(object: &'a Bound<'py, PyAny>) -> Self {
        let py = object.py();
        // SAFETY: `object` is a live object and the thread is attached;
        // the result is a new reference or null with an exception set.
        let raw = unsafe { ffi::PyObject_GenericGetDict(object.as_ptr(), null_mut()) };
        let dict = if raw.is_null() {
            // No `__dict__` (a class with `__slots__` only): `getattr` it is.
            drop(PyErr::take(py));
            None
        } else {
            // SAFETY: a new reference, owned from here.
            let any = unsafe { Bound::from_owned_ptr(py, raw) };
            any.cast_into::<PyDict>().ok()
        };
        InstanceAttrs { object, dict }
    }

    /// `getattr(object, name)`, from the instance dict when it is there.
    #[inline]
    pub(crate) fn get(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(dict) = &self.dict {
            if let Some(value) = dict.get_item(name)? {
                return Ok(value);
            }
        }
        self.object.getattr(name)
    }

    /// Whether `getattr(object, name)` is true.
    #[inline]
    pub(crate) fn is_true(&self, name: &Bound<'py, PyString>) -> PyResult<bool> {
        self.get(name)?.is_truthy()
    }

    /// The object they are the attributes of.
    pub(crate) fn object(&self) -> &'a Bound<'py, PyAny> {
        self.object
    }
}
