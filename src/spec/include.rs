//! Reading pipeline files and merging them (and their `include:`s) into one located tree.
//!
//! Included files come first, the including file after, so the including file's `defaults`
//! win. A stage defined in two files must be defined identically (then it is one stage, with
//! one key); otherwise it is an error naming both places.
//!
//! `defaults` are scoped by the include tree: a stage sees the defaults of its own file, of the
//! files that file includes (transitively), and of the files that include it (the nearer
//! includer winning, the files named on the command line and `-S defaults.…` last). It never
//! sees a sibling's: a file that includes two papers' pipelines (`pipelines/seeds.yaml`) leaves
//! each one's stages exactly as they are when that pipeline runs alone, so their keys, and
//! their cached results, are shared.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diag::{Diagnostic, Diagnostics, Loc, SourceFile, choices_hint};
use super::yaml::{self, Key, Node, NodeKind};

pub const TOP_LEVEL_KEYS: &[&str] = &[
    "pipeline",
    "include",
    "defaults",
    "stages",
    "levels",
    "report",
    "plots",
    "resources",
    "claims",
];

pub struct Merged {
    pub name: String,
    pub files: Vec<PathBuf>,
    /// The merged tree; its `defaults` are those of the files named on the command line (where
    /// `-S defaults.…` lands), the outermost layer of every stage's defaults.
    pub root: Node,
    pub scopes: DefaultScopes,
}

/// The layers of the defaults of each file's stages (see the module documentation): the inner
/// ones by the file's path as its stages' locations name it, and the outer one, the command
/// line's (the top files' own defaults, then `-S defaults.…`).
pub struct DefaultScopes {
    by_file: Vec<(PathBuf, Node)>,
    top: Node,
}

impl DefaultScopes {
    /// The outermost layer, which every stage sees last.
    pub fn top(&self) -> &Node {
        &self.top
    }

    /// Applies an override of `defaults.…` (already checked against the merged tree) to the
    /// outermost layer.
    pub fn apply_override(&mut self, o: &super::Override) -> Result<(), Diagnostic> {
        if o.path.first().map(String::as_str) != Some("defaults") || o.path.len() < 2 {
            return Ok(());
        }
        let inner = super::Override {
            path: o.path[1..].to_vec(),
            ..o.clone()
        };
        super::overrides::apply_creating(&mut self.top, &inner)
    }

    /// The defaults a stage defined in `file` sees before the command line's layer.
    pub fn inner(&self, file: &Path) -> Option<&Node> {
        self.by_file.iter().find(|(p, _)| p == file).map(|(_, n)| n)
    }

    /// Every inner layer, to be checked like the top-level `defaults`.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.by_file.iter().map(|(_, n)| n)
    }
}

/// The entries of a map node.
type Entries = Vec<(Key, Node)>;

/// What one loaded file contributes to the scoping of `defaults`.
struct FileScope {
    /// As the file's stages' locations name it.
    path: PathBuf,
    own: Vec<(Key, Node)>,
    /// Files it includes (indices into `Loader::scopes`), in order.
    children: Vec<usize>,
    /// The file that included it first; `None` for the files named on the command line.
    parent: Option<usize>,
}

struct Loader {
    files: Vec<PathBuf>,
    /// Canonical paths of files already merged (a file included twice is merged once).
    seen: Vec<PathBuf>,
    scopes: Vec<FileScope>,
    stages: Vec<(Key, Node)>,
    levels: Vec<(Key, Node)>,
    report: Option<(Key, Node)>,
    plots: Option<(Key, Node)>,
    /// Merged like `defaults`: the including file's requests win, field by field.
    resources: Vec<(Key, Node)>,
    /// Claims of every file, merged into one namespace (a name defined twice is an error).
    claims: Vec<(Key, Node)>,
    errors: Vec<Diagnostic>,
}

