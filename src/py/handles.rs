//! asyncio's `Handle` and our `TimerHandle` subclass, made and run without
//! their Python methods (LESSONS 27: per-callback cost is interpreter work).
//!
//! The objects stay real instances of the stdlib classes, so `isinstance`,
//! `repr` and everything else about them is asyncio's own. Native here:
//! construction (the fields `__init__` would set are written straight into
//! the instance's `__slots__`), the body of `Handle._run` (enter the
//! context, call, exit) and the slot writes of a cancel (the timer class's
//! `cancel()` itself is in `timer_cancel`). Where the slots are is read
//! once from the classes' member descriptors and checked against the
//! instance size, so a changed asyncio fails at start-up, not in memory.

use std::cell::Cell;
use std::ptr::{addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use super::context_snapshot::copy_current;
use super::task_steps::Stepping;
use super::timer_handle::{self, timer_handle_base};

/// Where one object-valued `__slots__` member lives in an instance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    offset: isize,
}

impl Slot {
    /// The slot `name` of `ty`, which must be a writable object member.
    pub(crate) fn find(ty: &Bound<'_, PyType>, name: &str) -> PyResult<Slot> {
        let pointer = std::mem::size_of::<*mut ffi::PyObject>() as isize;
        member_offset(ty, name, ffi::Py_T_OBJECT_EX, pointer, true).map(|offset| Slot { offset })
    }

    /// The slot's value in `object` (borrowed; null when unset).
    ///
    /// # Safety
    /// `object` is an instance of the type the slot was found on.
    pub(crate) unsafe fn get(self, object: *mut ffi::PyObject) -> *mut ffi::PyObject {
        *((object as *mut u8).offset(self.offset) as *mut *mut ffi::PyObject)
    }

    /// Stores a new reference in the slot of a freshly allocated `object`,
    /// whose slots are all null.
    ///
    /// # Safety
    /// `object` is an instance of the type the slot was found on, with the
    /// slot still null; `value` is a strong reference, given away.
    pub(crate) unsafe fn init(self, object: *mut ffi::PyObject, value: *mut ffi::PyObject) {
        *((object as *mut u8).offset(self.offset) as *mut *mut ffi::PyObject) = value;
    }

    /// Replaces the slot's value with a new reference.
    ///
    /// # Safety
    /// As `init`, but the slot may hold a value (released here).
    pub(crate) unsafe fn set(self, object: *mut ffi::PyObject, value: *mut ffi::PyObject) {
        let place = (object as *mut u8).offset(self.offset) as *mut *mut ffi::PyObject;
        let old = std::mem::replace(&mut *place, value);
        ffi::Py_XDECREF(old);
    }
}

/// Where the member `name` of `ty` lives in an instance: a member
/// descriptor of C type `type_code`, `size` bytes, inside the instance
/// (and writable, if asked), or an error naming it.
pub(crate) fn member_offset(
    ty: &Bound<'_, PyType>,
    name: &str,
    type_code: std::ffi::c_int,
    size: isize,
    writable: bool,
) -> PyResult<isize> {
    let descr = ty.getattr(name)?;
    let bad = || PyRuntimeError::new_err(format!("{ty}.{name} is not the member expected"));
    // SAFETY: the type check comes first; a member descriptor's object
    // is a PyMemberDescrObject whose d_member points at the member table
    // of a live type, d_type (we hold `descr`, which holds the type).
    let (found_code, flags, offset) = unsafe {
        if ffi::Py_TYPE(descr.as_ptr()) != addr_of_mut!(ffi::PyMemberDescr_Type) {
            return Err(bad());
        }
        let descr = &*(descr.as_ptr() as *mut ffi::PyMemberDescrObject);
        // A descriptor of another class (copied onto `ty`, or from its
        // metaclass) describes another layout.
        if ffi::PyType_IsSubtype(ty.as_type_ptr(), descr.d_common.d_type) == 0 {
            return Err(bad());
        }
        let member = descr.d_member;
        ((*member).type_code, (*member).flags, (*member).offset)
    };
    // SAFETY: `ty` is a live type object.
    let basic_size = unsafe { (*ty.as_type_ptr()).tp_basicsize };
    let header = std::mem::size_of::<ffi::PyObject>() as isize;
    if found_code != type_code
        || (writable && flags & ffi::Py_READONLY != 0)
        || offset < header
        || offset + size > basic_size
    {
        return Err(bad());
    }
    Ok(offset)
}

/// What `Handle._run` does with the handle's callback.
pub enum Ran {
    /// The handle was cancelled: nothing ran.
    Cancelled,
    /// The callback returned.
    Done,
    /// The callback raised an `Exception` (or the context was busy): the
    /// loop reports it to its exception handler, as `Handle._run` would.
    Failed(PyErr),
}

/// The classes and slot positions of the handles a loop makes.
pub struct HandleKinds {
    handle: Py<PyType>,
    timer: Py<PyType>,
    /// `asyncio.TimerHandle`: its instances run as plain handles too.
    stock_timer: Py<PyType>,
    callback: Slot,
    args: Slot,
    cancelled: Slot,
    loop_: Slot,
    source_traceback: Slot,
    repr: Slot,
    context: Slot,
    scheduled: Slot,
    /// Whether the handles made here can leave the cyclic GC (see `untrack`).
    untrackable: bool,
    /// `Handle._run` as found at start-up: patched since (profilers,
    /// tracers), handles run through Python.
    stock_run: Py<PyAny>,
    /// Whether that `_run` is asyncio's own (patched before we started,
    /// by `sitecustomize` say, it is never run natively).
    stock_run_pristine: bool,
    /// `Handle`'s type version tag when its `_run` was last found to be
    /// `stock_run` (0: not yet): CPython gives a type a new tag whenever it
    /// or a base changes, so the same tag means the same `_run`.
    stock_run_tag: AtomicU32,
    /// `asyncio.futures._set_result_unless_cancelled`, the callback of every
    /// `asyncio.sleep` timer, if it is asyncio's own; and the C `Future`.
    sleep_callback: Option<Py<PyAny>>,
    c_future: Py<PyType>,
    /// Its methods a fired sleep calls (see `resolve_sleep`).
    future_methods: FutureMethods,
    /// `asyncio.Handle`'s layout, when its instances can be freed here
    /// (see `dispose`).
    plain_free: Option<PlainFree>,
}

