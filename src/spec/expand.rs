//! From the merged tree to concrete stage instances: `levels:` groups are unrolled, references
//! resolved, the template graph checked for cycles, sweeps (`matrix:`) expanded and propagated
//! downstream, defaults applied and parameters normalised by their kind.
//!
//! Sweep propagation: a stage that consumes a swept stage through a single-stage role is
//! itself expanded once per member it consumes (its name carries the member's assignment), so
//! `evaluate` of a swept `train` needs no matrix of its own. Roles that take a list gather
//! every member instead. Two swept inputs are paired on the variables they share.

use std::collections::{BTreeMap, HashMap};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::diag::{Diagnostic, Diagnostics, Loc, choices_hint, did_you_mean};
use super::include::{DefaultScopes, deep_merge};
use super::yaml::{Key, Node, NodeKind};
use super::{Instance, ReportSpec};
use crate::stages::{Registry, Role, UpstreamInfo};

const RESERVED: &[&str] = &["kind", "inputs", "matrix"];
const GROUP_KEYS: &[&str] = &["count", "first", "stages"];

/// The most stages one pipeline may expand to. Sweeps multiply and level groups repeat, so a
/// short file can ask for millions; that is a mistake long before it is an experiment, and
/// refusing it at plan time keeps memory and time bounded. (The reference pipelines have a
/// few hundred.)
pub const MAX_STAGES: usize = 20_000;

/// The most stage references all list inputs may hold together (each gathering role of each
/// member lists every member it gathers, so gathers over sweeps grow quadratically).
pub const MAX_REFERENCES: usize = 1_000_000;

struct Reference {
    target: String,
    loc: Loc,
}

struct Template {
    name: String,
    kind: String,
    kind_loc: Loc,
    /// Role → references, and whether the role takes a list.
    inputs: Vec<(String, Vec<Reference>, bool)>,
    matrix: Vec<(Key, Vec<Node>)>,
    params: Node,
    loc: Loc,
    level: Option<(String, u32)>,
}

/// One sweep member of a template: its assignment and the instance each role binds to.
#[derive(Clone)]
struct Member {
    assign: BTreeMap<String, String>,
    own: BTreeMap<String, Node>,
    bound: Vec<(String, Vec<String>)>,
}