pub fn load_merged(paths: &[PathBuf]) -> Result<Merged, Diagnostics> {
    if paths.is_empty() {
        return Err(Diagnostic::bare("no pipeline file given")
            .hint("pipe run pipelines/lottery_vs_rethinking.yaml")
            .into());
    }
    let mut l = Loader {
        files: Vec::new(),
        seen: Vec::new(),
        scopes: Vec::new(),
        stages: Vec::new(),
        levels: Vec::new(),
        report: None,
        plots: None,
        resources: Vec::new(),
        claims: Vec::new(),
        errors: Vec::new(),
    };
    let mut name = None;
    for p in paths {
        let n = l.load(p, None, &mut Vec::new(), None);
        if name.is_none() {
            name = n;
        }
    }
    let (top, by_file) = l.scoped_defaults();
    // The merged tree keeps every file's defaults together, as written: overrides are checked
    // against it (`-S defaults.train.data.train_subset=…` needs a `data` block in some file)
    // and its kinds are checked once. Stages see the scoped layers instead.
    let mut defaults = Vec::new();
    for s in &l.scopes {
        for (k, v) in &s.own {
            merge_into(&mut defaults, k, v);
        }
    }
    if !l.errors.is_empty() {
        return Err(Diagnostics(l.errors));
    }
    let name = name.unwrap_or_else(|| {
        paths[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    let first_loc = Loc {
        file: Arc::new(SourceFile {
            path: paths[0].clone(),
            text: String::new(),
        }),
        line: 1,
        col: 1,
    };
    let mk = |entries: Vec<(Key, Node)>| Node {
        kind: NodeKind::Map(entries),
        loc: first_loc.clone(),
        raw: None,
    };
    let key = |n: &str| Key {
        name: n.to_string(),
        loc: first_loc.clone(),
    };
    let mut top_level = vec![
        (key("defaults"), mk(defaults)),
        (key("stages"), mk(l.stages)),
        (key("levels"), mk(l.levels)),
    ];
    top_level.extend(l.report);
    top_level.extend(l.plots);
    if !l.resources.is_empty() {
        top_level.push((key("resources"), mk(l.resources)));
    }
    if !l.claims.is_empty() {
        top_level.push((key("claims"), mk(l.claims)));
    }
    let scopes = DefaultScopes {
        by_file,
        top: mk(top),
    };
    Ok(Merged {
        name,
        files: l.files,
        root: mk(top_level),
        scopes,
    })
}

impl Loader {
    /// Loads one file and its includes; returns its `pipeline:` name if it has one.
    /// `stack` holds the files being loaded: canonical path (to detect cycles) and the path as
    /// the user wrote it (to show it).
    fn load(
        &mut self,
        path: &Path,
        from: Option<&Loc>,
        stack: &mut Vec<(PathBuf, PathBuf)>,
        parent: Option<usize>,
    ) -> Option<String> {
        let canonical = match std::fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot read pipeline file {}: {e}", path.display());
                let d = match from {
                    Some(loc) => Diagnostic::at(loc, msg),
                    None => Diagnostic::bare(msg),
                };
                self.errors.push(
                    d.hint("check the path; included files are relative to the including file"),
                );
                return None;
            }
        };
        if stack.iter().any(|(c, _)| c == &canonical) {
            let chain = stack
                .iter()
                .map(|(_, shown)| shown)
                .chain(std::iter::once(&path.to_path_buf()))
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" → ");
            let d = Diagnostic::bare(format!("include cycle: {chain}"));
            self.errors.push(match from {
                Some(loc) => Diagnostic {
                    loc: Some(loc.clone()),
                    ..d
                },
                None => d,
            });
            return None;
        }
        if self.seen.contains(&canonical) {
            return None;
        }
        self.seen.push(canonical.clone());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                self.errors.push(match from {
                    Some(loc) => Diagnostic::at(loc, msg),
                    None => Diagnostic::bare(msg),
                });
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                self.errors
                    .push(not_utf8(path, e.as_bytes(), e.utf8_error()));
                return None;
            }
        };
        let file = Arc::new(SourceFile {
            path: path.to_path_buf(),
            text,
        });
        let me = self.scopes.len();
        self.scopes.push(FileScope {
            path: path.to_path_buf(),
            own: Vec::new(),
            children: Vec::new(),
            parent,
        });
        if let Some(p) = parent {
            self.scopes[p].children.push(me);
        }
        let root = match yaml::parse(file) {
            Ok(r) => r,
            Err(d) => {
                self.errors.push(d);
                return None;
            }
        };
        let Some(entries) = root.as_map() else {
            self.errors.push(
                Diagnostic::at(
                    &root.loc,
                    format!("a pipeline file is a map, found {}", root.type_name()),
                )
                .hint("start with `stages:`"),
            );
            return None;
        };
        for (k, _) in entries {
            if !TOP_LEVEL_KEYS.contains(&k.name.as_str()) {
                self.errors.push(
                    Diagnostic::at(&k.loc, format!("unknown top-level key `{}`", k.name))
                        .hint(choices_hint(&k.name, TOP_LEVEL_KEYS)),
                );
            }
        }
        stack.push((canonical, path.to_path_buf()));
        if let Some(inc) = root.get("include") {
            let items: Vec<&Node> = match &inc.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                _ => vec![inc],
            };
            for item in items {
                match item.as_str() {
                    Some(rel) => {
                        let p = path.parent().unwrap_or(Path::new(".")).join(rel);
                        self.load(&p, Some(&item.loc), stack, Some(me));
                    }
                    None => self.errors.push(Diagnostic::at(
                        &item.loc,
                        format!("`include` takes file paths, found {}", item.type_name()),
                    )),
                }
            }
        }
        stack.pop();
        self.files.push(path.to_path_buf());

        let name = match root.get("pipeline") {
            None => None,
            Some(n) => match n.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    self.errors.push(Diagnostic::at(
                        &n.loc,
                        "`pipeline` is the pipeline's name, a string",
                    ));
                    None
                }
            },
        };
        if let Some(d) = root.get("defaults") {
            match d.as_map() {
                Some(m) => {
                    for (k, v) in m {
                        merge_into(&mut self.scopes[me].own, k, v);
                    }
                }
                None => self.errors.push(expected_map("defaults", d)),
            }
        }
        if let Some(r) = root.get("resources") {
            match r.as_map() {
                Some(m) => {
                    for (k, v) in m {
                        merge_into(&mut self.resources, k, v);
                    }
                }
                None => self.errors.push(expected_map("resources", r)),
            }
        }
        for section in ["stages", "levels"] {
            let Some(s) = root.get(section) else { continue };
            let Some(m) = s.as_map() else {
                self.errors.push(expected_map(section, s));
                continue;
            };
            for (k, v) in m {
                let target = if section == "stages" {
                    &mut self.stages
                } else {
                    &mut self.levels
                };
                match target.iter().find(|(e, _)| e.name == k.name) {
                    Some((_, existing)) if existing.to_json() == v.to_json() => {}
                    Some((first, _)) => {
                        let at = format!("{}:{}", first.loc.path().display(), first.loc.line);
                        self.errors.push(
                            Diagnostic::at(
                                &k.loc,
                                format!("`{}` is defined twice, differently", k.name),
                            )
                            .hint(format!(
                                "the other definition is at {at}; rename one of them"
                            )),
                        );
                    }
                    None => target.push((k.clone(), v.clone())),
                }
            }
        }
        self.merge_claims(&root);
        // Views (`report:`, `plots:`): the including file's replace its includes'.
        for (k, v) in root.as_map().into_iter().flatten() {
            match k.name.as_str() {
                "report" => self.report = Some((k.clone(), v.clone())),
                "plots" => self.plots = Some((k.clone(), v.clone())),
                _ => {}
            }
        }
        name
    }
}

