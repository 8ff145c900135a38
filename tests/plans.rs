//! `pipe plan` for every shipped pipeline, on an empty cache: stage names, kinds and keys.
//! The keys are pinned here: a change that silently changes keys (and so invalidates every
//! user's cache) fails this test, in the spirit of open_lth's hash test.

mod common;

use common::*;

#[test]
fn plan_of_every_shipped_pipeline() {
    let mut files: Vec<_> = std::fs::read_dir("pipelines")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    for f in files {
        let cache = tempfile::tempdir().unwrap();
        let p = plan(cache.path(), std::slice::from_ref(&f), &[]);
        let text = pipe::cli::plan_table(&p).render_text();
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("plan_{stem}"), text);
    }
}

#[test]
fn toy_chain_keys_are_pinned() {
    let cache = tempfile::tempdir().unwrap();
    let p = plan(cache.path(), &[file("tests/pipelines/toy_chain.yaml")], &[]);
    let keys: Vec<String> = p
        .stages
        .iter()
        .map(|s| format!("{} {}", s.instance.name, s.key))
        .collect();
    insta::assert_snapshot!(keys.join("\n"));
    // The canonical pre-image of the root stage, byte for byte.
    assert_eq!(
        p.stages[0].preimage.canonical(),
        r#"{"data":{},"format":1,"inputs":{},"kind":"toy","params":{"fail":false,"value":1.0},"version":1}"#
    );
}
