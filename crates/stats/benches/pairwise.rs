//! Timings of the paper-sized workload and of the worst cases, so a regression (say, an exact
//! test that sums all `n` binomial terms) shows up. Run with
//! `cargo bench -p eabs-stats --bench pairwise`.
//!
//! Inputs are pseudo-random but seeded: a SplitMix64 stream (no extra dependency), so every run
//! times the same tables.

use std::hint::black_box;
use std::time::Instant;

use eabs_stats::{mcnemar, Accuracy, AttackTypeReport, ComparisonConfig, Contingency, Method};

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny seeded generator for reproducible inputs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn bernoulli(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// Runs `f` `iters` times and prints the best of 5 rounds, per call.
fn bench(name: &str, iters: u32, mut f: impl FnMut()) {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(start.elapsed().as_secs_f64() / f64::from(iters));
    }
    println!("{name:<60} {:>12.3} us", best * 1e6);
}

/// `outcomes[model][attack][sample]` with per-model robust rates.
fn outcomes(
    rng: &mut SplitMix64,
    rates: &[f64],
    n_attacks: usize,
    n_samples: usize,
) -> Vec<Vec<Vec<bool>>> {
    rates
        .iter()
        .map(|&r| {
            (0..n_attacks)
                .map(|_| (0..n_samples).map(|_| rng.bernoulli(r)).collect())
                .collect()
        })
        .collect()
}

fn main() {
    let mut rng = SplitMix64(0x00E4_AB55);

    // The paper's setting: 5 models, 5 L_2 attacks, 1000 samples (Table 1).
    let rates = [0.7, 0.85, 0.9, 0.75, 0.92];
    let names = ["CNN", "ADV-Linf", "ADV-L2", "ABS", "E-ABS"];
    let attacks = ["PGD", "DDN", "CW", "DeepFool", "Noise"];
    let paper = outcomes(&mut rng, &rates, attacks.len(), 1000);
    bench(
        "AttackTypeReport, 5 models x 5 attacks x 1000 samples",
        200,
        || {
            let report =
                AttackTypeReport::new("L_2", &names, &attacks, &paper, ComparisonConfig::paper());
            black_box(report.map(|r| r.to_markdown()).ok());
        },
    );

    // Many models, many samples: 20 models x 1 attack x 100k samples (190 pairs).
    let rates: Vec<f64> = (0..20).map(|m| 0.3 + 0.03 * m as f64).collect();
    let names: Vec<String> = (0..20).map(|m| format!("model {m}")).collect();
    let big = outcomes(&mut rng, &rates, 1, 100_000);
    bench(
        "AttackTypeReport, 20 models x 1 attack x 100k samples",
        3,
        || {
            let report =
                AttackTypeReport::new("L_inf", &names, &["PGD"], &big, ComparisonConfig::paper());
            black_box(report.ok());
        },
    );

    // Worst cases of the tests themselves.
    for n in [1_000u64, 1_000_000, 100_000_000] {
        let table = Contingency::new(0, n / 2 - 1, n / 2 + 1, 0);
        bench(
            &format!("exact McNemar, {n} balanced discordant pairs"),
            20,
            || {
                black_box(mcnemar(black_box(&table), Method::Exact));
            },
        );
    }
    bench("chi-squared McNemar, 1000 discordant pairs", 10_000, || {
        black_box(mcnemar(
            black_box(&Contingency::new(0, 480, 520, 0)),
            Method::ChiSquared,
        ));
    });
    for n in [1_000u64, 1_000_000] {
        bench(&format!("Clopper-Pearson 95%, {n} samples"), 200, || {
            black_box(Accuracy::from_counts(black_box(n * 9 / 10), n, 0.95).ok());
        });
    }
}
