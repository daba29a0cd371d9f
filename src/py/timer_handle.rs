//! `_erlang_loop.timer_handle_base()`: the native base of the loop's timer
//! handle class, `asyncio.TimerHandle` plus two fields stored in the
//! instance itself: the wheel key and `when` as a C double.
//!
//! As `__slots__`, each would point at an object of its own: an `int` key
//! and a `float` when, 32 bytes each on the heap and two allocations per
//! timer. Inline they cost nothing: asyncio's `TimerHandle` is 96 bytes,
//! plus 16 here fills the 128-byte allocation the instance takes anyway.
//! `_key` and `_when` stay attributes (get-set descriptors that shadow
//! `TimerHandle`'s `_when` slot), so asyncio's Python methods (`when()`,
//! the comparisons, `repr`) work unchanged. A `when` that is not a float
//! (`call_at(10)`) is also kept in `TimerHandle`'s own `_when` slot, so that
//! `when()` returns it as given, as asyncio does; floats, what `call_later`
//! and `sleep` make, cost no object.
//!
//! `_context` is an attribute too, over `Handle`'s slot: the loop takes a
//! pending timer's own context out of the GC, and a context must be back
//! under it before it is freed, so the setter puts the one it replaces back.

use std::ffi::{c_int, c_void, CStr};
use std::ptr::null_mut;

use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyType};

use super::context_snapshot::held_alone;
use super::handles::{track_if_context, Slot};
use super::once::get_or_make;

/// The fields this class adds after `TimerHandle`'s.
#[repr(C)]
pub(crate) struct TimerFields {
    /// The timer's wheel key while it is scheduled, 0 (never a valid key:
    /// generations start at 1) when it has none; and in the top bit, which
    /// a wheel key never has, [`SHARED_CONTEXT`]. One word for both: a
    /// third field would take the instance past its 128-byte allocation.
    key_and_flag: u64,
    /// `when`, in loop seconds.
    pub(crate) when: f64,
}

/// The flag bit of `TimerFields::key_and_flag`: the `_context` slot holds
/// a snapshot other timers may share (`context_snapshot`), which nothing
/// may run in or see before [`own_context`] gives the timer its own.
const SHARED_CONTEXT: u64 = 1 << 63;

impl TimerFields {
    /// The wheel key, while the timer is scheduled.
    pub(crate) fn key(&self) -> Option<u64> {
        match self.key_and_flag & !SHARED_CONTEXT {
            0 => None,
            key => Some(key),
        }
    }

    /// Sets the wheel key (None: no key), keeping the flag. A wheel key's
    /// top bit is clear; callers refuse others.
    pub(crate) fn set_key(&mut self, key: Option<u64>) {
        let key = key.unwrap_or(0);
        debug_assert_eq!(key & SHARED_CONTEXT, 0, "not a wheel key");
        self.key_and_flag = (self.key_and_flag & SHARED_CONTEXT) | (key & !SHARED_CONTEXT);
    }

    /// Does the `_context` slot hold a snapshot other timers may share?
    pub(crate) fn shares_context(&self) -> bool {
        self.key_and_flag & SHARED_CONTEXT != 0
    }

    pub(crate) fn set_shares_context(&mut self, shares: bool) {
        if shares {
            self.key_and_flag |= SHARED_CONTEXT;
        } else {
            self.key_and_flag &= !SHARED_CONTEXT;
        }
    }
}

/// The class and where its fields start in an instance.
struct Base {
    class: Py<PyType>,
    offset: isize,
    /// `TimerHandle`'s `_when` slot: a `when` given as another type than
    /// `float`, kept as given; null otherwise.
    kept_when: Slot,
    /// `Handle`'s `_context` slot, behind the `_context` attribute.
    context: Slot,
}

static BASE: PyOnceLock<Base> = PyOnceLock::new();

/// `_erlang_loop.timer_handle_base()`: the class (made once).
#[pyfunction]
pub fn timer_handle_base(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    base(py).map(|base| base.class.bind(py).clone())
}

