//! Native methods for Python classes we subclass from asyncio.
//!
//! A method descriptor (`PyDescr_NewMethod`) set on a class is called like a
//! method written in C: no bound method is made per call, and the
//! descriptor itself checks that `self` is an instance of the class.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::addr_of_mut;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

/// The parts of a builtin method (what reading a method of a C type from
/// an instance gives): its method definition and the object it is bound
/// to. None for any other object.
///
/// # Safety
/// `callable` is a live object, with the GIL held; the parts are valid
/// while it lives.
#[inline]
pub unsafe fn builtin_method_parts(
    callable: *mut ffi::PyObject,
) -> Option<(*mut ffi::PyMethodDef, *mut ffi::PyObject)> {
    // SAFETY: per the contract. A builtin method's type is exactly one of
    // these two (neither can be subclassed): `PyCFunction_Check` without its
    // subtype walk, which every Python function passed here would take.
    unsafe {
        let ty = ffi::Py_TYPE(callable);
        if ty != addr_of_mut!(ffi::PyCFunction_Type) && ty != addr_of_mut!(ffi::PyCMethod_Type) {
            return None;
        }
        let method = callable.cast::<ffi::PyCFunctionObject>();
        Some(((*method).m_ml, (*method).m_self))
    }
}

/// Whether the method definition `def` (from [`builtin_method_parts`]) is
/// named `name`.
///
/// # Safety
/// `def` is null or a live method definition.
pub unsafe fn def_is_named(def: *const ffi::PyMethodDef, name: &CStr) -> bool {
    // SAFETY: per the contract; a definition's name is a C string or null.
    unsafe { !def.is_null() && !(*def).ml_name.is_null() && CStr::from_ptr((*def).ml_name) == name }
}

/// One entry of a method table, made once and never freed (the
/// descriptors made from it point at it).
pub struct MethodDef {
    def: ffi::PyMethodDef,
    name: &'static CStr,
}

// SAFETY: the entry is built before any descriptor uses it and only read
// afterwards; its pointers are to static strings and functions.
unsafe impl Sync for MethodDef {}
// SAFETY: as above.
unsafe impl Send for MethodDef {}

impl MethodDef {
    /// A method taking no arguments.
    pub const fn noargs(
        name: &'static CStr,
        doc: &'static CStr,
        function: ffi::PyCFunction,
    ) -> MethodDef {
        MethodDef::new(name, doc, function, ffi::METH_NOARGS)
    }

    /// A method taking one argument, by position or as its keyword (the
    /// body reads it with [`call_method_one_arg`]): asyncio's
    /// `write(self, data)` is called both ways.
    pub const fn one_arg_or_keyword(
        name: &'static CStr,
        doc: &'static CStr,
        function: ffi::PyCFunctionFastWithKeywords,
    ) -> MethodDef {
        MethodDef::fastcall(name, doc, function)
    }

    /// A method taking any arguments the FASTCALL|KEYWORDS way (the body
    /// reads them with [`call_method_fastcall`]).
    pub const fn fastcall(
        name: &'static CStr,
        doc: &'static CStr,
        function: ffi::PyCFunctionFastWithKeywords,
    ) -> MethodDef {
        MethodDef {
            def: ffi::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: function,
                },
                ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                ml_doc: doc.as_ptr(),
            },
            name,
        }
    }

    const fn new(
        name: &'static CStr,
        doc: &'static CStr,
        function: ffi::PyCFunction,
        flags: std::os::raw::c_int,
    ) -> MethodDef {
        MethodDef {
            def: ffi::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunction: function,
                },
                ml_flags: flags,
                ml_doc: doc.as_ptr(),
            },
            name,
        }
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.name.to_str().unwrap_or("?")
    }

    /// Whether `callable` is this method bound to `object`: what reading
    /// the method from `object` gives (a builtin method of this entry).
    pub fn is_bound_to(
        &'static self,
        callable: &Bound<'_, PyAny>,
        object: &Bound<'_, PyAny>,
    ) -> bool {
        // SAFETY: a live object, under the GIL (we hold `callable`).
        match unsafe { builtin_method_parts(callable.as_ptr()) } {
            Some((def, bound)) => std::ptr::eq(def, &self.def) && bound == object.as_ptr(),
            None => false,
        }
    }

    /// This entry as a builtin method bound to `object` (what reading a
    /// method of a C type from its instance gives).
    pub fn bind(&'static self, object: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        // SAFETY: `self` is 'static and CPython only reads it; `object` is
        // live (the function takes its own reference).
        let function = unsafe {
            ffi::PyCFunction_NewEx(
                &self.def as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
                object.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: a new reference, or null with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(object.py(), function) }.map(Bound::unbind)
    }

    /// A method descriptor of this entry for instances of `cls`.
    pub fn descriptor(&'static self, cls: &Bound<'_, PyType>) -> PyResult<Py<PyAny>> {
        // SAFETY: `cls` is a live type; `self` is 'static and CPython only
        // reads it.
        let descr = unsafe {
            ffi::PyDescr_NewMethod(
                cls.as_type_ptr(),
                &self.def as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            )
        };
        // SAFETY: a new reference, or null with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(cls.py(), descr) }.map(Bound::unbind)
    }
}

