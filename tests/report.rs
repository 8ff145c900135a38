//! Results as a user looks at them, through the real binary on the tiny lottery pipeline:
//! plots written by `pipe run`, `pipe report` (HTML + Markdown + tables), `pipe show` exports
//! (CSV/JSON that pandas or the csv module reads), `pipe diff --plots`, learning curves, and
//! the whole-pipeline progress lines.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

fn pipe(cache: &Path, args: &[&str]) -> Output {
    pipe_with(Path::new(env!("CARGO_BIN_EXE_pipe")), cache, args)
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One cache with two runs of the tiny lottery pipeline (the second with another dense
/// learning rate), shared by the tests of this file.
struct Fixture {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    first_run_stderr: String,
    first_run_stdout: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let a = pipe(&cache, &["run", "tests/pipelines/tiny_lottery.yaml"]);
        let first_run_stdout = ok(&a);
        let b = pipe(
            &cache,
            &[
                "run",
                "tests/pipelines/tiny_lottery.yaml",
                "-S",
                "stages.dense.lr=3e-3",
            ],
        );
        ok(&b);
        Fixture {
            _dir: dir,
            cache,
            first_run_stderr: String::from_utf8_lossy(&a.stderr).into_owned(),
            first_run_stdout,
        }
    })
}

fn run_ids(cache: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(cache.join("runs"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn run_writes_the_declared_plots_and_progress_counts() {
    let f = fixture();
    let id = &run_ids(&f.cache)[0];
    let dir = f.cache.join("runs").join(id).join("plots");
    for name in ["accuracy", "early_stop", "curves"] {
        for ext in ["svg", "png", "csv"] {
            let p = dir.join(format!("{name}.{ext}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    assert!(f.first_run_stdout.contains(&format!(
        "plots: accuracy.svg, early_stop.svg, curves.svg in {}",
        dir.display()
    )));
    // The accuracy plot: 3 branches × 2 learning rates, 2 levels each, and the dense baseline.
    let csv = std::fs::read_to_string(dir.join("accuracy.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "series,x,y,std,n");
    assert_eq!(lines.len(), 1 + 12);
    assert_eq!(lines[1], "ticket lr=1.2e-3,25.1941,51.66666666666667,0.0,1");
    // Learning curves: dense and two IMP levels, val_loss and test_acc at iterations 0..30.
    let curves = std::fs::read_to_string(dir.join("curves.csv")).unwrap();
    assert_eq!(curves.lines().count(), 1 + 3 * 2 * 4);
    assert!(curves.contains("\ndense · val_loss,0.0,"), "{curves}");
    // Plain progress lines: whole-pipeline counts after each tenth of the 37 stages.
    let progress: Vec<&str> = f
        .first_run_stderr
        .lines()
        .filter(|l| l.starts_with("progress "))
        .collect();
    assert_eq!(progress.len(), 10, "{}", f.first_run_stderr);
    assert!(
        progress[9]
            .starts_with("progress 37/37 stages: 37 ran, 0 cached, 0 failed · 0 running · 0 to do"),
        "{}",
        progress[9]
    );
}

#[test]
fn report_is_one_self_contained_html_file_and_markdown() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let o = pipe(
        &f.cache,
        &[
            "report",
            "-2",
            "--out",
            out.path().to_str().unwrap(),
            "--curves",
            "dense",
        ],
    );
    let stdout = ok(&o);
    assert!(stdout.contains("report.html"));
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    // Nothing to fetch: no URL but the SVG namespace, and a policy that forbids loading.
    let stripped = html.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !stripped.contains("http://")
            && !stripped.contains("https://")
            && !stripped.contains("src=")
    );
    assert!(html.contains("default-src 'none'"));
    assert!(!html.contains("<script"));
    assert_eq!(
        html.matches("<figure class=\"plot\"").count(),
        5,
        "3 declared + 2 learning-curve plots"
    );
    assert!(html.contains("id=\"plot-accuracy\" data-series=\"6\" data-points=\"12\""));
    assert_eq!(html.matches("<details class=\"stage\"").count(), 37);
    // Each stage collapsed with its key, parameters and metrics: the dense training of run -2.
    let ids = run_ids(&f.cache);
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.cache.join("runs").join(format!("{}.json", ids[0]))).unwrap(),
    )
    .unwrap();
    let dense = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dense")
        .unwrap();
    let block = html
        .split("<details class=\"stage\" id=\"stage-dense\">")
        .nth(1)
        .unwrap();
    let block = block.split("</details>").next().unwrap();
    let key = dense["key"].as_str().unwrap();
    assert!(
        block.contains(&format!(
            "<p>key <code>{key}</code> · entry <code>entries/{}/{key}</code> in the cache folder</p>",
            &key[..2]
        )),
        "{block}"
    );
    assert!(
        f.cache.join("entries").join(&key[..2]).join(key).is_dir(),
        "the entry the report names exists"
    );
    // The pipeline file as it was run, escaped, in its own section (and in the Markdown).
    let yaml = std::fs::read_to_string(file("tests/pipelines/tiny_lottery.yaml")).unwrap();
    let section = html.split("<section id=\"pipeline\">").nth(1).unwrap();
    assert!(
        section.contains("<summary><code>tests/pipelines/tiny_lottery.yaml</code></summary>"),
        "{section}"
    );
    assert!(
        section.contains(&pipe::report::html::esc(&yaml)),
        "{section}"
    );
    assert!(block.contains("&quot;iterations&quot;: 30"), "{block}");
    assert!(block.contains("<td>early_stop_iteration</td>"), "{block}");
    assert!(html.contains("This run records no claims."));
    assert!(html.contains("<table class=\"pivot\">"));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("![tiny: test accuracy by weights remaining](plots/accuracy.svg)"));
    assert!(md.contains("| remaining_pct | eval_dense |"));
    assert!(md.contains(&format!("```yaml\n{}\n```", yaml.trim_end())));
    for t in ["summary", "report", "metrics"] {
        for ext in ["csv", "json"] {
            assert!(
                out.path()
                    .join("tables")
                    .join(format!("{t}.{ext}"))
                    .is_file()
            );
        }
    }
    assert!(out.path().join("plots/curves_loss.svg").is_file());
}

#[test]
fn claims_in_a_run_record_are_rendered() {
    // The record format gains `claims` elsewhere; the report shows whatever a record holds.
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("runs")).unwrap();
    let id = &run_ids(&f.cache)[0];
    let mut rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.cache.join("runs").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    rec["claims"] = serde_json::json!([
        {"name": "tickets beat random reinit at 25%", "held": true, "ticket": 0.69, "random": 0.56},
        {"name": "late rewinding is best", "held": false}
    ]);
    std::fs::write(
        cache.join("runs").join(format!("{id}.json")),
        rec.to_string(),
    )
    .unwrap();
    let out = dir.path().join("r");
    ok(&pipe(
        &cache,
        &["report", "last", "-o", out.to_str().unwrap()],
    ));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<p>1 of 2 held.</p>"));
    assert!(html.contains("<td>tickets beat random reinit at 25%</td><td class=\"held\">held</td><td>random: 0.56; ticket: 0.69</td>"));
    assert!(html.contains("<td class=\"failed\">failed</td>"));
}

