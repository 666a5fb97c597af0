//! The attack rows of Tables 1-4 and the paper's attack settings at a preset's sizes.

use anyhow::{bail, Result};
use candle_core::Tensor;
use eabs_attacks::{
    attack_fixed, attack_min, AdditiveGaussianNoise, AdditiveNoiseConfig, CarliniWagnerL2,
    Criterion, CwConfig, Ddn, DdnConfig, DeepFool, DeepFoolConfig, FixedEpsilonAttack,
    MinimizationAttack, Norm, Outcome, Pgd, PgdConfig,
};
use eabs_core::{Classifier, Differentiable};

use super::evaluate::{evaluate, BatchResult};
use super::preset::EvalSizes;
use super::provenance::Timer;

/// One row of Tables 1-4: an attack and the norm it is bounded in.
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    /// `linf` or `l2`.
    pub norm: &'static str,
    /// `pgd`, `deepfool`, `noise`, `ddn` or `cw`.
    pub attack: &'static str,
}

impl RowSpec {
    /// The row's norm.
    pub fn norm(&self) -> Norm {
        if self.norm == "linf" {
            Norm::Linf
        } else {
            Norm::L2
        }
    }
}

/// The attack rows of Tables 1-4 in the paper's order (clean and the ALL rows are added around).
pub const ATTACK_ROWS: [RowSpec; 8] = [
    RowSpec {
        norm: "linf",
        attack: "pgd",
    },
    RowSpec {
        norm: "linf",
        attack: "deepfool",
    },
    RowSpec {
        norm: "linf",
        attack: "noise",
    },
    RowSpec {
        norm: "l2",
        attack: "pgd",
    },
    RowSpec {
        norm: "l2",
        attack: "ddn",
    },
    RowSpec {
        norm: "l2",
        attack: "cw",
    },
    RowSpec {
        norm: "l2",
        attack: "deepfool",
    },
    RowSpec {
        norm: "l2",
        attack: "noise",
    },
];

/// The paper's PGD (Section 4.2) at the preset's steps and restarts (`None`: the paper's number
/// of random starts for the dataset), its step sized to the steps
/// ([`PgdConfig::paper_sized`]: the paper's total path whatever the number of steps).
pub fn pgd_config(
    sizes: &EvalSizes,
    ds: eabs_attacks::paper::Dataset,
    norm: Norm,
    seed: u64,
) -> PgdConfig {
    let restarts = sizes.pgd_restarts.unwrap_or_else(|| ds.pgd_random_starts());
    PgdConfig {
        seed,
        ..PgdConfig::paper_sized(norm, sizes.pgd_steps, restarts)
    }
}

fn deepfool_config(sizes: &EvalSizes, norm: Norm) -> DeepFoolConfig {
    DeepFoolConfig {
        steps: sizes.deepfool_steps,
        ..DeepFoolConfig::paper(norm)
    }
}

fn ddn_config(sizes: &EvalSizes) -> DdnConfig {
    DdnConfig {
        steps: sizes.ddn_steps,
        ..DdnConfig::paper()
    }
}

fn cw_config(sizes: &EvalSizes) -> CwConfig {
    CwConfig::paper_sized(sizes.cw_binary_steps, sizes.cw_steps)
}

fn noise_config(sizes: &EvalSizes, norm: Norm, seed: u64) -> AdditiveNoiseConfig {
    AdditiveNoiseConfig {
        steps: sizes.noise_steps,
        seed,
        norm,
        ..AdditiveNoiseConfig::paper()
    }
}

/// The exact configuration of the attack of `row` (what [`run_row_at`] runs), for the
/// settings a journal is bound to: a change of an attack's derived parameters (a step-size
/// rule, say) must not resume journals of the old attack.
pub fn row_config(
    row: RowSpec,
    sizes: &EvalSizes,
    ds: eabs_attacks::paper::Dataset,
    seed: u64,
) -> Result<serde_json::Value> {
    let norm = row.norm();
    Ok(match row.attack {
        "pgd" => serde_json::to_value(pgd_config(sizes, ds, norm, seed))?,
        "deepfool" => serde_json::to_value(deepfool_config(sizes, norm))?,
        "ddn" => serde_json::to_value(ddn_config(sizes))?,
        "cw" => serde_json::to_value(cw_config(sizes))?,
        "noise" => serde_json::to_value(noise_config(sizes, norm, seed))?,
        other => bail!("unknown attack row {other}"),
    })
}

