//! The command line: `run`, `plan`, `explain`, `runs`, `diff`, `show`, `gc`, `kinds`, and
//! the hidden `worker` that executors outside this process run.
//!
//! Exit codes: 0 success; 1 a stage failed; 2 invalid pipeline, override or command line;
//! 3 cache or I/O error; 130 interrupted (Ctrl-C).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::cache::key::diff_values;
use crate::cache::{RunRecord, StageStatus, Store, gc, runs};
use crate::clock;
use crate::exec::events::{Estimates, Overview, PlannedItem};
use crate::exec::remote::{WorkerResult, result_path};
use crate::exec::slurm::{self, SlurmConfig, SlurmExecutor};
use crate::exec::ssh;
use crate::exec::subprocess::{Launch, SubprocessConfig, SubprocessExecutor};
use crate::exec::{
    self, BarSink, Event, EventSink, Finished, JobSpec, JobThreads, PlainSink, RunOptions,
    Scheduling, ThreadPolicy, Why, Worker,
};
use crate::nn::{DeviceSpec, host};
use crate::report::{self, Table, claim_eval, diff, pivot};
use crate::spec::{self, Diagnostic, Override, choices_hint};
use crate::stages::{Registry, Runtime};

/// `print!` that treats a closed stdout (`pipe plan … | head`) as the end of the output
/// rather than a panic.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `println!` with the same treatment of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        out_raw!("{}\n", format_args!($($arg)*))
    };
}

// Command bodies of `report`, `show --plots|--table|--csv` and `diff --plots`; declared after
// the output macros so that it can use them.
mod report_cmds;

pub const EXIT_STAGE_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_CACHE: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "Exit codes: 0 success; 1 a stage failed (or, with --strict-claims, a claim did not hold); 2 invalid pipeline, override or command line; 3 cache or I/O error (also a stage that failed because a file operation did: full disk, read-only cache); 130 interrupted.";

#[derive(Parser, Debug)]
#[command(name = "pipe", version, about = "Declarative pipelines for pruning and training-dynamics research, with a content-addressed cache", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The cache folder.
    #[arg(long, global = true, env = "PIPE_CACHE_DIR", default_value = "cache")]
    pub cache_dir: PathBuf,
    /// Stages run at once [default: the number of CPU cores]. At LeNet sizes a training keeps
    /// about one core busy on the CPU backend, so independent stages use the rest.
    #[arg(short = 'j', long, global = true)]
    pub jobs: Option<usize>,
    /// CPU threads for each stage's tensor arithmetic [default: the cores, shared out among
    /// the stages computing at once and re-shared as they start and end; a stage that runs
    /// alone gets them all]. Results do not depend on it.
    #[arg(long, global = true, env = "PIPE_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// How often long stages (train, netaug_train) save a progress checkpoint, which the next
    /// attempt at the same key resumes from bit for bit; they also save one when stopped
    /// (Ctrl-C, SIGTERM). `30s`, `5m`, `1h`; `0`: never. Not part of keys.
    #[arg(long, global = true, env = "PIPE_CHECKPOINT_EVERY", default_value = "5m", value_name = "DURATION", value_parser = checkpoint_interval)]
    pub checkpoint_every: CheckpointEvery,
    /// Override a value as if written in the file: `-S stages.dense.lr=0.1`,
    /// `-S defaults.train.iterations=50000`, `-S levels.imp.count=12`. Part of the keys.
    #[arg(short = 'S', long = "set", global = true, value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Keep running independent stages after one fails.
    #[arg(long, global = true)]
    pub keep_going: bool,
    /// Where stages compute: cpu, cuda or cuda:N. Recorded in manifests, not part of keys.
    #[arg(long, global = true, env = "PIPE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and the final tables.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// `--checkpoint-every`: `None` is never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointEvery(pub Option<std::time::Duration>);

fn checkpoint_interval(text: &str) -> Result<CheckpointEvery, String> {
    let d = clock::parse_duration(text)?;
    Ok(CheckpointEvery((!d.is_zero()).then_some(d)))
}

