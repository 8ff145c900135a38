//! `--executor slurm`: every job is one `sbatch` of `pipe worker JOB.json` against the shared
//! cache, queued with `--dependency=afterok:<ids>` on the jobs it consumes, so the whole plan
//! is queued at once and Slurm starts each job when its inputs exist.
//!
//! Progress comes from polling `squeue` (not `sacct`, which needs accounting that many
//! clusters, and the test cluster, do not run). How a job ended is read from the cache first (a
//! complete entry is a success, whoever made it), then from the worker's result file, then
//! from Slurm's final state and the job's log. Jobs are queued with
//! `--kill-on-invalid-dep=yes`, so that when a job fails Slurm itself removes what waits on it
//! (`afterok` would otherwise leave them pending as DependencyNeverSatisfied) even after a
//! `--detach`ed `pipe run` has returned; an attached run cancels them too.
//!
//! Each submission leaves a marker `<cache>/slurm/<key>.json` naming its job, so that a later
//! `pipe run` (after `--detach`, or another user's run) follows a job still in the queue
//! instead of submitting the same work again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::executor::{Executor, Report, Submitted, Ticket};
use super::job::{Finished, JobSpec};
use super::remote::{self, JobFiles, LOG_TAIL, WorkerResult, sh_quote};
use crate::cache::{RunRecord, StageStatus, Store, runs};
use crate::spec::Resources;

pub struct SlurmConfig {
    /// The `pipe` binary the jobs run; compute nodes must see it at this path.
    pub exe: PathBuf,
    /// The shared cache, as an absolute path (the same on every node).
    pub cache: PathBuf,
    pub run_id: String,
    /// Where job descriptions, scripts and logs go: the run's folder in the cache.
    pub run_dir: PathBuf,
    /// The jobs' working directory (relative dataset paths resolve against it).
    pub workdir: PathBuf,
    /// Global flags handed to every worker (`--threads 4`, `-v`).
    pub worker_args: Vec<String>,
    pub resources: Resources,
    /// How often `squeue` is asked.
    pub poll: Duration,
}

/// How long one `sbatch`, `squeue` or `scancel` may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `squeue` may keep failing (a restarting controller) before jobs count as lost.
const SQUEUE_GIVE_UP: Duration = Duration::from_secs(600);
/// How long to wait for the entry of a job Slurm calls COMPLETED to become visible (a shared
/// file system's attribute cache may show the old directory listing for a while).
const VISIBILITY_GRACE: Duration = Duration::from_secs(10);

struct Tracked {
    key: String,
    files: JobFiles,
    started: bool,
    cancelled: bool,
    /// Submitted by an earlier run; followed, never cancelled by this one.
    adopted: bool,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Tracked>,
    reports: VecDeque<Report>,
    last_poll: Option<Instant>,
    failing_since: Option<Instant>,
    adopted: HashSet<String>,
}

pub struct SlurmExecutor {
    cfg: SlurmConfig,
    store: Store,
    inner: Mutex<Inner>,
}

/// The marker of a submitted job, `<cache>/slurm/<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    job: String,
    stage: String,
    run: String,
    files: JobFiles,
}

/// A job's state as `squeue` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    pub state: String,
    pub reason: String,
}

impl QueueState {
    /// Whether the job has ended (squeue keeps ended jobs for the cluster's MinJobAge).
    pub fn ended(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "OUT_OF_MEMORY"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "REVOKED"
                | "SPECIAL_EXIT"
        )
    }

    pub fn running(&self) -> bool {
        matches!(self.state.as_str(), "RUNNING" | "COMPLETING")
    }
}