/// Per-sample (robust, distance) of attack outcomes, one row per epsilon.
pub fn rows_of(outcomes: &[Outcome]) -> BatchResult {
    outcomes
        .iter()
        .map(|o| {
            o.success
                .iter()
                .zip(&o.distances)
                .map(|(&s, &d)| (!s, d))
                .collect()
        })
        .collect()
}

/// Runs a fixed-epsilon attack at `eps`.
pub fn fixed<M: Differentiable + ?Sized, A: FixedEpsilonAttack<M>>(
    a: &A,
    m: &M,
    xs: &Tensor,
    c: &Criterion,
    eps: f64,
) -> Result<BatchResult> {
    Ok(rows_of(&attack_fixed(a, m, xs, c, &[eps])?))
}

/// Runs a minimisation attack and judges it at `eps`.
pub fn minimise<M: Classifier + ?Sized, A: MinimizationAttack<M>>(
    a: &A,
    m: &M,
    xs: &Tensor,
    c: &Criterion,
    eps: f64,
) -> Result<BatchResult> {
    Ok(rows_of(&attack_min(a, m, xs, c, &[eps])?))
}

/// Runs one attack row on a batch at the dataset's epsilon. Callers wrap a randomised model in
/// EOT first (Section 4.2: 5 samples per gradient in the paper).
#[allow(clippy::too_many_arguments)]
pub fn run_row<M: Differentiable + ?Sized>(
    row: RowSpec,
    sizes: &EvalSizes,
    ds: eabs_attacks::paper::Dataset,
    model: &M,
    xs: &Tensor,
    labels: &[u32],
    seed: u64,
) -> Result<BatchResult> {
    run_row_at(
        row,
        sizes,
        ds,
        model,
        xs,
        labels,
        seed,
        ds.epsilon(row.norm()),
    )
}

/// [`run_row`] at an epsilon of the caller's choice (`cargo xtask eval --epsilon`).
#[allow(clippy::too_many_arguments)]
pub fn run_row_at<M: Differentiable + ?Sized>(
    row: RowSpec,
    sizes: &EvalSizes,
    ds: eabs_attacks::paper::Dataset,
    model: &M,
    xs: &Tensor,
    labels: &[u32],
    seed: u64,
    eps: f64,
) -> Result<BatchResult> {
    let c = Criterion::misclassification(labels.to_vec());
    let norm = row.norm();
    match row.attack {
        "pgd" => fixed(
            &Pgd::new(pgd_config(sizes, ds, norm, seed))?,
            model,
            xs,
            &c,
            eps,
        ),
        "deepfool" => minimise(
            &DeepFool::new(deepfool_config(sizes, norm))?,
            model,
            xs,
            &c,
            eps,
        ),
        "ddn" => minimise(&Ddn::new(ddn_config(sizes))?, model, xs, &c, eps),
        "cw" => minimise(&CarliniWagnerL2::new(cw_config(sizes))?, model, xs, &c, eps),
        "noise" => minimise(
            &AdditiveGaussianNoise::new(noise_config(sizes, norm, seed))?,
            model,
            xs,
            &c,
            eps,
        ),
        other => bail!("unknown attack row {other}"),
    }
}

/// Clean accuracy of a batch (one "epsilon": 0).
pub fn clean_row(model: &dyn Differentiable, xs: &Tensor, labels: &[u32]) -> Result<BatchResult> {
    let pred = model
        .predict(xs)?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1::<u32>()?;
    Ok(vec![pred
        .iter()
        .zip(labels)
        .map(|(p, l)| (p == l, 0.0))
        .collect()])
}

/// The clean row of one model as a timed, journaled stage `label`: the journal at `journal`
/// resumes only with settings `{"row": "clean", "model": model_settings}`. Returns, per sample
/// of `subset`, whether the model classified it correctly. Every experiment evaluates its models
/// this way before attacking them.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_clean(
    timer: &mut Timer,
    label: &str,
    journal: &std::path::Path,
    model_settings: &serde_json::Value,
    test: &eabs_datasets::Dataset,
    subset: &[usize],
    batch_size: usize,
    device: &candle_core::Device,
    model: &dyn Differentiable,
) -> Result<Vec<bool>> {
    let settings = serde_json::json!({ "row": "clean", "model": model_settings });
    let records = timer.stage(label, || {
        evaluate(
            journal,
            &settings,
            label,
            test,
            subset,
            1,
            batch_size,
            device,
            &mut |xs, ys| clean_row(model, xs, ys),
        )
    })?;
    Ok(records.iter().map(|r| r.robust[0]).collect())
}