impl CheckpointEvery {
    /// The flag as a worker's command line repeats it.
    fn to_arg(self) -> String {
        match self.0 {
            None => "--checkpoint-every=0".into(),
            Some(d) => format!("--checkpoint-every={}ms", d.as_millis().max(1)),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run pipeline files: only stages not in the cache are computed.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        exec: ExecArgs,
        /// Exit 1 when a claim of the pipeline failed or is unknown (after everything ran);
        /// without it claims are reported but do not change the exit code.
        #[arg(long)]
        strict_claims: bool,
    },
    /// Show what `run` would do: every stage, hit or run, and why it would run.
    Plan {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a starter pipeline, NAME.yaml: a LeNet lottery ticket against a random
    /// re-initialisation, with a report and a claim (the README's "Your first pipeline").
    New { name: String },
    /// A stage's full key pre-image and how it differs from the last entry of that name.
    Explain { file: PathBuf, stage: String },
    /// List run records.
    Runs,
    /// Print the outcome of a run's claims again, one line each.
    Claims {
        /// A run id, id prefix, `last` or `-N`.
        #[arg(default_value = "last", allow_negative_numbers = true)]
        run: String,
    },
    /// Parameters and metrics that differ between two runs (ids, id prefixes, `last`, `-2`).
    Diff {
        #[arg(allow_negative_numbers = true)]
        a: String,
        #[arg(allow_negative_numbers = true)]
        b: String,
        #[arg(long, conflicts_with = "md")]
        json: bool,
        #[arg(long)]
        md: bool,
        /// Show unchanged rows too.
        #[arg(long)]
        all: bool,
        /// Count `-N` and `last` over the runs of every pipeline (by default they count among
        /// the runs of the other run's pipeline).
        #[arg(long)]
        any_pipeline: bool,
        #[command(flatten)]
        plots: PlotArgs,
    },
    /// One run's stages and report, or one stage's metrics (from the latest run that has it).
    Show {
        /// A run (id, id prefix, `last`, `-N`) or a stage name.
        #[arg(allow_negative_numbers = true)]
        target: String,
        /// JSON: the whole run record, or with --table that table as an array of objects.
        #[arg(long, conflicts_with_all = ["csv", "md"])]
        json: bool,
        /// The table as CSV (default table: summary).
        #[arg(long, conflicts_with = "md")]
        csv: bool,
        /// The table as Markdown.
        #[arg(long)]
        md: bool,
        /// Only the folder of the stage's cache entry (its files: model.safetensors, a command
        /// stage's log in command/log.txt), as an absolute path.
        #[arg(long, conflicts_with_all = ["json", "csv", "md", "table"])]
        path: bool,
        /// Which of a run's tables: summary, report (long form: mean, std, n), metrics (tidy:
        /// one row per stage and metric, with sweep variables and parameters as columns).
        #[arg(long, value_name = "NAME")]
        table: Option<String>,
        #[command(flatten)]
        plots: PlotArgs,
    },
    /// Write a run's self-contained HTML report, its Markdown, plots and tables (CSV, JSON).
    Report {
        /// A run id, id prefix, `last` or `-N`.
        #[arg(default_value = "last", allow_negative_numbers = true)]
        run: String,
        /// The folder to write into [default: CACHE/runs/RUN/report].
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Also plot the learning curves of the train stages matching this pattern (repeatable).
        #[arg(long, value_name = "PATTERN")]
        curves: Vec<String>,
    },
    /// Remove cache entries that no kept run reaches.
    Gc {
        /// Keep only the newest N run records (and what they reach).
        #[arg(long)]
        keep_last: Option<usize>,
        /// Print what would be removed and its size; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List stage kinds, or one kind's parameters with their defaults.
    Kinds { kind: Option<String> },
    /// Run one job description against the cache (what `--executor slurm` submits).
    #[command(hide = true)]
    Worker { job: PathBuf },
}

/// Where `run` computes.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Where jobs run: `local` (threads of this process), `subprocess` (`pipe worker` child
    /// processes), `ssh` (`pipe worker` on `--hosts` over ssh), `slurm` (one `sbatch` per job).
    /// With `ssh` and `slurm` the cache, the data and this binary must be on a file system the
    /// nodes share, at the same paths.
    #[arg(long, value_enum, env = "PIPE_EXECUTOR", default_value = "local")]
    pub executor: ExecutorKind,
    /// With `--executor ssh`: the hosts that run jobs (ssh destinations), comma-separated.
    /// `-j` jobs run at once in all [default: one per host], each on the least busy host.
    #[arg(
        long,
        env = "PIPE_SSH_HOSTS",
        value_delimiter = ',',
        value_name = "HOST,..."
    )]
    pub hosts: Vec<String>,
    /// With `--executor slurm`: return once every job is queued. `pipe runs` and `pipe show
    /// RUN` report the jobs' states; running the file again follows them.
    #[arg(long)]
    pub detach: bool,
    /// With `--executor slurm`: seconds between `squeue` polls.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub poll: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Local,
    Subprocess,
    Ssh,
    Slurm,
}

/// Flags that turn a command's output into plot files.
#[derive(Args, Debug, Clone, Default)]
pub struct PlotArgs {
    /// Write the run's plots (SVG, PNG, CSV data) and print where.
    #[arg(long)]
    pub plots: bool,
    /// With --plots: learning curves of the train stages matching this pattern (repeatable).
    #[arg(long, value_name = "PATTERN", requires = "plots")]
    pub curves: Vec<String>,
    /// With --plots: the folder to write into [default: under CACHE/runs/RUN/].
    #[arg(long, value_name = "DIR", requires = "plots")]
    pub out: Option<PathBuf>,
}

/// A failure at the edge, with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn invalid(m: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_INVALID,
            message: m.to_string(),
        }
    }
    pub(crate) fn cache(m: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_CACHE,
            message: m.to_string(),
        }
    }
}

impl From<exec::PlanError> for Failure {
    fn from(e: exec::PlanError) -> Self {
        match e {
            exec::PlanError::Invalid(d) => Failure::invalid(d),
            exec::PlanError::Cache(c) => Failure::cache(c),
        }
    }
}

impl From<crate::cache::CacheError> for Failure {
    fn from(e: crate::cache::CacheError) -> Self {
        Failure::cache(e)
    }
}

/// Entry point shared by the `pipe` binary and programs that register extra stage kinds.
pub fn main(registry: Registry) -> ExitCode {
    host::retain_tensor_buffers();
    let cli = Cli::parse();
    init_tracing(cli.global.verbose, cli.global.quiet);
    match dispatch(cli, &registry) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            ExitCode::from(f.code)
        }
    }
}

/// Colour codes only for a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>): a log file or CI output must not fill with escape sequences.
pub fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pipe={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli, registry: &Registry) -> Result<u8, Failure> {
    let g = &cli.global;
    match &cli.command {
        Command::Run {
            files,
            exec,
            strict_claims,
        } => cmd_run(g, registry, files, exec, *strict_claims),
        Command::Plan { files } => cmd_plan(g, registry, files),
        Command::Explain { file, stage } => cmd_explain(g, registry, file, stage),
        Command::New { name } => cmd_new(name),
        Command::Runs => cmd_runs(g),
        Command::Claims { run } => cmd_claims(g, run),
        Command::Diff {
            a,
            b,
            json,
            md,
            all,
            any_pipeline,
            plots,
        } => {
            if plots.plots {
                report_cmds::diff_plots(g, a, b, *any_pipeline, plots)
            } else {
                cmd_diff(g, a, b, *json, *md, *all, *any_pipeline)
            }
        }
        Command::Show {
            target,
            json,
            csv,
            md,
            path,
            table,
            plots,
        } => {
            let format = report_cmds::Format::from_flags(*json, *csv, *md);
            if *path {
                cmd_show_path(g, target)
            } else if plots.plots {
                report_cmds::show_plots(g, target, plots)
            } else if table.is_some()
                || matches!(format, report_cmds::Format::Csv | report_cmds::Format::Md)
            {
                report_cmds::show_table(g, target, table.as_deref(), format)
            } else {
                cmd_show(g, target, *json)
            }
        }
        Command::Report { run, out, curves } => report_cmds::report(g, run, out.as_deref(), curves),
        Command::Gc { keep_last, dry_run } => cmd_gc(g, *keep_last, *dry_run),
        Command::Kinds { kind } => cmd_kinds(registry, kind.as_deref()),
        Command::Worker { job } => cmd_worker(g, registry, job),
    }
}