/// Where everything an `asyncio.Handle` owns lives: what its
/// deallocation (`subtype_dealloc`, a walk of the class's member table
/// and its bases) releases, for `HandleKinds::dispose` to release it the
/// same way without the walk. A profile of a busy loop had that walk at
/// ~6% of the thread (100 callbacks in flight).
struct PlainFree {
    /// The object slots, in the order `subtype_dealloc` clears them (the
    /// member table's, which is by offset: CPython sorts `__slots__`).
    slots: Vec<isize>,
    /// The weak reference list's offset.
    weaklist: isize,
}

impl PlainFree {
    /// The layout of `handle` (`asyncio.Handle`) if it is what `free`
    /// expects: a heap GC class with `__slots__` only (`slots`, the
    /// weak reference list, nothing else: no `__dict__`, no items), right
    /// under `object`, deallocated by the same generic function as
    /// `stock_timer` (a Python class too: `subtype_dealloc`) and freed by
    /// `PyObject_GC_Del`. Otherwise None: handles are freed by CPython.
    fn of(
        handle: &Bound<'_, PyType>,
        stock_timer: &Bound<'_, PyType>,
        slots: &[Slot],
    ) -> Option<Self> {
        if cfg!(any(
            Py_3_12,
            py_sys_config = "Py_REF_DEBUG",
            py_sys_config = "Py_TRACE_REFS"
        )) {
            // `free` sets the reference count as 3.11 lays it out, and keeps
            // no debug build's reference bookkeeping.
            return None;
        }
        let pointer = std::mem::size_of::<*mut ffi::PyObject>() as isize;
        let header = std::mem::size_of::<ffi::PyObject>() as isize;
        // SAFETY: reading fields of live type objects.
        unsafe {
            let ty = handle.as_type_ptr();
            let generic = (*stock_timer.as_type_ptr()).tp_dealloc.map(|f| f as usize);
            let free = ffi::PyObject_GC_Del as unsafe extern "C" fn(*mut std::ffi::c_void);
            let flags = (*ty).tp_flags;
            let layout_ok = (*ty).tp_base == addr_of_mut!(ffi::PyBaseObject_Type)
                && generic.is_some()
                && (*ty).tp_dealloc.map(|f| f as usize) == generic
                && (*ty).tp_free.map(|f| f as usize) == Some(free as usize)
                && flags & ffi::Py_TPFLAGS_HEAPTYPE != 0
                && flags & ffi::Py_TPFLAGS_HAVE_GC != 0
                && flags & ffi::Py_TPFLAGS_MANAGED_DICT == 0
                && (*ty).tp_dictoffset == 0
                && (*ty).tp_itemsize == 0
                && (*ty).tp_weaklistoffset >= header;
            if !layout_ok {
                return None;
            }
            let mut offsets: Vec<isize> = slots.iter().map(|slot| slot.offset).collect();
            offsets.sort_unstable();
            let mut all = offsets.clone();
            all.push((*ty).tp_weaklistoffset);
            all.sort_unstable();
            // Every pointer of the instance after its header, each once.
            let count = (all.len()) as isize;
            let covered = all
                .iter()
                .enumerate()
                .all(|(i, &offset)| offset == header + i as isize * pointer);
            if !covered || (*ty).tp_basicsize != header + count * pointer {
                return None;
            }
            Some(PlainFree {
                slots: offsets,
                weaklist: (*ty).tp_weaklistoffset,
            })
        }
    }

    /// Frees `raw` as `subtype_dealloc` does for this layout: out of the
    /// GC, its weak references cleared (their callbacks run), each slot
    /// cleared in the member table's order, the memory freed, the class's
    /// reference dropped.
    ///
    /// # Safety
    /// `raw` is exactly an instance of the class `of` accepted, whose one
    /// reference the caller gives away here, of a class with no finalizer
    /// (`tp_finalize`, `tp_del`); the GIL is held.
    unsafe fn free(&self, raw: *mut ffi::PyObject) {
        // SAFETY: by the contract; the reference count as 3.11 lays it out
        // (`of` accepts no other), zero as in any deallocation.
        unsafe {
            let ty = ffi::Py_TYPE(raw);
            #[cfg(not(Py_3_12))]
            {
                (*raw).ob_refcnt = 0;
            }
            ffi::PyObject_GC_UnTrack(raw.cast());
            let weaklist = *((raw as *mut u8).offset(self.weaklist) as *mut *mut ffi::PyObject);
            if !weaklist.is_null() {
                ffi::PyObject_ClearWeakRefs(raw);
            }
            for &offset in &self.slots {
                let place = (raw as *mut u8).offset(offset) as *mut *mut ffi::PyObject;
                let value = std::mem::replace(&mut *place, std::ptr::null_mut());
                ffi::Py_XDECREF(value);
            }
            // The class's `tp_free` (`of` accepts no other).
            ffi::PyObject_GC_Del(raw.cast());
            ffi::Py_DECREF(ty.cast());
        }
    }
}

/// The C `Future`'s `get_loop`, `cancelled` and `set_result`, as its type
/// defines them (a C type's methods cannot be replaced): called with the
/// future as first argument, they skip the look-up of the name, which is
/// most of the cost of such a call. Only on a future with no attributes of
/// its own, which could hide them.
struct FutureMethods {
    get_loop: Py<PyAny>,
    cancelled: Py<PyAny>,
    set_result: Py<PyAny>,
}

impl FutureMethods {
    fn of(future_type: &Bound<'_, PyType>) -> PyResult<FutureMethods> {
        Ok(FutureMethods {
            get_loop: future_type.getattr("get_loop")?.unbind(),
            cancelled: future_type.getattr("cancelled")?.unbind(),
            set_result: future_type.getattr("set_result")?.unbind(),
        })
    }
}

