//! A YAML tree that remembers where every node came from.
//!
//! serde-based YAML crates throw positions away once a value is deserialised, but every
//! diagnostic `pipe` prints names a line and column, so the file is read with
//! `saphyr-parser`'s event stream into this small tree instead. Scalars are resolved with the
//! YAML 1.2 core schema; duplicate keys are an error (YAML forbids them and they are almost
//! always a copy-paste mistake in an experiment file); anchors, aliases and `<<` merge keys
//! work as users expect.
//!
//! An alias copies its anchor's subtree, so nested aliases grow exponentially (a 500-byte
//! "billion laughs" file would need gigabytes). The builder therefore bounds both the nodes
//! that aliases produce and the nesting depth, and refuses a file that exceeds either at the
//! alias or collection that crosses the bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::Value;

use super::diag::{Diagnostic, Loc, SourceFile};

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: its text and position.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub loc: Loc,
    /// The scalar as written (`1.2e-3` stays `1.2e-3`), used for readable sweep member names.
    pub raw: Option<String>,
}

impl Node {
    pub fn scalar(s: Scalar, loc: Loc, raw: Option<String>) -> Node {
        Node {
            kind: NodeKind::Scalar(s),
            loc,
            raw,
        }
    }

    pub fn as_map(&self) -> Option<&Vec<(Key, Node)>> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Key, Node)>> {
        match &mut self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// What the user would call this node's type, for "expected a map, found a list" errors.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(Scalar::Null) => "null",
            NodeKind::Scalar(Scalar::Bool(_)) => "a boolean",
            NodeKind::Scalar(Scalar::Int(_)) => "an integer",
            NodeKind::Scalar(Scalar::Float(_)) => "a number",
            NodeKind::Scalar(Scalar::Str(_)) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
        }
    }

    /// The readable text of a scalar (as written), for names and messages.
    pub fn display_text(&self) -> String {
        if let Some(r) = &self.raw {
            return r.clone();
        }
        match &self.kind {
            NodeKind::Scalar(Scalar::Null) => "null".into(),
            NodeKind::Scalar(Scalar::Bool(b)) => b.to_string(),
            NodeKind::Scalar(Scalar::Int(i)) => i.to_string(),
            NodeKind::Scalar(Scalar::Float(f)) => f.to_string(),
            NodeKind::Scalar(Scalar::Str(s)) => s.clone(),
            _ => serde_json::to_string(&self.to_json()).unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar(Scalar::Null) => Value::Null,
            NodeKind::Scalar(Scalar::Bool(b)) => Value::Bool(*b),
            NodeKind::Scalar(Scalar::Int(i)) => Value::from(*i),
            NodeKind::Scalar(Scalar::Float(f)) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::Scalar(Scalar::Str(s)) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Follows a path of map keys and list indices; the deepest node found and whether the
    /// whole path resolved. Used to point a serde error at the exact offending field.
    pub fn locate(&self, path: &[String]) -> (&Node, bool) {
        let mut cur = self;
        for seg in path {
            let next = match &cur.kind {
                NodeKind::Map(m) => m.iter().find(|(k, _)| &k.name == seg).map(|(_, v)| v),
                NodeKind::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => cur = n,
                None => return (cur, false),
            }
        }
        (cur, true)
    }

    /// The location of the key `name` in this map, if present.
    pub fn key_loc(&self, name: &str) -> Option<&Loc> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| &k.loc)
    }
}

fn loc_of(file: &Arc<SourceFile>, span: &Span) -> Loc {
    Loc {
        file: file.clone(),
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
pub fn resolve_plain(s: &str) -> Scalar {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return Scalar::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Scalar::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Scalar::Int(i);
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return Scalar::Float(f);
    }
    Scalar::Str(s.to_string())
}

/// The most nodes that aliases may copy into one file's tree, all aliases together. Real
/// pipelines alias a few small maps (shared defaults); a thousand times more is still far
/// below what would hurt, while an exponential alias chain crosses it within a few levels.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// The deepest nesting of maps and lists allowed (pipelines need fewer than ten levels); it
/// also keeps every recursive walk over the tree far from the end of the stack.
pub const MAX_DEPTH: usize = 64;

/// Nodes in a subtree (itself included) and its depth (a scalar has depth 0).
fn measure(node: &Node) -> (usize, usize) {
    match &node.kind {
        NodeKind::Scalar(_) => (1, 0),
        NodeKind::Seq(items) => items.iter().fold((1, 1), |(n, d), c| {
            let (cn, cd) = measure(c);
            (n + cn, d.max(cd + 1))
        }),
        NodeKind::Map(m) => m.iter().fold((1, 1), |(n, d), (_, c)| {
            let (cn, cd) = measure(c);
            (n + cn, d.max(cd + 1))
        }),
    }
}

/// Parses one YAML document into a located tree.
pub fn parse(file: Arc<SourceFile>) -> Result<Node, Diagnostic> {
    let text = file.text.clone();
    let mut parser = Parser::new_from_str(&text);
    let mut builder = Builder {
        file: file.clone(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        depth: 0,
    };
    let mut root: Option<Node> = None;
    loop {
        let (ev, span) = match parser.next_event() {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => return Err(scan_error(&file, &e)),
        };
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                if root.is_some() {
                    return Err(Diagnostic::at(
                        &loc_of(&file, &span),
                        "a pipeline file holds one YAML document; found a second `---`",
                    )
                    .hint("split the documents into separate files and use `include:`"));
                }
                root = Some(builder.node(&mut parser)?);
            }
            other => {
                return Err(Diagnostic::at(
                    &loc_of(&file, &span),
                    format!("unexpected YAML event {other:?}"),
                ));
            }
        }
    }
    Ok(root.unwrap_or_else(|| {
        Node::scalar(
            Scalar::Null,
            Loc {
                file: file.clone(),
                line: 1,
                col: 1,
            },
            None,
        )
    }))
}

