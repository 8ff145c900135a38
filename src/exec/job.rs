//! One job: the serialisable description of a cache entry to compute, and the code that
//! computes it in this process (the local executor's threads and `pipe worker` both use it).
//!
//! A job names its inputs by key, not by folder: whoever runs it opens the same cache and
//! reads the inputs' manifests there, so a description written on a login node means the same
//! on a compute node that mounts the cache elsewhere.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{Event, EventSink};
use super::pool::CoreShare;
use crate::cache::{CacheError, Manifest, PreImage, StageStatus, Store, os_error_in, short};
use crate::clock;
use crate::panic_text::panic_text;
use crate::spec::glob_match;
use crate::stages::{InputEntry, Registry, Resume, Runtime, StageContext};

/// Bumped when [`JobSpec`]'s layout changes, so that a worker never misreads a description
/// written by another version of `pipe`.
pub const JOB_FORMAT: u32 = 1;

/// Everything needed to compute one cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub format: u32,
    pub key: String,
    /// The stage computed: the entry is written in its name.
    pub stage: String,
    /// Other stages of the plan with the same key (the same work reached under two names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    pub kind: String,
    /// The kind's version when the job was planned; a worker whose kind differs refuses.
    pub version: u32,
    /// Normalised parameters, locations included (the kind reads its data through them).
    pub params: Value,
    /// The document whose hash is `key`, stored in the entry's manifest.
    pub preimage: Value,
    pub inputs: Vec<JobRole>,
    /// Where the stage computes (`cpu`, `cuda:1`); not part of the key.
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRole {
    pub role: String,
    pub stages: Vec<JobInput>,
}

