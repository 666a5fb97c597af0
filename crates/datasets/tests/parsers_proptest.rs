//! Property tests: the parsers see random bytes and truncated valid files and must return
//! errors, never panic, and never accept a truncated file.

use std::path::Path;

use eabs_datasets::idx::{decompress_if_gzip, encode_idx, gzip, parse_idx};
use eabs_datasets::mat::parse_mat;
use eabs_datasets::mat::write::{mat_file, Values};
use eabs_datasets::svhn::parse_svhn;
use eabs_datasets::traffic::sources::{parse_dfg_json, parse_gt_csv, Source};
use eabs_datasets::traffic::ClassMap;
use proptest::prelude::*;

fn valid_idx() -> Vec<u8> {
    encode_idx(&[3, 4, 5], &(0..60).collect::<Vec<u8>>()).unwrap()
}

fn valid_mat(compressed: bool) -> Vec<u8> {
    let x = vec![7u8; 3072 * 2];
    mat_file(
        &[
            ("X", &[32, 32, 3, 2], Values::U8(&x)),
            ("y", &[2, 1], Values::F64(&[1.0, 10.0])),
        ],
        compressed,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn idx_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let p = Path::new("fuzz.idx");
        let _ = parse_idx(&bytes, p);
        if let Ok(d) = decompress_if_gzip(bytes.clone(), p) { let _ = parse_idx(&d, p); }
        let mut with_magic = vec![0, 0, 8, (bytes.first().copied().unwrap_or(1) % 5)];
        with_magic.extend_from_slice(&bytes);
        let _ = parse_idx(&with_magic, p);
    }

    #[test]
    fn idx_truncated_is_an_error(cut in 0usize..76) {
        let v = valid_idx();
        prop_assert!(parse_idx(&v[..cut], Path::new("t")).is_err());
        let gz = gzip(&v);
        let gcut = cut * gz.len() / 76;
        let r = decompress_if_gzip(gz[..gcut].to_vec(), Path::new("t")).and_then(|d| parse_idx(&d, Path::new("t")));
        prop_assert!(r.is_err());
    }

    #[test]
    fn mat_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400), compressed in any::<bool>()) {
        let p = Path::new("fuzz.mat");
        let _ = parse_mat(&bytes, p, &|_| true);
        // A valid header followed by garbage, to get past the magic checks.
        let mut v = valid_mat(compressed)[..128].to_vec();
        v.extend_from_slice(&bytes);
        let _ = parse_mat(&v, p, &|_| true);
        let _ = parse_svhn(&v, p);
    }

    #[test]
    fn mat_truncated_or_flipped(cut_frac in 0.0f64..1.0, flip in 0usize..100_000, compressed in any::<bool>()) {
        let v = valid_mat(compressed);
        let cut = 128 + ((v.len() - 128) as f64 * cut_frac) as usize;
        prop_assert!(parse_svhn(&v[..cut], Path::new("t")).is_err());
        let mut f = v.clone();
        let i = 128 + flip % (f.len() - 128);
        f[i] ^= 0xa5;
        let _ = parse_svhn(&f, Path::new("t"));
    }

    #[test]
    fn text_formats_random(text in "\\PC{0,200}") {
        let p = Path::new("fuzz");
        let _ = parse_gt_csv(&text, p, p, p, Source::Gtsrb, false);
        let _ = parse_gt_csv(&format!("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n{text}"), p, p, p, Source::Bts, true);
        let _ = parse_dfg_json(&text, p, p, p, false);
        let _ = ClassMap::parse(&text, p);
    }

    #[test]
    fn csv_numbers_random(w in any::<i64>(), h in any::<i64>(), x1 in any::<i64>(), y1 in any::<i64>(), x2 in any::<i64>(), y2 in any::<i64>(), c in any::<i64>()) {
        let p = Path::new("GT.csv");
        let text = format!("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;{w};{h};{x1};{y1};{x2};{y2};{c}\n");
        if let Ok(s) = parse_gt_csv(&text, p, p, p, Source::Gtsrb, false) {
            prop_assert!(s[0].bbox.width() > 0 && s[0].bbox.x1 <= s[0].image_size.0);
        }
    }
}
