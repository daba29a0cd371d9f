//! Erlang terms <-> Python objects. The table of rules is in the README
//! ("Type conversion"); this file is its only implementation.

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple, PyType,
};
use rustler::types::map::MapIterator;
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{Atom, BigInt, Binary, Encoder, Env, NewBinary, Term, TermType};

use crate::atoms;
use crate::opaque::{conversion_scope, OpaqueTerm, Pid, Ref};
use erlang_python::py::stack;

/// Deeper structures are refused rather than risking the thread's stack.
pub const MAX_DEPTH: usize = 1000;

/// Converts an Erlang term into a new Python object.
pub fn term_to_py<'py>(py: Python<'py>, term: Term<'_>) -> PyResult<Bound<'py, PyAny>> {
    conversion_scope(|| to_py(py, term, 0))
}

/// A call's argument list as a Python list, each argument converted as a
/// value of its own: the list is no level of nesting (a value crosses as
/// an argument as deep as it crosses back as a result).
pub fn args_to_py<'py>(py: Python<'py>, term: Term<'_>) -> PyResult<Bound<'py, PyList>> {
    conversion_scope(|| list_to_py(py, term, 0))
}

/// Keyword arguments, or `eval`'s locals, as a dict, each entry converted
/// as a value of its own (as `args_to_py`). Their keys are names: an Erlang
/// string (`"x"`, a list of characters) is one too.
pub fn entries_to_py<'py>(py: Python<'py>, term: Term<'_>) -> PyResult<Bound<'py, PyDict>> {
    conversion_scope(|| {
        map_with_keys(py, term, 0, |py, key, depth| match charlist(key) {
            Some(name) => Ok(PyString::new(py, &name).into_any()),
            None => to_py_key(py, key, depth),
        })
    })
}

/// The text of a non-empty list of Unicode characters.
fn charlist(term: Term<'_>) -> Option<String> {
    if !term.is_list() || term.is_empty_list() {
        return None;
    }
    list_elements(term)
        .map(|head| char::from_u32(head.ok()?.decode::<u32>().ok()?))
        .collect()
}

/// The elements of the list `term`, then an error if its tail is not `[]`.
fn list_elements<'a>(term: Term<'a>) -> impl Iterator<Item = PyResult<Term<'a>>> {
    let mut rest = Some(term);
    std::iter::from_fn(move || {
        let list = rest.take().filter(|list| !list.is_empty_list())?;
        Some(match list.list_get_cell() {
            Ok((head, tail)) => {
                rest = Some(tail);
                Ok(head)
            }
            Err(_) => Err(PyTypeError::new_err("improper lists cannot be converted")),
        })
    })
}

/// Converts a Python object into a term of `env`.
pub fn py_to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>) -> PyResult<Term<'a>> {
    to_term(env, obj, 0)
}

/// Stack kept free below a level being converted: a level takes about
/// 1 KiB, the conversion of a leaf and an error's creation a few more.
const STACK_MARGIN: usize = 64 * 1024;

/// Refuses a level past `MAX_DEPTH`, or one the thread's stack has no room
/// for (a Python thread may have a small stack).
fn enter_level(depth: usize) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "structure nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if !stack::has_room(STACK_MARGIN) {
        return Err(PyValueError::new_err(format!(
            "structure nested too deeply for this thread's stack ({depth} levels)"
        )));
    }
    Ok(())
}

fn to_py<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> PyResult<Bound<'py, PyAny>> {
    enter_level(depth)?;
    match term.get_type() {
        TermType::Integer => match term.decode::<i64>() {
            Ok(small) => Ok(small.into_pyobject(py)?.into_any()),
            Err(_) => {
                let big: BigInt = term
                    .decode()
                    .map_err(|_| PyValueError::new_err("undecodable integer"))?;
                big_to_py(py, &big)
            }
        },
        TermType::Float => {
            let value: f64 = term
                .decode()
                .map_err(|_| PyValueError::new_err("undecodable float"))?;
            Ok(PyFloat::new(py, value).into_any())
        }
        TermType::Atom => atom_to_py(py, term),
        TermType::Binary => {
            let binary: Binary = term.decode().map_err(|_| {
                PyTypeError::new_err("bitstrings that are not binaries cannot be converted")
            })?;
            let bytes = binary.as_slice();
            Ok(match std::str::from_utf8(bytes) {
                Ok(text) => PyString::new(py, text).into_any(),
                Err(_) => PyBytes::new(py, bytes).into_any(),
            })
        }
        TermType::List => Ok(list_to_py(py, term, depth + 1)?.into_any()),
        TermType::Tuple => {
            let elements = get_tuple(term).map_err(|_| PyTypeError::new_err("bad tuple"))?;
            let items = elements
                .into_iter()
                .map(|element| to_py(py, element, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyTuple::new(py, items)?.into_any())
        }
        TermType::Map => Ok(map_to_py(py, term, depth + 1)?.into_any()),
        TermType::Pid => Ok(Bound::new(py, Pid::from_term(term))?.into_any()),
        TermType::Ref => Ok(Bound::new(py, Ref::from_term(term))?.into_any()),
        TermType::Fun | TermType::Port | TermType::Unknown => {
            Ok(Bound::new(py, OpaqueTerm::from_term(term))?.into_any())
        }
    }
}

