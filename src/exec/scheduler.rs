//! Decides what runs and when, whatever runs it: the stages a plan says are missing, in
//! dependency order, handed to an [`Executor`] one job at a time.
//!
//! Stages with the same key (the same work reached under two names, e.g. the IMP chain's
//! training and the ticket branch at the same learning rate) form one job and run once. A job
//! whose entry is complete is a hit and never reaches the executor. Whoever computes a job
//! takes its key's lock, so two `pipe run`s that share a stage compute it once: the second
//! waits, then finds the entry and hits. A failed job skips everything downstream of it (and
//! cancels what of it is already queued); the rest stops too unless `--keep-going`. Ctrl-C sets
//! the cancel flag: running stages stop at their next check (remote jobs are cancelled), their
//! temporary folders are removed, and the next run resumes. A job that failed on an
//! operating-system I/O error (a full disk, a read-only cache), wherever it ran, is told apart
//! from a stage that failed, so that `pipe run` exits 3 for it.
//!
//! Executors that order dependencies themselves (Slurm's `afterok`) get each job as soon as
//! the jobs it consumes are handed over, so a whole plan is queued at once; with `--detach`
//! the scheduler returns then and records the jobs as queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::events::{Event, EventSink};
use super::executor::{Executor, LocalExecutor, Report, Ticket};
use super::job::{Finished, JOB_FORMAT, JobInput, JobRole, JobSpec, JobThreads, Worker};
use super::plan::Plan;
use super::pool::CoreShare;
use crate::cache::{Manifest, StageRecord, StageStatus, Store};
use crate::graph::StageGraph;
use crate::stages::{Registry, Runtime};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    /// Where stages compute (`cpu`, `cuda:0`): handed to jobs, recorded in manifests.
    pub device: String,
    /// Return once every job is handed over (executors whose jobs outlive this process).
    pub detach: bool,
    /// How many threads local jobs compute on.
    pub threads: ThreadPolicy,
    /// How often long stages save a progress checkpoint; `None`: never.
    pub checkpoint_every: Option<std::time::Duration>,
}

/// How many threads the jobs of a local run compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPolicy {
    /// Every job's pool has this many (`--threads`).
    PerJob(usize),
    /// rayon's default for every job (`RAYON_NUM_THREADS`, which a user who set it meant).
    RayonDefault,
    /// The machine's `cores` shared out among the jobs computing at once, re-shared as they
    /// start and end ([`super::pool::CoreShare`]).
    FollowWork { cores: usize },
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

    /// Stages handed to an executor and not finished when the run returned (`--detach`).
    pub fn queued(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.status == StageStatus::Queued)
            .count()
    }
}

#[derive(Clone)]
enum State {
    Pending,
    InFlight {
        ticket: Ticket,
        started: bool,
        /// Cancelled because a stage it consumes failed: why, to record it as skipped.
        doomed: Option<String>,
    },
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

/// What the scheduler needs besides the plan and an executor: the cache (for hits and stage
/// names), the options, where events go and the cancel flag (set by Ctrl-C).
#[derive(Clone, Copy)]
pub struct Scheduling<'a> {
    pub store: &'a Store,
    pub opts: &'a RunOptions,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a AtomicBool,
}

/// Everything a run in this process needs: the scheduling, plus the stage kinds and the
/// run-time resources stages share (opaque here).
#[derive(Clone, Copy)]
pub struct Engine<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub opts: &'a RunOptions,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a AtomicBool,
    pub runtime: &'a Runtime,
}

/// Runs the plan on threads of this process (`--executor local`).
pub fn execute(plan: &Plan, env: Engine) -> RunOutcome {
    let share = match env.opts.threads {
        ThreadPolicy::FollowWork { cores } => Some(CoreShare::new(cores)),
        _ => None,
    };
    let threads = match (&share, env.opts.threads) {
        (Some(share), _) => JobThreads::Shared(share),
        (None, ThreadPolicy::PerJob(t)) => JobThreads::Fixed(Some(t)),
        (None, _) => JobThreads::Fixed(None),
    };
    let worker = Worker {
        registry: env.registry,
        store: env.store,
        runtime: env.runtime,
        sink: env.sink,
        cancel: env.cancel,
        threads,
        checkpoint_every: env.opts.checkpoint_every,
    };
    let scheduling = Scheduling {
        store: env.store,
        opts: env.opts,
        sink: env.sink,
        cancel: env.cancel,
    };
    std::thread::scope(|scope| {
        let local = LocalExecutor::new(scope, &worker, env.opts.jobs);
        schedule(plan, scheduling, &local)
    })
}

/// How often the scheduler looks at the cancel flag while jobs run.
const TICK: Duration = Duration::from_millis(200);

