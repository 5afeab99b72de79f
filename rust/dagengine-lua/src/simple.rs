//! Conditions simple enough to evaluate without Lua: a chunk that returns a boolean
//! constant (`return (true)`) or a plain field read (`return (inputs.go)`,
//! `return results.a.ok`). [`evaluate_bool`](crate::evaluate_bool) answers those in Rust
//! when the field it reads holds a boolean, and runs the chunk in Lua otherwise (a missing
//! field, `null`, any other value, a parent that is not there), so what it reports is what
//! Lua would: such a chunk calls nothing, allocates nothing and loops nowhere, so no limit
//! can stop it and no error can come from it when the field is a boolean.
//!
//! The recogniser accepts a strict subset of Lua's grammar: `return`, any number of
//! balanced parentheses around `true`, `false`, or `inputs`/`results` followed by one to four
//! `.name`s, with whitespace anywhere between tokens; no comments, no `;`, ASCII names
//! that are not keywords. Everything else goes to Lua.

use serde_json::Value;

/// What a simple condition is. Kept inline in its [`LuaScript`](crate::LuaScript), with its
/// names as ranges of the script's source: a DAG's conditions are read one per node in the
/// order the nodes run, and each pointer more to follow is a cache miss more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simple {
    /// `true` or `false`.
    Const(bool),
    /// `inputs.k1.k2...`: the fields of the run's inputs, in order.
    Inputs(Path),
    /// `results.parent.k1...`: the parent's id, then the fields of its output.
    Results(Path),
}

/// The most names a field path may have (more: left to Lua).
const MAX_KEYS: usize = 4;

/// The names of a field path, as byte ranges of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path {
    len: u8,
    keys: [(u16, u16); MAX_KEYS],
}

impl Path {
    /// The path's names in `source` (the one it was read from).
    fn keys(self, source: &str) -> impl Iterator<Item = Option<&str>> {
        self.keys
            .into_iter()
            .take(usize::from(self.len))
            .map(move |(a, b)| source.get(usize::from(a)..usize::from(b)))
    }
}

const KEYWORDS: [&str; 22] = [
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Name(&'a str),
    Dot,
    Open,
    Close,
}

/// Lua's tokens of `source` if it only has names, `.`, `(` and `)` (whitespace between
/// them); `None` for anything else.
fn tokens(source: &str) -> Option<Vec<Token<'_>>> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            // Lua's `lisspace` in the C locale.
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'.' => {
                // `..` (concatenation) and `...` (varargs) are other tokens; `.5` a number.
                if bytes
                    .get(i + 1)
                    .is_some_and(|&n| n == b'.' || n.is_ascii_digit())
                {
                    return None;
                }
                out.push(Token::Dot);
                i += 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push(Token::Name(&source[start..i]));
            }
            _ => return None,
        }
    }
    Some(out)
}

