//! Reader and writer for the IDX format (the container of the MNIST files).
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type
//! supported here), the number of dimensions, then one big-endian `u32` per
//! dimension, then the data in row-major order. Files may be gzip-compressed;
//! compression is detected from the gzip magic bytes, not from the file name.

use std::io::{Read, Write};
use std::path::Path;

use super::split::{Inputs, Normalization, Split, Targets};
use super::{DataError, Dataset};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const IDX_TYPE_U8: u8 = 0x08;

/// Reads a whole file, turning "not found" into [`DataError::Missing`].
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                advice: "put the file there or point the stage's `data.dir` at the folder that \
                         holds it"
                    .into(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads an IDX file of unsigned bytes, gzip-compressed or raw.
pub fn read_idx_u8(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = read_file(path)?;
    parse_idx_u8(path, &bytes)
}

/// The IDX bytes of a file's content: gunzipped when it starts with the gzip magic, as is
/// otherwise. `path` is only used in error messages.
pub fn decompress<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, DataError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Parses the bytes of an IDX file (gzip-compressed or raw); `path` is only used
/// in error messages.
pub fn parse_idx_u8(path: &Path, bytes: &[u8]) -> Result<IdxArray, DataError> {
    let decompressed = decompress(path, bytes)?;
    let body: &[u8] = &decompressed;
    parse_raw(path, body)
}

fn parse_raw(path: &Path, body: &[u8]) -> Result<IdxArray, DataError> {
    let bad = |problem: String| DataError::Format {
        path: path.to_path_buf(),
        format: "IDX",
        problem,
    };
    if body.len() < 4 {
        return Err(bad(format!(
            "the file is {} bytes long, shorter than the 4-byte IDX header",
            body.len()
        )));
    }
    if body[0] != 0 || body[1] != 0 {
        return Err(bad(format!(
            "bad magic number {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 <ndims>)",
            body[0], body[1], body[2], body[3]
        )));
    }
    if body[2] != IDX_TYPE_U8 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            body[2]
        )));
    }
    let ndims = body[3] as usize;
    if ndims == 0 {
        return Err(bad("the header declares 0 dimensions".into()));
    }
    let header_len = 4 + 4 * ndims;
    if body.len() < header_len {
        return Err(bad(format!(
            "truncated header: {ndims} dimensions need {header_len} header bytes, the file has {}",
            body.len()
        )));
    }
    let dims: Vec<usize> = body[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let actual = body.len() - header_len;
    if actual < expected {
        return Err(bad(format!(
            "truncated: dimensions {dims:?} need {expected} data bytes, the file has {actual}"
        )));
    }
    if actual > expected {
        return Err(bad(format!(
            "{} trailing bytes after the {expected} data bytes of dimensions {dims:?}",
            actual - expected
        )));
    }
    Ok(IdxArray {
        dims,
        data: body[header_len..].to_vec(),
    })
}

