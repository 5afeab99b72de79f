//! A node's returned dict as JSON, for the common shapes without serde's generic machinery:
//! `pythonize`'s deserializer (a visitor per value, the map's keys and values fetched as
//! sequences) cost ~2,000 instructions for `{"sq": 9}`, more than the Python call that
//! returned it. Only exact built-in types are read here; anything else (a subclass, a set,
//! a key that is not a str, an int beyond 64 bits, nesting deeper than [`MAX_DEPTH`]) makes
//! the whole value go through `depythonize`, so what is accepted, and every error message,
//! stays `pythonize`'s.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Deeper values are left to `depythonize` (which also handles a self-referencing one).
const MAX_DEPTH: usize = 32;

/// `dict`'s entries as a JSON object, if every value is of a shape read here.
pub(crate) fn dict_to_map(dict: &Bound<'_, PyDict>) -> Option<Map<String, Value>> {
    read_dict(dict, 0)
}

fn read_dict(dict: &Bound<'_, PyDict>, depth: usize) -> Option<Map<String, Value>> {
    let mut map = Map::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let key = k.cast_exact::<PyString>().ok()?.to_str().ok()?;
        map.insert(key.to_owned(), read(&v, depth + 1)?);
    }
    Some(map)
}

fn read(obj: &Bound<'_, PyAny>, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    if obj.is_none() {
        return Some(Value::Null);
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return Some(Value::String(s.to_str().ok()?.to_owned()));
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        return Some(Value::Bool(b.is_true()));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Some(Value::Number(i.into()));
        }
        return obj.extract::<u64>().ok().map(|u| Value::Number(u.into()));
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        // As serde_json makes of a float it cannot hold (NaN, infinities): null.
        return Some(Number::from_f64(f.value()).map_or(Value::Null, Value::Number));
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        return read_dict(d, depth).map(Value::Object);
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return l
            .iter()
            .map(|v| read(&v, depth + 1))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return t
            .iter()
            .map(|v| read(&v, depth + 1))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    None
}
