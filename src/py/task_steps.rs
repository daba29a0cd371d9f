//! Recognising a C `Task` scheduling its own next step, whose `call_soon`
//! handle it drops: the runner queues that step without a `Handle` (see
//! `held::BareCall`).
//!
//! `_asyncio`'s `task_call_step_soon` makes a `TaskStepMethWrapper` (Python
//! code cannot: the type has no constructor), hands it to `call_soon` at
//! once and drops the handle. A wrapper that only its caller holds, for the
//! task whose step or wake-up the runner is running right now, is that
//! call: Python code can only pass a wrapper it took from a queued handle,
//! and a task's next step is never queued while the task runs.

use std::cell::Cell;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use super::method::{builtin_method_parts, def_is_named};
use pyo3::ffi;

/// `_asyncio`'s `TaskStepMethWrapper` type, once seen (it is not exported).
static TASK_STEP_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(null_mut());

/// `_asyncio`'s `task_wakeup` method entry, once seen: a C Task's wake-up
/// callback is that method bound to the task.
static TASK_WAKEUP_DEF: AtomicPtr<ffi::PyMethodDef> = AtomicPtr::new(null_mut());

thread_local! {
    /// The task whose step or wake-up the runner runs on this thread now
    /// (compared by address only, never dereferenced; null: none).
    static STEPPING: Cell<*mut ffi::PyObject> = const { Cell::new(null_mut()) };
}

/// While alive, the runner is running `callback`: if it steps or wakes a
/// C `Task`, that task is the one stepping.
pub(crate) struct Stepping {
    /// What to put back; None: nothing was changed (no task's callback,
    /// while none was stepping: most callbacks), as the guards of the
    /// callbacks run meanwhile put back what they changed.
    previous: Option<*mut ffi::PyObject>,
}

impl Stepping {
    /// # Safety
    /// `callback` is a live object, with the GIL held.
    pub(crate) unsafe fn run(callback: *mut ffi::PyObject) -> Stepping {
        // SAFETY: per the contract.
        let task = unsafe { task_of(callback) };
        STEPPING.with(|stepping| {
            let previous = if task.is_null() && stepping.get().is_null() {
                None
            } else {
                Some(stepping.replace(task))
            };
            Stepping { previous }
        })
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            STEPPING.set(previous);
        }
    }
}

/// Whether `callback`, the one positional argument of a `call_soon`, is the
/// next step of the task stepping now that only its caller holds (see the
/// module).
pub(crate) fn is_fresh_task_step(callback: *mut ffi::PyObject) -> bool {
    let stepping = STEPPING.get();
    // SAFETY: `callback` is a live argument of the current call; its
    // reference count, type and `__self__` are read with the GIL held.
    unsafe {
        !stepping.is_null()
            && ffi::Py_REFCNT(callback) == 1
            && refcounts_tell_callers()
            && is_step_wrapper(callback)
            && step_task(callback) == stepping
    }
}

/// The task `callback` steps (its `TaskStepMethWrapper`) or wakes (its
/// `task_wakeup` method); null for any other callback.
///
/// # Safety
/// `callback` is a live object, with the GIL held.
unsafe fn task_of(callback: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the contract; a builtin method's `m_ml` and `m_self` are
    // readable while it is alive.
    unsafe {
        if is_step_wrapper(callback) {
            return step_task(callback);
        }
        let Some((def, bound)) = builtin_method_parts(callback) else {
            return null_mut();
        };
        let known = TASK_WAKEUP_DEF.load(Ordering::Relaxed);
        if !known.is_null() {
            return if def == known { bound } else { null_mut() };
        }
        if def_is_named(def, c"task_wakeup") && is_c_task(bound) {
            TASK_WAKEUP_DEF.store(def, Ordering::Relaxed);
            bound
        } else {
            null_mut()
        }
    }
}

/// Whether `object` is an `_asyncio.Task` (or a subclass): what binds
/// `_asyncio`'s own `task_wakeup`.
///
/// # Safety
/// `object` is null or a live object, with the GIL held.
unsafe fn is_c_task(object: *mut ffi::PyObject) -> bool {
    // SAFETY: per the contract: type names along the base chain are read.
    unsafe {
        if object.is_null() {
            return false;
        }
        let mut ty = ffi::Py_TYPE(object);
        while !ty.is_null() {
            if (*ty).tp_flags & ffi::Py_TPFLAGS_HEAPTYPE == 0
                && CStr::from_ptr((*ty).tp_name) == c"_asyncio.Task"
            {
                return true;
            }
            ty = (*ty).tp_base;
        }
        false
    }
}