/// A list, its elements converted at `depth`.
fn list_to_py<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for head in list_elements(term) {
        list.append(to_py(py, head?, depth)?)?;
    }
    Ok(list)
}

/// A map as a dict, its keys and values converted at `depth`.
fn map_to_py<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> PyResult<Bound<'py, PyDict>> {
    map_with_keys(py, term, depth, to_py_key)
}

/// A map as a dict, its keys converted by `key_to_py`.
fn map_with_keys<'py>(
    py: Python<'py>,
    term: Term<'_>,
    depth: usize,
    key_to_py: impl for<'t> Fn(Python<'py>, Term<'t>, usize) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let entries = MapIterator::new(term).ok_or_else(|| PyTypeError::new_err("bad map"))?;
    for (key, value) in entries {
        let key = key_to_py(py, key, depth)?;
        dict.set_item(key, to_py(py, value, depth)?)?;
    }
    // `1` and `1.0`, `a` and `<<"a">>`, `[1]` and `{1}` are one key in
    // Python: a smaller dict would lose values without a word.
    if term.map_size().is_ok_and(|size| size != dict.len()) {
        return Err(PyValueError::new_err("map keys collide as Python keys"));
    }
    Ok(dict)
}

/// A map key. Lists are unhashable: a list in a key, at any depth inside
/// lists and tuples (`#{{"name", 1} => V}`), becomes a tuple.
fn to_py_key<'py>(py: Python<'py>, term: Term<'_>, depth: usize) -> PyResult<Bound<'py, PyAny>> {
    enter_level(depth)?;
    let elements = match term.get_type() {
        TermType::Tuple => get_tuple(term).map_err(|_| PyTypeError::new_err("bad tuple"))?,
        TermType::List => list_elements(term).collect::<PyResult<Vec<_>>>()?,
        _ => return to_py(py, term, depth),
    };
    let items = elements
        .into_iter()
        .map(|element| to_py_key(py, element, depth + 1))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTuple::new(py, items)?.into_any())
}

fn atom_to_py<'py>(py: Python<'py>, term: Term<'_>) -> PyResult<Bound<'py, PyAny>> {
    let name = atom_text(term).ok_or_else(|| PyValueError::new_err("undecodable atom"))?;
    Ok(match name.as_str() {
        "true" => PyBool::new(py, true).to_owned().into_any(),
        "false" => PyBool::new(py, false).to_owned().into_any(),
        "none" => py.None().into_bound(py),
        "inf" => PyFloat::new(py, f64::INFINITY).into_any(),
        "-inf" => PyFloat::new(py, f64::NEG_INFINITY).into_any(),
        "nan" => PyFloat::new(py, f64::NAN).into_any(),
        _ => PyString::new(py, &name).into_any(),
    })
}

/// The text of an atom, whatever its characters. Before NIF 2.17 (OTP 26)
/// rustler reads atoms as Latin-1 only; any other atom (`'日本'`) is read from
/// its external format, where OTP writes atoms as UTF-8.
pub fn atom_text(term: Term<'_>) -> Option<String> {
    if let Ok(text) = term.atom_to_string() {
        return Some(text);
    }
    if term.get_type() != TermType::Atom {
        return None;
    }
    let external = term.to_binary();
    let text = match external.as_slice() {
        // VERSION_MAGIC, SMALL_ATOM_UTF8_EXT, Len:8, Text
        [131, 119, len, rest @ ..] => rest.get(..usize::from(*len))?,
        // VERSION_MAGIC, ATOM_UTF8_EXT, Len:16, Text
        [131, 118, high, low, rest @ ..] => {
            rest.get(..usize::from(u16::from_be_bytes([*high, *low])))?
        }
        _ => return None,
    };
    std::str::from_utf8(text).ok().map(str::to_owned)
}

