//! `pipe report`, `pipe show --plots | --table | --csv | --md` and `pipe diff --plots`: thin
//! glue from the command line to `report::output` and `report::export`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::{Failure, Global, PlotArgs, all_runs};
use crate::cache::{RunRecord, StageRecord, Store, runs};
use crate::report::export::{self, Records};
use crate::report::{ReportError, output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
    Md,
}

impl Format {
    pub fn from_flags(json: bool, csv: bool, md: bool) -> Format {
        match (json, csv, md) {
            (true, _, _) => Format::Json,
            (_, true, _) => Format::Csv,
            (_, _, true) => Format::Md,
            _ => Format::Text,
        }
    }
}

impl From<ReportError> for Failure {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid(m) => Failure::invalid(format!("error: {m}")),
            other => Failure::cache(format!("error: {other}")),
        }
    }
}

fn print(records: &Records, format: Format) -> Result<(), Failure> {
    match format {
        Format::Text => out_raw!("{}", records.to_table().render_text()),
        Format::Md => out_raw!("{}", records.to_table().render_md()),
        Format::Csv => out_raw!("{}", records.to_csv()?),
        Format::Json => out!(
            "{}",
            serde_json::to_string_pretty(&records.to_json()).expect("JSON")
        ),
    }
    Ok(())
}

/// A run by id, or the latest run holding a stage of that name.
enum Target<'a> {
    Run(&'a RunRecord),
    Stage(&'a RunRecord, &'a StageRecord),
}

fn resolve<'a>(rs: &'a [RunRecord], target: &str) -> Result<Target<'a>, Failure> {
    if let Ok(r) = runs::resolve(rs, target) {
        return Ok(Target::Run(r));
    }
    rs.iter()
        .rev()
        .find_map(|r| r.stage(target).map(|s| Target::Stage(r, s)))
        .ok_or_else(|| {
            Failure::invalid(format!(
                "error: `{target}` is neither a run nor a stage of any recorded run\n  = hint: `pipe runs` lists runs; stage names are as `pipe plan` prints them"
            ))
        })
}

pub fn show_table(
    g: &Global,
    target: &str,
    table: Option<&str>,
    format: Format,
) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let records = match resolve(&rs, target)? {
        Target::Run(r) => export::table(r, table.unwrap_or("summary"))?,
        Target::Stage(_, s) => {
            if let Some(t) = table {
                return Err(Failure::invalid(format!(
                    "error: --table {t} needs a run; `{target}` is a stage (its metrics are one table)"
                )));
            }
            Records {
                columns: vec!["metric".into(), "value".into()],
                rows: match &s.metrics {
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, v)| vec![Value::String(k.clone()), v.clone()])
                        .collect(),
                    _ => Vec::new(),
                },
            }
        }
    };
    print(&records, format)?;
    Ok(0)
}

fn list_written(what: &str, paths: &[PathBuf]) {
    out!("{what}:");
    for p in paths {
        out!("  {}", p.display());
    }
}

pub fn show_plots(g: &Global, target: &str, args: &PlotArgs) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let store = Store::open(&g.cache_dir)?;
    let (run, plots, default_dir) = match resolve(&rs, target)? {
        Target::Run(r) => (
            r,
            output::plot_data(r, &store, &args.curves),
            runs::run_folder(&g.cache_dir, &r.id).join("plots"),
        ),
        Target::Stage(r, s) => {
            // A stage's own learning curve: exactly that stage, plus any --curves patterns.
            let mut patterns = vec![s.name.clone()];
            patterns.extend(args.curves.iter().cloned());
            let mut one = r.clone();
            one.plots.clear();
            (
                r,
                output::plot_data(&one, &store, &patterns),
                runs::run_folder(&g.cache_dir, &r.id).join("curves"),
            )
        }
    };
    if plots.is_empty() {
        return Err(Failure::invalid(format!(
            "error: run {} declares no plots\n  = hint: add `plots:` to the pipeline, or plot learning curves with `--curves PATTERN`",
            run.id
        )));
    }
    let dir = args.out.clone().unwrap_or(default_dir);
    let paths = output::write_plots(&dir, &plots)?;
    for d in &plots {
        for n in &d.notes {
            eprintln!("note: plot `{}`: {n}", d.name);
        }
    }
    list_written(
        &format!(
            "plots of run {} (SVG; PNG and CSV data beside each)",
            run.id
        ),
        &paths,
    );
    Ok(0)
}

pub fn report(g: &Global, run: &str, out: Option<&Path>, curves: &[String]) -> Result<u8, Failure> {
    let t0 = Instant::now();
    let rs = all_runs(g)?;
    let r = runs::resolve(&rs, run).map_err(Failure::invalid)?;
    let raw = runs::raw(&g.cache_dir, &r.id)?;
    let store = Store::open(&g.cache_dir)?;
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| runs::run_folder(&g.cache_dir, &r.id).join("report"));
    let files = output::write_report(r, &raw, &store, &dir, curves)?;
    out!("report of run {} ({} stages):", r.id, r.stages.len());
    out!("  {}", files.html.display());
    out!("  {}", files.markdown.display());
    out!(
        "  {} plot(s) and {} table file(s) under {}",
        files.plots.len(),
        files.tables.len(),
        dir.display()
    );
    tracing::info!("report written in {:.2}s", t0.elapsed().as_secs_f64());
    Ok(0)
}

pub fn diff_plots(
    g: &Global,
    a: &str,
    b: &str,
    any_pipeline: bool,
    args: &PlotArgs,
) -> Result<u8, Failure> {
    let rs = all_runs(g)?;
    let (ra, rb) = runs::resolve_pair(&rs, a, b, any_pipeline).map_err(Failure::invalid)?;
    let store = Store::open(&g.cache_dir)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| runs::run_folder(&g.cache_dir, &rb.id).join(format!("diff-{}", ra.id)));
    let paths = output::diff_plots(ra, rb, &store, &dir, &args.curves)?;
    list_written(&format!("{} solid, {} dashed", ra.id, rb.id), &paths);
    Ok(0)
}

/// After `pipe run`: the declared plots under CACHE/runs/ID/plots, or why not. A failure to
/// draw is reported, never a reason to fail a run whose stages succeeded.
pub fn plots_after_run(record: &RunRecord, store: &Store) -> Option<String> {
    if record.plots.is_empty() {
        return None;
    }
    let dir = runs::run_folder(store.root(), &record.id).join("plots");
    let plots = output::plot_data(record, store, &[]);
    let notes: Vec<String> = plots
        .iter()
        .flat_map(|d| {
            d.notes
                .iter()
                .map(move |n| format!("note: plot `{}`: {n}", d.name))
        })
        .collect();
    Some(match output::write_plots(&dir, &plots) {
        Ok(paths) => {
            let mut s = format!(
                "plots: {} in {} (pipe report {} for the HTML report)",
                paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display(),
                record.id
            );
            for n in notes {
                s.push('\n');
                s.push_str(&n);
            }
            s
        }
        Err(e) => format!("warning: plots were not written: {e}"),
    })
}