fn base(py: Python<'_>) -> PyResult<&Base> {
    get_or_make(&BASE, py, || make_base(py))
}

fn make_base(py: Python<'_>) -> PyResult<Base> {
    let timer_handle = py
        .import("asyncio.events")?
        .getattr("TimerHandle")?
        .cast_into::<PyType>()?;
    // SAFETY: a live type object.
    let base_size = unsafe { (*timer_handle.as_type_ptr()).tp_basicsize };
    let align = std::mem::align_of::<TimerFields>() as isize;
    let offset = (base_size + align - 1) / align * align;
    let size = offset + std::mem::size_of::<TimerFields>() as isize;
    // The spec and getset table must outlive the class: leaked once.
    let getset: &'static mut [ffi::PyGetSetDef; 4] = Box::leak(Box::new([
        getset_def(
            c"_key",
            get_key,
            set_key,
            c"The wheel key while scheduled, else None.",
        ),
        getset_def(
            c"_when",
            get_when,
            set_when,
            c"When the timer is due, in loop seconds.",
        ),
        getset_def(
            c"_context",
            get_context,
            set_context,
            c"The contextvars.Context the callback runs in.",
        ),
        // SAFETY: an all-null PyGetSetDef ends the table.
        unsafe { std::mem::zeroed() },
    ]));
    let slots: &'static mut [ffi::PyType_Slot; 3] = Box::leak(Box::new([
        ffi::PyType_Slot {
            slot: ffi::Py_tp_getset,
            pfunc: getset.as_mut_ptr().cast(),
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_doc,
            pfunc: c"asyncio.TimerHandle with its wheel key and when stored inline."
                .as_ptr()
                .cast_mut()
                .cast(),
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: null_mut(),
        },
    ]));
    let spec: &'static mut ffi::PyType_Spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"_erlang_loop.TimerHandleBase".as_ptr(),
        basicsize: c_int::try_from(size)
            .map_err(|_| PyTypeError::new_err("TimerHandle too big"))?,
        itemsize: 0,
        // No GC flag of its own: it inherits TimerHandle's (and its
        // traverse, clear and dealloc, which walk the slots of the bases).
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE) as _,
        slots: slots.as_mut_ptr(),
    }));
    let bases = pyo3::types::PyTuple::new(py, [&timer_handle])?;
    // SAFETY: a valid spec that lives forever; `bases` a tuple of types.
    let class = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpecWithBases(spec, bases.as_ptr()))?
    }
    .cast_into::<PyType>()?;
    Ok(Base {
        class: class.unbind(),
        offset,
        kept_when: Slot::find(&timer_handle, "_when")?,
        context: Slot::find(&timer_handle, "_context")?,
    })
}

type Getter = unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void) -> *mut ffi::PyObject;
type Setter = unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject, *mut c_void) -> c_int;

fn getset_def(
    name: &'static CStr,
    get: Getter,
    set: Setter,
    doc: &'static CStr,
) -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: name.as_ptr(),
        get: Some(get),
        set: Some(set),
        doc: doc.as_ptr(),
        closure: null_mut(),
    }
}

fn existing_base() -> &'static Base {
    // SAFETY: only called with the GIL held (getset functions, handle code).
    match BASE.get(unsafe { Python::assume_attached() }) {
        Some(base) => base,
        None => unreachable!("an instance of TimerHandleBase before the class"),
    }
}

/// Sets `when` of a new instance: `seconds`, and `when` itself if it is
/// given and not a float.
///
/// # Safety
/// `object` is a new instance of the class, its `_when` slot still null.
pub(crate) unsafe fn init_when(
    object: *mut ffi::PyObject,
    when: Option<&Bound<'_, PyAny>>,
    seconds: f64,
) {
    // SAFETY: by the contract.
    unsafe {
        fields(object).when = seconds;
        if let Some(when) = when.filter(|when| !when.is_exact_instance_of::<PyFloat>()) {
            existing_base()
                .kept_when
                .init(object, when.clone().into_ptr());
        }
    }
}

