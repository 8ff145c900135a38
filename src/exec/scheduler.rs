//! Runs the stages a plan says are missing, in dependency order, in parallel up to `--jobs`.
//!
//! Stages with the same key (the same work reached under two names, e.g. the IMP chain's
//! training and the ticket branch at the same learning rate) form one job and run once. Each
//! job takes its key's lock, so two `pipe run`s that share a stage compute it once: the second
//! waits, then finds the entry and hits. A failed job skips everything downstream of it; the
//! rest stops too unless `--keep-going`. Ctrl-C sets the cancel flag: running stages stop at
//! their next check, their temporary folders are removed, and the next run resumes.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use super::events::{Event, EventSink};
use super::plan::Plan;
use crate::cache::{CacheError, Manifest, StageRecord, StageStatus, Store, os_error_in};
use crate::clock;
use crate::graph::StageGraph;
use crate::nn::DeviceSpec;
use crate::panic_text::panic_text;
use crate::stages::dataset::DataCache;
use crate::stages::{InputEntry, Registry, StageContext};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub device: DeviceSpec,
}

#[derive(Debug)]
pub struct RunOutcome {
    /// One record per stage, in plan order.
    pub records: Vec<StageRecord>,
    pub interrupted: bool,
    /// Stages that failed on an operating-system I/O error (a full disk, a read-only cache),
    /// as opposed to a failure of the stage itself: `pipe run` exits 3 for these.
    pub io_failures: Vec<String>,
}

impl RunOutcome {
    pub fn ok(&self) -> bool {
        !self.interrupted
            && self
                .records
                .iter()
                .all(|r| matches!(r.status, StageStatus::Hit | StageStatus::Ran))
    }
}

#[derive(Clone)]
enum State {
    Pending,
    Running,
    Done {
        status: StageStatus,
        manifest: Box<Manifest>,
        seconds: f64,
    },
    /// The message, and whether an OS-level I/O error caused it.
    Failed(String, bool),
    Skipped(String),
    NotRun,
}

struct Job {
    key: String,
    members: Vec<usize>,
    deps: Vec<usize>,
}