impl Loader {
    /// Claims are merged, not replaced: a pipeline that includes others states their claims
    /// too (`pipelines/seeds.yaml` states every paper's). Claim names are one namespace, like
    /// stage names, so the same name in two files is an error naming both.
    fn merge_claims(&mut self, root: &Node) {
        let Some(c) = root.get("claims") else { return };
        let Some(m) = c.as_map() else {
            self.errors.push(expected_map("claims", c));
            return;
        };
        for (k, v) in m {
            match self.claims.iter().find(|(e, _)| e.name == k.name) {
                Some((first, _)) => {
                    let at = format!("{}:{}", first.loc.path().display(), first.loc.line);
                    self.errors.push(
                        Diagnostic::at(
                            &k.loc,
                            format!(
                                "claim `{}` is defined in {} and in {at}",
                                k.name,
                                k.loc.path().display()
                            ),
                        )
                        .hint("claims of included files share one namespace; rename one of them"),
                    );
                }
                None => self.claims.push((k.clone(), v.clone())),
            }
        }
    }

    /// The command line's layer (the top files' own defaults) and each file's inner layers.
    fn scoped_defaults(&self) -> (Entries, Vec<(PathBuf, Node)>) {
        let mut top = Vec::new();
        for s in self.scopes.iter().filter(|s| s.parent.is_none()) {
            for (k, v) in &s.own {
                merge_into(&mut top, k, v);
            }
        }
        let by_file = (0..self.scopes.len())
            .map(|i| {
                // Its includes' defaults, then its own, then each includer's own, nearest
                // first, stopping below the top files (their layer is `top`).
                let mut layers = self.subtree(i);
                let mut at = self.scopes[i].parent;
                while let Some(p) = at {
                    if self.scopes[p].parent.is_none() {
                        break;
                    }
                    for (k, v) in &self.scopes[p].own {
                        merge_into(&mut layers, k, v);
                    }
                    at = self.scopes[p].parent;
                }
                let loc = self.scopes[i]
                    .own
                    .first()
                    .map(|(k, _)| k.loc.clone())
                    .or_else(|| layers.first().map(|(k, _)| k.loc.clone()));
                (self.scopes[i].path.clone(), layers, loc)
            })
            .filter_map(|(path, layers, loc)| {
                let loc = loc?;
                Some((
                    path,
                    Node {
                        kind: NodeKind::Map(layers),
                        loc,
                        raw: None,
                    },
                ))
            })
            .collect();
        (top, by_file)
    }

