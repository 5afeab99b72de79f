//! Hand-written JSON <-> Lua conversion.
//!
//! Written against mlua's raw table API instead of going through serde so a
//! node's inputs and outputs are converted without intermediate strings or
//! per-value registry churn; see the crate docs for the mapping itself.

use std::ffi::c_void;
use std::fmt::Write as _;

use mlua::{Either, Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value};

/// Deepest nesting accepted in either direction. Bounds Rust recursion and
/// doubles as a backstop against cycles.
pub(crate) const MAX_DEPTH: usize = 128;

/// One step of the path to a value that failed to convert.
enum Segment {
    Key(String),
    Index(i64),
}

/// A value that cannot be represented on the other side. The path is
/// collected while unwinding so successful conversions pay nothing for it.
pub(crate) struct ConvError {
    /// Innermost segment first.
    segments: Vec<Segment>,
    pub(crate) message: String,
}

impl ConvError {
    fn new(message: impl Into<String>) -> Self {
        ConvError {
            segments: Vec::new(),
            message: message.into(),
        }
    }

    /// Renders the path below `root`, e.g. `result.items[2].callback`.
    pub(crate) fn path(&self, root: &str) -> String {
        let mut out = String::from(root);
        for seg in self.segments.iter().rev() {
            match seg {
                Segment::Key(k) if is_identifier(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Key(k) => {
                    let _ = write!(out, "[{k:?}]");
                }
                Segment::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Conversion failure: either the value is not representable, or Lua itself
/// failed (typically the memory limit), which must propagate unchanged.
pub(crate) enum ConvFail {
    Conv(ConvError),
    Lua(mlua::Error),
}

impl From<mlua::Error> for ConvFail {
    fn from(e: mlua::Error) -> Self {
        ConvFail::Lua(e)
    }
}

impl ConvFail {
    fn at(self, seg: impl FnOnce() -> Segment) -> Self {
        match self {
            ConvFail::Conv(mut e) => {
                e.segments.push(seg());
                ConvFail::Conv(e)
            }
            other @ ConvFail::Lua(_) => other,
        }
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, ConvFail> {
    Err(ConvFail::Conv(ConvError::new(message)))
}

// ---------------------------------------------------------------- JSON -> Lua

/// Converts a JSON value into a Lua value. Arrays get `array_mt` so that they
/// (including empty ones) convert back to arrays.
pub(crate) fn json_to_lua(lua: &Lua, array_mt: &Table, v: &Value) -> Result<LuaValue, ConvFail> {
    json_to_lua_at(lua, array_mt, v, 0)
}

fn json_to_lua_at(
    lua: &Lua,
    array_mt: &Table,
    v: &Value,
    depth: usize,
) -> Result<LuaValue, ConvFail> {
    Ok(match v {
        Value::Null => LuaValue::NULL,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => number_to_lua(n),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(_) | Value::Object(_) => {
            LuaValue::Table(container_to_lua(lua, array_mt, v, depth)?)
        }
    })
}

fn number_to_lua(n: &Number) -> LuaValue {
    match n.as_i64() {
        Some(i) => LuaValue::Integer(i),
        // u64 above i64::MAX (and floats) become Lua floats.
        None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn container_to_lua(
    lua: &Lua,
    array_mt: &Table,
    v: &Value,
    depth: usize,
) -> Result<Table, ConvFail> {
    if depth >= MAX_DEPTH {
        return fail(format!("nesting is deeper than {MAX_DEPTH} levels"));
    }
    // Each value is pushed straight onto the stack while the new table stays there
    // (`create_*_from`): setting them one by one pushed the table again for every value.
    // Nested containers are converted first, so their errors still name their path.
    match v {
        Value::Array(items) => {
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                values.push(
                    element(lua, array_mt, item, depth)
                        .map_err(|e| e.at(|| Segment::Index(i as i64 + 1)))?,
                );
            }
            let t = lua.create_sequence_from(values)?;
            t.set_metatable(Some(array_mt.clone()))?;
            Ok(t)
        }
        Value::Object(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, item) in map {
                let value = element(lua, array_mt, item, depth)
                    .map_err(|e| e.at(|| Segment::Key(k.clone())))?;
                entries.push((k.as_str(), value));
            }
            Ok(lua.create_table_from(entries)?)
        }
        _ => unreachable!("container_to_lua called with a scalar"),
    }
}

/// A JSON value ready to be pushed: strings as `&str` (pushed without a registry
/// reference), containers converted.
fn element<'v>(
    lua: &Lua,
    array_mt: &Table,
    v: &'v Value,
    depth: usize,
) -> Result<Either<LuaValue, &'v str>, ConvFail> {
    Ok(match v {
        Value::Null => Either::Left(LuaValue::NULL),
        Value::Bool(b) => Either::Left(LuaValue::Boolean(*b)),
        Value::Number(n) => Either::Left(number_to_lua(n)),
        Value::String(s) => Either::Right(s.as_str()),
        Value::Array(_) | Value::Object(_) => Either::Left(LuaValue::Table(container_to_lua(
            lua,
            array_mt,
            v,
            depth + 1,
        )?)),
    })
}

// ---------------------------------------------------------------- Lua -> JSON

/// Lua -> JSON converter; holds the traversal stack used for cycle detection.
pub(crate) struct ToJson {
    array_mt: *const c_void,
    stack: Vec<*const c_void>,
}

/// Lua's name for the type of `v`, as a script author would know it.
pub(crate) fn lua_type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        LuaValue::LightUserData(p) if p.0.is_null() => "json.null",
        _ => "userdata",
    }
}

impl ToJson {
    /// `array_mt` is the pointer of the array marker metatable.
    pub(crate) fn new(array_mt: *const c_void) -> Self {
        ToJson {
            array_mt,
            stack: Vec::new(),
        }
    }

    pub(crate) fn value(&mut self, v: &LuaValue) -> Result<Value, ConvFail> {
        Ok(match v {
            LuaValue::Nil => Value::Null,
            LuaValue::LightUserData(p) if p.0.is_null() => Value::Null,
            LuaValue::Boolean(b) => Value::Bool(*b),
            LuaValue::Integer(i) => Value::Number((*i).into()),
            LuaValue::Number(f) => match Number::from_f64(*f) {
                Some(n) => Value::Number(n),
                None => return fail(format!("{f} cannot be represented in JSON")),
            },
            LuaValue::String(s) => match s.to_str() {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => return fail("string is not valid UTF-8"),
            },
            LuaValue::Table(t) => self.table(t)?,
            other => {
                return fail(format!(
                    "a {} cannot be converted to JSON",
                    lua_type_name(other)
                ))
            }
        })
    }

    /// Converts a table; `Ok(Value::Array)` or `Ok(Value::Object)`.
    pub(crate) fn table(&mut self, t: &Table) -> Result<Value, ConvFail> {
        let ptr = t.to_pointer();
        if self.stack.contains(&ptr) {
            return fail("table contains a reference cycle");
        }
        if self.stack.len() >= MAX_DEPTH {
            return fail(format!("nesting is deeper than {MAX_DEPTH} levels"));
        }
        let marked = t
            .metatable()
            .is_some_and(|mt| mt.to_pointer() == self.array_mt);
        let mut entries: Vec<(LuaValue, LuaValue)> = Vec::new();
        t.for_each::<LuaValue, LuaValue>(|k, v| {
            entries.push((k, v));
            Ok(())
        })?;
        self.stack.push(ptr);
        let result = if marked {
            self.marked_array(&entries)
        } else if is_sequence(&entries) {
            self.sequence(&entries)
        } else {
            self.object(entries)
        };
        self.stack.pop();
        result
    }

    fn sequence(&mut self, entries: &[(LuaValue, LuaValue)]) -> Result<Value, ConvFail> {
        let mut out = vec![Value::Null; entries.len()];
        for (k, v) in entries {
            let LuaValue::Integer(i) = *k else {
                unreachable!("checked by is_sequence")
            };
            out[(i - 1) as usize] = self.value(v).map_err(|e| e.at(|| Segment::Index(i)))?;
        }
        Ok(Value::Array(out))
    }

    fn marked_array(&mut self, entries: &[(LuaValue, LuaValue)]) -> Result<Value, ConvFail> {
        let mut len = 0i64;
        for (k, _) in entries {
            match *k {
                LuaValue::Integer(i) if i >= 1 => len = len.max(i),
                ref other => {
                    return fail(format!(
                        "json.array table has a non-positive-integer key ({})",
                        key_display(other)
                    ))
                }
            }
        }
        // Holes become null; refuse absurdly sparse arrays instead of
        // allocating millions of nulls.
        if len as usize > entries.len().saturating_mul(2) + 1024 {
            return fail(format!(
                "json.array table is too sparse (index {len} with {} elements)",
                entries.len()
            ));
        }
        let mut out = vec![Value::Null; len as usize];
        for (k, v) in entries {
            let LuaValue::Integer(i) = *k else {
                unreachable!("checked above")
            };
            out[(i - 1) as usize] = self.value(v).map_err(|e| e.at(|| Segment::Index(i)))?;
        }
        Ok(Value::Array(out))
    }

    fn object(&mut self, entries: Vec<(LuaValue, LuaValue)>) -> Result<Value, ConvFail> {
        let mut keyed: Vec<(String, LuaValue)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let key = match &k {
                LuaValue::String(s) => match s.to_str() {
                    Ok(s) => s.to_owned(),
                    Err(_) => return fail("table key is not valid UTF-8"),
                },
                LuaValue::Integer(i) => i.to_string(),
                other => {
                    return fail(format!(
                        "table key {} cannot be a JSON object key",
                        key_display(other)
                    ))
                }
            };
            keyed.push((key, v));
        }
        // Lua's hash order differs between states (randomised string seeds);
        // sorting keeps outputs deterministic.
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
            return fail(format!(
                "key {:?} appears both as an integer and as a string",
                w[0].0
            ));
        }
        let mut map = Map::with_capacity(keyed.len());
        for (k, v) in keyed {
            let jv = self
                .value(&v)
                .map_err(|e| e.at(|| Segment::Key(k.clone())))?;
            map.insert(k, jv);
        }
        Ok(Value::Object(map))
    }
}

/// Keys are exactly `1..=n` for some n >= 1 (keys are unique, so it is enough
/// that every key is an integer within range).
fn is_sequence(entries: &[(LuaValue, LuaValue)]) -> bool {
    let n = entries.len() as i64;
    n >= 1
        && entries
            .iter()
            .all(|(k, _)| matches!(*k, LuaValue::Integer(i) if (1..=n).contains(&i)))
}

fn key_display(k: &LuaValue) -> String {
    match k {
        LuaValue::Number(f) => format!("{f}"),
        LuaValue::Boolean(b) => b.to_string(),
        LuaValue::Integer(i) => i.to_string(),
        LuaValue::String(s) => format!("{:?}", s.to_string_lossy()),
        other => format!("of type {}", lua_type_name(other)),
    }
}
