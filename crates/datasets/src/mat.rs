//! A reader for MATLAB level 5 MAT-files (the format of SVHN's `train_32x32.mat` and
//! `test_32x32.mat`), following MathWorks' "MAT-File Format" specification (2019), chapter 1.
//!
//! Supported: both byte orders; top-level `miMATRIX` elements, plain or inside `miCOMPRESSED`
//! (zlib) elements; the small-data-element form of tags; every real numeric class (`double`,
//! `single`, `int8` .. `uint64`), whatever numeric type MATLAB chose to store the values in (it
//! stores a `double` array of small integers as `miUINT8`, for instance). Cell, struct, object,
//! char, sparse and complex arrays are skipped when the caller does not ask for them and reported
//! as unsupported when it does; MAT-files v7.3 (HDF5) and v4 are reported as unsupported.
//!
//! Arrays keep MATLAB's column-major order: element `(i, j, k, ..)` of an array with dimensions
//! `(d0, d1, d2, ..)` is at `i + d0 * (j + d1 * (k + ..))`.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// MATLAB array classes (the low byte of the array flags), spec Table 1-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatClass {
    /// `double`.
    Double,
    /// `single`.
    Single,
    /// `int8`.
    Int8,
    /// `uint8`.
    Uint8,
    /// `int16`.
    Int16,
    /// `uint16`.
    Uint16,
    /// `int32`.
    Int32,
    /// `uint32`.
    Uint32,
    /// `int64`.
    Int64,
    /// `uint64`.
    Uint64,
}

impl MatClass {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            6 => MatClass::Double,
            7 => MatClass::Single,
            8 => MatClass::Int8,
            9 => MatClass::Uint8,
            10 => MatClass::Int16,
            11 => MatClass::Uint16,
            12 => MatClass::Int32,
            13 => MatClass::Uint32,
            14 => MatClass::Int64,
            15 => MatClass::Uint64,
            _ => return None,
        })
    }
}

fn class_code_name(code: u8) -> &'static str {
    match code {
        1 => "cell",
        2 => "struct",
        3 => "object",
        4 => "char",
        5 => "sparse",
        6 => "double",
        7 => "single",
        8 => "int8",
        9 => "uint8",
        10 => "int16",
        11 => "uint16",
        12 => "int32",
        13 => "uint32",
        14 => "int64",
        15 => "uint64",
        16 => "function handle",
        17 => "opaque",
        _ => "unknown",
    }
}

/// A numeric array read from a MAT-file.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    /// The variable name.
    pub name: String,
    /// The MATLAB class.
    pub class: MatClass,
    /// Dimensions, MATLAB order.
    pub dims: Vec<usize>,
    /// The values, column-major.
    pub data: MatData,
}

/// Values of a numeric array. `U8` keeps `uint8` arrays (SVHN's images) compact; every other
/// class is widened to `f64`, exact for all values MATLAB stores in classes up to 32 bits.
#[derive(Debug, Clone, PartialEq)]
pub enum MatData {
    /// Class `uint8`.
    U8(Vec<u8>),
    /// Any other numeric class.
    F64(Vec<f64>),
}

impl MatData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            MatData::U8(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as bytes, checking each is an integer in `0..=255`; `what` and `path` name the
    /// array in errors.
    pub fn to_u8_exact(&self, path: &Path, what: &str) -> Result<Vec<u8>> {
        match self {
            MatData::U8(v) => Ok(v.clone()),
            MatData::F64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if x.fract() == 0.0 && (0.0..=255.0).contains(&x) {
                        Ok(x as u8)
                    } else {
                        Err(Error::mismatch(
                            path,
                            format!("{what} value at column-major index {i}"),
                            "an integer in 0..=255",
                            x,
                        ))
                    }
                })
                .collect(),
        }
    }
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

struct Reader<'a> {
    path: &'a Path,
    endian: Endian,
}

