//! The paper's attack suite as typed rows, and each attack's settings at a preset's sizes.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use eabs_attacks::{
    attack_fixed, attack_min, AdditiveGaussianNoise, AdditiveNoiseConfig, Apgd, ApgdConfig,
    CarliniWagnerL2, Criterion, CwConfig, Ddn, DdnConfig, DeepFool, DeepFoolConfig, Eot,
    FixedEpsilonAttack, Loss, MinimizationAttack, Norm, Outcome, Pgd, PgdConfig,
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
    /// Auto-PGD on the cross-entropy (Croce & Hein 2020): beyond the paper.
    #[serde(rename = "apgd-ce")]
    ApgdCe,
    /// Auto-PGD on the difference-of-logits ratio (Croce & Hein 2020): beyond the paper.
    #[serde(rename = "apgd-dlr")]
    ApgdDlr,
}

impl AttackKind {
    /// Every attack, in the order of Tables 1-4 then Section 5.
    pub const ALL: [AttackKind; 9] = [
        AttackKind::Pgd,
        AttackKind::DeepFool,
        AttackKind::Noise,
        AttackKind::Ddn,
        AttackKind::Cw,
        AttackKind::NesPgd,
        AttackKind::Boundary,
        AttackKind::ApgdCe,
        AttackKind::ApgdDlr,
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
            AttackKind::ApgdCe => "apgd-ce",
            AttackKind::ApgdDlr => "apgd-dlr",
        }
    }

    /// Whether the attack is one of ours beyond the paper's suite (Auto-PGD), counted in the
    /// ALL+ rows only, so that the ALL rows stay comparable with the paper's.
    pub fn beyond_paper(self) -> bool {
        matches!(self, AttackKind::ApgdCe | AttackKind::ApgdDlr)
    }

    /// Whether the attack uses gradients (of the model, or of eq. (8)); the additive noise,
    /// the Boundary attack and PGD on estimated gradients do not.
    pub fn gradient_based(self) -> bool {
        !matches!(
            self,
            AttackKind::Noise | AttackKind::NesPgd | AttackKind::Boundary
        )
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
            AttackKind::ApgdCe => "APGD-CE",
            AttackKind::ApgdDlr => "APGD-DLR",
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
    /// Robust only if every attack of the norm failed, ours beyond the paper included (the
    /// "ALL+" rows).
    AllPlus(Norm),
}