pub fn expand(
    root: &Node,
    scopes: &DefaultScopes,
    registry: &Registry,
) -> Result<(Vec<Instance>, Option<ReportSpec>), Diagnostics> {
    let mut errors = Vec::new();
    let templates = collect_templates(root, &mut errors);
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    check_kinds_and_roles(&templates, registry, &mut errors);
    let defaults = root.get("defaults");
    check_defaults(defaults, registry, &mut errors);
    for inner in scopes.nodes() {
        let mut more = Vec::new();
        check_defaults(Some(inner), registry, &mut more);
        for d in more {
            let same = |e: &Diagnostic| e.loc == d.loc && e.message == d.message;
            if !errors.iter().any(same) {
                errors.push(d);
            }
        }
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    let order = topological(&templates)?;
    let mut members: HashMap<&str, Vec<Member>> = HashMap::new();
    let mut instances: Vec<Instance> = Vec::new();
    // One mistake (in shared defaults, or in a stage of a level group) is one problem however
    // many members it affects: collected here and reported once, naming the members.
    let mut problems = Problems::default();
    let mut budget = Budget::default();
    for &ti in &order {
        let t = &templates[ti];
        let ms = match expand_members(t, &members, &mut budget) {
            Ok(ms) => ms,
            Err(d) => {
                // A stage of a level group is expanded once per level; the same mistake in it
                // is reported once.
                if let Some(d) = d {
                    let same = |e: &Diagnostic| {
                        e.loc == d.loc && e.message == d.message && e.hint == d.hint
                    };
                    if !errors.iter().any(same) {
                        errors.push(d);
                    }
                }
                if budget.exhausted() {
                    break;
                }
                continue;
            }
        };
        // The same for every member of the template: merged once, not per sweep member.
        let seen = scoped_defaults(scopes.inner(t.loc.path()), Some(scopes.top()), &t.kind);
        for m in &ms {
            match instantiate(t, m, seen.as_ref(), registry) {
                Ok(inst) => instances.push(inst),
                Err(p) => problems.add(p, &t.name),
            }
        }
        members.insert(t.name.as_str(), ms);
    }
    errors.extend(problems.into_diagnostics());
    if errors.is_empty() {
        check_unique_names(&instances, &templates, &mut errors);
    }
    if errors.is_empty() {
        check_upstream(&instances, &templates, registry, &mut errors);
    }
    let report = match root.get("report") {
        None => None,
        Some(n) => match serde_json::from_value::<ReportSpec>(n.to_json()) {
            Ok(r) => {
                if errors.is_empty() {
                    check_report(n, &r, &instances, &mut errors);
                }
                Some(r)
            }
            Err(e) => {
                errors.push(Diagnostic::at(&n.loc, format!("invalid `report`: {e}")).hint(
                    "report takes `title`, `select` (list of name patterns), `rows` (a metric), `values` (metrics) and optionally `replicates` (sweep variables)",
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok((instances, report))
}

/// Counts what expansion has produced so far against [`MAX_STAGES`] and [`MAX_REFERENCES`].
#[derive(Default)]
struct Budget {
    stages: usize,
    references: usize,
    over: bool,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.over
    }
}

/// A mistake found while instantiating one member, before it is attributed to members.
struct Problem {
    loc: Loc,
    kind: String,
    message: String,
    hint: Option<String>,
}

/// Problems grouped by (location, message, hint), each with the members it affects in the
/// order met.
#[derive(Default)]
struct Problems(Vec<(Problem, Vec<String>)>);

impl Problems {
    fn add(&mut self, p: Problem, member: &str) {
        let same = |q: &Problem| q.loc == p.loc && q.message == p.message && q.hint == p.hint;
        match self.0.iter_mut().find(|(q, _)| same(q)) {
            Some((_, names)) => {
                if !names.iter().any(|n| n == member) {
                    names.push(member.to_string());
                }
            }
            None => self.0.push((p, vec![member.to_string()])),
        }
    }

    fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.0
            .into_iter()
            .map(|(p, names)| {
                let d = Diagnostic::at(
                    &p.loc,
                    format!("{} ({}): {}", stage_list(&names), p.kind, p.message),
                );
                match p.hint {
                    Some(h) => d.hint(h),
                    None => d,
                }
            })
            .collect()
    }
}

/// "stage `a`", or "stages `a`, `b`, `c` and 5 more" for a mistake shared by several.
pub fn stage_list(names: &[String]) -> String {
    const SHOWN: usize = 4;
    match names {
        [one] => format!("stage `{one}`"),
        _ => {
            let shown: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
            let rest = names.len().saturating_sub(SHOWN);
            if rest == 0 {
                let (last, init) = shown.split_last().expect("two or more names");
                format!("stages {} and {last}", init.join(", "))
            } else {
                format!("stages {} and {rest} more", shown.join(", "))
            }
        }
    }
}

/// Every kind named under `defaults:` must exist: a misspelt kind would otherwise be ignored
/// and the run would go ahead with the real defaults.
fn check_defaults(defaults: Option<&Node>, registry: &Registry, errors: &mut Vec<Diagnostic>) {
    let Some(d) = defaults else { return };
    let Some(map) = d.as_map() else {
        errors.push(Diagnostic::at(
            &d.loc,
            format!(
                "`defaults` must be a map of stage kind to parameters, found {}",
                d.type_name()
            ),
        ));
        return;
    };
    let names = registry.names();
    for (k, v) in map {
        if registry.get(&k.name).is_none() {
            errors.push(
                Diagnostic::at(
                    &k.loc,
                    format!("`defaults` names an unknown stage kind `{}`", k.name),
                )
                .hint(choices_hint(&k.name, &names)),
            );
        } else if v.as_map().is_none() {
            errors.push(Diagnostic::at(
                &v.loc,
                format!(
                    "`defaults.{}` must be a map of parameters, found {}",
                    k.name,
                    v.type_name()
                ),
            ));
        }
    }
}

/// Two members with one name would share a name-keyed history and a report column; sweeps
/// whose values print alike (`'1'` and `1`) are the way to get there.
fn check_unique_names(
    instances: &[Instance],
    templates: &[Template],
    errors: &mut Vec<Diagnostic>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, inst) in instances.iter().enumerate() {
        if let Some(&first) = seen.get(inst.name.as_str()) {
            let loc = templates
                .iter()
                .find(|t| t.name == inst.template)
                .map_or(&inst.loc, |t| &t.loc);
            errors.push(
                Diagnostic::at(
                    loc,
                    format!(
                        "two stages would both be named `{}` (from `{}` and `{}`)",
                        inst.name, instances[first].template, inst.template
                    ),
                )
                .hint("sweep values must print differently; rename a stage or change a value"),
            );
        } else {
            seen.insert(inst.name.as_str(), i);
        }
    }
}

/// A report whose patterns select nothing would print an empty table; refuse it here, naming
/// the pattern. (Metrics are known only after running; the run warns about a metric that no
/// selected stage has.)
fn check_report(node: &Node, r: &ReportSpec, instances: &[Instance], errors: &mut Vec<Diagnostic>) {
    let select = node.get("select");
    let at = |i: usize| -> Loc {
        match select.map(|s| &s.kind) {
            Some(NodeKind::Seq(items)) => items.get(i).map_or(&node.loc, |n| &n.loc).clone(),
            _ => select.map_or(&node.loc, |s| &s.loc).clone(),
        }
    };
    if r.select.is_empty() {
        errors.push(
            Diagnostic::at(
                &at(0),
                "the report's `select` is empty, so it would select nothing",
            )
            .hint("list stage-name patterns, e.g. `select: [\"eval*\"]`"),
        );
        return;
    }
    for (i, pat) in r.select.iter().enumerate() {
        if instances.iter().any(|inst| glob_match(pat, &inst.name)) {
            continue;
        }
        // A swept stage's instances carry their values in the name (`eval[lr=0.1]`), so its
        // bare name selects none of them; the nearest name by spelling would mislead.
        let swept = format!("{pat}[*");
        let member = instances.iter().find(|i| glob_match(&swept, &i.name));
        let hint = match (member, did_you_mean(pat, instances.iter().map(|i| i.name.as_str()))) {
            (Some(m), _) => format!(
                "`{pat}` is swept, so its stages are named like `{}`; select them all with `\"{swept}\"`",
                m.name
            ),
            (None, Some(m)) => format!("did you mean `{m}`?"),
            (None, None) => "patterns match stage names as `pipe plan` prints them; `*` matches any run of characters".into(),
        };
        errors.push(
            Diagnostic::at(
                &at(i),
                format!("the report's pattern `{pat}` selects no stage"),
            )
            .hint(hint),
        );
    }
}

fn valid_stage_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn collect_templates(root: &Node, errors: &mut Vec<Diagnostic>) -> Vec<Template> {
    let mut out = Vec::new();
    if let Some(stages) = root.get("stages").and_then(Node::as_map) {
        for (k, v) in stages {
            if let Some(t) = template(&k.name, k, v, None, errors) {
                out.push(t);
            }
        }
    }
    if let Some(groups) = root.get("levels").and_then(Node::as_map) {
        for (gk, g) in groups {
            unroll_group(gk, g, &mut out, errors);
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(
            Diagnostic::at(&root.loc, "the pipeline has no stages")
                .hint("add a `stages:` map, e.g. `stages: {init: {kind: init}}`"),
        );
    }
    // Resolve every plain reference now that all names are known.
    let names: Vec<String> = out.iter().map(|t| t.name.clone()).collect();
    for t in &out {
        for (_, refs, _) in &t.inputs {
            for r in refs {
                if r.target.contains('*') || r.target.is_empty() {
                    continue;
                }
                if !names.contains(&r.target) {
                    let hint = match did_you_mean(&r.target, names.iter().map(String::as_str)) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => "inputs name stages of this pipeline (or `prev.NAME` inside a `levels:` group)".into(),
                    };
                    errors.push(
                        Diagnostic::at(
                            &r.loc,
                            format!(
                                "stage `{}` consumes `{}`, which is not defined",
                                t.name, r.target
                            ),
                        )
                        .hint(hint),
                    );
                }
            }
        }
    }
    out
}

fn unroll_group(gk: &Key, g: &Node, out: &mut Vec<Template>, errors: &mut Vec<Diagnostic>) {
    if !valid_stage_name(&gk.name) {
        errors.push(
            Diagnostic::at(&gk.loc, format!("invalid group name `{}`", gk.name))
                .hint("use letters, digits, `_` and `-`"),
        );
        return;
    }
    let Some(gm) = g.as_map() else {
        errors.push(
            Diagnostic::at(&g.loc, format!("level group `{}` must be a map", gk.name))
                .hint("give it `count`, `first` and `stages`"),
        );
        return;
    };
    for (k, _) in gm {
        if !GROUP_KEYS.contains(&k.name.as_str()) {
            errors.push(
                Diagnostic::at(
                    &k.loc,
                    format!("unknown key `{}` in level group `{}`", k.name, gk.name),
                )
                .hint(choices_hint(&k.name, GROUP_KEYS)),
            );
        }
    }
    let count = match g.get("count").map(|n| (n, &n.kind)) {
        Some((_, NodeKind::Scalar(super::yaml::Scalar::Int(c)))) if *c >= 1 && *c <= 1000 => {
            *c as u32
        }
        Some((n, _)) => {
            errors.push(Diagnostic::at(
                &n.loc,
                format!(
                    "`count` must be an integer from 1 to 1000, found `{}`",
                    n.display_text()
                ),
            ));
            return;
        }
        None => {
            errors.push(
                Diagnostic::at(&gk.loc, format!("level group `{}` has no `count`", gk.name))
                    .hint("add `count: 8` for eight levels"),
            );
            return;
        }
    };
    let first: Vec<(Key, String)> = match g.get("first") {
        None => Vec::new(),
        Some(f) => match f.as_map() {
            Some(m) => m
                .iter()
                .filter_map(|(k, v)| match v.as_str() {
                    Some(s) => Some((k.clone(), s.to_string())),
                    None => {
                        errors.push(Diagnostic::at(&v.loc, "`first` maps a stage of the group to the stage that stands in for it before level 1"));
                        None
                    }
                })
                .collect(),
            None => {
                errors.push(Diagnostic::at(&f.loc, "`first` must be a map"));
                Vec::new()
            }
        },
    };
    let Some(stages) = g.get("stages").and_then(Node::as_map) else {
        errors.push(Diagnostic::at(
            &gk.loc,
            format!("level group `{}` has no `stages` map", gk.name),
        ));
        return;
    };
    if stages.is_empty() {
        let at = g.key_loc("stages").unwrap_or(&gk.loc);
        errors.push(
            Diagnostic::at(at, format!("level group `{}` has no stages", gk.name)).hint(
                "list the stages of one level under `stages:`, e.g. `stages: {train: {kind: train, inputs: {model: prev.train}}}`",
            ),
        );
        return;
    }
    let templates = (count as usize).saturating_mul(stages.len());
    if out.len().saturating_add(templates) > MAX_STAGES {
        let at = g.get("count").map_or(&gk.loc, |n| &n.loc);
        errors.push(too_many_stages(
            at,
            &gk.name,
            &format!("({count} levels of {} stages)", stages.len()),
            out.len().saturating_add(templates),
        ));
        return;
    }
    let siblings: Vec<&str> = stages.iter().map(|(k, _)| k.name.as_str()).collect();
    for (fk, _) in &first {
        if !siblings.contains(&fk.name.as_str()) {
            errors.push(
                Diagnostic::at(
                    &fk.loc,
                    format!(
                        "`first` names `{}`, which is not a stage of group `{}`",
                        fk.name, gk.name
                    ),
                )
                .hint(choices_hint(&fk.name, &siblings)),
            );
        }
    }
    for level in 1..=count {
        for (sk, sv) in stages {
            let name = format!("{}.{level}.{}", gk.name, sk.name);
            let Some(mut t) = template(&name, sk, sv, Some((gk.name.clone(), level)), errors)
            else {
                continue;
            };
            for (_, refs, _) in &mut t.inputs {
                for r in refs.iter_mut() {
                    if let Some(prev) = r.target.strip_prefix("prev.") {
                        if !siblings.contains(&prev) {
                            errors.push(
                                Diagnostic::at(
                                    &r.loc,
                                    format!(
                                        "`prev.{prev}`: `{prev}` is not a stage of group `{}`",
                                        gk.name
                                    ),
                                )
                                .hint(choices_hint(prev, &siblings)),
                            );
                            r.target.clear();
                            continue;
                        }
                        if level == 1 {
                            match first.iter().find(|(k, _)| k.name == prev) {
                                Some((_, s)) => r.target = s.clone(),
                                None => {
                                    errors.push(Diagnostic::at(&r.loc, format!("level 1 of `{}` has no previous `{prev}`", gk.name)).hint(format!("say what stands in for it: `first: {{{prev}: <a stage>}}`")));
                                    // Reported here; not again as an undefined stage.
                                    r.target.clear();
                                }
                            }
                        } else {
                            r.target = format!("{}.{}.{prev}", gk.name, level - 1);
                        }
                    } else if siblings.contains(&r.target.as_str()) {
                        r.target = format!("{}.{level}.{}", gk.name, r.target);
                    }
                    // Any other name stays as written: a top-level stage or an explicit
                    // `group.level.stage`; undefined ones are reported with a suggestion later.
                }
            }
            out.push(t);
        }
    }
}

fn template(
    name: &str,
    key: &Key,
    node: &Node,
    level: Option<(String, u32)>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Template> {
    if !valid_stage_name(&key.name) {
        errors.push(Diagnostic::at(&key.loc, format!("invalid stage name `{}`", key.name)).hint("stage names use letters, digits, `_` and `-` (dots, brackets and `*` are reserved for expanded names)"));
        return None;
    }
    let Some(map) = node.as_map() else {
        errors.push(
            Diagnostic::at(
                &node.loc,
                format!("stage `{name}` must be a map, found {}", node.type_name()),
            )
            .hint("e.g. `dense: {kind: train, inputs: {model: init}}`"),
        );
        return None;
    };
    let Some(kind_node) = node.get("kind") else {
        errors.push(
            Diagnostic::at(&key.loc, format!("stage `{name}` has no `kind`"))
                .hint("add `kind: train` (see `pipe kinds` for the list)"),
        );
        return None;
    };
    let Some(kind) = kind_node.as_str() else {
        errors.push(Diagnostic::at(
            &kind_node.loc,
            format!("`kind` must be a string, found {}", kind_node.type_name()),
        ));
        return None;
    };
    let mut inputs = Vec::new();
    if let Some(inp) = node.get("inputs") {
        match inp.as_map() {
            Some(m) => {
                for (role, target) in m {
                    match &target.kind {
                        NodeKind::Scalar(super::yaml::Scalar::Str(s)) => inputs.push((
                            role.name.clone(),
                            vec![Reference {
                                target: s.clone(),
                                loc: target.loc.clone(),
                            }],
                            false,
                        )),
                        NodeKind::Seq(items) => {
                            let mut refs = Vec::new();
                            for it in items {
                                match it.as_str() {
                                    Some(s) => refs.push(Reference {
                                        target: s.to_string(),
                                        loc: it.loc.clone(),
                                    }),
                                    None => errors.push(Diagnostic::at(
                                        &it.loc,
                                        format!(
                                            "input `{}` lists stage names, found {}",
                                            role.name,
                                            it.type_name()
                                        ),
                                    )),
                                }
                            }
                            inputs.push((role.name.clone(), refs, true));
                        }
                        _ => errors.push(
                            Diagnostic::at(
                                &target.loc,
                                format!(
                                    "input `{}` must name a stage, found {}",
                                    role.name,
                                    target.type_name()
                                ),
                            )
                            .hint("e.g. `inputs: {model: dense}`"),
                        ),
                    }
                }
            }
            None => errors.push(
                Diagnostic::at(
                    &inp.loc,
                    format!(
                        "`inputs` must be a map of role to stage, found {}",
                        inp.type_name()
                    ),
                )
                .hint("e.g. `inputs: {model: dense}`"),
            ),
        }
    }
    let mut matrix = Vec::new();
    if let Some(mx) = node.get("matrix") {
        match mx.as_map() {
            Some(m) => {
                for (var, vals) in m {
                    match &vals.kind {
                        NodeKind::Seq(items) if !items.is_empty() => {
                            if map.iter().any(|(k, _)| k.name == var.name) {
                                errors.push(Diagnostic::at(&var.loc, format!("`{}` is both swept in `matrix` and set as a parameter of `{name}`", var.name)).hint("remove one of the two"));
                            }
                            check_repeats(&var.name, items, errors);
                            matrix.push((var.clone(), items.clone()));
                        }
                        _ => errors.push(
                            Diagnostic::at(
                                &vals.loc,
                                format!(
                                    "matrix variable `{}` needs a non-empty list of values",
                                    var.name
                                ),
                            )
                            .hint(format!("e.g. `{}: [0.1, 0.01]`", var.name)),
                        ),
                    }
                }
            }
            None => errors.push(Diagnostic::at(
                &mx.loc,
                "`matrix` must be a map of parameter to list of values",
            )),
        }
    }
    let params = Node {
        kind: NodeKind::Map(
            map.iter()
                .filter(|(k, _)| !RESERVED.contains(&k.name.as_str()))
                .cloned()
                .collect(),
        ),
        loc: node.loc.clone(),
        raw: None,
    };
    Some(Template {
        name: name.to_string(),
        kind: kind.to_string(),
        kind_loc: kind_node.loc.clone(),
        inputs,
        matrix,
        params,
        loc: key.loc.clone(),
        level,
    })
}

/// A value listed twice in a sweep would make two stages with one name (or, spelt
/// differently, two names for one computation); refuse the repeat where it is written.
fn check_repeats(var: &str, items: &[Node], errors: &mut Vec<Diagnostic>) {
    // By meaning (1e-2 and 0.01 are one value) and by spelling (which names the member).
    let mut by_value: HashMap<String, &Node> = HashMap::new();
    let mut by_text: HashMap<String, &Node> = HashMap::new();
    for it in items {
        let text = it.display_text();
        let value = match it.to_json() {
            // Non-finite numbers have no JSON form; they are refused later, by spelling here.
            serde_json::Value::Null => format!("null:{text}"),
            v => v.to_string(),
        };
        let first = by_value.get(&value).or_else(|| by_text.get(&text)).copied();
        if let Some(first) = first {
            let same = if first.display_text() == text {
                format!("`{text}` twice")
            } else {
                format!("`{text}`, the same value as `{}`", first.display_text())
            };
            errors.push(
                Diagnostic::at(&it.loc, format!("matrix variable `{var}` lists {same}"))
                    .hint(format!(
                        "each value makes one stage; it was first listed at line {}, column {}; remove the repeat",
                        first.loc.line, first.loc.col
                    )),
            );
            continue;
        }
        by_value.insert(value, it);
        by_text.insert(text, it);
    }
}

fn check_kinds_and_roles(
    templates: &[Template],
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) {
    for t in templates {
        let Some(kind) = registry.get(&t.kind) else {
            let names = registry.names();
            errors.push(
                Diagnostic::at(&t.kind_loc, format!("unknown stage kind `{}`", t.kind))
                    .hint(choices_hint(&t.kind, &names)),
            );
            continue;
        };
        let roles = kind.roles();
        let role_names: Vec<&str> = roles.iter().map(|r| r.name).collect();
        for (role, refs, many) in &t.inputs {
            let loc = refs.first().map(|r| &r.loc).unwrap_or(&t.loc);
            match roles
                .iter()
                .find(|r| r.name == role || r.name == crate::stages::ANY_ROLE)
            {
                None => errors.push(
                    Diagnostic::at(loc, format!("a `{}` stage has no input `{role}`", t.kind))
                        .hint(if role_names.is_empty() {
                            format!("`{}` takes no inputs", t.kind)
                        } else {
                            choices_hint(role, &role_names)
                        }),
                ),
                Some(r) if *many && !r.many => errors.push(Diagnostic::at(
                    loc,
                    format!(
                        "input `{role}` of a `{}` stage takes one stage, not a list",
                        t.kind
                    ),
                )),
                Some(_) => {
                    for rf in refs {
                        if rf.target.contains('*') && !*many {
                            errors.push(Diagnostic::at(&rf.loc, format!("`*` patterns are allowed only in list inputs; `{role}` takes one stage")));
                        }
                    }
                }
            }
        }
        for r in roles.iter().filter(|r| r.required) {
            if !t.inputs.iter().any(|(role, _, _)| role == r.name) {
                errors.push(
                    Diagnostic::at(
                        &t.loc,
                        format!("stage `{}` ({}) needs input `{}`", t.name, t.kind, r.name),
                    )
                    .hint(format!("add `inputs: {{{}: <stage>}}`", r.name)),
                );
            }
        }
    }
}

/// Glob with `*` matching any run of characters.
///
/// Greedy with one backtrack point (the last `*`), so the time is at most the product of the
/// two lengths; the obvious recursive version is exponential in the number of stars.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in the name its match would resume.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn targets<'a>(r: &Reference, templates: &'a [Template]) -> Vec<&'a Template> {
    if r.target.contains('*') {
        templates
            .iter()
            .filter(|t| glob_match(&r.target, &t.name))
            .collect()
    } else {
        templates.iter().filter(|t| t.name == r.target).collect()
    }
}

fn topological(templates: &[Template]) -> Result<Vec<usize>, Diagnostics> {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let idx: Vec<NodeIndex> = (0..templates.len()).map(|i| g.add_node(i)).collect();
    let by_name: HashMap<&str, usize> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    for (i, t) in templates.iter().enumerate() {
        for (_, refs, _) in &t.inputs {
            for r in refs {
                for up in targets(r, templates) {
                    g.add_edge(idx[by_name[up.name.as_str()]], idx[i], ());
                }
            }
        }
    }
    // Kahn's algorithm taking the earliest-defined ready stage first, so that the order is
    // the file's order wherever dependencies allow (petgraph's toposort order is arbitrary).
    let mut indegree: Vec<usize> = idx
        .iter()
        .map(|&n| {
            g.neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..templates.len())
        .filter(|&i| indegree[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(templates.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for n in g.neighbors_directed(idx[i], petgraph::Direction::Outgoing) {
            let j = g[n];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(std::cmp::Reverse(j));
            }
        }
    }
    match (order.len() == templates.len()).then_some(order).ok_or(()) {
        Ok(order) => Ok(order),
        Err(_) => {
            let mut errors = Vec::new();
            for scc in tarjan_scc(&g) {
                let cyclic = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
                if !cyclic {
                    continue;
                }
                let mut names: Vec<&str> =
                    scc.iter().map(|n| templates[g[*n]].name.as_str()).collect();
                names.sort();
                let first = &templates[by_name[names[0]]];
                errors.push(
                    Diagnostic::at(&first.loc, format!("dependency cycle between stages: {}", names.join(", ")))
                        .hint("a stage cannot consume (directly or through others) its own output; inside `levels:` use `prev.NAME` for the previous level"),
                );
            }
            Err(Diagnostics(errors))
        }
    }
}

fn member_name(base: &str, assign: &BTreeMap<String, String>) -> String {
    if assign.is_empty() {
        base.to_string()
    } else {
        let parts: Vec<String> = assign.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{base}[{}]", parts.join(","))
    }
}

fn too_many_stages(loc: &Loc, name: &str, what: &str, n: usize) -> Diagnostic {
    let what = if what.is_empty() {
        String::new()
    } else {
        format!(" {what}")
    };
    Diagnostic::at(
        loc,
        format!(
            "`{name}`{what} would bring the pipeline to {n} or more stages; pipe expands at most {MAX_STAGES}"
        ),
    )
    .hint("sweeps multiply: check the lists under `matrix:` and the `count` of level groups")
}

fn expand_members(
    t: &Template,
    members: &HashMap<&str, Vec<Member>>,
    budget: &mut Budget,
) -> Result<Vec<Member>, Option<Diagnostic>> {
    // Own matrix: the cartesian product, in the order written.
    let mut current = vec![Member {
        assign: BTreeMap::new(),
        own: BTreeMap::new(),
        bound: Vec::new(),
    }];
    for (var, values) in &t.matrix {
        let n = current.len().saturating_mul(values.len());
        if budget.stages.saturating_add(n) > MAX_STAGES {
            budget.over = true;
            return Err(Some(too_many_stages(
                &var.loc,
                &t.name,
                &format!("swept over `{}`", var.name),
                budget.stages.saturating_add(n),
            )));
        }
        let mut next = Vec::new();
        for m in &current {
            for v in values {
                let mut m = m.clone();
                m.assign.insert(var.name.clone(), v.display_text());
                m.own.insert(var.name.clone(), v.clone());
                next.push(m);
            }
        }
        current = next;
    }
    for (role, refs, many) in &t.inputs {
        if *many {
            let mut names = Vec::new();
            for r in refs {
                // Deterministic order: matched templates sorted by name.
                let mut tnames: Vec<&&str> = members
                    .keys()
                    .filter(|n| {
                        if r.target.contains('*') {
                            glob_match(&r.target, n)
                        } else {
                            **n == r.target
                        }
                    })
                    .collect();
                if tnames.is_empty() {
                    if !r.target.contains('*') {
                        return Err(None);
                    }
                    // Inside a level group a bare name means the sibling at the same level,
                    // but a pattern is matched against full names (`g.1.train`).
                    let hint = match &t.level {
                        Some((group, _)) if !r.target.contains('.') => format!(
                            "inside `levels:` patterns match full stage names such as `{group}.1.NAME`; name this level's stage without a pattern, or write `\"{group}.*.{}\"` for every level",
                            r.target
                        ),
                        _ => "check the pattern; `*` matches any run of characters".into(),
                    };
                    return Err(Some(
                        Diagnostic::at(&r.loc, format!("`{}` matches no stage", r.target))
                            .hint(hint),
                    ));
                }
                tnames.sort();
                for tn in tnames {
                    for m in &members[*tn] {
                        names.push(member_name(tn, &m.assign));
                    }
                }
            }
            budget.references = budget
                .references
                .saturating_add(names.len().saturating_mul(current.len()));
            if budget.references > MAX_REFERENCES {
                budget.over = true;
                return Err(Some(Diagnostic::at(
                    &refs[0].loc,
                    format!(
                        "`{}` gathers {} stages in each of its {} members; with the other gathers that is more than {MAX_REFERENCES} references",
                        t.name,
                        names.len(),
                        current.len()
                    ),
                )
                .hint("narrow the patterns of list inputs, or gather once and consume that stage")));
            }
            for m in &mut current {
                m.bound.push((role.clone(), names.clone()));
            }
            continue;
        }
        let r = &refs[0];
        // An upstream whose own expansion failed was reported there; say nothing more.
        let Some(ups) = members.get(r.target.as_str()) else {
            return Err(None);
        };
        let n = current.len().saturating_mul(ups.len());
        if budget.stages.saturating_add(n) > MAX_STAGES {
            budget.over = true;
            return Err(Some(too_many_stages(
                &r.loc,
                &t.name,
                &format!("consuming the members of `{}`", r.target),
                budget.stages.saturating_add(n),
            )));
        }
        let mut next = Vec::new();
        for m in &current {
            for u in ups {
                let consistent = u
                    .assign
                    .iter()
                    .all(|(k, v)| m.assign.get(k).is_none_or(|mv| mv == v));
                if consistent {
                    let mut n = m.clone();
                    for (k, v) in &u.assign {
                        n.assign.insert(k.clone(), v.clone());
                    }
                    n.bound
                        .push((role.clone(), vec![member_name(&r.target, &u.assign)]));
                    next.push(n);
                }
            }
        }
        if next.is_empty() {
            return Err(Some(
                Diagnostic::at(
                    &r.loc,
                    format!(
                        "no member of `{}` matches the sweep values of `{}`",
                        r.target, t.name
                    ),
                )
                .hint("stages swept over the same variable must use the same values"),
            ));
        }
        current = next;
    }
    budget.stages += current.len();
    if budget.stages > MAX_STAGES {
        budget.over = true;
        return Err(Some(too_many_stages(&t.loc, &t.name, "", budget.stages)));
    }
    Ok(current)
}

fn set_path(node: &mut Node, path: &[&str], value: Node) {
    let Some(map) = node.as_map_mut() else { return };
    let (head, rest) = (path[0], &path[1..]);
    let pos = map.iter().position(|(k, _)| k.name == head);
    if rest.is_empty() {
        match pos {
            Some(p) => map[p].1 = value,
            None => map.push((
                Key {
                    name: head.to_string(),
                    loc: value.loc.clone(),
                },
                value,
            )),
        }
        return;
    }
    let idx = match pos {
        Some(p) => p,
        None => {
            let loc = value.loc.clone();
            map.push((
                Key {
                    name: head.to_string(),
                    loc: loc.clone(),
                },
                Node {
                    kind: NodeKind::Map(Vec::new()),
                    loc,
                    raw: None,
                },
            ));
            map.len() - 1
        }
    };
    set_path(&mut map[idx].1, rest, value);
}

/// The defaults of `kind` that a stage sees: its file's inner layers under the command line's.
fn scoped_defaults(inner: Option<&Node>, top: Option<&Node>, kind: &str) -> Option<Node> {
    let layers = [inner, top];
    let mut found = layers.iter().flatten().filter_map(|d| d.get(kind));
    let mut merged = found.next()?.clone();
    for d in found {
        if merged.as_map().is_some() && d.as_map().is_some() {
            deep_merge(&mut merged, d);
        } else {
            merged = d.clone();
        }
    }
    let key = |loc: &Loc| Key {
        name: kind.to_string(),
        loc: loc.clone(),
    };
    Some(Node {
        loc: merged.loc.clone(),
        raw: None,
        kind: NodeKind::Map(vec![(key(&merged.loc), merged)]),
    })
}

/// The location of every scalar under `node`, by dotted path.
fn leaf_locs(node: &Node, path: &mut String, out: &mut std::collections::BTreeMap<String, Loc>) {
    match &node.kind {
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k.name);
                leaf_locs(v, path, out);
                path.truncate(len);
            }
        }
        _ => {
            out.insert(path.clone(), node.loc.clone());
        }
    }
}

fn instantiate(
    t: &Template,
    m: &Member,
    defaults: Option<&Node>,
    registry: &Registry,
) -> Result<Instance, Problem> {
    let kind = registry.get(&t.kind).expect("kinds were checked");
    let problem = |loc: &Loc, message: String, hint: Option<String>| Problem {
        loc: loc.clone(),
        kind: t.kind.clone(),
        message,
        hint,
    };
    let mut params = match defaults.and_then(|d| d.get(&t.kind)) {
        Some(d) if d.as_map().is_some() => d.clone(),
        // Reported once by `check_defaults`; never reached with errors outstanding.
        Some(d) => {
            return Err(problem(
                &d.loc,
                format!("`defaults.{}` must be a map of parameters", t.kind),
                None,
            ));
        }
        None => Node {
            kind: NodeKind::Map(Vec::new()),
            loc: t.loc.clone(),
            raw: None,
        },
    };
    deep_merge(&mut params, &t.params);
    for (var, value) in &m.own {
        let path: Vec<&str> = var.split('.').collect();
        set_path(&mut params, &path, value.clone());
    }
    if let Some((path, node)) = non_finite(&params, &mut Vec::new()) {
        return Err(problem(
            &node.loc,
            format!(
                "invalid parameter `{path}`: {}",
                non_finite_reason(&node.display_text())
            ),
            Some(
                "parameters must be finite numbers (keys and manifests are JSON, which has no NaN or infinity); write the number you mean".into(),
            ),
        ));
    }
    let normalized = kind.normalize(&params.to_json()).map_err(|e| {
        let (node, found) = params.locate(&e.path);
        let loc = if !found && e.message.starts_with("unknown field") {
            node.key_loc(e.path.last().map(String::as_str).unwrap_or(""))
                .unwrap_or(&node.loc)
                .clone()
        } else if found && e.message.starts_with("unknown field") {
            let parent = params.locate(&e.path[..e.path.len().saturating_sub(1)]).0;
            parent
                .key_loc(e.path.last().map(String::as_str).unwrap_or(""))
                .unwrap_or(&node.loc)
                .clone()
        } else {
            node.loc.clone()
        };
        let field = if e.path.is_empty() {
            String::new()
        } else {
            format!(" `{}`", e.path.join("."))
        };
        problem(
            &loc,
            format!("invalid parameter{field}: {}", e.message),
            Some(format!(
                "see `pipe kinds {}` for its parameters and their defaults",
                t.kind
            )),
        )
    })?;
    let mut param_locs = std::collections::BTreeMap::new();
    leaf_locs(&params, &mut String::new(), &mut param_locs);
    Ok(Instance {
        param_locs,
        name: member_name(&t.name, &m.assign),
        template: t.name.clone(),
        kind: t.kind.clone(),
        params: normalized,
        inputs: m.bound.clone(),
        assignment: m
            .assign
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        level: t.level.clone(),
        loc: t.loc.clone(),
    })
}

/// The first NaN or infinite number in a parameter tree, with its dotted path. JSON cannot
/// hold them (they would turn into `null` and be refused with a confusing type error).
fn non_finite<'a>(node: &'a Node, path: &mut Vec<String>) -> Option<(String, &'a Node)> {
    match &node.kind {
        NodeKind::Scalar(super::yaml::Scalar::Float(f)) if !f.is_finite() => {
            Some((path.join("."), node))
        }
        NodeKind::Scalar(_) => None,
        NodeKind::Seq(items) => items.iter().enumerate().find_map(|(i, c)| {
            path.push(i.to_string());
            let r = non_finite(c, path);
            path.pop();
            r
        }),
        NodeKind::Map(m) => m.iter().find_map(|(k, c)| {
            path.push(k.name.clone());
            let r = non_finite(c, path);
            path.pop();
            r
        }),
    }
}

/// Says what was written and why it cannot be used.
fn non_finite_reason(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("nan") {
        format!("`{raw}` is NaN (not a number)")
    } else if lower.contains("inf") {
        format!("`{raw}` is infinity")
    } else {
        format!(
            "`{raw}` is beyond the largest 64-bit float (about 1.8e308), so it would be read as infinity"
        )
    }
}

fn check_upstream(
    instances: &[Instance],
    templates: &[Template],
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) {
    // Each stage's declared artifact and plan-time facts, filled in definition order (inputs
    // are defined before their consumers), handed to the consumers' checks unread.
    let mut known: HashMap<&str, (Option<&'static str>, serde_json::Value)> = HashMap::new();
    let by_name: HashMap<&str, &Instance> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut problems = Problems::default();
    // Stages refused here, and those downstream of them: a consumer's check would only
    // repeat its input's mistake (a model with a zero-width layer "takes input [0, 0, 0]").
    let mut refused: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for inst in instances {
        let kind = registry.get(&inst.kind).expect("kinds were checked");
        if inst
            .inputs
            .iter()
            .flat_map(|(_, names)| names)
            .any(|n| refused.contains(n.as_str()))
        {
            refused.insert(inst.name.as_str());
            continue;
        }
        let ups: Vec<(String, Vec<UpstreamInfo>)> = inst
            .inputs
            .iter()
            .map(|(role, names)| {
                (
                    role.clone(),
                    names
                        .iter()
                        .map(|n| {
                            let u = by_name[n.as_str()];
                            let (produces, facts) = match known.get(n.as_str()) {
                                Some((p, f)) => (*p, f.clone()),
                                None => (
                                    registry.get(&u.kind).and_then(|k| k.produces()),
                                    serde_json::Value::Null,
                                ),
                            };
                            UpstreamInfo {
                                name: u.name.clone(),
                                kind: u.kind.clone(),
                                params: u.params.clone(),
                                produces,
                                facts,
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        let result =
            accepted(kind.roles(), &ups, registry).and_then(|()| kind.check(&inst.params, &ups));
        if let Err(msg) = result {
            refused.insert(inst.name.as_str());
            let t = templates
                .iter()
                .find(|t| t.name == inst.template)
                .expect("template exists");
            problems.add(
                Problem {
                    loc: t.loc.clone(),
                    kind: inst.kind.clone(),
                    message: msg,
                    hint: None,
                },
                &inst.name,
            );
        }
        known.insert(
            inst.name.as_str(),
            (
                kind.produces_for(&inst.params),
                kind.facts(&inst.params, &ups),
            ),
        );
    }
    errors.extend(problems.into_diagnostics());
}

/// Every input is of the artifact its role takes.
fn accepted(
    roles: &[Role],
    inputs: &[(String, Vec<UpstreamInfo>)],
    registry: &Registry,
) -> Result<(), String> {
    for (role, ups) in inputs {
        let Some(want) = roles
            .iter()
            .find(|r| r.name == role)
            .and_then(|r| r.accepts)
        else {
            continue;
        };
        if let Some(u) = ups.iter().find(|u| u.produces != Some(want)) {
            let makers: Vec<&str> = registry
                .iter()
                .filter(|k| k.produces() == Some(want))
                .map(|k| k.kind())
                .collect();
            return Err(format!(
                "input `{role}` is `{}`, a stage of kind `{}`, which produces {}; `{role}` \
                 takes a {want}, which stages of kind {} produce",
                u.name,
                u.kind,
                u.produces.unwrap_or("nothing it can take"),
                makers.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_the_shell_star() {
        assert!(glob_match("imp.*.eval*", "imp.3.eval_ticket[lr=0.1]"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(glob_match("a**", "a"));
        assert!(!glob_match("a*b", "aXbY"));
        assert!(!glob_match("", "a"));
        assert!(!glob_match("ab", "a"));
        assert!(glob_match("*ab", "aab"));
    }

    #[test]
    fn glob_with_many_stars_takes_linear_time() {
        // The recursive matcher this replaced took exponential time on such patterns.
        let pattern = format!("{}b", "*a".repeat(40));
        let name = "a".repeat(5000);
        let t0 = std::time::Instant::now();
        assert!(!glob_match(&pattern, &name));
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn stage_lists_name_a_few_and_count_the_rest() {
        let names: Vec<String> = (1..=7).map(|i| format!("imp.{i}.train")).collect();
        assert_eq!(stage_list(&names[..1]), "stage `imp.1.train`");
        assert_eq!(
            stage_list(&names[..2]),
            "stages `imp.1.train` and `imp.2.train`"
        );
        assert_eq!(
            stage_list(&names),
            "stages `imp.1.train`, `imp.2.train`, `imp.3.train`, `imp.4.train` and 3 more"
        );
    }
}
