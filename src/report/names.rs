//! Reading a stage's place in the pipeline back from its name.
//!
//! Expanded names are a stable contract (`dense`, `sweep[lr=6e-3]`, `imp.3.ticket[lr=6e-3]`:
//! group, level, stage, then the sweep assignment sorted by variable), so a run record, which
//! keeps only names, is enough to group stages into table columns, plot lines and replicates.

/// A stage name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageName {
    /// The name without the sweep part: `imp.3.ticket`.
    pub template: String,
    /// The stage within its level group: `ticket`.
    pub base: String,
    /// `(group, level)` for names of the form `group.N.stage`.
    pub level: Option<(String, u32)>,
    /// Sweep variable → value as written, sorted by variable.
    pub assignment: Vec<(String, String)>,
}

impl StageName {
    pub fn parse(name: &str) -> StageName {
        let (template, assignment) = match name.find('[') {
            Some(i) if name.ends_with(']') => {
                (&name[..i], split_assignment(&name[i + 1..name.len() - 1]))
            }
            _ => (name, Vec::new()),
        };
        let parts: Vec<&str> = template.split('.').collect();
        let level = match parts.as_slice() {
            [g, n, _] => n.parse::<u32>().ok().map(|n| (g.to_string(), n)),
            _ => None,
        };
        StageName {
            template: template.to_string(),
            base: parts.last().copied().unwrap_or(template).to_string(),
            level,
            assignment,
        }
    }

    pub fn value(&self, var: &str) -> Option<&str> {
        self.assignment
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }

    /// The name with the variables for which `drop` holds left out: the identity of a point
    /// whose replicates differ only in those variables.
    pub fn without(&self, drop: impl Fn(&str) -> bool) -> String {
        let kept: Vec<String> = self
            .assignment
            .iter()
            .filter(|(k, _)| !drop(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if kept.is_empty() {
            self.template.clone()
        } else {
            format!("{}[{}]", self.template, kept.join(","))
        }
    }
}

/// Splits `lr=6e-3,widths=[1,2]` at the commas outside brackets (list values keep theirs).
fn split_assignment(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                push_pair(&s[start..i], &mut out);
                start = i + 1;
            }
            _ => {}
        }
    }
    push_pair(&s[start..], &mut out);
    out
}

fn push_pair(part: &str, out: &mut Vec<(String, String)>) {
    if let Some((k, v)) = part.split_once('=') {
        out.push((k.to_string(), v.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_expanded_names_apart() {
        let n = StageName::parse("imp.3.eval_ticket[lr=6e-3,seed=1]");
        assert_eq!(n.template, "imp.3.eval_ticket");
        assert_eq!(n.base, "eval_ticket");
        assert_eq!(n.level, Some(("imp".into(), 3)));
        assert_eq!(n.value("lr"), Some("6e-3"));
        assert_eq!(n.without(|v| v == "seed"), "imp.3.eval_ticket[lr=6e-3]");
        assert_eq!(n.without(|_| true), "imp.3.eval_ticket");
        let d = StageName::parse("dense");
        assert_eq!(
            (d.base.as_str(), d.level.clone(), d.assignment.len()),
            ("dense", None, 0)
        );
        let l = StageName::parse("s[model.widths=[784,300,10],lr=0.1]");
        assert_eq!(
            l.assignment,
            vec![
                ("model.widths".to_string(), "[784,300,10]".to_string()),
                ("lr".to_string(), "0.1".to_string())
            ]
        );
    }

    #[test]
    fn names_of_a_real_pipeline_round_trip() {
        let reg = crate::stages::Registry::builtin();
        let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("pipelines/lottery_vs_rethinking.yaml");
        let p = crate::spec::load(&[file], &[], &reg).unwrap();
        for i in &p.instances {
            let n = StageName::parse(&i.name);
            assert_eq!(n.assignment, i.assignment, "{}", i.name);
            assert_eq!(n.template, i.template, "{}", i.name);
            assert_eq!(n.level, i.level, "{}", i.name);
        }
    }
}
