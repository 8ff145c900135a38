//! Claims a pipeline states about its results and their outcome, as the run record holds them.
//!
//! The report reads them from the record's raw JSON (`claims`: a list of objects, or a map of
//! name → object), so that it shows whatever fields the claim checker records: a name, whether
//! the claim held, and the numbers behind it. The fields recognised for the name and the
//! outcome are listed below; any others are shown as `field: value` (a side that `pipe run`
//! recorded, an object with `value` and `describe`, as `VALUE = DESCRIBE`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRow {
    pub name: String,
    /// `Some(true)` held, `Some(false)` failed, `None` unknown (not evaluated, or no outcome).
    pub held: Option<bool>,
    pub outcome: String,
    /// The other fields, as `field: value`.
    pub details: Vec<(String, String)>,
}

const NAME_FIELDS: &[&str] = &["name", "claim", "id"];
const OUTCOME_FIELDS: &[&str] = &["held", "outcome", "status", "passed", "result"];

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // A side as `pipe run` records it (`claim_eval::SideResult`): its value and how it
        // came about, or why it is unknown.
        Value::Object(m) if m.get("describe").is_some_and(Value::is_string) => {
            let value = m
                .get("value")
                .and_then(Value::as_f64)
                .map_or_else(|| "?".to_string(), super::fmt_float);
            let describe = m.get("describe").map(text).unwrap_or_default();
            match m.get("reason").and_then(Value::as_str) {
                Some(r) => format!("{value} = {describe} (unknown: {r})"),
                None => format!("{value} = {describe}"),
            }
        }
        other => other.to_string(),
    }
}

fn held_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "held" | "holds" | "pass" | "passed" | "ok" | "true" => Some(true),
            "failed" | "fail" | "false" | "not held" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn row(default_name: String, v: &Value) -> ClaimRow {
    let Value::Object(m) = v else {
        return ClaimRow {
            name: default_name,
            held: held_of(v),
            outcome: text(v),
            details: vec![],
        };
    };
    let name = NAME_FIELDS
        .iter()
        .find_map(|f| m.get(*f).map(text))
        .unwrap_or(default_name);
    let outcome_v = OUTCOME_FIELDS.iter().find_map(|f| m.get(*f));
    let details = m
        .iter()
        .filter(|(k, _)| {
            !NAME_FIELDS.contains(&k.as_str()) && !OUTCOME_FIELDS.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    ClaimRow {
        name,
        held: outcome_v.and_then(held_of),
        outcome: match outcome_v.and_then(held_of) {
            Some(true) => "held".into(),
            Some(false) => "failed".into(),
            None => outcome_v.map(text).unwrap_or_else(|| "—".into()),
        },
        details,
    }
}

/// The claims of a raw run record, empty if it holds none.
pub fn from_record(raw: &Value) -> Vec<ClaimRow> {
    match raw.get("claims") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| row(format!("claim {}", i + 1), v))
            .collect(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| row(k.clone(), v)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_lists_and_maps_of_claims() {
        let raw = json!({"claims": [
            {"name": "ticket beats random", "held": true, "lhs": 0.97, "rhs": 0.95},
            {"claim": "lesions", "outcome": "failed", "detail": "median 0.3 > 0.1"},
            {"name": "pending"}
        ]});
        let c = from_record(&raw);
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].name.as_str(), c[0].held, c[0].outcome.as_str()),
            ("ticket beats random", Some(true), "held")
        );
        assert_eq!(
            c[0].details,
            vec![
                ("lhs".to_string(), "0.97".to_string()),
                ("rhs".to_string(), "0.95".to_string())
            ]
        );
        assert_eq!((c[1].held, c[1].outcome.as_str()), (Some(false), "failed"));
        assert_eq!((c[2].held, c[2].outcome.as_str()), (None, "—"));
        let m = from_record(&json!({"claims": {"a": {"passed": false}}}));
        assert_eq!((m[0].name.as_str(), m[0].held), ("a", Some(false)));
        assert!(from_record(&json!({"id": "x"})).is_empty());
    }
}
