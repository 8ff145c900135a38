//! `pipe run --executor slurm` against a real Slurm cluster.
//!
//! These tests need a running cluster, so they are `#[ignore]`d: a plain `cargo test` lists
//! them as ignored (never as passed). To run them, start a single-node cluster as root and ask
//! for them explicitly; `.ci/run` does both:
//!
//!     scripts/slurm-up.sh
//!     cargo test --test slurm -- --ignored
//!
//! Asked for explicitly without a cluster, they fail and say why.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use pipe::cache::{RunRecord, StageStatus, runs};

const NEEDS_SLURM: &str = "needs a Slurm cluster: run scripts/slurm-up.sh as root, then cargo test --test slurm -- --ignored";

/// One test at a time: they share the cluster's CPUs, and the timing of one (two runs that
/// must overlap) should not depend on another's jobs.
static CLUSTER: Mutex<()> = Mutex::new(());

fn cluster() -> std::sync::MutexGuard<'static, ()> {
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let sinfo = Command::new("sinfo")
        .args(["--noheader", "--format=%T"])
        .output();
    match sinfo {
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty() => {}
        Ok(o) => panic!(
            "{NEEDS_SLURM}\n(sinfo: {}{})",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{NEEDS_SLURM}\n(sinfo: {e})"),
    }
    guard
}

fn pipe_cmd(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(toy_pipe());
    c.arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(root())
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("PIPE_EXECUTOR");
    c
}

fn pipe(cache: &Path, args: &[&str]) -> Output {
    pipe_cmd(cache, args).output().unwrap()
}

/// `pipe run FILE --executor slurm` with a short poll, and extra arguments.
fn slurm_run(cache: &Path, file: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run", file, "--executor", "slurm", "--poll", "0.3"];
    args.extend_from_slice(extra);
    pipe(cache, &args)
}

/// A folder holding an `sbatch` that appends a line to `count` and runs the real one: put
/// first on PATH, it counts the submissions a `pipe run` really makes.
fn counting_sbatch(dir: &Path, count: &Path) -> std::path::PathBuf {
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("sbatch"))
        .find(|p| p.is_file())
        .expect("sbatch is on PATH");
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let script = shim.join("sbatch");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            count.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

