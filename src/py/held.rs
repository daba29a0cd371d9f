//! What a loop holds for Python: a handle in its custody ([`Held`]), and
//! what a timer in the wheel stands for ([`Item`]).
//!
//! A timer's item lives in the wheel itself, as the wheel's `u64` payload:
//! the address of the object whose strong reference the wheel now owns, with
//! the item's kind and `ours` flag in the two low bits (free: Python objects
//! are at least 8-byte aligned). No map from keys to objects is kept beside
//! the wheel: that map cost a hash insert and remove per timer and ~40 bytes
//! per pending one. The ids never leave Rust: Python sees keys, never ids,
//! and the NIF refuses the timer calls of a Python loop's core.

use std::mem::ManuallyDrop;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::handles::track_if_context;
use super::runner::kinds;

/// A handle in the loop's custody; `ours` if the runner made it, which
/// means it is out of the cyclic GC while the loop holds it.
pub(crate) struct Held {
    pub(crate) handle: Py<PyAny>,
    pub(crate) ours: bool,
    /// The context that left the GC with a handle of the ready queue (see
    /// `HandleKinds::untrack`), put back under it by this reference even if
    /// the handle's `_context` (asyncio's plain slot) was replaced since:
    /// never left out, and alive, for good.
    pub(crate) untracked_context: Option<Py<PyAny>>,
}

impl Held {
    /// A handle the loop takes into its custody, under the GC for now.
    pub(crate) fn new(handle: Py<PyAny>, ours: bool) -> Held {
        Held {
            handle,
            ours,
            untracked_context: None,
        }
    }

    /// The handle leaves the loop: tracked again if anyone else holds it.
    pub(crate) fn release(self, py: Python<'_>) {
        self.track_own_context();
        let handle = self.handle.into_bound(py);
        if self.ours {
            // SAFETY: reading the reference count of a live object.
            if unsafe { ffi::Py_REFCNT(handle.as_ptr()) } > 1 {
                kinds().track(&handle);
            } else {
                kinds().track_context(&handle);
            }
        }
        kinds().dispose(handle);
    }

    /// Back under the GC (the loop stopped running, or the handle goes to
    /// Python code); with its context, if it left the GC with the handle.
    pub(crate) fn track(&self, py: Python<'_>) {
        if self.ours {
            kinds().track(self.handle.bind(py));
        }
        self.track_own_context();
    }

    /// Puts the context that left the GC with the handle back under it,
    /// if nothing did since (the GIL is held: a `Held` is only touched so).
    fn track_own_context(&self) {
        if let Some(context) = &self.untracked_context {
            // SAFETY: a live object (held here), under the GIL.
            unsafe { track_if_context(context.as_ptr()) };
        }
    }

    /// What the runner's `__traverse__` reports for this handle: the handle
    /// if the GC tracks it. An untracked one (only while the loop runs) is
    /// left out: what it holds then looks referenced from outside, which
    /// keeps it alive and never clears it early; the loop, on its thread's
    /// stack, is not garbage anyway.
    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: live objects; traverse runs with the GIL held.
        if !self.ours || unsafe { ffi::PyObject_GC_IsTracked(self.handle.as_ptr()) } != 0 {
            visit.call(&self.handle)?;
        }
        if let Some(context) = &self.untracked_context {
            // SAFETY: as above.
            if unsafe { ffi::PyObject_GC_IsTracked(context.as_ptr()) } != 0 {
                visit.call(context)?;
            }
        }
        Ok(())
    }
}

/// What a timer of the wheel stands for, and an entry of the ready queue.
pub(crate) enum Item {
    /// A timer handle: made ready when it fires.
    Handle(Held),
    /// An `erlang_asyncio.sleep` future: made ready when it fires, and
    /// resolved when its turn in the ready queue comes (as asyncio's
    /// `sleep` resolves its future from a ready handle).
    Future(Py<PyAny>),
    /// A callback a future scheduled while the runner resolved it, or a C
    /// Task's next step: queued without its `Handle` (see `BareCall`).
    /// Never a timer.
    Call(BareCall),
}

/// `callback(*args)` to run in `context`, as a `Handle` would run it, with
/// no `Handle` made: the C `Future` the runner resolves (a sleep's) and a C
/// `Task` scheduling its next step drop the handle their `call_soon`
/// returns, and each handle is an allocation the cyclic GC counts (a round
/// of 10k wake-ups: 10k of them, about 14 young collections) and a
/// deallocation. One is made if Python asks for it (`_ready`, an error
/// report, a patched `Handle._run`).
pub(crate) struct BareCall {
    pub(crate) callback: Py<PyAny>,
    /// Its one argument (the future), if any: no tuple made for it either.
    pub(crate) arg: Option<Py<PyAny>>,
    pub(crate) context: Py<PyAny>,
}

