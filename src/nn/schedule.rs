//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// Learning-rate schedule after warm-up (warm-up is `TrainConfig::warmup`).
///
/// Written `{kind: cosine, min_lr: 1e-4}`, `{kind: step, milestones: [...], gamma: 0.1}` or
/// `{kind: constant}`; the two without required fields also as a bare name (`schedule:
/// cosine`). Always stored (and keyed) in the tagged form, so both spellings are one key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    remote = "LrSchedule"
)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// The base rate times `gamma^k`, where `k` counts the milestones
    /// (absolute iterations) that are `<= iter`.
    Step { milestones: Vec<u64>, gamma: f64 },
    /// Cosine decay from the base rate (at the end of warm-up) to `min_lr`
    /// (at `total`).
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
}

/// The forms a schedule can take, for errors.
const FORMS: &str = "write `constant`, `cosine`, `{kind: cosine, min_lr: 1.0e-4}` or \
     `{kind: step, milestones: [20000, 30000], gamma: 0.1}`";

impl Serialize for LrSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LrSchedule::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for LrSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(name) => match name.as_str() {
                "constant" => Ok(LrSchedule::Constant),
                "cosine" => Ok(LrSchedule::Cosine { min_lr: 0.0 }),
                "step" => Err(D::Error::custom(format!(
                    "a `step` schedule needs its `milestones` and `gamma`: {FORMS}"
                ))),
                other => Err(D::Error::custom(format!(
                    "unknown schedule `{other}`: {FORMS}"
                ))),
            },
            v @ serde_json::Value::Object(_) => {
                LrSchedule::deserialize(v).map_err(|e| D::Error::custom(format!("{e}: {FORMS}")))
            }
            other => Err(D::Error::custom(format!(
                "a schedule is a name or a map, not `{other}`: {FORMS}"
            ))),
        }
    }
}

/// The learning rate for the optimiser step taken at iteration `iter`
/// (0-based: the step that turns iteration `iter` into `iter + 1`), out of
/// `total` iterations.
///
/// Warm-up: for `iter < warmup` the rate rises linearly,
/// `base × (iter + 1) / warmup`, from `base / warmup` to `base` at
/// `iter = warmup - 1`. Afterwards the schedule applies: step milestones are
/// absolute iterations; the cosine runs over `[warmup, total]`.
pub fn lr_at(base: f64, sched: &LrSchedule, warmup: u64, iter: u64, total: u64) -> f64 {
    if iter < warmup {
        return base * (iter + 1) as f64 / warmup as f64;
    }
    match sched {
        LrSchedule::Constant => base,
        LrSchedule::Step { milestones, gamma } => {
            let k = milestones.iter().filter(|&&m| m <= iter).count();
            base * gamma.powi(k as i32)
        }
        LrSchedule::Cosine { min_lr } => {
            let span = total.saturating_sub(warmup);
            let t = if span == 0 {
                1.0
            } else {
                ((iter - warmup) as f64 / span as f64).min(1.0)
            };
            min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_the_tagged_form_and_mistakes_name_the_forms() {
        let parse = |j: &str| serde_json::from_str::<LrSchedule>(j);
        assert_eq!(
            parse(r#""cosine""#).unwrap(),
            LrSchedule::Cosine { min_lr: 0.0 }
        );
        assert_eq!(parse(r#""constant""#).unwrap(), LrSchedule::Constant);
        assert_eq!(
            parse(r#"{"kind": "cosine"}"#).unwrap(),
            parse(r#""cosine""#).unwrap()
        );
        assert_eq!(
            serde_json::to_value(parse(r#""cosine""#).unwrap()).unwrap(),
            serde_json::json!({"kind": "cosine", "min_lr": 0.0}),
            "stored, and keyed, in the tagged form"
        );
        let e = parse(r#""step""#).unwrap_err().to_string();
        assert!(
            e.starts_with("a `step` schedule needs its `milestones` and `gamma`"),
            "{e}"
        );
        let e = parse(r#"{"kind": "step", "gamma": 0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `milestones`"), "{e}");
        assert!(
            e.contains("{kind: step, milestones: [20000, 30000], gamma: 0.1}"),
            "{e}"
        );
        let e = parse(r#""cosin""#).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown schedule `cosin`: write `constant`, `cosine`"),
            "{e}"
        );
    }

    #[test]
    fn constant_and_warmup() {
        let c = LrSchedule::Constant;
        assert_eq!(lr_at(0.1, &c, 0, 0, 100), 0.1);
        assert_eq!(lr_at(0.1, &c, 0, 99, 100), 0.1);
        assert_eq!(lr_at(0.4, &c, 4, 0, 100), 0.1);
        assert_eq!(lr_at(0.4, &c, 4, 1, 100), 0.2);
        assert_eq!(lr_at(0.4, &c, 4, 3, 100), 0.4);
        assert_eq!(lr_at(0.4, &c, 4, 4, 100), 0.4);
    }

    #[test]
    fn step_milestones_are_absolute() {
        let s = LrSchedule::Step {
            milestones: vec![10, 20],
            gamma: 0.5,
        };
        assert_eq!(lr_at(1.0, &s, 0, 9, 30), 1.0);
        assert_eq!(lr_at(1.0, &s, 0, 10, 30), 0.5);
        assert_eq!(lr_at(1.0, &s, 0, 19, 30), 0.5);
        assert_eq!(lr_at(1.0, &s, 0, 20, 30), 0.25);
        assert_eq!(lr_at(1.0, &s, 5, 2, 30), 0.6);
    }

    #[test]
    fn cosine_ends_at_min() {
        let s = LrSchedule::Cosine { min_lr: 0.1 };
        assert_eq!(lr_at(1.0, &s, 0, 0, 100), 1.0);
        assert!((lr_at(1.0, &s, 0, 50, 100) - 0.55).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 0, 100, 100) - 0.1).abs() < 1e-12);
        // With warm-up the cosine starts at the end of warm-up.
        assert_eq!(lr_at(1.0, &s, 10, 10, 110), 1.0);
        assert!((lr_at(1.0, &s, 10, 60, 110) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn serde_shape() {
        let s: LrSchedule = serde_json::from_str(r#"{"kind":"cosine"}"#).unwrap();
        assert_eq!(s, LrSchedule::Cosine { min_lr: 0.0 });
        let s: LrSchedule =
            serde_json::from_str(r#"{"kind":"step","milestones":[5],"gamma":0.1}"#).unwrap();
        assert_eq!(
            s,
            LrSchedule::Step {
                milestones: vec![5],
                gamma: 0.1
            }
        );
        assert_eq!(
            serde_json::to_string(&LrSchedule::Constant).unwrap(),
            r#"{"kind":"constant"}"#
        );
        // Unknown fields are rejected for the variants with fields. (serde cannot
        // enforce `deny_unknown_fields` on an internally tagged unit variant, so
        // `{"kind":"constant","x":1}` is accepted.)
        assert!(serde_json::from_str::<LrSchedule>(r#"{"kind":"cosine","min":1}"#).is_err());
    }
}
