//! A property-based fuzz harness for what reads user-controlled bytes: the YAML front end
//! (located parser, includes, overrides, expansion, then planning) and the cache's readers
//! (manifests, `COMPLETE` seals, run records, `names/`).
//!
//! Inputs are generated pipelines (a small grammar over stages, sweeps, level groups, defaults,
//! reports, includes, anchors) and the shipped and malformed pipelines as seeds, both then
//! mutated at the byte and line level; cache files are mutated as bytes or as JSON, sometimes
//! re-sealed so that the checks behind the seal are reached too. The invariants:
//!
//! - no panic, no hang (a watchdog aborts a case that runs longer than [`HANG`]), bounded memory
//!   (a counting allocator refuses to grow past [`MEMORY_LIMIT`], and each case must stay under
//!   [`CASE_MEMORY`]);
//! - every rejection has a location: a diagnostic points at a line and column of a file that
//!   was read (or names the file, or the `-S` override); a cache error names the file or key;
//! - a tampered cache entry is never used: running over a mutated cache gives the clean
//!   results.
//! - what is well formed is accepted: a clean generated pipeline, unmutated, is planned.
//!
//! `cargo test` runs a short budget (a few seconds) with a fixed seed. `scripts/fuzz-long.sh`
//! runs a long one: `PIPE_FUZZ_CASES` cases per property, from `PIPE_FUZZ_SEED`, with
//! `PIPE_FUZZ_SAVE` (a folder) where each case's input is written before it runs, so that an
//! abort leaves it behind.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use common::*;
use pipe::cache::{RunRecord, Store, gc, runs};
use pipe::exec;
use pipe::spec::{self, Diagnostic, Override};

// ---------------------------------------------------------------------------------------------
// Bounded memory: a counting allocator.

/// No allocation may take the process past this; the allocation fails (and the process aborts
/// with "memory allocation failed"), which the script reports with the saved input.
const MEMORY_LIMIT: usize = 2 << 30;
/// What one case may add to the peak.
const CASE_MEMORY: usize = 256 << 20;
/// A case running longer than this is a hang.
const HANG: Duration = Duration::from_secs(20);

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > MEMORY_LIMIT {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Budget, case bookkeeping and the watchdog.

fn cases(default: u32) -> u32 {
    std::env::var("PIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    // Inside `cargo test` the same cases every time; the long script picks (and prints) a seed.
    let seed = std::env::var("PIPE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

/// Cases run one at a time (the allocator's peak is process-wide), each announced to the
/// watchdog with a description of its input.
static CASE: Mutex<()> = Mutex::new(());
static CURRENT: Mutex<Option<(Instant, String)>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t0, what)) = cur.as_ref()
                    && t0.elapsed() > HANG
                {
                    eprintln!("fuzz: a case ran longer than {HANG:?} (a hang):\n{what}");
                    std::process::abort();
                }
            }
        });
    });
}

