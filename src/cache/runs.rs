//! Run records: what one `pipe run` did (which stage had which key, hit or ran, how long, its
//! parameters and headline metrics). `runs`, `diff`, `show` and `gc` read them.

use std::fs;
use std::path::{Path, PathBuf};

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::store::{CacheError, is_key};
use crate::report::claim_eval::ClaimResult;
use crate::spec::{PlotSpec, ReportSpec};

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
    /// Ran on from an interrupted attempt's progress checkpoint at this much work done (a
    /// training's iterations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<u64>,
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
    /// The `report:` the pipeline declared, so that `pipe report` and `pipe show` can rebuild
    /// the table (and export it) without the YAML, which may have changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_spec: Option<ReportSpec>,
    /// The `plots:` the pipeline declared, for the same reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plots: Vec<PlotSpec>,
    /// The outcome of each claim the pipeline states (`claims:`), evaluated after the run.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::report::claim_eval::lenient"
    )]
    pub claims: Vec<ClaimResult>,
    /// The pipeline files as they were when the run started (path as given, text), so that a
    /// report shows what ran even after the files changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<(PathBuf, String)>,
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

/// The record as stored, untyped: fields added by later versions (e.g. claims) stay visible.
pub fn raw(cache: &Path, id: &str) -> Result<Value, CacheError> {
    let path = runs_dir(cache).join(format!("{id}.json"));
    let text = fs::read_to_string(&path).map_err(|source| CacheError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CacheError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The temporary name a record is written under before it is renamed into place.
fn tmp_name(id: &str) -> String {
    format!(".{id}.tmp")
}

pub fn save(cache: &Path, rec: &RunRecord) -> Result<PathBuf, CacheError> {
    let dir = runs_dir(cache);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{}.json", rec.id));
    let tmp = dir.join(tmp_name(&rec.id));
    let text = serde_json::to_string_pretty(rec).expect("run records serialise");
    // The lock tells `pipe gc` that this partial record has a live writer.
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        let _ = f.lock();
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// Checks what later code relies on: the id names the file (`gc` removes records by id) and
/// every key is a key (it is sliced for display and joined into paths).
fn check(path: &Path, rec: &RunRecord) -> Result<(), String> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if stem.as_deref() != Some(rec.id.as_str()) {
        return Err(format!(
            "its id `{}` is not its file name",
            super::store::short(&rec.id, 40)
        ));
    }
    for s in &rec.stages {
        if !is_key(&s.key) {
            return Err(format!(
                "stage `{}` has key `{}`, which is not 64 hex digits",
                super::store::short(&s.name, 80),
                super::store::short(&s.key, 80)
            ));
        }
    }
    Ok(())
}

/// Reads one run record, checked.
pub fn read(path: &Path) -> Result<RunRecord, CacheError> {
    let bad = |reason: String| CacheError::BadRecord {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read(path).map_err(|e| bad(e.to_string()))?;
    let rec: RunRecord = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    check(path, &rec).map_err(bad)?;
    Ok(rec)
}

/// Every run record, oldest first, and the errors of those that cannot be read.
pub fn load(cache: &Path) -> (Vec<RunRecord>, Vec<CacheError>) {
    let dir = runs_dir(cache);
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    let Ok(rd) = fs::read_dir(&dir) else {
        return (out, bad);
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
        match read(&p) {
            Ok(r) => out.push(r),
            Err(e) => bad.push(e),
        }
    }
    (out, bad)
}

/// Every readable run record, oldest first; unreadable ones are skipped with a warning that
/// names the file and what is wrong with it.
pub fn list(cache: &Path) -> Result<Vec<RunRecord>, CacheError> {
    let (out, bad) = load(cache);
    for e in bad {
        tracing::warn!("{e}; skipping it");
    }
    Ok(out)
}

/// The folder of a run's job files and logs (runs on Slurm or as `pipe worker` processes), and
/// of the files made from it (plots, the HTML report); `gc` removes it with the record.
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

/// Partial records (`.<id>.tmp`) that no live writer holds and that are older than `grace`:
/// left by a process killed while writing, or by a write that failed.
pub fn partial(cache: &Path, grace: std::time::Duration) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(runs_dir(cache)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with('.') && name.ends_with(".tmp") && stale(p, grace)
        })
        .collect();
    out.sort();
    out
}

/// Not modified within `grace` and not locked by a writer.
pub(crate) fn stale(p: &Path, grace: std::time::Duration) -> bool {
    let old = fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= grace);
    old && fs::File::open(p).is_ok_and(|f| f.try_lock().is_ok())
}

