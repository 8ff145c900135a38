//! Run records: what one `pipe run` did (which stage had which key, hit or ran, how long, its
//! parameters and headline metrics). `runs`, `diff`, `show` and `gc` read them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::store::CacheError;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Found in the cache, verified, not recomputed.
    Hit,
    Ran,
    Failed,
    /// Not run because a stage it consumes failed.
    Skipped,
    /// Not run because the run stopped (first failure without --keep-going, or Ctrl-C).
    NotRun,
    /// Handed to an executor that runs it on its own (`pipe run --detach`); not finished
    /// when the record was written.
    Queued,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Hit => "hit",
            StageStatus::Ran => "ran",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
            StageStatus::NotRun => "not run",
            StageStatus::Queued => "queued",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub status: StageStatus,
    pub duration_s: f64,
    pub params: Value,
    pub metrics: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The executor's id for the job that computed (or will compute) it: a Slurm job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub files: Vec<PathBuf>,
    pub overrides: Vec<String>,
    pub started_at: String,
    pub duration_s: f64,
    pub device: String,
    /// Where jobs ran when not in this process (`slurm`, `ssh`, `subprocess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// ok, failed, interrupted, or detached (jobs still queued when `pipe run` returned).
    pub outcome: String,
    pub stages: Vec<StageRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    pub pipe_version: String,
}

impl RunRecord {
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// How many of the run's stages ended with `status`.
    pub fn count(&self, status: StageStatus) -> usize {
        self.stages.iter().filter(|s| s.status == status).count()
    }
}

fn runs_dir(cache: &Path) -> PathBuf {
    cache.join("runs")
}

pub fn save(cache: &Path, rec: &RunRecord) -> Result<PathBuf, CacheError> {
    let dir = runs_dir(cache);
    fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{}.json", rec.id));
    let tmp = dir.join(format!(".{}.tmp", rec.id));
    let text = serde_json::to_string_pretty(rec).expect("run records serialise");
    fs::write(&tmp, text).map_err(|source| CacheError::Io {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, &path).map_err(|source| CacheError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Every run record, oldest first. Unreadable records are skipped with a warning.
pub fn list(cache: &Path) -> Result<Vec<RunRecord>, CacheError> {
    let dir = runs_dir(cache);
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    for p in paths {
        match fs::read_to_string(&p)
            .ok()
            .and_then(|t| serde_json::from_str::<RunRecord>(&t).ok())
        {
            Some(r) => out.push(r),
            None => tracing::warn!("skipping unreadable run record {}", p.display()),
        }
    }
    Ok(out)
}

/// The folder of a run's job files and logs (runs on Slurm or as `pipe worker` processes).
pub fn run_folder(cache: &Path, id: &str) -> PathBuf {
    runs_dir(cache).join(id)
}

/// Removes a run record and its folder, if it has one.
pub fn remove(cache: &Path, id: &str) -> Result<(), CacheError> {
    let path = runs_dir(cache).join(format!("{id}.json"));
    fs::remove_file(&path).map_err(|source| CacheError::Io { path, source })?;
    let folder = run_folder(cache, id);
    if folder.is_dir() {
        fs::remove_dir_all(&folder).map_err(|source| CacheError::Io {
            path: folder,
            source,
        })?;
    }
    Ok(())
}

/// Finds a run by id, unique id prefix, `last`, or `-N` (N-th from last).
pub fn resolve<'a>(runs: &'a [RunRecord], spec: &str) -> Result<&'a RunRecord, String> {
    if runs.is_empty() {
        return Err("there are no run records yet; `pipe run FILE` makes one".into());
    }
    if spec == "last" {
        return Ok(runs.last().expect("non-empty"));
    }
    if let Some(n) = spec.strip_prefix('-').and_then(|n| n.parse::<usize>().ok()) {
        return runs
            .len()
            .checked_sub(n)
            .map(|i| &runs[i])
            .ok_or_else(|| format!("there are only {} runs", runs.len()));
    }
    let matches: Vec<&RunRecord> = runs.iter().filter(|r| r.id.starts_with(spec)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no run `{spec}`; `pipe runs` lists them")),
        many => Err(format!(
            "`{spec}` matches {} runs; give more of the id",
            many.len()
        )),
    }
}