fn to_term<'a>(env: Env<'a>, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Term<'a>> {
    enter_level(depth)?;
    if obj.is_none() {
        return Ok(atoms::none().encode(env));
    }
    // bool before int: bool is a subclass of int.
    if let Ok(flag) = obj.cast::<PyBool>() {
        return Ok(flag.is_true().encode(env));
    }
    if let Ok(text) = obj.cast::<PyString>() {
        let text = text.to_str()?;
        return Ok(binary_term(env, text.as_bytes()));
    }
    if let Ok(int) = obj.cast::<PyInt>() {
        return Ok(match int.extract::<i64>() {
            Ok(small) => small.encode(env),
            Err(_) => big_term(env, int)?,
        });
    }
    if let Ok(float) = obj.cast::<PyFloat>() {
        let value = float.value();
        return Ok(if value.is_nan() {
            atoms::nan().encode(env)
        } else if value == f64::INFINITY {
            atoms::inf().encode(env)
        } else if value == f64::NEG_INFINITY {
            atoms::neg_inf().encode(env)
        } else {
            value.encode(env)
        });
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(binary_term(env, bytes.as_bytes()));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(binary_term(env, &bytes.to_vec()));
    }
    // Python code can run while a container is converted (a `gc.callbacks`
    // hook, when a conversion allocates): a container changed meanwhile is
    // refused rather than converted in part.
    if let Ok(list) = obj.cast::<PyList>() {
        let len = list.len();
        let items = list
            .iter()
            .map(|item| to_term(env, &item, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        if items.len() != len || list.len() != len {
            return Err(changed_while_converted("list"));
        }
        return Ok(items.encode(env));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        if tuple.len() > MAX_TUPLE_ARITY {
            return Err(PyOverflowError::new_err(format!(
                "a tuple of {} items is larger than an Erlang tuple can be ({MAX_TUPLE_ARITY})",
                tuple.len()
            )));
        }
        let items = tuple
            .iter()
            .map(|item| to_term(env, &item, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(make_tuple(env, &items));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return dict_term(env, dict, depth);
    }
    // The sets' own iteration, not a subclass's `__iter__` (which would be
    // Python code); it raises if the set changes size.
    if obj.is_instance_of::<PySet>() {
        return set_term(env, obj.py().get_type::<PySet>(), obj, depth);
    }
    if obj.is_instance_of::<PyFrozenSet>() {
        return set_term(env, obj.py().get_type::<PyFrozenSet>(), obj, depth);
    }
    if let Ok(pid) = obj.cast::<Pid>() {
        return pid.get().to_term(env);
    }
    if let Ok(reference) = obj.cast::<Ref>() {
        return reference.get().to_term(env);
    }
    if let Ok(opaque) = obj.cast::<OpaqueTerm>() {
        return opaque.get().to_term(env);
    }
    Err(PyTypeError::new_err(format!(
        "cannot convert {} to an Erlang term",
        obj.get_type().name()?
    )))
}

/// The largest tuple the VM makes (`MAX_ARITY` of erts).
const MAX_TUPLE_ARITY: usize = (1 << 24) - 1;

fn changed_while_converted(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("{what} changed size while it was converted"))
}

/// A dict as a map. Iterated by `PyDict_Next`, which stays in bounds when
/// the dict changes (pyo3's iterator panics then).
fn dict_term<'a>(env: Env<'a>, dict: &Bound<'_, PyDict>, depth: usize) -> PyResult<Term<'a>> {
    let py = dict.py();
    let len = dict.len();
    let mut keys = Vec::with_capacity(len);
    let mut values = Vec::with_capacity(len);
    let mut position: pyo3::ffi::Py_ssize_t = 0;
    loop {
        let mut key = std::ptr::null_mut();
        let mut value = std::ptr::null_mut();
        // SAFETY: `dict` is a live dict and we hold the GIL; PyDict_Next
        // only reads it and writes the three out-parameters.
        if unsafe { pyo3::ffi::PyDict_Next(dict.as_ptr(), &mut position, &mut key, &mut value) }
            == 0
        {
            break;
        }
        // SAFETY: borrowed references the dict holds, owned here (increfed)
        // before any Python code can run and change the dict.
        let (key, value) = unsafe {
            (
                Bound::from_borrowed_ptr(py, key),
                Bound::from_borrowed_ptr(py, value),
            )
        };
        keys.push(to_term(env, &key, depth + 1)?);
        values.push(to_term(env, &value, depth + 1)?);
        if dict.len() != len {
            return Err(changed_while_converted("dict"));
        }
    }
    if keys.len() != len {
        return Err(changed_while_converted("dict"));
    }
    map_term(env, &keys, &values)
        .map_err(|()| PyValueError::new_err("dict keys collide as Erlang terms"))
}

/// The items of `set`, an instance of `base` (`set` or `frozenset`),
/// iterated by `base.__iter__`: pyo3's own set iterator calls a
/// subclass's override.
fn set_term<'a>(
    env: Env<'a>,
    base: Bound<'_, PyType>,
    set: &Bound<'_, PyAny>,
    depth: usize,
) -> PyResult<Term<'a>> {
    let items = base
        .call_method1("__iter__", (set,))?
        .try_iter()?
        .map(|item| to_term(env, &item?, depth + 1))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(items.encode(env))
}