fn overrides(g: &Global) -> Result<Vec<Override>, Failure> {
    g.set
        .iter()
        .map(|s| s.parse::<Override>().map_err(Failure::invalid))
        .collect()
}

fn load_plan(
    g: &Global,
    registry: &Registry,
    files: &[PathBuf],
) -> Result<(exec::Plan, Store), Failure> {
    let ov = overrides(g)?;
    let pipeline = spec::load(files, &ov, registry).map_err(Failure::invalid)?;
    let store = Store::open(&g.cache_dir)?;
    let plan = exec::plan(pipeline, registry, &store)?;
    Ok((plan, store))
}

fn device(g: &Global) -> Result<DeviceSpec, Failure> {
    let d: DeviceSpec = g
        .device
        .parse()
        .map_err(|e| Failure::invalid(format!("error: --device: {e}")))?;
    d.available()
        .map_err(|e| Failure::invalid(format!("error: --device {}: {e}", g.device)))?;
    Ok(d)
}

pub fn plan_table(plan: &exec::Plan) -> Table {
    let mut t = Table::new(["", "Stage", "Kind", "Key", "Why"]);
    for s in &plan.stages {
        t.push(vec![
            match s.resumes_at {
                _ if s.cached() => "hit".into(),
                Some((done, total)) => format!("run (resumes at {done}/{total})"),
                None => "run".into(),
            },
            s.instance.name.clone(),
            s.instance.kind.clone(),
            crate::cache::short(&s.key, 12).to_string(),
            if s.cached() {
                String::new()
            } else {
                s.why.describe(&s.instance)
            },
        ]);
    }
    t
}

