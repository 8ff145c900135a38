//! A training that is killed or stopped resumes where it stopped, and what it publishes is
//! byte for byte what an uninterrupted run publishes (issue 24); two runs of one pipeline —
//! one after the other, side by side, on other thread counts — publish the same bytes.
//!
//! These run the `pipe` binary as a user does: `kill -9` and SIGINT reach a real process.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TRAIN: &str = "tests/pipelines/interrupt_train.yaml";
const NETAUG: &str = "tests/pipelines/interrupt_netaug.yaml";
/// Iterations of each pipeline's long stage.
const TRAIN_TOTAL: u64 = 240;
const NETAUG_TOTAL: u64 = 64;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipe"))
}

fn command(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(root())
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("PIPE_CHECKPOINT_EVERY");
    c
}

fn pipe(cache: &Path, args: &[&str]) -> std::process::Output {
    command(cache, args).output().unwrap()
}

fn pipe_ok(cache: &Path, args: &[&str]) -> String {
    let o = pipe(cache, args);
    assert!(
        o.status.success(),
        "pipe {args:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The key of stage `stage` in the newest run record of `cache`.
fn key_of(cache: &Path, stage: &str) -> String {
    let rec = pipe::cache::runs::list(cache).unwrap().pop().unwrap();
    rec.stage(stage).unwrap().key.clone()
}

/// Every file of a published entry but its manifest and the manifest's seal (`COMPLETE`), by
/// relative path, and the manifest's result fields (key, outputs' digests, metrics). The rest
/// of the manifest (start time, duration, host, `resumed_at`) describes the run, not the
/// result, and so does the seal of those bytes.
fn published(cache: &Path, stage: &str) -> (BTreeMap<String, Vec<u8>>, Value) {
    let key = key_of(cache, stage);
    let dir = cache.join("entries").join(&key[..2]).join(&key);
    let mut files = BTreeMap::new();
    collect(&dir, &dir, &mut files);
    let manifest: Value = serde_json::from_slice(&files.remove("manifest.json").unwrap()).unwrap();
    files.remove("COMPLETE").unwrap();
    let result = serde_json::json!({
        "key": manifest["key"],
        "outputs": manifest["outputs"],
        "metrics": manifest["metrics"],
    });
    (files, result)
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
}

fn assert_same_entry(a: &Path, b: &Path, stage: &str) {
    let (fa, ra) = published(a, stage);
    let (fb, rb) = published(b, stage);
    assert_eq!(ra, rb, "{stage}: manifests' results differ");
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "{stage}: other files"
    );
    for (name, bytes) in &fa {
        assert!(bytes == &fb[name], "{stage}: {name} differs byte-wise");
    }
}

/// The checkpoints saved in `cache/resume/`, as `(key, done)`, sorted.
fn progress_checkpoints(cache: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(keys) = std::fs::read_dir(cache.join("resume")) else {
        return out;
    };
    for k in keys.flatten() {
        let key = k.file_name().to_string_lossy().into_owned();
        for c in std::fs::read_dir(k.path()).into_iter().flatten().flatten() {
            let name = c.file_name().to_string_lossy().into_owned();
            // Only complete checkpoints: a folder is renamed to its number once whole.
            if let Ok(done) = name.parse::<u64>() {
                out.push((key.clone(), done));
            }
        }
    }
    out.sort();
    out
}

/// Waits until a progress checkpoint at `at` or later exists, then kills `child` with
/// SIGKILL, the signal nothing can catch.
fn kill_at(cache: &Path, child: &mut Child, at: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if progress_checkpoints(cache).iter().any(|(_, d)| *d >= at) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pipe ended ({status}) before a progress checkpoint at {at}");
        }
        assert!(Instant::now() < deadline, "no progress checkpoint at {at}");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

/// `kill -9` at several points of a run with a checkpoint every step, each attempt resuming
/// from the last; the final entry equals an uninterrupted run's, byte for byte.
fn killed_and_resumed(file: &str, stage: &str, total: u64, points: &[u64]) {
    let whole = tempfile::tempdir().unwrap();
    pipe_ok(whole.path(), &["run", file, "--checkpoint-every", "0"]);

    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let args = ["run", file, "--checkpoint-every", "1ms"];
    for &at in points {
        let mut child = command(c, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        kill_at(c, &mut child, at);
        // A killed run leaves no half-written checkpoint under a final name (at most three:
        // the two kept and a newer one whose older ones it was killed before removing), and
        // `plan` says where the stage will resume.
        let saved = progress_checkpoints(c);
        assert!(!saved.is_empty() && saved.len() <= 3, "{saved:?}");
        let (_, newest) = saved.iter().max_by_key(|(_, d)| *d).unwrap().clone();
        assert!(newest >= at && newest < total, "{saved:?}");
        let plan = pipe_ok(c, &["plan", file]);
        assert!(
            plan.contains(&format!("run (resumes at {newest}/{total})")),
            "{plan}"
        );
    }
    let out = pipe_ok(c, &["run", file, "--checkpoint-every", "1ms"]);
    assert!(out.contains("1 ran (1 resumed)"), "{out}");
    assert_same_entry(whole.path(), c, stage);
    // The entry is published: its progress checkpoints are gone.
    assert_eq!(progress_checkpoints(c), vec![]);
    let record = pipe::cache::runs::list(c).unwrap().pop().unwrap();
    let resumed = record.stage(stage).unwrap().resumed_at.unwrap();
    assert!(resumed >= *points.last().unwrap(), "resumed at {resumed}");
}

#[test]
fn a_training_killed_three_times_publishes_the_uninterrupted_bytes() {
    // Before, between and after the `save_at` checkpoints (60, 200) and curve points (80, 160).
    killed_and_resumed(TRAIN, "dense", TRAIN_TOTAL, &[30, 120, 210]);
}

#[test]
fn a_netaug_training_killed_mid_epoch_publishes_the_uninterrupted_bytes() {
    // Epochs of 16 steps, augmented in the first two: in the first augmented epoch, at the
    // turn to the plain epochs, and in the last.
    killed_and_resumed(NETAUG, "netaug", NETAUG_TOTAL, &[5, 33, 50]);
}

/// Ctrl-C (SIGINT) with no periodic checkpoint due: the stage saves one before it exits, the
/// run says `interrupted` and exits 130, and the next run resumes from it.
#[test]
fn ctrl_c_leaves_a_checkpoint_and_the_next_run_resumes_from_it() {
    let whole = tempfile::tempdir().unwrap();
    pipe_ok(whole.path(), &["run", TRAIN, "--checkpoint-every", "0"]);

    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let mut child = command(c, &["run", TRAIN, "--checkpoint-every", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Progress lines (plain, not a terminal) show the training under way.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("dense") && line.contains(&format!("/{TRAIN_TOTAL}")) {
            break;
        }
    }
    assert!(
        progress_checkpoints(c).is_empty(),
        "no checkpoint is due within the hour"
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: `pid` is our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(130), "{text}\n{seen:?}");
    assert!(
        text.contains("interrupted: 1 ran, 0 cached, 0 failed, 1 not run (1 with a progress checkpoint: the next run resumes it)"),
        "{text}"
    );
    let saved = progress_checkpoints(c);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].1 > 0 && saved[0].1 < TRAIN_TOTAL, "{saved:?}");

    let out = pipe_ok(c, &["run", TRAIN]);
    assert!(
        out.contains("1 ran (1 resumed), 1 cached, 0 failed"),
        "{out}"
    );
    assert_same_entry(whole.path(), c, "dense");
}

/// Two runs of the same pipelines publish the same bytes, file by file, whether they run one
/// after the other, on other thread counts or side by side on one cache (the optimiser state's
/// metadata was once written in a per-process random order).
#[test]
fn runs_of_one_pipeline_publish_byte_identical_entries() {
    let files = [TRAIN, NETAUG];
    let first = tempfile::tempdir().unwrap();
    pipe_ok(first.path(), &["run", files[0], files[1], "--threads", "1"]);
    let second = tempfile::tempdir().unwrap();
    pipe_ok(
        second.path(),
        &["run", files[0], files[1], "--threads", "2"],
    );
    let shared = tempfile::tempdir().unwrap();
    let runs: Vec<Child> = [["-j", "1"], ["-j", "2"]]
        .iter()
        .map(|jobs| {
            command(
                shared.path(),
                &["run", files[0], files[1], jobs[0], jobs[1]],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for r in runs {
        assert!(r.wait_with_output().unwrap().status.success());
    }
    for cache in [second.path(), shared.path()] {
        for stage in ["init", "dense", "init_bn", "netaug"] {
            assert_same_entry(first.path(), cache, stage);
        }
    }
}

/// `gc` removes the progress checkpoints of a key no kept run reaches (and says so first with
/// `--dry-run`), and keeps those an interrupted run's record reaches.
#[test]
fn gc_removes_progress_checkpoints_no_kept_run_reaches() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let mut child = command(c, &["run", TRAIN, "--checkpoint-every", "1ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at(c, &mut child, 20);
    // Killed before its record was written: no run reaches the checkpoint.
    let saved = progress_checkpoints(c);
    let key = saved[0].0.clone();
    // The killed process's unfinished entry folder, `tmp/<key>.<pid>.<n>`, is garbage too.
    let partial = |c: &Path| -> Vec<String> {
        std::fs::read_dir(c.join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&key))
            .collect()
    };
    assert_eq!(partial(c).len(), 1, "{:?}", partial(c));
    let dry = pipe_ok(c, &["gc", "--dry-run"]);
    assert!(
        dry.contains(&key[..12]) && dry.contains("progress checkpoints"),
        "{dry}"
    );
    assert!(
        dry.lines()
            .any(|l| l.starts_with("partial") && l.contains(&key[..12])),
        "{dry}"
    );
    assert_eq!(progress_checkpoints(c), saved, "a dry run removes nothing");
    pipe_ok(c, &["gc"]);
    assert_eq!(progress_checkpoints(c), vec![]);
    assert!(!c.join("resume").join(&key).exists());
    assert_eq!(partial(c), Vec::<String>::new());
}
