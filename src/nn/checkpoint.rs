//! Checkpoints, format 2: three files per model.
//!
//! * `<stem>.safetensors` is a PyTorch `state_dict`: every parameter under its PyTorch name
//!   and layout (`conv1.weight` `[out, in, k, k]`, `fc.weight` `[out, in]`), and for each batch
//!   norm `running_mean`, `running_var` and `num_batches_tracked` (i64, the training step), so
//!   `model.load_state_dict(safetensors.torch.load_file(path))` fills the equivalent
//!   `torch.nn` module unchanged (`bench/torch_check.py` proves it for every family).
//! * `<stem>.mask.safetensors`: the mask of each prunable parameter, u8 0/1, same name and
//!   layout as the parameter (kept apart so that the state dict loads strictly), and of each
//!   bias or batch-norm parameter a filter-level mask covers ([`Mask::extra`]); a file
//!   without those (every checkpoint before them) loads with none.
//! * `<stem>.json`: the side-car — format version, model spec, its layer program, step,
//!   seed, and per prunable parameter its shape and density.
//!
//! Round trips are bit-exact (raw little-endian f32). Format-1 checkpoints (MLP only, weights
//! `[in, out]` and masks in one file) written by earlier versions are still read, so cached
//! entries stay valid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::program::{ParamRole, Program};
use super::weights::{Named, Param};
use super::{Mask, ModelSpec, NnError, Weights};

/// Version of the checkpoint layout written; bumped on incompatible changes.
pub const CHECKPOINT_FORMAT: u32 = 2;

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
    /// The layer program the spec compiles to (what `bench/torch_check.py` builds).
    program: Program,
    step: u64,
    seed: u64,
    tensors: String,
    masks: String,
    layers: Vec<LayerInfo>,
}

/// One prunable parameter: PyTorch shape and kept fraction.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerInfo {
    name: String,
    shape: Vec<usize>,
    density: f64,
}