/// `future.name(arg)` (or without `arg`), through `method`, the type's
/// own, if given.
fn call_future<'py>(
    future: &Bound<'py, PyAny>,
    method: Option<&Py<PyAny>>,
    name: &Bound<'py, PyString>,
    arg: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = future.py();
    match (method, arg) {
        (Some(method), None) => method.bind(py).call1((future,)),
        (Some(method), Some(arg)) => method.bind(py).call1((future, arg)),
        (None, None) => future.call_method0(name),
        (None, Some(arg)) => future.call_method1(name, (arg,)),
    }
}

/// Does `object` have no instance attributes (no `__dict__`, or an empty
/// one), so that a method name resolves to its type's method?
fn no_instance_attributes(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: reading the dict offset of a live type and, at that positive
    // offset inside the object, its dict pointer (null or a live dict).
    unsafe {
        let offset = (*ffi::Py_TYPE(object.as_ptr())).tp_dictoffset;
        if offset <= 0 {
            return offset == 0;
        }
        let dict = *((object.as_ptr() as *mut u8).offset(offset) as *mut *mut ffi::PyObject);
        dict.is_null() || ffi::PyDict_Size(dict) == 0
    }
}

impl HandleKinds {
    /// `handle` is `asyncio.Handle`; `timer` a subclass of
    /// `timer_handle_base()` (an `asyncio.TimerHandle` with its key and
    /// `when` inline). Both must keep `Handle._run`.
    pub fn new(handle: &Bound<'_, PyType>, timer: &Bound<'_, PyType>) -> PyResult<HandleKinds> {
        let py = handle.py();
        let stock_timer = py
            .import("asyncio.events")?
            .getattr("TimerHandle")?
            .cast_into::<PyType>()?;
        let base = timer_handle_base(py)?;
        if !timer.is_subclass(&base)? || !stock_timer.is_subclass(handle)? {
            return Err(PyRuntimeError::new_err(
                "the timer class must subclass _erlang_loop.timer_handle_base()",
            ));
        }
        let run = handle.getattr("_run")?;
        if !timer.getattr("_run")?.is(&run) || !stock_timer.getattr("_run")?.is(&run) {
            return Err(PyRuntimeError::new_err(
                "handle classes must keep Handle._run",
            ));
        }
        let futures = py.import("asyncio.futures")?;
        let sleep_callback = futures.getattr("_set_result_unless_cancelled")?;
        let sleep_callback = defined_in(
            &sleep_callback,
            "asyncio.futures",
            "_set_result_unless_cancelled",
        )?
        .then(|| sleep_callback.unbind());
        let slots @ [callback, args, cancelled, loop_, source_traceback, repr, context] = [
            Slot::find(handle, "_callback")?,
            Slot::find(handle, "_args")?,
            Slot::find(handle, "_cancelled")?,
            Slot::find(handle, "_loop")?,
            Slot::find(handle, "_source_traceback")?,
            Slot::find(handle, "_repr")?,
            Slot::find(handle, "_context")?,
        ];
        let plain_free = PlainFree::of(handle, &stock_timer, &slots);
        Ok(HandleKinds {
            plain_free,
            untrackable: untrackable(handle) && untrackable(timer),
            stock_run_pristine: defined_by_asyncio(&run, "_run")?,
            stock_run_tag: AtomicU32::new(0),
            sleep_callback,
            future_methods: FutureMethods::of(&futures.getattr("Future")?.cast_into()?)?,
            c_future: futures.getattr("Future")?.cast_into::<PyType>()?.unbind(),
            stock_run: run.unbind(),
            callback,
            args,
            cancelled,
            loop_,
            source_traceback,
            repr,
            context,
            scheduled: Slot::find(timer, "_scheduled")?,
            handle: handle.clone().unbind(),
            timer: timer.clone().unbind(),
            stock_timer: stock_timer.unbind(),
        })
    }

    /// Were these kinds made from these classes?
    pub fn same_classes(&self, handle: &Bound<'_, PyType>, timer: &Bound<'_, PyType>) -> bool {
        self.handle.bind(handle.py()).is(handle) && self.timer.bind(timer.py()).is(timer)
    }