/// The fields of an instance of the class (or a subclass).
///
/// # Safety
/// `object` is a live instance of the class made here, which exists.
pub(crate) unsafe fn fields<'a>(object: *mut ffi::PyObject) -> &'a mut TimerFields {
    let offset = existing_base().offset;
    // SAFETY: instances of the class are at least `offset` + the fields'
    // size long; the fields are plain data, zeroed at allocation.
    unsafe { &mut *((object as *mut u8).offset(offset) as *mut TimerFields) }
}

fn cannot_delete(name: &CStr) -> c_int {
    let message = format!("cannot delete {}", name.to_string_lossy());
    // SAFETY: called from a setter, with the GIL held.
    PyTypeError::new_err(message).restore(unsafe { Python::assume_attached() });
    -1
}

// The getset functions: CPython checks `object`'s type before calling them.

unsafe extern "C" fn get_key(object: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: an instance of the class (the descriptor checked it).
    match unsafe { fields(object) }.key() {
        // SAFETY: the GIL is held.
        None => unsafe { ffi::Py_NewRef(ffi::Py_None()) },
        // SAFETY: as above.
        Some(key) => unsafe { ffi::PyLong_FromUnsignedLongLong(key) },
    }
}

unsafe extern "C" fn set_key(
    object: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    if value.is_null() {
        return cannot_delete(c"_key");
    }
    // SAFETY: `value` is a live object; the GIL is held.
    let key = if unsafe { ffi::Py_IsNone(value) } != 0 {
        None
    } else {
        // SAFETY: as above; an error is left set for the caller.
        let key = unsafe { ffi::PyLong_AsUnsignedLongLong(value) };
        // SAFETY: as above.
        if key == u64::MAX && unsafe { !ffi::PyErr_Occurred().is_null() } {
            return -1;
        }
        if key & SHARED_CONTEXT != 0 {
            let error = PyOverflowError::new_err("a timer key is below 2**63");
            // SAFETY: the GIL is held.
            error.restore(unsafe { Python::assume_attached() });
            return -1;
        }
        Some(key).filter(|&key| key != 0)
    };
    // SAFETY: an instance of the class.
    unsafe { fields(object) }.set_key(key);
    0
}

unsafe extern "C" fn get_when(object: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: an instance of the class; the GIL is held.
    unsafe {
        let kept = existing_base().kept_when.get(object);
        if kept.is_null() {
            ffi::PyFloat_FromDouble(fields(object).when)
        } else {
            ffi::Py_NewRef(kept)
        }
    }
}

unsafe extern "C" fn set_when(
    object: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    if value.is_null() {
        return cannot_delete(c"_when");
    }
    // SAFETY: the GIL is held; `value` is a live object.
    let py = unsafe { Python::assume_attached() };
    let value = unsafe { Bound::from_borrowed_ptr(py, value) };
    match seconds(&value) {
        Ok(when) => {
            let kept = if value.is_exact_instance_of::<PyFloat>() {
                null_mut()
            } else {
                value.clone().into_ptr()
            };
            // SAFETY: an instance of the class; `set` releases what the
            // slot held.
            unsafe {
                fields(object).when = when;
                existing_base().kept_when.set(object, kept);
            }
            0
        }
        Err(error) => {
            error.restore(py);
            -1
        }
    }
}

unsafe extern "C" fn get_context(object: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: an instance of the class; the GIL is held.
    unsafe {
        if let Err(error) = own_context(object) {
            error.restore(Python::assume_attached());
            return null_mut();
        }
        let context = existing_base().context.get(object);
        if context.is_null() {
            no_context(object);
            return null_mut();
        }
        ffi::Py_NewRef(context)
    }
}