/// `{name: descriptor}` of `defs` for `cls`, which must subclass `base`
/// (the asyncio class whose methods these replace).
pub fn methods_for<'py>(
    cls: &Bound<'py, PyType>,
    base: &Bound<'py, PyType>,
    defs: &[&'static MethodDef],
) -> PyResult<Bound<'py, PyDict>> {
    // Strictly a subclass: on the base itself, falling back to the base's
    // method would call ours again.
    if cls.is(base) || !cls.is_subclass(base)? {
        return Err(PyTypeError::new_err(format!("{cls} must subclass {base}")));
    }
    let methods = PyDict::new(cls.py());
    for def in defs {
        methods.set_item(def.name(), def.descriptor(cls)?)?;
    }
    Ok(methods)
}

/// Runs the body of a native method: `slf` and `arg` as bound references,
/// errors set as the current exception, a panic turned into RuntimeError.
///
/// # Safety
/// Called by CPython for a method of ours: the thread is attached, `slf` is
/// a live reference, `arg` live or null (METH_NOARGS).
pub unsafe fn call_method(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    body: impl FnOnce(&Bound<'_, PyAny>, Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: per the contract, CPython calls methods attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: live borrowed references for the duration of the call.
    let (slf, arg) = unsafe {
        (
            Bound::from_borrowed_ptr(py, slf),
            Bound::from_borrowed_ptr_or_opt(py, arg),
        )
    };
    let result = catch_unwind(AssertUnwindSafe(|| body(&slf, arg.as_ref())))
        .unwrap_or_else(|_| Err(PyRuntimeError::new_err("a native method panicked")));
    match result {
        Ok(value) => value.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// [`call_method`] for a [`MethodDef::one_arg_or_keyword`] method: its one
/// argument taken by position or as `keyword`, else a TypeError worded as
/// CPython words it.
///
/// # Safety
/// Called by CPython for such a method of ours: attached, `slf` live,
/// `args`/`nargs`/`kwnames` as the FASTCALL|KEYWORDS convention passes them.
pub unsafe fn call_method_one_arg(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
    keyword: &str,
    body: impl FnOnce(&Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: per the contract, CPython calls methods attached.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `kwnames` is null or a live tuple of the keywords' names.
    let names = unsafe { Bound::from_borrowed_ptr_or_opt(py, kwnames) };
    let named = names
        .as_ref()
        .and_then(|names| names.cast::<PyTuple>().ok())
        .map(|names| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    // Worded as CPython words a Python method's `def method(self, keyword)`.
    let arg = match (nargs, named.as_slice()) {
        (1, []) => Ok(()),
        (0, [name]) if name == keyword => Ok(()),
        (_, names) if names.iter().any(|name| name != keyword) => {
            let name = names
                .iter()
                .find(|name| *name != keyword)
                .expect("found above");
            Err(format!(
                "{method}() got an unexpected keyword argument '{name}'"
            ))
        }
        (0, []) => Err(format!(
            "{method}() missing 1 required positional argument: '{keyword}'"
        )),
        (1, _) => Err(format!(
            "{method}() got multiple values for argument '{keyword}'"
        )),
        (given, _) => Err(format!(
            "{method}() takes 2 positional arguments but {} were given",
            given + 1
        )),
    }
    .map_err(PyTypeError::new_err);
    if let Err(err) = arg {
        err.restore(py);
        return std::ptr::null_mut();
    }
    // SAFETY: exactly one argument, positional or keyword: `args[0]`.
    let arg = unsafe { *args };
    // SAFETY: as this function's contract; `arg` is live for the call.
    unsafe {
        call_method(slf, arg, |slf, arg| match arg {
            Some(arg) => body(slf, arg),
            None => Err(PyRuntimeError::new_err(format!(
                "{method}() without {keyword}"
            ))),
        })
    }
}

/// The arguments of a FASTCALL|KEYWORDS call, as CPython passed them.
pub struct FastArgs<'a> {
    /// The positional arguments, then the keyword arguments' values.
    args: &'a [*mut ffi::PyObject],
    nargs: usize,
    /// Null, or the tuple of the keyword arguments' names.
    kwnames: *mut ffi::PyObject,
}

impl FastArgs<'_> {
    /// How many arguments were given by position.
    pub fn positional_count(&self) -> usize {
        self.nargs
    }

    /// Whether any argument was given by keyword.
    pub fn has_keywords(&self) -> bool {
        !self.kwnames.is_null()
    }

    /// The positional arguments from `start` on (borrowed references, live
    /// for the call).
    pub fn positional_from(&self, start: usize) -> &[*mut ffi::PyObject] {
        self.args[..self.nargs].get(start..).unwrap_or(&[])
    }

    /// The values of the keyword arguments `names`, those given; any other
    /// keyword is a TypeError worded as CPython words it for `method`.
    /// Allocates nothing (no Python code can run meanwhile: see
    /// `handles::BareCalls`).
    pub fn keywords<'py, const N: usize>(
        &self,
        py: Python<'py>,
        names: [&Bound<'py, PyString>; N],
        method: &str,
    ) -> PyResult<[Option<Bound<'py, PyAny>>; N]> {
        let mut values = [const { None }; N];
        if self.kwnames.is_null() {
            return Ok(values);
        }
        // SAFETY: `kwnames` is a live tuple of the keywords' names.
        let count = unsafe { ffi::PyTuple_GET_SIZE(self.kwnames) } as usize;
        for i in 0..count {
            // SAFETY: a borrowed item of a live tuple, `i` in range.
            let given = unsafe {
                Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(self.kwnames, i as isize))
            };
            // Keyword names are interned as a rule (CPython 3.11's own
            // identifiers are not): by identity first, then by contents,
            // comparing without making a bool.
            let slot = names
                .iter()
                .position(|name| given.is(*name))
                .or_else(|| names.iter().position(|name| same_str(&given, name)));
            let Some(slot) = slot else {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{given}'"
                )));
            };
            // SAFETY: the keyword values follow the positional ones.
            values[slot] = Some(unsafe { Bound::from_borrowed_ptr(py, self.args[self.nargs + i]) });
        }
        Ok(values)
    }

    /// The positional argument at `index`, if given.
    pub fn positional<'py>(&self, py: Python<'py>, index: usize) -> Option<Bound<'py, PyAny>> {
        let &arg = self.args[..self.nargs].get(index)?;
        // SAFETY: a live reference for the duration of the call.
        Some(unsafe { Bound::from_borrowed_ptr(py, arg) })
    }

    /// `function(first, *args, **kwargs)` with these arguments: a method
    /// of ours handing a call to the Python method it stands in for.
    pub fn call_with_first<'py>(
        &self,
        function: &Bound<'py, PyAny>,
        first: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = function.py();
        let mut all = Vec::with_capacity(self.args.len() + 1);
        all.push(first.as_ptr());
        all.extend_from_slice(self.args);
        // SAFETY: `all` holds live references (ours and the caller's) for
        // the call; `kwnames` is null or the caller's tuple naming the last
        // `len(kwnames)` of them, as vectorcall expects.
        unsafe {
            let result = ffi::PyObject_Vectorcall(
                function.as_ptr(),
                all.as_ptr(),
                self.nargs + 1,
                self.kwnames,
            );
            Bound::from_owned_ptr_or_err(py, result)
        }
    }
}

