//! Defects found by trying to break `pipe` as a demanding user would (issue "Hardening"), each
//! pinned by a test that failed before its fix: tampered manifests, I/O failures during a stage,
//! partial run records, hand-edited records, negative run specs, colour codes, and reports that
//! name a metric no stage has.
//!
//! Like tests/cli.rs these run the `custom_stage` example (the `pipe` binary plus the `toy` kind).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn toy_pipe() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipe"));
    let example = bin.parent().unwrap().join("examples").join("custom_stage");
    if !example.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "custom_stage"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success());
    }
    example
}

fn command(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(toy_pipe());
    c.arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(root())
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("NO_COLOR");
    c
}

fn pipe(cache: &Path, args: &[&str]) -> Output {
    command(cache, args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const CHAIN: &str = "tests/pipelines/toy_chain.yaml";

fn entry_of(cache: &Path, stage: &str) -> PathBuf {
    let rec = pipe::cache::runs::list(cache).unwrap().pop().unwrap();
    let key = &rec.stage(stage).unwrap().key;
    cache.join("entries").join(&key[..2]).join(key)
}

#[test]
fn an_edited_metric_is_detected_set_aside_and_recomputed() {
    let cache = tempfile::tempdir().unwrap();
    assert!(pipe(cache.path(), &["run", CHAIN]).status.success());
    let manifest = entry_of(cache.path(), "c").join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\"total\": 6.0"), "{text}");
    std::fs::write(&manifest, text.replace("\"total\": 6.0", "\"total\": 99.0")).unwrap();

    let again = pipe(cache.path(), &["run", CHAIN]);
    assert!(again.status.success(), "{}", stderr(&again));
    let err = stderr(&again);
    assert!(
        err.contains("CORRUPT c: cache entry")
            && err.contains("manifest.json was changed after it was written"),
        "{err}"
    );
    assert!(err.contains("run     c"), "{err}");
    // The recomputed number, never the edited one; the edited entry waits in tmp/ for gc.
    let rec = pipe::cache::runs::list(cache.path())
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(rec.stage("c").unwrap().metrics["total"], 6.0);
    let aside: Vec<_> = std::fs::read_dir(cache.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(aside.iter().any(|n| n.starts_with("corrupt-")), "{aside:?}");
}

/// Whether files can be created in a folder whose write permission is removed: false for an
/// ordinary user, true for root (which ignores permission bits).
fn permissions_ignored() -> bool {
    let d = tempfile::tempdir().unwrap();
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    set_mode(&ro, 0o555);
    let ignored = std::fs::write(ro.join("probe"), "").is_ok();
    set_mode(&ro, 0o755);
    ignored
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `pipe` as a process that honours permission bits: as it is for an ordinary user; for root
/// through `setpriv`, dropping the capabilities that bypass them. `None` if neither is possible.
fn pipe_honouring_permissions(cache: &Path, args: &[&str]) -> Option<Output> {
    if !permissions_ignored() {
        return Some(pipe(cache, args));
    }
    let probe = Command::new("setpriv")
        .args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            "true",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return None;
    }
    let mut full = vec![
        "--bounding-set=-dac_override,-dac_read_search".to_string(),
        "--".into(),
        toy_pipe().to_string_lossy().into_owned(),
        "--cache-dir".into(),
        cache.to_string_lossy().into_owned(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    Some(
        Command::new("setpriv")
            .args(&full)
            .current_dir(root())
            .env_remove("PIPE_CACHE_DIR")
            .output()
            .unwrap(),
    )
}

#[test]
fn a_read_only_cache_folder_during_a_stage_exits_3() {
    let cache = tempfile::tempdir().unwrap();
    assert!(pipe(cache.path(), &["plan", CHAIN]).status.success());
    // Entries are written under tmp/; the run record (runs/) can still be written, so only
    // the classification of the stage's failure decides the exit code.
    let tmp = cache.path().join("tmp");
    set_mode(&tmp, 0o555);
    let out = pipe_honouring_permissions(cache.path(), &["run", CHAIN]);
    set_mode(&tmp, 0o755);
    let Some(out) = out else {
        eprintln!("skipped: running as root without setpriv, permission bits cannot be tested");
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("FAILED  a: cache I/O on"), "{err}");
    assert!(
        err.contains("stage `a` failed on a cache or file-system error"),
        "{err}"
    );
    let rec = pipe::cache::runs::list(cache.path()).unwrap();
    assert_eq!(rec[0].outcome, "failed");
}

#[test]
fn an_io_error_inside_a_stage_exits_3_and_a_stage_error_exits_1() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The toy stage appends to `log` first: a path under a file is ENOTDIR for everyone, root
    // included, like ENOSPC or EROFS an error the operating system reports.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let log = format!("stages.a.log={}", blocker.join("log").display());
    let out = pipe(cache.path(), &["run", CHAIN, "-S", &log]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("Not a directory"), "{}", stderr(&out));
    let failed = pipe(cache.path(), &["run", CHAIN, "-S", "stages.a.fail=true"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
}

#[test]
fn an_io_error_inside_a_stage_run_by_pipe_worker_exits_3_and_a_stage_error_exits_1() {
    // The same failures as above, but each job runs in a `pipe worker` process: the worker's
    // result file carries that the failure was I/O, and the run still tells the two apart.
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let log = format!("stages.a.log={}", blocker.join("log").display());
    let sub = ["--executor", "subprocess"];
    let out = pipe(
        cache.path(),
        &[&["run", CHAIN, "-S", &log][..], &sub].concat(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stage `a` failed on a cache or file-system error"),
        "{}",
        stderr(&out)
    );
    let failed = pipe(
        cache.path(),
        &[&["run", CHAIN, "-S", "stages.a.fail=true"][..], &sub].concat(),
    );
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
}

#[test]
fn a_cache_folder_that_cannot_be_published_into_exits_3() {
    let cache = tempfile::tempdir().unwrap();
    let plan = plan(cache.path(), &[file(CHAIN)], &[]);
    let key = &plan
        .stages
        .iter()
        .find(|s| s.instance.name == "a")
        .unwrap()
        .key;
    // The shard folder of `a`'s entry is a file: publishing the finished stage fails.
    std::fs::write(cache.path().join("entries").join(&key[..2]), "").unwrap();
    let out = pipe(cache.path(), &["run", CHAIN]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("FAILED  a: cache I/O on"));
}

#[test]
fn gc_removes_partial_run_records_but_not_fresh_ones() {
    let cache = tempfile::tempdir().unwrap();
    assert!(pipe(cache.path(), &["run", CHAIN]).status.success());
    let runs = cache.path().join("runs");
    let old = runs.join(".20260101-000000-dead.tmp");
    let fresh = runs.join(".20260101-000001-beef.tmp");
    std::fs::write(&old, "{\"id\": \"20260101-0").unwrap();
    std::fs::write(&fresh, "{").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let gc = pipe(cache.path(), &["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(
        stdout(&gc).contains("partial  .20260101-000000-dead.tmp"),
        "{}",
        stdout(&gc)
    );
    assert!(!old.exists());
    assert!(fresh.exists(), "a record being written right now is kept");
}

#[test]
fn negative_run_specs_work_as_documented_and_never_panic() {
    let cache = tempfile::tempdir().unwrap();
    assert!(pipe(cache.path(), &["run", CHAIN]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        pipe(cache.path(), &["run", CHAIN, "-S", "stages.b.value=5"])
            .status
            .success()
    );
    let diff = pipe(cache.path(), &["diff", "-2", "last"]);
    assert!(diff.status.success(), "{}", stderr(&diff));
    assert!(stdout(&diff).contains("params.value"), "{}", stdout(&diff));
    let show = pipe(cache.path(), &["show", "-1"]);
    assert!(show.status.success(), "{}", stderr(&show));
    for args in [
        &["show", "--", "-0"][..],
        &["show", "-0"],
        &["diff", "-0", "-1"],
    ] {
        let o = pipe(cache.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    let o = pipe(cache.path(), &["diff", "-0", "-1"]);
    assert!(stderr(&o).contains("`-0` names no run"), "{}", stderr(&o));
    let o = pipe(cache.path(), &["diff", "-3", "-1"]);
    assert!(
        stderr(&o).contains("`-3`: there are only 2 runs"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn hand_edited_run_records_and_names_give_errors_not_panics() {
    let cache = tempfile::tempdir().unwrap();
    assert!(pipe(cache.path(), &["run", CHAIN]).status.success());
    let path = std::fs::read_dir(cache.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = rec["stages"][0]["key"].as_str().unwrap().to_string();
    // A key cut short by hand (the summary slices keys for display).
    std::fs::write(&path, text.replace(&key, &key[..5])).unwrap();
    for args in [&["runs"][..], &["show", "last"], &["show", "a"]] {
        let o = pipe(cache.path(), args);
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!(
                "run record {} is unreadable: stage `a` has key `{}`, which is not 64 hex digits; skipping it",
                path.display(),
                &key[..5]
            )),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // gc refuses to work from an incomplete picture of what runs reach.
    let gc = pipe(cache.path(), &["gc"]);
    assert_eq!(gc.status.code(), Some(3));
    assert!(stderr(&gc).contains(&path.display().to_string()));
    // Truncated: the same, with the parser's position.
    std::fs::write(&path, &text[..text.len() / 3]).unwrap();
    let o = pipe(cache.path(), &["show", "last"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("EOF while parsing"), "{}", stderr(&o));
    // A names/ file cut short: `plan` and `explain` treat it as no history.
    for f in std::fs::read_dir(cache.path().join("names")).unwrap() {
        std::fs::write(f.unwrap().path(), r#"{"name": "b", "key": "ab"}"#).unwrap();
    }
    let plan = pipe(cache.path(), &["plan", CHAIN, "-S", "stages.b.value=3"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let explain = pipe(
        cache.path(),
        &["explain", CHAIN, "b", "-S", "stages.b.value=3"],
    );
    assert!(explain.status.success(), "{}", stderr(&explain));
    assert!(stdout(&explain).contains("no earlier entry named `b`"));
}

#[test]
fn warnings_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cache.path().join("runs")).unwrap();
    std::fs::write(cache.path().join("runs/x.json"), "{").unwrap();
    let o = pipe(cache.path(), &["runs"]);
    assert!(stderr(&o).contains("WARN"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\u{1b}'), "{:?}", stderr(&o));
    assert!(pipe::cli::colour(true, None));
    assert!(!pipe::cli::colour(false, None));
    assert!(!pipe::cli::colour(true, Some("1".as_ref())));
    // An empty NO_COLOR is unset, as no-color.org says.
    assert!(pipe::cli::colour(true, Some("".as_ref())));
}

#[test]
fn a_report_metric_that_no_stage_has_is_a_warning_naming_it() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("report.yaml");
    std::fs::write(
        &f,
        "stages:\n  a: {kind: toy, value: 1}\n  b: {kind: toy, inputs: {input: a}, value: 2}\nreport:\n  select: [\"*\"]\n  rows: total\n  values: [totl]\n",
    )
    .unwrap();
    let o = pipe(cache.path(), &["run", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "report: none of the 2 selected stages has a metric `totl`, so its cells are empty; did you mean `total`?"
        ),
        "{}",
        stderr(&o)
    );
}