    /// `Handle(callback, args, loop, context)` for a loop not in debug mode
    /// (no source traceback). `context` None = a copy of the current one.
    pub fn new_handle<'py>(
        &self,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        loop_: &Bound<'py, PyAny>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = callback.py();
        let context = context_or_copy(py, context)?;
        let object = allocate(self.handle.bind(py))?;
        // SAFETY: `object` is a new, zeroed instance of the class the slots
        // were found on; every value is a new strong reference.
        unsafe { self.init_handle(object.as_ptr(), callback, args, loop_, context) };
        Ok(object)
    }

    /// `new_handle` without its loop: the `_loop` slot stays null until
    /// `set_loop` (the runner reads its loop and queues the handle under
    /// one borrow, after the allocations). Nothing may see the handle
    /// before: no Python code runs between the two.
    pub fn new_handle_unlooped<'py>(
        &self,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = callback.py();
        let context = copy_current(py)?;
        let object = allocate(self.handle.bind(py))?;
        let raw = object.as_ptr();
        // SAFETY: `object` is a new, zeroed instance of the class the slots
        // were found on.
        unsafe { self.init_unlooped(raw, callback, args, context) };
        Ok(object)
    }

    /// Sets the loop of a handle made by `new_handle_unlooped`.
    ///
    /// # Safety
    /// `handle` came from `new_handle_unlooped` and its loop is not set;
    /// `loop_` is a live object; the GIL is held.
    pub unsafe fn set_loop(&self, handle: &Bound<'_, PyAny>, loop_: *mut ffi::PyObject) {
        // SAFETY: by the contract.
        unsafe { self.loop_.init(handle.as_ptr(), new_ref(loop_)) };
    }

    /// A scheduled timer handle due at `when` (`seconds` as a double; no
    /// `when`: the float `seconds`) running in `context`, which is a
    /// snapshot other timers may share if `shared` (see
    /// `context_snapshot`); its wheel key is set once it is in the wheel
    /// (`set_key`).
    #[allow(clippy::too_many_arguments)]
    pub fn new_timer<'py>(
        &self,
        when: Option<&Bound<'py, PyAny>>,
        seconds: f64,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        loop_: &Bound<'py, PyAny>,
        context: Bound<'py, PyAny>,
        shared: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = callback.py();
        let object = allocate(self.timer.bind(py))?;
        // SAFETY: as in `new_handle`; the timer slots and fields belong to
        // this class.
        unsafe {
            let raw = object.as_ptr();
            self.init_handle(raw, callback, args, loop_, context);
            self.scheduled.init(raw, new_ref(ffi::Py_True()));
            timer_handle::init_when(raw, when, seconds);
            timer_handle::fields(raw).set_shares_context(shared);
        }
        Ok(object)
    }

    /// Gives a timer handle made by `new_timer` its wheel key (a wheel
    /// key's top bit is clear).
    pub fn set_key(&self, timer: &Bound<'_, PyAny>, key: u64) {
        // SAFETY: an instance of our timer class (from `new_timer`).
        unsafe { timer_handle::fields(timer.as_ptr()) }.set_key(Some(key));
    }

    /// # Safety
    /// `object` is a new, zeroed instance of `Handle` or a subclass.
    unsafe fn init_handle(
        &self,
        object: *mut ffi::PyObject,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        loop_: &Bound<'_, PyAny>,
        context: Bound<'_, PyAny>,
    ) {
        // SAFETY: by this function's contract.
        unsafe {
            self.init_unlooped(object, callback, args, context);
            self.loop_.init(object, new_ref(loop_.as_ptr()));
        }
    }

    /// `init_handle` but for the `_loop` slot, left null.
    ///
    /// # Safety
    /// As `init_handle`.
    unsafe fn init_unlooped(
        &self,
        object: *mut ffi::PyObject,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Bound<'_, PyAny>,
    ) {
        // SAFETY: by this function's contract; every value is a new strong
        // reference.
        unsafe {
            self.context.init(object, context.into_ptr());
            self.callback.init(object, new_ref(callback.as_ptr()));
            self.args.init(object, new_ref(args.as_ptr()));
            self.cancelled.init(object, new_ref(ffi::Py_False()));
            self.repr.init(object, new_ref(ffi::Py_None()));
            self.source_traceback.init(object, new_ref(ffi::Py_None()));
        }
    }

    /// Can the handles made here leave the cyclic GC?
    pub fn untrackable(&self) -> bool {
        self.untrackable
    }

    /// Takes a handle made here out of the cyclic GC (LESSONS 27: a GC that
    /// walks every pending handle dominates callback-heavy loops). Only
    /// while its loop runs (a running loop is on its thread's stack, never
    /// garbage) and holds the handle, decided when the runner queues it:
    /// the runner tracks it again when it leaves the loop while someone else
    /// holds it, and all of them when the loop stops running. Runs no Python.
    ///
    /// Its context leaves with it when the handle is its only holder (a
    /// copy of the current context) or, for our timer class, it is a
    /// snapshot shared by timers (see `context_snapshot`; no code runs in
    /// one or sees it): otherwise each pending handle still puts one object
    /// under the GC, which then walks a million of them when a million
    /// timers are pending, or a million `call_soon` callbacks queued (half
    /// the time of each such `call_soon`: the collections that the
    /// allocations set off walk every context still queued, over and over
    /// as the queue grows). A context must be tracked when
    /// it is freed (its deallocation unlinks it from the GC's lists
    /// unconditionally, which crashes on one in none), so an untracked
    /// context holds one reference of its own, taken here and dropped by
    /// whoever tracks it again (`track_if_context`): with the handle
    /// (`track`), before the handle is freed (`track_context`), or when its
    /// `_context` attribute replaces it (see `timer_handle`). A slot written
    /// past that attribute (asyncio's own member descriptor) leaves the
    /// context alive and untracked for good: a leak, never a crash.
    ///
    /// A plain `Handle`'s `_context` is asyncio's slot, which any code may
    /// write: its context is returned, for the queue to keep beside the
    /// handle and track again by that reference (`Held`).
    pub fn untrack(&self, object: &Bound<'_, PyAny>) -> Option<Py<PyAny>> {
        if !self.untrackable || !self.is_stock(object) {
            return None;
        }
        // SAFETY: a live instance of one of our classes, a GC type (checked
        // in `new`); a no-op for an untracked object. The context slot
        // belongs to these classes; a context is a GC type.
        unsafe {
            let raw = object.as_ptr();
            ffi::PyObject_GC_UnTrack(raw.cast());
            let ty = ffi::Py_TYPE(raw) as *mut ffi::PyObject;
            let (plain, ours_timer) = (ty == self.handle.as_ptr(), ty == self.timer.as_ptr());
            let context = self.context.get(raw);
            if (plain || ours_timer)
                && !context.is_null()
                && ffi::PyContext_CheckExact(context) != 0
                && ffi::PyObject_GC_IsTracked(context) != 0
                && (ffi::Py_REFCNT(context) == 1
                    || ours_timer && timer_handle::fields(raw).shares_context())
            {
                ffi::PyObject_GC_UnTrack(context.cast());
                ffi::Py_INCREF(context);
                if plain {
                    return Some(Bound::from_borrowed_ptr(object.py(), context).unbind());
                }
            }
        }
        None
    }

    /// Puts a handle the runner took out of the GC back under it, if it is
    /// not. Its class may have been reassigned since (`__class__ = ...`
    /// keeps the layout): any GC type will do; others are left alone.
    /// Its context too, if `untrack` took it out.
    pub fn track(&self, object: &Bound<'_, PyAny>) {
        // SAFETY: a live object, under the GIL.
        unsafe { track_gc_object(object.as_ptr()) };
        self.track_context(object);
    }

    /// Puts the context of a handle back under the GC if `untrack` took it
    /// out. Comes before the handle's last reference goes, so that the
    /// context's own reference is dropped, not leaked.
    pub fn track_context(&self, handle: &Bound<'_, PyAny>) {
        if self.is_stock(handle) || self.is_handle(handle) {
            // SAFETY: every `Handle` has the context slot; the value is a
            // borrowed reference of a live handle, under the GIL.
            unsafe { track_if_context(self.context.get(handle.as_ptr())) };
        }
    }

    /// Lets go of a handle the loop held last: an `asyncio.Handle` (exactly)
    /// whose last reference this is and whose class has no finalizer is
    /// freed here as CPython's deallocation would free it (`PlainFree`),
    /// any other is dropped. Its slots' values are released as ever, so
    /// this may run Python code (their finalizers): no borrow held.
    pub fn dispose(&self, handle: Bound<'_, PyAny>) {
        if let Some(layout) = &self.plain_free {
            let raw = handle.as_ptr();
            // SAFETY: reading the type, reference count and slots of a
            // live object, under the GIL (a `Bound`).
            let ours = unsafe {
                let ty = ffi::Py_TYPE(raw);
                ty as *mut ffi::PyObject == self.handle.as_ptr()
                    && ffi::Py_REFCNT(raw) == 1
                    && (*ty).tp_finalize.is_none()
                    && (*ty).tp_del.is_none()
            };
            if ours {
                // SAFETY: exactly `asyncio.Handle` (the class `PlainFree`
                // accepted), without finalizers, whose only reference is
                // `handle`'s, given away here.
                unsafe { layout.free(handle.into_ptr()) };
                return;
            }
        }
        drop(handle);
    }

    /// Is `object` exactly a C `asyncio.Future` (no subclass)?
    pub fn is_c_future(&self, object: &Bound<'_, PyAny>) -> bool {
        object.get_type().is(self.c_future.bind(object.py()))
    }

    /// Is `callback` the callback of `asyncio.sleep`'s timers?
    pub fn is_sleep_callback(&self, callback: &Bound<'_, PyAny>) -> bool {
        self.sleep_callback
            .as_ref()
            .is_some_and(|sleep| callback.is(sleep.bind(callback.py())))
    }

    /// Is `Handle._run` still asyncio's (not patched by a profiler)?
    pub fn stock_run_intact(&self, py: Python<'_>) -> bool {
        if !self.stock_run_pristine {
            return false;
        }
        let handle = self.handle.bind(py);
        let tag = version_tag(handle);
        if tag != 0 && tag == self.stock_run_tag.load(Ordering::Relaxed) {
            return true;
        }
        let intact = handle
            .getattr(pyo3::intern!(py, "_run"))
            .is_ok_and(|run| run.is(self.stock_run.bind(py)));
        if intact {
            // Read after the look-up, which gives the type a tag if it had none.
            self.stock_run_tag
                .store(version_tag(handle), Ordering::Relaxed);
        }
        intact
    }

    /// Is `object` an `asyncio.Handle` (a subclass's included)? Its real
    /// type is checked, as in `is_timer`.
    fn is_handle(&self, object: &Bound<'_, PyAny>) -> bool {
        // SAFETY: type pointers of live objects.
        unsafe {
            ffi::PyType_IsSubtype(
                ffi::Py_TYPE(object.as_ptr()),
                self.handle.as_ptr() as *mut ffi::PyTypeObject,
            ) != 0
        }
    }

    /// Is `object` one of our timer handles? Its real type is checked
    /// (not `isinstance`, which a `__class__` property can fool): the slot
    /// offsets hold only for our class and its subclasses.
    pub fn is_timer(&self, object: &Bound<'_, PyAny>) -> bool {
        // SAFETY: type pointers of live objects.
        unsafe {
            ffi::PyType_IsSubtype(
                ffi::Py_TYPE(object.as_ptr()),
                self.timer.as_ptr() as *mut ffi::PyTypeObject,
            ) != 0
        }
    }

    /// The wheel key of a scheduled timer handle of ours, marking it no
    /// longer scheduled; None if it is not scheduled (fired, cancelled).
    pub fn unschedule(&self, timer: &Bound<'_, PyAny>) -> Option<u64> {
        if !self.is_timer(timer) {
            return None;
        }
        let raw = timer.as_ptr();
        // SAFETY: `timer` is an instance of our timer class; slot values are
        // borrowed only while `timer` is alive and the GIL held.
        unsafe {
            if self.scheduled.get(raw) != ffi::Py_True() {
                return None;
            }
            self.scheduled.set(raw, new_ref(ffi::Py_False()));
            timer_handle::fields(raw).key()
        }
    }

    /// A timer handle's `when`, for ordering timers whose deadlines fall in
    /// the same nanosecond; `-inf` for other objects.
    pub fn float_when(&self, timer: &Bound<'_, PyAny>) -> f64 {
        if !self.is_timer(timer) {
            return f64::NEG_INFINITY;
        }
        // SAFETY: an instance of our timer class.
        unsafe { timer_handle::fields(timer.as_ptr()) }.when
    }

    /// Marks a fired timer handle of ours as no longer scheduled.
    pub fn mark_fired(&self, timer: &Bound<'_, PyAny>) {
        if self.is_timer(timer) {
            // SAFETY: an instance of our timer class.
            unsafe { self.scheduled.set(timer.as_ptr(), new_ref(ffi::Py_False())) };
        }
    }

    /// `handle._cancelled`, read from the slot for our classes.
    pub fn is_cancelled(&self, handle: &Bound<'_, PyAny>) -> PyResult<bool> {
        if self.is_stock(handle) {
            // SAFETY: `handle` is exactly a class the slot was found on.
            let cancelled = unsafe { self.cancelled.get(handle.as_ptr()) };
            // SAFETY: as above; the GIL is held.
            unsafe {
                if cancelled == ffi::Py_True() {
                    return Ok(true);
                }
                if cancelled == ffi::Py_False() {
                    return Ok(false);
                }
            }
        }
        handle
            .getattr(pyo3::intern!(handle.py(), "_cancelled"))?
            .is_truthy()
    }

    /// Is this one of our handles, cancelled? (False when unsure: a class
    /// of someone else's, a flag that is not a bool; running it decides.)
    pub fn surely_cancelled(&self, handle: &Bound<'_, PyAny>) -> bool {
        // SAFETY: `handle` is exactly a class the slot was found on.
        self.is_stock(handle)
            && unsafe { self.cancelled.get(handle.as_ptr()) } == unsafe { ffi::Py_True() }
    }

    /// `handle._loop`, read from the slot for our classes.
    pub fn loop_of<'py>(&self, handle: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if self.is_stock(handle) {
            // SAFETY: `handle` is exactly a class the slot was found on; the
            // value is borrowed while `handle` holds it, under the GIL.
            let loop_ = unsafe { self.loop_.get(handle.as_ptr()) };
            if !loop_.is_null() {
                // SAFETY: a live object (see above).
                return Ok(unsafe { Bound::from_borrowed_ptr(handle.py(), loop_) });
            }
        }
        handle.getattr(pyo3::intern!(handle.py(), "_loop"))
    }

    /// `handle._cancelled = True`.
    pub fn set_cancelled(&self, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.is_stock(handle) {
            // SAFETY: `handle` is exactly a class the slot was found on; the
            // value is a new strong reference.
            unsafe { self.cancelled.set(handle.as_ptr(), new_ref(ffi::Py_True())) };
            return Ok(());
        }
        handle.setattr(pyo3::intern!(handle.py(), "_cancelled"), true)
    }

    /// `handle._callback = None; handle._args = None`: what a cancel drops
    /// (they may hold large objects).
    pub fn drop_callback(&self, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.is_stock(handle) {
            // SAFETY: as in `set_cancelled`.
            unsafe {
                self.callback.set(handle.as_ptr(), new_ref(ffi::Py_None()));
                self.args.set(handle.as_ptr(), new_ref(ffi::Py_None()));
            }
            return Ok(());
        }
        let py = handle.py();
        handle.setattr(pyo3::intern!(py, "_callback"), py.None())?;
        handle.setattr(pyo3::intern!(py, "_args"), py.None())
    }

    /// Is `handle` exactly one of the classes whose `_run` is asyncio's?
    /// `asyncio.events.Handle`.
    pub fn handle_class<'py>(&self, py: Python<'py>) -> &Bound<'py, PyType> {
        self.handle.bind(py)
    }

    fn is_stock(&self, handle: &Bound<'_, PyAny>) -> bool {
        // SAFETY: reading the type pointer of a live object.
        let ty = unsafe { ffi::Py_TYPE(handle.as_ptr()) } as *mut ffi::PyObject;
        ty == self.handle.as_ptr() || ty == self.timer.as_ptr() || ty == self.stock_timer.as_ptr()
    }

    /// Runs a handle as `Handle._run` does, for the classes whose `_run` is
    /// asyncio's while `stock_run` (see `stock_run_intact`); others (and
    /// half-built ones) run their own `_run`. `bare_sleeps` gives the loop
    /// while its `call_soon` is the runner's, so that resolving an
    /// `asyncio.sleep` future of that loop runs no Python code and needs no
    /// context (see `resolve_bare_sleep`); asked only of such a timer.
    pub fn run(
        &self,
        handle: &Bound<'_, PyAny>,
        stock_run: bool,
        bare_sleeps: impl FnOnce() -> Option<Py<PyAny>>,
    ) -> PyResult<Ran> {
        let py = handle.py();
        let raw = handle.as_ptr();
        if !stock_run || !self.is_stock(handle) {
            return self.run_in_python(handle);
        }
        if self.is_cancelled(handle)? {
            return Ok(Ran::Cancelled);
        }
        // Only handles of exactly our timer class share contexts (`new_timer`
        // makes them; others go through `_context`, which does the same).
        // SAFETY: reading the type of a live object.
        let exact_timer = unsafe { ffi::Py_TYPE(raw) } as *mut ffi::PyObject == self.timer.as_ptr();
        // SAFETY: an instance of our timer class, under the GIL.
        if exact_timer && unsafe { timer_handle::fields(raw).shares_context() } {
            if let Some(loop_) = bare_sleeps() {
                // SAFETY: as above.
                if let Some(outcome) = unsafe { self.resolve_bare_sleep(raw, loop_.bind(py)) } {
                    return Self::ran(py, outcome);
                }
            }
        }
        // SAFETY: an instance of our timer class, under the GIL.
        if exact_timer {
            if let Err(error) = unsafe { timer_handle::own_context(raw) } {
                return Ok(Ran::Failed(error));
            }
        }
        // SAFETY: `handle` is exactly one of the classes the slots were
        // found on. The values are borrowed, then owned (`from_borrowed_ptr`)
        // before any Python code runs, as the callback may clear the slots.
        let (context, callback, args) = unsafe {
            (
                NonNull::new(self.context.get(raw)),
                NonNull::new(self.callback.get(raw)),
                NonNull::new(self.args.get(raw)),
            )
        };
        let (Some(context), Some(callback), Some(args)) = (context, callback, args) else {
            return self.run_in_python(handle);
        };
        // SAFETY: live borrowed references, see above.
        let (context, callback, args) = unsafe {
            (
                Bound::from_borrowed_ptr(py, context.as_ptr()),
                Bound::from_borrowed_ptr(py, callback.as_ptr()),
                Bound::from_borrowed_ptr(py, args.as_ptr()),
            )
        };
        self.run_in_context(&context, &callback, CallArgs::Tuple(&args))
            .unwrap_or_else(|| self.run_in_python(handle))
    }

    /// `callback(*args)` in `context`, as `Handle._run` calls it; None if
    /// `args` is not a tuple or `context` not a `Context` (the caller then
    /// runs asyncio's own code).
    pub fn run_in_context(
        &self,
        context: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: CallArgs<'_, '_>,
    ) -> Option<PyResult<Ran>> {
        let py = callback.py();
        // SAFETY: type checks on live objects.
        let plain = unsafe {
            ffi::Py_TYPE(context.as_ptr()) == addr_of_mut!(ffi::PyContext_Type)
                && match args {
                    CallArgs::Tuple(args) => ffi::PyTuple_Check(args.as_ptr()) != 0,
                    CallArgs::One(_) | CallArgs::Nothing => true,
                }
        };
        if !plain {
            return None;
        }
        // SAFETY: `context` is a Context, `args` a tuple; both owned by the
        // caller while this runs.
        let result = unsafe {
            if ffi::PyContext_Enter(context.as_ptr()) != 0 {
                Err(PyErr::fetch(py))
            } else {
                let sleep = match args {
                    CallArgs::Tuple(args) => self.resolve_sleep(callback, args, None),
                    CallArgs::One(_) | CallArgs::Nothing => None,
                };
                let outcome = sleep.unwrap_or_else(|| {
                    // A C Task's step or wake-up: its own next step, which
                    // it schedules meanwhile, goes without a handle.
                    let _stepping = Stepping::run(callback.as_ptr());
                    let result = match args {
                        // An exact tuple's items are passed as they are,
                        // as `PyObject_Call` passes them to a vectorcall
                        // callable, without its unpacking.
                        CallArgs::Tuple(args) if ffi::PyTuple_CheckExact(args.as_ptr()) != 0 => {
                            let tuple = args.as_ptr() as *mut ffi::PyTupleObject;
                            ffi::PyObject_Vectorcall(
                                callback.as_ptr(),
                                (*tuple).ob_item.as_ptr(),
                                ffi::PyTuple_GET_SIZE(args.as_ptr()) as usize,
                                std::ptr::null_mut(),
                            )
                        }
                        CallArgs::Tuple(args) => ffi::PyObject_Call(
                            callback.as_ptr(),
                            args.as_ptr(),
                            std::ptr::null_mut(),
                        ),
                        CallArgs::One(arg) => {
                            ffi::PyObject_CallOneArg(callback.as_ptr(), arg.as_ptr())
                        }
                        CallArgs::Nothing => ffi::PyObject_CallNoArgs(callback.as_ptr()),
                    };
                    if result.is_null() {
                        Err(PyErr::fetch(py))
                    } else {
                        ffi::Py_DECREF(result);
                        Ok(())
                    }
                });
                if ffi::PyContext_Exit(context.as_ptr()) != 0 {
                    let exit_error = PyErr::fetch(py);
                    match outcome {
                        Ok(()) => Err(exit_error),
                        // The callback's error is the one reported; this one
                        // must not stay set behind it.
                        Err(error) => {
                            exit_error.write_unraisable(py, None);
                            Err(error)
                        }
                    }
                } else {
                    outcome
                }
            }
        };
        Some(Self::ran(py, result))
    }

    /// What running a callback with `outcome` was: done, failed (reported
    /// by the loop), or an exit that stops the loop.
    fn ran(py: Python<'_>, outcome: PyResult<()>) -> PyResult<Ran> {
        match outcome {
            Ok(()) => Ok(Ran::Done),
            Err(error)
                if error.is_instance_of::<PySystemExit>(py)
                    || error.is_instance_of::<PyKeyboardInterrupt>(py) =>
            {
                Err(error)
            }
            Err(error) => Ok(Ran::Failed(error)),
        }
    }

    /// An `asyncio.sleep` timer sharing a context snapshot, resolved
    /// (`resolve_sleep`) without a context of its own: nothing runs in it.
    /// The future is a C `Future` of `loop_`, whose `set_result` only calls
    /// that loop's `call_soon` (the runner's, by the caller's word: no
    /// Python code) with
    /// each callback's own context. A timer made by `call_later` for
    /// `asyncio.sleep` then never copies a context: the snapshot made for
    /// its Task's step is shared with the other sleeps of that step's
    /// context. None: not such a call.
    ///
    /// # Safety
    /// `raw` is a live instance of our timer class; the GIL is held.
    unsafe fn resolve_bare_sleep(
        &self,
        raw: *mut ffi::PyObject,
        loop_: &Bound<'_, PyAny>,
    ) -> Option<PyResult<()>> {
        let py = loop_.py();
        // SAFETY: by the contract; the values are owned before any Python
        // code runs (`set_result` may lead to the slots being cleared).
        let (callback, args) = unsafe {
            (
                Bound::from_borrowed_ptr_or_opt(py, self.callback.get(raw))?,
                Bound::from_borrowed_ptr_or_opt(py, self.args.get(raw))?,
            )
        };
        // A future of another loop calls that loop's `call_soon`.
        self.resolve_sleep(&callback, &args, Some(loop_))
    }

    /// `_set_result_unless_cancelled(future, result)` (an `asyncio.sleep`
    /// timer) for a C `Future`, without its Python frame: `if not
    /// future.cancelled(): future.set_result(result)`, in the handle's
    /// context (entered by the caller: the future's loop may be a subclass
    /// whose `call_soon` reads context variables). With `of_loop`, only a
    /// future of that loop. None: not that call, run it as any other.
    fn resolve_sleep<'py>(
        &self,
        callback: &Bound<'py, PyAny>,
        args: &Bound<'py, PyAny>,
        of_loop: Option<&Bound<'py, PyAny>>,
    ) -> Option<PyResult<()>> {
        let py = callback.py();
        if !self.is_sleep_callback(callback) {
            return None;
        }
        let args = args.cast::<PyTuple>().ok()?;
        if args.len() != 2 {
            return None;
        }
        let future = args.get_item(0).ok()?;
        if !future.get_type().is(self.c_future.bind(py)) {
            return None;
        }
        // As `future.name(*args)`, without the look-up when it finds the
        // type's method anyway.
        let methods = &self.future_methods;
        let direct = no_instance_attributes(&future);
        let call =
            |name: &Bound<'py, PyString>, method: &Py<PyAny>, arg: Option<&Bound<'py, PyAny>>| {
                call_future(&future, direct.then_some(method), name, arg)
            };
        if let Some(loop_) = of_loop {
            let own_loop = call(pyo3::intern!(py, "get_loop"), &methods.get_loop, None).ok()?;
            if !own_loop.is(loop_) {
                return None;
            }
        }
        let result = args.get_item(1).ok()?;
        Some(
            call(pyo3::intern!(py, "cancelled"), &methods.cancelled, None)
                .and_then(|cancelled| cancelled.is_truthy())
                .and_then(|cancelled| {
                    if cancelled {
                        Ok(())
                    } else {
                        // Its loop's `call_soon` is the runner's (`of_loop`):
                        // the wake-ups it schedules need no handles.
                        let _bare = of_loop.map(|_| BareCalls::for_future(&future));
                        call(
                            pyo3::intern!(py, "set_result"),
                            &methods.set_result,
                            Some(&result),
                        )
                        .map(drop)
                    }
                }),
        )
    }

    fn run_in_python(&self, handle: &Bound<'_, PyAny>) -> PyResult<Ran> {
        if handle
            .getattr(pyo3::intern!(handle.py(), "_cancelled"))?
            .is_truthy()?
        {
            return Ok(Ran::Cancelled);
        }
        handle.call_method0(pyo3::intern!(handle.py(), "_run"))?;
        Ok(Ran::Done)
    }
}