/// Metrics worth a glance in progress lines and summaries.
pub fn headline(metrics: &Value) -> String {
    const SHOWN: [&str; 5] = [
        "test_acc",
        "accuracy",
        "remaining_pct",
        "early_stop_iteration",
        "loss",
    ];
    SHOWN
        .iter()
        .filter_map(|k| {
            metrics.get(*k).map(|v| match v.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{k}={f:.4}"),
                _ => format!("{k}={v}"),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What running stages need besides the plan: the kinds, the cache, the options, where events
/// go, the cancel flag (set by Ctrl-C) and the shared dataset cache.
#[derive(Clone, Copy)]
pub struct Engine<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub opts: &'a RunOptions,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a AtomicBool,
    pub data: &'a DataCache,
}

pub fn execute(plan: &Plan, env: Engine) -> RunOutcome {
    let Engine {
        store,
        opts,
        sink,
        cancel,
        ..
    } = env;
    let stages = &plan.stages;
    let graph = StageGraph::new(&plan.pipeline.instances);
    let mut job_of_key: HashMap<&str, usize> = HashMap::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_of_stage = vec![0usize; stages.len()];
    for (i, s) in stages.iter().enumerate() {
        let j = *job_of_key.entry(s.key.as_str()).or_insert_with(|| {
            jobs.push(Job {
                key: s.key.clone(),
                members: Vec::new(),
                deps: Vec::new(),
            });
            jobs.len() - 1
        });
        jobs[j].members.push(i);
        job_of_stage[i] = j;
    }
    for (j, job) in jobs.iter_mut().enumerate() {
        let mut deps: Vec<usize> = job
            .members
            .iter()
            .flat_map(|&i| graph.upstream(i))
            .map(|u| job_of_stage[u])
            .filter(|&d| d != j)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        job.deps = deps;
    }
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.instance.name.as_str(), i))
        .collect();
    let mut state: Vec<State> = vec![State::Pending; jobs.len()];
    let mut stop = false;
    let jobs_limit = opts.jobs.max(1);

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Result<(StageStatus, Manifest, f64), JobError>)>();
        let mut running = 0usize;
        loop {
            if cancel.load(Ordering::Relaxed) {
                stop = true;
            }
            while !stop && running < jobs_limit {
                let Some(j) = (0..jobs.len()).find(|&j| {
                    matches!(state[j], State::Pending)
                        && jobs[j]
                            .deps
                            .iter()
                            .all(|&d| matches!(state[d], State::Done { .. }))
                }) else {
                    break;
                };
                state[j] = State::Running;
                running += 1;
                // Everything the job needs, captured by value: its inputs are finished entries.
                let rep = jobs[j].members[0];
                let inputs =
                    input_entries(store, &stages[rep], stages, &index, &state, &job_of_stage);
                let tx = tx.clone();
                let key = jobs[j].key.clone();
                scope.spawn(move || {
                    let res = run_job(&key, rep, plan, env, inputs);
                    let _ = tx.send((j, res));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((j, res)) = rx.recv() else { break };
            running -= 1;
            match res {
                Ok((status, manifest, seconds)) => {
                    for &i in &jobs[j].members {
                        if let Err(e) = store.record_name(&stages[i].instance.name, &jobs[j].key) {
                            tracing::warn!(
                                "could not record the name of {}: {e}",
                                stages[i].instance.name
                            );
                        }
                    }
                    state[j] = State::Done {
                        status,
                        manifest: Box::new(manifest),
                        seconds,
                    };
                }
                Err(JobError { message: msg, io }) => {
                    let cancelled = cancel.load(Ordering::Relaxed);
                    let name = &stages[jobs[j].members[0]].instance.name;
                    if cancelled {
                        state[j] = State::NotRun;
                    } else {
                        sink.event(&Event::Failed { name, error: &msg });
                        state[j] = State::Failed(msg, io);
                    }
                    let because = format!(
                        "`{name}` {}",
                        if cancelled {
                            "was interrupted"
                        } else {
                            "failed"
                        }
                    );
                    for &i in &jobs[j].members {
                        for d in graph.downstream(i) {
                            let dj = job_of_stage[d];
                            if matches!(state[dj], State::Pending) {
                                if !cancelled {
                                    sink.event(&Event::Skipped {
                                        name: &stages[d].instance.name,
                                        because: &because,
                                    });
                                }
                                state[dj] = if cancelled {
                                    State::NotRun
                                } else {
                                    State::Skipped(because.clone())
                                };
                            }
                        }
                    }
                    if !opts.keep_going || cancelled {
                        stop = true;
                    }
                }
            }
        }
    });

    let records = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (status, metrics, seconds, error) = match &state[job_of_stage[i]] {
                State::Done {
                    status,
                    manifest,
                    seconds,
                } => (*status, manifest.metrics.clone(), *seconds, None),
                State::Failed(m, _) => (StageStatus::Failed, Value::Null, 0.0, Some(m.clone())),
                State::Skipped(m) => (StageStatus::Skipped, Value::Null, 0.0, Some(m.clone())),
                State::Pending | State::Running | State::NotRun => {
                    (StageStatus::NotRun, Value::Null, 0.0, None)
                }
            };
            StageRecord {
                name: s.instance.name.clone(),
                kind: s.instance.kind.clone(),
                key: s.key.clone(),
                status,
                duration_s: seconds,
                params: s.instance.params.clone(),
                metrics,
                error,
            }
        })
        .collect();
    sink.finish();
    let io_failures = stages
        .iter()
        .enumerate()
        .filter(|&(i, _)| matches!(state[job_of_stage[i]], State::Failed(_, true)))
        .map(|(_, s)| s.instance.name.clone())
        .collect();
    RunOutcome {
        records,
        interrupted: cancel.load(Ordering::Relaxed),
        io_failures,
    }
}

/// Why a job failed: its message, and whether the operating system's I/O failed under it
/// (the cache's own operations, or a stage's reads and writes) rather than the stage.
#[derive(Debug)]
struct JobError {
    message: String,
    io: bool,
}

impl From<CacheError> for JobError {
    fn from(e: CacheError) -> Self {
        JobError {
            io: os_error_in(&e).is_some(),
            message: e.to_string(),
        }
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError { message, io: false }
    }
}