impl SlurmExecutor {
    /// Checks that `sbatch` is on PATH (by looking, not by running it: a plan that is all
    /// hits runs no Slurm command at all).
    pub fn new(cfg: SlurmConfig, store: Store) -> Result<Self, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if !std::env::split_paths(&path).any(|d| d.join("sbatch").is_file()) {
            return Err(not_on_path("sbatch"));
        }
        Ok(SlurmExecutor {
            cfg,
            store,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn marker_path(&self, key: &str) -> PathBuf {
        self.store.root().join("slurm").join(format!("{key}.json"))
    }

    /// A job for `job`'s key still in the queue from an earlier submission, if every job it
    /// waits for in this run is such a job too (a fresh upstream submission means the old
    /// chain broke somewhere, and the old job may be doomed).
    fn adopt(&self, job: &JobSpec, after: &[Ticket], inner: &mut Inner) -> Option<Ticket> {
        if !after.iter().all(|t| inner.adopted.contains(&t.0)) {
            return None;
        }
        let path = self.marker_path(&job.key);
        let marker: Marker = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        let states = squeue(&[marker.job.as_str()]).ok()?;
        match states.get(&marker.job) {
            Some(q) if !q.ended() && q.reason != "DependencyNeverSatisfied" => {}
            _ => {
                let _ = std::fs::remove_file(&path);
                return None;
            }
        }
        inner.adopted.insert(marker.job.clone());
        inner.jobs.insert(
            marker.job.clone(),
            Tracked {
                key: job.key.clone(),
                files: marker.files,
                started: false,
                cancelled: false,
                adopted: true,
            },
        );
        Some(Ticket(marker.job))
    }

    fn poll(&self, inner: &mut Inner) {
        inner.last_poll = Some(Instant::now());
        let ids: Vec<&str> = inner.jobs.keys().map(String::as_str).collect();
        let states = match squeue(&ids) {
            Ok(s) => {
                inner.failing_since = None;
                s
            }
            Err(e) => {
                let since = *inner.failing_since.get_or_insert_with(Instant::now);
                tracing::warn!("squeue failed (retrying): {e}");
                if since.elapsed() >= SQUEUE_GIVE_UP {
                    let lost = std::mem::take(&mut inner.jobs);
                    for (id, _) in lost {
                        inner.reports.push_back(Report::Ended(
                            Ticket(id.clone()),
                            Finished::failed(format!(
                                "lost track of slurm job {id}: squeue has failed for {} s: {e}",
                                SQUEUE_GIVE_UP.as_secs()
                            )),
                        ));
                    }
                }
                return;
            }
        };
        let mut ended = Vec::new();
        for (id, t) in inner.jobs.iter_mut() {
            match states.get(id) {
                Some(q) if !q.ended() => {
                    if q.running() && !t.started {
                        t.started = true;
                        inner.reports.push_back(Report::Started(Ticket(id.clone())));
                    }
                }
                q => ended.push((id.clone(), q.cloned())),
            }
        }
        for (id, q) in ended {
            let t = inner.jobs.remove(&id).expect("tracked");
            let end = self.resolve(&id, &t, q.as_ref());
            let marker = self.marker_path(&t.key);
            if std::fs::read_to_string(&marker)
                .ok()
                .and_then(|s| serde_json::from_str::<Marker>(&s).ok())
                .is_some_and(|m| m.job == id)
            {
                let _ = std::fs::remove_file(&marker);
            }
            inner.reports.push_back(Report::Ended(Ticket(id), end));
        }
    }

    /// How job `id` ended; `q` is its last state in `squeue` (`None`: no longer listed).
    fn resolve(&self, id: &str, t: &Tracked, q: Option<&QueueState>) -> Finished {
        let deadline = Instant::now() + VISIBILITY_GRACE;
        loop {
            if let Some(end) = remote::judge(&self.store, &t.key, &t.files) {
                return match end {
                    // The worker stopped on SIGTERM that this run did not ask for: scancel by
                    // someone else, or the time limit.
                    Finished::Cancelled if !t.cancelled => Finished::Failed {
                        error: describe(id, q),
                        detail: remote::log_tail(&t.files.log, LOG_TAIL),
                        io: false,
                    },
                    end => end,
                };
            }
            if t.cancelled {
                return Finished::Cancelled;
            }
            let said_done = q.is_some_and(|q| q.state == "COMPLETED")
                || WorkerResult::read(&t.files.result)
                    .is_some_and(|r| r.status == "ran" || r.status == "hit");
            if !said_done || Instant::now() >= deadline {
                let mut error = describe(id, q);
                if said_done {
                    error.push_str(&format!(
                        "; it reported success, but its entry is not in {}: is the cache on a file system this machine and the node share?",
                        self.store.root().display()
                    ));
                }
                return Finished::Failed {
                    error,
                    detail: remote::log_tail(&t.files.log, LOG_TAIL),
                    io: false,
                };
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// One line on how a job ended, with what to do where there is something to do.
fn describe(id: &str, q: Option<&QueueState>) -> String {
    let Some(q) = q else {
        return format!(
            "slurm job {id} left the queue without a result (killed before it could write one; see its log)"
        );
    };
    let reason = if q.reason.is_empty() || q.reason == "None" {
        String::new()
    } else {
        format!(" ({})", q.reason)
    };
    let hint = match q.state.as_str() {
        "TIMEOUT" => {
            ": it ran out of time; run again to resume a training from its progress checkpoint, or raise `time` for it under `resources:`"
        }
        "OUT_OF_MEMORY" => ": it ran out of memory; raise `mem` for it under `resources:`",
        "CANCELLED" if q.reason == "DependencyNeverSatisfied" => ": a job it consumes failed",
        "CANCELLED" => ": cancelled (scancel) while queued or running",
        "NODE_FAIL" | "BOOT_FAIL" => ": its node failed; run again to resume",
        "PREEMPTED" => ": preempted; run again to resume",
        _ => "",
    };
    format!("slurm job {id} ended {}{reason}{hint}", q.state)
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }
    fn slots(&self) -> usize {
        usize::MAX
    }
    fn orders_dependencies(&self) -> bool {
        true
    }
    fn remote(&self) -> bool {
        true
    }

    fn submit(&self, job: &JobSpec, after: &[Ticket]) -> Result<Submitted, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ticket) = self.adopt(job, after, &mut inner) {
            return Ok(Submitted {
                ticket,
                adopted: true,
            });
        }
        let files = remote::write_job(&self.cfg.run_dir, job)?;
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=pipe:{}", job.stage),
            format!("--output={}", files.log.display()),
            format!("--chdir={}", self.cfg.workdir.display()),
            "--kill-on-invalid-dep=yes".to_string(),
        ];
        if !after.is_empty() {
            let ids: Vec<&str> = after.iter().map(|t| t.0.as_str()).collect();
            args.push(format!("--dependency=afterok:{}", ids.join(":")));
        }
        args.extend(
            self.cfg
                .resources
                .for_stage(&job.stage, &job.kind)
                .sbatch_args(),
        );
        let argv = remote::worker_argv(
            &self.cfg.exe,
            &self.cfg.cache,
            &self.cfg.worker_args,
            &files.job,
        );
        let script = format!(
            "#!/bin/sh\n# pipe: stage `{}` (key {}) of run {}, submitted as\n#   sbatch {} {}\nexec {}\n",
            job.stage,
            job.key,
            self.cfg.run_id,
            args.join(" "),
            files.script.display(),
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        std::fs::write(&files.script, script)
            .map_err(|e| format!("{}: {e}", files.script.display()))?;
        args.push(files.script.display().to_string());
        let out = run("sbatch", &args, COMMAND_TIMEOUT)?;
        if !out.status.success() {
            return Err(format!(
                "sbatch failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let id = parse_sbatch(&String::from_utf8_lossy(&out.stdout))?;
        tracing::info!(stage = %job.stage, job = %id, "submitted");
        let marker = Marker {
            job: id.clone(),
            stage: job.stage.clone(),
            run: self.cfg.run_id.clone(),
            files: files.clone(),
        };
        let mpath = self.marker_path(&job.key);
        if let Err(e) = std::fs::create_dir_all(mpath.parent().expect("in slurm/"))
            .and_then(|()| std::fs::write(&mpath, serde_json::to_string(&marker).expect("JSON")))
        {
            tracing::warn!("could not write {}: {e}", mpath.display());
        }
        inner.jobs.insert(
            id.clone(),
            Tracked {
                key: job.key.clone(),
                files,
                started: false,
                cancelled: false,
                adopted: false,
            },
        );
        Ok(Submitted {
            ticket: Ticket(id),
            adopted: false,
        })
    }

    fn wait(&self, timeout: Duration) -> Option<Report> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = inner.reports.pop_front() {
                return Some(r);
            }
            if inner.jobs.is_empty() {
                return None;
            }
            let since = inner.last_poll.map(|t| t.elapsed());
            if since.is_none_or(|s| s >= self.cfg.poll) {
                self.poll(&mut inner);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let nap = (self.cfg.poll - since.unwrap_or_default()).min(deadline - now);
            drop(inner);
            std::thread::sleep(nap);
        }
    }

    fn cancel(&self, tickets: &[Ticket]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::new();
        for t in tickets {
            if let Some(job) = inner.jobs.get_mut(&t.0) {
                job.cancelled = true;
                if job.adopted {
                    // Another run's job: stop following it, leave it running.
                    inner.jobs.remove(&t.0);
                    inner
                        .reports
                        .push_back(Report::Ended(t.clone(), Finished::Cancelled));
                } else {
                    ids.push(t.0.clone());
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        match run("scancel", &ids, COMMAND_TIMEOUT) {
            Ok(o) if o.status.success() => tracing::info!("cancelled slurm jobs {}", ids.join(",")),
            Ok(o) => tracing::warn!(
                "scancel {} failed: {}",
                ids.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::warn!("scancel {}: {e}", ids.join(" ")),
        }
        // Look again soon: cancelled jobs show as CANCELLED at once.
        inner.last_poll = None;
    }
}

/// Runs a Slurm command, refusing to wait longer than `timeout` (a controller that does not
/// answer must not hang `pipe`).
fn run(program: &str, args: &[String], timeout: Duration) -> Result<Output, String> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_on_path(program)
            } else {
                format!("cannot run {program}: {e}")
            }
        })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("{program}: {e}")),
        Err(_) => {
            #[cfg(unix)]
            // SAFETY: kill(2) on the child we started; its waiting thread has not reaped it,
            // since it has not sent.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            Err(format!(
                "{program} did not answer within {} s",
                timeout.as_secs()
            ))
        }
    }
}

fn not_on_path(program: &str) -> String {
    format!(
        "`{program}` is not on PATH: run on a Slurm login node (or start one: scripts/slurm-up.sh)"
    )
}

/// `squeue` for the given jobs: id → state, for those it still lists.
pub fn squeue(ids: &[&str]) -> Result<HashMap<String, QueueState>, String> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(200) {
        if chunk.is_empty() {
            continue;
        }
        let args = vec![
            "--noheader".to_string(),
            "--states=all".to_string(),
            "--format=%i|%T|%r".to_string(),
            format!("--jobs={}", chunk.join(",")),
        ];
        let o = run("squeue", &args, COMMAND_TIMEOUT)?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            // Every id given has left the queue (Slurm forgets jobs after MinJobAge).
            if stderr.contains("Invalid job id") {
                continue;
            }
            return Err(format!("squeue failed: {}", stderr.trim()));
        }
        out.extend(parse_squeue(&String::from_utf8_lossy(&o.stdout)));
    }
    Ok(out)
}