fn plan_counts(plan: &exec::Plan) -> String {
    let hits = plan.stages.iter().filter(|s| s.cached()).count();
    let mut keys: Vec<&str> = plan
        .stages
        .iter()
        .filter(|s| !s.cached())
        .map(|s| s.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    format!(
        "{} stages: {hits} cached, {} to run ({} distinct computations)",
        plan.stages.len(),
        plan.stages.len() - hits,
        keys.len()
    )
}

fn cmd_plan(g: &Global, registry: &Registry, files: &[PathBuf]) -> Result<u8, Failure> {
    let (plan, _) = load_plan(g, registry, files)?;
    out_raw!("{}", plan_table(&plan).render_text());
    out!("{}", plan_counts(&plan));
    let claims = &plan.pipeline.claims;
    if !claims.is_empty() {
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        out!(
            "{} claim{} checked after `pipe run`: {}",
            claims.len(),
            if claims.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
    }
    Ok(0)
}

static CANCEL: AtomicBool = AtomicBool::new(false);

/// First Ctrl-C (or SIGTERM): stop cleanly, running stages abandon their temporary folders.
/// Second: exit now.
fn on_interrupt(message: &'static str) {
    let _ = ctrlc::set_handler(move || {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("{message}");
    });
}

fn cmd_run(
    g: &Global,
    registry: &Registry,
    files: &[PathBuf],
    ex: &ExecArgs,
    strict_claims: bool,
) -> Result<u8, Failure> {
    if ex.detach && ex.executor != ExecutorKind::Slurm {
        return Err(Failure::invalid(
            "error: --detach needs --executor slurm (other executors' jobs end with `pipe run`)",
        ));
    }
    if ex.executor == ExecutorKind::Ssh {
        ssh::check_hosts(&ex.hosts).map_err(|e| Failure::invalid(format!("error: {e}")))?;
    } else if !ex.hosts.is_empty() {
        return Err(Failure::invalid(
            "error: --hosts is for --executor ssh; add `--executor ssh` or drop --hosts",
        ));
    }
    if !(ex.poll.is_finite() && ex.poll > 0.0) {
        return Err(Failure::invalid(format!(
            "error: --poll {}: give a positive number of seconds",
            ex.poll
        )));
    }
    // Jobs that run elsewhere check the device where they run (a login node has no GPU).
    let device = if ex.executor == ExecutorKind::Local {
        device(g)?
    } else {
        g.device
            .parse()
            .map_err(|e| Failure::invalid(format!("error: --device: {e}")))?
    };
    let (plan, store) = load_plan(g, registry, files)?;
    // The files as they are now, for the run record (a report shows what ran). A file too
    // large to be a pipeline is left out rather than copied into every record.
    let sources: Vec<(PathBuf, String)> = plan
        .pipeline
        .files
        .iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() <= 1 << 20))
        .filter_map(|p| Some((p.clone(), std::fs::read_to_string(p).ok()?)))
        .collect();
    if !g.quiet {
        eprintln!("{}", plan_counts(&plan));
    }
    on_interrupt(if ex.executor == ExecutorKind::Slurm && !ex.detach {
        "interrupted: cancelling the run's Slurm jobs; finished results are kept (Ctrl-C again to exit now)"
    } else {
        "interrupted: stopping running stages; finished results are kept (Ctrl-C again to exit now)"
    });
    let run_id = clock::run_id();
    let started = clock::now_secs();
    let t0 = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = match ex.executor {
        ExecutorKind::Ssh => g.jobs.unwrap_or(ex.hosts.len()),
        _ => g.jobs.unwrap_or(cores),
    };
    let overview = progress_overview(&plan, &store, jobs);
    let sink: Box<dyn EventSink> = if std::io::stderr().is_terminal() && !g.quiet {
        Box::new(BarSink::with_overview(overview))
    } else {
        Box::new(PlainSink::with_overview(g.quiet, overview))
    };
    let threads = match g.threads {
        Some(t) => ThreadPolicy::PerJob(usize::from(t)),
        // rayon reads RAYON_NUM_THREADS itself; a user who set it meant it.
        None if std::env::var_os("RAYON_NUM_THREADS").is_some() => ThreadPolicy::RayonDefault,
        None => ThreadPolicy::FollowWork { cores },
    };
    // Worker processes cannot see each other: each gets its share of the cores at the start.
    let per_process = match threads {
        ThreadPolicy::PerJob(t) => Some(t),
        ThreadPolicy::RayonDefault => None,
        ThreadPolicy::FollowWork { cores } => Some(host::cpu_threads(jobs, cores)),
    };
    let opts = RunOptions {
        jobs,
        keep_going: g.keep_going,
        device: device.to_string(),
        detach: ex.detach,
        threads,
        checkpoint_every: g.checkpoint_every.0,
    };
    let scheduling = Scheduling {
        store: &store,
        opts: &opts,
        sink: sink.as_ref(),
        cancel: &CANCEL,
    };
    let remote =
        |worker_threads: Option<usize>| -> Result<(PathBuf, PathBuf, Vec<String>), Failure> {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::invalid(format!("error: cannot find this pipe binary: {e}"))
            })?;
            let cache = std::fs::canonicalize(store.root()).map_err(|e| {
                Failure::cache(format!(
                    "error: cache folder {}: {e}",
                    store.root().display()
                ))
            })?;
            let mut args = Vec::new();
            if let Some(t) = worker_threads {
                args.push(format!("--threads={t}"));
            }
            args.push(g.checkpoint_every.to_arg());
            if g.verbose > 0 {
                args.push(format!("-{}", "v".repeat(usize::from(g.verbose))));
            }
            Ok((exe, cache, args))
        };
    let run_dir = runs::run_folder(store.root(), &run_id);
    let workdir = || {
        std::env::current_dir()
            .map_err(|e| Failure::cache(format!("error: the current directory: {e}")))
    };
    let outcome = match ex.executor {
        ExecutorKind::Local => {
            match threads {
                ThreadPolicy::PerJob(t) => host::set_cpu_threads(t),
                ThreadPolicy::FollowWork { cores } => host::set_cpu_threads(cores),
                ThreadPolicy::RayonDefault => {}
            }
            let runtime = Runtime::new(device.clone());
            let env = exec::Engine {
                registry,
                store: &store,
                opts: &opts,
                sink: sink.as_ref(),
                cancel: &CANCEL,
                runtime: &runtime,
            };
            exec::execute(&plan, env)
        }
        ExecutorKind::Subprocess => {
            let (exe, cache, worker_args) = remote(per_process)?;
            let sub = SubprocessExecutor::new(
                SubprocessConfig {
                    name: "subprocess",
                    launch: vec![Launch::Here],
                    exe,
                    cache,
                    run_dir,
                    workdir: workdir()?,
                    worker_args,
                    slots: jobs,
                },
                store.clone(),
            );
            exec::schedule(&plan, scheduling, &sub)
        }
        ExecutorKind::Ssh => {
            // Hosts have their own cores: workers size their threads there unless --threads.
            let (exe, cache, worker_args) = remote(g.threads.map(usize::from))?;
            let sub = SubprocessExecutor::new(
                SubprocessConfig {
                    name: "ssh",
                    launch: ssh::launches(&ex.hosts),
                    exe,
                    cache,
                    run_dir,
                    workdir: workdir()?,
                    worker_args,
                    slots: jobs,
                },
                store.clone(),
            );
            exec::schedule(&plan, scheduling, &sub)
        }
        ExecutorKind::Slurm => {
            // Each job's threads follow its `cpus` request (SLURM_CPUS_PER_TASK) unless given.
            let (exe, cache, worker_args) = remote(g.threads.map(usize::from))?;
            let slurm = SlurmExecutor::new(
                SlurmConfig {
                    exe,
                    cache,
                    run_id: run_id.clone(),
                    run_dir,
                    workdir: workdir()?,
                    worker_args,
                    resources: plan.pipeline.resources.clone(),
                    poll: std::time::Duration::from_secs_f64(ex.poll),
                },
                store.clone(),
            )
            .map_err(|e| Failure::invalid(format!("error: --executor slurm: {e}")))?;
            exec::schedule(&plan, scheduling, &slurm)
        }
    };
    let queued = outcome.queued();
    let report_text = plan
        .pipeline
        .report
        .as_ref()
        .filter(|_| queued == 0)
        .map(|r| {
            for w in pivot::missing_metrics(r, &outcome.records) {
                tracing::warn!("{w}");
            }
            pivot::render(r, &pivot::build(r, &outcome.records))
        });
    // Claims are judged once every stage has ended; queued stages have no metrics yet.
    let claims = if queued == 0 {
        claim_eval::evaluate(&plan.pipeline.claims, &outcome.records)
    } else {
        Vec::new()
    };
    let record = RunRecord {
        id: run_id,
        pipeline: plan.pipeline.name.clone(),
        files: plan.pipeline.files.clone(),
        sources,
        overrides: g.set.clone(),
        started_at: clock::rfc3339(started),
        duration_s: t0.elapsed().as_secs_f64(),
        device: device.to_string(),
        executor: match ex.executor {
            ExecutorKind::Local => None,
            ExecutorKind::Subprocess => Some("subprocess".into()),
            ExecutorKind::Ssh => Some("ssh".into()),
            ExecutorKind::Slurm => Some("slurm".into()),
        },
        outcome: if outcome.interrupted {
            "interrupted"
        } else if queued > 0 {
            "detached"
        } else if outcome.ok() {
            "ok"
        } else {
            "failed"
        }
        .into(),
        stages: outcome.records.clone(),
        report: report_text.clone(),
        pipe_version: env!("CARGO_PKG_VERSION").into(),
        report_spec: plan.pipeline.report.clone(),
        plots: plan.pipeline.plots.clone(),
        claims,
    };
    // A full disk may refuse the record too; the summary is still printed before saying so.
    let saved = runs::save(store.root(), &record);
    // Stages still queued on Slurm have no metrics yet: their plots come with `pipe show
    // RUN --plots` or `pipe report` once they have ended.
    let plots_written = if queued == 0 && saved.is_ok() {
        report_cmds::plots_after_run(&record, &store)
    } else {
        None
    };
    out!("{}", summary_table(&record).render_text());
    if let Some(r) = &report_text {
        out!("{r}");
    }
    for c in &record.claims {
        out!("{}", claim_eval::line(c));
    }
    if queued > 0 {
        out!(
            "run {}: {queued} stage(s) queued on Slurm, {} cached; `pipe show {}` reports their states, and running the same file again follows them",
            record.id,
            record.count(StageStatus::Hit),
            record.id
        );
    } else {
        out!("{}", run_line(&record, &store));
    }
    if let Some(msg) = plots_written {
        out!("{msg}");
    }
    if let Err(e) = saved {
        return Err(Failure::cache(format!(
            "error: the run record could not be written: {e}"
        )));
    }
    if !outcome.io_failures.is_empty() && !outcome.interrupted {
        eprintln!(
            "error: {} failed on a cache or file-system error (see above): free disk space or make the cache folder writable, then run again",
            spec::stage_list(&outcome.io_failures)
        );
    }
    Ok(if outcome.interrupted {
        EXIT_INTERRUPTED
    } else if !outcome.io_failures.is_empty() {
        EXIT_CACHE
    } else if !(outcome.ok() || (queued > 0 && record.count(StageStatus::Failed) == 0)) {
        EXIT_STAGE_FAILED
    } else if strict_claims
        && let Some(c) = record
            .claims
            .iter()
            .find(|c| c.outcome != claim_eval::Outcome::Held)
    {
        eprintln!(
            "error: claim `{}` {} (--strict-claims)",
            c.name,
            if c.outcome == claim_eval::Outcome::Failed {
                "failed"
            } else {
                "could not be decided"
            }
        );
        EXIT_STAGE_FAILED
    } else {
        0
    })
}