impl Simple {
    /// The simple condition `source` is, if it is one (see the module docs).
    pub(crate) fn of(source: &str) -> Option<Simple> {
        let tokens = tokens(source)?;
        let [Token::Name("return"), rest @ ..] = tokens.as_slice() else {
            return None;
        };
        let opens = rest.iter().take_while(|t| **t == Token::Open).count();
        let closes = rest
            .iter()
            .rev()
            .take_while(|t| **t == Token::Close)
            .count();
        if opens != closes || opens * 2 >= rest.len() {
            return None;
        }
        let body = &rest[opens..rest.len() - closes];
        match body {
            [Token::Name("true")] => Some(Simple::Const(true)),
            [Token::Name("false")] => Some(Simple::Const(false)),
            [Token::Name(root), fields @ ..]
                if !fields.is_empty() && fields.len() % 2 == 0 && fields.len() / 2 <= MAX_KEYS =>
            {
                let mut path = Path {
                    len: 0,
                    keys: [(0, 0); MAX_KEYS],
                };
                for pair in fields.chunks(2) {
                    let [Token::Dot, Token::Name(key)] = pair else {
                        return None;
                    };
                    if KEYWORDS.contains(key) {
                        return None;
                    }
                    // `key` is a slice of `source`.
                    let start = key.as_ptr() as usize - source.as_ptr() as usize;
                    let range = (
                        u16::try_from(start).ok()?,
                        u16::try_from(start + key.len()).ok()?,
                    );
                    path.keys[usize::from(path.len)] = range;
                    path.len += 1;
                }
                match *root {
                    "inputs" => Some(Simple::Inputs(path)),
                    "results" => Some(Simple::Results(path)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The condition's value where Lua's is certainly this boolean; `None` where the
    /// chunk has to run in Lua to say what it is. `source` is the one it was read from.
    pub(crate) fn value(
        &self,
        source: &str,
        inputs: &Value,
        results: &[(&str, &Value)],
    ) -> Option<bool> {
        let (mut value, mut keys) = match self {
            Simple::Const(b) => return Some(*b),
            Simple::Inputs(path) => (inputs, path.keys(source)),
            Simple::Results(path) => {
                let mut keys = path.keys(source);
                let parent = keys.next()??;
                // The last entry of a repeated id is the one Lua's table keeps.
                let (_, output) = results.iter().rev().find(|(id, _)| *id == parent)?;
                (*output, keys)
            }
        };
        for key in &mut keys {
            value = value.as_object()?.get(key?)?;
        }
        value.as_bool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What `Simple::of(src)` read, as text: the kind and the path's names.
    fn read(src: &str) -> Option<(&'static str, Vec<&str>)> {
        Some(match Simple::of(src)? {
            Simple::Const(true) => ("true", vec![]),
            Simple::Const(false) => ("false", vec![]),
            Simple::Inputs(p) => ("inputs", p.keys(src).map(Option::unwrap).collect()),
            Simple::Results(p) => ("results", p.keys(src).map(Option::unwrap).collect()),
        })
    }

    #[test]
    fn recognises_constants_and_field_reads() {
        assert_eq!(read("return (true\n)"), Some(("true", vec![])));
        assert_eq!(read("return false"), Some(("false", vec![])));
        assert_eq!(read("return((false))"), Some(("false", vec![])));
        assert_eq!(read("return (inputs.go\n)"), Some(("inputs", vec!["go"])));
        assert_eq!(
            read(" return ( results . a .ok_2 ) "),
            Some(("results", vec!["a", "ok_2"]))
        );
        assert_eq!(
            read("return inputs.a.b.c.d"),
            Some(("inputs", vec!["a", "b", "c", "d"]))
        );
    }

    #[test]
    fn leaves_everything_else_to_lua() {
        for src in [
            "return (inputs\n)",
            "return (results\n)",
            "return (ctx.node_id\n)",
            "return (nil\n)",
            "return (inputs.go -- why\n)",
            "return (inputs.go;\n)",
            "return (inputs.go == true\n)",
            "return (not inputs.go\n)",
            "return (inputs.end\n)",
            "return (inputs.go.\n)",
            "return (inputs..go\n)",
            "return (inputs.go\n",
            "return inputs.go)",
            "return ()",
            "return (inputs[\"go\"]\n)",
            "return (inputs.go()\n)",
            "return (inputs.g\u{e9}\n)",
            "inputs.go",
            "returninputs.go",
            "return (true) (false)",
            "return (true\n) or (false)",
            "return inputs.a.b.c.d.e",
            "return",
            "",
        ] {
            assert_eq!(Simple::of(src), None, "{src:?}");
        }
    }

    #[test]
    fn a_value_only_for_a_boolean_field() {
        let inputs = json!({"go": true, "no": false, "n": 1, "z": null, "o": {"deep": false}});
        let a = json!({"ok": true});
        let b = json!([true]);
        let results: [(&str, &Value); 2] = [("a", &a), ("b", &b)];
        let of = |src: &str| Simple::of(src).unwrap().value(src, &inputs, &results);
        assert_eq!(of("return inputs.go"), Some(true));
        assert_eq!(of("return inputs.no"), Some(false));
        assert_eq!(of("return inputs.o.deep"), Some(false));
        assert_eq!(of("return results.a.ok"), Some(true));
        assert_eq!(of("return true"), Some(true));
        for src in [
            "return inputs.n",
            "return inputs.z",
            "return inputs.missing",
            "return inputs.go.deeper",
            "return inputs.o",
            "return results.a",
            "return results.b.ok",
            "return results.c.ok",
        ] {
            assert_eq!(of(src), None, "{src:?}");
        }
    }

    /// The answer without Lua is the answer with it, for every value a field can hold
    /// (differential: each case also runs the chunk in Lua).
    #[test]
    fn answers_as_lua_does() {
        use crate::engine::with_engine;
        use crate::{Inputs, LuaLimits, LuaScript, NodeInfo};
        use std::sync::Arc;

        let values = [
            json!(true),
            json!(false),
            json!(null),
            json!(0),
            json!(1),
            json!(1.5),
            json!(""),
            json!("true"),
            json!([]),
            json!([true]),
            json!({}),
            json!({"deep": true}),
            json!({"deep": false}),
            json!({"deep": null}),
        ];
        let expressions = [
            "true",
            "false",
            "((true))",
            "inputs.go",
            "inputs.o.deep",
            "inputs.missing",
            "inputs . go",
            "results.a.ok",
            "results.a.ok.deep",
            "results.b.ok",
            "results.a",
        ];
        let info = NodeInfo {
            node_id: "n",
            run_id: "r",
            attempt: 1,
        };
        let limits = LuaLimits {
            max_instructions: Some(10_000_000),
            ..LuaLimits::default()
        };
        let mut fast = 0;
        for (i, v) in values.iter().enumerate() {
            let w = &values[values.len() - 1 - i];
            let inputs = Arc::new(json!({"go": v, "o": w}));
            let out = json!({"ok": v});
            let other = json!({"ok": w});
            // `a` twice: Lua's table keeps the last.
            let results: [(&str, &Value); 3] = [("a", &other), ("c", &out), ("a", &out)];
            for expression in expressions {
                let script = LuaScript::new(format!("return ({expression}\n)"));
                assert!(script.simple.is_some(), "{expression}");
                for given in [Inputs::Shared(&inputs), Inputs::Once(&inputs)] {
                    let answer =
                        crate::evaluate_bool(&script, given, &results, &info, &limits, None);
                    let in_lua = with_engine(|e| {
                        e.evaluate_bool(&script, given, &results, &info, &limits, None)
                    });
                    assert_eq!(answer, in_lua, "{expression} with {v} and {w}");
                }
                fast += usize::from(
                    script
                        .simple
                        .unwrap()
                        .value(&script.source, &inputs, &results)
                        .is_some(),
                );
            }
        }
        // The Rust answer served a good part of the cases (every boolean field).
        assert!(fast > 50, "{fast}");
    }
}
