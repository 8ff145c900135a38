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
use super::include::deep_merge;
use super::yaml::{Key, Node, NodeKind};
use super::{Instance, ReportSpec};
use crate::stages::{Registry, UpstreamInfo};

const RESERVED: &[&str] = &["kind", "inputs", "matrix"];
const GROUP_KEYS: &[&str] = &["count", "first", "stages"];

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
    registry: &Registry,
) -> Result<(Vec<Instance>, Option<ReportSpec>), Diagnostics> {
    let mut errors = Vec::new();
    let templates = collect_templates(root, &mut errors);
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    check_kinds_and_roles(&templates, registry, &mut errors);
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    let order = topological(&templates)?;
    let defaults = root.get("defaults");
    let mut members: HashMap<&str, Vec<Member>> = HashMap::new();
    let mut instances: Vec<Instance> = Vec::new();
    for &ti in &order {
        let t = &templates[ti];
        let ms = match expand_members(t, &members) {
            Ok(ms) => ms,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        for m in &ms {
            match instantiate(t, m, defaults, registry) {
                Ok(inst) => instances.push(inst),
                Err(d) => {
                    if !errors
                        .iter()
                        .any(|e: &Diagnostic| e.message == d.message && e.loc == d.loc)
                    {
                        errors.push(d);
                    }
                }
            }
        }
        members.insert(t.name.as_str(), ms);
    }
    if errors.is_empty() {
        check_upstream(&instances, &templates, registry, &mut errors);
    }
    let report = match root.get("report") {
        None => None,
        Some(n) => match serde_json::from_value::<ReportSpec>(n.to_json()) {
            Ok(r) => Some(r),
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
            match roles.iter().find(|r| r.name == role) {
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
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| rec(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && rec(rest, &n[1..]),
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
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

fn expand_members(
    t: &Template,
    members: &HashMap<&str, Vec<Member>>,
) -> Result<Vec<Member>, Diagnostic> {
    // Own matrix: the cartesian product, in the order written.
    let mut current = vec![Member {
        assign: BTreeMap::new(),
        own: BTreeMap::new(),
        bound: Vec::new(),
    }];
    for (var, values) in &t.matrix {
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
                    return Err(
                        Diagnostic::at(&r.loc, format!("`{}` matches no stage", r.target))
                            .hint("check the pattern; `*` matches any run of characters"),
                    );
                }
                tnames.sort();
                for tn in tnames {
                    for m in &members[*tn] {
                        names.push(member_name(tn, &m.assign));
                    }
                }
            }
            for m in &mut current {
                m.bound.push((role.clone(), names.clone()));
            }
            continue;
        }
        let r = &refs[0];
        let ups = &members[r.target.as_str()];
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
            return Err(Diagnostic::at(
                &r.loc,
                format!(
                    "no member of `{}` matches the sweep values of `{}`",
                    r.target, t.name
                ),
            )
            .hint("stages swept over the same variable must use the same values"));
        }
        current = next;
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

fn instantiate(
    t: &Template,
    m: &Member,
    defaults: Option<&Node>,
    registry: &Registry,
) -> Result<Instance, Diagnostic> {
    let kind = registry.get(&t.kind).expect("kinds were checked");
    let mut params = match defaults.and_then(|d| d.get(&t.kind)) {
        Some(d) if d.as_map().is_some() => d.clone(),
        Some(d) => {
            return Err(Diagnostic::at(
                &d.loc,
                format!("`defaults.{}` must be a map of parameters", t.kind),
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
        Diagnostic::at(
            &loc,
            format!(
                "stage `{}` ({}): invalid parameter{field}: {}",
                t.name, t.kind, e.message
            ),
        )
        .hint(format!(
            "see `pipe kinds {}` for its parameters and their defaults",
            t.kind
        ))
    })?;
    Ok(Instance {
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

fn check_upstream(
    instances: &[Instance],
    templates: &[Template],
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) {
    let by_name: HashMap<&str, &Instance> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    for inst in instances {
        let kind = registry.get(&inst.kind).expect("kinds were checked");
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
                            UpstreamInfo {
                                name: u.name.clone(),
                                kind: u.kind.clone(),
                                params: u.params.clone(),
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        if let Err(msg) = kind.check(&inst.params, &ups) {
            let t = templates
                .iter()
                .find(|t| t.name == inst.template)
                .expect("template exists");
            let d = Diagnostic::at(
                &t.loc,
                format!("stage `{}` ({}): {msg}", inst.name, inst.kind),
            );
            if !errors.iter().any(|e| e.message == d.message) {
                errors.push(d);
            }
        }
    }
}
