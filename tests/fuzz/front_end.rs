//! The front end's properties: generated pipelines, and the repository's pipelines mutated,
//! through the located parser, includes, overrides, expansion and planning.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::common::*;
use crate::mutate::{apply, mutations};
use crate::pipelines::doc;
use crate::{Tally, case, runner};
use pipe::cache::Store;
use pipe::exec;
use pipe::spec::{self, Diagnostic, Override};

/// Files under `dir` named as written, with their (possibly non-UTF-8) bytes.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Vec<PathBuf> {
    files
        .iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect()
}

/// Every diagnostic points into a file that was read (a valid line and column), names one, or
/// names the override it is about.
fn check_located(d: &Diagnostic, written: &[PathBuf], overrides: &[String]) -> Result<(), String> {
    let rendered = d.to_string();
    match &d.loc {
        Some(loc) => {
            let path = loc.path();
            let known =
                written.iter().any(|w| w == path) || path.to_string_lossy().starts_with("<-S ");
            if !known {
                return Err(format!(
                    "points into an unknown file {}: {rendered}",
                    path.display()
                ));
            }
            let lines = loc.file.text.lines().count().max(1);
            if loc.line == 0 || loc.col == 0 || (!loc.file.text.is_empty() && loc.line > lines + 1)
            {
                return Err(format!(
                    "points at {}:{} of a {lines}-line file: {rendered}",
                    loc.line, loc.col
                ));
            }
            Ok(())
        }
        None => {
            let names_file = written
                .iter()
                .any(|w| d.message.contains(&w.display().to_string()));
            let names_override = overrides.iter().any(|o| d.message.contains(o.as_str()));
            if names_file || names_override {
                Ok(())
            } else {
                Err(format!("has no location: {rendered}"))
            }
        }
    }
}

/// Loads `files[main]` (which may include the others) with the overrides, and plans it.
fn front_end(
    files: &[(String, Vec<u8>)],
    main: usize,
    overrides: &[String],
) -> Result<(&'static str, String), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let written = write_files(dir.path(), files);
    let what = || {
        let mut s = format!("main file: {}\n", files[main].0);
        // A generated pair in full; of the corpus, the mutated file.
        let shown: Vec<&(String, Vec<u8>)> = if files.len() <= 2 {
            files.iter().collect()
        } else {
            vec![&files[main]]
        };
        for (name, bytes) in shown {
            s.push_str(&format!(
                "--- {name} ---\n{}\n",
                String::from_utf8_lossy(bytes)
            ));
        }
        for o in overrides {
            s.push_str(&format!("-S {o}\n"));
        }
        s
    };
    let result = case(what, || {
        let reg = registry();
        let mut ov: Vec<Override> = Vec::new();
        for o in overrides {
            match o.parse::<Override>() {
                Ok(o) => ov.push(o),
                Err(d) => {
                    check_located(&d, &written, overrides)?;
                    return Ok(("override", d.to_string()));
                }
            }
        }
        match spec::load(&written[main..=main], &ov, &reg) {
            Err(ds) => {
                if ds.0.is_empty() {
                    return Err("an empty list of diagnostics".into());
                }
                for d in &ds.0 {
                    check_located(d, &written, overrides)?;
                }
                Ok(("rejected", ds.to_string()))
            }
            Ok(p) => {
                let cache = tempfile::tempdir().unwrap();
                let store = Store::open(cache.path()).unwrap();
                // What planning relies on: unique names, inputs defined before use.
                let mut seen = std::collections::HashSet::new();
                for inst in &p.instances {
                    for (role, names) in &inst.inputs {
                        if let Some(n) = names.iter().find(|n| !seen.contains(n.as_str())) {
                            return Err(format!(
                                "`{}` consumes `{n}` ({role}) before it is defined",
                                inst.name
                            ));
                        }
                    }
                    if !seen.insert(inst.name.as_str()) {
                        return Err(format!("two stages are named `{}`", inst.name));
                    }
                }
                match exec::plan(p.clone(), &reg, &store) {
                    Ok(plan) => {
                        let _ = pipe::cli::plan_table(&plan).render_text();
                        Ok(("planned", String::new()))
                    }
                    Err(exec::PlanError::Invalid(ds)) => {
                        for d in &ds.0 {
                            check_located(d, &written, overrides)?;
                        }
                        Ok(("rejected at plan time", ds.to_string()))
                    }
                    Err(exec::PlanError::Cache(e)) => Err(format!("cache error: {e}")),
                }
            }
        }
    })?;
    result.map_err(TestCaseError::fail)
}

