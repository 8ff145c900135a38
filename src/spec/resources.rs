//! `resources:` — what stages ask of a cluster scheduler (Slurm): partition, time limit, CPUs,
//! memory, generic resources. Scheduling only, never part of a key: a longer time limit
//! re-runs nothing.
//!
//! ```yaml
//! resources:
//!   default: {partition: short, time: "0:20:00"}
//!   kinds:                       # by stage kind
//!     train: {cpus: 2, mem: 4G, time: "2:00:00"}
//!   stages:                      # by stage name; `*` matches any run of characters
//!     "imp.*.train": {gres: "gpu:1"}
//! ```
//!
//! `requeue: true` lets Slurm put a preempted (or failed-node) job back in the queue, where it
//! resumes from its progress checkpoint; `grace` is how many seconds before the time limit a
//! job is sent SIGTERM so that a long stage saves one (default 120; 0: not sent).
//!
//! A stage gets `default`, then its kind's request, then every matching `stages` pattern in
//! the order written, each field of a later one replacing the earlier (`extra` accumulates).

use serde::{Deserialize, Serialize};

use super::Instance;
use super::diag::{Diagnostic, choices_hint};
use super::expand::glob_match;
use super::yaml::{Node, NodeKind, Scalar};

const SECTIONS: &[&str] = &["default", "kinds", "stages"];
const FIELDS: &[&str] = &[
    "partition",
    "time",
    "cpus",
    "mem",
    "gres",
    "requeue",
    "grace",
    "extra",
];
/// Seconds before the time limit that Slurm sends SIGTERM, unless `grace` says otherwise.
pub const DEFAULT_GRACE: u32 = 120;

/// One stage's request; unset fields are left to the cluster's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequest {
    pub partition: Option<String>,
    /// Slurm's time formats: `minutes`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
    pub time: Option<String>,
    pub cpus: Option<u32>,
    /// Megabytes, or a number with a K/M/G/T suffix.
    pub mem: Option<String>,
    pub gres: Option<String>,
    /// Whether Slurm may requeue the job after a preemption or a node failure.
    pub requeue: Option<bool>,
    /// Seconds before the time limit that the job is sent SIGTERM (to save its progress).
    pub grace: Option<u32>,
    /// Further `sbatch` options, as written (`--qos=high`, `--account=lab`).
    pub extra: Vec<String>,
}

