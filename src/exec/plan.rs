//! Keys for every stage, in dependency order, and for each stage that will run, why.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use crate::cache::key::diff_values;
use crate::cache::{PreImage, Store, digest_file};
use crate::spec::{Diagnostic, Diagnostics, Instance, Loc, Pipeline};
use crate::stages::Registry;

/// Why a stage will run (or that it will not).
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    Cached,
    /// No entry was ever made under this stage's name.
    NoEntry,
    /// The entry last made under this name had a different pre-image: `(field, old, new)`.
    Changed(Vec<(String, Value, Value)>),
    /// Same key as last time, but the entry is gone (removed by `gc`, or set aside as corrupt).
    EntryMissing,
}

#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub instance: Instance,
    pub key: String,
    /// The kind's version the key was made with.
    pub version: u32,
    pub preimage: PreImage,
    pub why: Why,
    /// `(done, total)` of the progress checkpoint an interrupted attempt left, when the stage
    /// will run and resume from it.
    pub resumes_at: Option<(u64, u64)>,
}

impl PlannedStage {
    pub fn cached(&self) -> bool {
        self.why == Why::Cached
    }
}

#[derive(Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    pub stages: Vec<PlannedStage>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

pub fn plan(pipeline: Pipeline, registry: &Registry, store: &Store) -> Result<Plan, PlanError> {
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut stages = Vec::with_capacity(pipeline.instances.len());
    let mut errors = Vec::new();
    // A missing data folder is one error, however many stages read from it (a wrong
    // `data.dir` in `defaults` reaches every training): at the first stage, naming them all.
    let mut missing: Vec<(PathBuf, Loc, Vec<String>)> = Vec::new();
    for inst in &pipeline.instances {
        let kind = registry.get(&inst.kind).expect("spec checked kinds");
        let mut data = BTreeMap::new();
        for path in kind.external_inputs(&inst.params) {
            if let Some(dir) = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                match missing.iter_mut().find(|(d, _, _)| d == dir) {
                    Some((_, _, names)) if names.last() != Some(&inst.name) => {
                        names.push(inst.name.clone())
                    }
                    Some(_) => {}
                    // Where the folder was written: the stage's own `data.dir`, or the
                    // `defaults` line that all the stages reading it share.
                    None => missing.push((
                        dir.to_path_buf(),
                        inst.param_locs.get("data.dir").unwrap_or(&inst.loc).clone(),
                        vec![inst.name.clone()],
                    )),
                }
                continue;
            }
            match digest_file(&path) {
                Ok(d) => {
                    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    data.insert(name, d);
                }
                Err(e) => errors.push(
                    Diagnostic::at(&inst.loc, format!("stage `{}` reads {}: {e}", inst.name, path.display()))
                        .hint("point the stage's `data.dir` at the folder that holds the dataset files (relative paths are relative to the current directory)"),
                ),
            }
        }
        let deps = match dep_digests(&kind.deps(&inst.params)) {
            Ok(d) => d,
            Err(msg) => {
                let loc = inst.param_locs.get("deps").unwrap_or(&inst.loc);
                errors.push(Diagnostic::at(loc, format!("stage `{}`: {msg}", inst.name)).hint(
                    "deps are relative to the directory `pipe run` runs in, like `data.dir`; fix the path or create the file",
                ));
                BTreeMap::new()
            }
        };
        let inputs: Vec<(String, Vec<String>)> = inst
            .inputs
            .iter()
            .map(|(role, names)| {
                (
                    role.clone(),
                    names
                        .iter()
                        .map(|n| keys.get(n).cloned().unwrap_or_default())
                        .collect(),
                )
            })
            .collect();
        let pre = PreImage::new(
            &inst.kind,
            kind.version(),
            kind.key_params(inst.params.clone()),
            &inputs,
            &data,
        )
        .with_deps(&deps);
        let key = pre.key();
        keys.insert(inst.name.clone(), key.clone());
        let why = if store.is_complete(&key) {
            Why::Cached
        } else {
            match store.last_for_name(&inst.name) {
                None => Why::NoEntry,
                Some(last) if last == key => Why::EntryMissing,
                Some(last) => match store.read_manifest(&last) {
                    Ok(m) => Why::Changed(diff_values(&m.preimage, &pre.0)),
                    Err(_) => Why::NoEntry,
                },
            }
        };
        let resumes_at = match why {
            Why::Cached => None,
            _ => store.resume_area(&key).peek(),
        };
        stages.push(PlannedStage {
            instance: inst.clone(),
            key,
            version: kind.version(),
            preimage: pre,
            why,
            resumes_at,
        });
    }
    let mut first = Vec::new();
    for (dir, loc, names) in missing {
        let reads = if names.len() == 1 {
            "reads its"
        } else {
            "read their"
        };
        let resolved = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
        let mut msg = format!(
            "{} {reads} data from {}",
            crate::spec::stage_list(&names),
            dir.display()
        );
        if resolved != dir {
            msg.push_str(&format!(" ({})", resolved.display()));
        }
        msg.push_str(", which is not a folder");
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        first.push(Diagnostic::at(&loc, msg).hint(format!(
            "point `data.dir` at the folder that holds the dataset files; a relative path is relative to the current directory ({cwd}), not to the pipeline file"
        )));
    }
    errors.splice(0..0, first);
    if !errors.is_empty() {
        return Err(Diagnostics(errors).into());
    }
    Ok(Plan { pipeline, stages })
}

/// The digest of every file a stage's deps name, by its path as written (a folder's files
/// under the folder's path, sorted; `__pycache__` folders and hidden entries skipped, as
/// running a script creates them).
fn dep_digests(deps: &[PathBuf]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for dep in deps {
        let meta = std::fs::metadata(dep).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("dep {} does not exist", dep.display()),
            _ => format!("dep {}: {e}", dep.display()),
        })?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            walk_dep(dep, &mut files).map_err(|e| format!("dep {}: {e}", dep.display()))?;
            files.sort();
            files
        } else {
            vec![dep.clone()]
        };
        for f in files {
            let d = digest_file(&f).map_err(|e| format!("dep {}: {e}", f.display()))?;
            out.insert(f.to_string_lossy().into_owned(), d);
        }
    }
    Ok(out)
}

fn walk_dep(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path)?.is_dir() {
            walk_dep(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

impl Why {
    /// One line for `pipe plan`, naming upstream stages by name rather than by key.
    pub fn describe(&self, inst: &Instance) -> String {
        match self {
            Why::Cached => "cached".into(),
            Why::NoEntry => "no entry yet".into(),
            Why::EntryMissing => "entry removed (gc) or set aside as corrupt".into(),
            Why::Changed(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(path, old, new)| {
                        if let Some(role) = path.strip_prefix("inputs.") {
                            let ups = inst
                                .inputs
                                .iter()
                                .find(|(r, _)| r == role)
                                .map(|(_, n)| n.join(", "))
                                .unwrap_or_default();
                            format!("upstream `{ups}` changed")
                        } else if let Some(p) = path.strip_prefix("params.") {
                            format!("{p}: {} → {}", short(old), short(new))
                        } else if let Some(f) = path.strip_prefix("deps.") {
                            format!("dep {f} changed")
                        } else if let Some(f) = path.strip_prefix("data.") {
                            format!("input data {f} changed")
                        } else if path == "version" {
                            format!("stage version {} → {}", short(old), short(new))
                        } else {
                            format!("{path} changed")
                        }
                    })
                    .collect();
                let mut parts = parts;
                parts.dedup();
                parts.join("; ")
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = crate::report::fmt_value(v);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}
