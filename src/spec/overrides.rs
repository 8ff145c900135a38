//! `-S path=value` overrides: applied to the merged tree exactly as if written in the file, so
//! they are validated the same way and enter the keys the same way.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::diag::{Diagnostic, SourceFile, choices_hint};
use super::yaml::{self, Key, Node, NodeKind};

#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: String,
    pub text: String,
}

impl FromStr for Override {
    type Err = Diagnostic;
    fn from_str(s: &str) -> Result<Self, Diagnostic> {
        let Some((path, value)) = s.split_once('=') else {
            return Err(Diagnostic::bare(format!("override `{s}` has no `=`"))
                .hint("write -S stages.dense.lr=0.1 or -S defaults.train.iterations=50000"));
        };
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(
                Diagnostic::bare(format!("override `{s}` has an empty path segment"))
                    .hint("segments are separated by single dots: stages.dense.lr=0.1"),
            );
        }
        Ok(Override {
            path,
            value: value.to_string(),
            text: s.to_string(),
        })
    }
}

/// Parses the value as YAML (so `[1, 2]`, `0.1` and `adam` mean what they mean in a file).
fn value_node(o: &Override) -> Result<Node, Diagnostic> {
    let file = Arc::new(SourceFile {
        path: PathBuf::from(format!("<-S {}>", o.text)),
        text: o.value.clone(),
    });
    yaml::parse(file)
}

pub fn apply(root: &mut Node, o: &Override) -> Result<(), Diagnostic> {
    set(root, o, false)
}

/// Applies an override already validated by [`apply`] on the merged tree to another tree (a
/// layer of the scoped defaults) where its intermediate maps may not exist yet.
pub fn apply_creating(root: &mut Node, o: &Override) -> Result<(), Diagnostic> {
    set(root, o, true)
}

fn set(root: &mut Node, o: &Override, create: bool) -> Result<(), Diagnostic> {
    let value = value_node(o)?;
    let mut cur = root;
    for (i, seg) in o.path.iter().enumerate() {
        let last = i + 1 == o.path.len();
        // Under `defaults`, a kind's block may be created by the override; elsewhere only the
        // final key may be new (an override must not invent stages or groups by a typo).
        let may_create = create || last || (i == 1 && o.path[0] == "defaults");
        let loc = cur.loc.clone();
        let Some(map) = cur.as_map_mut() else {
            return Err(Diagnostic::bare(format!(
                "override `{}`: `{}` is not a map",
                o.text,
                o.path[..i].join(".")
            )));
        };
        let pos = map.iter().position(|(k, _)| &k.name == seg);
        let idx = match pos {
            Some(p) => p,
            None if may_create => {
                map.push((
                    Key {
                        name: seg.clone(),
                        // A key the override introduces points at the override itself.
                        loc: if last { value.loc.clone() } else { loc.clone() },
                    },
                    Node {
                        kind: NodeKind::Map(Vec::new()),
                        loc: loc.clone(),
                        raw: None,
                    },
                ));
                map.len() - 1
            }
            None => {
                let names: Vec<&str> = map.iter().map(|(k, _)| k.name.as_str()).collect();
                return Err(Diagnostic::bare(format!(
                    "override `{}`: no `{seg}` under `{}`",
                    o.text,
                    if i == 0 {
                        "the top level".to_string()
                    } else {
                        o.path[..i].join(".")
                    }
                ))
                .hint(choices_hint(seg, &names)));
            }
        };
        if last {
            map[idx].1 = value;
            return Ok(());
        }
        cur = &mut map[idx].1;
    }
    Ok(())
}
