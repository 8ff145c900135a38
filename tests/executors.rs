//! The executor seam without a cluster: `--executor subprocess` (every job a `pipe worker`
//! child process, as on Slurm) and `--executor ssh` (through a stand-in `ssh`) give what a
//! local run gives; `pipe worker` re-checks the entry
//! under the key's lock and refuses an edited job; `publish` keeps the first complete entry;
//! `resources:` is checked at plan time and stays out of keys.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use pipe::cache::{Manifest, StageStatus, Store, runs};
use pipe::exec::JobSpec;
use pipe::spec;

fn pipe(cache: &Path, args: &[&str]) -> Output {
    Command::new(toy_pipe())
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(root())
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("PIPE_EXECUTOR")
        .env_remove("PIPE_SSH_HOSTS")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn results(cache: &Path) -> Vec<(String, String, StageStatus, serde_json::Value)> {
    let rs = runs::list(cache).unwrap();
    rs.last()
        .unwrap()
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.key.clone(), s.status, s.metrics.clone()))
        .collect()
}

/// The job description files of the only run in `cache`, by stage.
fn job_files(cache: &Path) -> Vec<(String, PathBuf)> {
    let id = runs::list(cache).unwrap()[0].id.clone();
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(runs::run_folder(cache, &id))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".job.json"))
        .map(|p| (JobSpec::read(&p).unwrap().stage, p))
        .collect();
    out.sort();
    out
}

#[test]
fn subprocess_workers_give_the_keys_and_metrics_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let (local, sub) = (dir.path().join("local"), dir.path().join("sub"));
    let file = "tests/pipelines/slurm_tiny.yaml";
    let l = pipe(&local, &["run", file, "-j", "2"]);
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    let s = pipe(&sub, &["run", file, "-j", "2", "--executor", "subprocess"]);
    assert_eq!(s.status.code(), Some(0), "{}", stderr(&s));
    let want = results(&local);
    assert_eq!(want.len(), 7);
    assert!(want.iter().all(|r| r.2 == StageStatus::Ran));
    assert_eq!(results(&sub), want);
    // One worker per distinct key, each with its log and result in the run's folder.
    let jobs = job_files(&sub);
    assert_eq!(jobs.len(), 7);
    for (_, job) in &jobs {
        let result = job.to_string_lossy().replace(".job.json", ".result.json");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(result).unwrap()).unwrap();
        assert_eq!(r["status"], "ran");
        assert!(Path::new(&job.to_string_lossy().replace(".job.json", ".log")).exists());
    }
    let again = pipe(&sub, &["run", file, "--executor", "subprocess"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(!stderr(&again).contains("submit"), "{}", stderr(&again));
    assert!(results(&sub).iter().all(|r| r.2 == StageStatus::Hit));
}

/// A stand-in for `ssh`, first on PATH: it notes the host it was asked for in `hosts`, then
/// runs the command line it was given with `sh -c` in `/` (sshd starts the user's shell in
/// their home, not where `pipe run` was). So the worker's command line must survive a shell
/// and find its working directory itself, as over a real ssh.
fn fake_ssh(dir: &Path, hosts: &Path) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ssh = bin.join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done\nshift\necho \"$1\" >> '{}'\nshift\ncd /\nexec sh -c \"$*\"\n",
            hosts.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

#[test]
fn ssh_workers_spread_over_the_hosts_and_give_the_results_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    // A space in the cache's path: the worker's command line goes through a shell.
    let (local, remote) = (dir.path().join("local"), dir.path().join("over ssh"));
    let hosts = dir.path().join("hosts");
    let path = fake_ssh(dir.path(), &hosts);
    let file = "tests/pipelines/slurm_tiny.yaml";
    let l = pipe(&local, &["run", file]);
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    let s = Command::new(toy_pipe())
        .arg("--cache-dir")
        .arg(&remote)
        .args(["run", file, "--executor", "ssh", "--hosts", "alpha,beta"])
        .current_dir(root())
        .env("PATH", &path)
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("PIPE_EXECUTOR")
        .env_remove("PIPE_SSH_HOSTS")
        .output()
        .unwrap();
    assert_eq!(s.status.code(), Some(0), "{}", stderr(&s));
    assert_eq!(results(&remote), results(&local));
    // One ssh per job; two at once (one per host by default), each on the less busy host.
    let mut used = lines(&hosts);
    assert_eq!(used.len(), 7);
    used.sort();
    used.dedup();
    assert_eq!(used, ["alpha", "beta"]);
    let rec = runs::list(&remote).unwrap().pop().unwrap();
    assert_eq!(rec.executor.as_deref(), Some("ssh"));
    assert!(
        rec.stages.iter().all(|s| s
            .job
            .as_ref()
            .is_some_and(|j| j.starts_with("alpha:") || j.starts_with("beta:"))),
        "{:?}",
        rec.stages.iter().map(|s| &s.job).collect::<Vec<_>>()
    );
}

