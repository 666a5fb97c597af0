//! SVHN cropped digits (Netzer et al. 2011, <http://ufldl.stanford.edu/housenumbers/>): the
//! MATLAB files `train_32x32.mat` (73,257 images) and `test_32x32.mat` (26,032 images).
//!
//! `X` is a `32 x 32 x 3 x N` uint8 array in MATLAB's column-major order, so pixel (row r,
//! column c, channel ch) of image n sits at `r + 32 c + 1024 ch + 3072 n`; we transpose each
//! plane into row-major NCHW. `y` is `N x 1` with labels 1..=10 where 10 means the digit 0 (the
//! dataset's convention); we map 10 to 0 so that label `d` means digit `d`, as torchvision does.

use std::path::Path;

use crate::error::{Error, Result};
use crate::mat::{parse_mat, MatArray, MatData};

/// Images (NCHW, `3 x 32 x 32` each) and labels (digits 0..=9) parsed from SVHN MAT bytes.
pub fn parse_svhn(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut arrays = parse_mat(bytes, path, &|n| n == "X" || n == "y")?;
    let mut take = |name: &str| -> Result<MatArray> {
        let i = arrays.iter().position(|a| a.name == name).ok_or_else(|| {
            Error::malformed(
                path,
                format!(
                    "variable `{name}` not found (an SVHN cropped-digits file has `X` and `y`)"
                ),
            )
        })?;
        Ok(arrays.swap_remove(i))
    };
    let x = take("X")?;
    let y = take("y")?;
    if x.dims.len() != 4 || x.dims[..3] != [32, 32, 3] {
        return Err(Error::mismatch(
            path,
            "dimensions of X",
            "[32, 32, 3, N]",
            format!("{:?}", x.dims),
        ));
    }
    let n = x.dims[3];
    let y_n: usize = y.dims.iter().product();
    if y.dims.len() != 2 || y_n != n || (y.dims[0] != 1 && y.dims[1] != 1) {
        return Err(Error::mismatch(
            path,
            "dimensions of y",
            format!("[{n}, 1] (one label per image of X)"),
            format!("{:?}", y.dims),
        ));
    }
    let xs = match x.data {
        MatData::U8(v) => v,
        other => other.to_u8_exact(path, "X")?,
    };
    let ys = y.data.to_u8_exact(path, "y")?;
    let mut labels = Vec::with_capacity(n);
    for (i, &l) in ys.iter().enumerate() {
        match l {
            10 => labels.push(0),
            1..=9 => labels.push(l),
            _ => {
                return Err(Error::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index: i,
                    label: l.to_string(),
                    expected: "1..=10 (10 means digit 0)".into(),
                })
            }
        }
    }
    let mut images = vec![0u8; n * 3 * 32 * 32];
    for img in 0..n {
        for ch in 0..3 {
            let src = &xs[(img * 3 + ch) * 1024..(img * 3 + ch + 1) * 1024];
            let dst = &mut images[(img * 3 + ch) * 1024..(img * 3 + ch + 1) * 1024];
            for r in 0..32 {
                for c in 0..32 {
                    dst[r * 32 + c] = src[c * 32 + r];
                }
            }
        }
    }
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mat::write::{mat_file, Values};

    /// Two images; pixel (r, c, ch) of image n holds (r + 2c + 5ch + 11n) mod 256, written
    /// column-major like MATLAB.
    fn fixture(y: &[f64], compressed: bool) -> Vec<u8> {
        let n = y.len();
        let mut x = vec![0u8; 32 * 32 * 3 * n];
        for img in 0..n {
            for ch in 0..3 {
                for c in 0..32 {
                    for r in 0..32 {
                        x[r + 32 * c + 1024 * ch + 3072 * img] =
                            ((r + 2 * c + 5 * ch + 11 * img) % 256) as u8;
                    }
                }
            }
        }
        mat_file(
            &[
                ("X", &[32, 32, 3, n], Values::U8(&x)),
                ("y", &[n, 1], Values::F64(y)),
            ],
            compressed,
        )
    }

    #[test]
    fn transposes_column_major_and_maps_ten_to_zero() {
        for compressed in [false, true] {
            let (images, labels) =
                parse_svhn(&fixture(&[10.0, 3.0], compressed), Path::new("t.mat")).unwrap();
            assert_eq!(labels, vec![0, 3]);
            // NCHW: image 1, channel 2, row 4, column 7.
            assert_eq!(
                images[((3 + 2) * 32 + 4) * 32 + 7],
                (4 + 14 + 10 + 11) as u8
            );
            assert_eq!(
                images[5], 10,
                "image 0, channel 0, row 0, column 5 is 2 * 5"
            );
        }
    }

    #[test]
    fn bad_labels_and_shapes_are_errors() {
        let p = Path::new("train_32x32.mat");
        let e = parse_svhn(&fixture(&[11.0, 1.0], false), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train_32x32.mat") && e.contains("label 11"),
            "{e}"
        );
        assert!(parse_svhn(&fixture(&[0.0], false), p).is_err());
        let x = vec![0u8; 32 * 32 * 3 * 2];
        let short_y = mat_file(
            &[
                ("X", &[32, 32, 3, 2], Values::U8(&x)),
                ("y", &[1, 1], Values::F64(&[1.0])),
            ],
            false,
        );
        assert!(parse_svhn(&short_y, p)
            .unwrap_err()
            .to_string()
            .contains("dimensions of y"));
        let no_y = mat_file(&[("X", &[32, 32, 3, 2], Values::U8(&x))], true);
        assert!(parse_svhn(&no_y, p)
            .unwrap_err()
            .to_string()
            .contains("`y`"));
    }
}