/// The seeds of mutation: every pipeline the repository ships or tests with.
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut out = Vec::new();
        for d in [
            "pipelines",
            "pipelines/common",
            "tests/pipelines",
            "tests/malformed",
        ] {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(file(d))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            paths.sort();
            for p in paths {
                let name = p.strip_prefix(root()).unwrap().display().to_string();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
        out
    })
}

const OVERRIDES: &[&str] = &[
    "stages.a.value=3",
    "stages.a.value=.nan",
    "stages.b.matrix.value=[1, 1]",
    "defaults.toy.value=2",
    "defaults.toi.value=2",
    "levels.g.count=1000",
    "levels.g.count=2",
    "stages=3",
    "defaults=[]",
    "stages.a=",
    "stages..a=1",
    "report.select=[\"zz*\"]",
    "stages.a.kind=bogus",
    "stages.a.inputs.input=a",
    "x",
    "stages.a.value=&x [*x]",
];

fn overrides() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(OVERRIDES).prop_map(str::to_string),
        1..3,
    )
}

/// Mutations or overrides, sometimes (`odd` cases more often and more of them).
fn sometimes<T: Clone + std::fmt::Debug + 'static>(
    odd: bool,
    some: impl Strategy<Value = Vec<T>> + 'static,
) -> BoxedStrategy<Vec<T>> {
    let none = if odd { 1 } else { 3 };
    prop_oneof![none => Just(Vec::new()), 1 => some].boxed()
}

#[test]
fn fuzz_generated_pipelines() {
    let t0 = Instant::now();
    let mut runner = runner(150);
    let tally = Tally::default();
    let strategy = any::<bool>().prop_flat_map(|odd| {
        (
            Just(odd),
            doc(odd, false),
            doc(odd, true),
            sometimes(odd, mutations(3)),
            sometimes(odd, mutations(2)),
            sometimes(odd, overrides()),
        )
    });
    runner
        .run(&strategy, |(odd, main, inc, mm, mi, ov)| {
            let mut a = main.render("", Some("inc.yaml")).into_bytes();
            let mut b = inc.render("i", Some("main.yaml")).into_bytes();
            for m in &mm {
                apply(&mut a, m);
            }
            for m in &mi {
                apply(&mut b, m);
            }
            let files = [("main.yaml".into(), a), ("inc.yaml".into(), b)];
            let (outcome, diagnostics) = front_end(&files, 0, &ov)?;
            // The generator's clean pipelines are well formed: refusing one is a defect (of
            // pipe's or of the generator's) too.
            let pristine = !odd && mm.is_empty() && mi.is_empty() && ov.is_empty();
            prop_assert!(
                !pristine || outcome == "planned",
                "a well-formed pipeline was {outcome}:\n{}\n{diagnostics}",
                String::from_utf8_lossy(&files[0].1)
            );
            tally.add(outcome);
            Ok(())
        })
        .unwrap();
    tally.report("generated pipelines", t0);
}

#[test]
fn fuzz_mutated_corpus() {
    let t0 = Instant::now();
    let mut runner = runner(150);
    let tally = Tally::default();
    let n = corpus().len();
    let strategy = (0..n, mutations(4), sometimes(true, overrides()));
    runner
        .run(&strategy, |(i, ms, ov)| {
            // The whole corpus in its folders (so includes resolve), one file mutated.
            let mut files: Vec<(String, Vec<u8>)> = corpus().to_vec();
            for m in &ms {
                apply(&mut files[i].1, m);
            }
            tally.add(front_end(&files, i, &ov)?.0);
            Ok(())
        })
        .unwrap();
    tally.report("mutated corpus", t0);
}