/// Gives a timer whose `_context` slot holds a shared snapshot (see
/// `context_snapshot`) a context of its own, before any code runs in it or
/// sees it: the snapshot itself if the timer is by now its only holder,
/// else a copy. Nothing to do for other timers.
///
/// # Safety
/// `object` is a live instance of the class; the GIL is held.
pub(crate) unsafe fn own_context(object: *mut ffi::PyObject) -> PyResult<()> {
    // SAFETY: by the contract. The snapshot is held here (a new reference)
    // while the copy is made: an allocation may run the GC, whose
    // finalizers may read `_context` and so come here first.
    unsafe {
        if !fields(object).shares_context() {
            return Ok(());
        }
        let py = Python::assume_attached();
        let slot = existing_base().context;
        let snapshot = slot.get(object);
        if snapshot.is_null() || held_alone(snapshot) {
            fields(object).set_shares_context(false);
            return Ok(());
        }
        let snapshot = Bound::from_borrowed_ptr(py, snapshot);
        let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(snapshot.as_ptr()))?;
        if fields(object).shares_context() && slot.get(object) == snapshot.as_ptr() {
            // The slot's reference goes: if the snapshot is out of the GC,
            // it comes back first (a context must be tracked when freed).
            track_if_context(snapshot.as_ptr());
            slot.set(object, copy.into_ptr());
            fields(object).set_shares_context(false);
        }
        Ok(())
    }
}

/// The error of an unset slot, worded as CPython's member descriptor's.
///
/// # Safety
/// `object` is a live object; the GIL is held.
unsafe fn no_context(object: *mut ffi::PyObject) {
    // SAFETY: by the contract.
    let name = unsafe { member_error_type_name(object) };
    let message = format!("'{name}' object has no attribute '_context'");
    // SAFETY: the GIL is held.
    PyAttributeError::new_err(message).restore(unsafe { Python::assume_attached() });
}

/// The name of `object`'s type as a member descriptor's error gives it:
/// `tp_name` before 3.13, the fully qualified name since (`%T`, PEP 737:
/// `asyncio.events.TimerHandle`, no module for `builtins` and `__main__`).
///
/// # Safety
/// `object` is a live object; the GIL is held.
unsafe fn member_error_type_name(object: *mut ffi::PyObject) -> String {
    #[cfg(Py_3_13)]
    {
        // SAFETY: by the contract: the GIL is held, and an object's type is
        // a live type object, borrowed while the object lives.
        let ty = unsafe {
            let py = Python::assume_attached();
            Bound::from_borrowed_ptr(py, ffi::Py_TYPE(object).cast())
                .cast_into_unchecked::<PyType>()
        };
        ty.fully_qualified_name()
            .map_or_else(|_| String::from("?"), |name| name.to_string())
    }
    #[cfg(not(Py_3_13))]
    {
        // SAFETY: by the contract; `tp_name` of a live type is a C string.
        let name = unsafe { CStr::from_ptr((*ffi::Py_TYPE(object)).tp_name) };
        name.to_string_lossy().into_owned()
    }
}

/// Replaces (or, `value` null, deletes) the slot as asyncio's member would.
/// The context it held goes back under the GC first: the loop may have
/// taken it out (`HandleKinds::untrack`), and a context must be tracked
/// when it is freed.
unsafe extern "C" fn set_context(
    object: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    _: *mut c_void,
) -> c_int {
    // SAFETY: an instance of the class; the GIL is held; `value` is null or
    // a live object, of which the slot takes a new reference.
    unsafe {
        let slot = existing_base().context;
        let old = slot.get(object);
        if value.is_null() && old.is_null() {
            no_context(object);
            return -1;
        }
        track_if_context(old);
        slot.set(
            object,
            if value.is_null() {
                value
            } else {
                ffi::Py_NewRef(value)
            },
        );
        // What it held may have been a shared snapshot; what it holds now
        // was given, and is run as given.
        fields(object).set_shares_context(false);
    }
    0
}

/// `when` as a double, for the loop's ordering of timers due in the same
/// nanosecond: anything `float()` takes; integers too large for a float are
/// +-infinity; NaN for the rest (asyncio's slot takes any object, and so
/// does this attribute: `when()` returns it as given).
fn seconds(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    match value.extract::<f64>() {
        Ok(when) => Ok(when),
        Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => Ok(if value.gt(0)? {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }),
        Err(error) if error.is_instance_of::<PyTypeError>(value.py()) => Ok(f64::NAN),
        Err(error) => Err(error),
    }
}