/// `PATH` with `first` in front.
fn path_with(first: &Path) -> std::ffi::OsString {
    let mut dirs = vec![first.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// How many `sbatch` calls `count` has seen (its lines; none before the first call).
fn sbatch_calls(count: &Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |t| t.lines().count())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn records(cache: &Path) -> Vec<RunRecord> {
    runs::list(cache).unwrap()
}

/// (stage, key, status, metrics) of a run.
fn results(rec: &RunRecord) -> Vec<(String, String, StageStatus, serde_json::Value)> {
    rec.stages
        .iter()
        .map(|s| (s.name.clone(), s.key.clone(), s.status, s.metrics.clone()))
        .collect()
}

fn lines_starting(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Slurm job id recorded for the stage `stage` (from the submission markers).
fn job_of(cache: &Path, stage: &str) -> Option<String> {
    std::fs::read_dir(cache.join("slurm"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find(|m| m["stage"] == stage)
        .and_then(|m| m["job"].as_str().map(str::to_string))
}

fn squeue_state(job: &str) -> String {
    let o = Command::new("squeue")
        .args([
            "--noheader",
            "--states=all",
            "--format=%T",
            &format!("--jobs={job}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn same_keys_and_metrics_as_local_then_all_hits_without_sbatch() {
    let _c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    let file = "tests/pipelines/slurm_tiny.yaml";

    let t0 = Instant::now();
    let l = pipe(&local, &["run", file]);
    let local_s = t0.elapsed().as_secs_f64();
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));

    // Every sbatch the submission makes goes through a counting wrapper.
    let count = dir.path().join("sbatch-calls");
    let path = path_with(&counting_sbatch(dir.path(), &count));
    let slurm_args = ["run", file, "--executor", "slurm", "--poll", "0.3"];
    let t0 = Instant::now();
    let s = pipe_cmd(&slurm, &slurm_args)
        .env("PATH", &path)
        .output()
        .unwrap();
    let slurm_s = t0.elapsed().as_secs_f64();
    assert_eq!(s.status.code(), Some(0), "{}", stderr(&s));
    let (lr, sr) = (records(&local), records(&slurm));
    let want = results(&lr[0]);
    assert_eq!(want.len(), 7);
    assert!(want.iter().all(|r| r.2 == StageStatus::Ran));
    // The same keys and bit-identical metrics, every stage computed by a Slurm job.
    assert_eq!(results(&sr[0]), want);
    assert_eq!(sr[0].executor.as_deref(), Some("slurm"));
    assert!(sr[0].stages.iter().all(|s| s.job.is_some()));
    // One sbatch per distinct key: 7 calls, one script per job in the run's folder, one
    // `submit` line each.
    assert_eq!(sbatch_calls(&count), 7);
    let folder = runs::run_folder(&slurm, &sr[0].id);
    let scripts = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sh"))
        .count();
    assert_eq!(scripts, 7);
    assert_eq!(lines_starting(&stderr(&s), "submit  "), 7);
    // Resources from the file reach sbatch, and the job name says the stage.
    let dense = std::fs::read_to_string(
        std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("dense-")
                    && p.extension().is_some_and(|x| x == "sh")
            })
            .unwrap(),
    )
    .unwrap();
    assert!(dense.contains("--job-name=pipe:dense "), "{dense}");
    assert!(
        dense.contains("--time=0:10:00 --cpus-per-task=1 --mem=1G"),
        "{dense}"
    );
    assert!(dense.contains("--dependency=afterok:"), "{dense}");
    // Each job's log is in the run's folder.
    let logs = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count();
    assert_eq!(logs, 7);

    // Second submission: everything is a hit and nothing is submitted.
    let t0 = Instant::now();
    let again = pipe_cmd(&slurm, &slurm_args)
        .env("PATH", &path)
        .output()
        .unwrap();
    let again_s = t0.elapsed().as_secs_f64();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(sbatch_calls(&count), 7, "the second submission ran sbatch");
    assert_eq!(lines_starting(&stderr(&again), "submit  "), 0);
    assert_eq!(lines_starting(&stderr(&again), "hit     "), 7);
    let sr = records(&slurm);
    assert!(!runs::run_folder(&slurm, &sr[1].id).exists());
    assert!(sr[1].stages.iter().all(|s| s.status == StageStatus::Hit));
    // Measured, for the record (`--nocapture` shows it): the chain init → dense → prune →
    // ticket_init → ticket → eval_ticket is 6 jobs deep, so Slurm's cost per job on the
    // critical path is about (slurm − local) / 6.
    eprintln!(
        "slurm_tiny (7 stages): local {local_s:.2}s; slurm {slurm_s:.2}s with 7 sbatch, ~{:.2}s per job on the 6-deep chain; again {again_s:.2}s with 0 sbatch",
        (slurm_s - local_s) / 6.0
    );
}

/// Starts toy_chain on Slurm with stage `b` sleeping, and returns once `b` is being written.
fn start_with_b_running(cache: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "run",
        "tests/pipelines/toy_chain.yaml",
        "--executor",
        "slurm",
        "--poll",
        "0.3",
        "-S",
        "stages.b.sleep_ms=60000",
    ];
    args.extend_from_slice(extra);
    let child = pipe_cmd(cache, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // b's own unfinished folder (`tmp/<key>.…`), not a's, which is there first for a moment.
    let b_key = |cache: &Path| -> Option<String> {
        std::fs::read_dir(cache.join("slurm"))
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|m| m["stage"] == "b")
            })
            .map(|e| e.file_name().to_string_lossy().replace(".json", ""))
    };
    let tmp = cache.join("tmp");
    wait_until("b is being written", Duration::from_secs(120), || {
        let Some(key) = b_key(cache) else {
            return false;
        };
        std::fs::read_dir(&tmp).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&key))
        })
    });
    child
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn a_job_cancelled_mid_run_leaves_nothing_complete_and_the_next_run_resumes() {
    let _c = cluster();
    let cache = tempfile::tempdir().unwrap();
    let child = start_with_b_running(cache.path(), &[]);
    let b = job_of(cache.path(), "b").expect("b was submitted");
    let c = job_of(cache.path(), "c").expect("c was submitted");
    assert!(Command::new("scancel").arg(&b).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("FAILED  b: slurm job {b} ended CANCELLED")),
        "{err}"
    );
    // The log's tail is shown, and what waited on b is cancelled, not left pending.
    assert!(err.contains("        | last "), "{err}");
    assert!(err.contains("skip    c: `b` failed"), "{err}");
    wait_until("c leaves the queue", Duration::from_secs(60), || {
        let s = squeue_state(&c);
        s.is_empty() || s == "CANCELLED"
    });
    // Nothing of b looks finished; its unfinished folder is gone (SIGTERM reached the worker).
    let p = plan(cache.path(), &[file("tests/pipelines/toy_chain.yaml")], &[]);
    let cached: Vec<(&str, bool)> = p
        .stages
        .iter()
        .map(|s| (s.instance.name.as_str(), s.cached()))
        .collect();
    assert_eq!(cached[0], ("a", true));
    assert_eq!(cached[1], ("b", false));
    assert_eq!(cached[2], ("c", false));
    wait_until(
        "b's temporary folder is removed",
        Duration::from_secs(30),
        || std::fs::read_dir(cache.path().join("tmp")).unwrap().count() == 0,
    );

    let again = slurm_run(cache.path(), "tests/pipelines/toy_chain.yaml", &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let rec = records(cache.path()).pop().unwrap();
    assert_eq!(rec.stage("a").unwrap().status, StageStatus::Hit);
    assert_eq!(rec.stage("b").unwrap().status, StageStatus::Ran);
    assert_eq!(rec.stage("c").unwrap().status, StageStatus::Ran);
    assert_eq!(rec.stage("c").unwrap().metrics["total"], 6.0);
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn concurrent_submissions_sharing_a_prefix_compute_it_once() {
    let _c = cluster();
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("computed");
    let set_log = format!("defaults.toy.log={}", log.display());
    let spawn = |file: &str| {
        pipe_cmd(
            cache.path(),
            &[
                "run",
                file,
                "--executor",
                "slurm",
                "--poll",
                "0.3",
                "-S",
                &set_log,
                "-S",
                "defaults.toy.sleep_ms=1500",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let left = spawn("tests/pipelines/toy_left.yaml");
    let right = spawn("tests/pipelines/toy_right.yaml");
    let (l, r) = (
        left.wait_with_output().unwrap(),
        right.wait_with_output().unwrap(),
    );
    assert!(l.status.success(), "{}", stderr(&l));
    assert!(r.status.success(), "{}", stderr(&r));
    let mut computed = lines(&log);
    computed.sort();
    assert_eq!(
        computed,
        ["base", "left", "mid", "right"],
        "each computed once"
    );
    let recs = records(cache.path());
    let key = |rec: &RunRecord, s: &str| rec.stage(s).unwrap().key.clone();
    assert_eq!(key(&recs[0], "mid"), key(&recs[1], "mid"));
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn detach_returns_at_once_show_reports_the_jobs_and_a_later_run_follows_them() {
    let _c = cluster();
    let cache = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let d = slurm_run(
        cache.path(),
        "tests/pipelines/toy_chain.yaml",
        &["--detach", "-S", "stages.b.sleep_ms=4000"],
    );
    assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
    assert!(t0.elapsed() < Duration::from_secs(4), "--detach waited");
    assert_eq!(lines_starting(&stderr(&d), "submit  "), 4);
    let rec = records(cache.path()).pop().unwrap();
    assert_eq!(rec.outcome, "detached");
    assert!(rec.stages.iter().all(|s| s.status == StageStatus::Queued));
    assert!(stdout(&d).contains("queued on Slurm"), "{}", stdout(&d));

    // `pipe show RUN` asks Slurm: b is still queued or running.
    let show = pipe(cache.path(), &["show", &rec.id]);
    assert!(stdout(&show).contains("detached"), "{}", stdout(&show));
    assert!(stdout(&show).contains("slurm job "), "{}", stdout(&show));

    // Running the file again follows the queued jobs instead of submitting them again.
    let follow = slurm_run(
        cache.path(),
        "tests/pipelines/toy_chain.yaml",
        &["-S", "stages.b.sleep_ms=4000"],
    );
    assert_eq!(follow.status.code(), Some(0), "{}", stderr(&follow));
    let err = stderr(&follow);
    assert_eq!(lines_starting(&err, "submit  "), 0, "{err}");
    assert!(lines_starting(&err, "follow  ") >= 2, "{err}");
    // (Run ids have one-second resolution, so the two records are told apart by id.)
    let all = records(cache.path());
    assert_eq!(all.len(), 2);
    let followed = all.iter().find(|r| r.id != rec.id).unwrap();
    assert_eq!(followed.stage("c").unwrap().metrics["total"], 6.0);

    // Now every job has ended, the detached run's record is final.
    let show = pipe(cache.path(), &["show", &rec.id]);
    assert!(stdout(&show).contains(", ok)"), "{}", stdout(&show));
    let rec = records(cache.path())
        .into_iter()
        .find(|r| r.id == rec.id)
        .unwrap();
    assert_eq!(rec.outcome, "ok");
    assert!(
        rec.stages
            .iter()
            .all(|s| matches!(s.status, StageStatus::Ran | StageStatus::Hit))
    );
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn ctrl_c_cancels_the_submitted_jobs() {
    let _c = cluster();
    let cache = tempfile::tempdir().unwrap();
    let child = start_with_b_running(cache.path(), &[]);
    let (b, c) = (
        job_of(cache.path(), "b").unwrap(),
        job_of(cache.path(), "c").unwrap(),
    );
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    for job in [&b, &c] {
        wait_until("the job is cancelled", Duration::from_secs(60), || {
            let s = squeue_state(job);
            s.is_empty() || s == "CANCELLED"
        });
    }
    let rec = records(cache.path()).pop().unwrap();
    assert_eq!(rec.outcome, "interrupted");
    assert_eq!(rec.stage("b").unwrap().status, StageStatus::NotRun);
}

#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-up.sh; cargo test --test slurm -- --ignored)"]
fn command_stages_run_their_program_on_the_node() {
    let _c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    let file = "tests/pipelines/command_tiny.yaml";
    let l = pipe(&local, &["run", file]);
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    let s = slurm_run(&slurm, file, &[]);
    assert_eq!(s.status.code(), Some(0), "{}", stderr(&s));
    let (lr, sr) = (records(&local), records(&slurm));
    let want = results(&lr[0]);
    assert_eq!(results(&sr[0]), want);
    assert!(sr[0].stages.iter().all(|s| s.job.is_some()));
    // b's script read a's metrics from its input: 2 * 4 + 2.
    let b = want.iter().find(|r| r.0 == "b").unwrap();
    assert_eq!(b.3["score"].as_f64(), Some(10.0));
}
