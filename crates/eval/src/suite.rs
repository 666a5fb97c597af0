//! The paper's attack suite as typed rows, and each attack's settings at a preset's sizes.

use anyhow::{bail, Result};
use candle_core::Tensor;
use eabs_attacks::{
    attack_fixed, attack_min, AdditiveGaussianNoise, AdditiveNoiseConfig, CarliniWagnerL2,
    Criterion, CwConfig, Ddn, DdnConfig, DeepFool, DeepFoolConfig, FixedEpsilonAttack,
    MinimizationAttack, Norm, Outcome, Pgd, PgdConfig,
};
use eabs_core::{Classifier, Differentiable};

use serde::{Deserialize, Serialize};

use eabs_datasets::DatasetKind;

use crate::evaluate::BatchResult;
use crate::preset::EvalSizes;

/// An attack of the suite. Serialised (and named in journals and results files) by
/// [`AttackKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AttackKind {
    /// Projected gradient descent with random starts (Madry et al.; Section 4.2).
    #[serde(rename = "pgd")]
    Pgd,
    /// DeepFool (minimisation attack).
    #[serde(rename = "deepfool")]
    DeepFool,
    /// Additive Gaussian noise of growing size (Foolbox's linear search).
    #[serde(rename = "noise")]
    Noise,
    /// Decoupled direction and norm (L_2).
    #[serde(rename = "ddn")]
    Ddn,
    /// Carlini-Wagner L_2 with binary search over its constant.
    #[serde(rename = "cw")]
    Cw,
    /// PGD on gradients estimated from queries (Section 5's gradient-free check).
    #[serde(rename = "nes-pgd")]
    NesPgd,
    /// The decision-based Boundary attack (Section 5's gradient-free check).
    #[serde(rename = "boundary")]
    Boundary,
}

impl AttackKind {
    /// Every attack, in the order of Tables 1-4 then Section 5.
    pub const ALL: [AttackKind; 7] = [
        AttackKind::Pgd,
        AttackKind::DeepFool,
        AttackKind::Noise,
        AttackKind::Ddn,
        AttackKind::Cw,
        AttackKind::NesPgd,
        AttackKind::Boundary,
    ];

    /// The name used in file names and results: `pgd`, `deepfool`, `noise`, `ddn`, `cw`,
    /// `nes-pgd`, `boundary`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::Pgd => "pgd",
            AttackKind::DeepFool => "deepfool",
            AttackKind::Noise => "noise",
            AttackKind::Ddn => "ddn",
            AttackKind::Cw => "cw",
            AttackKind::NesPgd => "nes-pgd",
            AttackKind::Boundary => "boundary",
        }
    }

    /// The name the paper's tables print.
    pub fn title(self) -> &'static str {
        match self {
            AttackKind::Pgd => "PGD",
            AttackKind::DeepFool => "DeepFool",
            AttackKind::Noise => "Noise",
            AttackKind::Ddn => "DDN",
            AttackKind::Cw => "CW",
            AttackKind::NesPgd => "NES-PGD",
            AttackKind::Boundary => "BOUNDARY",
        }
    }

    /// Whether the attack exists in `norm` (DDN, CW and Boundary are L_2 attacks).
    pub fn supports(self, norm: Norm) -> bool {
        !matches!(
            (self, norm),
            (
                AttackKind::Ddn | AttackKind::Cw | AttackKind::Boundary,
                Norm::Linf
            )
        )
    }
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AttackKind::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown attack `{s}`"))
    }
}

/// The name of a norm in file names and results: `linf` or `l2`.
pub fn norm_str(norm: Norm) -> &'static str {
    match norm {
        Norm::Linf => "linf",
        Norm::L2 => "l2",
    }
}

/// The norm named `linf` or `l2`.
pub fn parse_norm(s: &str) -> Result<Norm> {
    match s {
        "linf" => Ok(Norm::Linf),
        "l2" => Ok(Norm::L2),
        other => bail!("unknown norm `{other}` (linf or l2)"),
    }
}

/// How a norm is printed in tables: `L_inf` or `L_2`.
pub fn norm_title(norm: Norm) -> &'static str {
    match norm {
        Norm::Linf => "L_inf",
        Norm::L2 => "L_2",
    }
}

/// The paper's perturbation budget of a norm on a dataset (Tables 1-4), from
/// [`DatasetKind::linf_epsilon`] and [`DatasetKind::l2_epsilon`].
pub trait Epsilon {
    /// The radius of the `norm` ball.
    fn epsilon(self, norm: Norm) -> f64;
}

impl Epsilon for DatasetKind {
    fn epsilon(self, norm: Norm) -> f64 {
        match norm {
            Norm::Linf => self.linf_epsilon(),
            Norm::L2 => self.l2_epsilon(),
        }
    }
}

/// One attack row: an attack and the norm it is bounded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttackRow {
    /// The norm of the perturbation budget.
    pub norm: Norm,
    /// The attack.
    pub attack: AttackKind,
}

impl AttackRow {
    /// The row of `attack` in `norm`.
    pub const fn new(norm: Norm, attack: AttackKind) -> Self {
        Self { norm, attack }
    }

    /// `<norm>-<attack>`, e.g. `linf-pgd`: the journal's file stem and the outcomes' key.
    pub fn key(self) -> String {
        format!("{}-{}", norm_str(self.norm), self.attack.as_str())
    }
}

impl std::fmt::Display for AttackRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", norm_str(self.norm), self.attack.as_str())
    }
}