/// The whole-pipeline progress view: every planned stage, and how long each stage and each
/// kind took in earlier runs (for the ETA).
fn progress_overview(plan: &exec::Plan, store: &Store, jobs: usize) -> Overview {
    let items = plan
        .stages
        .iter()
        .map(|s| PlannedItem {
            name: s.instance.name.clone(),
            key: s.key.clone(),
            kind: s.instance.kind.clone(),
            cached: s.cached(),
        })
        .collect();
    let history = runs::list(store.root())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.stages)
        .filter(|s| s.status == StageStatus::Ran)
        .map(|s| (s.name, s.kind, s.duration_s));
    Overview::new(items, Estimates::from_history(history), jobs)
}

/// `pipe worker JOB.json`: computes one job against the cache (a hit if its entry exists or
/// appears while waiting for the key's lock), writes `JOB.result.json`, and exits 0 when the
/// entry exists, so that Slurm's `afterok` releases the jobs that consume it.
fn cmd_worker(g: &Global, registry: &Registry, path: &Path) -> Result<u8, Failure> {
    let job = JobSpec::read(path).map_err(Failure::invalid)?;
    let result = result_path(path);
    let finish = |end: Finished| -> Result<u8, Failure> {
        WorkerResult::of(&end)
            .write(&result)
            .map_err(|e| Failure::cache(format!("{}: {e}", result.display())))?;
        Ok(match end {
            Finished::Done { .. } => 0,
            Finished::Failed { io: true, .. } => EXIT_CACHE,
            Finished::Failed { .. } => EXIT_STAGE_FAILED,
            Finished::Cancelled => EXIT_INTERRUPTED,
        })
    };
    let sink = PlainSink::new(g.quiet);
    let device = match job
        .device
        .parse::<DeviceSpec>()
        .map_err(|e| e.to_string())
        .and_then(|d| d.available().map(|()| d).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            let error = format!("device `{}` on {}: {e}", job.device, clock::hostname());
            sink.event(&Event::Failed {
                name: &job.stage,
                error: &error,
                detail: None,
            });
            return finish(Finished::failed(error));
        }
    };
    let store = Store::open(&g.cache_dir)?;
    let threads = g.threads.map(usize::from).or_else(|| {
        // Slurm gives a job the CPUs it asked for (one unless `cpus` says more).
        let slurm_cpus = std::env::var("SLURM_CPUS_PER_TASK").ok()?;
        slurm_cpus.parse().ok()
    });
    let threads = match threads {
        None if std::env::var_os("SLURM_JOB_ID").is_some() => Some(1),
        t => t,
    };
    if let Some(t) = threads {
        host::set_cpu_threads(t);
    }
    on_interrupt(
        "interrupted: stopping the stage; its unfinished folder is removed, its progress kept to resume from",
    );
    eprintln!(
        "pipe worker: stage `{}` (key {}) on {}, device {}",
        job.stage,
        crate::cache::short(&job.key, 12),
        clock::hostname(),
        job.device
    );
    let runtime = Runtime::new(device);
    let worker = Worker {
        registry,
        store: &store,
        runtime: &runtime,
        sink: &sink,
        cancel: &CANCEL,
        threads: JobThreads::Fixed(threads),
        checkpoint_every: g.checkpoint_every.0,
    };
    let end = worker.run(&job);
    match &end {
        Finished::Done {
            status: StageStatus::Hit,
            ..
        } => sink.event(&Event::Hit {
            name: &job.stage,
            key: &job.key,
        }),
        Finished::Done {
            manifest, seconds, ..
        } => sink.event(&Event::Done {
            name: &job.stage,
            seconds: *seconds,
            headline: &exec::headline(&manifest.metrics),
        }),
        Finished::Failed { error, detail, .. } => sink.event(&Event::Failed {
            name: &job.stage,
            error,
            detail: detail.as_deref(),
        }),
        Finished::Cancelled => eprintln!("interrupted {}", job.stage),
    }
    finish(end)
}

