//! A run's inputs checked against its workflow's `inputs:` JSON Schema
//! (`WorkflowSpec.inputs_schema_json`), the subset `dagengine.inputs` supports: `type`
//! (one or a list), `properties`, `required`, `additionalProperties` (bool or a schema),
//! `default` (filled in when missing), `enum`, `minimum`, `maximum`, `items`, `format`
//! (`date`, `date-time`). The problems and their wording are the Python validator's, so a
//! raw gRPC caller that skipped the client's check hears the same as a Python caller.

use serde_json::{Map, Value};

/// `inputs` checked against `schema`, with missing properties' defaults filled in; else
/// every problem as `(path, message)`, paths rooted at `inputs`.
pub fn validate(
    schema: &Value,
    inputs: Map<String, Value>,
) -> Result<Map<String, Value>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let out = check(schema, Value::Object(inputs), "inputs", &mut problems);
    match out {
        Value::Object(map) if problems.is_empty() => Ok(map),
        _ => Err(problems),
    }
}

/// The problems as one message: `path: message; path: message`.
pub fn describe(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(path, message)| format!("{path}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn is(kind: &str, value: &Value) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => false,
    }
}

/// A value as a message shows it: JSON, cut short (60 characters).
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        text
    } else {
        format!("{}...", text.chars().take(57).collect::<String>())
    }
}

/// JSON equality, deep: `true` is not `1`, `1` is `1.0`.
#[allow(clippy::float_cmp)] // exact, as JSON (and Python's ==) compares numbers
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(kind) => Some(vec![kind.as_str()]),
        Value::Array(kinds) => Some(kinds.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn check(schema: &Value, value: Value, path: &str, problems: &mut Vec<(String, String)>) -> Value {
    let Some(schema) = schema.as_object() else {
        return value;
    };
    if let Some(kinds) = types(schema) {
        if !kinds.iter().any(|k| is(k, &value)) {
            let expected = kinds.join(" or ");
            problems.push((
                path.to_owned(),
                format!("expected {expected}, got {}", show(&value)),
            ));
            return value;
        }
    }
    if let Some(Value::Array(choices)) = schema.get("enum") {
        if !choices.iter().any(|c| same(&value, c)) {
            let listed: Vec<String> = choices.iter().map(show).collect();
            problems.push((
                path.to_owned(),
                format!(
                    "expected one of {}, got {}",
                    listed.join(", "),
                    show(&value)
                ),
            ));
            return value;
        }
    }
    match value {
        Value::Number(ref n) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if let Some(low) = schema.get("minimum").filter(|l| l.is_number()) {
                if v < low.as_f64().unwrap_or(f64::NEG_INFINITY) {
                    problems.push((
                        path.to_owned(),
                        format!("expected at least {}, got {}", show(low), show(&value)),
                    ));
                }
            }
            if let Some(high) = schema.get("maximum").filter(|h| h.is_number()) {
                if v > high.as_f64().unwrap_or(f64::INFINITY) {
                    problems.push((
                        path.to_owned(),
                        format!("expected at most {}, got {}", show(high), show(&value)),
                    ));
                }
            }
            value
        }
        Value::String(ref s) => {
            if let Some(Value::String(fmt)) = schema.get("format") {
                if let Some(problem) = check_format(fmt, s) {
                    problems.push((path.to_owned(), problem));
                }
            }
            value
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| check(item_schema, item, &format!("{path}[{i}]"), problems))
                    .collect(),
            ),
            None => Value::Array(items),
        },
        Value::Object(map) => Value::Object(check_object(schema, map, path, problems)),
        other => other,
    }
}

fn check_object(
    schema: &Map<String, Value>,
    mut value: Map<String, Value>,
    path: &str,
    problems: &mut Vec<(String, String)>,
) -> Map<String, Value> {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            let has_default = properties
                .get(name)
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key("default"));
            if !value.contains_key(name) && !has_default {
                problems.push((format!("{path}.{name}"), "required, missing".to_owned()));
            }
        }
    }
    let given: Vec<String> = value.keys().cloned().collect();
    for (name, sub) in properties {
        if let Some(v) = value.get_mut(name) {
            *v = check(sub, std::mem::take(v), &format!("{path}.{name}"), problems);
        } else if let Some(default) = sub.get("default") {
            value.insert(name.clone(), default.clone());
        }
    }
    match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            for name in given.iter().filter(|n| !properties.contains_key(*n)) {
                let known = if properties.is_empty() {
                    "none".to_owned()
                } else {
                    properties.keys().cloned().collect::<Vec<_>>().join(", ")
                };
                problems.push((
                    format!("{path}.{name}"),
                    format!("unknown input (expected one of: {known})"),
                ));
            }
        }
        Some(extra) => {
            for name in given.iter().filter(|n| !properties.contains_key(*n)) {
                if let Some(v) = value.get_mut(name) {
                    *v = check(
                        extra,
                        std::mem::take(v),
                        &format!("{path}.{name}"),
                        problems,
                    );
                }
            }
        }
    }
    value
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 || !digits(y) || !digits(m) || !digits(d) {
        return false;
    }
    let (year, month, day): (u32, u32, u32) = (
        y.parse().unwrap_or(0),
        m.parse().unwrap_or(0),
        d.parse().unwrap_or(0),
    );
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day)
}

