//! Every seed of an experiment, derived from the run's master seed by one rule each, so that
//! the same model under the same attack draws the same random numbers in every target: a cell of
//! Table 2, the same cell recomputed by `cargo xtask eval`, and the same model's PGD in Figure 3
//! all start from the same random points.
//!
//! Tables 1-4 fixed these rules first; the other targets index into them (Table 5 uses the
//! tables' PGD rows, Figures 3-5 the tables' PGD seeds), so numbers never change when a target
//! is reorganised.

use crate::suite::{AttackRow, ATTACK_ROWS, BEYOND_ROWS};

/// Seed of the test-sample subset and of data loading: the master seed itself.
pub fn subset(master: u64) -> u64 {
    master
}

/// Seed of the randomised inference of the model in column `column` (0-based) of an
/// experiment: `master + column`.
pub fn inference(master: u64, column: usize) -> u64 {
    master.wrapping_add(column as u64)
}

/// Seed of the attack in row `row` (0-based index into an experiment's attack rows, for Tables
/// 1-4 [`ATTACK_ROWS`]): `1000 * master + row`.
pub fn attack(master: u64, row: usize) -> u64 {
    master.wrapping_mul(1000).wrapping_add(row as u64)
}

/// Seed of the Tables 1-4 row `row` ([`attack`] at its index in [`ATTACK_ROWS`], then in
/// [`BEYOND_ROWS`] continuing the count), or `None` when the suite has no such row.
pub fn table_attack(master: u64, row: AttackRow) -> Option<u64> {
    ATTACK_ROWS
        .iter()
        .chain(BEYOND_ROWS.iter())
        .position(|r| *r == row)
        .map(|i| attack(master, i))
}

/// Seed of sanity check `check` (0-based) of a Tables 1-4 column on attack row `row`
/// ([`crate::ledger`]'s extra runs): [`attack`] at `200 + 20 * check + row`, apart from the
/// rows' own seeds.
pub fn check_attack(master: u64, check: usize, row: usize) -> u64 {
    attack(master, 200 + 20 * check + row)
}

/// Seed of the gradient-free check's row `row` (Section 5): [`attack`] at `100 + row`, apart
/// from the tables' rows.
pub fn gradient_free_attack(master: u64, row: usize) -> u64 {
    attack(master, 100 + row)
}

/// Seed of the second model instance that classifies the Boundary attack's starting-point pool
/// (its own call counter, so a resumed run draws the same points): `master + 0x9001 + column`.
pub fn pool(master: u64, column: usize) -> u64 {
    master.wrapping_add(0x9001).wrapping_add(column as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::AttackKind;
    use eabs_attacks::Norm;

    #[test]
    fn the_rules_tables_1_to_4_fixed() {
        assert_eq!(inference(7, 4), 11);
        assert_eq!(attack(7, 3), 7003);
        let l2_pgd = AttackRow::new(Norm::L2, AttackKind::Pgd);
        assert_eq!(table_attack(0, l2_pgd), Some(3));
        assert_eq!(
            table_attack(2, AttackRow::new(Norm::Linf, AttackKind::Pgd)),
            Some(2000)
        );
        assert_eq!(
            table_attack(0, AttackRow::new(Norm::Linf, AttackKind::Boundary)),
            None
        );
        assert_eq!(gradient_free_attack(1, 2), 1102);
        assert_eq!(
            table_attack(0, AttackRow::new(Norm::L2, AttackKind::ApgdDlr)),
            Some(11)
        );
        assert_eq!(check_attack(0, 1, 3), 223);
        assert_eq!(pool(0, 1), 0x9002);
    }
}