/// # Safety
/// `object` is a live object, with the GIL held.
unsafe fn is_step_wrapper(object: *mut ffi::PyObject) -> bool {
    // SAFETY: per the contract: the type and its flags and name are read.
    unsafe {
        let ty = ffi::Py_TYPE(object);
        let known = TASK_STEP_TYPE.load(Ordering::Relaxed);
        if !known.is_null() {
            return ty == known;
        }
        let is_step = (*ty).tp_flags & ffi::Py_TPFLAGS_HEAPTYPE == 0
            && CStr::from_ptr((*ty).tp_name) == c"TaskStepMethWrapper";
        if is_step {
            TASK_STEP_TYPE.store(ty, Ordering::Relaxed);
        }
        is_step
    }
}

/// `TaskStepMethWrapper`'s fields in CPython 3.11 to 3.13
/// (`_asynciomodule.c`): its task, then the value to step it with.
#[repr(C)]
struct StepWrapperLayout {
    ob_base: ffi::PyObject,
    sw_task: *mut ffi::PyObject,
    sw_arg: *mut ffi::PyObject,
}

/// Whether `StepWrapperLayout` was checked against `__self__`: unknown,
/// matches, differs.
static LAYOUT: AtomicU8 = AtomicU8::new(LAYOUT_UNKNOWN);
const LAYOUT_UNKNOWN: u8 = 0;
const LAYOUT_MATCHES: u8 = 1;
const LAYOUT_DIFFERS: u8 = 2;

/// The task of a `TaskStepMethWrapper` (its `__self__`), by address: the
/// wrapper holds it, so it stays valid while the wrapper lives. Read from
/// the wrapper's fields once their layout was found to give `__self__`.
///
/// # Safety
/// `wrapper` is a live `TaskStepMethWrapper`, with the GIL held.
unsafe fn step_task(wrapper: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the contract. The fields are read only from an object
    // at least as large as the layout, and trusted only once they matched.
    unsafe {
        match LAYOUT.load(Ordering::Relaxed) {
            LAYOUT_MATCHES => (*(wrapper as *mut StepWrapperLayout)).sw_task,
            LAYOUT_DIFFERS => self_of(wrapper),
            _ => {
                let task = self_of(wrapper);
                let fits = (*ffi::Py_TYPE(wrapper)).tp_basicsize
                    >= std::mem::size_of::<StepWrapperLayout>() as ffi::Py_ssize_t;
                let matches = fits
                    && !task.is_null()
                    && (*(wrapper as *mut StepWrapperLayout)).sw_task == task;
                let layout = if matches {
                    LAYOUT_MATCHES
                } else {
                    LAYOUT_DIFFERS
                };
                LAYOUT.store(layout, Ordering::Relaxed);
                task
            }
        }
    }
}

/// `wrapper.__self__` by address (null if it has none).
///
/// # Safety
/// `wrapper` is a live object, with the GIL held.
unsafe fn self_of(wrapper: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the contract; a `TaskStepMethWrapper`'s getter runs no
    // Python code.
    unsafe {
        let name = self_name();
        if name.is_null() {
            ffi::PyErr_Clear();
            return null_mut();
        }
        let task = ffi::PyObject_GetAttr(wrapper, name);
        if task.is_null() {
            ffi::PyErr_Clear();
            return null_mut();
        }
        ffi::Py_DECREF(task);
        task
    }
}

/// `"__self__"`, interned once and kept: an interned name is what the type
/// attribute cache knows (a fresh string each time would be hashed and
/// looked up through the whole MRO).
///
/// # Safety
/// With the GIL held.
unsafe fn self_name() -> *mut ffi::PyObject {
    static NAME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(null_mut());
    let known = NAME.load(Ordering::Acquire);
    if !known.is_null() {
        return known;
    }
    // SAFETY: per the contract; the new reference is kept for good.
    let made = unsafe { ffi::PyUnicode_InternFromString(c"__self__".as_ptr()) };
    if !made.is_null() {
        NAME.store(made, Ordering::Release);
    }
    made
}

/// Whether this CPython pushes owned references for a call's arguments
/// (before 3.14), so that an argument with one reference has no holder
/// but its caller's C code.
fn refcounts_tell_callers() -> bool {
    static BEFORE_3_14: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: a constant of the linked CPython.
    *BEFORE_3_14.get_or_init(|| unsafe { ffi::Py_Version } < 0x030E_0000)
}
