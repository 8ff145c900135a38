//! Reader and writer for the IDX format (the container of the MNIST files).
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type
//! supported here), the number of dimensions, then one big-endian `u32` per
//! dimension, then the data in row-major order. Files may be gzip-compressed;
//! compression is detected from the gzip magic bytes, not from the file name.

use std::io::{Read, Write};
use std::path::Path;

use super::DataError;

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