/// The run's last line: what ran (and how much of it resumed from a progress checkpoint),
/// what was cached, what failed; an interrupted run says so first, with what it left to
/// resume from.
fn run_line(record: &RunRecord, store: &Store) -> String {
    let resumed = record
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Ran && s.resumed_at.is_some())
        .count();
    let ran = match resumed {
        0 => format!("{} ran", record.count(StageStatus::Ran)),
        n => format!("{} ran ({n} resumed)", record.count(StageStatus::Ran)),
    };
    let counts = format!(
        "{ran}, {} cached, {} failed",
        record.count(StageStatus::Hit),
        record.count(StageStatus::Failed)
    );
    if record.outcome != "interrupted" {
        return format!("run {}: {counts}, {:.1}s", record.id, record.duration_s);
    }
    let mut keys: Vec<&str> = record
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::NotRun)
        .map(|s| s.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let saved = keys
        .iter()
        .filter(|k| store.resume_area(k).peek().is_some())
        .count();
    let not_run = record.count(StageStatus::NotRun);
    let left = if saved > 0 {
        format!("{not_run} not run ({saved} with a progress checkpoint: the next run resumes it)")
    } else {
        format!("{not_run} not run")
    };
    format!(
        "run {}: interrupted: {counts}, {left}, {:.1}s",
        record.id, record.duration_s
    )
}

pub fn summary_table(rec: &RunRecord) -> Table {
    let mut t = Table::new(["Stage", "Status", "Key", "Time", "Metrics"]);
    for s in &rec.stages {
        t.push(vec![
            s.name.clone(),
            s.status.as_str().into(),
            crate::cache::short(&s.key, 12).to_string(),
            if s.status == StageStatus::Ran {
                format!("{:.1}s", s.duration_s)
            } else {
                String::new()
            },
            match (&s.error, &s.job) {
                (Some(e), _) => e.clone(),
                (None, Some(job)) if s.status == StageStatus::Queued => format!("job {job}"),
                (None, _) => exec::headline(&s.metrics),
            },
        ]);
    }
    t
}

fn cmd_explain(
    g: &Global,
    registry: &Registry,
    file: &std::path::Path,
    stage: &str,
) -> Result<u8, Failure> {
    let (plan, store) = load_plan(g, registry, &[file.to_path_buf()])?;
    let Some(s) = plan.stages.iter().find(|s| s.instance.name == stage) else {
        let names: Vec<&str> = plan
            .stages
            .iter()
            .map(|s| s.instance.name.as_str())
            .collect();
        return Err(Failure::invalid(
            Diagnostic::bare(format!("no stage `{stage}` in {}", file.display()))
                .hint(choices_hint(stage, &names)),
        ));
    };
    out!("stage:  {}", s.instance.name);
    out!("kind:   {}", s.instance.kind);
    out!("key:    {}", s.key);
    match s.resumes_at {
        _ if s.cached() => out!("status: cached"),
        Some((done, total)) => out!(
            "status: will run, resuming at {done}/{total} from the progress checkpoint an interrupted attempt left"
        ),
        None => out!("status: will run"),
    }
    out!("pre-image (BLAKE3 of its canonical form is the key):");
    out!(
        "{}",
        serde_json::to_string_pretty(&s.preimage.0).expect("JSON")
    );
    match store.last_for_name(stage) {
        None => out!("no earlier entry named `{stage}`"),
        Some(last) if last == s.key => out!(
            "same key as the last entry named `{stage}`{}",
            if s.cached() {
                ""
            } else {
                " (that entry is gone)"
            }
        ),
        Some(last) => match store.read_manifest(&last) {
            Ok(m) => {
                out!(
                    "differences from the last entry named `{stage}` ({}):",
                    crate::cache::short(&last, 12)
                );
                let mut t = Table::new(["Field", "Last entry", "Now"]);
                for (path, a, b) in diff_values(&m.preimage, &s.preimage.0) {
                    t.push(vec![path, report::fmt_value(&a), report::fmt_value(&b)]);
                }
                out_raw!("{}", t.render_text());
                if let Why::Changed(_) = &s.why {
                    out!("why: {}", s.why.describe(&s.instance));
                }
            }
            Err(_) => out!(
                "the last entry named `{stage}` ({}) is gone",
                crate::cache::short(&last, 12)
            ),
        },
    }
    Ok(0)
}

/// Every run record; `--detach`ed Slurm runs are brought up to date first (and saved once
/// all their jobs have ended).
pub(crate) fn all_runs(g: &Global) -> Result<Vec<RunRecord>, Failure> {
    let mut rs = runs::list(&g.cache_dir)?;
    let detached =
        |r: &RunRecord| r.outcome == "detached" && r.executor.as_deref() == Some("slurm");
    if rs.iter().any(detached) {
        let store = Store::open(&g.cache_dir)?;
        for r in rs.iter_mut().filter(|r| detached(r)) {
            if slurm::refresh(&store, r)
                && let Err(e) = runs::save(store.root(), r)
            {
                tracing::warn!("could not update run record {}: {e}", r.id);
            }
        }
    }
    Ok(rs)
}

fn cmd_runs(g: &Global) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let mut t = Table::new([
        "Run", "Pipeline", "Started", "Stages", "Ran", "Hit", "Outcome", "Time",
    ]);
    for r in &rs {
        let count = |st: StageStatus| r.count(st).to_string();
        t.push(vec![
            r.id.clone(),
            r.pipeline.clone(),
            r.started_at.clone(),
            r.stages.len().to_string(),
            count(StageStatus::Ran),
            count(StageStatus::Hit),
            r.outcome.clone(),
            format!("{:.1}s", r.duration_s),
        ]);
    }
    out_raw!("{}", t.render_text());
    Ok(0)
}

