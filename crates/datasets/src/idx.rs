//! The IDX format of MNIST and Fashion-MNIST (LeCun et al., <http://yann.lecun.com/exdb/mnist/>),
//! gzipped or not.
//!
//! An IDX file is a big-endian header `0x00 0x00 <type> <n_dims>`, then `n_dims` big-endian `u32`
//! sizes, then the data in row-major order. Only the unsigned-byte type (`0x08`) occurs in the
//! datasets we load, so it is the only one accepted; every other type code is reported as
//! unsupported rather than misread. The data length must equal the product of the sizes exactly:
//! a truncated download and a file with trailing bytes are both errors, never a shortened dataset.
//!
//! SuperTraffic-10's cache reuses the format with four dimensions, `(n, c, h, w)`.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// The IDX type code of unsigned bytes.
pub const IDX_UBYTE: u8 = 0x08;

/// The gzip magic bytes (RFC 1952, section 2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The sizes from the header, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

/// Reads a whole file, decompressing it when it starts with the gzip magic.
///
/// Decompression is decided by content, not by the file name, so a `.gz` that a tool already
/// unpacked, or an unpacked file that kept its `.gz` name, still loads.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gz_limited(path, MAX_DECOMPRESSED)
}

/// Largest decompressed file accepted when no manifest gives the size: 2 GiB, well above any
/// dataset file here (SVHN's extra set is 1.3 GB) and far below what a gzip bomb would reach.
pub const MAX_DECOMPRESSED: u64 = 2 << 30;

/// [`read_maybe_gz`] that fails as soon as the decompressed data exceed `limit` bytes.
pub fn read_maybe_gz_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decompress_if_gzip_limited(raw, path, limit)
}

/// Decompresses `raw` when it starts with the gzip magic; `path` names it in errors.
pub fn decompress_if_gzip(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    decompress_if_gzip_limited(raw, path, MAX_DECOMPRESSED)
}

/// [`decompress_if_gzip`] that stops after `limit + 1` decompressed bytes and fails, naming
/// the limit, instead of growing without bound.
pub fn decompress_if_gzip_limited(raw: Vec<u8>, path: &Path, limit: u64) -> Result<Vec<u8>> {
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        let cap = raw.len().saturating_mul(4).min(limit as usize + 1);
        let mut out = Vec::with_capacity(cap);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::malformed(path, format!("gzip stream is corrupt or truncated: {e}"))
            })?;
        if out.len() as u64 > limit {
            return Err(Error::malformed(
                path,
                format!(
                    "decompresses to more than {limit} bytes (the expected size); refusing to \
                     decompress further (a corrupt file or a gzip bomb)"
                ),
            ));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `path` only names the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::length(path, "IDX header", 4, bytes.len() as u64));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            expected: "0x0000 followed by a type code and a dimension count".into(),
            found: format!("{:#04x}{:02x}", bytes[0], bytes[1]),
        });
    }
    let type_code = bytes[2];
    if type_code != IDX_UBYTE {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: "IDX element type".into(),
            found: format!("{type_code:#04x}"),
            supported: "0x08 (unsigned byte)".into(),
        });
    }
    let n_dims = bytes[3] as usize;
    if n_dims == 0 {
        return Err(Error::malformed(path, "IDX header declares 0 dimensions"));
    }
    let header_len = 4 + 4 * n_dims;
    if bytes.len() < header_len {
        return Err(Error::length(
            path,
            "IDX header",
            header_len as u64,
            bytes.len() as u64,
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n_values = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::malformed(
                path,
                format!("IDX dimensions {dims:?} overflow the address space"),
            )
        })?;
    let found = bytes.len() - header_len;
    if found != n_values {
        return Err(Error::length(
            path,
            format!("IDX data for dimensions {dims:?}"),
            n_values as u64,
            found as u64,
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Reads and parses an IDX file, gzipped or not.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_maybe_gz(path)?, path)
}

/// Checks that `array` has exactly `n` dimensions.
pub fn expect_rank(array: &IdxArray, n: usize, path: &Path) -> Result<()> {
    if array.dims.len() != n {
        return Err(Error::mismatch(
            path,
            "number of IDX dimensions",
            n,
            array.dims.len(),
        ));
    }
    Ok(())
}

/// Serialises an unsigned-byte IDX array (uncompressed).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let n: usize = dims.iter().product();
    if n != data.len() || dims.is_empty() || dims.len() > 255 {
        return Err(Error::InvalidArgument {
            name: "dims".into(),
            detail: format!("dimensions {dims:?} do not describe {} bytes", data.len()),
        });
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, IDX_UBYTE, dims.len() as u8]);
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| Error::InvalidArgument {
            name: "dims".into(),
            detail: format!("dimension {d} does not fit the IDX header's u32"),
        })?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Gzips bytes with a fixed header (no file name, modification time 0), so that equal input
/// always gives equal output.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed,
/// then renamed over `path`, so a crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_gzip() {
        let data: Vec<u8> = (0..24).collect();
        let bytes = encode_idx(&[2, 3, 4], &data).unwrap();
        let p = Path::new("mem.idx");
        let a = parse_idx(&bytes, p).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, data);
        let gz = gzip(&bytes);
        assert_eq!(gz[..2], GZIP_MAGIC);
        assert_eq!(gzip(&bytes), gz, "gzip output must be deterministic");
        assert_eq!(decompress_if_gzip(gz, p).unwrap(), bytes);
    }

    #[test]
    fn errors_name_expected_and_found() {
        let p = Path::new("train-images-idx3-ubyte");
        let mut bytes = encode_idx(&[2, 2, 2], &[0; 8]).unwrap();
        bytes.pop();
        let msg = parse_idx(&bytes, p).unwrap_err().to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte") && msg.contains("expected 8 bytes, found 7"),
            "{msg}"
        );
        bytes.extend_from_slice(&[0, 0]);
        assert!(parse_idx(&bytes, p)
            .unwrap_err()
            .to_string()
            .contains("expected 8 bytes, found 9"));
        let mut bad = encode_idx(&[1], &[0]).unwrap();
        bad[0] = 0x12;
        assert!(matches!(parse_idx(&bad, p), Err(Error::BadMagic { .. })));
        let mut float = encode_idx(&[1], &[0]).unwrap();
        float[2] = 0x0d;
        assert!(matches!(
            parse_idx(&float, p),
            Err(Error::Unsupported { .. })
        ));
        let overflow = [
            0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(parse_idx(&overflow, p).is_err());
    }
}