/// Runs one case under the watchdog and the memory bound; `what` describes the input.
fn case<T>(what: impl Fn() -> String, body: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    watchdog();
    let _one = CASE.lock().unwrap_or_else(|e| e.into_inner());
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let description = what();
    if let Some(dir) = std::env::var_os("PIPE_FUZZ_SAVE") {
        // Written before the case runs: an abort (out of memory, hang) leaves it behind.
        let _ = std::fs::write(Path::new(&dir).join("current-case.txt"), &description);
    }
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), description));
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = body();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if n > 0 && n.is_multiple_of(5000) {
        eprintln!("fuzz: {n} cases");
    }
    prop_assert!(
        grew < CASE_MEMORY,
        "the case took {} MiB at its peak",
        grew >> 20
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Byte- and line-level mutations.

/// Pieces of YAML and of pipe's language, inserted by mutations.
const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: *a",
    "!!str ",
    "!tag ",
    "|",
    ">",
    "'",
    "\"",
    "#",
    "\n",
    "  ",
    "\t",
    "---\n",
    "...\n",
    "~",
    "null",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "-0",
    "0x1F",
    "0o17",
    "1_000",
    "1e-2",
    "0.01",
    "true",
    "*",
    "prev.",
    "prev.a",
    "imp.1.a",
    "imp.*.a",
    "*.b",
    "matrix: ",
    "matrix: {value: [1, 1]}",
    "levels: ",
    "count: ",
    "count: 1000",
    "first: ",
    "stages: ",
    "include: [inc.yaml]",
    "include: main.yaml",
    "include: [nowhere.yaml]",
    "kind: ",
    "kind: toy",
    "kind: bogus",
    "inputs: ",
    "inputs: {input: a}",
    "inputs: {inputs: [\"*\"]}",
    "defaults: ",
    "defaults: {toy: {value: 2}}",
    "defaults: {toi: {}}",
    "report: ",
    "select: [\"*\"]",
    "rows: total",
    "values: [total]",
    "value: ",
    "fail: ",
    "log: ",
    "sleep_ms: ",
    "é",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "? ",
    "%YAML 1.2\n",
    "a",
    "b",
    "c",
    "init",
    "train",
    "evaluate",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index, u8),
    Insert(Index, Index),
    Byte(Index, u8),
    DupLine(Index),
    DropLine(Index),
    SwapLines(Index, Index),
    Indent(Index, u8),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<Index>().prop_map(Mutation::DupLine),
        any::<Index>().prop_map(Mutation::DropLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), 0u8..6).prop_map(|(i, n)| Mutation::Indent(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..=max)
}

fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::Delete(i, n) => {
            let s = at(i, bytes.len());
            let e = (s + *n as usize).min(bytes.len());
            bytes.drain(s..e);
        }
        Mutation::Insert(i, t) => {
            let s = at(i, bytes.len());
            let tok = TOKENS[t.index(TOKENS.len())].as_bytes();
            bytes.splice(s..s, tok.iter().copied());
        }
        Mutation::Byte(i, b) => {
            if !bytes.is_empty() {
                let s = i.index(bytes.len());
                bytes[s] = *b;
            }
        }
        Mutation::DupLine(i) | Mutation::DropLine(i) | Mutation::Indent(i, _) => {
            let lines = line_spans(bytes);
            if lines.is_empty() {
                return;
            }
            let (s, e) = lines[i.index(lines.len())];
            match m {
                Mutation::DupLine(_) => {
                    let line: Vec<u8> = bytes[s..e].to_vec();
                    bytes.splice(e..e, line);
                }
                Mutation::DropLine(_) => {
                    bytes.drain(s..e);
                }
                Mutation::Indent(_, n) => {
                    bytes.splice(s..s, std::iter::repeat_n(b' ', *n as usize));
                }
                _ => unreachable!(),
            }
        }
        Mutation::SwapLines(a, b) => {
            let lines = line_spans(bytes);
            if lines.len() < 2 {
                return;
            }
            let (x, y) = (a.index(lines.len()), b.index(lines.len()));
            let (x, y) = (x.min(y), x.max(y));
            if x == y {
                return;
            }
            let mut out = Vec::with_capacity(bytes.len());
            for (k, &(s, e)) in lines.iter().enumerate() {
                let (s, e) = if k == x {
                    lines[y]
                } else if k == y {
                    lines[x]
                } else {
                    (s, e)
                };
                out.extend_from_slice(&bytes[s..e]);
                if !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            *bytes = out;
        }
        Mutation::Truncate(i) => {
            let s = at(i, bytes.len());
            bytes.truncate(s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated pipelines: a small grammar, rendered as YAML in block and flow styles. Half the
// cases are drawn `clean` (toy stages consuming earlier stages, distinct sweep values, a
// non-cyclic include): they get through the parser into expansion and planning, and are
// planned unless a mutation or override breaks them. The other half draw from the odd choices
// too (unknown kinds and fields, odd values, dangling references, alias chains), which make
// the mistakes.

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
const KINDS: &[&str] = &["toy", "init", "train", "evaluate", "bogus"];
/// Distinct numbers (a sweep over a subsequence lists no value twice).
const NUMBERS: &[&str] = &[
    "1", "2", "0.5", "1e-2", "0.03", "-3", "0", "10", "0.25", "7",
];
const ODD_VALUES: &[&str] = &[
    "0.01",
    "'1'",
    "\"x\"",
    "true",
    "~",
    ".nan",
    ".inf",
    "1e400",
    "[1, 2]",
    "{a: 1}",
    "99999999999999999999",
    "0x10",
    "abc",
    "*s",
    "-.inf",
];
const PARAMS: &[&str] = &["value", "fail", "valeu", "lr", "iterations", "seed"];

/// A strategy that is `clean` or, with the odd choices, `odd` (`clean` at weight 8 to 1).
fn either<T: std::fmt::Debug + 'static>(
    odd: bool,
    clean: impl Strategy<Value = T> + 'static,
    odd_choices: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if odd {
        prop_oneof![8 => clean, 1 => odd_choices].boxed()
    } else {
        clean.boxed()
    }
}

fn value(odd: bool) -> BoxedStrategy<String> {
    let s = |v: &&str| v.to_string();
    either(
        odd,
        prop::sample::select(NUMBERS).prop_map(move |v| s(&v)),
        prop::sample::select(ODD_VALUES).prop_map(move |v| s(&v)),
    )
}

fn kind(odd: bool) -> BoxedStrategy<&'static str> {
    either(odd, Just(KINDS[0]), prop::sample::select(KINDS))
}

fn param(odd: bool) -> BoxedStrategy<&'static str> {
    either(odd, Just(PARAMS[0]), prop::sample::select(PARAMS))
}

