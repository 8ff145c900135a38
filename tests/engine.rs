//! The engine's promises, checked with the `toy` stage kind (no training involved).

mod common;

use common::*;
use pipe::cache::StageStatus::{Hit, Ran, Skipped};
use pipe::cache::{Store, gc};
use pipe::exec::Why;

fn toy_chain() -> Vec<std::path::PathBuf> {
    vec![file("tests/pipelines/toy_chain.yaml")]
}

#[test]
fn second_run_is_all_hits_with_the_same_results() {
    let cache = tempfile::tempdir().unwrap();
    let first = run(cache.path(), &toy_chain(), &[]);
    assert_ok(&first);
    assert_eq!(
        statuses(&first),
        vec![
            ("a".into(), Ran),
            ("b".into(), Ran),
            ("c".into(), Ran),
            ("d".into(), Ran)
        ]
    );
    assert_eq!(metric(&first, "c", "total"), 6.0);
    assert_eq!(metric(&first, "d", "total"), 11.0);
    let second = run(cache.path(), &toy_chain(), &[]);
    assert!(second.records.iter().all(|r| r.status == Hit));
    assert_eq!(metric(&second, "c", "total"), 6.0);
    let keys =
        |o: &pipe::exec::RunOutcome| o.records.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&first), keys(&second));
}

#[test]
fn changing_one_parameter_reruns_exactly_what_is_downstream() {
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("log");
    let set_log = format!("defaults.toy.log={}", log.display());
    run(cache.path(), &toy_chain(), &[&set_log]);
    let mut first = lines(&log);
    first.sort();
    assert_eq!(first, vec!["a", "b", "c", "d"]);
    let p = plan(cache.path(), &toy_chain(), &[&set_log, "stages.b.value=5"]);
    let why: Vec<(String, bool, String)> = p
        .stages
        .iter()
        .map(|s| {
            (
                s.instance.name.clone(),
                s.cached(),
                s.why.describe(&s.instance),
            )
        })
        .collect();
    assert_eq!(
        why,
        vec![
            ("a".into(), true, "cached".into()),
            ("b".into(), false, "value: 2 → 5".into()),
            ("c".into(), false, "upstream `b` changed".into()),
            ("d".into(), true, "cached".into()),
        ]
    );
    std::fs::remove_file(&log).unwrap();
    let o = run(cache.path(), &toy_chain(), &[&set_log, "stages.b.value=5"]);
    assert_eq!(
        statuses(&o),
        vec![
            ("a".into(), Hit),
            ("b".into(), Ran),
            ("c".into(), Ran),
            ("d".into(), Hit)
        ]
    );
    let mut computed = lines(&log);
    computed.sort();
    assert_eq!(computed, vec!["b", "c"]);
    assert_eq!(metric(&o, "c", "total"), 9.0);
}

#[test]
fn scheduling_fields_stay_out_of_the_key() {
    let cache = tempfile::tempdir().unwrap();
    let a = plan(cache.path(), &toy_chain(), &[]);
    let b = plan(cache.path(), &toy_chain(), &["defaults.toy.sleep_ms=30"]);
    assert_eq!(
        a.stages.iter().map(|s| &s.key).collect::<Vec<_>>(),
        b.stages.iter().map(|s| &s.key).collect::<Vec<_>>()
    );
}

#[test]
fn two_files_sharing_a_prefix_compute_it_once() {
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("log");
    let set_log = format!("defaults.toy.log={}", log.display());
    let left = run(
        cache.path(),
        &[file("tests/pipelines/toy_left.yaml")],
        &[&set_log],
    );
    assert_eq!(
        statuses(&left),
        vec![
            ("base".into(), Ran),
            ("mid".into(), Ran),
            ("left".into(), Ran)
        ]
    );
    let right = run(
        cache.path(),
        &[file("tests/pipelines/toy_right.yaml")],
        &[&set_log],
    );
    assert_eq!(
        statuses(&right),
        vec![
            ("base".into(), Hit),
            ("mid".into(), Hit),
            ("right".into(), Ran)
        ]
    );
    assert_eq!(lines(&log), vec!["base", "mid", "left", "right"]);
    assert_eq!(metric(&right, "right", "total"), 104.0);
    // Both files at once: one graph, the shared stages once.
    let both = plan(
        cache.path(),
        &[
            file("tests/pipelines/toy_left.yaml"),
            file("tests/pipelines/toy_right.yaml"),
        ],
        &[&set_log],
    );
    let names: Vec<&str> = both
        .stages
        .iter()
        .map(|s| s.instance.name.as_str())
        .collect();
    assert_eq!(names, vec!["base", "mid", "left", "right"]);
    assert!(both.stages.iter().all(|s| s.cached()));
}