/// Runs the plan's missing stages through `exec`.
pub fn schedule(plan: &Plan, env: Scheduling, exec: &dyn Executor) -> RunOutcome {
    let Scheduling {
        store,
        opts,
        sink,
        cancel,
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
    let name_of = |j: usize| stages[jobs[j].members[0]].instance.name.as_str();

    let eager = exec.orders_dependencies();
    let slots = exec.slots().max(1);
    let mut state: Vec<State> = vec![State::Pending; jobs.len()];
    let mut tickets: Vec<Option<Ticket>> = vec![None; jobs.len()];
    let mut job_of_ticket: HashMap<Ticket, usize> = HashMap::new();
    let mut in_flight = 0usize;
    // No new jobs once set: after a failure without --keep-going, or Ctrl-C.
    let mut stop = false;

    // Marks everything downstream of job `j` skipped (or not run, when interrupted) and
    // returns the tickets of those already handed over, to cancel.
    let skip_downstream =
        |j: usize, because: &str, interrupted: bool, state: &mut Vec<State>| -> Vec<Ticket> {
            let mut cancel_these = Vec::new();
            for &i in &jobs[j].members {
                for d in graph.downstream(i) {
                    let dj = job_of_stage[d];
                    match &mut state[dj] {
                        State::Pending => {
                            if !interrupted {
                                sink.event(&Event::Skipped {
                                    name: &stages[d].instance.name,
                                    because,
                                });
                            }
                            state[dj] = if interrupted {
                                State::NotRun
                            } else {
                                State::Skipped(because.to_string())
                            };
                        }
                        State::InFlight { ticket, doomed, .. } if doomed.is_none() => {
                            *doomed = Some(because.to_string());
                            cancel_these.push(ticket.clone());
                        }
                        _ => {}
                    }
                }
            }
            cancel_these
        };

    let done = |j: usize, status, manifest: Box<Manifest>, seconds, state: &mut Vec<State>| {
        let name = name_of(j);
        match status {
            StageStatus::Hit => sink.event(&Event::Hit {
                name,
                key: &jobs[j].key,
            }),
            _ => sink.event(&Event::Done {
                name,
                seconds,
                headline: &headline(&manifest.metrics),
            }),
        }
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
            manifest,
            seconds,
        };
    };

    loop {
        if cancel.load(Ordering::Relaxed) && !stop {
            stop = true;
            if opts.detach {
                break;
            }
            let all: Vec<Ticket> = in_flight_tickets(&state);
            exec.cancel(&all);
        }
        // Hand over every job that may go now (and settle hits on the way).
        let mut progressed = !stop;
        while progressed && !stop {
            progressed = false;
            for j in 0..jobs.len() {
                if in_flight >= slots || stop {
                    break;
                }
                if !matches!(state[j], State::Pending) {
                    continue;
                }
                let ready = jobs[j].deps.iter().all(|&d| match &state[d] {
                    State::Done { .. } => true,
                    State::InFlight { doomed: None, .. } => eager,
                    _ => false,
                });
                if !ready {
                    continue;
                }
                progressed = true;
                let key = jobs[j].key.as_str();
                if store.is_complete(key) {
                    match store.verify(key) {
                        Ok(m) => {
                            done(j, StageStatus::Hit, Box::new(m), 0.0, &mut state);
                            continue;
                        }
                        // The executor's worker re-checks under the lock and recomputes.
                        Err(e) => tracing::debug!("{}: verification failed: {e}", name_of(j)),
                    }
                }
                let job = job_spec(plan, &jobs[j], &index, &opts.device);
                let after: Vec<Ticket> = jobs[j]
                    .deps
                    .iter()
                    .filter_map(|&d| match &state[d] {
                        State::InFlight { ticket, .. } => Some(ticket.clone()),
                        _ => None,
                    })
                    .collect();
                match exec.submit(&job, &after) {
                    Ok(sub) => {
                        if exec.remote() {
                            sink.event(&Event::Submitted {
                                name: name_of(j),
                                key,
                                ticket: &sub.ticket.0,
                                executor: exec.name(),
                                adopted: sub.adopted,
                            });
                        }
                        job_of_ticket.insert(sub.ticket.clone(), j);
                        tickets[j] = Some(sub.ticket.clone());
                        state[j] = State::InFlight {
                            ticket: sub.ticket,
                            started: false,
                            doomed: None,
                        };
                        in_flight += 1;
                    }
                    Err(error) => {
                        let name = name_of(j);
                        let error = format!("could not submit to {}: {error}", exec.name());
                        sink.event(&Event::Failed {
                            name,
                            error: &error,
                            detail: None,
                        });
                        state[j] = State::Failed(error, false);
                        let because = format!("`{name}` failed");
                        let doomed = skip_downstream(j, &because, false, &mut state);
                        exec.cancel(&doomed);
                        if !opts.keep_going {
                            stop = true;
                        }
                    }
                }
            }
        }
        if opts.detach {
            // Everything that could be handed over has been; the executor runs the rest.
            break;
        }
        if in_flight == 0 {
            break;
        }
        let Some(report) = exec.wait(TICK) else {
            continue;
        };
        match report {
            Report::Started(t) => {
                if let Some(&j) = job_of_ticket.get(&t)
                    && let State::InFlight { started, .. } = &mut state[j]
                {
                    *started = true;
                    sink.event(&Event::Start {
                        name: name_of(j),
                        key: &jobs[j].key,
                    });
                }
            }
            Report::Ended(t, end) => {
                let Some(&j) = job_of_ticket.get(&t) else {
                    tracing::debug!("an executor reported unknown job {t}");
                    continue;
                };
                let State::InFlight { doomed, .. } = &state[j] else {
                    continue;
                };
                let doomed = doomed.clone();
                in_flight -= 1;
                let interrupted = matches!(end, Finished::Cancelled)
                    || (cancel.load(Ordering::Relaxed) && matches!(end, Finished::Failed { .. }));
                match end {
                    Finished::Done {
                        status,
                        manifest,
                        seconds,
                    } => done(j, status, manifest, seconds, &mut state),
                    Finished::Failed { error, detail, io } if !interrupted && doomed.is_none() => {
                        let name = name_of(j);
                        sink.event(&Event::Failed {
                            name,
                            error: &error,
                            detail: detail.as_deref(),
                        });
                        state[j] = State::Failed(error, io);
                        let because = format!("`{name}` failed");
                        let mut cancel_these = skip_downstream(j, &because, false, &mut state);
                        if !opts.keep_going && !stop {
                            stop = true;
                            // Nothing new starts: queued jobs that have not begun are
                            // withdrawn, as a local run would not start them.
                            for s in state.iter_mut() {
                                if let State::InFlight {
                                    ticket,
                                    started: false,
                                    doomed: None,
                                } = s
                                    && exec.remote()
                                {
                                    cancel_these.push(ticket.clone());
                                }
                            }
                        }
                        exec.cancel(&cancel_these);
                    }
                    // Interrupted (or stopped because an input failed: then it counts as skipped).
                    _ => match doomed {
                        Some(because) => {
                            for &i in &jobs[j].members {
                                sink.event(&Event::Skipped {
                                    name: &stages[i].instance.name,
                                    because: &because,
                                });
                            }
                            state[j] = State::Skipped(because);
                        }
                        None => {
                            state[j] = State::NotRun;
                            let because = format!("`{}` was interrupted", name_of(j));
                            let rest = skip_downstream(j, &because, true, &mut state);
                            exec.cancel(&rest);
                            stop = true;
                        }
                    },
                }
            }
        }
    }

    let remote = exec.remote();
    let records = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let j = job_of_stage[i];
            let resumed_at = match &state[j] {
                State::Done {
                    status: StageStatus::Ran,
                    manifest,
                    ..
                } => manifest.resumed_at,
                _ => None,
            };
            let (status, metrics, seconds, error) = match &state[j] {
                State::Done {
                    status,
                    manifest,
                    seconds,
                } => (*status, manifest.metrics.clone(), *seconds, None),
                State::Failed(m, _) => (StageStatus::Failed, Value::Null, 0.0, Some(m.clone())),
                State::Skipped(m) => (StageStatus::Skipped, Value::Null, 0.0, Some(m.clone())),
                State::InFlight { .. } if opts.detach => {
                    (StageStatus::Queued, Value::Null, 0.0, None)
                }
                State::Pending | State::InFlight { .. } | State::NotRun => {
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
                job: if remote {
                    tickets[j].as_ref().map(|t| t.0.clone())
                } else {
                    None
                },
                resumed_at,
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

fn in_flight_tickets(state: &[State]) -> Vec<Ticket> {
    state
        .iter()
        .filter_map(|s| match s {
            State::InFlight { ticket, .. } => Some(ticket.clone()),
            _ => None,
        })
        .collect()
}

/// The description of job `job`: its first member computes; the others share its key.
fn job_spec(plan: &Plan, job: &Job, index: &HashMap<&str, usize>, device: &str) -> JobSpec {
    let stages = &plan.stages;
    let rep = &stages[job.members[0]];
    JobSpec {
        format: JOB_FORMAT,
        key: job.key.clone(),
        stage: rep.instance.name.clone(),
        also: job.members[1..]
            .iter()
            .map(|&i| stages[i].instance.name.clone())
            .collect(),
        kind: rep.instance.kind.clone(),
        version: rep.version,
        params: rep.instance.params.clone(),
        preimage: rep.preimage.0.clone(),
        inputs: rep
            .instance
            .inputs
            .iter()
            .map(|(role, names)| JobRole {
                role: role.clone(),
                stages: names
                    .iter()
                    .map(|n| {
                        let u = &stages[index[n.as_str()]];
                        JobInput {
                            name: n.clone(),
                            kind: u.instance.kind.clone(),
                            key: u.key.clone(),
                            params: u.instance.params.clone(),
                        }
                    })
                    .collect(),
            })
            .collect(),
        device: device.to_string(),
    }
}
