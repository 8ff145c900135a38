//! Checkpoints: `<stem>.safetensors` (weights, biases, masks) plus a
//! `<stem>.json` side-car (spec, step, seed, format version, layer shapes,
//! densities). Round trips are bit-exact (raw little-endian f32).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::{Layer, Mask, ModelSpec, NnError, Weights};

/// Version of the checkpoint layout; bumped on incompatible changes.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Everything needed to resume or rewind a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub spec: ModelSpec,
    pub weights: Weights,
    pub mask: Mask,
    pub step: u64,
    pub seed: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SideCar {
    format_version: u32,
    spec: ModelSpec,
    step: u64,
    seed: u64,
    tensors: String,
    layers: Vec<LayerInfo>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerInfo {
    name: String,
    in_dim: usize,
    out_dim: usize,
    density: f64,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NnError + 'a {
    move |source| NnError::CheckpointIo {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, problem: impl Into<String>) -> NnError {
    NnError::CheckpointFormat {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash
/// never leaves a half-written checkpoint under the final name.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("write", path))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves `ckpt` as `dir/<stem>.safetensors` and `dir/<stem>.json`; returns
/// both paths (tensors first).
pub fn save_checkpoint(dir: &Path, stem: &str, ckpt: &Checkpoint) -> Result<Vec<PathBuf>, NnError> {
    ckpt.spec.validate().map_err(NnError::Invalid)?;
    ckpt.weights.check(&ckpt.spec)?;
    ckpt.mask.check(&ckpt.spec)?;
    std::fs::create_dir_all(dir).map_err(io_err("create the directory of", dir))?;
    let st_path = dir.join(format!("{stem}.safetensors"));
    let json_path = dir.join(format!("{stem}.json"));

    let mut buffers: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    for (l, m) in ckpt.weights.layers.iter().zip(&ckpt.mask.layers) {
        let shape = vec![l.in_dim, l.out_dim];
        buffers.push((
            format!("{}.weight", l.name),
            shape.clone(),
            Dtype::F32,
            f32_bytes(&l.weight),
        ));
        buffers.push((
            format!("{}.bias", l.name),
            vec![l.out_dim],
            Dtype::F32,
            f32_bytes(&l.bias),
        ));
        buffers.push((
            format!("{}.mask", l.name),
            shape,
            Dtype::U8,
            m.iter().map(|&k| k as u8).collect(),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(&st_path, format!("cannot build tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = HashMap::from([("format_version".to_string(), CHECKPOINT_FORMAT.to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| format_err(&st_path, format!("cannot serialise: {e}")))?;

    let side = SideCar {
        format_version: CHECKPOINT_FORMAT,
        spec: ckpt.spec.clone(),
        step: ckpt.step,
        seed: ckpt.seed,
        tensors: format!("{stem}.safetensors"),
        layers: ckpt
            .weights
            .layers
            .iter()
            .zip(ckpt.mask.density())
            .map(|(l, density)| LayerInfo {
                name: l.name.clone(),
                in_dim: l.in_dim,
                out_dim: l.out_dim,
                density,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&side).expect("side-car serialises");
    write_atomic(&st_path, &bytes)?;
    write_atomic(&json_path, &json)?;
    Ok(vec![st_path, json_path])
}

fn read(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(io_err("read", path))
}

fn tensor<'a>(
    st: &SafeTensors<'a>,
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<&'a [u8], NnError> {
    let t = st
        .tensor(name)
        .map_err(|_| format_err(path, format!("tensor `{name}` is missing")))?;
    if t.dtype() != dtype {
        return Err(format_err(
            path,
            format!(
                "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                t.dtype()
            ),
        ));
    }
    if t.shape() != shape {
        return Err(format_err(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.shape()
            ),
        ));
    }
    Ok(t.data())
}

/// Loads `dir/<stem>.{json,safetensors}`, checking every tensor against the
/// side-car's spec.
pub fn load_checkpoint(dir: &Path, stem: &str) -> Result<Checkpoint, NnError> {
    let json_path = dir.join(format!("{stem}.json"));
    let st_path = dir.join(format!("{stem}.safetensors"));
    let side: SideCar = serde_json::from_slice(&read(&json_path)?)
        .map_err(|e| format_err(&json_path, format!("cannot parse the side-car: {e}")))?;
    if side.format_version != CHECKPOINT_FORMAT {
        return Err(format_err(
            &json_path,
            format!(
                "format version {} is not supported (this build reads version {CHECKPOINT_FORMAT})",
                side.format_version
            ),
        ));
    }
    side.spec
        .validate()
        .map_err(|e| format_err(&json_path, format!("bad model spec: {e}")))?;
    let names = side.spec.layer_names();
    let dims = side.spec.layer_dims();
    let listed: Vec<(&str, usize, usize)> = side
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.in_dim, l.out_dim))
        .collect();
    let expected: Vec<(&str, usize, usize)> = names
        .iter()
        .zip(&dims)
        .map(|(n, &(i, o))| (n.as_str(), i, o))
        .collect();
    if listed != expected {
        return Err(format_err(
            &json_path,
            format!("layer list {listed:?} does not match the spec's {expected:?}"),
        ));
    }
    let bytes = read(&st_path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(&st_path, format!("not a safetensors file: {e}")))?;
    let mut layers = Vec::new();
    let mut mask = Vec::new();
    for (name, &(i, o)) in names.iter().zip(&dims) {
        let w = tensor(
            &st,
            &st_path,
            &format!("{name}.weight"),
            Dtype::F32,
            &[i, o],
        )?;
        let b = tensor(&st, &st_path, &format!("{name}.bias"), Dtype::F32, &[o])?;
        let m = tensor(&st, &st_path, &format!("{name}.mask"), Dtype::U8, &[i, o])?;
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        if let Some(v) = m.iter().find(|&&v| v > 1) {
            return Err(format_err(
                &st_path,
                format!("tensor `{name}.mask` holds {v}; masks hold 0 or 1"),
            ));
        }
        layers.push(Layer {
            name: name.clone(),
            in_dim: i,
            out_dim: o,
            weight: f32s(w),
            bias: f32s(b),
        });
        mask.push(m.iter().map(|&v| v == 1).collect());
    }
    Ok(Checkpoint {
        spec: side.spec,
        weights: Weights { layers },
        mask: Mask { layers: mask },
        step: side.step,
        seed: side.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, init_weights};

    fn sample() -> Checkpoint {
        let spec = ModelSpec::Mlp {
            widths: vec![5, 4, 3],
        };
        let mut weights = init_weights(&spec, InitScheme::KaimingNormal, 11);
        weights.layers[1].bias = vec![1e-30, -0.0, f32::MIN_POSITIVE];
        weights.layers[0].weight[2] = -0.0;
        let mut mask = Mask::dense(&spec);
        mask.layers[0][3] = false;
        mask.layers[1][0] = false;
        Checkpoint {
            spec,
            weights,
            mask,
            step: 1234,
            seed: 42,
        }
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        let paths = save_checkpoint(dir.path(), "ckpt", &c).unwrap();
        assert_eq!(
            paths,
            vec![
                dir.path().join("ckpt.safetensors"),
                dir.path().join("ckpt.json")
            ]
        );
        let back = load_checkpoint(dir.path(), "ckpt").unwrap();
        assert_eq!(back, c);
        for (a, b) in back.weights.layers.iter().zip(&c.weights.layers) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.weight), bits(&b.weight));
            assert_eq!(bits(&a.bias), bits(&b.bias));
        }
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths[1]).unwrap()).unwrap();
        assert_eq!(side["step"], 1234);
        assert_eq!(side["format_version"], 1);
        assert_eq!(side["spec"]["widths"], serde_json::json!([5, 4, 3]));
        assert_eq!(side["layers"][0]["density"], 19.0 / 20.0);
        assert_eq!(side["layers"][1]["name"], "fc2");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    fn write_with(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Dtype, Vec<u8>)>)) {
        let c = sample();
        save_checkpoint(dir, "c", &c).unwrap();
        let bytes = std::fs::read(dir.join("c.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut ts: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), v.dtype(), v.data().to_vec()))
            .collect();
        edit(&mut ts);
        let views: Vec<(String, TensorView)> = ts
            .iter()
            .map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(
            dir.join("c.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }

    fn load_err(dir: &Path) -> String {
        let e = load_checkpoint(dir, "c").unwrap_err().to_string();
        assert!(
            e.contains("c.safetensors") || e.contains("c.json"),
            "must name the file: {e}"
        );
        e
    }

    #[test]
    fn invalid_tensors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_with(dir.path(), |ts| ts.retain(|t| t.0 != "fc2.bias"));
        assert!(load_err(dir.path()).contains("tensor `fc2.bias` is missing"));
        write_with(dir.path(), |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.weight").unwrap();
            t.1 = vec![4, 5];
        });
        assert!(load_err(dir.path()).contains("`fc1.weight` has shape [4, 5], expected [5, 4]"));
        write_with(dir.path(), |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.mask").unwrap();
            t.2 = Dtype::I8;
        });
        assert!(load_err(dir.path()).contains("`fc1.mask` has dtype I8, expected U8"));
        write_with(dir.path(), |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.mask").unwrap();
            t.3[0] = 7;
        });
        assert!(load_err(dir.path()).contains("holds 7"));
        std::fs::write(dir.path().join("c.safetensors"), b"garbage").unwrap();
        assert!(load_err(dir.path()).contains("not a safetensors file"));
        std::fs::remove_file(dir.path().join("c.safetensors")).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains("cannot read checkpoint file"), "{e}");
    }

    #[test]
    fn side_car_must_match() {
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), "c", &sample()).unwrap();
        let p = dir.path().join("c.json");
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            s.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .unwrap();
        assert!(load_err(dir.path()).contains("format version 9"));
        std::fs::write(&p, s.replace("\"fc2\"", "\"out\"")).unwrap();
        assert!(load_err(dir.path()).contains("does not match the spec"));
        std::fs::write(&p, "{").unwrap();
        assert!(load_err(dir.path()).contains("cannot parse the side-car"));
    }

    #[test]
    fn save_rejects_mismatched_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.mask.layers.pop();
        assert!(matches!(
            save_checkpoint(dir.path(), "x", &c),
            Err(NnError::Shape(_))
        ));
    }
}