fn python_reads(csv: &Path) -> Option<String> {
    // pandas where installed; otherwise the csv module, which any Python has.
    let script = r#"
import sys
path = sys.argv[1]
try:
    import pandas as pd
    df = pd.read_csv(path)
    acc = df[(df.metric == "accuracy") & (df.stage == "imp.2.eval_ticket[lr=1e-2]")]
    print("pandas", len(df), df["lr"].dropna().nunique(), float(acc["value"].iloc[0]), int(acc["level"].iloc[0]))
except ImportError:
    import csv
    rows = list(csv.DictReader(open(path, newline="")))
    acc = [r for r in rows if r["metric"] == "accuracy" and r["stage"] == "imp.2.eval_ticket[lr=1e-2]"]
    print("csv", len(rows), len({r["lr"] for r in rows if r["lr"]}), float(acc[0]["value"]), int(acc[0]["level"]))
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(csv)
        .output()
        .ok()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn tidy_metrics_export_reads_into_pandas() {
    let f = fixture();
    let csv = ok(&pipe(
        &f.cache,
        &["show", "-2", "--table", "metrics", "--csv"],
    ));
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("run,stage,group,level,template,kind,key,status,lr,param."),
        "{header}"
    );
    assert!(header.ends_with(",metric,value"));
    let json: serde_json::Value = serde_json::from_str(&ok(&pipe(
        &f.cache,
        &["show", "-2", "--table", "metrics", "--json"],
    )))
    .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), csv.lines().count() - 1);
    let acc = rows
        .iter()
        .find(|r| r["stage"] == "imp.2.eval_ticket[lr=1e-2]" && r["metric"] == "accuracy")
        .unwrap();
    let value = acc["value"].as_f64().unwrap();
    assert_eq!(acc["lr"], serde_json::json!(0.01));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    std::fs::write(&path, &csv).unwrap();
    match python_reads(&path) {
        None => eprintln!("skipped the Python reader check: no python3 on PATH"),
        Some(line) => {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[1], (rows.len()).to_string(), "{line}");
            assert_eq!(parts[2], "2", "two learning rates: {line}");
            assert_eq!(parts[3].parse::<f64>().unwrap(), value, "{line}");
            assert_eq!(parts[4], "2", "{line}");
        }
    }
    // The report table in long form and the summary, as CSV.
    let rep = ok(&pipe(
        &f.cache,
        &["show", "-2", "--table", "report", "--csv"],
    ));
    assert!(
        rep.starts_with("remaining_pct,column,metric,mean,std,n\n100.0,eval_dense,accuracy,"),
        "{rep}"
    );
    let sum = ok(&pipe(&f.cache, &["show", "-2", "--csv"]));
    assert!(
        sum.starts_with("stage,kind,status,key,duration_s,error\ninit,init,ran,"),
        "{sum}"
    );
    let bad = pipe(&f.cache, &["show", "last", "--table", "metric"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("unknown table `metric`; tables: summary, report, metrics")
    );
}