fn parse_squeue(text: &str) -> HashMap<String, QueueState> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(3, '|');
            let id = f.next()?.trim();
            let state = f.next()?.trim();
            let reason = f.next().unwrap_or("").trim();
            (!id.is_empty() && !state.is_empty()).then(|| {
                (
                    id.to_string(),
                    QueueState {
                        state: state.to_string(),
                        reason: reason.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// `sbatch --parsable` prints `id` or `id;cluster`.
fn parse_sbatch(stdout: &str) -> Result<String, String> {
    let id = stdout.trim().split(';').next().unwrap_or("").trim();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id.to_string())
    } else {
        Err(format!("sbatch printed no job id: `{}`", stdout.trim()))
    }
}

/// Brings a `--detach`ed run's record up to date: queued stages whose entry is complete now
/// ran; those Slurm no longer runs and that left no entry failed; the rest stay queued, with
/// Slurm's state in `error` for display. When nothing is queued any more the outcome becomes
/// `ok` or `failed`. Returns whether the record is final (and worth saving).
pub fn refresh(store: &Store, rec: &mut RunRecord) -> bool {
    let ids: Vec<String> = rec
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Queued)
        .filter_map(|s| s.job.clone())
        .collect();
    if ids.is_empty() {
        return false;
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let states = match squeue(&id_refs) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot ask Slurm about run {}: {e}", rec.id);
            None
        }
    };
    let run_dir = runs::run_folder(store.root(), &rec.id);
    let job_files: HashMap<String, JobFiles> = rec
        .stages
        .iter()
        .filter_map(|s| {
            let f = JobFiles::new(&run_dir, &s.name, &s.key);
            (s.job.is_some() && f.job.exists()).then(|| (s.key.clone(), f))
        })
        .collect();
    for s in rec.stages.iter_mut() {
        if s.status != StageStatus::Queued {
            continue;
        }
        let id = s.job.clone().unwrap_or_default();
        let q = states.as_ref().and_then(|st| st.get(&id));
        let end = job_files
            .get(&s.key)
            .and_then(|f| remote::judge(store, &s.key, f))
            .or_else(|| {
                store.read_manifest(&s.key).ok().map(|m| Finished::Done {
                    status: StageStatus::Ran,
                    seconds: m.duration_s,
                    manifest: Box::new(m),
                })
            });
        match (end, q) {
            (
                Some(Finished::Done {
                    status,
                    manifest,
                    seconds,
                }),
                _,
            ) => {
                s.status = status;
                s.metrics = manifest.metrics;
                s.duration_s = seconds;
                s.error = None;
            }
            (Some(Finished::Failed { error, .. }), _) => {
                s.status = StageStatus::Failed;
                s.error = Some(error);
            }
            (_, Some(q)) if !q.ended() => {
                s.error = Some(format!(
                    "slurm job {id}: {}{}",
                    q.state,
                    if q.reason.is_empty() || q.reason == "None" {
                        String::new()
                    } else {
                        format!(" ({})", q.reason)
                    }
                ));
            }
            // Unknown to Slurm now and without a result: nothing more will happen to it.
            (_, q) if states.is_some() => {
                s.status = StageStatus::Failed;
                s.error = Some(describe(&id, q));
            }
            _ => s.error = Some(format!("slurm job {id}: state unknown")),
        }
    }
    if rec.count(StageStatus::Queued) > 0 {
        return false;
    }
    rec.outcome = if rec
        .stages
        .iter()
        .all(|s| matches!(s.status, StageStatus::Hit | StageStatus::Ran))
    {
        "ok".into()
    } else {
        "failed".into()
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_are_parsed_and_classified() {
        let s = parse_squeue(
            "12|RUNNING|None\n13|PENDING|Dependency\n14|CANCELLED|DependencyNeverSatisfied\n\n",
        );
        assert_eq!(s.len(), 3);
        assert!(s["12"].running() && !s["12"].ended());
        assert!(!s["13"].running() && !s["13"].ended());
        assert!(s["14"].ended());
        assert_eq!(s["14"].reason, "DependencyNeverSatisfied");
    }

    #[test]
    fn sbatch_ids_with_and_without_cluster() {
        assert_eq!(parse_sbatch("42\n").unwrap(), "42");
        assert_eq!(parse_sbatch("42;cluster\n").unwrap(), "42");
        assert!(parse_sbatch("Submitted batch job 42").is_err());
    }

    #[test]
    fn failures_say_what_to_do() {
        let q = |state: &str, reason: &str| QueueState {
            state: state.into(),
            reason: reason.into(),
        };
        assert_eq!(
            describe("7", Some(&q("TIMEOUT", "TimeLimit"))),
            "slurm job 7 ended TIMEOUT (TimeLimit): it ran out of time; run again to resume a training from its progress checkpoint, or raise `time` for it under `resources:`"
        );
        assert_eq!(
            describe("8", Some(&q("CANCELLED", "DependencyNeverSatisfied"))),
            "slurm job 8 ended CANCELLED (DependencyNeverSatisfied): a job it consumes failed"
        );
        assert_eq!(
            describe("9", Some(&q("FAILED", "NonZeroExitCode"))),
            "slurm job 9 ended FAILED (NonZeroExitCode)"
        );
        assert!(describe("10", None).starts_with("slurm job 10 left the queue"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