#[test]
fn ssh_needs_hosts_and_hosts_need_ssh() {
    let cache = tempfile::tempdir().unwrap();
    let f = "tests/pipelines/toy_chain.yaml";
    let o = pipe(cache.path(), &["run", f, "--executor", "ssh"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--executor ssh needs --hosts HOST[,HOST...]"),
        "{}",
        stderr(&o)
    );
    let o = pipe(cache.path(), &["run", f, "--hosts", "alpha"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--hosts is for --executor ssh"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_failed_worker_shows_its_log_and_skips_what_depends_on_it() {
    let cache = tempfile::tempdir().unwrap();
    let o = pipe(
        cache.path(),
        &[
            "run",
            "tests/pipelines/toy_chain.yaml",
            "--executor",
            "subprocess",
            "-S",
            "stages.b.fail=true",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("FAILED  b: failed on purpose (fail: true)"),
        "{err}"
    );
    assert!(
        err.contains("        | FAILED  b: failed on purpose"),
        "{err}"
    );
    assert!(err.contains("skip    c: `b` failed"), "{err}");
}

#[test]
fn a_worker_waits_for_the_lock_then_hits_an_entry_that_appeared_meanwhile() {
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("computed");
    let set_log = format!("defaults.toy.log={}", log.display());
    let first = pipe(
        cache.path(),
        &[
            "run",
            "tests/pipelines/toy_chain.yaml",
            "--executor",
            "subprocess",
            "-S",
            &set_log,
        ],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(lines(&log).len(), 4);
    let (_, job_a) = job_files(cache.path()).remove(0);
    let job = JobSpec::read(&job_a).unwrap();
    assert_eq!(job.stage, "a");

    // The entry is away and another process holds the key's lock, as if computing it.
    let store = Store::open(cache.path()).unwrap();
    let entry = store.entry_dir(&job.key);
    let aside = cache.path().join("aside");
    std::fs::rename(&entry, &aside).unwrap();
    let lock = store.lock(&job.key).unwrap();
    let worker = Command::new(toy_pipe())
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("worker")
        .arg(&job_a)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = job_a.to_string_lossy().replace(".job.json", ".result.json");
    std::fs::remove_file(&result).unwrap();
    let mut worker = worker;
    let err = BufReader::new(worker.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("wait    a")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("the worker never waited for the lock: {seen:?}"),
        }
    }
    // The other process publishes and lets go.
    std::fs::rename(&aside, &entry).unwrap();
    drop(lock);
    let status = worker.wait().unwrap();
    seen.extend(rx.iter());
    assert_eq!(status.code(), Some(0), "{seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("hit     a")), "{seen:?}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(r["status"], "hit");
    assert_eq!(lines(&log).len(), 4, "nothing computed again");
}

#[test]
fn a_worker_refuses_an_edited_or_foreign_job_description() {
    let cache = tempfile::tempdir().unwrap();
    let first = pipe(
        cache.path(),
        &[
            "run",
            "tests/pipelines/toy_chain.yaml",
            "--executor",
            "subprocess",
        ],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let (_, job_b) = job_files(cache.path()).remove(1);
    let text = std::fs::read_to_string(&job_b).unwrap();
    let mut job: serde_json::Value = serde_json::from_str(&text).unwrap();
    job["preimage"]["params"]["value"] = serde_json::json!(5.0);
    let edited = cache.path().join("edited.json");
    std::fs::write(&edited, job.to_string()).unwrap();
    let o = pipe(cache.path(), &["worker", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the job description was edited"),
        "{}",
        stderr(&o)
    );
    job["format"] = serde_json::json!(99);
    std::fs::write(&edited, job.to_string()).unwrap();
    let o = pipe(cache.path(), &["worker", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("it has format 99, this pipe reads format 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn detach_needs_an_executor_whose_jobs_outlive_the_run() {
    let cache = tempfile::tempdir().unwrap();
    let o = pipe(
        cache.path(),
        &["run", "tests/pipelines/toy_chain.yaml", "--detach"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--detach needs --executor slurm"));
}

fn manifest(key: &str, total: f64) -> Manifest {
    Manifest {
        key: key.into(),
        name: "s".into(),
        kind: "toy".into(),
        version: 1,
        preimage: serde_json::json!({}),
        outputs: Default::default(),
        metrics: serde_json::json!({ "total": total }),
        started_at: String::new(),
        duration_s: 0.0,
        host: String::new(),
        device: "cpu".into(),
        pipe_version: String::new(),
        resumed_at: None,
    }
}

#[test]
fn publish_keeps_the_first_complete_entry_and_drops_the_duplicate() {
    let cache = tempfile::tempdir().unwrap();
    let store = Store::open(cache.path()).unwrap();
    let key = "ab".repeat(32);
    // Two writers that both computed the entry (two nodes whose locks did not exclude each
    // other): the first to publish wins, the second's copy is dropped.
    let (one, two) = (store.begin(&key).unwrap(), store.begin(&key).unwrap());
    std::fs::write(one.dir.join("total.json"), "1").unwrap();
    std::fs::write(two.dir.join("total.json"), "2").unwrap();
    let two_dir = two.dir.clone();
    let first = store.publish(one, manifest(&key, 1.0)).unwrap();
    let second = store.publish(two, manifest(&key, 2.0)).unwrap();
    assert_eq!(second, first);
    assert_eq!(second.metrics["total"], 1.0);
    assert_eq!(
        std::fs::read_to_string(store.entry_dir(&key).join("total.json")).unwrap(),
        "1"
    );
    assert!(!two_dir.exists());
    assert_eq!(store.verify(&key).unwrap(), first);
}

fn load_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    match spec::load(&[path], &[], &registry()) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn resources_are_checked_at_plan_time_and_stay_out_of_keys() {
    let stages = "stages:\n  a: {kind: toy, value: 1}\n  b: {kind: toy, inputs: {input: a}}\n";
    let e = load_error(&format!(
        "resources:\n  kinds:\n    tyo: {{cpus: 2}}\n{stages}"
    ));
    assert!(e.contains("p.yaml:3:5"), "{e}");
    assert!(e.contains("unknown stage kind `tyo`"), "{e}");
    assert!(e.contains("did you mean `toy`?"), "{e}");
    let e = load_error(&format!(
        "resources:\n  stages:\n    \"c*\": {{cpus: 2}}\n{stages}"
    ));
    assert!(e.contains("pattern `c*` matches no stage"), "{e}");
    let e = load_error(&format!(
        "resources:\n  default: {{time: \"1:xx\"}}\n{stages}"
    ));
    assert!(e.contains("p.yaml:2:19"), "{e}");
    assert!(
        e.contains("`time`: expected a Slurm time limit, found `1:xx`"),
        "{e}"
    );
    let e = load_error(&format!(
        "resources:\n  default: {{mem: 4Q, cpus: 0, gpus: 1}}\n{stages}"
    ));
    assert!(
        e.contains("`mem`: expected megabytes or a size with K/M/G/T, found `4Q`"),
        "{e}"
    );
    assert!(
        e.contains("`cpus`: expected a whole number of CPUs, at least 1, found `0`"),
        "{e}"
    );
    assert!(e.contains("unknown resource `gpus`"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.yaml");
    std::fs::write(
        &with,
        format!("resources:\n  default: {{time: 5}}\n  kinds:\n    toy: {{cpus: 2, mem: 1G, extra: [\"--qos=low\"]}}\n  stages:\n    b: {{time: \"1-00:00:00\"}}\n{stages}"),
    )
    .unwrap();
    let without = dir.path().join("without.yaml");
    std::fs::write(&without, stages).unwrap();
    let p = spec::load(&[with], &[], &registry()).unwrap();
    assert_eq!(
        p.resources.for_stage("b", "toy").sbatch_args(),
        [
            "--time=1-00:00:00",
            "--cpus-per-task=2",
            "--mem=1G",
            "--signal=B:TERM@120",
            "--qos=low"
        ]
    );
    let keys = |f: &Path| -> Vec<String> {
        let cache = tempfile::tempdir().unwrap();
        plan(cache.path(), &[f.to_path_buf()], &[])
            .stages
            .iter()
            .map(|s| s.key.clone())
            .collect()
    };
    assert_eq!(keys(&dir.path().join("with.yaml")), keys(&without));
}
