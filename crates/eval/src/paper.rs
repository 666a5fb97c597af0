//! The numbers the paper reports (Ju & Wagner 2020, Tables 1-5), printed beside ours in every
//! rendered table so a reader sees at a glance how a run compares.
//!
//! Transcribed from `shared/paper/e-abs.txt`. Accuracies in percent; `None` where the paper leaves
//! a cell out. Table 1's "DeepFool L2" for E-ABS is printed as "91.1" without a percent sign in the
//! paper; we read it as 91.1%. Table 2 reports 0.9% for E-ABS under L_inf noise although its
//! "ALL L_inf" row (43.5%) cannot exceed any single attack's row: an evident typo (89.x% would fit
//! the other noise rows), kept as printed and excluded from the consistency check below.

/// Column order of Tables 1-4.
pub const MODELS: [&str; 5] = ["CNN", "Adv-Linf", "Adv-L2", "ABS", "E-ABS"];

/// Row keys of Tables 1-4, in the paper's order: (norm, attack).
pub const ROWS: [(&str, &str); 11] = [
    ("none", "clean"),
    ("linf", "pgd"),
    ("linf", "deepfool"),
    ("linf", "noise"),
    ("linf", "all"),
    ("l2", "pgd"),
    ("l2", "ddn"),
    ("l2", "cw"),
    ("l2", "deepfool"),
    ("l2", "noise"),
    ("l2", "all"),
];

/// One of Tables 1-4: `accuracy[row][model]` in percent, rows as [`ROWS`], columns as [`MODELS`].
pub struct PaperTable {
    /// "table1" ... "table4".
    pub id: &'static str,
    /// Dataset the table evaluates.
    pub dataset: &'static str,
    /// Accuracy in percent.
    pub accuracy: [[f64; 5]; 11],
}

/// Table 1 (MNIST), Table 2 (Fashion-MNIST), Table 3 (SuperTraffic-10), Table 4 (SVHN).
pub const TABLES: [PaperTable; 4] = [
    PaperTable {
        id: "table1",
        dataset: "mnist",
        accuracy: [
            [99.5, 98.5, 98.6, 96.1, 99.4],
            [0.0, 90.4, 0.0, 3.4, 17.1],
            [17.4, 92.9, 43.8, 6.2, 31.0],
            [99.3, 98.4, 98.5, 95.8, 99.1],
            [0.0, 90.3, 0.0, 3.3, 16.5],
            [72.8, 88.4, 89.3, 75.2, 90.6],
            [62.3, 81.7, 87.5, 74.1, 91.4],
            [86.8, 91.2, 94.7, 82.8, 94.8],
            [83.8, 93.1, 92.2, 95.9, 91.1],
            [99.3, 98.5, 98.6, 74.4, 99.4],
            [61.8, 81.5, 87.5, 73.7, 90.4],
        ],
    },
    PaperTable {
        id: "table2",
        dataset: "fashion-mnist",
        accuracy: [
            [91.0, 88.9, 87.4, 81.6, 90.1],
            [9.4, 57.0, 56.0, 46.2, 43.5],
            [25.9, 64.9, 63.2, 47.7, 45.7],
            [90.5, 88.9, 86.5, 81.4, 0.9],
            [9.4, 57.0, 55.7, 45.8, 43.5],
            [19.1, 51.9, 59.2, 46.6, 43.3],
            [13.4, 46.6, 57.2, 45.4, 49.9],
            [30.7, 61.0, 63.6, 50.7, 54.1],
            [28.9, 56.4, 60.4, 46.4, 44.3],
            [90.9, 88.8, 87.1, 81.2, 89.6],
            [13.2, 45.9, 55.1, 45.2, 41.7],
        ],
    },
    PaperTable {
        id: "table3",
        dataset: "supertraffic-10",
        accuracy: [
            [99.0, 91.4, 91.6, 84.9, 92.7],
            [29.8, 74.3, 60.2, 53.4, 70.9],
            [48.1, 74.9, 64.6, 54.5, 82.1],
            [99.1, 91.7, 91.6, 84.8, 91.7],
            [29.8, 73.7, 59.9, 53.2, 69.8],
            [14.8, 46.2, 53.7, 48.0, 66.1],
            [9.3, 44.6, 52.4, 47.1, 73.0],
            [14.5, 51.0, 54.5, 47.0, 73.8],
            [33.0, 49.0, 56.6, 48.7, 93.3],
            [98.6, 91.6, 91.4, 86.3, 73.8],
            [8.7, 44.3, 52.2, 46.3, 59.9],
        ],
    },
    PaperTable {
        id: "table4",
        dataset: "svhn",
        accuracy: [
            [91.3, 89.0, 87.1, 45.8, 89.2],
            [0.0, 37.2, 26.7, 6.6, 57.0],
            [0.1, 50.4, 36.6, 8.4, 64.1],
            [90.7, 89.0, 87.0, 45.7, 89.3],
            [0.0, 37.2, 26.7, 6.6, 55.7],
            [0.0, 5.1, 13.4, 4.4, 40.9],
            [0.0, 3.7, 11.6, 4.3, 57.8],
            [0.0, 5.5, 13.7, 4.5, 47.6],
            [0.0, 13.4, 19.1, 4.7, 51.6],
            [90.0, 89.4, 87.4, 43.5, 88.8],
            [0.0, 3.6, 10.9, 4.3, 36.0],
        ],
    },
];

