//! Property tests of the invariants every McNemar / Clopper-Pearson implementation must keep:
//! p-values in [0, 1], symmetry in the two models, monotonicity in the imbalance of the
//! discordant pairs, intervals that contain the observed rate, and "ALL" rows that never beat
//! a single attack.

use eabs_stats::{
    accuracy, mcnemar, robust_to_all, Accuracy, Contingency, Method, PairwiseComparison,
};
use proptest::prelude::*;

const METHODS: [Method; 4] = [
    Method::Auto,
    Method::ChiSquared,
    Method::Exact,
    Method::MidP,
];

fn table() -> impl Strategy<Value = Contingency> {
    (0u64..2000, 0u64..3000, 0u64..3000, 0u64..2000)
        .prop_map(|(n00, n01, n10, n11)| Contingency::new(n00, n01, n10, n11))
}

proptest! {
    #[test]
    fn p_value_is_a_probability(t in table()) {
        for method in METHODS {
            let r = mcnemar(&t, method);
            prop_assert!((0.0..=1.0).contains(&r.p_value), "{method:?}: {r:?}");
            prop_assert!(r.statistic >= 0.0 && r.statistic.is_finite(), "{r:?}");
        }
    }

    #[test]
    fn swapping_the_models_changes_nothing(t in table()) {
        for method in METHODS {
            let ab = mcnemar(&t, method);
            let ba = mcnemar(&t.transpose(), method);
            prop_assert_eq!(ab.p_value, ba.p_value);
            prop_assert_eq!(ab.statistic, ba.statistic);
            prop_assert_eq!(ab.method, ba.method);
            prop_assert_eq!((ab.n01, ab.n10), (ba.n10, ba.n01));
        }
    }

    #[test]
    fn more_lopsided_tables_are_more_significant(n in 1u64..3000, k in 1u64..1500) {
        // Moving one discordant sample from the minority to the majority side never raises p.
        let k = k.min(n / 2);
        prop_assume!(k >= 1);
        for method in [Method::ChiSquared, Method::Exact, Method::MidP] {
            let balanced = mcnemar(&Contingency::new(0, k, n - k, 0), method).p_value;
            let lopsided = mcnemar(&Contingency::new(0, k - 1, n - k + 1, 0), method).p_value;
            prop_assert!(lopsided <= balanced, "{method:?} n={n} k={k}: {lopsided} > {balanced}");
        }
    }

    #[test]
    fn pairwise_matrices_are_symmetric(
        outcomes in prop::collection::vec(prop::collection::vec(any::<bool>(), 60), 2..6)
    ) {
        let names: Vec<String> = (0..outcomes.len()).map(|m| format!("model {m}")).collect();
        let cmp = PairwiseComparison::new(&names, &outcomes, 0.01, Method::Auto).unwrap();
        let p = cmp.p_values();
        for (i, row) in p.iter().enumerate() {
            prop_assert_eq!(row[i], 1.0);
            for (j, &p_ij) in row.iter().enumerate() {
                prop_assert_eq!(p_ij, p[j][i]);
                prop_assert!((0.0..=1.0).contains(&p_ij));
                prop_assert_eq!(cmp.is_significant(i, j), p_ij < 0.01);
            }
        }
        prop_assert_eq!(PairwiseComparison::from_json(&cmp.to_json()).unwrap(), cmp);
    }

    #[test]
    fn clopper_pearson_contains_the_rate(n in 1u64..5000, k in 0u64..5000, c in 0.5f64..0.999) {
        let k = k.min(n);
        let acc = Accuracy::from_counts(k, n, c).unwrap();
        prop_assert!(0.0 <= acc.lower && acc.lower <= acc.rate, "{acc:?}");
        prop_assert!(acc.rate <= acc.upper && acc.upper <= 1.0, "{acc:?}");
        if k > 0 && k < n {
            prop_assert!(acc.lower < acc.rate && acc.rate < acc.upper, "{acc:?}");
        }
        // Symmetry: k of n correct mirrors n - k of n wrong.
        let mirror = Accuracy::from_counts(n - k, n, c).unwrap();
        prop_assert!((acc.lower - (1.0 - mirror.upper)).abs() < 1e-9, "{acc:?} {mirror:?}");
    }

    #[test]
    fn clopper_pearson_bounds_solve_their_defining_equations(
        n in 2u64..20_000, k in 1u64..20_000, c in 0.8f64..0.999
    ) {
        // lower: P(Bin(n, lower) >= k) = a/2, i.e. Beta(k, n-k+1).cdf(lower) = a/2;
        // upper: P(Bin(n, upper) <= k) = a/2, i.e. Beta(k+1, n-k).sf(upper) = a/2.
        use statrs::distribution::{Beta, ContinuousCDF};
        let k = k.min(n - 1);
        let tail = (1.0 - c) / 2.0;
        let acc = Accuracy::from_counts(k, n, c).unwrap();
        let (kf, nf) = (k as f64, n as f64);
        let at_lower = Beta::new(kf, nf - kf + 1.0).unwrap().cdf(acc.lower);
        let at_upper = Beta::new(kf + 1.0, nf - kf).unwrap().sf(acc.upper);
        prop_assert!((at_lower / tail - 1.0).abs() < 1e-6, "{acc:?}: {at_lower} vs {tail}");
        prop_assert!((at_upper / tail - 1.0).abs() < 1e-6, "{acc:?}: {at_upper} vs {tail}");
    }

    #[test]
    fn all_attacks_never_beat_one_attack(
        per_attack in prop::collection::vec(prop::collection::vec(any::<bool>(), 50), 1..5)
    ) {
        let slices: Vec<&[bool]> = per_attack.iter().map(Vec::as_slice).collect();
        let all = robust_to_all(&slices).unwrap();
        let all_acc = accuracy(&all, 0.95).unwrap();
        for outcomes in &per_attack {
            prop_assert!(all_acc.correct <= accuracy(outcomes, 0.95).unwrap().correct);
        }
    }
}
