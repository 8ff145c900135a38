//! The command line: `run`, `plan`, `explain`, `runs`, `diff`, `show`, `gc`, `kinds`.
//!
//! Exit codes: 0 success; 1 a stage failed; 2 invalid pipeline, override or command line;
//! 3 cache or I/O error; 130 interrupted (Ctrl-C).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::cache::key::diff_values;
use crate::cache::{RunRecord, StageStatus, Store, gc, runs};
use crate::clock;
use crate::exec::events::{Estimates, Overview, PlannedItem};
use crate::exec::{self, BarSink, EventSink, PlainSink, RunOptions, Why};
use crate::nn::{DeviceSpec, host};
use crate::report::{self, Table, diff, pivot};
use crate::spec::{self, Diagnostic, Override, choices_hint};
use crate::stages::Registry;
use crate::stages::dataset::DataCache;

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

const AFTER_HELP: &str = "Exit codes: 0 success; 1 a stage failed; 2 invalid pipeline, override or command line; 3 cache or I/O error; 130 interrupted.";

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
    /// CPU threads for tensor arithmetic, shared by the stages running at once [default: the
    /// cores divided by --jobs, at least 1]. Results do not depend on it.
    #[arg(long, global = true, env = "PIPE_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run pipeline files: only stages not in the cache are computed.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what `run` would do: every stage, hit or run, and why it would run.
    Plan {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A stage's full key pre-image and how it differs from the last entry of that name.
    Explain { file: PathBuf, stage: String },
    /// List run records.
    Runs,
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
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli, registry: &Registry) -> Result<u8, Failure> {
    let g = &cli.global;
    match &cli.command {
        Command::Run { files } => cmd_run(g, registry, files),
        Command::Plan { files } => cmd_plan(g, registry, files),
        Command::Explain { file, stage } => cmd_explain(g, registry, file, stage),
        Command::Runs => cmd_runs(g),
        Command::Diff {
            a,
            b,
            json,
            md,
            all,
            plots,
        } => {
            if plots.plots {
                report_cmds::diff_plots(g, a, b, plots)
            } else {
                cmd_diff(g, a, b, *json, *md, *all)
            }
        }
        Command::Show {
            target,
            json,
            csv,
            md,
            table,
            plots,
        } => {
            let format = report_cmds::Format::from_flags(*json, *csv, *md);
            if plots.plots {
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
            if s.cached() {
                "hit".into()
            } else {
                "run".into()
            },
            s.instance.name.clone(),
            s.instance.kind.clone(),
            s.key[..12].to_string(),
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
    Ok(0)
}

static CANCEL: AtomicBool = AtomicBool::new(false);

fn cmd_run(g: &Global, registry: &Registry, files: &[PathBuf]) -> Result<u8, Failure> {
    let device = device(g)?;
    let (plan, store) = load_plan(g, registry, files)?;
    if !g.quiet {
        eprintln!("{}", plan_counts(&plan));
    }
    // First Ctrl-C: stop cleanly (running stages abandon their temporary folders). Second: exit.
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!(
            "interrupted: stopping running stages; finished results are kept (Ctrl-C again to exit now)"
        );
    });
    let started = clock::now_secs();
    let t0 = Instant::now();
    let data = DataCache::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = g.jobs.unwrap_or(cores);
    let overview = progress_overview(&plan, &store, jobs);
    let sink: Box<dyn EventSink> = if std::io::stderr().is_terminal() && !g.quiet {
        Box::new(BarSink::with_overview(overview))
    } else {
        Box::new(PlainSink::with_overview(g.quiet, overview))
    };
    match g.threads {
        Some(t) => host::set_cpu_threads(usize::from(t)),
        // rayon reads RAYON_NUM_THREADS itself; a user who set it meant it.
        None if std::env::var_os("RAYON_NUM_THREADS").is_some() => {}
        None => host::set_cpu_threads(host::cpu_threads(jobs, cores)),
    }
    let opts = RunOptions {
        jobs,
        keep_going: g.keep_going,
        device: device.clone(),
    };
    let env = exec::Engine {
        registry,
        store: &store,
        opts: &opts,
        sink: sink.as_ref(),
        cancel: &CANCEL,
        data: &data,
    };
    let outcome = exec::execute(&plan, env);
    let report_text = plan
        .pipeline
        .report
        .as_ref()
        .map(|r| pivot::render(r, &pivot::build(r, &outcome.records)));
    let record = RunRecord {
        id: clock::run_id(),
        pipeline: plan.pipeline.name.clone(),
        files: plan.pipeline.files.clone(),
        overrides: g.set.clone(),
        started_at: clock::rfc3339(started),
        duration_s: t0.elapsed().as_secs_f64(),
        device: device.to_string(),
        outcome: if outcome.interrupted {
            "interrupted"
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
    };
    runs::save(store.root(), &record)?;
    let plots_written = report_cmds::plots_after_run(&record, &store);
    out!("{}", summary_table(&record).render_text());
    if let Some(r) = &report_text {
        out!("{r}");
    }
    out!(
        "run {}: {} ran, {} cached, {} failed, {:.1}s",
        record.id,
        record.count(StageStatus::Ran),
        record.count(StageStatus::Hit),
        record.count(StageStatus::Failed),
        record.duration_s
    );
    if let Some(msg) = plots_written {
        out!("{msg}");
    }
    Ok(if outcome.interrupted {
        EXIT_INTERRUPTED
    } else if outcome.ok() {
        0
    } else {
        EXIT_STAGE_FAILED
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

pub fn summary_table(rec: &RunRecord) -> Table {
    let mut t = Table::new(["Stage", "Status", "Key", "Time", "Metrics"]);
    for s in &rec.stages {
        t.push(vec![
            s.name.clone(),
            s.status.as_str().into(),
            s.key[..12].to_string(),
            if s.status == StageStatus::Ran {
                format!("{:.1}s", s.duration_s)
            } else {
                String::new()
            },
            match &s.error {
                Some(e) => e.clone(),
                None => exec::headline(&s.metrics),
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
    out!("status: {}", if s.cached() { "cached" } else { "will run" });
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
                    &last[..12]
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
            Err(_) => out!("the last entry named `{stage}` ({}) is gone", &last[..12]),
        },
    }
    Ok(0)
}

pub(crate) fn all_runs(g: &Global) -> Result<Vec<RunRecord>, Failure> {
    Ok(runs::list(&g.cache_dir)?)
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

fn cmd_diff(g: &Global, a: &str, b: &str, json: bool, md: bool, all: bool) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let ra = runs::resolve(&rs, a).map_err(Failure::invalid)?;
    let rb = runs::resolve(&rs, b).map_err(Failure::invalid)?;
    let rows = diff::diff_runs(ra, rb, all);
    if json {
        out!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
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
    let mut t = Table::new(["Metric", "Value"]);
    if let Value::Object(m) = &s.metrics {
        for (k, v) in m {
            t.push(vec![k.clone(), report::fmt_value(v)]);
        }
    }
    out_raw!("{}", t.render_text());
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
            if r.id.len() > 24 {
                r.id[..12].to_string()
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
            out!("{} (version {}): {}", k.kind(), k.version(), k.about());
            let defaults = k
                .normalize(&Value::Object(Default::default()))
                .map_err(|e| Failure::invalid(e.message))?;
            out!(
                "parameters with their defaults:\n{}",
                serde_json::to_string_pretty(&defaults).expect("JSON")
            );
        }
    }
    Ok(0)
}