/// Column order of Table 5 (the ablation study on SVHN).
pub const ABLATIONS: [&str; 8] = [
    "ABS", "A-ABS", "D-ABS", "V-ABS", "AD-ABS", "AV-ABS", "DV-ABS", "E-ABS",
];

/// Table 5: rows as [`TABLE5_ROWS`], columns as [`ABLATIONS`]. Its ABS and E-ABS columns repeat
/// Table 4's numbers (the same models).
pub const TABLE5: [[f64; 8]; 3] = [
    [45.8, 23.7, 44.9, 44.1, 30.8, 60.1, 65.7, 89.2],
    [6.6, 6.4, 8.4, 2.5, 2.3, 11.0, 18.9, 57.0],
    [4.4, 5.9, 5.6, 2.1, 1.5, 8.2, 14.0, 40.9],
];

/// Row keys of Table 5: clean, PGD-Linf (8/255), PGD-L2 (1.5).
pub const TABLE5_ROWS: [(&str, &str); 3] = [("none", "clean"), ("linf", "pgd"), ("l2", "pgd")];

/// Section 5's gradient-free results for E-ABS on SVHN, the only two numbers the paper gives:
/// "E-ABS has 92.0% accuracy under Boundary attack and 88.0% accuracy under L_inf PGD attack
/// with gradient estimators" (the sentence is split by Table 2 in the text). Keys are
/// `(model, norm, attack)` as `reproduce gradient-free` names its rows. The paper states no
/// epsilon for the Boundary number; we read it at Table 4's L_2 epsilon (1.5). It exceeds
/// Table 4's clean accuracy (89.2%), so it was presumably measured on another sample or draw.
pub const GRADIENT_FREE: [(&str, &str, &str, f64); 2] = [
    ("E-ABS", "l2", "boundary", 92.0),
    ("E-ABS", "linf", "nes-pgd", 88.0),
];

/// The paper's number for a table cell, if it reports one: Tables 1-4, `table5` (columns as
/// [`ABLATIONS`]) and `gradient-free` ([`GRADIENT_FREE`]).
pub fn paper_accuracy(table_id: &str, model: &str, norm: &str, attack: &str) -> Option<f64> {
    match table_id {
        "table5" => {
            let col = ABLATIONS.iter().position(|m| *m == model)?;
            let row = TABLE5_ROWS.iter().position(|r| *r == (norm, attack))?;
            return Some(TABLE5[row][col]);
        }
        "gradient-free" => {
            return GRADIENT_FREE
                .iter()
                .find(|(m, n, a, _)| (*m, *n, *a) == (model, norm, attack))
                .map(|g| g.3);
        }
        _ => {}
    }
    let table = TABLES.iter().find(|t| t.id == table_id)?;
    let col = MODELS.iter().position(|m| *m == model)?;
    let row = ROWS.iter().position(|r| *r == (norm, attack))?;
    Some(table.accuracy[row][col])
}

/// The paper's cell lookup for the rows of `table_id`, as [`crate::report::build`] takes it;
/// `shown: false` (an experiment run on another dataset than the paper's) shows none.
pub fn cells(table_id: &str, shown: bool) -> impl Fn(&str, crate::RowKey) -> Option<f64> + '_ {
    move |model, row| {
        shown
            .then(|| paper_accuracy(table_id, model, row.norm_str(), row.attack_str()))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_match_the_paper() {
        // Table 4, E-ABS under PGD Linf: 57% (the headline SVHN number of Section 5).
        assert_eq!(paper_accuracy("table4", "E-ABS", "linf", "pgd"), Some(57.0));
        // Table 2, Adv-L2 under ALL L2: 55.1%.
        assert_eq!(paper_accuracy("table2", "Adv-L2", "l2", "all"), Some(55.1));
        assert_eq!(paper_accuracy("table9", "CNN", "none", "clean"), None);
        // The "ALL" row can never exceed any single attack's row of the same norm.
        for t in &TABLES {
            for col in 0..5 {
                let typo = t.id == "table2" && MODELS[col] == "E-ABS";
                let linf_rows: Vec<f64> = (1..4)
                    .filter(|&row| !(typo && row == 3))
                    .map(|row| t.accuracy[row][col])
                    .collect();
                assert!(t.accuracy[4][col] <= linf_rows.iter().copied().fold(f64::MAX, f64::min));
                assert!(
                    t.accuracy[10][col]
                        <= t.accuracy[5..10]
                            .iter()
                            .map(|r| r[col])
                            .fold(f64::MAX, f64::min)
                );
            }
        }
        assert_eq!(TABLE5[1][7], 57.0);
        // Table 5: DV-ABS under PGD-L2 is 14%; its ABS and E-ABS columns are Table 4's.
        assert_eq!(paper_accuracy("table5", "DV-ABS", "l2", "pgd"), Some(14.0));
        assert_eq!(paper_accuracy("table5", "CNN", "none", "clean"), None);
        for (row, key) in TABLE5_ROWS.iter().enumerate() {
            for m in ["ABS", "E-ABS"] {
                let col = ABLATIONS.iter().position(|c| *c == m).unwrap();
                assert_eq!(
                    Some(TABLE5[row][col]),
                    paper_accuracy("table4", m, key.0, key.1)
                );
            }
        }
        assert_eq!(
            paper_accuracy("gradient-free", "E-ABS", "l2", "boundary"),
            Some(92.0)
        );
        assert_eq!(
            paper_accuracy("gradient-free", "CNN", "l2", "boundary"),
            None
        );
    }
}
