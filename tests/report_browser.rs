//! The HTML report in a real browser (headless Chromium): it loads with no console message
//! (a Content-Security-Policy violation — anything fetched — would print one), its structure is
//! pinned by a snapshot of the DOM the browser built, and a screenshot shows the plots' colours,
//! i.e. the SVG really displays.
//!
//! Needs a Chromium: `chromium` (Debian's package, which .ci/run installs), `chromium-browser` or
//! `google-chrome` on PATH, or a path in `PIPE_CHROMIUM`. Without one the test fails and says
//! so; `PIPE_SKIP_BROWSER=1` skips it on purpose (it is never set in CI).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PIPE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs headless Chromium on `page` with `extra` flags; (stdout, stderr). Killed after 90 s.
fn browse(bin: &Path, page: &Path, extra: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let t0 = Instant::now();
    let finished = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Chromium's helper processes (zygote, renderer) share its process group and may still
    // hold the pipes: end the whole group, or the readers below would wait for them.
    // SAFETY: kill(2) on the group this test started; no memory is involved.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    assert!(finished, "chromium did not finish within 90 s");
    (t_out.join().unwrap(), t_err.join().unwrap())
}

/// Console messages Chromium logged (`...:CONSOLE...] "message", source: ...`).
fn console(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// The DOM's shape: sections, tables, figures with their SVG parts, stage entries.
fn structure(dom: &str) -> String {
    let mut out = Vec::new();
    for id in ["summary", "claims", "report", "plots", "stages"] {
        out.push(format!(
            "section {id}: {}",
            dom.contains(&format!("<section id=\"{id}\">"))
        ));
    }
    let pivot = dom
        .split("<table class=\"pivot\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or("");
    out.push(format!(
        "pivot: {} header cells, {} rows",
        pivot
            .split("</thead>")
            .next()
            .unwrap_or("")
            .matches("<th>")
            .count(),
        pivot.matches("<tr>").count() - 1
    ));
    for fig in dom.split("<figure class=\"plot\"").skip(1) {
        let fig = fig.split("</figure>").next().unwrap();
        let head = fig.split('>').next().unwrap().trim();
        let svg = fig.split("</svg>").next().unwrap();
        out.push(format!(
            "figure {head}: {} svg, {} circle, {} polyline, {} text",
            svg.matches("<svg").count(),
            svg.matches("<circle").count(),
            svg.matches("<polyline").count(),
            svg.matches("<text").count()
        ));
    }
    out.push(format!(
        "stages: {} details",
        dom.matches("<details class=\"stage\"").count()
    ));
    out.join("\n")
}

#[test]
fn report_opens_offline_in_chromium_with_its_plots() {
    if std::env::var("PIPE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped on purpose: PIPE_SKIP_BROWSER=1");
        return;
    }
    let bin = chromium().expect(
        "no Chromium found: install Debian's `chromium` (apt-get install chromium fonts-dejavu-core), \
         set PIPE_CHROMIUM=/path/to/chrome, or set PIPE_SKIP_BROWSER=1 to skip this test on purpose",
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let pipe = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_pipe"))
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .current_dir(root())
            .env_remove("PIPE_CACHE_DIR")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    pipe(&["run", "-q", "tests/pipelines/tiny_lottery.yaml"]);
    let out = dir.path().join("report");
    pipe(&["report", "last", "--out", out.to_str().unwrap()]);
    let page = out.join("report.html");

    let (dom, err) = browse(&bin, &page, &["--dump-dom"]);
    assert!(dom.contains("<svg"), "no DOM dumped; chromium said:\n{err}");
    assert_eq!(console(&err), Vec::<&str>::new(), "console messages");
    insta::assert_snapshot!(structure(&dom));

    // The detector itself: a page that fetches something logs a console message.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&page).unwrap().replace(
            "</body>",
            "<img src=\"http://example.invalid/x.png\"></body>",
        ),
    )
    .unwrap();
    let (_, err) = browse(&bin, &bad, &["--dump-dom"]);
    assert!(
        console(&err)
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "a blocked fetch must show on the console:\n{err}"
    );

    // What the browser displays: the first plot's series colours are on screen.
    let shot = dir.path().join("shot.png");
    browse(
        &bin,
        &page,
        &[
            "--window-size=1280,1800",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let near = |c: (i32, i32, i32)| {
        buf.chunks(px)
            .filter(|p| {
                (i32::from(p[0]) - c.0).abs() <= 6
                    && (i32::from(p[1]) - c.1).abs() <= 6
                    && (i32::from(p[2]) - c.2).abs() <= 6
            })
            .count()
    };
    // Tableau blue (first series) and orange (second): markers and lines of the accuracy plot.
    let (blue, orange) = (near((31, 119, 180)), near((255, 127, 14)));
    assert!(
        blue > 100 && orange > 100,
        "plot colours on screen: blue {blue}, orange {orange}"
    );
}