/// Integers beyond i64 cross as little-endian two's complement bytes: rustler
/// and pyo3 use different num-bigint majors, Python's `int` speaks bytes.
fn big_to_py<'py>(py: Python<'py>, big: &BigInt) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("signed", true)?;
    py.get_type::<PyInt>().call_method(
        "from_bytes",
        (PyBytes::new(py, &big.to_signed_bytes_le()), "little"),
        Some(&kwargs),
    )
}

/// An int beyond i64 as an Erlang integer. rustler's encoder answers an
/// int larger than the VM's (about 2^25 bits) with an `{error, _}` term
/// instead of failing: that is refused here, not returned as the value.
fn big_term<'a>(env: Env<'a>, int: &Bound<'_, PyInt>) -> PyResult<Term<'a>> {
    let term = py_to_big(int)?.encode(env);
    if term.is_integer() {
        Ok(term)
    } else {
        Err(PyOverflowError::new_err(
            "int too large to convert to an Erlang integer",
        ))
    }
}

fn py_to_big(int: &Bound<'_, PyInt>) -> PyResult<BigInt> {
    // int's own methods, not a subclass's overrides.
    let int_type = int.py().get_type::<PyInt>();
    let bits: usize = int_type.call_method1("bit_length", (int,))?.extract()?;
    let kwargs = PyDict::new(int.py());
    kwargs.set_item("signed", true)?;
    let bytes = int_type.call_method("to_bytes", (int, bits / 8 + 1, "little"), Some(&kwargs))?;
    Ok(BigInt::from_signed_bytes_le(
        bytes.cast::<PyBytes>()?.as_bytes(),
    ))
}

/// A fresh binary term holding `bytes`.
pub fn binary_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    Term::from(binary)
}

/// The atom `name` if the node has it already, else the binary `name`:
/// names from Python never create atoms (the atom table is never
/// collected, and a full one stops the VM).
pub fn existing_atom_or_binary<'a>(env: Env<'a>, name: &str) -> Term<'a> {
    if let Ok(atom) = Atom::existing_from_utf8_bytes(env, name.as_bytes()) {
        return atom.encode(env);
    }
    // Before NIF 2.17 (OTP 26) rustler looks up Latin-1 atoms only; any
    // other name is read from its external format (ATOM_UTF8_EXT) by the
    // checked decoder, which finds existing atoms and creates none.
    if let Ok(length) = u16::try_from(name.len()) {
        if name.chars().count() <= 255 {
            let mut external = vec![131, 118];
            external.extend_from_slice(&length.to_be_bytes());
            external.extend_from_slice(name.as_bytes());
            if let Some((term, _)) = env.binary_to_term(&external) {
                if term.is_atom() {
                    return term;
                }
            }
        }
    }
    binary_term(env, name.as_bytes())
}

/// Keys of a map built at once (`enif_make_map_from_arrays`); the rest
/// are put one by one. Python's results are converted on threads of ours,
/// where OTP before 27.3 crashes building a larger map at once
/// (erlang/otp#8208: its sort of more keys needs a scheduler's data).
const MAP_KEYS_AT_ONCE: usize = 128;

/// The map of `keys` to `values`; `Err` if two keys are the same term.
/// Checked by the map's size: from 33 keys on, OTP builds a map with
/// duplicate keys instead of refusing them (erlang/otp#10975), and a put
/// replaces.
fn map_term<'a>(env: Env<'a>, keys: &[Term<'a>], values: &[Term<'a>]) -> Result<Term<'a>, ()> {
    let at_once = keys.len().min(MAP_KEYS_AT_ONCE);
    let mut map =
        Term::map_from_term_arrays(env, &keys[..at_once], &values[..at_once]).map_err(drop)?;
    for (&key, &value) in keys[at_once..].iter().zip(&values[at_once..]) {
        map = map.map_put(key, value).map_err(drop)?;
    }
    match map.map_size() {
        Ok(size) if size == keys.len() => Ok(map),
        _ => Err(()),
    }
}