/// Format 1's side-car (MLP layers `[in, out]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SideCarV1 {
    #[allow(dead_code)]
    format_version: u32,
    spec: ModelSpec,
    step: u64,
    seed: u64,
    #[allow(dead_code)]
    tensors: String,
    layers: Vec<LayerInfoV1>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerInfoV1 {
    name: String,
    in_dim: usize,
    out_dim: usize,
    #[allow(dead_code)]
    density: f64,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NnError + 'a {
    move |source| NnError::CheckpointIo {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn format_err(path: &Path, problem: impl Into<String>) -> NnError {
    NnError::CheckpointFormat {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash
/// never leaves a half-written checkpoint under the final name.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("write", path))
}

pub(super) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for c in 0..cols {
        out.extend((0..rows).map(|r| v[r * cols + c]));
    }
    out
}

/// A parameter's values in PyTorch's layout (linear weights transposed).
pub(super) fn to_torch<T: Copy>(role: ParamRole, shape: &[usize], v: &[T]) -> Vec<T> {
    match role {
        ParamRole::LinearWeight => transpose(v, shape[0], shape[1]),
        _ => v.to_vec(),
    }
}

/// A parameter's shape in PyTorch's layout.
pub(super) fn torch_shape(role: ParamRole, shape: &[usize]) -> Vec<usize> {
    match role {
        ParamRole::LinearWeight => vec![shape[1], shape[0]],
        _ => shape.to_vec(),
    }
}

pub(super) fn from_torch<T: Copy>(role: ParamRole, shape: &[usize], v: &[T]) -> Vec<T> {
    match role {
        ParamRole::LinearWeight => transpose(v, shape[1], shape[0]),
        _ => v.to_vec(),
    }
}

pub(super) type Buffer = (String, Vec<usize>, Dtype, Vec<u8>);

fn serialise(path: &Path, buffers: &[Buffer]) -> Result<Vec<u8>, NnError> {
    serialise_with(path, buffers, HashMap::new())
}

/// A safetensors file of `buffers`, with `meta` and the checkpoint format in its metadata.
pub(super) fn serialise_with(
    path: &Path,
    buffers: &[Buffer],
    mut meta: HashMap<String, String>,
) -> Result<Vec<u8>, NnError> {
    let views = buffers
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(path, format!("cannot build tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    meta.insert("format_version".to_string(), CHECKPOINT_FORMAT.to_string());
    let mut bytes = safetensors::serialize(views, Some(meta.clone()))
        .map_err(|e| format_err(path, format!("cannot serialise: {e}")))?;
    sort_metadata(&mut bytes, &meta).map_err(|e| format_err(path, e))?;
    Ok(bytes)
}

/// Rewrites the `__metadata__` object of a safetensors file that `safetensors::serialize`
/// wrote with `meta`, its entries sorted by key. The crate writes the metadata in the order of
/// a `HashMap`, which is random per process, so the same state gave files of different bytes
/// (and digests) from one run to the next. The sorted object has the same entries and so the
/// same length: offsets and padding stay as they are.
fn sort_metadata(bytes: &mut [u8], meta: &HashMap<String, String>) -> Result<(), String> {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let sorted: std::collections::BTreeMap<&String, &String> = meta.iter().collect();
    let want = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    let start = 8 + PREFIX.len();
    if bytes.get(8..start) != Some(PREFIX) {
        return Err("safetensors header without leading metadata".into());
    }
    let region = bytes
        .get_mut(start..start + want.len())
        .ok_or("safetensors header shorter than its metadata")?;
    let written: HashMap<String, String> =
        serde_json::from_slice(region).map_err(|e| format!("metadata not where expected: {e}"))?;
    if &written != meta {
        return Err("metadata written differs from the metadata given".into());
    }
    region.copy_from_slice(&want);
    Ok(())
}

/// Saves `ckpt` as `dir/<stem>.safetensors`, `dir/<stem>.mask.safetensors` and
/// `dir/<stem>.json`; returns the three paths in that order.
pub fn save_checkpoint(dir: &Path, stem: &str, ckpt: &Checkpoint) -> Result<Vec<PathBuf>, NnError> {
    let program = ckpt.spec.program().map_err(NnError::Invalid)?;
    ckpt.weights.check(&ckpt.spec)?;
    ckpt.mask.check(&ckpt.spec)?;
    std::fs::create_dir_all(dir).map_err(io_err("create the directory of", dir))?;
    let st_path = dir.join(format!("{stem}.safetensors"));
    let mask_path = dir.join(format!("{stem}.mask.safetensors"));
    let json_path = dir.join(format!("{stem}.json"));

    let infos = program.params();
    let mut state: Vec<Buffer> = Vec::new();
    let mut masks: Vec<Buffer> = Vec::new();
    let mut layers = Vec::new();
    let mut mask_left = ckpt.mask.layers.iter();
    for (p, info) in ckpt.weights.params.iter().zip(&infos) {
        let shape = info.torch_shape();
        state.push((
            p.name.clone(),
            shape.clone(),
            Dtype::F32,
            f32_bytes(&to_torch(p.role, &p.shape, &p.data)),
        ));
        if p.is_prunable() {
            let m = mask_left.next().expect("mask checked against the spec");
            let kept = m.iter().filter(|&&k| k).count();
            layers.push(LayerInfo {
                name: p.name.clone(),
                shape: shape.clone(),
                density: if m.is_empty() {
                    1.0
                } else {
                    kept as f64 / m.len() as f64
                },
            });
            let bytes: Vec<u8> = m.iter().map(|&k| k as u8).collect();
            masks.push((
                p.name.clone(),
                shape,
                Dtype::U8,
                to_torch(p.role, &p.shape, &bytes),
            ));
        } else if let Some(m) = ckpt.mask.extra.get(&p.name) {
            masks.push((
                p.name.clone(),
                shape,
                Dtype::U8,
                m.iter().map(|&k| k as u8).collect(),
            ));
        }
    }
    for pair in ckpt.weights.buffers.chunks(2) {
        for b in pair {
            state.push((
                b.name.clone(),
                b.shape.clone(),
                Dtype::F32,
                f32_bytes(&b.data),
            ));
        }
        let layer = pair[0].name.trim_end_matches(".running_mean");
        state.push((
            format!("{layer}.num_batches_tracked"),
            vec![],
            Dtype::I64,
            (ckpt.step as i64).to_le_bytes().to_vec(),
        ));
    }
    let bytes = serialise(&st_path, &state)?;
    let mask_bytes = serialise(&mask_path, &masks)?;
    let side = SideCar {
        format_version: CHECKPOINT_FORMAT,
        spec: ckpt.spec.clone(),
        program,
        step: ckpt.step,
        seed: ckpt.seed,
        tensors: format!("{stem}.safetensors"),
        masks: format!("{stem}.mask.safetensors"),
        layers,
    };
    let json = serde_json::to_vec_pretty(&side).expect("side-car serialises");
    write_atomic(&st_path, &bytes)?;
    write_atomic(&mask_path, &mask_bytes)?;
    write_atomic(&json_path, &json)?;
    Ok(vec![st_path, mask_path, json_path])
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(io_err("read", path))
}

pub(super) fn tensor<'a>(
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

fn mask_bits(path: &Path, name: &str, m: &[u8]) -> Result<Vec<bool>, NnError> {
    if let Some(v) = m.iter().find(|&&v| v > 1) {
        return Err(format_err(
            path,
            format!("mask `{name}` holds {v}; masks hold 0 or 1"),
        ));
    }
    Ok(m.iter().map(|&v| v == 1).collect())
}

/// Loads a checkpoint written by [`save_checkpoint`] (format 2) or by an earlier version
/// (format 1), checking every tensor against the side-car's spec.
pub fn load_checkpoint(dir: &Path, stem: &str) -> Result<Checkpoint, NnError> {
    let json_path = dir.join(format!("{stem}.json"));
    let st_path = dir.join(format!("{stem}.safetensors"));
    let raw: serde_json::Value = serde_json::from_slice(&read(&json_path)?)
        .map_err(|e| format_err(&json_path, format!("cannot parse the side-car: {e}")))?;
    match raw
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(1) => load_v1(raw, &json_path, &st_path),
        Some(2) => load_v2(raw, dir, stem, &json_path, &st_path),
        Some(v) => Err(format_err(
            &json_path,
            format!(
                "format version {v} is not supported (this build reads versions 1 and \
                 {CHECKPOINT_FORMAT})"
            ),
        )),
        None => Err(format_err(
            &json_path,
            "cannot parse the side-car: no numeric `format_version`",
        )),
    }
}

fn load_v2(
    raw: serde_json::Value,
    dir: &Path,
    stem: &str,
    json_path: &Path,
    st_path: &Path,
) -> Result<Checkpoint, NnError> {
    let side: SideCar = serde_json::from_value(raw)
        .map_err(|e| format_err(json_path, format!("cannot parse the side-car: {e}")))?;
    let program = side
        .spec
        .program()
        .map_err(|e| format_err(json_path, format!("bad model spec: {e}")))?;
    if program != side.program {
        return Err(format_err(
            json_path,
            "its layer program does not match the spec's",
        ));
    }
    let infos = program.params();
    let listed: Vec<(&str, &[usize])> = side
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.shape.as_slice()))
        .collect();
    let torch_shapes: Vec<(String, Vec<usize>)> = infos
        .iter()
        .filter(|p| p.is_weight())
        .map(|p| (p.name.clone(), p.torch_shape()))
        .collect();
    let expected: Vec<(&str, &[usize])> = torch_shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    if listed != expected {
        return Err(format_err(
            json_path,
            format!("layer list {listed:?} does not match the spec's {expected:?}"),
        ));
    }
    let bytes = read(st_path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(st_path, format!("not a safetensors file: {e}")))?;
    let mask_path = dir.join(format!("{stem}.mask.safetensors"));
    let mask_bytes = read(&mask_path)?;
    let ms = SafeTensors::deserialize(&mask_bytes)
        .map_err(|e| format_err(&mask_path, format!("not a safetensors file: {e}")))?;
    let mut params = Vec::with_capacity(infos.len());
    let mut mask = Mask::default();
    for info in &infos {
        let shape = info.torch_shape();
        let data = f32s(tensor(&st, st_path, &info.name, Dtype::F32, &shape)?);
        if info.is_weight() {
            let m = tensor(&ms, &mask_path, &info.name, Dtype::U8, &shape)?;
            let m = from_torch(info.role, &info.shape, m);
            mask.layers.push(mask_bits(&mask_path, &info.name, &m)?);
        } else if ms.tensor(&info.name).is_ok() {
            let m = tensor(&ms, &mask_path, &info.name, Dtype::U8, &shape)?;
            mask.extra
                .insert(info.name.clone(), mask_bits(&mask_path, &info.name, m)?);
        }
        params.push(Param {
            name: info.name.clone(),
            data: from_torch(info.role, &info.shape, &data),
            shape: info.shape.clone(),
            role: info.role,
        });
    }
    let buffers = read_buffers(&st, st_path, side.spec.buffer_names())?;
    Ok(Checkpoint {
        spec: side.spec,
        weights: Weights { params, buffers },
        mask,
        step: side.step,
        seed: side.seed,
    })
}

/// The batch-norm running statistics `names` (name, channels) of a state dict.
fn read_buffers(
    st: &SafeTensors<'_>,
    path: &Path,
    names: Vec<(String, usize)>,
) -> Result<Vec<Named>, NnError> {
    names
        .into_iter()
        .map(|(name, c)| {
            let data = f32s(tensor(st, path, &name, Dtype::F32, &[c])?);
            Ok(Named {
                name,
                shape: vec![c],
                data,
            })
        })
        .collect()
}

/// The side-car another program (a user's PyTorch script) writes beside its state dict: the
/// model's spec (copied from the model it started from), and optionally its step, seed and
/// layer program; other fields (pipe's `layers`, `tensors`, ...) are ignored, since pipe
/// rewrites the side-car.
#[derive(Deserialize)]
struct ForeignSideCar {
    spec: ModelSpec,
    #[serde(default)]
    program: Option<Program>,
    #[serde(default)]
    step: u64,
    #[serde(default)]
    seed: u64,
}

/// Loads a model another program wrote in pipe's layout: `<stem>.json` with the spec,
/// `<stem>.safetensors` (a PyTorch state dict, f32; `num_batches_tracked` ignored) and,
/// optionally, `<stem>.mask.safetensors` (u8 0/1; a weight it leaves out, or a missing file,
/// is dense). Every tensor is checked against the spec's layer program, by name, dtype and
/// shape; a tensor the program does not have is an error, so that a renamed layer is caught
/// here rather than trained around.
pub fn load_foreign(dir: &Path, stem: &str) -> Result<Checkpoint, NnError> {
    let json_path = dir.join(format!("{stem}.json"));
    let st_path = dir.join(format!("{stem}.safetensors"));
    let side: ForeignSideCar = serde_json::from_slice(&read(&json_path)?).map_err(|e| {
        format_err(
            &json_path,
            format!("cannot parse it: {e}; it needs the `spec` of the model it was built from (copy it from that model's {stem}.json)"),
        )
    })?;
    let program = side
        .spec
        .program()
        .map_err(|e| format_err(&json_path, format!("bad model spec: {e}")))?;
    if side.program.as_ref().is_some_and(|p| *p != program) {
        return Err(format_err(
            &json_path,
            "its `program` does not match its `spec`'s; copy both from the input model's side-car, or leave `program` out",
        ));
    }
    let infos = program.params();
    let buffers_expected = side.spec.buffer_names();
    let bytes = read(&st_path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(&st_path, format!("not a safetensors file: {e}")))?;
    let known = |n: &str| {
        infos.iter().any(|i| i.name == n)
            || buffers_expected.iter().any(|(b, _)| b == n)
            || n.ends_with(".num_batches_tracked")
    };
    let mut extra: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !known(n))
        .map(String::from)
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(format_err(
            &st_path,
            format!(
                "tensors {extra:?} are not parameters of the model its side-car describes (the names must be the input model's: {})",
                infos
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mask_path = dir.join(format!("{stem}.mask.safetensors"));
    let mask_bytes = if mask_path.exists() {
        Some(read(&mask_path)?)
    } else {
        None
    };
    let ms = match &mask_bytes {
        Some(b) => Some(
            SafeTensors::deserialize(b)
                .map_err(|e| format_err(&mask_path, format!("not a safetensors file: {e}")))?,
        ),
        None => None,
    };
    if let Some(ms) = &ms {
        let mut stray: Vec<String> = ms
            .names()
            .into_iter()
            .filter(|n| !infos.iter().any(|i| i.name == *n))
            .map(String::from)
            .collect();
        if !stray.is_empty() {
            stray.sort();
            return Err(format_err(
                &mask_path,
                format!("masks {stray:?} are not parameters of the model"),
            ));
        }
    }
    let mut params = Vec::with_capacity(infos.len());
    let mut mask = Mask::default();
    for info in &infos {
        let shape = info.torch_shape();
        let data = f32s(tensor(&st, &st_path, &info.name, Dtype::F32, &shape)?);
        let given = match &ms {
            Some(ms) if ms.tensor(&info.name).is_ok() => {
                let m = tensor(ms, &mask_path, &info.name, Dtype::U8, &shape)?;
                Some(mask_bits(
                    &mask_path,
                    &info.name,
                    &from_torch(info.role, &info.shape, m),
                )?)
            }
            _ => None,
        };
        if info.is_weight() {
            mask.layers
                .push(given.unwrap_or_else(|| vec![true; data.len()]));
        } else if let Some(m) = given {
            mask.extra.insert(info.name.clone(), m);
        }
        params.push(Param {
            name: info.name.clone(),
            data: from_torch(info.role, &info.shape, &data),
            shape: info.shape.clone(),
            role: info.role,
        });
    }
    let buffers = read_buffers(&st, &st_path, buffers_expected)?;
    Ok(Checkpoint {
        spec: side.spec,
        weights: Weights { params, buffers },
        mask,
        step: side.step,
        seed: side.seed,
    })
}

/// Format 1: MLPs only; `fcK.weight` `[in, out]`, `fcK.bias`, `fcK.mask` in one file.
fn load_v1(
    raw: serde_json::Value,
    json_path: &Path,
    st_path: &Path,
) -> Result<Checkpoint, NnError> {
    let side: SideCarV1 = serde_json::from_value(raw)
        .map_err(|e| format_err(json_path, format!("cannot parse the side-car: {e}")))?;
    side.spec
        .validate()
        .map_err(|e| format_err(json_path, format!("bad model spec: {e}")))?;
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
    if listed != expected || side.spec.params().len() != 2 * names.len() {
        return Err(format_err(
            json_path,
            format!("layer list {listed:?} does not match the spec's {expected:?}"),
        ));
    }
    let bytes = read(st_path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(st_path, format!("not a safetensors file: {e}")))?;
    let mut params = Vec::new();
    let mut mask = Vec::new();
    for (name, &(i, o)) in names.iter().zip(&dims) {
        let w = tensor(&st, st_path, &format!("{name}.weight"), Dtype::F32, &[i, o])?;
        let b = tensor(&st, st_path, &format!("{name}.bias"), Dtype::F32, &[o])?;
        let m = tensor(&st, st_path, &format!("{name}.mask"), Dtype::U8, &[i, o])?;
        mask.push(mask_bits(st_path, &format!("{name}.mask"), m)?);
        params.push(Param {
            name: format!("{name}.weight"),
            shape: vec![i, o],
            role: ParamRole::LinearWeight,
            data: f32s(w),
        });
        params.push(Param {
            name: format!("{name}.bias"),
            shape: vec![o],
            role: ParamRole::Bias,
            data: f32s(b),
        });
    }
    Ok(Checkpoint {
        spec: side.spec,
        weights: Weights {
            params,
            buffers: vec![],
        },
        mask: Mask::new(mask),
        step: side.step,
        seed: side.seed,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_written_in_key_order_whatever_the_hash_order() {
        let buffers: Vec<super::Buffer> = vec![(
            "w".into(),
            vec![2],
            Dtype::F32,
            [1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )];
        let path = std::path::Path::new("t.safetensors");
        let files: Vec<Vec<u8>> = (0..16)
            .map(|_| {
                // A new map each time: a new random iteration order.
                let meta: HashMap<String, String> = ["step", "optimizer", "b", "zeta", "a"]
                    .iter()
                    .map(|k| (k.to_string(), format!("v-{k}")))
                    .collect();
                serialise_with(path, &buffers, meta).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]));
        let n = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&files[0][8..8 + n]).unwrap();
        assert!(
            header.starts_with(&format!(
                "{{\"__metadata__\":{{\"a\":\"v-a\",\"b\":\"v-b\",\"format_version\":\"{CHECKPOINT_FORMAT}\",\"optimizer\":\"v-optimizer\",\"step\":\"v-step\",\"zeta\":\"v-zeta\"}}"
            )),
            "{header}"
        );
        let st = SafeTensors::deserialize(&files[0]).unwrap();
        assert_eq!(st.tensor("w").unwrap().data().len(), 8);
    }

    use super::*;
    use crate::nn::arch::ResnetSpec;
    use crate::nn::{InitScheme, init_weights};

    fn sample() -> Checkpoint {
        let spec = ModelSpec::mlp(vec![5, 4, 3]);
        let mut weights = init_weights(&spec, InitScheme::KaimingNormal, 11);
        weights.params[3].data = vec![1e-30, -0.0, f32::MIN_POSITIVE];
        weights.params[0].data[2] = -0.0;
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

    fn bits(w: &Weights) -> Vec<u32> {
        w.params
            .iter()
            .flat_map(|p| &p.data)
            .chain(w.buffers.iter().flat_map(|b| &b.data))
            .map(|x| x.to_bits())
            .collect()
    }

    #[test]
    fn filter_level_masks_round_trip_and_old_files_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        save_checkpoint(dir.path(), "old", &c).unwrap();
        assert!(
            load_checkpoint(dir.path(), "old")
                .unwrap()
                .mask
                .extra
                .is_empty()
        );
        c.mask
            .extra
            .insert("fc1.bias".into(), vec![true, false, true, true]);
        c.weights.apply_mask(&c.mask);
        save_checkpoint(dir.path(), "ckpt", &c).unwrap();
        let back = load_checkpoint(dir.path(), "ckpt").unwrap();
        assert_eq!(back.mask, c.mask);
        assert_eq!(back.weights.params[1].data[1], 0.0);
    }

    #[test]
    fn round_trip_is_bit_exact_and_the_state_dict_is_pytorchs() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        let paths = save_checkpoint(dir.path(), "ckpt", &c).unwrap();
        assert_eq!(
            paths,
            vec![
                dir.path().join("ckpt.safetensors"),
                dir.path().join("ckpt.mask.safetensors"),
                dir.path().join("ckpt.json")
            ]
        );
        let back = load_checkpoint(dir.path(), "ckpt").unwrap();
        assert_eq!(back, c);
        assert_eq!(bits(&back.weights), bits(&c.weights));
        // PyTorch layout: fc1.weight is [out, in]; element (o, i) is burn's (i, o).
        let bytes = std::fs::read(&paths[0]).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
        let w = st.tensor("fc1.weight").unwrap();
        assert_eq!(w.shape(), [4, 5]);
        let torch = f32s(w.data());
        assert_eq!(
            torch[2 * 5 + 3].to_bits(),
            c.weights.params[0].data[3 * 4 + 2].to_bits()
        );
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths[2]).unwrap()).unwrap();
        assert_eq!(side["step"], 1234);
        assert_eq!(side["format_version"], 2);
        assert_eq!(side["spec"]["widths"], serde_json::json!([5, 4, 3]));
        assert_eq!(side["layers"][0]["density"], 19.0 / 20.0);
        assert_eq!(side["layers"][1]["name"], "fc2.weight");
        assert_eq!(side["layers"][1]["shape"], serde_json::json!([3, 4]));
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn conv_model_round_trip_keeps_batch_norm_statistics() {
        let spec = ModelSpec::Resnet(ResnetSpec::standard(8));
        let mut weights = init_weights(&spec, InitScheme::KaimingNormal, 2);
        for (k, b) in weights.buffers.iter_mut().enumerate() {
            b.data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (k * 100 + i) as f32 / 7.0);
        }
        let mut mask = Mask::dense(&spec);
        mask.layers[1][17] = false;
        let c = Checkpoint {
            spec,
            weights,
            mask,
            step: 390,
            seed: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let paths = save_checkpoint(dir.path(), "m", &c).unwrap();
        let back = load_checkpoint(dir.path(), "m").unwrap();
        assert_eq!(bits(&back.weights), bits(&c.weights));
        assert_eq!(back, c);
        let bytes = std::fs::read(&paths[0]).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("layer1.0.bn2.num_batches_tracked").unwrap();
        assert_eq!((t.dtype(), t.shape().len()), (Dtype::I64, 0));
        assert_eq!(i64::from_le_bytes(t.data().try_into().unwrap()), 390);
        assert_eq!(st.tensor("conv1.weight").unwrap().shape(), [16, 3, 3, 3]);
        assert_eq!(st.tensor("fc.weight").unwrap().shape(), [10, 64]);
        // Every parameter and buffer a torch ResNet-8 has, and nothing else: 3 + 3 × 5 (conv
        // weights, bn weight/bias/mean/var/count) × … counted from the spec.
        let bn_layers = c.spec.buffer_names().len() / 2;
        assert_eq!(st.names().len(), c.spec.params().len() + 3 * bn_layers);
    }

    /// Writes a format-1 checkpoint as earlier versions of `pipe` did.
    fn write_v1(dir: &Path, c: &Checkpoint) {
        let mut buffers: Vec<Buffer> = Vec::new();
        let mut layers = Vec::new();
        let dims = c.spec.layer_dims();
        for (k, ((i, o), m)) in dims.iter().zip(&c.mask.layers).enumerate() {
            let name = format!("fc{}", k + 1);
            let (w, b) = (&c.weights.params[2 * k], &c.weights.params[2 * k + 1]);
            buffers.push((
                format!("{name}.weight"),
                vec![*i, *o],
                Dtype::F32,
                f32_bytes(&w.data),
            ));
            buffers.push((
                format!("{name}.bias"),
                vec![*o],
                Dtype::F32,
                f32_bytes(&b.data),
            ));
            let mb = m.iter().map(|&k| k as u8).collect();
            buffers.push((format!("{name}.mask"), vec![*i, *o], Dtype::U8, mb));
            layers
                .push(serde_json::json!({"name": name, "in_dim": i, "out_dim": o, "density": 1.0}));
        }
        std::fs::write(
            dir.join("old.safetensors"),
            serialise(dir, &buffers).unwrap(),
        )
        .unwrap();
        let side = serde_json::json!({
            "format_version": 1, "spec": c.spec, "step": c.step, "seed": c.seed,
            "tensors": "old.safetensors", "layers": layers,
        });
        std::fs::write(dir.join("old.json"), side.to_string()).unwrap();
    }

    #[test]
    fn format_1_checkpoints_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        write_v1(dir.path(), &c);
        let back = load_checkpoint(dir.path(), "old").unwrap();
        assert_eq!(back, c);
        assert_eq!(bits(&back.weights), bits(&c.weights));
    }

    fn write_with(dir: &Path, file: &str, edit: impl FnOnce(&mut Vec<Buffer>)) {
        let c = sample();
        save_checkpoint(dir, "c", &c).unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut ts: Vec<Buffer> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), v.dtype(), v.data().to_vec()))
            .collect();
        edit(&mut ts);
        std::fs::write(dir.join(file), serialise(dir, &ts).unwrap()).unwrap();
    }

    fn load_err(dir: &Path) -> String {
        let e = load_checkpoint(dir, "c").unwrap_err().to_string();
        assert!(
            e.contains("c.safetensors") || e.contains("c.json") || e.contains("c.mask.safetensors"),
            "must name the file: {e}"
        );
        e
    }

    #[test]
    fn invalid_tensors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let st = "c.safetensors";
        let ms = "c.mask.safetensors";
        write_with(dir.path(), st, |ts| ts.retain(|t| t.0 != "fc2.bias"));
        assert!(load_err(dir.path()).contains("tensor `fc2.bias` is missing"));
        write_with(dir.path(), st, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.weight").unwrap();
            t.1 = vec![5, 4];
        });
        assert!(load_err(dir.path()).contains("`fc1.weight` has shape [5, 4], expected [4, 5]"));
        write_with(dir.path(), ms, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.weight").unwrap();
            t.2 = Dtype::I8;
        });
        assert!(load_err(dir.path()).contains("`fc1.weight` has dtype I8, expected U8"));
        write_with(dir.path(), ms, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == "fc1.weight").unwrap();
            t.3[0] = 7;
        });
        assert!(load_err(dir.path()).contains("holds 7"));
        std::fs::write(dir.path().join(st), b"garbage").unwrap();
        assert!(load_err(dir.path()).contains("not a safetensors file"));
        std::fs::remove_file(dir.path().join(st)).unwrap();
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
            s.replace("\"format_version\": 2", "\"format_version\": 9"),
        )
        .unwrap();
        assert!(load_err(dir.path()).contains("format version 9"));
        std::fs::write(&p, s.replace("\"fc2.weight\"", "\"out.weight\"")).unwrap();
        assert!(load_err(dir.path()).contains("does not match the spec"));
        std::fs::write(&p, s.replace("\"d_out\": 3", "\"d_out\": 2")).unwrap();
        assert!(load_err(dir.path()).contains("program does not match"));
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