/// Tag bit of a future's id.
const FUTURE: u64 = 1;
/// Tag bit of a handle the runner took out of the GC (`Held::ours`).
const OURS: u64 = 2;
const TAGS: u64 = FUTURE | OURS;

impl Item {
    pub(crate) fn release(self, py: Python<'_>) {
        if let Item::Handle(held) = self {
            held.release(py);
        }
    }

    /// Back under the GC (the loop stopped running): see [`Held::track`].
    pub(crate) fn track(&self, py: Python<'_>) {
        if let Item::Handle(held) = self {
            held.track(py);
        }
    }

    /// What the runner's `__traverse__` reports for this item.
    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Item::Handle(held) => held.visit(visit),
            Item::Future(future) => visit.call(future),
            Item::Call(call) => {
                visit.call(&call.callback)?;
                if let Some(arg) = &call.arg {
                    visit.call(arg)?;
                }
                visit.call(&call.context)
            }
        }
    }

    /// The wheel payload standing for this item; its reference moves into
    /// the id, to be taken back exactly once by [`Item::from_id`].
    pub(crate) fn into_id(self) -> u64 {
        let (object, tags) = match self {
            Item::Handle(held) => {
                // Only ready-queue handles take their context out with them.
                debug_assert!(
                    held.untracked_context.is_none(),
                    "a timer's context left the GC"
                );
                (held.handle, if held.ours { OURS } else { 0 })
            }
            Item::Future(future) => (future, FUTURE),
            Item::Call(_) => unreachable!("a bare call is never a timer"),
        };
        let address = object.into_ptr() as u64;
        assert_eq!(address & TAGS, 0, "a Python object at an odd address");
        address | tags
    }

    /// The item an id stands for, its reference taken back.
    ///
    /// # Safety
    /// `id` came from [`Item::into_id`] and has not been taken back since:
    /// each id is taken out of the wheel (fired, cancelled or drained)
    /// exactly once.
    pub(crate) unsafe fn from_id(py: Python<'_>, id: u64) -> Item {
        // SAFETY: by the contract, the address of an object whose strong
        // reference the id owned.
        let object = unsafe { Bound::from_owned_ptr(py, object_of(id)) }.unbind();
        if id & FUTURE != 0 {
            Item::Future(object)
        } else {
            Item::Handle(Held::new(object, id & OURS != 0))
        }
    }

    /// The timer handle a live id stands for (`None` for a future).
    ///
    /// # Safety
    /// `id` is live (in the wheel or queued as fired): its object is alive.
    pub(crate) unsafe fn handle_of_id(py: Python<'_>, id: u64) -> Option<Bound<'_, PyAny>> {
        // SAFETY: by the contract, a live object; a new reference is made.
        (id & FUTURE == 0).then(|| unsafe { Bound::from_borrowed_ptr(py, object_of(id)) })
    }

    /// Does `id` stand for the timer handle `handle`?
    pub(crate) fn is_handle(id: u64, handle: &Bound<'_, PyAny>) -> bool {
        id & FUTURE == 0 && object_of(id) == handle.as_ptr()
    }

    /// Reports a live id's object to the GC as [`Held::visit`] would.
    ///
    /// # Safety
    /// `id` is live (in the wheel or queued as fired): its object is alive.
    pub(crate) unsafe fn visit_id(id: u64, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let object = object_of(id);
        // SAFETY: a live object (the id owns a reference); the GIL is held.
        let skip = id & OURS != 0 && unsafe { ffi::PyObject_GC_IsTracked(object) } == 0;
        if skip {
            return Ok(());
        }
        // SAFETY: as above. `ManuallyDrop`: the id keeps its reference, and
        // traverse must not touch reference counts.
        let object =
            ManuallyDrop::new(unsafe { Bound::from_owned_ptr(visit_py(), object) }.unbind());
        visit.call(&*object)
    }

    /// Puts a live id's handle back under the GC (`Held::track`).
    ///
    /// # Safety
    /// As [`Item::visit_id`].
    pub(crate) unsafe fn track_id(py: Python<'_>, id: u64) {
        if id & OURS != 0 {
            // SAFETY: a live object, borrowed while the GIL is held.
            kinds().track(unsafe { &Bound::from_borrowed_ptr(py, object_of(id)) });
        }
    }

    /// Is a live id a future's?
    pub(crate) fn is_future(id: u64) -> bool {
        id & FUTURE != 0
    }
}

fn object_of(id: u64) -> *mut ffi::PyObject {
    (id & !TAGS) as *mut ffi::PyObject
}

/// The GIL token inside `__traverse__`, where pyo3 gives none: traverse runs
/// with the GIL held by the collecting thread.
fn visit_py() -> Python<'static> {
    // SAFETY: only called from `visit_id`, i.e. from a `__traverse__`,
    // which the GC calls with the GIL held.
    unsafe { Python::assume_attached() }
}