fn cmd_diff(
    g: &Global,
    a: &str,
    b: &str,
    json: bool,
    md: bool,
    all: bool,
    any_pipeline: bool,
) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let (ra, rb) = runs::resolve_pair(&rs, a, b, any_pipeline).map_err(Failure::invalid)?;
    let rows = diff::diff_runs(ra, rb, all);
    if ra.started_at > rb.started_at {
        eprintln!(
            "warning: A ({}, {}) is newer than B ({}, {}): Change is B − A, the older minus the newer; `pipe diff {} {}` puts the older first",
            ra.id, ra.started_at, rb.id, rb.started_at, rb.id, ra.id
        );
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
        if ra.pipeline != rb.pipeline {
            out!(
                "A and B are runs of different pipelines (`{}` and `{}`): stages are matched by name",
                ra.pipeline,
                rb.pipeline
            );
        }
        if !md {
            out!(
                "A = {} ({}), B = {} ({})",
                ra.id,
                ra.started_at,
                rb.id,
                rb.started_at
            );
        }
        let t = diff::diff_table(&rows, &ra.id, &rb.id);
        if md {
            out_raw!("{}", t.render_md());
        } else if rows.is_empty() {
            out!("no differences between {} and {}", ra.id, rb.id);
        } else {
            out_raw!("{}", t.render_text());
        }
    }
    Ok(0)
}

fn cmd_claims(g: &Global, run: &str) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let r = runs::resolve(&rs, run).map_err(Failure::invalid)?;
    if r.claims.is_empty() {
        out!("run {} records no claims", r.id);
    }
    for c in &r.claims {
        out!("{}", claim_eval::line(c));
    }
    Ok(0)
}

fn cmd_show(g: &Global, target: &str, json: bool) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    if let Ok(r) = runs::resolve(&rs, target) {
        if json {
            out!("{}", serde_json::to_string_pretty(r).expect("JSON"));
        } else {
            out!(
                "run {} ({}, {}, {})",
                r.id,
                r.pipeline,
                r.started_at,
                r.outcome
            );
            out_raw!("{}", summary_table(r).render_text());
            if let Some(rep) = &r.report {
                out!("\n{rep}");
            }
            for c in &r.claims {
                out!("{}", claim_eval::line(c));
            }
        }
        return Ok(0);
    }
    let Some((run, s)) = rs
        .iter()
        .rev()
        .find_map(|r| r.stage(target).map(|s| (r, s)))
    else {
        return Err(Failure::invalid(format!(
            "error: `{target}` is neither a run nor a stage of any recorded run\n  = hint: `pipe runs` lists runs; stage names are as `pipe plan` prints them"
        )));
    };
    if json {
        out!("{}", serde_json::to_string_pretty(s).expect("JSON"));
        return Ok(0);
    }
    out!(
        "stage {} ({}) in run {}: {}",
        s.name,
        s.kind,
        run.id,
        s.status.as_str()
    );
    out!("key {}", s.key);
    let entry = g.cache_dir.join("entries").join(&s.key[..2]).join(&s.key);
    if entry.is_dir() {
        // Where its files are (`model.safetensors` loads into the equivalent torch.nn module).
        out!("entry {}", entry.display());
    }
    let mut t = Table::new(["Metric", "Value"]);
    if let Value::Object(m) = &s.metrics {
        for (k, v) in m {
            t.push(vec![k.clone(), report::fmt_value(v)]);
        }
    }
    out_raw!("{}", t.render_text());
    Ok(0)
}

/// `pipe show STAGE --path`: the stage's entry folder, from the latest run that has it.
fn cmd_show_path(g: &Global, target: &str) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let Some(s) = rs.iter().rev().find_map(|r| r.stage(target)) else {
        return Err(Failure::invalid(format!(
            "error: `{target}` is not a stage of any recorded run (--path takes a stage)\n  = hint: stage names are as `pipe plan` prints them"
        )));
    };
    let entry = g
        .cache_dir
        .join("entries")
        .join(&s.key[..2.min(s.key.len())])
        .join(&s.key);
    if !entry.is_dir() {
        return Err(Failure::invalid(format!(
            "error: stage `{target}` has no entry in {} (its key {} was removed by `pipe gc`, or it never finished)\n  = hint: `pipe run` computes it again",
            g.cache_dir.display(),
            crate::cache::short(&s.key, 12)
        )));
    }
    let entry = std::path::absolute(&entry).unwrap_or(entry);
    out!("{}", entry.display());
    Ok(0)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn cmd_gc(g: &Global, keep_last: Option<usize>, dry_run: bool) -> Result<u8, Failure> {
    let store = Store::open(&g.cache_dir)?;
    let rep = gc::collect(&store, keep_last, dry_run)?;
    let mut t = Table::new(["What", "Id", "Stage/Pipeline", "Size"]);
    for r in &rep.removed {
        t.push(vec![
            r.what.into(),
            // Keys (and folders named after them) are shown like everywhere else.
            if crate::cache::is_key(crate::cache::short(&r.id, 64)) {
                crate::cache::short(&r.id, 12).to_string()
            } else {
                r.id.clone()
            },
            r.name.clone(),
            human_bytes(r.bytes),
        ]);
    }
    if !rep.removed.is_empty() {
        out_raw!("{}", t.render_text());
    }
    out!(
        "{} {} item(s), {}; kept {} entries{}",
        if dry_run { "would remove" } else { "removed" },
        rep.removed.len(),
        human_bytes(rep.bytes()),
        rep.kept_entries,
        if rep.busy.is_empty() {
            String::new()
        } else {
            format!("; {} in use, left alone", rep.busy.len())
        }
    );
    Ok(0)
}