impl RowKey {
    /// `none`, `linf` or `l2`, as results files name the row's norm.
    pub fn norm_str(self) -> &'static str {
        match self {
            RowKey::Clean => "none",
            RowKey::Attack(r) => norm_str(r.norm),
            RowKey::All(n) | RowKey::AllPlus(n) => norm_str(n),
        }
    }

    /// `clean`, the attack's name, `all` or `all+`.
    pub fn attack_str(self) -> &'static str {
        match self {
            RowKey::Clean => "clean",
            RowKey::Attack(r) => r.attack.as_str(),
            RowKey::All(_) => "all",
            RowKey::AllPlus(_) => "all+",
        }
    }

    /// Whether the row is a per-sample worst case (ALL or ALL+).
    pub fn is_combined(self) -> bool {
        matches!(self, RowKey::All(_) | RowKey::AllPlus(_))
    }

    /// The norm of an attack or ALL row.
    pub fn norm(self) -> Option<Norm> {
        match self {
            RowKey::Clean => None,
            RowKey::Attack(r) => Some(r.norm),
            RowKey::All(n) | RowKey::AllPlus(n) => Some(n),
        }
    }

    /// `<norm>-<attack>` (`none-clean`, `linf-pgd`, `l2-all`): the key of `outcomes.json`.
    pub fn key(self) -> String {
        format!("{}-{}", self.norm_str(), self.attack_str())
    }

    /// The row of an `outcomes.json` key (`none-clean`, `linf-pgd`, `l2-all+`), if it is one.
    pub fn parse_key(key: &str) -> Option<Self> {
        let (norm, attack) = key.split_once('-')?;
        Self::parse(norm, attack).ok()
    }

    /// The row that results files name `norm`, `attack`.
    pub fn parse(norm: &str, attack: &str) -> Result<Self> {
        Ok(match (norm, attack) {
            ("none", "clean") => RowKey::Clean,
            (n, "all") => RowKey::All(parse_norm(n)?),
            (n, "all+") => RowKey::AllPlus(parse_norm(n)?),
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

/// Our rows beyond the paper's suite (Auto-PGD with both of AutoAttack's losses, in both
/// norms), marked "beyond the paper" in every report and counted in the ALL+ rows only. Their
/// seeds continue the index of [`ATTACK_ROWS`] (8, 9, ...).
pub const BEYOND_ROWS: [AttackRow; 4] = [
    AttackRow::new(Norm::Linf, AttackKind::ApgdCe),
    AttackRow::new(Norm::Linf, AttackKind::ApgdDlr),
    AttackRow::new(Norm::L2, AttackKind::ApgdCe),
    AttackRow::new(Norm::L2, AttackKind::ApgdDlr),
];

/// The paper's PGD (Section 4.2) at the preset's steps and restarts (`None`: the paper's number
/// of random starts for the dataset), its step sized to the steps
/// ([`PgdConfig::paper_sized`]: the paper's total path whatever the number of steps), ascending
/// `loss`.
pub fn pgd_config_with(
    sizes: &EvalSizes,
    ds: DatasetKind,
    norm: Norm,
    seed: u64,
    loss: Loss,
) -> PgdConfig {
    let restarts = sizes.pgd_restarts.unwrap_or_else(|| ds.pgd_random_starts());
    PgdConfig {
        seed,
        loss,
        ..PgdConfig::paper_sized(norm, sizes.pgd_steps, restarts)
    }
}

/// The PGD row's configurations, one per loss of [`EvalSizes::pgd_losses`] (each run from the
/// same seed; the row keeps the per-sample worst case).
pub fn pgd_configs(sizes: &EvalSizes, ds: DatasetKind, norm: Norm, seed: u64) -> Vec<PgdConfig> {
    sizes
        .pgd_losses
        .iter()
        .map(|&loss| pgd_config_with(sizes, ds, norm, seed, loss))
        .collect()
}

/// The first of [`pgd_configs`] (the paper's cross-entropy at the default sizes): the PGD that
/// figures reuse for their single runs.
pub fn pgd_config(sizes: &EvalSizes, ds: DatasetKind, norm: Norm, seed: u64) -> PgdConfig {
    let loss = sizes
        .pgd_losses
        .first()
        .copied()
        .unwrap_or(Loss::CrossEntropy);
    pgd_config_with(sizes, ds, norm, seed, loss)
}

fn apgd_config(sizes: &EvalSizes, norm: Norm, loss: Loss, seed: u64) -> ApgdConfig {
    ApgdConfig {
        steps: sizes.apgd_steps,
        seed,
        ..ApgdConfig::autoattack(norm, loss)
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
    CwConfig {
        abort: sizes.cw_abort,
        ..CwConfig::paper_sized(sizes.cw_binary_steps, sizes.cw_steps)
    }
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
/// rule, say) must not resume journals of the old attack. PGD with one loss keeps the
/// single-configuration form of earlier versions; with several it is the list.
pub fn row_config(
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
    seed: u64,
) -> Result<serde_json::Value> {
    let norm = row.norm;
    Ok(match row.attack {
        AttackKind::Pgd => match pgd_configs(sizes, ds, norm, seed).as_slice() {
            [one] => serde_json::to_value(one)?,
            many => serde_json::to_value(many)?,
        },
        AttackKind::DeepFool => serde_json::to_value(deepfool_config(sizes, norm))?,
        AttackKind::Ddn => serde_json::to_value(ddn_config(sizes))?,
        AttackKind::Cw => serde_json::to_value(cw_config(sizes))?,
        AttackKind::Noise => serde_json::to_value(noise_config(sizes, norm, seed))?,
        AttackKind::ApgdCe => {
            serde_json::to_value(apgd_config(sizes, norm, Loss::CrossEntropy, seed))?
        }
        AttackKind::ApgdDlr => serde_json::to_value(apgd_config(sizes, norm, Loss::Dlr, seed))?,
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

/// Runs `f` on `model`, wrapped in EOT with `eot_samples` draws per gradient when the model is
/// randomised (Section 4.2 and Appendix B.1: the paper averages 5).
pub fn with_eot<T>(
    model: &dyn Differentiable,
    eot_samples: usize,
    f: impl FnOnce(&dyn Differentiable) -> Result<T>,
) -> Result<T> {
    if model.is_stochastic() {
        let eot = Eot::new(model, eot_samples)?;
        f(&eot)
    } else {
        f(model)
    }
}

/// The one verdict protocol of every row (issue 14, item 3): a sample counts as classified
/// correctly when a strict majority of `draws` inference draws predicts its label. A
/// deterministic model is asked once (`draws` is then ignored); a randomised one (E-ABS's
/// variational inference) `draws` times, each with fresh noise, so the clean row and every
/// attack's claimed adversarial are judged alike. Ties of an even `draws` count as
/// misclassified.
pub fn verdicts(
    model: &dyn Classifier,
    xs: &Tensor,
    labels: &[u32],
    draws: usize,
) -> Result<Vec<bool>> {
    let draws = if model.is_stochastic() {
        draws.max(1)
    } else {
        1
    };
    let mut votes = vec![0usize; labels.len()];
    for _ in 0..draws {
        let pred = model
            .predict(xs)?
            .to_dtype(candle_core::DType::U32)?
            .to_vec1::<u32>()?;
        anyhow::ensure!(
            pred.len() == labels.len(),
            "the model predicted {} classes for {} images",
            pred.len(),
            labels.len()
        );
        for (v, (p, l)) in votes.iter_mut().zip(pred.iter().zip(labels)) {
            *v += usize::from(p == l);
        }
    }
    Ok(votes.into_iter().map(|v| 2 * v > draws).collect())
}

/// Runs one attack row on a batch at the dataset's epsilon ([`run_row_at`]).
#[allow(clippy::too_many_arguments)]
pub fn run_row(
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
    model: &dyn Differentiable,
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

/// What one attack did to each sample of a batch: (its point still classified correctly,
/// that point's distance), under the verdict protocol ([`verdicts`]). This is what a row's
/// journal records; the row itself also requires the clean image to be classified correctly
/// ([`and_clean`]).
///
/// A randomised `model` is attacked through EOT (`sizes.eot_samples` draws per gradient), and
/// every returned point is re-judged by [`verdicts`] with `sizes.verdict_draws` fresh draws
/// rather than by the one EOT-averaged pass that decided the attack's success. A minimisation
/// attack whose point fails that verdict keeps searching along its own direction: up to four
/// points `x + t (x_adv - x)` further out, the last on the epsilon sphere, the first that the
/// majority misclassifies counting (its distance recorded).
///
/// PGD runs once per loss of `sizes.pgd_losses` (the same seed each) and keeps the per-sample
/// worst case: the scale-free margin loss finds adversarials the cross-entropy misses on the
/// ABS-like models, whose logits differ by ~1e-2 (`results/pgd-loss`).
#[allow(clippy::too_many_arguments)]
pub fn run_row_at(
    row: AttackRow,
    sizes: &EvalSizes,
    ds: DatasetKind,
    model: &dyn Differentiable,
    xs: &Tensor,
    labels: &[u32],
    seed: u64,
    eps: f64,
) -> Result<BatchResult> {
    // A batch of a row is one unit of the models' keyed noise (`Classifier::begin_unit`).
    model.begin_unit();
    let c = Criterion::misclassification(labels.to_vec());
    let norm = row.norm;
    let outcomes: Vec<(Outcome, bool)> = with_eot(model, sizes.eot_samples, |m| {
        let one = |o: Vec<Outcome>| -> Result<Outcome> {
            o.into_iter()
                .next()
                .context("the attack returned no outcome")
        };
        Ok(match row.attack {
            AttackKind::Pgd => {
                let configs = pgd_configs(sizes, ds, norm, seed);
                anyhow::ensure!(!configs.is_empty(), "no PGD loss to ascend (pgd_losses)");
                let mut outs = Vec::new();
                for cfg in configs {
                    outs.push((
                        one(attack_fixed(&Pgd::new(cfg)?, m, xs, &c, &[eps])?)?,
                        false,
                    ));
                }
                outs
            }
            AttackKind::ApgdCe | AttackKind::ApgdDlr => {
                let loss = if row.attack == AttackKind::ApgdCe {
                    Loss::CrossEntropy
                } else {
                    Loss::Dlr
                };
                let a = Apgd::new(apgd_config(sizes, norm, loss, seed))?;
                vec![(one(attack_fixed(&a, m, xs, &c, &[eps])?)?, false)]
            }
            AttackKind::DeepFool => {
                let a = DeepFool::new(deepfool_config(sizes, norm))?;
                vec![(one(attack_min(&a, m, xs, &c, &[eps])?)?, true)]
            }
            AttackKind::Ddn => {
                let a = Ddn::new(ddn_config(sizes))?;
                vec![(one(attack_min(&a, m, xs, &c, &[eps])?)?, true)]
            }
            AttackKind::Cw => {
                let a = CarliniWagnerL2::new(cw_config(sizes))?;
                vec![(one(attack_min(&a, m, xs, &c, &[eps])?)?, true)]
            }
            AttackKind::Noise => {
                let a = AdditiveGaussianNoise::new(noise_config(sizes, norm, seed))?;
                vec![(one(attack_min(&a, m, xs, &c, &[eps])?)?, true)]
            }
            other => bail!(
                "{} is not an attack of the gradient-based suite",
                other.as_str()
            ),
        })
    })?;
    let mut per_run = Vec::with_capacity(outcomes.len());
    for (o, minimisation) in &outcomes {
        per_run.push(if model.is_stochastic() {
            reverify(
                model,
                norm,
                xs,
                labels,
                o,
                *minimisation,
                eps,
                sizes.verdict_draws,
            )?
        } else {
            o.success
                .iter()
                .zip(&o.distances)
                .map(|(&s, &d)| (!s, d))
                .collect()
        });
    }
    Ok(vec![worst_case(&per_run)])
}

/// Per sample, the worst case over several runs of (robust, distance): broken if any run broke
/// it (at the smallest distance of those that did), else robust at the first run's distance.
pub fn worst_case(runs: &[Vec<(bool, f64)>]) -> Vec<(bool, f64)> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            runs.iter()
                .filter(|r| !r[i].0)
                .map(|r| r[i].1)
                .min_by(f64::total_cmp)
                .map_or(first[i], |d| (false, d))
        })
        .collect()
}

/// Re-judges an attack's points on a randomised model under the verdict protocol; see
/// [`run_row_at`].
#[allow(clippy::too_many_arguments)]
fn reverify(
    model: &dyn Differentiable,
    norm: Norm,
    xs: &Tensor,
    labels: &[u32],
    o: &Outcome,
    minimisation: bool,
    eps: f64,
    draws: usize,
) -> Result<Vec<(bool, f64)>> {
    let mut result: Vec<(bool, f64)> = verdicts(model, &o.clipped, labels, draws)?
        .into_iter()
        .zip(&o.distances)
        .map(|(r, &d)| (r, d))
        .collect();
    if !minimisation {
        return Ok(result);
    }
    // Claimed adversarials the majority does not confirm: search further along their direction.
    let pending: Vec<usize> = (0..labels.len())
        .filter(|&i| o.success[i] && result[i].0 && o.distances[i] > 0.0)
        .collect();
    if pending.is_empty() || !(eps.is_finite() && eps > 0.0) {
        return Ok(result);
    }
    let bounds = model.bounds();
    const STEPS: i32 = 4;
    let idx = Tensor::new(
        pending.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        xs.device(),
    )?;
    let x0 = xs.index_select(&idx, 0)?;
    let delta = (o.clipped.index_select(&idx, 0)? - &x0)?;
    let sub_labels: Vec<u32> = pending.iter().map(|&i| labels[i]).collect();
    let mut open: Vec<bool> = vec![true; pending.len()];
    for j in 1..=STEPS {
        // Geometric from the claimed distance d to eps: t = (eps / d)^(j / STEPS).
        let scales: Vec<f32> = pending
            .iter()
            .map(|&i| {
                (eps / o.distances[i])
                    .max(1.0)
                    .powf(f64::from(j) / f64::from(STEPS)) as f32
            })
            .collect();
        let mut shape = vec![pending.len()];
        shape.extend(std::iter::repeat_n(1, xs.rank() - 1));
        let t = Tensor::new(scales, xs.device())?
            .to_dtype(xs.dtype())?
            .reshape(shape)?;
        let cand = (&x0 + delta.broadcast_mul(&t)?)?;
        let cand = eabs_attacks::clip_to_ball(model, norm, &x0, &cand, eps)?;
        let cand = bounds.clip(&cand)?;
        let ok = verdicts(model, &cand, &sub_labels, draws)?;
        let dist = norm.distances(&cand, &x0)?;
        for (k, &i) in pending.iter().enumerate() {
            if open[k] && !ok[k] {
                result[i] = (false, dist[k]);
                open[k] = false;
            }
        }
        if !open.iter().any(|&o| o) {
            break;
        }
    }
    Ok(result)
}

/// A row's verdicts: robust only where the clean image is classified correctly (the clean
/// row's verdict) and the attack's point too, at distance 0 where the clean image is already
/// misclassified. No attack row can then exceed the clean row.
pub fn and_clean(clean: &[bool], attack: &[bool]) -> Vec<bool> {
    clean.iter().zip(attack).map(|(&c, &a)| c && a).collect()
}

/// Clean accuracy of a batch (one "epsilon": 0) under the verdict protocol ([`verdicts`] with
/// `draws` draws for a randomised model).
pub fn clean_row(
    model: &dyn Differentiable,
    xs: &Tensor,
    labels: &[u32],
    draws: usize,
) -> Result<BatchResult> {
    model.begin_unit();
    Ok(vec![verdicts(model, xs, labels, draws)?
        .into_iter()
        .map(|c| (c, 0.0))
        .collect()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_case_keeps_any_break_at_its_smallest_distance() {
        let ce = vec![(true, 0.1), (false, 0.09), (false, 0.1), (true, 0.1)];
        let margin = vec![(false, 0.07), (false, 0.1), (true, 0.1), (true, 0.08)];
        assert_eq!(
            worst_case(&[ce.clone(), margin]),
            vec![(false, 0.07), (false, 0.09), (false, 0.1), (true, 0.1)]
        );
        assert_eq!(worst_case(std::slice::from_ref(&ce)), ce);
        assert!(worst_case(&[]).is_empty());
    }

    #[test]
    fn a_row_needs_the_clean_verdict() {
        assert_eq!(
            and_clean(&[true, false, true], &[true, true, false]),
            vec![true, false, false]
        );
    }

    #[test]
    fn rows_beyond_the_paper_and_their_all_plus_rows_have_keys() -> Result<()> {
        for row in BEYOND_ROWS {
            assert!(row.attack.beyond_paper() && row.attack.gradient_based());
            assert_eq!(
                RowKey::parse_key(&RowKey::Attack(row).key()),
                Some(RowKey::Attack(row))
            );
        }
        assert!(ATTACK_ROWS.iter().all(|r| !r.attack.beyond_paper()));
        assert_eq!(RowKey::AllPlus(Norm::L2).key(), "l2-all+");
        assert_eq!(RowKey::parse("l2", "all+")?, RowKey::AllPlus(Norm::L2));
        assert!(!AttackKind::Noise.gradient_based());
        // One loss keeps the single-configuration form older journals were bound to.
        let mut sizes = EvalSizes::of(crate::Preset::Smoke);
        let row = AttackRow::new(Norm::Linf, AttackKind::Pgd);
        assert!(row_config(row, &sizes, DatasetKind::FashionMnist, 0)?.is_array());
        sizes.pgd_losses = vec![Loss::CrossEntropy];
        assert!(row_config(row, &sizes, DatasetKind::FashionMnist, 0)?.is_object());
        Ok(())
    }
}