/// A finished upstream stage, by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub params: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a job description: {reason}")]
    Invalid {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl JobSpec {
    pub fn read(path: &Path) -> Result<JobSpec, JobFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let job: JobSpec = serde_json::from_str(&text).map_err(|e| JobFileError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if job.format != JOB_FORMAT {
            return Err(JobFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "it has format {}, this pipe reads format {JOB_FORMAT}; run it with the pipe that wrote it",
                    job.format
                ),
            });
        }
        Ok(job)
    }

    /// Writes the description next to where a worker will read it (write, then rename, so a
    /// worker never reads half a file).
    pub fn write(&self, path: &Path) -> Result<(), JobFileError> {
        let io = |source| JobFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("job descriptions serialise");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum Finished {
    /// The entry exists now: computed by this job (`Ran`) or found (`Hit`).
    Done {
        status: StageStatus,
        manifest: Box<Manifest>,
        seconds: f64,
    },
    Failed {
        error: String,
        /// More to show under the error line (a remote job's log tail).
        detail: Option<String>,
        /// The operating system's I/O failed under the job (a full disk, a read-only cache),
        /// in the cache's own operations or in the stage's reads and writes: `pipe run` exits
        /// 3 ("cache or I/O error") for it, not 1 ("a stage failed").
        io: bool,
    },
    /// Stopped because it was asked to (Ctrl-C, or the scheduler cancelled it).
    Cancelled,
}

impl Finished {
    pub fn failed(error: impl Into<String>) -> Finished {
        Finished::Failed {
            error: error.into(),
            detail: None,
            io: false,
        }
    }
}

/// Why a job failed in this process: its message, and whether an operating-system I/O error
/// caused it (see [`Finished::Failed`]'s `io`).
#[derive(Debug)]
struct JobError {
    message: String,
    io: bool,
}

impl JobError {
    /// A failure whose cause, if an OS I/O error is in `e`'s source chain, is that error.
    fn of(e: &(dyn std::error::Error + 'static)) -> JobError {
        JobError {
            io: os_error_in(e).is_some(),
            message: e.to_string(),
        }
    }
}

impl From<CacheError> for JobError {
    fn from(e: CacheError) -> Self {
        JobError::of(&e)
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError { message, io: false }
    }
}

/// How many threads a job's pool ([`super::on_own_pool`]) has.
#[derive(Debug, Clone, Copy)]
pub enum JobThreads<'a> {
    /// A fixed size (`--threads`, a Slurm job's CPUs); `None`: rayon's default
    /// (`RAYON_NUM_THREADS`, or one per core).
    Fixed(Option<usize>),
    /// A share of the cores that follows the jobs computing at once: long stages resize
    /// their pool between steps as jobs start and end ([`StageContext::cpu_threads`]).
    Shared(&'a CoreShare),
}

/// Computes jobs in this process against a cache.
pub struct Worker<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    /// Handed to stages unopened.
    pub runtime: &'a Runtime,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a AtomicBool,
    /// How many threads each job computes on.
    pub threads: JobThreads<'a>,
    /// How often long stages save a progress checkpoint (`--checkpoint-every`); `None`: never.
    pub checkpoint_every: Option<std::time::Duration>,
}

impl Worker<'_> {
    /// Runs one job: a hit if the entry is (or becomes, while waiting for the key's lock)
    /// complete; otherwise computes and publishes it. Reports `Start`, `Waiting` and `Corrupt`
    /// to the sink; the end is the caller's to report.
    pub fn run(&self, job: &JobSpec) -> Finished {
        // A shared job holds its place (its cores counted) until it is done.
        let (share, size) = match self.threads {
            JobThreads::Shared(cores) => {
                let share = cores.join();
                let size = share.threads();
                (Some(share), Some(size))
            }
            JobThreads::Fixed(t) => (None, t),
        };
        let wanted = share.as_ref().map(|s| s.reader());
        match super::on_own_pool(size, || self.try_run(job, wanted)) {
            Ok(f) => f,
            Err(JobError { message, io }) => Finished::Failed {
                error: message,
                detail: None,
                io,
            },
        }
    }

    /// `threads`: the job's current share of the cores, read by long stages between steps.
    fn try_run(
        &self,
        job: &JobSpec,
        threads: Option<Arc<AtomicUsize>>,
    ) -> Result<Finished, JobError> {
        let Worker {
            registry,
            store,
            runtime,
            sink,
            cancel,
            threads: _,
            checkpoint_every,
        } = *self;
        let name = job.stage.as_str();
        let key = job.key.as_str();
        let kind = registry.get(&job.kind).ok_or_else(|| {
            format!(
                "this pipe binary has no stage kind `{}`; run the job with the binary that planned it",
                job.kind
            )
        })?;
        if kind.version() != job.version {
            return Err(format!(
                "stage kind `{}` is version {} in this pipe binary, the job was planned with version {}; run it with the binary that planned it",
                job.kind,
                kind.version(),
                job.version
            )
            .into());
        }
        let pre = PreImage(job.preimage.clone());
        if pre.key() != key {
            return Err(format!(
                "the job's pre-image hashes to {}, not to its key {key}: the job description was edited",
                short(&pre.key(), 12)
            )
            .into());
        }
        if let Some(hit) = self.verified_hit(job) {
            return Ok(hit);
        }
        let _lock = match store.try_lock(key)? {
            Some(l) => l,
            None => {
                sink.event(&Event::Waiting { name });
                store.lock(key)?
            }
        };
        // Another process (another node) may have published the entry while we waited.
        if store.is_complete(key) {
            match store.verify(key) {
                Ok(m) => return Ok(hit(m)),
                Err(e) => {
                    sink.event(&Event::Corrupt {
                        name,
                        reason: &e.to_string(),
                    });
                    let aside = store.quarantine(key)?;
                    tracing::warn!("corrupt entry for {name} moved to {}", aside.display());
                }
            }
        }
        let inputs = self.inputs(job)?;
        let area = store.resume_area(key);
        let offered = area.latest();
        let tmp = store.begin(key)?;
        sink.event(&Event::Start { name, key });
        tracing::info!(stage = name, key = short(key, 12), kind = %job.kind, device = %job.device, "running");
        let started_at = clock::rfc3339(clock::now_secs());
        let t0 = Instant::now();
        let mut ctx = StageContext::new(
            name.to_string(),
            inputs,
            tmp.dir.clone(),
            runtime,
            cancel,
            sink,
        )
        .with_resume(Resume {
            area: area.clone(),
            offered,
            every: checkpoint_every,
        })
        .with_cpu_share(threads);
        let result = catch_unwind(AssertUnwindSafe(|| {
            kind.run(&job.params, &mut ctx)?;
            // A metric outside the kind's declared patterns would slip past `plan`'s checks
            // of reports and claims: a bug of the kind, which the tests (debug builds) catch.
            let undeclared: Vec<&String> = ctx
                .metrics()
                .keys()
                .filter(|m| !kind.metrics().iter().any(|p| glob_match(p, m)))
                .collect();
            if !undeclared.is_empty() {
                tracing::warn!(
                    "{name}: kind `{}` set metrics it does not declare: {undeclared:?}",
                    job.kind
                );
                debug_assert!(false, "{name}: undeclared metrics {undeclared:?}");
            }
            Ok::<(), crate::stages::StageError>(())
        }));
        let seconds = t0.elapsed().as_secs_f64();
        let metrics = Value::Object(ctx.metrics().clone());
        let resumed_at = ctx.resumed_at();
        drop(ctx);
        match result {
            Ok(Ok(())) => {
                let manifest = Manifest {
                    key: key.to_string(),
                    name: name.to_string(),
                    kind: job.kind.clone(),
                    version: job.version,
                    preimage: job.preimage.clone(),
                    outputs: Default::default(),
                    metrics,
                    started_at,
                    duration_s: seconds,
                    host: clock::hostname(),
                    device: job.device.clone(),
                    pipe_version: env!("CARGO_PKG_VERSION").to_string(),
                    resumed_at,
                };
                let m = store.publish(tmp, manifest)?;
                tracing::info!(stage = name, key = short(key, 12), seconds, "published");
                // The entry is in place: its progress checkpoints have served.
                if let Err(e) = area.clear() {
                    tracing::warn!("{name}: its progress checkpoints could not be removed: {e}");
                }
                Ok(Finished::Done {
                    status: StageStatus::Ran,
                    manifest: Box::new(m),
                    seconds,
                })
            }
            Ok(Err(e)) => {
                if e.is_cancelled() {
                    store.abandon(tmp);
                    Ok(Finished::Cancelled)
                } else {
                    let kept = store.keep_failed(tmp, name);
                    // A stage's own reads and writes that the OS refused (a full disk during
                    // a checkpoint) count as I/O failures, not as the stage failing.
                    let mut error = JobError::of(&e);
                    if let Some(dir) = kept {
                        error.message.push_str(&format!(
                            "\n  what it wrote before failing is kept in {}",
                            std::path::absolute(&dir).unwrap_or(dir).display()
                        ));
                    }
                    // A failure of the stage itself would come back from its checkpoints as
                    // well (and one caused by a checkpoint must not trap the key): they go.
                    // An I/O failure keeps them, to resume once there is space again.
                    if !error.io {
                        let _ = area.clear();
                    }
                    Err(error)
                }
            }
            Err(panic) => {
                store.abandon(tmp);
                let msg = panic_text(&*panic).unwrap_or_else(|| "unknown panic".into());
                Err(format!("the stage panicked: {msg} (a bug in pipe; please report it)").into())
            }
        }
    }

    /// The entry, if it is complete and intact (checked before locking, the common case).
    fn verified_hit(&self, job: &JobSpec) -> Option<Finished> {
        if !self.store.is_complete(&job.key) {
            return None;
        }
        match self.store.verify(&job.key) {
            Ok(m) => Some(hit(m)),
            Err(e) => {
                tracing::debug!("{}: verification before locking failed: {e}", job.stage);
                None
            }
        }
    }

    /// The job's inputs as finished entries of this cache.
    fn inputs(&self, job: &JobSpec) -> Result<Vec<(String, Vec<InputEntry>)>, String> {
        job.inputs
            .iter()
            .map(|r| {
                let entries = r
                    .stages
                    .iter()
                    .map(|i| {
                        let m = self.store.read_manifest(&i.key).map_err(|e| {
                            format!(
                                "input `{}` ({}) is not in the cache at {}: {e}",
                                i.name,
                                short(&i.key, 12),
                                self.store.root().display()
                            )
                        })?;
                        Ok(InputEntry {
                            name: i.name.clone(),
                            kind: i.kind.clone(),
                            key: i.key.clone(),
                            dir: self.store.entry_dir(&i.key),
                            files: m.outputs.keys().cloned().collect(),
                            metrics: m.metrics,
                            params: i.params.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok((r.role.clone(), entries))
            })
            .collect()
    }
}

fn hit(m: Manifest) -> Finished {
    Finished::Done {
        status: StageStatus::Hit,
        manifest: Box::new(m),
        seconds: 0.0,
    }
}
