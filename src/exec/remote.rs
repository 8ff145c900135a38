//! What executors that run `pipe worker` elsewhere (child processes, Slurm jobs) share: the
//! files of a job in the run's folder, the worker's result file, and how a job that ended is
//! judged — by the cache first (an entry that is complete is a success, whoever made it), then
//! by what the worker wrote, then by the log.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::job::{Finished, JobSpec};
use crate::cache::{StageStatus, Store, file_safe, os_error_in};

/// Where a job's description, result, log and script live, in the run's folder
/// (`<cache>/runs/<run-id>/`). Names are the stage's (made file-safe) and the key's start, so
/// a user finds a stage's log by its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFiles {
    pub job: PathBuf,
    pub result: PathBuf,
    pub log: PathBuf,
    pub script: PathBuf,
}

impl JobFiles {
    pub fn new(run_dir: &Path, stage: &str, key: &str) -> JobFiles {
        let stem = format!("{}-{}", file_safe(stage), &key[..12.min(key.len())]);
        JobFiles {
            job: run_dir.join(format!("{stem}.job.json")),
            result: result_path(&run_dir.join(format!("{stem}.job.json"))),
            log: run_dir.join(format!("{stem}.log")),
            script: run_dir.join(format!("{stem}.sh")),
        }
    }
}

/// Where `pipe worker JOB.json` writes how the job ended: `JOB.result.json`.
pub fn result_path(job: &Path) -> PathBuf {
    let name = job
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".job.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(&name);
    job.with_file_name(format!("{stem}.result.json"))
}

/// What a worker writes when its job ends (a killed worker writes nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// `ran`, `hit`, `failed` or `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    pub host: String,
    /// A failure caused by an OS I/O error (see [`Finished::Failed`]); absent (false) in
    /// results written by a pipe before it was recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub io: bool,
}

impl WorkerResult {
    pub fn of(end: &Finished) -> WorkerResult {
        let (status, error, seconds, io) = match end {
            Finished::Done {
                status, seconds, ..
            } => (status.as_str().to_string(), None, *seconds, false),
            Finished::Failed { error, io, .. } => ("failed".into(), Some(error.clone()), 0.0, *io),
            Finished::Cancelled => ("cancelled".into(), None, 0.0, false),
        };
        WorkerResult {
            status,
            error,
            seconds,
            host: crate::clock::hostname(),
            io,
        }
    }

    pub fn read(path: &Path) -> Option<WorkerResult> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("JSON"))?;
        std::fs::rename(&tmp, path)
    }
}

/// How a job whose worker has exited ended, as far as the cache and the worker's result file
/// tell; `None` when neither does (the worker was killed before it could write anything).
pub fn judge(store: &Store, key: &str, files: &JobFiles) -> Option<Finished> {
    let result = WorkerResult::read(&files.result);
    if store.is_complete(key) {
        return match store.read_manifest(key) {
            Ok(m) => {
                let hit = result.as_ref().is_some_and(|r| r.status == "hit");
                Some(Finished::Done {
                    status: if hit {
                        StageStatus::Hit
                    } else {
                        StageStatus::Ran
                    },
                    seconds: result.map_or(m.duration_s, |r| r.seconds),
                    manifest: Box::new(m),
                })
            }
            Err(e) => Some(Finished::Failed {
                error: e.to_string(),
                detail: None,
                io: os_error_in(&e).is_some(),
            }),
        };
    }
    let r = result?;
    match r.status.as_str() {
        "cancelled" => Some(Finished::Cancelled),
        // Reported done, but the entry is not visible (yet, on a lagging shared file system).
        "ran" | "hit" => None,
        _ => Some(Finished::Failed {
            error: r.error.unwrap_or_else(|| "the worker failed".into()),
            detail: log_tail(&files.log, LOG_TAIL),
            io: r.io,
        }),
    }
}

/// Lines of a failed job's log shown under its error.
pub const LOG_TAIL: usize = 15;

/// The last `n` lines of a log, with its path, for a failure message.
pub fn log_tail(path: &Path, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    Some(format!(
        "last {} line(s) of {}:\n{}",
        tail.len(),
        path.display(),
        tail.join("\n")
    ))
}

/// The command line that runs `job` with the binary `exe` against the cache `cache`.
pub fn worker_argv(exe: &Path, cache: &Path, extra: &[String], job: &Path) -> Vec<String> {
    let mut argv = vec![
        exe.display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    argv.extend(extra.iter().cloned());
    argv.push("worker".into());
    argv.push(job.display().to_string());
    argv
}

/// `s` quoted for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes the job's description into its run folder and returns its files.
pub fn write_job(run_dir: &Path, job: &JobSpec) -> Result<JobFiles, String> {
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let files = JobFiles::new(run_dir, &job.stage, &job.key);
    job.write(&files.job).map_err(|e| e.to_string())?;
    // A result left by an earlier attempt of the same stage in this run must not be read as
    // this attempt's.
    let _ = std::fs::remove_file(&files.result);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_are_named_by_stage_and_key_and_file_safe() {
        let f = JobFiles::new(
            Path::new("/c/runs/r1"),
            "imp.1.ticket[lr=1e-2]",
            "0123456789abcdef",
        );
        assert_eq!(
            f.job,
            Path::new("/c/runs/r1/imp.1.ticket_lr_1e-2_-0123456789ab.job.json")
        );
        assert_eq!(
            f.result,
            Path::new("/c/runs/r1/imp.1.ticket_lr_1e-2_-0123456789ab.result.json")
        );
        assert_eq!(
            f.log,
            Path::new("/c/runs/r1/imp.1.ticket_lr_1e-2_-0123456789ab.log")
        );
        assert_eq!(
            result_path(Path::new("/x/job.json")),
            Path::new("/x/job.result.json")
        );
    }

    #[test]
    fn an_io_failure_crosses_in_the_result_file_and_older_results_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let files = JobFiles::new(dir.path(), "a", &"0f".repeat(32));
        let end = Finished::Failed {
            error: "No space left on device".into(),
            detail: None,
            io: true,
        };
        WorkerResult::of(&end).write(&files.result).unwrap();
        let text = std::fs::read_to_string(&files.result).unwrap();
        assert!(text.contains("\"io\": true"), "{text}");
        let judged = judge(&store, &"0f".repeat(32), &files);
        assert!(
            matches!(judged, Some(Finished::Failed { io: true, ref error, .. }) if error == "No space left on device"),
            "{judged:?}"
        );
        // A result written before the field existed, or for a stage that failed by itself.
        std::fs::write(
            &files.result,
            r#"{"status": "failed", "error": "boom", "seconds": 0.0, "host": "h"}"#,
        )
        .unwrap();
        let judged = judge(&store, &"0f".repeat(32), &files);
        assert!(
            matches!(judged, Some(Finished::Failed { io: false, .. })),
            "{judged:?}"
        );
        let stage_failed = WorkerResult::of(&Finished::failed("boom"));
        assert!(!serde_json::to_string(&stage_failed).unwrap().contains("io"));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        let t = log_tail(&p, 2).unwrap();
        assert!(t.ends_with(":\n3\n4"), "{t}");
        assert!(t.starts_with("last 2 line(s) of "), "{t}");
    }
}
