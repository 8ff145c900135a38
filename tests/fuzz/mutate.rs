//! Mutations: of any file at the byte and line level, and of JSON files by their structure.

use proptest::prelude::*;
use proptest::sample::Index;

/// Pieces of YAML and of pipe's language, inserted by mutations.
pub(crate) const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a",
    "!!str ",
    "!tag ",
    "|",
    ">",
    "'",
    "\"",
    "#",
    "\n",
    "  ",
    "\t",
    "---\n",
    "...\n",
    "~",
    "null",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "-0",
    "0x1F",
    "0o17",
    "1_000",
    "1e-2",
    "0.01",
    "true",
    "*",
    "prev.",
    "prev.a",
    "imp.1.a",
    "imp.*.a",
    "*.b",
    "matrix: ",
    "matrix: {value: [1, 1]}",
    "levels: ",
    "count: ",
    "count: 1000",
    "first: ",
    "stages: ",
    "include: [inc.yaml]",
    "include: main.yaml",
    "include: [nowhere.yaml]",
    "kind: ",
    "kind: toy",
    "kind: bogus",
    "inputs: ",
    "inputs: {input: a}",
    "inputs: {inputs: [\"*\"]}",
    "defaults: ",
    "defaults: {toy: {value: 2}}",
    "defaults: {toi: {}}",
    "report: ",
    "select: [\"*\"]",
    "rows: total",
    "values: [total]",
    "value: ",
    "fail: ",
    "log: ",
    "sleep_ms: ",
    "é",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "? ",
    "%YAML 1.2\n",
    "a",
    "b",
    "c",
    "init",
    "train",
    "evaluate",
];

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Delete(Index, u8),
    Insert(Index, Index),
    Byte(Index, u8),
    DupLine(Index),
    DropLine(Index),
    SwapLines(Index, Index),
    Indent(Index, u8),
    Truncate(Index),
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<Index>().prop_map(Mutation::DupLine),
        any::<Index>().prop_map(Mutation::DropLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), 0u8..6).prop_map(|(i, n)| Mutation::Indent(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

pub(crate) fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..=max)
}

pub(crate) fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

pub(crate) fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Delete(i, n) => {
            let s = at(i, bytes.len());
            let e = (s + *n as usize).min(bytes.len());
            bytes.drain(s..e);
        }
        Mutation::Insert(i, t) => {
            let s = at(i, bytes.len());
            let tok = TOKENS[t.index(TOKENS.len())].as_bytes();
            bytes.splice(s..s, tok.iter().copied());
        }
        Mutation::Byte(i, b) => {
            if !bytes.is_empty() {
                let s = i.index(bytes.len());
                bytes[s] = *b;
            }
        }
        Mutation::DupLine(i) | Mutation::DropLine(i) | Mutation::Indent(i, _) => {
            let lines = line_spans(bytes);
            if lines.is_empty() {
                return;
            }
            let (s, e) = lines[i.index(lines.len())];
            match m {
                Mutation::DupLine(_) => {
                    let line: Vec<u8> = bytes[s..e].to_vec();
                    bytes.splice(e..e, line);
                }
                Mutation::DropLine(_) => {
                    bytes.drain(s..e);
                }
                Mutation::Indent(_, n) => {
                    bytes.splice(s..s, std::iter::repeat_n(b' ', *n as usize));
                }
                _ => unreachable!(),
            }
        }
        Mutation::SwapLines(a, b) => {
            let lines = line_spans(bytes);
            if lines.len() < 2 {
                return;
            }
            let (x, y) = (a.index(lines.len()), b.index(lines.len()));
            let (x, y) = (x.min(y), x.max(y));
            if x == y {
                return;
            }
            let mut out = Vec::with_capacity(bytes.len());
            for (k, &(s, e)) in lines.iter().enumerate() {
                let (s, e) = if k == x {
                    lines[y]
                } else if k == y {
                    lines[x]
                } else {
                    (s, e)
                };
                out.extend_from_slice(&bytes[s..e]);
                if !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            *bytes = out;
        }
        Mutation::Truncate(i) => {
            let s = at(i, bytes.len());
            bytes.truncate(s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: a value replaced or removed at a path.

/// JSON values a mutation may put anywhere in a JSON file.
pub(crate) fn json_value(i: usize) -> serde_json::Value {
    use serde_json::json;
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let values = [
        json!(null),
        json!(""),
        json!("é"),
        json!("abc"),
        json!("../../x"),
        json!("0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"),
        json!(1e308),
        json!(-1),
        json!(u64::MAX),
        json!([]),
        json!({}),
        json!({"x": 1}),
        deep,
        json!("ran"),
        json!("hit"),
        json!("-0"),
    ];
    values[i % values.len()].clone()
}

#[derive(Debug, Clone)]
pub(crate) enum CacheMutation {
    Bytes(Vec<Mutation>),
    /// Replace the value at a path (chosen by indices into objects and arrays) or remove it.
    Json {
        path: Vec<Index>,
        value: usize,
        remove: bool,
    },
}

pub(crate) fn cache_mutation() -> impl Strategy<Value = CacheMutation> {
    prop_oneof![
        mutations(4).prop_map(CacheMutation::Bytes),
        (
            prop::collection::vec(any::<Index>(), 1..4),
            0..64usize,
            any::<bool>()
        )
            .prop_map(|(path, value, remove)| CacheMutation::Json {
                path,
                value,
                remove
            }),
    ]
}

pub(crate) fn mutate_json(v: &mut serde_json::Value, path: &[Index], value: usize, remove: bool) {
    let Some((first, rest)) = path.split_first() else {
        *v = json_value(value);
        return;
    };
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(first.index(m.len())).unwrap().clone();
            if rest.is_empty() && remove {
                m.remove(&k);
            } else {
                mutate_json(m.get_mut(&k).unwrap(), rest, value, remove);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            let i = first.index(a.len());
            if rest.is_empty() && remove {
                a.remove(i);
            } else {
                mutate_json(&mut a[i], rest, value, remove);
            }
        }
        _ => *v = json_value(value),
    }
}