impl ResourceRequest {
    fn overlay(&mut self, o: &ResourceRequest) {
        for (mine, theirs) in [
            (&mut self.partition, &o.partition),
            (&mut self.time, &o.time),
            (&mut self.mem, &o.mem),
            (&mut self.gres, &o.gres),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        if o.cpus.is_some() {
            self.cpus = o.cpus;
        }
        if o.requeue.is_some() {
            self.requeue = o.requeue;
        }
        if o.grace.is_some() {
            self.grace = o.grace;
        }
        self.extra.extend(o.extra.iter().cloned());
    }

    /// The request as `sbatch` options.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{name}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("time", &self.time);
        opt("cpus-per-task", &self.cpus.map(|c| c.to_string()));
        opt("mem", &self.mem);
        opt("gres", &self.gres);
        match self.requeue {
            Some(true) => a.push("--requeue".into()),
            Some(false) => a.push("--no-requeue".into()),
            None => {}
        }
        // SIGTERM to the batch shell (which `exec`s the worker) ahead of the limit: the
        // worker stops its stage, which saves a progress checkpoint to resume from. Never
        // more than half the limit: Slurm signals at once a job whose limit is shorter than
        // the grace, which would stop every short job as it starts.
        let limit = self.time.as_deref().and_then(time_secs);
        match limit.map_or(self.grace.unwrap_or(DEFAULT_GRACE), |l| {
            self.grace
                .unwrap_or(DEFAULT_GRACE)
                .min(u32::try_from(l / 2).unwrap_or(u32::MAX))
        }) {
            0 => {}
            g => a.push(format!("--signal=B:TERM@{g}")),
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub default: ResourceRequest,
    pub kinds: Vec<(String, ResourceRequest)>,
    /// Name patterns, in the order written.
    pub stages: Vec<(String, ResourceRequest)>,
}

impl Resources {
    pub fn for_stage(&self, stage: &str, kind: &str) -> ResourceRequest {
        let mut r = self.default.clone();
        for (k, req) in &self.kinds {
            if k == kind {
                r.overlay(req);
            }
        }
        for (pattern, req) in &self.stages {
            if glob_match(pattern, stage) {
                r.overlay(req);
            }
        }
        r
    }
}

/// Reads the merged `resources:` block; kinds must be known and patterns must match a stage.
pub(super) fn parse(
    node: Option<&Node>,
    instances: &[Instance],
    kinds: &[&str],
) -> Result<Resources, Vec<Diagnostic>> {
    let mut out = Resources::default();
    let mut errors = Vec::new();
    let Some(node) = node else { return Ok(out) };
    let Some(sections) = node.as_map() else {
        return Err(vec![expected_map("resources", node)]);
    };
    for (k, v) in sections {
        match k.name.as_str() {
            "default" => out.default = request(v, &mut errors),
            section @ ("kinds" | "stages") => {
                let Some(entries) = v.as_map() else {
                    errors.push(expected_map(&format!("resources.{section}"), v));
                    continue;
                };
                for (name, req) in entries {
                    let r = request(req, &mut errors);
                    if section == "kinds" {
                        if !kinds.contains(&name.name.as_str()) {
                            errors.push(
                                Diagnostic::at(
                                    &name.loc,
                                    format!(
                                        "`resources.kinds` names unknown stage kind `{}`",
                                        name.name
                                    ),
                                )
                                .hint(choices_hint(&name.name, kinds)),
                            );
                        }
                        out.kinds.push((name.name.clone(), r));
                    } else {
                        if !instances.iter().any(|i| glob_match(&name.name, &i.name)) {
                            let names: Vec<&str> =
                                instances.iter().map(|i| i.name.as_str()).collect();
                            errors.push(
                                Diagnostic::at(
                                    &name.loc,
                                    format!(
                                        "`resources.stages` pattern `{}` matches no stage",
                                        name.name
                                    ),
                                )
                                .hint(choices_hint(&name.name, &names)),
                            );
                        }
                        out.stages.push((name.name.clone(), r));
                    }
                }
            }
            other => errors.push(
                Diagnostic::at(&k.loc, format!("unknown key `{other}` in `resources`"))
                    .hint(choices_hint(other, SECTIONS)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expected_map(what: &str, n: &Node) -> Diagnostic {
    Diagnostic::at(
        &n.loc,
        format!("`{what}` must be a map, found {}", n.type_name()),
    )
}

fn request(node: &Node, errors: &mut Vec<Diagnostic>) -> ResourceRequest {
    let mut r = ResourceRequest::default();
    let Some(fields) = node.as_map() else {
        errors.push(
            Diagnostic::at(
                &node.loc,
                format!("a resource request is a map, found {}", node.type_name()),
            )
            .hint("e.g. {cpus: 2, mem: 4G, time: \"1:00:00\"}"),
        );
        return r;
    };
    for (k, v) in fields {
        let bad = |what: &str| {
            Diagnostic::at(
                &v.loc,
                format!("`{}`: {what}, found `{}`", k.name, v.display_text()),
            )
        };
        match k.name.as_str() {
            "partition" | "gres" => match word(v) {
                Some(s) => {
                    if k.name == "partition" {
                        r.partition = Some(s)
                    } else {
                        r.gres = Some(s)
                    }
                }
                None => errors.push(bad("expected a name without spaces").hint(if k.name == "gres" {
                    "e.g. gres: \"gpu:1\""
                } else {
                    "`sinfo` lists the cluster's partitions"
                })),
            },
            "time" => match time(v) {
                Some(t) => r.time = Some(t),
                None => errors.push(bad("expected a Slurm time limit").hint(
                    "minutes (90), \"H:MM:SS\" (\"1:30:00\") or \"D-HH:MM:SS\" (\"2-00:00:00\"); quote values with colons",
                )),
            },
            "cpus" => match &v.kind {
                NodeKind::Scalar(Scalar::Int(n)) if (1..=i64::from(u32::MAX)).contains(n) => {
                    r.cpus = Some(*n as u32)
                }
                _ => errors.push(bad("expected a whole number of CPUs, at least 1")),
            },
            "requeue" => match &v.kind {
                NodeKind::Scalar(Scalar::Bool(b)) => r.requeue = Some(*b),
                _ => errors.push(bad("expected true or false")),
            },
            "grace" => match &v.kind {
                NodeKind::Scalar(Scalar::Int(n)) if (0..=i64::from(u32::MAX)).contains(n) => {
                    r.grace = Some(*n as u32)
                }
                _ => errors.push(bad("expected whole seconds, 0 or more").hint(
                    "e.g. grace: 300 (SIGTERM five minutes before the time limit); 0 sends none",
                )),
            },
            "mem" => match mem(v) {
                Some(m) => r.mem = Some(m),
                None => errors.push(bad("expected megabytes or a size with K/M/G/T").hint("e.g. mem: 4G or mem: 500M")),
            },
            "extra" => {
                let items: Vec<&Node> = match &v.kind {
                    NodeKind::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                for item in items {
                    match item.as_str() {
                        Some(s) if s.starts_with("--") && !s.contains(char::is_whitespace) => {
                            r.extra.push(s.to_string())
                        }
                        _ => errors.push(
                            Diagnostic::at(&item.loc, format!("`extra`: expected an sbatch option such as `--qos=high`, found `{}`", item.display_text()))
                                .hint("write each option as one `--name=value` item"),
                        ),
                    }
                }
            }
            other => errors.push(
                Diagnostic::at(&k.loc, format!("unknown resource `{other}`")).hint(choices_hint(other, FIELDS)),
            ),
        }
    }
    r
}

fn word(v: &Node) -> Option<String> {
    let s = v.as_str()?;
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_string())
}

/// Slurm's time formats, checked here so that a typo fails at plan time, not in `sbatch`.
fn time(v: &Node) -> Option<String> {
    if let NodeKind::Scalar(Scalar::Int(m)) = &v.kind {
        return (*m > 0).then(|| m.to_string());
    }
    let s = v.as_str()?;
    if matches!(s, "UNLIMITED" | "INFINITE" | "unlimited" | "infinite") {
        return Some(s.to_string());
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, s),
    };
    let num = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    if days.is_some_and(|d| !num(d)) {
        return None;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    // With days: D-H, D-H:M, D-H:M:S; without: M, M:S, H:M:S.
    ((1..=3).contains(&parts.len()) && parts.iter().all(|p| num(p))).then(|| s.to_string())
}

/// Seconds of a time limit in one of Slurm's formats (`None`: unlimited or not understood).
fn time_secs(s: &str) -> Option<u64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(d.parse::<u64>().ok()?), rest),
        None => (None, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = match (days.is_some(), parts.as_slice()) {
        (false, &[m]) => [0, m, 0],
        (false, &[m, sec]) => [0, m, sec],
        (_, &[h, m, sec]) => [h, m, sec],
        (true, &[h]) => [h, 0, 0],
        (true, &[h, m]) => [h, m, 0],
        _ => return None,
    };
    Some(((days.unwrap_or(0) * 24 + h) * 60 + m) * 60 + sec)
}

fn mem(v: &Node) -> Option<String> {
    if let NodeKind::Scalar(Scalar::Int(m)) = &v.kind {
        return (*m > 0).then(|| m.to_string());
    }
    let s = v.as_str()?;
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = s.len() - digits.len();
    (suffix <= 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(r: &[(&str, &str)]) -> ResourceRequest {
        let mut q = ResourceRequest::default();
        for (k, v) in r {
            match *k {
                "partition" => q.partition = Some(v.to_string()),
                "time" => q.time = Some(v.to_string()),
                "gres" => q.gres = Some(v.to_string()),
                "mem" => q.mem = Some(v.to_string()),
                "cpus" => q.cpus = Some(v.parse().unwrap()),
                "grace" => q.grace = Some(v.parse().unwrap()),
                "requeue" => q.requeue = Some(v.parse().unwrap()),
                _ => q.extra.push(v.to_string()),
            }
        }
        q
    }

    #[test]
    fn default_then_kind_then_matching_stage_patterns_in_order() {
        let r = Resources {
            default: req(&[("partition", "short"), ("time", "10")]),
            kinds: vec![(
                "train".into(),
                req(&[("cpus", "2"), ("time", "60"), ("extra", "--qos=a")]),
            )],
            stages: vec![
                (
                    "imp.*".into(),
                    req(&[("gres", "gpu:1"), ("extra", "--qos=b")]),
                ),
                ("imp.2.train".into(), req(&[("partition", "long")])),
            ],
        };
        assert_eq!(
            r.for_stage("imp.2.train", "train").sbatch_args(),
            [
                "--partition=long",
                "--time=60",
                "--cpus-per-task=2",
                "--gres=gpu:1",
                "--signal=B:TERM@120",
                "--qos=a",
                "--qos=b"
            ]
        );
        assert_eq!(
            r.for_stage("dense", "evaluate").sbatch_args(),
            ["--partition=short", "--time=10", "--signal=B:TERM@120"]
        );
    }

    #[test]
    fn requeue_and_grace_reach_sbatch() {
        let r = Resources {
            default: req(&[("requeue", "true"), ("grace", "300")]),
            kinds: vec![(
                "evaluate".into(),
                req(&[("grace", "0"), ("requeue", "false")]),
            )],
            stages: vec![],
        };
        assert_eq!(
            r.for_stage("t", "train").sbatch_args(),
            ["--requeue", "--signal=B:TERM@300"]
        );
        assert_eq!(r.for_stage("e", "evaluate").sbatch_args(), ["--no-requeue"]);
    }

    #[test]
    fn the_grace_is_at_most_half_the_time_limit() {
        let args = |fields: &[(&str, &str)]| req(fields).sbatch_args();
        assert_eq!(args(&[("time", "3")]), ["--time=3", "--signal=B:TERM@90"]);
        assert_eq!(
            args(&[("time", "1:00")]),
            ["--time=1:00", "--signal=B:TERM@30"]
        );
        assert_eq!(
            args(&[("time", "2:00:00"), ("grace", "600")]),
            ["--time=2:00:00", "--signal=B:TERM@600"]
        );
        assert_eq!(
            args(&[("time", "1-0")]),
            ["--time=1-0", "--signal=B:TERM@120"]
        );
        assert_eq!(
            args(&[("time", "UNLIMITED")]),
            ["--time=UNLIMITED", "--signal=B:TERM@120"]
        );
        assert_eq!(time_secs("1-02:03:04"), Some(93_784));
        assert_eq!(time_secs("0:00:01"), Some(1));
        assert_eq!(time_secs("90"), Some(5400));
    }
}
