//! The cache readers' property: a cache holding one clean run, mutated (bytes or JSON, an
//! edited manifest sometimes re-sealed), read by every reader and then run over.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::common::*;
use crate::mutate::{CacheMutation, apply, cache_mutation, mutate_json};
use crate::{Tally, case, runner};
use pipe::cache::{RunRecord, Store, gc, runs};

const CHAIN: &str = "tests/pipelines/toy_chain.yaml";

/// A cache holding one clean run of toy_chain (entries, names, a run record), made once, and
/// each stage's clean metrics.
fn template() -> &'static (tempfile::TempDir, Vec<(String, serde_json::Value)>) {
    static T: OnceLock<(tempfile::TempDir, Vec<(String, serde_json::Value)>)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let o = run(dir.path(), &[file(CHAIN)], &[]);
        assert_ok(&o);
        let rec = RunRecord {
            id: "20260101-000000-abcd".into(),
            pipeline: "toy_chain".into(),
            files: vec![file(CHAIN)],
            overrides: vec![],
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 0.1,
            device: "cpu".into(),
            executor: None,
            outcome: "ok".into(),
            stages: o.records.clone(),
            report: None,
            pipe_version: "0".into(),
            report_spec: None,
            plots: vec![],
            claims: vec![],
            sources: vec![],
        };
        runs::save(dir.path(), &rec).unwrap();
        let metrics = o
            .records
            .iter()
            .map(|r| (r.name.clone(), r.metrics.clone()))
            .collect();
        (dir, metrics)
    })
}

/// The files a mutation may touch: everything but the lock files and the README.
fn cache_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                if !rel.starts_with("locks") && rel != Path::new("README.md") {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for rel in walk(from) {
        let (s, d) = (from.join(&rel), to.join(&rel));
        if s.is_dir() {
            std::fs::create_dir_all(&d).unwrap();
        } else {
            std::fs::create_dir_all(d.parent().unwrap()).unwrap();
            std::fs::copy(&s, &d).unwrap();
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// A cache error names the file or the entry's key it is about.
fn names_its_file(e: &pipe::cache::CacheError, cache: &Path) -> Result<(), String> {
    let s = e.to_string();
    let has_key = s
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|w| w.len() == 64);
    if s.contains(&cache.display().to_string()) || has_key {
        Ok(())
    } else {
        Err(format!("names no file: {s}"))
    }
}

#[test]
fn fuzz_cache_readers() {
    let t0 = Instant::now();
    let mut runner = runner(40);
    let tally = Tally::default();
    let (tpl, clean) = template();
    let n = cache_files(tpl.path()).len();
    let strategy = (
        prop::collection::vec((0..n, cache_mutation()), 1..3),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(muts, reseal)| {
            let cache = tempfile::tempdir().unwrap();
            copy_tree(tpl.path(), cache.path());
            let files = cache_files(cache.path());
            let mut touched = Vec::new();
            for (i, m) in &muts {
                let rel = &files[*i % files.len()];
                let p = cache.path().join(rel);
                let mut bytes = std::fs::read(&p).unwrap();
                match m {
                    CacheMutation::Bytes(ms) => {
                        for m in ms {
                            apply(&mut bytes, m);
                        }
                    }
                    CacheMutation::Json {
                        path,
                        value,
                        remove,
                    } => {
                        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                            mutate_json(&mut v, path, *value, *remove);
                            bytes = serde_json::to_vec_pretty(&v).unwrap();
                        }
                    }
                }
                std::fs::write(&p, &bytes).unwrap();
                // Re-sealing reaches the checks behind the seal (as a deliberate editor could).
                if reseal && rel.ends_with("manifest.json") {
                    let seal = format!("blake3:{}\n", blake3::hash(&bytes).to_hex());
                    std::fs::write(p.with_file_name("COMPLETE"), seal).unwrap();
                }
                touched.push((
                    rel.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
            let what = || format!("reseal: {reseal}\n{touched:#?}");
            let result = case(what, || -> Result<&'static str, String> {
                let root = cache.path();
                let mut detected = false;
                let store = Store::open(root).map_err(|e| e.to_string())?;
                for (key, _) in store.list_entries().map_err(|e| e.to_string())? {
                    let _ = store.is_complete(&key);
                    if let Err(e) = store.verify(&key) {
                        names_its_file(&e, root)?;
                        detected = true;
                    }
                }
                let (records, bad) = runs::load(root);
                for e in &bad {
                    names_its_file(e, root)?;
                    detected = true;
                }
                for r in &records {
                    let _ = pipe::cli::summary_table(r).render_text();
                    for spec in ["last", "-1", "-0", "-99", "2026", ""] {
                        let _ = runs::resolve(&records, spec);
                    }
                    let rows = pipe::report::diff::diff_runs(r, &records[0], true);
                    let _ = pipe::report::diff::diff_table(&rows, "a", "b").render_text();
                }
                for name in ["a", "b", "c", "d"] {
                    let _ = store.last_for_name(name);
                }
                match gc::collect(&store, None, true) {
                    Ok(_) => {}
                    Err(e) => names_its_file(&e, root)?,
                }
                // Planning and running over the tampered cache: every stage hits or reruns,
                // and (unless an entry was re-sealed after editing) with the clean results.
                let o = run(root, &[file(CHAIN)], &[]);
                if !o.ok() {
                    return Err(format!(
                        "the run over the mutated cache failed: {:?}",
                        o.records
                    ));
                }
                if !reseal {
                    for (name, m) in clean {
                        let got = &o.records.iter().find(|r| &r.name == name).unwrap().metrics;
                        if got != m {
                            return Err(format!("`{name}` gave {got}, the clean run {m}"));
                        }
                    }
                }
                Ok(if detected {
                    "tampering reported"
                } else {
                    "nothing reported"
                })
            })?;
            let mutated: Vec<&String> = touched.iter().map(|(f, _)| f).collect();
            tally.add(result.map_err(|e| {
                TestCaseError::fail(format!("{e}\nmutated (reseal: {reseal}): {mutated:?}"))
            })?);
            Ok(())
        })
        .unwrap();
    tally.report("cache readers", t0);
}