/// What a callback is called with: a tuple of arguments (a handle's), one
/// argument (a future's callback queued without its handle), or none (a
/// Task's step queued so).
#[derive(Clone, Copy)]
pub enum CallArgs<'a, 'py> {
    Tuple(&'a Bound<'py, PyAny>),
    One(&'a Bound<'py, PyAny>),
    Nothing,
}

thread_local! {
    /// The future the runner is resolving on this thread, if its callbacks
    /// may be queued without handles (`BareCalls`).
    static BARE_CALLS_FOR: Cell<*mut ffi::PyObject> = const { Cell::new(std::ptr::null_mut()) };
}

/// While alive, a `call_soon(callback, future, context=...)` of the runner
/// whose one argument is `future` (what a C `Future` does for each of its
/// callbacks when it completes, dropping the handle it gets) is queued
/// without a `Handle` (`held::BareCall`) and returns None. Any other call
/// (a finalizer run meanwhile, say) gets its handle as ever.
pub(crate) struct BareCalls {
    previous: *mut ffi::PyObject,
}

impl BareCalls {
    pub(crate) fn for_future(future: &Bound<'_, PyAny>) -> BareCalls {
        BareCalls {
            previous: BARE_CALLS_FOR.replace(future.as_ptr()),
        }
    }

    /// Is `call_soon(callback, *args)` with these `args` one to queue
    /// without a handle?
    pub(crate) fn cover(args: &[*mut ffi::PyObject]) -> bool {
        let future = BARE_CALLS_FOR.get();
        !future.is_null() && args.len() == 1 && args[0] == future
    }
}