/// An image dataset stored as four IDX files in MNIST's layout: training images and labels,
/// test images and labels, one channel of `side × side` pixels.
pub(crate) struct IdxDataset {
    pub title: &'static str,
    /// Train images, train labels, test images, test labels.
    pub files: [&'static str; 4],
    /// BLAKE3 of the *decompressed* content of each file, so that every faithful copy
    /// passes, however it was compressed.
    pub blake3: [&'static str; 4],
    pub side: usize,
    pub classes: usize,
    pub mean: f32,
    pub std: f32,
    /// Where the files come from, for the "missing file" message.
    pub obtain: &'static str,
}

/// Loads an [`IdxDataset`] from `dir`; with `verify`, every file's digest must be the
/// pinned one.
pub(crate) fn load_idx_dataset(
    dir: &Path,
    verify: bool,
    d: &IdxDataset,
) -> Result<Dataset, DataError> {
    let paths: Vec<std::path::PathBuf> = d.files.iter().map(|f| dir.join(f)).collect();
    let mut arrays = Vec::with_capacity(4);
    for (i, path) in paths.iter().enumerate() {
        let bytes = read_file(path).map_err(|e| e.advise(d.obtain))?;
        let bytes = decompress(path, &bytes)?;
        if verify {
            let actual = blake3::hash(&bytes).to_hex().to_string();
            if actual != d.blake3[i] {
                return Err(DataError::Checksum {
                    path: path.clone(),
                    dataset: d.title,
                    actual,
                    expected: d.blake3[i].to_string(),
                });
            }
        }
        arrays.push(parse_raw(path, &bytes)?);
    }
    let mut it = arrays.into_iter();
    let mut next = || it.next().expect("four arrays");
    let (tri, trl, tei, tel) = (next(), next(), next(), next());
    Ok(Dataset {
        train: idx_split(d, &paths[0], tri, &paths[1], trl)?,
        test: idx_split(d, &paths[2], tei, &paths[3], tel)?,
    })
}

fn idx_split(
    d: &IdxDataset,
    img_path: &Path,
    images: IdxArray,
    lbl_path: &Path,
    labels: IdxArray,
) -> Result<Split, DataError> {
    let format = |path: &Path, problem: String| DataError::Format {
        path: path.to_path_buf(),
        format: "IDX",
        problem,
    };
    if images.dims.len() != 3 || images.dims[1] != d.side || images.dims[2] != d.side {
        return Err(format(
            img_path,
            format!(
                "image file has dimensions {:?}, expected [n, {}, {}]",
                images.dims, d.side, d.side
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(format(
            lbl_path,
            format!("label file has dimensions {:?}, expected [n]", labels.dims),
        ));
    }
    let (n_images, n_labels) = (images.dims[0], labels.dims[0]);
    if n_images != n_labels {
        return Err(DataError::CountMismatch {
            images: img_path.to_path_buf(),
            n_images,
            labels: lbl_path.to_path_buf(),
            n_labels,
        });
    }
    if let Some((index, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= d.classes)
    {
        return Err(DataError::BadLabel {
            path: lbl_path.to_path_buf(),
            dataset: d.title,
            index,
            label,
            classes: d.classes,
        });
    }
    Split::new(
        Inputs::u8(
            images.data,
            [1, d.side, d.side],
            Normalization::new(&[d.mean], &[d.std]),
        ),
        Targets::classes(labels.data, d.classes),
    )
}

/// Writes `data` with shape `dims` as a gzip-compressed IDX file of unsigned bytes.
pub fn write_idx_u8_gz(path: &Path, dims: &[usize], data: &[u8]) -> Result<(), DataError> {
    let invalid = |msg: String| DataError::Invalid(format!("writing {}: {msg}", path.display()));
    if dims.is_empty() || dims.len() > 255 {
        return Err(invalid(format!(
            "an IDX file needs 1 to 255 dimensions, got {}",
            dims.len()
        )));
    }
    let expected: usize = dims.iter().product();
    if expected != data.len() {
        return Err(invalid(format!(
            "dimensions {dims:?} need {expected} bytes, got {}",
            data.len()
        )));
    }
    let mut header = vec![0u8, 0, IDX_TYPE_U8, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| invalid(format!("dimension {d} exceeds u32")))?;
        header.extend_from_slice(&d.to_be_bytes());
    }
    let werr = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(werr)?;
    let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    enc.write_all(&header).map_err(werr)?;
    enc.write_all(data).map_err(werr)?;
    enc.finish().map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn round_trip_gz() {
        let dir = tmp();
        let p = dir.path().join("a.gz");
        let data: Vec<u8> = (0..24).collect();
        write_idx_u8_gz(&p, &[2, 3, 4], &data).unwrap();
        let a = read_idx_u8(&p).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, data);
    }

    #[test]
    fn raw_file_is_read() {
        let dir = tmp();
        let p = dir.path().join("raw-idx1-ubyte");
        let mut bytes = vec![0, 0, 8, 1, 0, 0, 0, 3];
        bytes.extend_from_slice(&[7, 8, 9]);
        std::fs::write(&p, &bytes).unwrap();
        let a = read_idx_u8(&p).unwrap();
        assert_eq!(
            a,
            IdxArray {
                dims: vec![3],
                data: vec![7, 8, 9]
            }
        );
    }

    fn err_of(bytes: &[u8]) -> String {
        let dir = tmp();
        let p = dir.path().join("bad-file");
        std::fs::write(&p, bytes).unwrap();
        let e = read_idx_u8(&p).unwrap_err().to_string();
        assert!(e.contains("bad-file"), "error must name the file: {e}");
        e
    }

    #[test]
    fn truncated_overlong_and_bad_magic_are_errors() {
        let e = err_of(&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2]);
        assert!(
            e.contains("truncated") && e.contains("need 3 data bytes, the file has 2"),
            "{e}"
        );
        let e = err_of(&[0, 0, 8, 1, 0, 0, 0, 1, 1, 2]);
        assert!(e.contains("1 trailing bytes"), "{e}");
        let e = err_of(&[1, 0, 8, 1, 0, 0, 0, 1, 1]);
        assert!(e.contains("bad magic number 01 00 08 01"), "{e}");
        let e = err_of(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 1]);
        assert!(e.contains("element type 0x0d"), "{e}");
        let e = err_of(&[0, 0, 8, 2, 0, 0, 0, 1]);
        assert!(e.contains("truncated header"), "{e}");
        let e = err_of(&[0, 0]);
        assert!(e.contains("shorter than the 4-byte IDX header"), "{e}");
    }

    #[test]
    fn bad_gzip_and_missing_file() {
        let e = err_of(&[0x1f, 0x8b, 8, 0, 1, 2, 3]);
        assert!(e.contains("cannot be decompressed"), "{e}");
        // A valid gzip stream cut in half.
        let dir = tmp();
        let p = dir.path().join("cut.gz");
        write_idx_u8_gz(&p, &[1000], &vec![3u8; 1000]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_idx_u8(&p).unwrap_err();
        assert!(matches!(e, DataError::Gzip { .. }), "{e}");
        let missing = dir.path().join("nope.gz");
        let e = read_idx_u8(&missing).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }));
        assert!(e.to_string().contains("nope.gz") && e.to_string().contains("does not exist"));
    }

    #[test]
    fn writer_rejects_wrong_length() {
        let dir = tmp();
        let e = write_idx_u8_gz(&dir.path().join("w.gz"), &[2, 2], &[1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("need 4 bytes, got 3"), "{e}");
    }
}
