//! Provenance keys: BLAKE3 over a canonical serialisation of what a stage *means*, never of
//! the bytes it produced (training is not bit-reproducible across devices, so output hashes
//! would invalidate everything downstream).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Value, json};

/// Bumped when the pre-image's layout changes; every key changes with it.
pub const KEY_FORMAT: u32 = 1;

/// The document whose hash is a stage's key. Kept in every entry's manifest so that
/// `pipe explain` can say which field changed.
///
/// ```
/// use pipe::cache::PreImage;
/// use serde_json::json;
///
/// let inputs = vec![("model".to_string(), vec!["1d0bbde3".to_string()])];
/// let a = PreImage::new("train", 1, json!({"lr": 0.1, "batch": 60}), &inputs, &Default::default());
/// let b = PreImage::new("train", 1, json!({"batch": 60, "lr": 0.1}), &inputs, &Default::default());
/// // Field order does not matter; the canonical form is compact JSON with sorted keys.
/// assert_eq!(a.key(), b.key());
/// assert_eq!(
///     a.canonical(),
///     r#"{"data":{},"format":1,"inputs":{"model":["1d0bbde3"]},"kind":"train","params":{"batch":60,"lr":0.1},"version":1}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PreImage(pub Value);

impl PreImage {
    /// `params` must already be the kind's key view (defaults applied, locations removed).
    pub fn new(
        kind: &str,
        version: u32,
        params: Value,
        inputs: &[(String, Vec<String>)],
        data: &BTreeMap<String, String>,
    ) -> PreImage {
        let inputs: serde_json::Map<String, Value> = inputs
            .iter()
            .map(|(role, keys)| (role.clone(), json!(keys)))
            .collect();
        PreImage(json!({
            "format": KEY_FORMAT,
            "kind": kind,
            "version": version,
            "params": params,
            "inputs": inputs,
            "data": data,
        }))
    }

    /// The same pre-image with the digests of a stage's deps (path as written → BLAKE3), when
    /// it has any: a kind without deps keeps the keys it always had.
    pub fn with_deps(mut self, deps: &BTreeMap<String, String>) -> PreImage {
        if !deps.is_empty()
            && let Value::Object(m) = &mut self.0
        {
            m.insert("deps".into(), json!(deps));
        }
        self
    }

    /// Compact JSON with object keys sorted (serde_json's map is ordered by key) and floats in
    /// their shortest round-trip form: the same meaning always gives the same bytes.
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.0).expect("JSON values always serialise")
    }

    pub fn key(&self) -> String {
        blake3::hash(self.canonical().as_bytes())
            .to_hex()
            .to_string()
    }
}

/// The fields that differ between two pre-images, as `(path, old, new)`, sorted by path.
pub fn diff_values(old: &Value, new: &Value) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push((path.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

type DigestMemo = HashMap<PathBuf, (u64, SystemTime, String)>;
static MEMO: Mutex<Option<DigestMemo>> = Mutex::new(None);

/// BLAKE3 of an external input's content, memoised per process by (path, size, mtime) so that fifty
/// stages reading the same dataset hash it once.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta.modified()?;
    let canonical = std::fs::canonicalize(path)?;
    if let Some((len, t, d)) = MEMO
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .get(&canonical)
        && *len == meta.len()
        && *t == mtime
    {
        return Ok(d.clone());
    }
    let d = hash_file(path)?;
    MEMO.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(canonical, (meta.len(), mtime, d.clone()));
    Ok(d)
}

/// BLAKE3 of a file's content, always read from disk (used to verify cache entries).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_and_is_stable() {
        let a = PreImage::new(
            "train",
            1,
            json!({"lr": 0.1, "batch": 60}),
            &[("model".into(), vec!["k1".into()])],
            &BTreeMap::new(),
        );
        let b = PreImage::new(
            "train",
            1,
            json!({"batch": 60, "lr": 0.1}),
            &[("model".into(), vec!["k1".into()])],
            &BTreeMap::new(),
        );
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.canonical(),
            r#"{"data":{},"format":1,"inputs":{"model":["k1"]},"kind":"train","params":{"batch":60,"lr":0.1},"version":1}"#
        );
        assert_eq!(
            a.key(),
            blake3::hash(a.canonical().as_bytes()).to_hex().to_string()
        );
    }

    #[test]
    fn diff_names_changed_fields() {
        let d = diff_values(
            &json!({"params": {"lr": 0.1, "b": 1}, "version": 1}),
            &json!({"params": {"lr": 0.2, "b": 1}, "version": 2}),
        );
        assert_eq!(
            d,
            vec![
                ("params.lr".into(), json!(0.1), json!(0.2)),
                ("version".into(), json!(1), json!(2))
            ]
        );
    }
}