/// [`call_method`] for a [`MethodDef::fastcall`] method: the body gets its
/// arguments as [`FastArgs`].
///
/// # Safety
/// Called by CPython for such a method of ours: attached, `slf` live,
/// `args`/`nargs`/`kwnames` as the FASTCALL|KEYWORDS convention passes them.
pub unsafe fn call_method_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    body: impl FnOnce(&Bound<'_, PyAny>, &FastArgs<'_>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: `kwnames` is null or a tuple; its length counts the keyword
    // values after the `nargs` positional ones in `args`.
    let total = nargs as usize
        + if kwnames.is_null() {
            0
        } else {
            unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
        };
    let fast = FastArgs {
        // SAFETY: `args` holds `total` live references (or is unused when
        // there are none).
        args: if total == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(args, total) }
        },
        nargs: nargs as usize,
        kwnames,
    };
    // SAFETY: as this function's contract.
    unsafe { call_method(slf, std::ptr::null_mut(), |slf, _| body(slf, &fast)) }
}

/// Whether `given` (a keyword name: a str, or a str subclass a caller
/// passed) equals `name`, no error raised.
fn same_str(given: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> bool {
    // SAFETY: live references; `PyUnicode_Compare` only reads two strs.
    unsafe {
        if ffi::PyUnicode_Check(given.as_ptr()) == 0 {
            return false;
        }
        ffi::PyUnicode_Compare(given.as_ptr(), name.as_ptr()) == 0
    }
}