impl Drop for BareCalls {
    fn drop(&mut self) {
        BARE_CALLS_FOR.set(self.previous);
    }
}

/// Whether `function` is the `name` function or method as asyncio's
/// `events.py` defines it (by where its code comes from: a wrapper
/// installed by a tracer has code of its own, even with `functools.wraps`).
pub fn defined_by_asyncio(function: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    defined_in(function, "asyncio.events", name)
}

/// `defined_by_asyncio` for any module of asyncio's.
fn defined_in(function: &Bound<'_, PyAny>, module: &str, name: &str) -> PyResult<bool> {
    let py = function.py();
    let file = py.import(module)?.getattr("__file__")?;
    let Ok(code) = function.getattr("__code__") else {
        return Ok(false);
    };
    Ok(code.getattr("co_filename")?.eq(&file)? && code.getattr("co_name")?.eq(name)?)
}

/// Can instances of `ty` leave the GC safely? Only GC types without
/// finalizers, whose deallocation never re-tracks them.
fn untrackable(ty: &Bound<'_, PyType>) -> bool {
    let raw = ty.as_type_ptr();
    // SAFETY: reading the flags and slots of a live type object.
    unsafe {
        ffi::PyType_IS_GC(raw) != 0 && (*raw).tp_finalize.is_none() && (*raw).tp_del.is_none()
    }
}