    /// The defaults of file `i` as if it were run alone, without its includers: its includes'
    /// (in order, each with its own includes) under its own.
    fn subtree(&self, i: usize) -> Vec<(Key, Node)> {
        let mut out = Vec::new();
        for &c in &self.scopes[i].children {
            for (k, v) in self.subtree(c) {
                merge_into(&mut out, &k, &v);
            }
        }
        for (k, v) in &self.scopes[i].own {
            merge_into(&mut out, k, v);
        }
        out
    }
}

/// A file that is not UTF-8: the first bad byte's offset, line and column, with the line shown
/// (the bad bytes replaced) so the user can find it.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostic {
    let at = e.valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters, as everywhere else; the prefix is valid UTF-8.
    let col = String::from_utf8_lossy(&bytes[line_start..at])
        .chars()
        .count()
        + 1;
    let bad = bytes
        .get(at..at + e.error_len().unwrap_or(1))
        .unwrap_or(&[])
        .iter()
        .map(|b| format!("0x{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let file = Arc::new(SourceFile {
        path: path.to_path_buf(),
        text: String::from_utf8_lossy(bytes).into_owned(),
    });
    Diagnostic::at(
        &Loc { file, line, col },
        format!("the file is not UTF-8 text: byte {bad} at byte offset {at} (line {line}) is not valid UTF-8"),
    )
    .hint("save the file as UTF-8 (pipeline files are YAML, which is Unicode text)")
}

fn expected_map(section: &str, n: &Node) -> Diagnostic {
    Diagnostic::at(
        &n.loc,
        format!("`{section}` must be a map, found {}", n.type_name()),
    )
}

/// Deep-merges `v` into `entries[k]`: maps merge key by key, anything else is replaced.
pub fn merge_into(entries: &mut Vec<(Key, Node)>, k: &Key, v: &Node) {
    match entries.iter_mut().find(|(e, _)| e.name == k.name) {
        Some((_, existing)) => deep_merge(existing, v),
        None => entries.push((k.clone(), v.clone())),
    }
}

pub fn deep_merge(base: &mut Node, over: &Node) {
    match (&mut base.kind, &over.kind) {
        (NodeKind::Map(b), NodeKind::Map(o)) => {
            for (k, v) in o {
                merge_into(b, k, v);
            }
        }
        _ => *base = over.clone(),
    }
}