fn cmd_kinds(registry: &Registry, kind: Option<&str>) -> Result<u8, Failure> {
    match kind {
        None => {
            let mut t = Table::new(["Kind", "Version", "Inputs", "About"]);
            for k in registry.iter() {
                let roles: Vec<String> = k
                    .roles()
                    .iter()
                    .map(|r| {
                        format!(
                            "{}{}",
                            r.name,
                            if r.many {
                                "[]"
                            } else if r.required {
                                ""
                            } else {
                                "?"
                            }
                        )
                    })
                    .collect();
                t.push(vec![
                    k.kind().into(),
                    k.version().to_string(),
                    roles.join(", "),
                    k.about().into(),
                ]);
            }
            out_raw!("{}", t.render_text());
        }
        Some(name) => {
            let Some(k) = registry.get(name) else {
                return Err(Failure::invalid(
                    Diagnostic::bare(format!("unknown stage kind `{name}`"))
                        .hint(choices_hint(name, &registry.names())),
                ));
            };
            out_raw!("{}", describe_kind(k));
        }
    }
    Ok(0)
}

/// `pipe kinds KIND`: every parameter the kind's struct accepts with its default (`data.*`
/// spelt out), the inputs it takes, the metrics it sets, and for `init` every model family.
fn describe_kind(k: &dyn crate::stages::StageKind) -> String {
    use std::fmt::Write as _;
    let mut text = format!("{} (version {}): {}\n", k.kind(), k.version(), k.about());
    let (defaults, required) = defaults_of(k);
    let mut rows: Vec<(String, String)> = Vec::new();
    // A field left out of the normalised defaults is either an option that is unset or a
    // switch written only when on (so that adding it kept old keys): ask which.
    let is_switch = |path: &[&str]| {
        let mut given = Value::Object(defaults.clone());
        let mut at = &mut given;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = Value::Bool(true);
        k.normalize(&given)
            .is_ok_and(|v| path.iter().try_fold(&v, |v, p| v.get(*p)) == Some(&Value::Bool(true)))
    };
    let shown = |v: Option<&Value>, path: &[&str]| match v {
        _ if required.iter().any(|r| r == path[0]) => "(required)".to_string(),
        Some(v) => serde_json::to_string(v).expect("JSON"),
        None if is_switch(path) => "false".to_string(),
        None => "(not set)".to_string(),
    };
    for f in k.fields() {
        let v = defaults.get(f);
        if f == "data" {
            for d in crate::serde_fields::field_names::<crate::stages::dataset::DataParams>() {
                let name = format!("data.{d}");
                rows.push((name, shown(v.and_then(|v| v.get(d)), &["data", d])));
            }
        } else {
            rows.push((f.to_string(), shown(v, &[f])));
        }
    }
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    text.push_str("parameters (default):\n");
    for (n, v) in &rows {
        let _ = writeln!(text, "  {n:width$}  {v}");
    }
    if !k.roles().is_empty() {
        let roles: Vec<String> = k
            .roles()
            .iter()
            .map(|r| {
                let suffix = if r.many {
                    "[]"
                } else if r.required {
                    ""
                } else {
                    " (optional)"
                };
                format!("{}{suffix}", r.name)
            })
            .collect();
        let _ = writeln!(text, "inputs: {}", roles.join(", "));
    }
    match k.metrics() {
        ["*"] => text.push_str("metrics: not declared (known once it has run)\n"),
        m => {
            let _ = writeln!(text, "metrics: {}", m.join(", "));
        }
    }
    if k.kind() == "init" {
        text.push_str("model families (`model: {arch: NAME, …}`):\n");
        for f in crate::nn::arch::families() {
            let full = serde_json::from_str::<crate::nn::ModelSpec>(f.example)
                .ok()
                .and_then(|m| serde_json::to_string(&m).ok())
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "  {}: {}\n    fields: {}\n    example: {}\n    with its defaults: {full}",
                f.arch,
                f.about,
                f.fields.join(", "),
                f.example
            );
        }
    }
    text
}

/// The kind's parameters with every default applied, and the fields it requires (filled here
/// with stand-ins, which `describe_kind` does not show).
fn defaults_of(k: &dyn crate::stages::StageKind) -> (serde_json::Map<String, Value>, Vec<String>) {
    let mut given = serde_json::Map::new();
    let mut required = Vec::new();
    for _ in 0..16 {
        match k.normalize(&Value::Object(given.clone())) {
            Ok(Value::Object(m)) => return (m, required),
            Ok(_) => break,
            Err(e) => {
                let missing = e
                    .message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string);
                let refused = e.path.first().filter(|p| required.contains(p)).cloned();
                match (missing, refused) {
                    (Some(field), _) if !required.contains(&field) => {
                        given.insert(field.clone(), serde_json::json!(1));
                        required.push(field);
                    }
                    // A stand-in of the wrong type: try the next kind of value.
                    (_, Some(field)) => {
                        let next = match given.get(&field) {
                            Some(Value::Number(_)) => serde_json::json!("x"),
                            Some(Value::String(_)) => serde_json::json!([]),
                            Some(Value::Array(_)) => serde_json::json!({}),
                            _ => break,
                        };
                        given.insert(field, next);
                    }
                    _ => break,
                }
            }
        }
    }
    (serde_json::Map::new(), required)
}

/// The starter pipeline `pipe new` writes (also shipped as pipelines/first.yaml).
const STARTER: &str = include_str!("../pipelines/first.yaml");

fn cmd_new(name: &str) -> Result<u8, Failure> {
    let stem = name.strip_suffix(".yaml").unwrap_or(name);
    if stem.is_empty()
        || !stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Failure::invalid(format!(
            "`{name}` is not a pipeline name: use letters, digits, `_` and `-` (e.g. `pipe new my_lottery`)"
        )));
    }
    let path = PathBuf::from(format!("{stem}.yaml"));
    let text = STARTER.replacen("pipeline: first", &format!("pipeline: {stem}"), 1);
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::invalid(format!(
                "{} exists already; pick another name or remove it",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Failure::cache(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
    };
    use std::io::Write as _;
    file.write_all(text.as_bytes())
        .map_err(|e| Failure::cache(format!("cannot write {}: {e}", path.display())))?;
    out!(
        "wrote {}: `pipe plan {0}` shows what it would run, `pipe run {0}` runs it",
        path.display()
    );
    Ok(0)
}
