//! Generated pipelines: a small grammar, rendered as YAML in block and flow styles. Half the
//! cases are drawn `clean` (toy stages consuming earlier stages, distinct sweep values, a
//! non-cyclic include): they get through the parser into expansion and planning, and are
//! planned unless a mutation or override breaks them. The other half draw from the odd choices
//! too (unknown kinds and fields, odd values, dangling references, alias chains), which make
//! the mistakes.

use proptest::prelude::*;
use proptest::sample::Index;

pub(crate) const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
pub(crate) const KINDS: &[&str] = &["toy", "init", "train", "evaluate", "bogus"];
/// Distinct numbers (a sweep over a subsequence lists no value twice).
pub(crate) const NUMBERS: &[&str] = &[
    "1", "2", "0.5", "1e-2", "0.03", "-3", "0", "10", "0.25", "7",
];
pub(crate) const ODD_VALUES: &[&str] = &[
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
pub(crate) const PARAMS: &[&str] = &["value", "fail", "valeu", "lr", "iterations", "seed"];

/// A strategy that is `clean` or, with the odd choices, `odd` (`clean` at weight 8 to 1).
pub(crate) fn either<T: std::fmt::Debug + 'static>(
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

pub(crate) fn value(odd: bool) -> BoxedStrategy<String> {
    let s = |v: &&str| v.to_string();
    either(
        odd,
        prop::sample::select(NUMBERS).prop_map(move |v| s(&v)),
        prop::sample::select(ODD_VALUES).prop_map(move |v| s(&v)),
    )
}

pub(crate) fn kind(odd: bool) -> BoxedStrategy<&'static str> {
    either(odd, Just(KINDS[0]), prop::sample::select(KINDS))
}

pub(crate) fn param(odd: bool) -> BoxedStrategy<&'static str> {
    either(odd, Just(PARAMS[0]), prop::sample::select(PARAMS))
}

/// An input reference, resolved when rendered against the stages defined before it.
#[derive(Debug, Clone)]
pub(crate) enum Ref {
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
pub(crate) fn reference(odd: bool, many: bool) -> BoxedStrategy<Ref> {
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
    pub(crate) fn render(&self, earlier: &[String], siblings: &[String]) -> Option<String> {
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
pub(crate) struct StageGen {
    kind: &'static str,
    params: Vec<(&'static str, String)>,
    input: Option<Ref>,
    inputs: Vec<Ref>,
    matrix: Option<(&'static str, Vec<String>)>,
    flow: bool,
}

pub(crate) fn stage(odd: bool) -> impl Strategy<Value = StageGen> {
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
    pub(crate) fn render(
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
pub(crate) struct GroupGen {
    count: &'static str,
    /// Which earlier stage stands in for `prev.X` at the first level.
    first: Option<Index>,
    stages: Vec<StageGen>,
}

pub(crate) fn group(odd: bool) -> impl Strategy<Value = GroupGen> {
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
pub(crate) struct DocGen {
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
pub(crate) fn doc(odd: bool, included: bool) -> impl Strategy<Value = DocGen> {
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
    pub(crate) fn render(&self, prefix: &str, include: Option<&str>) -> String {
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
