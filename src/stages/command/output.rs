//! What a program that exited 0 left in `PIPE_OUT`, turned into the entry: its files moved
//! into the entry's folder, `metrics.json` read into the stage's metrics, `curve.json` checked
//! to be a learning curve the reports can draw, and a declared model or dataset checked
//! against what the consuming kinds read. Any problem fails the stage, naming the file.

use std::path::Path;

use serde_json::Value;

use super::{OWN_DIR, Produces};
use crate::cache::{COMPLETE, MANIFEST};
use crate::data::generated::{DATASET_JSON, GeneratedMeta, split_files};
use crate::nn::{load_foreign, save_checkpoint};
use crate::stages::{StageContext, StageError};

pub const METRICS_FILE: &str = "metrics.json";
pub const CURVE_FILE: &str = "curve.json";

pub fn collect(ctx: &mut StageContext, out: &Path, produces: Produces) -> Result<(), StageError> {
    let entry = ctx.out_dir().to_path_buf();
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| StageError::io(out, e))?
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(|e| StageError::io(out, e))
        })
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in &names {
        if [OWN_DIR, MANIFEST, COMPLETE].contains(&name.as_str()) {
            return Err(StageError::Other(format!(
                "the program wrote `{name}` in PIPE_OUT, a name pipe keeps for its own files in an entry; give that output another name"
            )));
        }
        let (from, to) = (out.join(name), entry.join(name));
        std::fs::rename(&from, &to).map_err(|e| StageError::io(&from, e))?;
    }
    std::fs::remove_dir(out).map_err(|e| StageError::io(out, e))?;
    let has = |f: &str| entry.join(f).is_file();

    if has(METRICS_FILE) {
        let path = entry.join(METRICS_FILE);
        let value = read_json(&path, METRICS_FILE)?;
        let Value::Object(top) = value else {
            return Err(malformed(
                METRICS_FILE,
                "it holds no JSON object; write {\"accuracy\": 0.97, ...}",
            ));
        };
        let mut flat = Vec::new();
        flatten("", &Value::Object(top), &mut flat)?;
        for (name, v) in flat {
            ctx.set_metric(&name, v);
        }
    }
    if has(CURVE_FILE) {
        check_curve(&read_json(&entry.join(CURVE_FILE), CURVE_FILE)?)?;
    }
    match produces {
        Produces::None => {}
        Produces::Curve => require(&entry, &[CURVE_FILE], "curve")?,
        Produces::Model => {
            require(&entry, &["model.safetensors", "model.json"], "model")?;
            // Checked by name, dtype and shape against the spec's program, then written in
            // pipe's own form (side-car, mask file), as every other model-producing kind
            // writes it: the consumers cannot tell who trained it.
            let ckpt = load_foreign(&entry, "model").map_err(|e| {
                StageError::Other(format!("the model the program wrote is not usable: {e}"))
            })?;
            save_checkpoint(&entry, "model", &ckpt)?;
        }
        Produces::Dataset => {
            require(&entry, &[DATASET_JSON], "dataset")?;
            check_dataset(&entry)?;
        }
    }
    Ok(())
}

fn malformed(file: &str, problem: impl std::fmt::Display) -> StageError {
    StageError::Other(format!(
        "{file} (written by the program in PIPE_OUT) is malformed: {problem}"
    ))
}

fn read_json(path: &Path, file: &str) -> Result<Value, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(file, format!("not JSON: {e}")))
}

fn require(entry: &Path, files: &[&str], what: &str) -> Result<(), StageError> {
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !entry.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StageError::Other(format!(
        "the stage declares `produces: {what}`, but the program did not write {} in PIPE_OUT",
        missing.join(" and ")
    )))
}

/// Nested objects of numbers → `(a.b, number)`; anything else is an error naming its path.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) -> Result<(), StageError> {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k.is_empty() || k.contains('.') {
                    return Err(malformed(
                        METRICS_FILE,
                        format!("metric name `{k}` is empty or has a dot (dots join nested names)"),
                    ));
                }
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out)?;
            }
            Ok(())
        }
        Value::Number(_) => {
            out.push((prefix.to_string(), v.clone()));
            Ok(())
        }
        other => Err(malformed(
            METRICS_FILE,
            format!(
                "`{prefix}` is {}; metrics are numbers (nested objects are flattened with dots; a series goes in curve.json)",
                kind_of(other)
            ),
        )),
    }
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::Object(_) => "an object".into(),
    }
}

/// A list of rows, each with a whole `iteration` and, in `train`'s columns, numbers or null.
fn check_curve(v: &Value) -> Result<(), StageError> {
    let Value::Array(rows) = v else {
        return Err(malformed(
            CURVE_FILE,
            "it is not a list of rows like [{\"iteration\": 0, \"test_acc\": 0.1}, ...]",
        ));
    };
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(m) = row else {
            return Err(malformed(CURVE_FILE, format!("row {i} is not an object")));
        };
        if !m.get("iteration").is_some_and(Value::is_u64) {
            return Err(malformed(
                CURVE_FILE,
                format!("row {i} has no whole, non-negative `iteration`"),
            ));
        }
        if let Some((k, v)) = m.iter().find(|(_, v)| !(v.is_number() || v.is_null())) {
            return Err(malformed(
                CURVE_FILE,
                format!(
                    "row {i}: `{k}` is {}; a curve holds numbers (or null)",
                    kind_of(v)
                ),
            ));
        }
    }
    Ok(())
}

/// A generated dataset as `train` and `evaluate` read it: `dataset.json` and both splits'
/// files, of the sizes it states.
fn check_dataset(entry: &Path) -> Result<(), StageError> {
    let meta: GeneratedMeta =
        serde_json::from_value(read_json(&entry.join(DATASET_JSON), DATASET_JSON)?)
            .map_err(|e| malformed(DATASET_JSON, e))?;
    for (split, n) in [("train", meta.train), ("eval", meta.eval)] {
        let (x, y) = split_files(split);
        for (file, per) in [(x, meta.d_in), (y, meta.d_out)] {
            let want = (n as u64) * (per as u64) * 4;
            match std::fs::metadata(entry.join(&file)) {
                Ok(m) if m.len() == want => {}
                Ok(m) => {
                    return Err(malformed(
                        DATASET_JSON,
                        format!(
                            "{file} holds {} bytes; {n} samples of {per} f32 are {want}",
                            m.len()
                        ),
                    ));
                }
                Err(_) => {
                    return Err(StageError::Other(format!(
                        "the stage declares `produces: dataset`, but the program did not write {file} in PIPE_OUT"
                    )));
                }
            }
        }
    }
    Ok(())
}