#[test]
fn a_corrupted_entry_is_detected_and_recomputed() {
    let cache = tempfile::tempdir().unwrap();
    let first = run(cache.path(), &toy_chain(), &[]);
    let b_key = first
        .records
        .iter()
        .find(|r| r.name == "b")
        .unwrap()
        .key
        .clone();
    let store = Store::open(cache.path()).unwrap();
    let file = store.entry_dir(&b_key).join("total.json");
    std::fs::write(&file, r#"{"total": 999}"#).unwrap();
    assert!(store.verify(&b_key).is_err());
    let second = run(cache.path(), &toy_chain(), &[]);
    assert_eq!(status_of(&second, "b"), Ran);
    assert_eq!(metric(&second, "b", "total"), 3.0);
    assert_eq!(status_of(&second, "c"), Hit);
    assert!(store.verify(&b_key).is_ok());
    // The tampered copy was set aside, not deleted, and gc collects it.
    let report = gc::collect(&store, None, true).unwrap();
    assert_eq!(
        report
            .removed
            .iter()
            .filter(|r| r.what == "partial")
            .count(),
        1
    );
}

#[test]
fn a_failed_stage_skips_its_dependents_and_keep_going_runs_the_rest() {
    let cache = tempfile::tempdir().unwrap();
    let o = run_with(cache.path(), &toy_chain(), &["stages.b.fail=true"], true);
    assert_eq!(
        statuses(&o),
        vec![
            ("a".into(), Ran),
            ("b".into(), pipe::cache::StageStatus::Failed),
            ("c".into(), Skipped),
            ("d".into(), Ran)
        ]
    );
    assert!(
        o.records[1]
            .error
            .as_deref()
            .unwrap()
            .contains("failed on purpose")
    );
    // Nothing of the failed stage was published.
    let store = Store::open(cache.path()).unwrap();
    assert!(!store.is_complete(&o.records[1].key));
    assert_eq!(
        std::fs::read_dir(cache.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn sweep_members_and_levels_get_stable_names_and_pair_on_shared_variables() {
    let cache = tempfile::tempdir().unwrap();
    let p = plan(cache.path(), &[file("tests/pipelines/toy_sweep.yaml")], &[]);
    let names: Vec<&str> = p.stages.iter().map(|s| s.instance.name.as_str()).collect();
    insta::assert_snapshot!(names.join("\n"));
    let all = p
        .stages
        .iter()
        .find(|s| s.instance.name == "gather.1.all")
        .unwrap();
    assert_eq!(
        all.instance.inputs,
        vec![(
            "inputs".to_string(),
            vec![
                "chain.1.side".to_string(),
                "chain.2.side".into(),
                "chain.3.side".into(),
                "leaf[fail=false,value=0.5]".into(),
                "leaf[fail=false,value=2]".into()
            ]
        )]
    );
    let o = run(cache.path(), &[file("tests/pipelines/toy_sweep.yaml")], &[]);
    assert_ok(&o);
    assert_eq!(
        metric(&o, "paired[fail=false,value=2]", "total"),
        1.0 + 2.0 + 1.0 + 2.0
    );
    assert_eq!(metric(&o, "chain.3.step", "total"), 4.0);
}

#[test]
fn plan_explains_removed_entries_and_version_changes() {
    let cache = tempfile::tempdir().unwrap();
    let p = plan(cache.path(), &toy_chain(), &[]);
    assert!(p.stages.iter().all(|s| s.why == Why::NoEntry));
    let o = run(cache.path(), &toy_chain(), &[]);
    let store = Store::open(cache.path()).unwrap();
    std::fs::remove_dir_all(store.entry_dir(&o.records[3].key)).unwrap();
    let p = plan(cache.path(), &toy_chain(), &[]);
    assert_eq!(p.stages[3].why, Why::EntryMissing);
}

#[test]
fn gc_keeps_what_kept_runs_reach_and_dry_run_removes_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let save = |o: &pipe::exec::RunOutcome, id: &str| {
        let rec = pipe::cache::RunRecord {
            id: id.into(),
            pipeline: "toy_chain".into(),
            files: vec![],
            overrides: vec![],
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 0.0,
            device: "cpu".into(),
            executor: None,
            outcome: "ok".into(),
            stages: o.records.clone(),
            report: None,
            pipe_version: "test".into(),
            report_spec: None,
            plots: vec![],
            claims: vec![],
            sources: vec![],
        };
        pipe::cache::runs::save(cache.path(), &rec).unwrap();
    };
    let first = run(cache.path(), &toy_chain(), &[]);
    save(&first, "20260101-000000-aaaa");
    let second = run(cache.path(), &toy_chain(), &["stages.d.value=20"]);
    save(&second, "20260101-000001-bbbb");
    let store = Store::open(cache.path()).unwrap();
    let old_d = first.records[3].key.clone();
    let dry = gc::collect(&store, Some(1), true).unwrap();
    let what: Vec<(&str, String)> = dry.removed.iter().map(|r| (r.what, r.id.clone())).collect();
    assert_eq!(
        what,
        vec![
            ("entry", old_d.clone()),
            ("run", "20260101-000000-aaaa".into())
        ]
    );
    assert!(store.is_complete(&old_d));
    let done = gc::collect(&store, Some(1), false).unwrap();
    assert_eq!(done.removed.len(), 2);
    assert!(!store.is_complete(&old_d));
    assert_eq!(done.kept_entries, 4);
    for r in &second.records {
        assert!(store.verify(&r.key).is_ok(), "{} must survive gc", r.name);
    }
    // An entry whose key is locked (being written) is never removed.
    let _lock = store.lock(&second.records[0].key).unwrap();
    let busy = gc::collect(&store, Some(0), true).unwrap();
    assert_eq!(busy.busy, vec![second.records[0].key.clone()]);
}