#[test]
fn diff_plots_overlay_two_runs_and_stage_curves_plot_without_declaring() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let o = ok(&pipe(
        &f.cache,
        &[
            "diff",
            "-2",
            "last",
            "--plots",
            "--out",
            out.path().to_str().unwrap(),
        ],
    ));
    assert!(o.contains("solid") && o.contains("dashed"));
    let svg = std::fs::read_to_string(out.path().join("accuracy.svg")).unwrap();
    let ids = run_ids(&f.cache);
    let short = |id: &str| id.rsplit('-').next().unwrap().to_string();
    assert!(svg.contains(&format!("{}: ticket lr=1.2e-3", short(&ids[0]))));
    assert!(svg.contains(&format!("{}: ticket lr=1.2e-3", short(&ids[1]))));
    let csv = std::fs::read_to_string(out.path().join("accuracy.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 12);
    // A train stage's learning curve, from its name alone.
    let o = ok(&pipe(
        &f.cache,
        &[
            "show",
            "imp.1.train",
            "--plots",
            "--out",
            out.path().join("c").to_str().unwrap(),
        ],
    ));
    assert!(o.contains("curves_loss.svg"), "{o}");
    let c = std::fs::read_to_string(out.path().join("c/curves_loss.csv")).unwrap();
    assert_eq!(c.lines().next(), Some("series,x,y,std,n"));
    assert_eq!(c.lines().count(), 1 + 2 * 4);
}

#[test]
fn a_bad_plot_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("p.yaml");
    let tiny = std::fs::read_to_string(file("tests/pipelines/tiny_lottery.yaml")).unwrap();
    std::fs::write(
        &bad,
        tiny.replace("series: [stage, lr]", "series: [stage, lrr]"),
    )
    .unwrap();
    let o = pipe(&dir.path().join("cache"), &["run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("plot `early_stop`: `lrr` is not a sweep variable of the selected stages"),
        "{err}"
    );
    assert!(err.contains("did you mean `lr`?"), "{err}");
    assert!(
        !dir.path().join("cache/runs").exists() || run_ids(&dir.path().join("cache")).is_empty()
    );
}

#[test]
fn a_seed_sweep_is_one_column_and_one_point_as_mean_std_n() {
    // Three trainings that differ only in `seed`: one report cell, one point per iteration,
    // each mean ± sample std over n = 3, with an error bar per point.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = ok(&pipe(
        &cache,
        &["run", "-q", "tests/pipelines/tiny_seeds.yaml"],
    ));
    assert!(
        run.contains("| remaining_pct | eval_dense |\n|---|---|\n| 100.0 | 0.3200 ± 0.0590 (3) |"),
        "{run}"
    );
    let rep = ok(&pipe(
        &cache,
        &["show", "last", "--table", "report", "--csv"],
    ));
    assert_eq!(
        rep,
        "remaining_pct,column,metric,mean,std,n\n100.0,eval_dense,accuracy,0.32,0.05897268670984712,3\n"
    );
    let id = &run_ids(&cache)[0];
    let plots = cache.join("runs").join(id).join("plots");
    assert_eq!(
        std::fs::read_to_string(plots.join("learning.csv")).unwrap(),
        "series,x,y,std,n\n\
         dense,0.0,0.08222222222222221,0.006938886664887109,3\n\
         dense,10.0,0.22999999999999998,0.06173419725817378,3\n\
         dense,20.0,0.32,0.05897268670984712,3\n"
    );
    // Each error bar is three thin lines (two caps and the bar) in the series' colour.
    let svg = std::fs::read_to_string(plots.join("learning.svg")).unwrap();
    assert_eq!(
        svg.matches("<line opacity=\"1\" stroke=\"#1F77B4\" stroke-width=\"1\"")
            .count(),
        3 * 3
    );
    let out = dir.path().join("report");
    ok(&pipe(
        &cache,
        &["report", "last", "-o", out.to_str().unwrap()],
    ));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains(
        "<tr><td class=\"num\">100.0</td><td class=\"num\">0.3200 ± 0.0590 (3)</td></tr>"
    ));
    assert!(html.contains("id=\"plot-learning\" data-series=\"1\" data-points=\"3\""));
}

#[test]
fn show_run_plots_writes_the_declared_plots_again() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let o = ok(&pipe(
        &f.cache,
        &[
            "show",
            "-2",
            "--plots",
            "--out",
            out.path().to_str().unwrap(),
        ],
    ));
    for name in ["accuracy", "early_stop", "curves"] {
        assert!(
            o.contains(&out.path().join(format!("{name}.svg")).display().to_string()),
            "{o}"
        );
    }
    let id = &run_ids(&f.cache)[0];
    let at_run = f.cache.join("runs").join(id).join("plots/accuracy.csv");
    assert_eq!(
        std::fs::read_to_string(out.path().join("accuracy.csv")).unwrap(),
        std::fs::read_to_string(at_run).unwrap()
    );
    let png = std::fs::read(out.path().join("accuracy.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
