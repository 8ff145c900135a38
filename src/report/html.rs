//! A run as one self-contained HTML page (inline CSS and SVG, no script, no external URL: a
//! Content-Security-Policy forbids loading anything, so it opens offline and shows the same
//! everywhere) and as Markdown (plots linked as files next to it).

use serde_json::Value;

use super::claims::ClaimRow;
use super::series::PlotData;
use super::{Table, fmt_value};
use crate::cache::{RunRecord, StageStatus};

/// Everything a report shows.
pub struct ReportDoc<'a> {
    pub run: &'a RunRecord,
    /// The `report:` title, its cell legend and its table.
    pub report: Option<(String, String, Table)>,
    /// Each plot's data and its SVG.
    pub plots: Vec<(PlotData, String)>,
    pub claims: Vec<ClaimRow>,
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// An id attribute from a name: letters and digits kept, the rest as `-`.
fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

const CSS: &str = r#"
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
.sub, .muted, figcaption { color: var(--muted); }
code, pre { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: var(--bg2); padding: 8px; overflow-x: auto; border-radius: 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg2); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
figure.plot { margin: 16px 0 28px; }
figure.plot svg { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
.held { color: #1a7f37; font-weight: 600; }
.failed { color: #d1242f; font-weight: 600; }
.unknown { color: var(--muted); }
details.stage { border-bottom: 1px solid var(--line); padding: 4px 0; }
details.stage > summary { cursor: pointer; }
.status-ran { color: #1a7f37; } .status-hit { color: #0969da; } .status-failed { color: #d1242f; }
.notes { color: #9a6700; }
"#;

fn table_html(t: &Table, class: &str) -> String {
    let mut o = format!("<div class=\"scroll\"><table class=\"{class}\"><thead><tr>");
    for h in &t.headers {
        o.push_str(&format!("<th>{}</th>", esc(h)));
    }
    o.push_str("</tr></thead><tbody>");
    for r in &t.rows {
        o.push_str("<tr>");
        for c in r {
            let num = !c.is_empty()
                && c.chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_digit() || ch == '-');
            o.push_str(&format!(
                "<td{}>{}</td>",
                if num { " class=\"num\"" } else { "" },
                esc(c)
            ));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table></div>\n");
    o
}

/// The run's facts as (label, value) pairs, shared by HTML and Markdown.
fn facts(run: &RunRecord) -> Vec<(&'static str, String)> {
    let count = |s: StageStatus| run.count(s);
    let mut f = vec![
        ("Run", run.id.clone()),
        ("Pipeline", run.pipeline.clone()),
        ("Outcome", run.outcome.clone()),
        ("Started", run.started_at.clone()),
        ("Duration", format!("{:.1} s", run.duration_s)),
        ("Device", run.device.clone()),
        (
            "Stages",
            format!(
                "{} ({} ran, {} cached, {} failed, {} skipped, {} not run)",
                run.stages.len(),
                count(StageStatus::Ran),
                count(StageStatus::Hit),
                count(StageStatus::Failed),
                count(StageStatus::Skipped),
                count(StageStatus::NotRun)
            ),
        ),
        (
            "Files",
            run.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("pipe", run.pipe_version.clone()),
    ];
    if !run.overrides.is_empty() {
        f.push(("Overrides", run.overrides.join(" ")));
    }
    f
}

fn metrics_table(metrics: &Value) -> Table {
    let mut t = Table::new(["Metric", "Value"]);
    if let Value::Object(m) = metrics {
        for (k, v) in m {
            t.push(vec![k.clone(), fmt_value(v)]);
        }
    }
    t
}

fn claims_table(claims: &[ClaimRow]) -> Table {
    let mut t = Table::new(["Claim", "Outcome", "Numbers"]);
    for c in claims {
        t.push(vec![
            c.name.clone(),
            c.outcome.clone(),
            c.details
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    t
}

pub fn html(doc: &ReportDoc) -> String {
    let run = doc.run;
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing may be fetched: the page is complete as it is, offline.
    o.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    o.push_str(&format!(
        "<meta name=\"generator\" content=\"pipe {}\">\n<title>{} — run {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&run.pipe_version),
        esc(&run.pipeline),
        esc(&run.id)
    ));
    o.push_str(&format!(
        "<header><h1>{}</h1><p class=\"sub\">run <code>{}</code> · {} · {}</p></header>\n",
        esc(&run.pipeline),
        esc(&run.id),
        esc(&run.outcome),
        esc(&run.started_at)
    ));
    o.push_str("<section id=\"summary\"><h2>Run</h2><table class=\"kv\"><tbody>");
    for (k, v) in facts(run) {
        o.push_str(&format!("<tr><th>{k}</th><td>{}</td></tr>", esc(&v)));
    }
    o.push_str("</tbody></table></section>\n");

    o.push_str("<section id=\"claims\"><h2>Claims</h2>\n");
    if doc.claims.is_empty() {
        o.push_str("<p class=\"muted\">This run records no claims.</p>\n");
    } else {
        let held = doc.claims.iter().filter(|c| c.held == Some(true)).count();
        o.push_str(&format!(
            "<p>{held} of {} held.</p>\n<div class=\"scroll\"><table class=\"claims\"><thead><tr><th>Claim</th><th>Outcome</th><th>Numbers</th></tr></thead><tbody>",
            doc.claims.len()
        ));
        for (c, r) in doc.claims.iter().zip(&claims_table(&doc.claims).rows) {
            let class = match c.held {
                Some(true) => "held",
                Some(false) => "failed",
                None => "unknown",
            };
            o.push_str(&format!(
                "<tr class=\"claim\"><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
                esc(&r[0]),
                esc(&r[1]),
                esc(&r[2])
            ));
        }
        o.push_str("</tbody></table></div>\n");
    }
    o.push_str("</section>\n");

    if let Some((title, legend, t)) = &doc.report {
        o.push_str("<section id=\"report\"><h2>Report</h2>\n");
        if !title.is_empty() {
            o.push_str(&format!("<p><strong>{}</strong></p>\n", esc(title)));
        }
        o.push_str(&format!(
            "<p class=\"muted\">cells: {} (replicates as mean ± std (n))</p>\n",
            esc(legend)
        ));
        o.push_str(&table_html(t, "pivot"));
        o.push_str("</section>\n");
    }

    o.push_str("<section id=\"plots\"><h2>Plots</h2>\n");
    if doc.plots.is_empty() {
        o.push_str("<p class=\"muted\">The pipeline declares no plots.</p>\n");
    }
    for (d, svg) in &doc.plots {
        o.push_str(&format!(
            "<figure class=\"plot\" id=\"plot-{}\" data-series=\"{}\" data-points=\"{}\">\n{svg}\n<figcaption>{}",
            anchor(&d.name),
            d.series.len(),
            d.point_count(),
            esc(&d.title)
        ));
        for n in &d.notes {
            o.push_str(&format!("<br><span class=\"notes\">{}</span>", esc(n)));
        }
        o.push_str("</figcaption>\n<details><summary>data</summary>");
        o.push_str(&table_html(&super::export::plot(d).to_table(), "plot-data"));
        o.push_str("</details></figure>\n");
    }
    o.push_str("</section>\n");

    if !run.sources.is_empty() {
        o.push_str("<section id=\"pipeline\"><h2>Pipeline</h2>\n<p class=\"muted\">The files as they were when the run started.</p>\n");
        for (path, text) in &run.sources {
            o.push_str(&format!(
                "<details class=\"source\"><summary><code>{}</code></summary><pre>{}</pre></details>\n",
                esc(&path.display().to_string()),
                esc(text)
            ));
        }
        o.push_str("</section>\n");
    }

    o.push_str(&format!(
        "<section id=\"stages\"><h2>Stages ({})</h2>\n",
        run.stages.len()
    ));
    for s in &run.stages {
        let time = if s.status == StageStatus::Ran {
            format!(" · {:.1} s", s.duration_s)
        } else {
            String::new()
        };
        let head = match &s.error {
            Some(e) => e.clone(),
            None => crate::exec::headline(&s.metrics),
        };
        o.push_str(&format!(
            "<details class=\"stage\" id=\"stage-{}\"><summary><code>{}</code> · {} · <span class=\"status-{}\">{}</span>{time} <span class=\"muted\">{}</span></summary>\n",
            anchor(&s.name),
            esc(&s.name),
            esc(&s.kind),
            s.status.as_str().replace(' ', "-"),
            s.status.as_str(),
            esc(&head)
        ));
        o.push_str(&format!(
            "<p>key <code>{}</code>{}</p>\n<p>parameters</p><pre>{}</pre>\n<p>metrics</p>{}",
            esc(&s.key),
            entry_note(s),
            esc(&serde_json::to_string_pretty(&s.params).unwrap_or_default()),
            table_html(&metrics_table(&s.metrics), "metrics")
        ));
        o.push_str("</details>\n");
    }
    o.push_str("</section>\n");
    o.push_str(&format!(
        "<footer><p class=\"muted\">Written by pipe {} from run record {}.</p></footer>\n</body>\n</html>\n",
        esc(env!("CARGO_PKG_VERSION")),
        esc(&run.id)
    ));
    o
}

/// Markdown (GitHub flavour): plots as images at `plot_path(name)`, stages in `<details>`.
pub fn markdown(doc: &ReportDoc, plot_path: impl Fn(&str) -> String) -> String {
    let run = doc.run;
    let mut o = format!("# {} — run {}\n\n", run.pipeline, run.id);
    let mut t = Table::new(["", ""]);
    for (k, v) in facts(run) {
        t.push(vec![k.to_string(), v]);
    }
    o.push_str(&t.render_md());
    o.push_str("\n## Claims\n\n");
    if doc.claims.is_empty() {
        o.push_str("This run records no claims.\n");
    } else {
        o.push_str(&claims_table(&doc.claims).render_md());
    }
    if let Some((title, legend, t)) = &doc.report {
        o.push_str("\n## Report\n\n");
        if !title.is_empty() {
            o.push_str(&format!("{title}\n\n"));
        }
        o.push_str(&format!(
            "cells: {legend} (replicates as mean ± std (n))\n\n{}",
            t.render_md()
        ));
    }
    o.push_str("\n## Plots\n\n");
    if doc.plots.is_empty() {
        o.push_str("The pipeline declares no plots.\n");
    }
    for (d, _) in &doc.plots {
        o.push_str(&format!("![{}]({})\n\n", d.title, plot_path(&d.name)));
        for n in &d.notes {
            o.push_str(&format!("> {n}\n\n"));
        }
    }
    if !run.sources.is_empty() {
        o.push_str("\n## Pipeline\n\nThe files as they were when the run started.\n\n");
        for (path, text) in &run.sources {
            o.push_str(&format!(
                "<details><summary><code>{}</code></summary>\n\n```yaml\n{}\n```\n</details>\n\n",
                esc(&path.display().to_string()),
                text.trim_end()
            ));
        }
    }
    o.push_str(&format!("\n## Stages ({})\n\n", run.stages.len()));
    for s in &run.stages {
        o.push_str(&format!(
            "<details><summary><code>{}</code> · {} · {}</summary>\n\nkey `{}`{}\n\n```json\n{}\n```\n\n{}\n</details>\n\n",
            esc(&s.name),
            s.kind,
            s.status.as_str(),
            s.key,
            entry_note(s),
            serde_json::to_string_pretty(&s.params).unwrap_or_default(),
            metrics_table(&s.metrics).render_md()
        ));
    }
    o
}

/// Where a finished stage's files are, under the cache folder (`model.safetensors` loads
/// into the equivalent torch.nn module).
fn entry_note(s: &crate::cache::StageRecord) -> String {
    if matches!(s.status, StageStatus::Ran | StageStatus::Hit) && s.key.len() > 2 {
        format!(
            " · entry <code>entries/{}/{}</code> in the cache folder",
            &s.key[..2],
            s.key
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_makes_anchors() {
        assert_eq!(esc("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
        assert_eq!(anchor("imp.1.ticket[lr=6e-3]"), "imp-1-ticket-lr-6e-3-");
    }
}
