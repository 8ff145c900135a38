//! The YAML language: files → one merged, located tree → a flat list of stage instances with
//! stable names, normalised parameters and resolved inputs.
//!
//! Nothing downstream of this module reads YAML again.

pub mod claims;
pub mod diag;
mod expand;
mod include;
mod metric_names;
mod overrides;
pub mod plots;
pub mod resources;
pub mod yaml;

use std::path::PathBuf;

use serde_json::Value;

pub use claims::ClaimSpec;
pub use diag::{Diagnostic, Diagnostics, Loc};
pub use diag::{choices_hint, did_you_mean};
pub use expand::{glob_match, stage_list};
pub use overrides::Override;
pub use plots::{PlotSpec, SeriesBy, is_replicate};
pub use resources::{ResourceRequest, Resources};

use crate::stages::Registry;

/// One concrete stage after includes, defaults, overrides, levels and sweeps are expanded.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable, readable name: `dense`, `ticket[lr=1.2e-3]`, `imp.3.prune`.
    pub name: String,
    /// The name of the stage as written (inside a level group: `group.stage`).
    pub template: String,
    pub kind: String,
    /// Parameters after defaults and overrides, normalised by the kind (all fields present).
    pub params: Value,
    /// Role → the instances it consumes, in the order written.
    pub inputs: Vec<(String, Vec<String>)>,
    /// Sweep assignment (variable → value as written), own and inherited, sorted by variable.
    pub assignment: Vec<(String, String)>,
    /// `(group, level)` for stages expanded from a `levels:` group.
    pub level: Option<(String, u32)>,
    pub loc: Loc,
    /// Where each scalar parameter was written, by dotted path (`data.dir`): in the stage, in
    /// `defaults:` or on the command line, so that a problem found later (at plan time) is
    /// reported where it can be fixed. Parameters left at the kind's default are absent.
    pub param_locs: std::collections::BTreeMap<String, Loc>,
}

/// What `report:` asks for at the end of a run: a pivot table over evaluated stages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    #[serde(default)]
    pub title: String,
    /// Glob patterns (`*` matches any run of characters) over stage names.
    pub select: Vec<String>,
    /// The metric whose value labels a row (e.g. `remaining_pct`).
    pub rows: String,
    /// Metrics shown in each cell.
    pub values: Vec<String>,
    /// Sweep variables whose members are replicates, shown as mean ± std (n) in one column.
    /// Unset: variables named `seed` or ending in `.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicates: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// Every file read, the named ones and their includes.
    pub files: Vec<PathBuf>,
    /// In a topological order (each stage after everything it consumes).
    pub instances: Vec<Instance>,
    pub report: Option<ReportSpec>,
    /// Figures declared under `plots:` (views only: no part of any key).
    pub plots: Vec<PlotSpec>,
    /// What stages ask of a cluster scheduler; never part of a key.
    pub resources: Resources,
    /// Claims declared under `claims:` (views: no part of any key), in the order written.
    pub claims: Vec<ClaimSpec>,
}

impl Pipeline {
    pub fn get(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }
}

/// Reads, merges and expands pipeline files. Several files are merged into one graph, so that
/// stages defined identically in two files are one stage (and the same key).
pub fn load(
    files: &[PathBuf],
    overrides: &[Override],
    registry: &Registry,
) -> Result<Pipeline, Diagnostics> {
    let merged = include::load_merged(files)?;
    let mut root = merged.root;
    let mut scopes = merged.scopes;
    for o in overrides {
        overrides::apply(&mut root, o)?;
        scopes.apply_override(o)?;
    }
    let (instances, report) = expand::expand(&root, &scopes, registry)?;
    let plots = plots::parse(root.get("plots"), &instances).map_err(Diagnostics)?;
    let resources = resources::parse(root.get("resources"), &instances, &registry.names())
        .map_err(Diagnostics)?;
    let claims = claims::parse(root.get("claims"), &instances).map_err(Diagnostics)?;
    let unknown = metric_names::check(
        &root,
        &instances,
        report.as_ref(),
        &plots,
        &claims,
        registry,
    );
    if !unknown.is_empty() {
        return Err(Diagnostics(unknown));
    }
    Ok(Pipeline {
        name: merged.name,
        files: merged.files,
        instances,
        report,
        plots,
        resources,
        claims,
    })
}