/// Finds a run by id, unique id prefix, `last`, or `-N` (N-th from last).
pub fn resolve<'a>(runs: &'a [RunRecord], spec: &str) -> Result<&'a RunRecord, String> {
    if runs.is_empty() {
        return Err("there are no run records yet; `pipe run FILE` makes one".into());
    }
    if let Some(r) = relative(&runs.iter().collect::<Vec<_>>(), spec, "")? {
        return Ok(r);
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

/// Whether `spec` names a run by its place (`last`, `-N`) rather than by its id.
fn is_relative(spec: &str) -> bool {
    spec == "last"
        || spec
            .strip_prefix('-')
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// `last` or `-N` among `runs` (oldest first; `what` says which runs they are, for errors);
/// `None` when `spec` is an id.
fn relative<'a>(
    runs: &[&'a RunRecord],
    spec: &str,
    what: &str,
) -> Result<Option<&'a RunRecord>, String> {
    if !is_relative(spec) {
        return Ok(None);
    }
    let n = spec.strip_prefix('-').map_or(Ok(1), str::parse::<usize>);
    // `-1` is the last run; `-0` names none.
    match n {
        Ok(0) => Err("`-0` names no run: `-1` is the last one, `-2` the one before".into()),
        Ok(n) => runs
            .len()
            .checked_sub(n)
            .map(|i| Some(runs[i]))
            .ok_or_else(|| {
                format!(
                    "`{spec}`: there {} only {} run{}{what}",
                    if runs.len() == 1 { "is" } else { "are" },
                    runs.len(),
                    if runs.len() == 1 { "" } else { "s" }
                )
            }),
        Err(_) => Ok(None),
    }
}

/// The two runs `pipe diff A B` compares. A run named by its place (`last`, `-N`) counts
/// among the runs of the other run's pipeline (of the newest run's, when both are named by
/// place), so that `pipe diff -2 last` compares the last two runs of one pipeline even after
/// another file ran; `any_pipeline` counts over every run instead.
pub fn resolve_pair<'a>(
    runs: &'a [RunRecord],
    a: &str,
    b: &str,
    any_pipeline: bool,
) -> Result<(&'a RunRecord, &'a RunRecord), String> {
    if any_pipeline || (!is_relative(a) && !is_relative(b)) {
        return Ok((resolve(runs, a)?, resolve(runs, b)?));
    }
    let anchor = match (is_relative(a), is_relative(b)) {
        (true, false) => resolve(runs, b)?,
        (false, true) => resolve(runs, a)?,
        _ => resolve(runs, "last")?,
    };
    let same: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.pipeline == anchor.pipeline)
        .collect();
    let what = format!(
        " of pipeline `{}` (`--any-pipeline` counts every run)",
        anchor.pipeline
    );
    let pick = |spec: &str| -> Result<&'a RunRecord, String> {
        match relative(&same, spec, &what)? {
            Some(r) => Ok(r),
            None => resolve(runs, spec),
        }
    };
    Ok((pick(a)?, pick(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            pipeline: "p".into(),
            files: vec![],
            overrides: vec![],
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 0.0,
            device: "cpu".into(),
            executor: None,
            outcome: "ok".into(),
            stages: vec![StageRecord {
                name: "a".into(),
                kind: "toy".into(),
                key: "0f".repeat(32),
                status: StageStatus::Ran,
                duration_s: 0.0,
                params: Value::Null,
                metrics: Value::Null,
                error: None,
                job: None,
                resumed_at: None,
            }],
            report: None,
            pipe_version: "0".into(),
            report_spec: None,
            plots: vec![],
            claims: vec![],
            sources: vec![],
        }
    }

    #[test]
    fn relative_run_specs_count_from_the_last() {
        let runs = vec![record("r1"), record("r2")];
        assert_eq!(resolve(&runs, "-1").unwrap().id, "r2");
        assert_eq!(resolve(&runs, "-2").unwrap().id, "r1");
        assert_eq!(resolve(&runs, "last").unwrap().id, "r2");
        assert_eq!(
            resolve(&runs, "-0").unwrap_err(),
            "`-0` names no run: `-1` is the last one, `-2` the one before"
        );
        assert_eq!(
            resolve(&runs, "-3").unwrap_err(),
            "`-3`: there are only 2 runs"
        );
    }

    #[test]
    fn a_relative_run_counts_within_the_other_runs_pipeline() {
        let of = |id: &str, pipeline: &str| RunRecord {
            pipeline: pipeline.into(),
            ..record(id)
        };
        // p ran twice, then q once.
        let runs = vec![of("p1", "p"), of("p2", "p"), of("q1", "q")];
        let ids = |a: &str, b: &str, any: bool| {
            let (x, y) = resolve_pair(&runs, a, b, any).unwrap();
            (x.id.clone(), y.id.clone())
        };
        // Both by place: among the newest run's pipeline, which ran once.
        assert!(resolve_pair(&runs, "-2", "last", false).is_err());
        assert_eq!(ids("-2", "last", true), ("p2".into(), "q1".into()));
        assert_eq!(ids("-2", "p2", false), ("p1".into(), "p2".into()));
        assert_eq!(ids("p2", "-1", false), ("p2".into(), "p2".into()));
        assert_eq!(ids("-2", "p2", true), ("p2".into(), "p2".into()));
        assert_eq!(ids("p1", "q1", false), ("p1".into(), "q1".into()));
        let e = resolve_pair(&runs, "-2", "q1", false).unwrap_err();
        assert_eq!(
            e,
            "`-2`: there is only 1 run of pipeline `q` (`--any-pipeline` counts every run)"
        );
    }

    #[test]
    fn truncated_or_edited_records_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = save(dir.path(), &record("20260101-000000-aaaa")).unwrap();
        let text = fs::read_to_string(&good).unwrap();
        let runs = dir.path().join("runs");
        fs::write(runs.join("t.json"), &text[..text.len() / 2]).unwrap();
        let mut short_key = record("k");
        short_key.stages[0].key = "0f0".into();
        fs::write(
            runs.join("k.json"),
            serde_json::to_string(&short_key).unwrap(),
        )
        .unwrap();
        fs::write(
            runs.join("other.json"),
            serde_json::to_string(&record("../../x")).unwrap(),
        )
        .unwrap();
        let (ok, bad) = load(dir.path());
        assert_eq!(ok.len(), 1);
        let bad: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("k.json") && bad[0].contains("`0f0`, which is not 64 hex digits"));
        assert!(bad[1].contains("other.json") && bad[1].contains("is not its file name"));
        assert!(
            bad[2].contains("t.json") && bad[2].contains("EOF"),
            "{}",
            bad[2]
        );
    }

    #[test]
    fn a_failed_save_leaves_no_partial_record() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a folder, so the final rename fails.
        fs::create_dir_all(dir.path().join("runs/r1.json/x")).unwrap();
        assert!(save(dir.path(), &record("r1")).is_err());
        assert!(!dir.path().join("runs/.r1.tmp").exists());
    }

    #[test]
    fn partial_records_are_stale_only_when_old_and_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("runs")).unwrap();
        let p = dir.path().join("runs/.r1.tmp");
        let f = fs::File::create(&p).unwrap();
        let grace = std::time::Duration::from_secs(60);
        assert!(partial(dir.path(), grace).is_empty(), "fresh");
        f.set_modified(std::time::SystemTime::now() - 2 * grace)
            .unwrap();
        f.lock().unwrap();
        assert!(partial(dir.path(), grace).is_empty(), "locked by a writer");
        f.unlock().unwrap();
        assert_eq!(partial(dir.path(), grace), vec![p]);
    }
}
