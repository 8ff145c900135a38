//! Files made from a run record: plots (SVG, PNG and their data as CSV), the HTML and Markdown
//! report, and the run's tables as CSV and JSON. The command line calls these; they take a run
//! record and the cache, never the pipeline's YAML.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::html::{self, ReportDoc};
use super::series::{self, PlotData};
use super::{ReportError, claims, export, pivot, plot};
use crate::cache::{RunRecord, StageRecord, Store};

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), ReportError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| ReportError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fs::write(path, bytes).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `curve.json` from a stage's cache entry (train stages write one).
pub fn curve_reader(store: &Store) -> impl Fn(&StageRecord) -> Option<Vec<Value>> + '_ {
    move |rec: &StageRecord| {
        if rec.key.len() < 2 {
            return None;
        }
        let path = store.entry_dir(&rec.key).join("curve.json");
        let text = fs::read_to_string(path).ok()?;
        match serde_json::from_str::<Value>(&text).ok()? {
            Value::Array(rows) => Some(rows),
            _ => None,
        }
    }
}

/// The run's declared plots, then learning curves of the stages matching each of `curves`.
pub fn plot_data(run: &RunRecord, store: &Store, curves: &[String]) -> Vec<PlotData> {
    let reader = curve_reader(store);
    let mut out: Vec<PlotData> = run
        .plots
        .iter()
        .map(|p| series::build(p, &run.stages, &reader))
        .collect();
    for (i, pattern) in curves.iter().enumerate() {
        for mut spec in series::implicit_curves(pattern) {
            if i > 0 {
                spec.name = format!("{}-{}", spec.name, i + 1);
            }
            out.push(series::build(&spec, &run.stages, &reader));
        }
    }
    out
}

/// The plotters SVG with a viewBox, so that it scales inside a page, and a title for screen
/// readers.
pub fn svg(d: &PlotData) -> Result<String, ReportError> {
    let s = plot::render_svg(d)?;
    let open = format!("<svg width=\"{}\" height=\"{}\"", plot::WIDTH, plot::HEIGHT);
    Ok(match s.strip_prefix(&open) {
        Some(rest) => format!(
            "{open} viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\"{rest}",
            plot::WIDTH,
            plot::HEIGHT,
            html::esc(&d.title)
        ),
        None => s,
    })
}

/// Writes NAME.svg, NAME.png and NAME.csv for each plot into `dir`; returns the SVG paths.
pub fn write_plots(dir: &Path, plots: &[PlotData]) -> Result<Vec<PathBuf>, ReportError> {
    let mut paths = Vec::new();
    for d in plots {
        let base = dir.join(&d.name);
        let svg_path = base.with_extension("svg");
        write(&svg_path, svg(d)?)?;
        write(&base.with_extension("png"), plot::render_png(d)?)?;
        write(&base.with_extension("csv"), export::plot(d).to_csv()?)?;
        paths.push(svg_path);
    }
    Ok(paths)
}

/// What `pipe report` wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
    pub tables: Vec<PathBuf>,
}

/// The report's pieces in memory (the HTML is what `pipe report` writes as report.html).
pub fn document<'a>(
    run: &'a RunRecord,
    raw: &Value,
    plots: &[PlotData],
) -> Result<ReportDoc<'a>, ReportError> {
    let report = run.report_spec.as_ref().map(|spec| {
        (
            spec.title.clone(),
            spec.values.join(" / "),
            pivot::build(spec, &run.stages),
        )
    });
    let svgs = plots
        .iter()
        .map(|d| Ok((d.clone(), svg(d)?)))
        .collect::<Result<Vec<_>, ReportError>>()?;
    Ok(ReportDoc {
        run,
        report,
        plots: svgs,
        claims: claims::from_record(raw),
    })
}

/// Writes `out/report.html`, `out/report.md`, `out/plots/*` and `out/tables/*.{csv,json}`.
pub fn write_report(
    run: &RunRecord,
    raw: &Value,
    store: &Store,
    out: &Path,
    curves: &[String],
) -> Result<ReportFiles, ReportError> {
    let plots = plot_data(run, store, curves);
    let doc = document(run, raw, &plots)?;
    let html_path = out.join("report.html");
    write(&html_path, html::html(&doc))?;
    let md_path = out.join("report.md");
    write(&md_path, html::markdown(&doc, |n| format!("plots/{n}.svg")))?;
    let plot_paths = write_plots(&out.join("plots"), &plots)?;
    let mut tables = Vec::new();
    for name in export::TABLES {
        let Ok(t) = export::table(run, name) else {
            continue;
        };
        for (ext, text) in [
            ("csv", t.to_csv()?),
            (
                "json",
                serde_json::to_string_pretty(&t.to_json()).expect("JSON"),
            ),
        ] {
            let p = out.join("tables").join(format!("{name}.{ext}"));
            write(&p, text)?;
            tables.push(p);
        }
    }
    Ok(ReportFiles {
        html: html_path,
        markdown: md_path,
        plots: plot_paths,
        tables,
    })
}

/// `pipe diff A B --plots`: each plot both runs declare (by name), and learning curves of the
/// stages matching `curves`, with A solid and B dashed.
pub fn diff_plots(
    a: &RunRecord,
    b: &RunRecord,
    store: &Store,
    out: &Path,
    curves: &[String],
) -> Result<Vec<PathBuf>, ReportError> {
    let pa = plot_data(a, store, curves);
    let pb = plot_data(b, store, curves);
    let short = |id: &str| id.rsplit('-').next().unwrap_or(id).to_string();
    let (la, lb) = (short(&a.id), short(&b.id));
    let both: Vec<PlotData> = pa
        .iter()
        .filter_map(|x| {
            pb.iter()
                .find(|y| y.name == x.name)
                .map(|y| series::overlay(x, y, &la, &lb))
        })
        .collect();
    if both.is_empty() {
        return Err(ReportError::Invalid(format!(
            "runs {} and {} have no plot in common; declare `plots:` in the pipeline or name train stages with --curves PATTERN",
            a.id, b.id
        )));
    }
    write_plots(out, &both)
}