/// An input reference, resolved when rendered against the stages defined before it.
#[derive(Debug, Clone)]
enum Ref {
    /// An earlier stage of the same map (or of the top level, inside a group).
    Earlier(Index),
    /// `prev.X` for a stage X of the group.
    Prev(Index),
    /// A pattern: `x*` for an earlier stage's first letter, or over a group's members.
    Glob(Index),
    GroupGlob(Index),
    /// `x*` for an earlier stage x: it and its sweep's instances (`x[value=1]`); a sibling
    /// in a group by name.
    Prefix(Index),
    /// A name that may not exist.
    Any(Index),
}

/// `many`: for a list role, where patterns are allowed.
fn reference(odd: bool, many: bool) -> BoxedStrategy<Ref> {
    let clean = prop_oneof![
        10 => any::<Index>().prop_map(Ref::Earlier),
        3 => any::<Index>().prop_map(Ref::Prev),
    ];
    let patterns = prop_oneof![
        any::<Index>().prop_map(Ref::Glob),
        any::<Index>().prop_map(Ref::GroupGlob),
    ];
    match (odd, many) {
        (false, false) => clean.boxed(),
        // A first-letter or a group pattern may match the consuming stage itself (a cycle).
        (false, true) => prop_oneof![4 => clean, 1 => any::<Index>().prop_map(Ref::Prefix)].boxed(),
        (true, _) => prop_oneof![
            8 => clean,
            1 => patterns,
            1 => any::<Index>().prop_map(Ref::Any),
        ]
        .boxed(),
    }
}

impl Ref {
    /// `earlier`: names defined before; `siblings`: the group's stages (inside a group).
    fn render(&self, earlier: &[String], siblings: &[String]) -> Option<String> {
        let pick = |i: &Index, from: &[String]| {
            (!from.is_empty()).then(|| from[i.index(from.len())].clone())
        };
        match self {
            Ref::Earlier(i) => pick(i, earlier),
            Ref::Prev(i) => pick(i, siblings).map(|n| format!("prev.{n}")),
            Ref::Glob(i) => pick(i, earlier).map(|n| format!("\"{}*\"", &n[..1])),
            // Inside a group a pattern matches full names (`g.1.sa`): a sibling goes bare.
            Ref::Prefix(i) => pick(i, earlier).map(|n| match siblings.contains(&n) {
                true => n,
                false => format!("\"{n}*\""),
            }),
            Ref::GroupGlob(i) => pick(i, siblings).map(|n| format!("\"g.*.{n}\"")),
            Ref::Any(i) => Some(NAMES[i.index(NAMES.len())].to_string()),
        }
    }
}