/// A row of a results table: clean accuracy, one attack, or the per-sample worst case over the
/// attacks of one norm (the paper's "ALL" rows, Section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// No attack.
    Clean,
    /// One attack.
    Attack(AttackRow),
    /// Robust only if every attack of the norm failed.
    All(Norm),
}

impl RowKey {
    /// `none`, `linf` or `l2`, as results files name the row's norm.
    pub fn norm_str(self) -> &'static str {
        match self {
            RowKey::Clean => "none",
            RowKey::Attack(r) => norm_str(r.norm),
            RowKey::All(n) => norm_str(n),
        }
    }

    /// `clean`, the attack's name, or `all`.
    pub fn attack_str(self) -> &'static str {
        match self {
            RowKey::Clean => "clean",
            RowKey::Attack(r) => r.attack.as_str(),
            RowKey::All(_) => "all",
        }
    }

    /// The norm of an attack or ALL row.
    pub fn norm(self) -> Option<Norm> {
        match self {
            RowKey::Clean => None,
            RowKey::Attack(r) => Some(r.norm),
            RowKey::All(n) => Some(n),
        }
    }

    /// `<norm>-<attack>` (`none-clean`, `linf-pgd`, `l2-all`): the key of `outcomes.json`.
    pub fn key(self) -> String {
        format!("{}-{}", self.norm_str(), self.attack_str())
    }

    /// The row that results files name `norm`, `attack`.
    pub fn parse(norm: &str, attack: &str) -> Result<Self> {
        Ok(match (norm, attack) {
            ("none", "clean") => RowKey::Clean,
            (n, "all") => RowKey::All(parse_norm(n)?),
            (n, a) => RowKey::Attack(AttackRow::new(
                parse_norm(n)?,
                a.parse().map_err(anyhow::Error::msg)?,
            )),
        })
    }
}

impl PartialOrd for RowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered by [`RowKey::key`], as the string keys of earlier versions were.
impl Ord for RowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.norm_str(), self.attack_str()).cmp(&(other.norm_str(), other.attack_str()))
    }
}

/// The attack rows of Tables 1-4 in the paper's order (clean and the ALL rows are added
/// around). Their index is part of each attack's seed ([`crate::seeds::attack`]).
pub const ATTACK_ROWS: [AttackRow; 8] = [
    AttackRow::new(Norm::Linf, AttackKind::Pgd),
    AttackRow::new(Norm::Linf, AttackKind::DeepFool),
    AttackRow::new(Norm::Linf, AttackKind::Noise),
    AttackRow::new(Norm::L2, AttackKind::Pgd),
    AttackRow::new(Norm::L2, AttackKind::Ddn),
    AttackRow::new(Norm::L2, AttackKind::Cw),
    AttackRow::new(Norm::L2, AttackKind::DeepFool),
    AttackRow::new(Norm::L2, AttackKind::Noise),
];

/// The paper's PGD (Section 4.2) at the preset's steps and restarts (`None`: the paper's number
/// of random starts for the dataset), its step sized to the steps
/// ([`PgdConfig::paper_sized`]: the paper's total path whatever the number of steps).
pub fn pgd_config(sizes: &EvalSizes, ds: DatasetKind, norm: Norm, seed: u64) -> PgdConfig {
    let restarts = sizes.pgd_restarts.unwrap_or_else(|| ds.pgd_random_starts());
    let paper = PgdConfig::paper_sized(norm, sizes.pgd_steps, restarts);
    PgdConfig {
        seed,
        loss: sizes.pgd_loss.unwrap_or(paper.loss),
        ..paper
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
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
    seed: u64,
) -> Result<serde_json::Value> {
    let norm = row.norm;
    Ok(match row.attack {
        AttackKind::Pgd => serde_json::to_value(pgd_config(sizes, ds, norm, seed))?,
        AttackKind::DeepFool => serde_json::to_value(deepfool_config(sizes, norm))?,
        AttackKind::Ddn => serde_json::to_value(ddn_config(sizes))?,
        AttackKind::Cw => serde_json::to_value(cw_config(sizes))?,
        AttackKind::Noise => serde_json::to_value(noise_config(sizes, norm, seed))?,
        other => bail!(
            "{} is not an attack of the gradient-based suite",
            other.as_str()
        ),
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
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
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
        ds.epsilon(row.norm),
    )
}

/// [`run_row`] at an epsilon of the caller's choice (`cargo xtask eval --epsilon`).
#[allow(clippy::too_many_arguments)]
pub fn run_row_at<M: Differentiable + ?Sized>(
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
    model: &M,
    xs: &Tensor,
    labels: &[u32],
    seed: u64,
    eps: f64,
) -> Result<BatchResult> {
    let c = Criterion::misclassification(labels.to_vec());
    let norm = row.norm;
    match row.attack {
        AttackKind::Pgd => fixed(
            &Pgd::new(pgd_config(sizes, ds, norm, seed))?,
            model,
            xs,
            &c,
            eps,
        ),
        AttackKind::DeepFool => minimise(
            &DeepFool::new(deepfool_config(sizes, norm))?,
            model,
            xs,
            &c,
            eps,
        ),
        AttackKind::Ddn => minimise(&Ddn::new(ddn_config(sizes))?, model, xs, &c, eps),
        AttackKind::Cw => minimise(&CarliniWagnerL2::new(cw_config(sizes))?, model, xs, &c, eps),
        AttackKind::Noise => minimise(
            &AdditiveGaussianNoise::new(noise_config(sizes, norm, seed))?,
            model,
            xs,
            &c,
            eps,
        ),
        other => bail!(
            "{} is not an attack of the gradient-based suite",
            other.as_str()
        ),
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