fn valid_time(s: &str) -> bool {
    let (hms, fraction) = match s.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (s, None),
    };
    if fraction.is_some_and(|f| !digits(f)) {
        return false;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return false;
    };
    [h, m, sec].iter().all(|p| p.len() == 2 && digits(p))
        && h.parse::<u32>().unwrap_or(99) < 24
        && m.parse::<u32>().unwrap_or(99) < 60
        && sec.parse::<u32>().unwrap_or(99) < 60
}

fn valid_zone(z: &str) -> bool {
    if z == "Z" || z == "z" {
        return true;
    }
    let Some(rest) = z.strip_prefix('+').or_else(|| z.strip_prefix('-')) else {
        return false;
    };
    matches!(rest.split_once(':'), Some((h, m)) if h.len() == 2 && m.len() == 2 && digits(h)
        && digits(m) && h.parse::<u32>().unwrap_or(99) < 24 && m.parse::<u32>().unwrap_or(99) < 60)
}

fn valid_date_time(s: &str) -> bool {
    if s.len() < 11 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return false;
    }
    let (date, rest) = s.split_at(10);
    if !matches!(&rest[..1], "T" | "t" | " ") {
        return false;
    }
    let rest = &rest[1..];
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    valid_date(date) && valid_time(time) && valid_zone(zone)
}

fn check_format(fmt: &str, value: &str) -> Option<String> {
    let (ok, example) = match fmt {
        "date" => (valid_date(value), "2026-12-06"),
        "date-time" => (valid_date_time(value), "2026-12-06T09:30:00Z"),
        _ => return None,
    };
    (!ok).then(|| {
        format!(
            "expected a {fmt} like '{example}', got {}",
            show(&Value::String(value.to_owned()))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(schema: &Value, inputs: Value) -> Result<Value, String> {
        let Value::Object(map) = inputs else {
            panic!("inputs must be an object")
        };
        validate(schema, map)
            .map(Value::Object)
            .map_err(|p| describe(&p))
    }

    #[test]
    fn good_inputs_pass_with_defaults_filled_in() {
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "day": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["n", "mode"],
            "additionalProperties": false,
        });
        let inputs = json!({"n": 2.0, "day": "2024-02-29", "at": "2026-12-06T09:30:00.5+01:00", "tags": ["x"]});
        let out = run(&schema, inputs).unwrap();
        assert_eq!(out["mode"], json!("a"));
        assert_eq!(out["n"], json!(2.0));
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "maximum": 3},
                "m": {"type": "integer"},
                "day": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "nested": {"type": "object", "properties": {"k": {"type": "boolean"}}},
            },
            "required": ["m"],
            "additionalProperties": false,
        });
        let inputs = json!({
            "n": 5, "day": "2023-02-29", "tags": ["x", 1], "nested": {"k": 1}, "extra": true
        });
        assert_eq!(
            run(&schema, inputs).unwrap_err(),
            "inputs.m: required, missing; inputs.n: expected at most 3, got 5; \
             inputs.day: expected a date like '2026-12-06', got \"2023-02-29\"; \
             inputs.tags[1]: expected string, got 1; inputs.nested.k: expected boolean, got 1; \
             inputs.extra: unknown input (expected one of: n, m, day, tags, nested)"
        );
    }

    #[test]
    fn enums_compare_as_json_and_types_may_be_lists() {
        let schema = json!({"properties": {
            "flag": {"enum": [1, "one"]},
            "maybe": {"type": ["string", "null"]},
        }});
        assert!(run(&schema, json!({"flag": 1.0, "maybe": null})).is_ok());
        assert_eq!(
            run(&schema, json!({"flag": true, "maybe": 3})).unwrap_err(),
            "inputs.flag: expected one of 1, \"one\", got true; \
             inputs.maybe: expected string or null, got 3"
        );
    }
}