#[derive(Debug, Clone)]
struct StageGen {
    kind: &'static str,
    params: Vec<(&'static str, String)>,
    input: Option<Ref>,
    inputs: Vec<Ref>,
    matrix: Option<(&'static str, Vec<String>)>,
    flow: bool,
}

fn stage(odd: bool) -> impl Strategy<Value = StageGen> {
    // Sweep values: distinct when clean, repeats possible when odd.
    let sweep = if odd {
        prop::collection::vec(value(true), 1..4).boxed()
    } else {
        prop::sample::subsequence(NUMBERS, 1..4)
            .prop_map(|vs| vs.iter().map(|v| v.to_string()).collect())
            .boxed()
    };
    (
        kind(odd),
        prop::collection::vec((param(odd), value(odd)), 0..2),
        prop::option::weighted(0.6, reference(odd, false)),
        prop::collection::vec(reference(odd, true), 0..2),
        prop::option::weighted(0.3, (param(odd), sweep)),
        any::<bool>(),
    )
        .prop_map(|(kind, params, input, inputs, matrix, flow)| StageGen {
            kind,
            params,
            input,
            inputs,
            matrix,
            flow,
        })
}

impl StageGen {
    /// `anchor`: define `&s` on this stage's `value`, for the `*s` aliases of the others.
    fn render(
        &self,
        name: &str,
        indent: &str,
        earlier: &[String],
        siblings: &[String],
        anchor: bool,
    ) -> String {
        let swept = |p: &str| self.matrix.as_ref().is_some_and(|(m, _)| *m == p);
        let mut fields = vec![format!("kind: {}", self.kind)];
        let mut given: Vec<&str> = Vec::new();
        if anchor && !swept("value") {
            fields.push("value: &s 1".into());
            given.push("value");
        }
        for (p, v) in &self.params {
            if !swept(p) && !given.contains(p) {
                fields.push(format!("{p}: {v}"));
                given.push(p);
            }
        }
        let mut inputs = Vec::new();
        if let Some(r) = self
            .input
            .as_ref()
            .and_then(|r| r.render(earlier, siblings))
        {
            inputs.push(format!("input: {r}"));
        }
        let list: Vec<String> = self
            .inputs
            .iter()
            .filter_map(|r| r.render(earlier, siblings))
            .collect();
        if !list.is_empty() {
            inputs.push(format!("inputs: [{}]", list.join(", ")));
        }
        if !inputs.is_empty() {
            fields.push(format!("inputs: {{{}}}", inputs.join(", ")));
        }
        if let Some((p, vs)) = &self.matrix {
            fields.push(format!("matrix: {{{p}: [{}]}}", vs.join(", ")));
        }
        if self.flow {
            format!("{indent}{name}: {{{}}}\n", fields.join(", "))
        } else {
            let mut s = format!("{indent}{name}:\n");
            for f in fields {
                s.push_str(&format!("{indent}  {f}\n"));
            }
            s
        }
    }
}

#[derive(Debug, Clone)]
struct GroupGen {
    count: &'static str,
    /// Which earlier stage stands in for `prev.X` at the first level.
    first: Option<Index>,
    stages: Vec<StageGen>,
}

fn group(odd: bool) -> impl Strategy<Value = GroupGen> {
    let count = either(
        odd,
        prop::sample::select(&["1", "2", "3"][..]),
        prop::sample::select(&["0", "1000", "x", "-1"][..]),
    );
    let first = if odd {
        prop::option::weighted(0.8, any::<Index>()).boxed()
    } else {
        any::<Index>().prop_map(Some).boxed()
    };
    (count, first, prop::collection::vec(stage(odd), 1..3)).prop_map(|(count, first, stages)| {
        GroupGen {
            count,
            first,
            stages,
        }
    })
}

#[derive(Debug, Clone)]
struct DocGen {
    /// `&s` on the first stage's `value` (which `*s` among the odd values refers to).
    anchor: bool,
    /// An alias chain: `depth` anchors, each listing `width` aliases of the one before (as
    /// top-level keys, which the parser expands before the keys are checked).
    aliases: Option<(usize, usize)>,
    defaults: Vec<(&'static str, &'static str, String)>,
    stages: Vec<StageGen>,
    group: Option<GroupGen>,
    report: Option<(Vec<Ref>, &'static str, &'static str)>,
    include: bool,
}

/// `included`: the second file of a pair, which (when clean) neither includes the first back
/// nor defines a level group of the same name.
fn doc(odd: bool, included: bool) -> impl Strategy<Value = DocGen> {
    let aliases = if odd {
        prop::option::weighted(0.2, (1usize..10, 1usize..12)).boxed()
    } else {
        Just(None).boxed()
    };
    let clean_inc = !odd && included;
    let (group, include) = if clean_inc {
        (Just(None).boxed(), Just(false).boxed())
    } else {
        (
            prop::option::weighted(0.4, group(odd)).boxed(),
            prop::bool::weighted(0.3).boxed(),
        )
    };
    let report = (
        either(
            odd,
            prop::collection::vec(any::<Index>().prop_map(Ref::Prefix), 1..3),
            prop::collection::vec(reference(true, true), 0..3),
        ),
        // `rows` and `values` are metrics; toy stages report `total`.
        either(
            odd,
            Just("total"),
            prop::sample::select(&["value", "totl"][..]),
        ),
        either(
            odd,
            Just("total"),
            prop::sample::select(&["value", "x"][..]),
        ),
    );
    (
        any::<bool>(),
        aliases,
        prop::collection::vec((kind(odd), param(odd), value(odd)), 0..2),
        prop::collection::vec(stage(odd), 1..5),
        group,
        prop::option::weighted(0.3, report),
        include,
    )
        .prop_map(
            move |(anchor, aliases, defaults, mut stages, mut group, report, include)| {
                // A clean document sweeps every stage over the same values: a stage downstream
                // of a sweep over the same variable pairs with its members.
                if !odd {
                    let mut all: Vec<&mut StageGen> = stages.iter_mut().collect();
                    all.extend(group.iter_mut().flat_map(|g| g.stages.iter_mut()));
                    let first = all.iter().find_map(|st| st.matrix.clone());
                    for st in all {
                        if st.matrix.is_some() {
                            st.matrix.clone_from(&first);
                        }
                    }
                }
                DocGen {
                    anchor,
                    aliases,
                    defaults,
                    stages,
                    group,
                    report,
                    include,
                }
            },
        )
}

impl DocGen {
    /// `prefix` keeps the names of two generated files apart (unless a mutation merges them).
    fn render(&self, prefix: &str, include: Option<&str>) -> String {
        let mut s = String::from("pipeline: fuzz\n");
        if let (true, Some(f)) = (self.include, include) {
            s.push_str(&format!("include: [{f}]\n"));
        }
        if let Some((depth, width)) = self.aliases {
            s.push_str(&format!("l0: &l0 [{}]\n", vec!["x"; width].join(", ")));
            for d in 1..depth {
                let items = vec![format!("*l{}", d - 1); width].join(", ");
                s.push_str(&format!("l{d}: &l{d} [{items}]\n"));
            }
        }
        if !self.defaults.is_empty() {
            s.push_str("defaults:\n");
            let mut kinds = Vec::new();
            for (k, p, v) in &self.defaults {
                if !kinds.contains(k) {
                    kinds.push(*k);
                    s.push_str(&format!("  {k}: {{{p}: {v}}}\n"));
                }
            }
        }
        let mut earlier: Vec<String> = Vec::new();
        s.push_str("stages:\n");
        for (i, st) in self.stages.iter().enumerate() {
            let name = format!("{prefix}{}", NAMES[i % NAMES.len()]);
            s.push_str(&st.render(&name, "  ", &earlier, &[], self.anchor && i == 0));
            earlier.push(name);
        }
        let mut members = Vec::new();
        if let Some(g) = &self.group {
            s.push_str(&format!("levels:\n  g:\n    count: {}\n", g.count));
            let siblings: Vec<String> = (0..g.stages.len())
                .map(|i| format!("s{}", NAMES[i % NAMES.len()]))
                .collect();
            if let Some(f) = &g.first
                && !earlier.is_empty()
            {
                let stands_in = &earlier[f.index(earlier.len())];
                let firsts: Vec<String> = siblings
                    .iter()
                    .map(|n| format!("{n}: {stands_in}"))
                    .collect();
                s.push_str(&format!("    first: {{{}}}\n", firsts.join(", ")));
            }
            s.push_str("    stages:\n");
            let mut inner = earlier.clone();
            for (i, st) in g.stages.iter().enumerate() {
                s.push_str(&st.render(&siblings[i], "      ", &inner, &siblings, false));
                inner.push(siblings[i].clone());
            }
            members.push(format!("g.1.{}", siblings[0]));
        }
        if let Some((select, rows, values)) = &self.report {
            let all = [earlier, members].concat();
            let sel: Vec<String> = select.iter().filter_map(|r| r.render(&all, &[])).collect();
            s.push_str(&format!(
                "report: {{select: [{}], rows: {rows}, values: [{values}]}}\n",
                sel.join(", ")
            ));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The front end's property.

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

/// How a property's cases ended, printed at its end (`--nocapture` shows it; the long script
/// keeps it): a harness whose inputs are all rejected by the parser tests little past it.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<&'static str, usize>>);

impl Tally {
    fn add(&self, outcome: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    fn report(&self, property: &str, t0: Instant) {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "fuzz: {property}: {} cases in {:.1}s: {t:?}",
            t.values().sum::<usize>(),
            t0.elapsed().as_secs_f64()
        );
    }
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

// ---------------------------------------------------------------------------------------------
// The cache readers' property.

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
            outcome: "ok".into(),
            stages: o.records.clone(),
            report: None,
            pipe_version: "0".into(),
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

/// JSON values a mutation may put anywhere in a JSON file.
fn json_value(i: usize) -> serde_json::Value {
    use serde_json::json;
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let values = [
        json!(null),
        json!(""),
        json!("é"),
        json!("abc"),
        json!("../../x"),
        json!("0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"),
        json!(1e308),
        json!(-1),
        json!(u64::MAX),
        json!([]),
        json!({}),
        json!({"x": 1}),
        deep,
        json!("ran"),
        json!("hit"),
        json!("-0"),
    ];
    values[i % values.len()].clone()
}

#[derive(Debug, Clone)]
enum CacheMutation {
    Bytes(Vec<Mutation>),
    /// Replace the value at a path (chosen by indices into objects and arrays) or remove it.
    Json {
        path: Vec<Index>,
        value: usize,
        remove: bool,
    },
}

fn cache_mutation() -> impl Strategy<Value = CacheMutation> {
    prop_oneof![
        mutations(4).prop_map(CacheMutation::Bytes),
        (
            prop::collection::vec(any::<Index>(), 1..4),
            0..64usize,
            any::<bool>()
        )
            .prop_map(|(path, value, remove)| CacheMutation::Json {
                path,
                value,
                remove
            }),
    ]
}

fn mutate_json(v: &mut serde_json::Value, path: &[Index], value: usize, remove: bool) {
    let Some((first, rest)) = path.split_first() else {
        *v = json_value(value);
        return;
    };
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(first.index(m.len())).unwrap().clone();
            if rest.is_empty() && remove {
                m.remove(&k);
            } else {
                mutate_json(m.get_mut(&k).unwrap(), rest, value, remove);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            let i = first.index(a.len());
            if rest.is_empty() && remove {
                a.remove(i);
            } else {
                mutate_json(&mut a[i], rest, value, remove);
            }
        }
        _ => *v = json_value(value),
    }
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
            tally.add(result.map_err(TestCaseError::fail)?);
            Ok(())
        })
        .unwrap();
    tally.report("cache readers", t0);
}