fn scan_error(file: &Arc<SourceFile>, e: &saphyr_parser::ScanError) -> Diagnostic {
    let m = e.marker();
    Diagnostic::at(
        &Loc {
            file: file.clone(),
            line: m.line(),
            col: m.col() + 1,
        },
        format!("invalid YAML: {}", e.info()),
    )
    .hint("check the indentation and that every `key: value` pair has a space after the colon")
}

/// An anchored subtree with its size and depth, measured once when it is anchored.
struct Anchored {
    node: Node,
    nodes: usize,
    depth: usize,
}

struct Builder {
    file: Arc<SourceFile>,
    anchors: HashMap<usize, Anchored>,
    /// Nodes copied by aliases so far (bounded by [`MAX_ALIAS_NODES`]).
    alias_nodes: usize,
    /// How many collections enclose the node being read.
    depth: usize,
}

impl Builder {
    fn next<'a>(
        &self,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    ) -> Result<(Event<'a>, Span), Diagnostic> {
        match parser.next_event() {
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => Err(scan_error(&self.file, &e)),
            None => Err(Diagnostic::bare(format!(
                "{}: unexpected end of YAML",
                self.file.path.display()
            ))),
        }
    }

    /// Reads the node that starts with the next event.
    fn node<'a>(
        &mut self,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    ) -> Result<Node, Diagnostic> {
        let (ev, span) = self.next(parser)?;
        self.node_from(ev, span, parser)
    }

    fn node_from<'a>(
        &mut self,
        ev: Event<'a>,
        span: Span,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
    ) -> Result<Node, Diagnostic> {
        let loc = loc_of(&self.file, &span);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let scalar = if style == ScalarStyle::Plain {
                    resolve_plain(&value)
                } else {
                    Scalar::Str(value.to_string())
                };
                let node = Node::scalar(scalar, loc, Some(value.to_string()));
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => {
                let Some(a) = self.anchors.get(&id) else {
                    return Err(Diagnostic::at(&loc, "alias refers to an unknown anchor"));
                };
                let name = alias_text(&self.file.text, &span);
                if self.depth + a.depth > MAX_DEPTH {
                    return Err(Diagnostic::at(
                        &loc,
                        format!("alias `{name}` nests the document deeper than {MAX_DEPTH} levels"),
                    )
                    .hint("aliases copy their anchor's whole subtree; flatten the structure"));
                }
                self.alias_nodes = self.alias_nodes.saturating_add(a.nodes);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    return Err(Diagnostic::at(
                        &loc,
                        format!(
                            "alias `{name}` copies {} nodes, and with the aliases before it this file's aliases would copy more than {MAX_ALIAS_NODES}",
                            a.nodes
                        ),
                    )
                    .hint("aliases of aliases grow exponentially; write the repeated part once (e.g. under `defaults:`) instead"));
                }
                let mut n = a.node.clone();
                n.loc = loc;
                Ok(n)
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(&loc)?;
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next(parser)?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node_from(ev, span, parser)?);
                }
                self.depth -= 1;
                let node = Node {
                    kind: NodeKind::Seq(items),
                    loc,
                    raw: None,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                self.enter(&loc)?;
                let mut entries: Vec<(Key, Node)> = Vec::new();
                // Names already set here, so that a large map is checked in linear time.
                let mut names: HashSet<String> = HashSet::new();
                let mut merged: Vec<(Key, Node)> = Vec::new();
                loop {
                    let (ev, span) = self.next(parser)?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key_node = self.node_from(ev, span, parser)?;
                    let name = match &key_node.kind {
                        NodeKind::Scalar(_) => key_node.raw.clone().unwrap_or_default(),
                        _ => {
                            return Err(Diagnostic::at(
                                &key_node.loc,
                                "mapping keys must be plain strings",
                            ));
                        }
                    };
                    let value = self.node(parser)?;
                    if name == "<<" {
                        // Merge key: the merged map's entries count only where not set here.
                        let sources = match &value.kind {
                            NodeKind::Map(_) => vec![value],
                            NodeKind::Seq(items) => items.clone(),
                            _ => {
                                return Err(Diagnostic::at(
                                    &value.loc,
                                    "`<<` must be followed by an alias of a map (or a list of them)",
                                ));
                            }
                        };
                        for s in sources {
                            if let NodeKind::Map(m) = s.kind {
                                merged.extend(m);
                            }
                        }
                        continue;
                    }
                    if !names.insert(name.clone())
                        && let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name)
                    {
                        return Err(Diagnostic::at(
                            &key_node.loc,
                            format!("duplicate key `{name}`"),
                        )
                        .hint(format!(
                            "it was first set at line {}; remove one of the two",
                            first.loc.line
                        )));
                    }
                    entries.push((
                        Key {
                            name,
                            loc: key_node.loc,
                        },
                        value,
                    ));
                }
                for (k, v) in merged {
                    if names.insert(k.name.clone()) {
                        entries.push((k, v));
                    }
                }
                self.depth -= 1;
                let node = Node {
                    kind: NodeKind::Map(entries),
                    loc,
                    raw: None,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            other => Err(Diagnostic::at(
                &loc,
                format!("unexpected YAML event {other:?}"),
            )),
        }
    }

    /// Steps into a collection, refusing to go deeper than [`MAX_DEPTH`].
    fn enter(&mut self, loc: &Loc) -> Result<(), Diagnostic> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Diagnostic::at(
                loc,
                format!("maps and lists nest deeper than {MAX_DEPTH} levels here"),
            )
            .hint(
                "a pipeline needs only a few levels of nesting; check the indentation and brackets",
            ));
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            let (nodes, depth) = measure(node);
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    nodes,
                    depth,
                },
            );
        }
    }
}