fn input_entries(
    store: &Store,
    stage: &super::PlannedStage,
    stages: &[super::PlannedStage],
    index: &HashMap<&str, usize>,
    state: &[State],
    job_of_stage: &[usize],
) -> Vec<(String, Vec<InputEntry>)> {
    stage
        .instance
        .inputs
        .iter()
        .map(|(role, names)| {
            let entries = names
                .iter()
                .map(|n| {
                    let u = index[n.as_str()];
                    let State::Done { manifest, .. } = &state[job_of_stage[u]] else {
                        unreachable!("inputs are finished before a job starts")
                    };
                    InputEntry {
                        name: n.clone(),
                        kind: stages[u].instance.kind.clone(),
                        key: stages[u].key.clone(),
                        dir: store.entry_dir(&stages[u].key),
                        files: manifest.outputs.keys().cloned().collect(),
                        metrics: manifest.metrics.clone(),
                        params: stages[u].instance.params.clone(),
                    }
                })
                .collect();
            (role.clone(), entries)
        })
        .collect()
}

fn run_job(
    key: &str,
    rep: usize,
    plan: &Plan,
    env: Engine,
    inputs: Vec<(String, Vec<InputEntry>)>,
) -> Result<(StageStatus, Manifest, f64), JobError> {
    let Engine {
        registry,
        store,
        opts,
        sink,
        cancel,
        data,
    } = env;
    let stage = &plan.stages[rep];
    let name = stage.instance.name.as_str();
    if store.is_complete(key) {
        match store.verify(key) {
            Ok(m) => {
                sink.event(&Event::Hit { name, key });
                return Ok((StageStatus::Hit, m, 0.0));
            }
            Err(e) => tracing::debug!("{name}: verification before locking failed: {e}"),
        }
    }
    let _lock = match store.try_lock(key)? {
        Some(l) => l,
        None => {
            sink.event(&Event::Waiting { name });
            store.lock(key)?
        }
    };
    if store.is_complete(key) {
        match store.verify(key) {
            Ok(m) => {
                sink.event(&Event::Hit { name, key });
                return Ok((StageStatus::Hit, m, 0.0));
            }
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
    let kind = registry
        .get(&stage.instance.kind)
        .expect("plan checked kinds");
    let tmp = store.begin(key)?;
    sink.event(&Event::Start { name, key });
    tracing::info!(stage = name, key = &key[..12], kind = %stage.instance.kind, device = %opts.device, "running");
    let started_at = clock::rfc3339(clock::now_secs());
    let t0 = Instant::now();
    let mut ctx = StageContext::new(
        name.to_string(),
        inputs,
        tmp.dir.clone(),
        opts.device.clone(),
        cancel,
        sink,
        data,
    );
    let result = catch_unwind(AssertUnwindSafe(|| {
        kind.run(&stage.instance.params, &mut ctx)
    }));
    let seconds = t0.elapsed().as_secs_f64();
    let metrics = Value::Object(ctx.metrics().clone());
    drop(ctx);
    match result {
        Ok(Ok(())) => {
            let manifest = Manifest {
                key: key.to_string(),
                name: name.to_string(),
                kind: stage.instance.kind.clone(),
                version: kind.version(),
                preimage: stage.preimage.0.clone(),
                outputs: Default::default(),
                metrics,
                started_at,
                duration_s: seconds,
                host: clock::hostname(),
                device: opts.device.to_string(),
                pipe_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let m = store.publish(tmp, manifest)?;
            tracing::info!(stage = name, key = &key[..12], seconds, "published");
            sink.event(&Event::Done {
                name,
                seconds,
                headline: &headline(&m.metrics),
            });
            Ok((StageStatus::Ran, m, seconds))
        }
        Ok(Err(e)) => {
            store.abandon(tmp);
            Err(if e.is_cancelled() {
                "interrupted".to_string().into()
            } else {
                JobError {
                    io: os_error_in(&e).is_some(),
                    message: e.to_string(),
                }
            })
        }
        Err(panic) => {
            store.abandon(tmp);
            let msg = panic_text(&*panic).unwrap_or_else(|| "unknown panic".into());
            Err(format!("the stage panicked: {msg} (a bug in pipe; please report it)").into())
        }
    }
}
