//! Reading a transport's own attributes without CPython's generic lookup.
//!
//! The native transport methods read several of asyncio's attributes per
//! readiness event (`_conn_lost`, `_sock`, `_protocol`, `_buffer`, ...).
//! A `getattr` first looks the name up along the type's MRO (a data
//! descriptor there would win over the instance), then in the instance; in
//! a profile of TCP echo those generic lookups were about 6% of the loop
//! thread, the largest difference from uvloop, whose transport keeps such
//! state in C fields. Our transport classes name those hot attributes in
//! `__slots__` ([`SlotTable`]): asyncio's code stores them at fixed
//! offsets, and reading one is a load.
//!
//! The answer is always `getattr`'s: an empty slot, another name (a class
//! attribute such as `max_size`), or an instance of another class (a
//! subclass of ours may put a property over a slot's name) is read by
//! `getattr`.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

use super::handles::Slot;

/// The attributes a class keeps in object slots of its own, and where.
pub(crate) struct SlotTable {
    class: Py<PyType>,
    /// Interned names (compared by identity: `intern!` gives the same
    /// object) and their slots.
    slots: Vec<(Py<PyString>, Slot)>,
}

impl SlotTable {
    /// `names` as slots of `cls`, if `cls` has them all as writable object
    /// slots; None otherwise (its instances are read by dict).
    pub(crate) fn find(cls: &Bound<'_, PyType>, names: &[&str]) -> Option<SlotTable> {
        let py = cls.py();
        let slots = names
            .iter()
            .map(|name| {
                Some((
                    PyString::intern(py, name).unbind(),
                    Slot::find(cls, name).ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(SlotTable {
            class: cls.clone().unbind(),
            slots,
        })
    }

    fn slot_of(&self, name: &Bound<'_, PyString>) -> Option<Slot> {
        self.slots
            .iter()
            .find(|(slot_name, _)| slot_name.as_ptr() == name.as_ptr())
            .map(|&(_, slot)| slot)
    }
}

/// The slots `names` of a transport class of ours, found on the first
/// class registered that has them all.
pub(crate) struct ClassSlots {
    names: &'static [&'static str],
    table: PyOnceLock<SlotTable>,
}

impl ClassSlots {
    pub(crate) const fn new(names: &'static [&'static str]) -> Self {
        ClassSlots {
            names,
            table: PyOnceLock::new(),
        }
    }

    /// Finds the slots on `cls`, if it has them and none was found before.
    pub(crate) fn register(&self, cls: &Bound<'_, PyType>) {
        if let Some(table) = SlotTable::find(cls, self.names) {
            let _ = self.table.set(cls.py(), table);
        }
    }

    /// The attributes of `object`, in the slots if it is an instance of
    /// exactly the class registered.
    pub(crate) fn attrs_of<'a, 'py>(
        &'a self,
        object: &'a Bound<'py, PyAny>,
    ) -> InstanceAttrs<'a, 'py> {
        InstanceAttrs::of(object, self.table.get(object.py()))
    }
}

/// An object and where its attributes are, for several attribute reads.
pub(crate) struct InstanceAttrs<'a, 'py> {
    object: &'a Bound<'py, PyAny>,
    /// The slots of the object's class (None: not one of its instances).
    slots: Option<&'a SlotTable>,
}

impl<'a, 'py> InstanceAttrs<'a, 'py> {
    /// The attributes of `object`, in the slots of `table` if it is an
    /// instance of exactly the table's class (a subclass could put a
    /// property over a slot's name: its instances are read by `getattr`).
    pub(crate) fn of(object: &'a Bound<'py, PyAny>, table: Option<&'a SlotTable>) -> Self {
        // SAFETY: reading the type pointer of a live object.
        let class = unsafe { ffi::Py_TYPE(object.as_ptr()) }.cast::<ffi::PyObject>();
        let slots = table.filter(|table| table.class.as_ptr() == class);
        InstanceAttrs { object, slots }
    }

    /// `getattr(object, name)`, from its slot when it has one.
    #[inline]
    pub(crate) fn get(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        let Some(slot) = self.slots.and_then(|table| table.slot_of(name)) else {
            return self.object.getattr(name);
        };
        // SAFETY: `object` is an instance of the class the slot was found
        // on (checked in `of`); the value is borrowed and made an owned
        // reference at once.
        let value = unsafe { slot.get(self.object.as_ptr()) };
        if value.is_null() {
            return self.object.getattr(name);
        }
        Ok(unsafe { Bound::from_borrowed_ptr(self.object.py(), value) })
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
