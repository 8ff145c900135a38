//! Every malformed pipeline under tests/malformed gets an error that names the file, line and
//! column and says what to do, and nothing runs. One snapshot per file.

mod common;

use common::*;
use pipe::cache::Store;
use pipe::exec;
use pipe::spec;

/// The error text, with this checkout's folder written `<repo>` (errors about relative paths
/// name the folder they resolve against).
fn diagnose(rel: &str, set: &[&str]) -> String {
    diagnose_here(rel, set).replace(&root().display().to_string(), "<repo>")
}

fn diagnose_here(rel: &str, set: &[&str]) -> String {
    let reg = registry();
    let cache = tempfile::tempdir().unwrap();
    match spec::load(&[rel.into()], &overrides(set), &reg) {
        Err(d) => d.to_string(),
        Ok(p) => {
            let store = Store::open(cache.path()).unwrap();
            match exec::plan(p, &reg, &store) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{rel} was accepted"),
            }
        }
    }
}

#[test]
fn every_malformed_file_is_refused_with_a_located_error() {
    // Integration tests run in the package root, so the relative paths below are stable.
    let mut files: Vec<_> = std::fs::read_dir("tests/malformed")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "the corpus has {} files", files.len());
    for f in files {
        let rel = f.to_string_lossy().into_owned();
        let text = diagnose(&rel, &[]);
        assert!(text.contains("error: "), "{rel}: {text}");
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("malformed_{stem}"), text);
    }
}

#[test]
fn bad_overrides_are_refused_with_a_hint() {
    insta::assert_snapshot!(diagnose(
        "tests/pipelines/toy_chain.yaml",
        &["stages.bb.value=3"]
    ));
    insta::assert_snapshot!(diagnose(
        "tests/pipelines/toy_chain.yaml",
        &["stages.b.vlaue=3"]
    ));
    let err = "no-equals-sign".parse::<spec::Override>().unwrap_err();
    assert_eq!(err.message, "override `no-equals-sign` has no `=`");
}