/// The handle's context: the one given, or a copy of the current one.
fn context_or_copy<'py>(
    py: Python<'py>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match context {
        Some(context) if !context.is_none() => Ok(context.clone()),
        _ => copy_current(py),
    }
}

/// Puts `object` under the GC if its type is a GC type and it is not.
///
/// # Safety
/// `object` is a live object and the GIL is held.
unsafe fn track_gc_object(object: *mut ffi::PyObject) {
    // Tracking twice is a fatal error, hence the checks.
    if ffi::PyType_IS_GC(ffi::Py_TYPE(object)) != 0 && ffi::PyObject_GC_IsTracked(object) == 0 {
        ffi::PyObject_GC_Track(object.cast());
    }
}

/// Puts `object` (null, or any live object) under the GC if it is a
/// context that `HandleKinds::untrack` took out, and drops the reference
/// that `untrack` took for it. Only `untrack` takes contexts out of the GC,
/// so an untracked context is always one of those.
///
/// # Safety
/// The GIL is held; `object` is null or a live object, and if it is an
/// untracked context, the caller holds another reference to it (the slot
/// it was read from), or none is needed any more.
pub(crate) unsafe fn track_if_context(object: *mut ffi::PyObject) {
    if !object.is_null()
        && ffi::PyContext_CheckExact(object) != 0
        && ffi::PyObject_GC_IsTracked(object) == 0
    {
        ffi::PyObject_GC_Track(object.cast());
        ffi::Py_DECREF(object);
    }
}

/// A zeroed instance of `ty` (its `__init__` not run).
fn allocate<'py>(ty: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    let raw = ty.as_type_ptr();
    // SAFETY: `raw` is a live type; tp_alloc returns a new reference with
    // all slots null, or null with an exception set.
    unsafe {
        let alloc = (*raw).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(ty.py(), alloc(raw, 0))
    }
}

/// A new strong reference to `object`.
///
/// # Safety
/// `object` is a live object and the GIL is held.
unsafe fn new_ref(object: *mut ffi::PyObject) -> *mut ffi::PyObject {
    ffi::Py_INCREF(object);
    object
}

/// `cls`'s valid type version tag, 0 if it has none.
fn version_tag(cls: &Bound<'_, PyType>) -> u32 {
    // SAFETY: reading two fields of a live type object, with the GIL held.
    unsafe {
        let raw = cls.as_type_ptr();
        if (*raw).tp_flags & ffi::Py_TPFLAGS_VALID_VERSION_TAG != 0 {
            (*raw).tp_version_tag
        } else {
            0
        }
    }
}