impl Reader<'_> {
    fn u32_at(&self, b: &[u8], at: usize) -> Result<u32> {
        let s = b
            .get(at..at + 4)
            .ok_or_else(|| Error::length(self.path, "MAT tag", (at + 4) as u64, b.len() as u64))?;
        let a = [s[0], s[1], s[2], s[3]];
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        })
    }

    /// Reads one data element at `*pos` of `b`: returns its type and payload and moves `*pos`
    /// past it (payload padded to 8 bytes; a small element takes 8 bytes in all).
    fn element<'b>(&self, b: &'b [u8], pos: &mut usize, pad: bool) -> Result<(u32, &'b [u8])> {
        let first = self.u32_at(b, *pos)?;
        if first >> 16 != 0 {
            // Small data element: 2 bytes of size, 2 of type, then at most 4 bytes of data.
            let n = (first >> 16) as usize;
            let ty = first & 0xffff;
            if n > 4 {
                return Err(Error::malformed(
                    self.path,
                    format!(
                        "small data element at byte {} declares {n} bytes (at most 4)",
                        *pos
                    ),
                ));
            }
            let data = b.get(*pos + 4..*pos + 4 + n).ok_or_else(|| {
                Error::length(
                    self.path,
                    "small data element",
                    (*pos + 8) as u64,
                    b.len() as u64,
                )
            })?;
            *pos += 8;
            return Ok((ty, data));
        }
        let n = self.u32_at(b, *pos + 4)? as usize;
        let start = *pos + 8;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| {
                Error::length(
                    self.path,
                    format!("data element of type {first} at byte {}", *pos),
                    (start as u64).saturating_add(n as u64),
                    b.len() as u64,
                )
            })?;
        *pos = if pad { (end + 7) & !7 } else { end };
        Ok((first, &b[start..end]))
    }

    fn numeric(&self, ty: u32, data: &[u8], class: MatClass) -> Result<MatData> {
        let size = match ty {
            MI_INT8 | MI_UINT8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            _ => {
                return Err(Error::Unsupported {
                    path: self.path.to_path_buf(),
                    what: "numeric data type".into(),
                    found: ty.to_string(),
                    supported: "miINT8..miUINT64, miSINGLE, miDOUBLE".into(),
                })
            }
        };
        if data.len() % size != 0 {
            return Err(Error::malformed(
                self.path,
                format!(
                    "{} bytes of data type {ty} is not a multiple of {size}",
                    data.len()
                ),
            ));
        }
        if class == MatClass::Uint8 && ty == MI_UINT8 {
            return Ok(MatData::U8(data.to_vec()));
        }
        let e = self.endian;
        let word = |c: &[u8]| -> u64 {
            let mut a = [0u8; 8];
            match e {
                Endian::Little => {
                    a[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(a)
                }
                Endian::Big => {
                    a[8 - c.len()..].copy_from_slice(c);
                    u64::from_be_bytes(a)
                }
            }
        };
        let values: Vec<f64> = data
            .chunks_exact(size)
            .map(|c| {
                let w = word(c);
                match ty {
                    MI_INT8 => w as u8 as i8 as f64,
                    MI_UINT8 => w as u8 as f64,
                    MI_INT16 => w as u16 as i16 as f64,
                    MI_UINT16 => w as u16 as f64,
                    MI_INT32 => w as u32 as i32 as f64,
                    MI_UINT32 => w as u32 as f64,
                    MI_SINGLE => f32::from_bits(w as u32) as f64,
                    MI_INT64 => w as i64 as f64,
                    MI_UINT64 => w as f64,
                    _ => f64::from_bits(w),
                }
            })
            .collect();
        if class == MatClass::Uint8 {
            return MatData::F64(values)
                .to_u8_exact(self.path, "uint8 array")
                .map(MatData::U8);
        }
        Ok(MatData::F64(values))
    }

    /// Parses the payload of an `miMATRIX`; `Ok(None)` for an array not in `wanted`.
    fn matrix(&self, b: &[u8], wanted: &dyn Fn(&str) -> bool) -> Result<Option<MatArray>> {
        let mut pos = 0;
        let (ty, flags) = self.element(b, &mut pos, true)?;
        if ty != MI_UINT32 || flags.len() != 8 {
            return Err(Error::malformed(
                self.path,
                format!(
                    "array flags: expected miUINT32 of 8 bytes, found type {ty} of {} bytes",
                    flags.len()
                ),
            ));
        }
        let flag_word = self.u32_at(flags, 0)?;
        let class_code = (flag_word & 0xff) as u8;
        let complex = flag_word & 0x0800 != 0;
        let (ty, dims_raw) = self.element(b, &mut pos, true)?;
        if ty != MI_INT32 || dims_raw.len() % 4 != 0 || dims_raw.len() < 8 {
            return Err(Error::malformed(self.path, format!("dimensions: expected miINT32 with at least 2 values, found type {ty} of {} bytes", dims_raw.len())));
        }
        let dims = (0..dims_raw.len() / 4)
            .map(|i| {
                let d = self.u32_at(dims_raw, 4 * i)? as i32;
                usize::try_from(d)
                    .map_err(|_| Error::malformed(self.path, format!("negative dimension {d}")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let (ty, name_raw) = self.element(b, &mut pos, true)?;
        if ty != MI_INT8 && ty != MI_UINT8 {
            return Err(Error::malformed(
                self.path,
                format!("array name: expected miINT8, found type {ty}"),
            ));
        }
        let name = String::from_utf8_lossy(name_raw).into_owned();
        if !wanted(&name) {
            return Ok(None);
        }
        let class = MatClass::from_code(class_code).ok_or_else(|| Error::Unsupported {
            path: self.path.to_path_buf(),
            what: format!("class of variable `{name}`"),
            found: format!("{} ({class_code})", class_code_name(class_code)),
            supported: "numeric arrays (double, single, int8..uint64)".into(),
        })?;
        if complex {
            return Err(Error::Unsupported {
                path: self.path.to_path_buf(),
                what: format!("variable `{name}`"),
                found: "complex values".into(),
                supported: "real arrays".into(),
            });
        }
        let (ty, real) = self.element(b, &mut pos, true)?;
        let data = self.numeric(ty, real, class)?;
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::malformed(self.path, format!("dimensions {dims:?} overflow")))?;
        if data.len() != n {
            return Err(Error::mismatch(
                self.path,
                format!("number of values of `{name}` with dimensions {dims:?}"),
                n,
                data.len(),
            ));
        }
        Ok(Some(MatArray {
            name,
            class,
            dims,
            data,
        }))
    }
}

/// Parses a level 5 MAT-file held in `bytes`, returning the numeric arrays whose names satisfy
/// `wanted` (others are skipped unparsed). `path` names the file in errors.
pub fn parse_mat(
    bytes: &[u8],
    path: &Path,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<MatArray>> {
    if bytes.len() < 128 {
        return Err(Error::length(
            path,
            "MAT-file header",
            128,
            bytes.len() as u64,
        ));
    }
    if &bytes[..6] != b"MATLAB" {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            expected: "header text starting with \"MATLAB\" (MAT-file level 5)".into(),
            found: format!(
                "{:?}",
                String::from_utf8_lossy(&bytes[..6.min(bytes.len())])
            ),
        });
    }
    let endian = match &bytes[126..128] {
        b"IM" => Endian::Little,
        b"MI" => Endian::Big,
        other => {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                expected: "endian indicator \"IM\" or \"MI\" at byte 126".into(),
                found: format!("{other:?}"),
            })
        }
    };
    let version = match endian {
        Endian::Little => u16::from_le_bytes([bytes[124], bytes[125]]),
        Endian::Big => u16::from_be_bytes([bytes[124], bytes[125]]),
    };
    if version != 0x0100 {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: "MAT-file version".into(),
            found: format!("{version:#06x} (0x0200 is v7.3, an HDF5 file)"),
            supported: "0x0100 (level 5: MATLAB v5, v6, v7)".into(),
        });
    }
    let r = Reader { path, endian };
    let mut out = Vec::new();
    let mut pos = 128;
    while pos < bytes.len() {
        let (ty, payload) = r.element(bytes, &mut pos, false)?;
        match ty {
            MI_MATRIX => {
                pos = (pos + 7) & !7;
                out.extend(r.matrix(payload, wanted)?);
            }
            MI_COMPRESSED => {
                let mut inner = Vec::new();
                // Bounded like the gzip of IDX files: a zlib bomb stops at the cap.
                let cap = crate::idx::MAX_DECOMPRESSED;
                flate2::read::ZlibDecoder::new(payload)
                    .take(cap + 1)
                    .read_to_end(&mut inner)
                    .map_err(|e| {
                        Error::malformed(
                            path,
                            format!("miCOMPRESSED element does not inflate: {e}"),
                        )
                    })?;
                if inner.len() as u64 > cap {
                    return Err(Error::malformed(
                        path,
                        format!(
                            "miCOMPRESSED element inflates to more than {cap} bytes; refusing it"
                        ),
                    ));
                }
                let mut ipos = 0;
                let (ity, ipayload) = r.element(&inner, &mut ipos, true)?;
                if ity != MI_MATRIX {
                    return Err(Error::Unsupported {
                        path: path.to_path_buf(),
                        what: "element inside miCOMPRESSED".into(),
                        found: format!("type {ity}"),
                        supported: "miMATRIX (14)".into(),
                    });
                }
                out.extend(r.matrix(ipayload, wanted)?);
            }
            other => {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    what: "top-level element".into(),
                    found: format!("type {other}"),
                    supported: "miMATRIX (14), miCOMPRESSED (15)".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Reads a MAT-file from disk (see [`parse_mat`]).
pub fn read_mat(path: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<MatArray>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_mat(&bytes, path, wanted)
}

/// Writing MAT-files, for tests and fixtures: little-endian level 5, one `miMATRIX` per array,
/// optionally wrapped in `miCOMPRESSED`.
pub mod write {
    use std::io::Write;

    /// How the values of an array are stored.
    pub enum Values<'a> {
        /// `uint8` class stored as `miUINT8`.
        U8(&'a [u8]),
        /// `double` class stored as `miDOUBLE`.
        F64(&'a [f64]),
        /// `double` class stored as `miUINT8` (MATLAB's space saving for small integers).
        F64AsU8(&'a [u8]),
    }

    fn push_element(out: &mut Vec<u8>, ty: u32, data: &[u8]) {
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        while out.len() % 8 != 0 {
            out.push(0);
        }
    }

    /// The bytes of one `miMATRIX` element (tag included).
    pub fn matrix(name: &str, dims: &[usize], values: &Values<'_>) -> Vec<u8> {
        let (class, ty, data): (u32, u32, Vec<u8>) = match values {
            Values::U8(v) => (9, super::MI_UINT8, v.to_vec()),
            Values::F64(v) => (
                6,
                super::MI_DOUBLE,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Values::F64AsU8(v) => (6, super::MI_UINT8, v.to_vec()),
        };
        let mut body = Vec::new();
        push_element(
            &mut body,
            super::MI_UINT32,
            &[class.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        );
        let d: Vec<u8> = dims
            .iter()
            .flat_map(|&x| (x as i32).to_le_bytes())
            .collect();
        push_element(&mut body, super::MI_INT32, &d);
        if name.len() <= 4 {
            // Small data element form for short names, as MATLAB writes them.
            let mut small = Vec::new();
            small.extend_from_slice(&(((name.len() as u32) << 16) | super::MI_INT8).to_le_bytes());
            small.extend_from_slice(name.as_bytes());
            small.resize(8, 0);
            body.extend_from_slice(&small);
        } else {
            push_element(&mut body, super::MI_INT8, name.as_bytes());
        }
        push_element(&mut body, ty, &data);
        let mut out = Vec::new();
        push_element(&mut out, super::MI_MATRIX, &body);
        out
    }

    /// A whole MAT-file with the given `(name, dims, values)` arrays.
    pub fn mat_file(arrays: &[(&str, &[usize], Values<'_>)], compressed: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut text = b"MATLAB 5.0 MAT-file, written by eabs-datasets tests".to_vec();
        text.resize(116, b' ');
        out.extend_from_slice(&text);
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&0x0100u16.to_le_bytes());
        out.extend_from_slice(b"IM");
        for (name, dims, values) in arrays {
            let m = matrix(name, dims, values);
            if compressed {
                let mut enc =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                let _ = enc.write_all(&m);
                let z = enc.finish().unwrap_or_default();
                out.extend_from_slice(&super::MI_COMPRESSED.to_le_bytes());
                out.extend_from_slice(&(z.len() as u32).to_le_bytes());
                out.extend_from_slice(&z);
            } else {
                out.extend_from_slice(&m);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{mat_file, Values};
    use super::*;

    #[test]
    fn reads_compressed_and_plain_arrays() {
        for compressed in [false, true] {
            let x: Vec<u8> = (0..24).collect();
            let y = [1.0, 10.0, 3.5];
            let bytes = mat_file(
                &[
                    ("X", &[2, 3, 4], Values::U8(&x)),
                    ("label", &[3, 1], Values::F64(&y)),
                    ("skip", &[1, 2], Values::F64AsU8(&[7, 8])),
                ],
                compressed,
            );
            let p = Path::new("t.mat");
            let arrays = parse_mat(&bytes, p, &|n| n != "skip").unwrap();
            assert_eq!(arrays.len(), 2);
            assert_eq!(arrays[0].name, "X");
            assert_eq!(arrays[0].dims, vec![2, 3, 4]);
            assert_eq!(arrays[0].data, MatData::U8(x.clone()));
            assert_eq!(arrays[1].class, MatClass::Double);
            assert_eq!(arrays[1].data, MatData::F64(y.to_vec()));
            assert!(arrays[1]
                .data
                .to_u8_exact(p, "label")
                .unwrap_err()
                .to_string()
                .contains("3.5"));
            let all = parse_mat(&bytes, p, &|_| true).unwrap();
            assert_eq!(all[2].data, MatData::F64(vec![7.0, 8.0]));
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let p = Path::new("t.mat");
        let good = mat_file(&[("X", &[1, 2], Values::U8(&[1, 2]))], false);
        let mut v73 = good.clone();
        v73[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
        assert!(matches!(
            parse_mat(&v73, p, &|_| true),
            Err(Error::Unsupported { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            parse_mat(&bad, p, &|_| true),
            Err(Error::BadMagic { .. })
        ));
        // A cell array (class 1) named X.
        let mut cell = good.clone();
        cell[128 + 8 + 8] = 1;
        let e = parse_mat(&cell, p, &|_| true).unwrap_err().to_string();
        assert!(e.contains("cell") && e.contains("t.mat"), "{e}");
        assert!(parse_mat(&cell, p, &|n| n != "X").unwrap().is_empty());
        assert!(parse_mat(&good[..good.len() - 9], p, &|_| true).is_err());
    }
}