/// The alias as written (`*name`), from its span (whose positions count characters).
fn alias_text(text: &str, span: &Span) -> String {
    let (start, end) = (span.start.index(), span.end.index());
    let s: String = text
        .chars()
        .skip(start)
        .take(end.saturating_sub(start).min(80))
        .collect();
    if s.starts_with('*') { s } else { "*".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p(s: &str) -> Result<Node, Diagnostic> {
        parse(Arc::new(SourceFile {
            path: PathBuf::from("t.yaml"),
            text: s.to_string(),
        }))
    }

    #[test]
    fn resolves_core_schema_scalars() {
        let n = p("a: 1\nb: 1.2e-3\nc: true\nd: ~\ne: '1'\nf: hello\n").unwrap();
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a": 1, "b": 0.0012, "c": true, "d": null, "e": "1", "f": "hello"})
        );
        assert_eq!(n.get("b").unwrap().display_text(), "1.2e-3");
        assert_eq!(n.get("f").unwrap().loc.line, 6);
        assert_eq!(n.get("f").unwrap().loc.col, 4);
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let e = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.message, "duplicate key `a`");
        assert_eq!(e.loc.as_ref().unwrap().line, 3);
        assert_eq!(
            e.hint.as_deref(),
            Some("it was first set at line 1; remove one of the two")
        );
    }

    #[test]
    fn anchors_and_merge_keys() {
        let n = p("base: &b {lr: 0.1, batch: 60}\nx:\n  <<: *b\n  lr: 0.2\n").unwrap();
        assert_eq!(
            n.get("x").unwrap().to_json(),
            serde_json::json!({"lr": 0.2, "batch": 60})
        );
    }

    #[test]
    fn alias_chains_are_bounded_at_the_alias() {
        // Seven levels of ten would copy ten million nodes.
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, cur) in ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g"])
        {
            let items = vec![format!("*{prev}"); 10].join(", ");
            text.push_str(&format!("{cur}: &{cur} [{items}]\n"));
        }
        let e = p(&text).unwrap_err();
        assert!(
            e.message.starts_with("alias `*d` copies 11111 nodes"),
            "{}",
            e.message
        );
        let loc = e.loc.unwrap();
        assert_eq!((loc.line, loc.col), (5, 36));
    }

    #[test]
    fn ordinary_aliases_stay_well_within_the_bound() {
        let mut text = String::from("base: &b {lr: 0.1, batch: 60, schedule: {kind: step}}\n");
        for i in 0..500 {
            text.push_str(&format!("s{i}: {{<<: *b, seed: {i}}}\n"));
        }
        let n = p(&text).unwrap();
        assert_eq!(n.get("s499").unwrap().get("batch").unwrap().to_json(), 60);
    }

    #[test]
    fn nesting_is_bounded_with_a_location() {
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(p(&ok).is_ok());
        let deep = format!("a:\n  {}x", "- ".repeat(MAX_DEPTH + 1));
        let e = p(&deep).unwrap_err();
        assert_eq!(
            e.message,
            format!("maps and lists nest deeper than {MAX_DEPTH} levels here")
        );
        assert_eq!(e.loc.unwrap().line, 2);
        // An alias that would carry a subtree past the bound is refused at the alias.
        let nested = format!(
            "x: &x {}1{}\ny: {}*x{}",
            "[".repeat(40),
            "]".repeat(40),
            "[".repeat(30),
            "]".repeat(30)
        );
        let e = p(&nested).unwrap_err();
        assert!(e.message.starts_with("alias `*x` nests"), "{}", e.message);
        assert_eq!(e.loc.unwrap().line, 2);
    }
}
