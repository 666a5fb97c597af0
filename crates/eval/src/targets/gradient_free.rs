//! Section 5's gradient-free check ("Results with gradient-free attacks confirm that our model
//! does not have obfuscated gradients"): E-ABS on SVHN (or `--dataset`) under a Boundary attack
//! and under PGD with estimated gradients (Section 4.2, "Gradient-free attacks"), with an
//! undefended CNN as a control.
//!
//! # Why the CNN column
//! A gradient-free attack that leaves E-ABS robust says something only if it is strong enough to
//! break a model without a defence at the same sizes: the CNN (shared with `reproduce table4`'s
//! checkpoint root) must fall well below its clean accuracy, otherwise the attack is too weak
//! (too few steps or estimator directions) to conclude anything.
//!
//! # Rows
//! - Clean accuracy.
//! - L_inf and L_2 PGD with estimated gradients at the dataset's epsilons: the paper's 50 steps
//!   ([`eabs_attacks::PgdConfig::paper_estimated`]: margin loss, one random start) on
//!   [`EstimatedGradient`] (antithetic NES; the paper gives no estimator settings, see
//!   [`GradientFreeSizes::nes_samples`]). The estimator sees only logits, so E-ABS's adaptive
//!   gradient of eq. (8) plays no part.
//! - L_2 Boundary attack (100000 iterations in the paper), started per sample from a random
//!   test image of another class that the model classifies as not the true label (the paper:
//!   "a random sample that is classified as a different class from the ground truth"); see
//!   [`choose_starting_points`]. Boundary minimises the distance: it is judged at the L_2
//!   epsilon, and the median L_2 distance it reached over the clean-correct samples is written
//!   to `boundary.json` and below the table.
//! - ALL L_2: robust to both L_2 attacks.
//!
//! Randomised models (E-ABS's variational inference) are attacked through EOT at the preset's
//! number of passes, as in Tables 1-4: the estimator probes, Boundary's adversarial checks and
//! the final verdicts all use the EOT-averaged logits.
//!
//! The paper's only numbers (E-ABS on SVHN: 92.0% under Boundary, 88.0% under L_inf
//! estimated-gradient PGD; [`crate::paper::GRADIENT_FREE`]) are shown beside ours on SVHN only.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use eabs_attacks::{
    Boundary, BoundaryConfig, Criterion, Eot, EstimatedGradient, EstimatorConfig, Norm, Pgd,
    PgdConfig,
};
use eabs_core::{Classifier, Differentiable};
use eabs_datasets::DatasetKind;
use eabs_models::ModelKind;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::evaluate::BatchResult;
use crate::experiment::{attack_fingerprint, Experiment};
use crate::preset::{EvalSizes, GradientFreeSizes};
use crate::report::{add_all_row, build, to_markdown, write_outputs, Outcomes};
use crate::suite::Epsilon;
use crate::suite::{fixed, rows_of, AttackKind, AttackRow, RowKey};
use crate::targets::ablation::{insert_before_provenance, per_row_mcnemar};
use crate::zoo::to_evaluated;
use crate::RunSpec;

/// The columns: the control, then E-ABS.
pub const MODEL_KINDS: [ModelKind; 2] = [ModelKind::Cnn, ModelKind::E_ABS];

/// Test images (outside the evaluation subset) from which Boundary's starting points are drawn.
pub const POOL_SIZE: usize = 200;

/// The attack rows, in order; their index seeds them ([`crate::seeds::gradient_free_attack`]).
pub const ROWS: [AttackRow; 3] = [
    AttackRow::new(Norm::Linf, AttackKind::NesPgd),
    AttackRow::new(Norm::L2, AttackKind::NesPgd),
    AttackRow::new(Norm::L2, AttackKind::Boundary),
];

/// A seeded random pool of `n` test indices that are not in `subset` (sorted), or all of them
/// when fewer remain.
pub fn select_pool(n_test: usize, subset: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let mut rest: Vec<usize> = (0..n_test)
        .filter(|i| subset.binary_search(i).is_err())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xB0DA_4D21);
    rest.shuffle(&mut rng);
    rest.truncate(n);
    rest.sort_unstable();
    rest
}

/// Boundary's starting point per sample, as an index into the pool: drawn uniformly from the
/// pool images whose true label differs from the sample's and which the model classifies as
/// another class than the sample's label (so the start is adversarial and an image of another
/// class, as the paper prescribes). Only if there is none, any pool image the model classifies
/// as another class (a misclassified image of the same class) is allowed.
///
/// `sample_seeds[i]` seeds the draw for sample `i`; the caller derives it from the run's seed and
/// the sample's pixels ([`eabs_attacks::seeding::sample_seed`], as the attacks do), so a sample gets
/// the same start whatever batch it is in and whether or not the run was resumed.
pub fn choose_starting_points(
    labels: &[u32],
    sample_seeds: &[u64],
    pool_labels: &[u32],
    pool_predictions: &[u32],
) -> Result<Vec<usize>> {
    if labels.len() != sample_seeds.len() || pool_labels.len() != pool_predictions.len() {
        bail!(
            "starting points: {} labels for {} samples, {} pool labels for {} predictions",
            labels.len(),
            sample_seeds.len(),
            pool_labels.len(),
            pool_predictions.len()
        );
    }
    labels
        .iter()
        .zip(sample_seeds)
        .enumerate()
        .map(|(i, (&y, &s))| {
            let other_class: Vec<usize> = (0..pool_labels.len())
                .filter(|&j| pool_labels[j] != y && pool_predictions[j] != y)
                .collect();
            let candidates = if other_class.is_empty() {
                (0..pool_labels.len())
                    .filter(|&j| pool_predictions[j] != y)
                    .collect()
            } else {
                other_class
            };
            if candidates.is_empty() {
                bail!(
                    "no Boundary starting point for batch sample {i} (label {y}): the model \
                     classifies all {} pool images as {y}",
                    pool_labels.len()
                );
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
            Ok(candidates[rng.random_range(0..candidates.len())])
        })
        .collect()
}

/// The Boundary attack's reach on one model: the median L_2 distance of its unclipped
/// adversarials over the samples classified correctly when clean, counting a sample where it
/// found none as infinitely far (Brendel et al.'s median perturbation size).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoundaryReach {
    /// Samples classified correctly when clean.
    pub clean_correct: usize,
    /// Of those, samples for which Boundary found an adversarial at any distance.
    pub adversarial_found: usize,
    /// The median distance; `None` when undefined (no clean-correct sample) or infinite (found
    /// for at most half of them).
    pub median_l2: Option<f64>,
}

/// Computes [`BoundaryReach`] from per-sample flags and distances (all in subset order).
pub fn boundary_reach(clean_correct: &[bool], found: &[bool], distance: &[f64]) -> BoundaryReach {
    let mut d: Vec<f64> = clean_correct
        .iter()
        .zip(found)
        .zip(distance)
        .filter(|((&c, _), _)| c)
        .map(|((_, &f), &d)| if f { d } else { f64::INFINITY })
        .collect();
    d.sort_by(f64::total_cmp);
    let n = d.len();
    let median = match n {
        0 => None,
        _ if n % 2 == 1 => Some(d[n / 2]),
        _ => Some((d[n / 2 - 1] + d[n / 2]) / 2.0),
    };
    BoundaryReach {
        clean_correct: n,
        adversarial_found: d.iter().filter(|x| x.is_finite()).count(),
        median_l2: median.filter(|m| m.is_finite()),
    }
}

/// Predictions on the pool images `(n, c, h, w)`, in batches (through EOT for randomised
/// models).
fn pool_predictions(
    model: &dyn Differentiable,
    eot_samples: usize,
    pool_images: &Tensor,
    batch_size: usize,
) -> Result<Vec<u32>> {
    let n = pool_images.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let b = batch_size.max(1);
    for start in (0..n).step_by(b) {
        let xs = pool_images.narrow(0, start, b.min(n - start))?;
        let pred = if model.is_stochastic() {
            Eot::new(model, eot_samples)?.predict(&xs)?
        } else {
            model.predict(&xs)?
        };
        out.extend(pred.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// PGD with estimated gradients on a batch at `eps`.
fn nes_pgd<M: Classifier>(
    model: M,
    pgd: &PgdConfig,
    estimator: &EstimatorConfig,
    xs: &Tensor,
    labels: &[u32],
    eps: f64,
) -> Result<BatchResult> {
    let est = EstimatedGradient::new(model, estimator.clone())?;
    let c = Criterion::misclassification(labels.to_vec());
    fixed(&Pgd::new(pgd.clone())?, &est, xs, &c, eps)
}

/// Boundary on a batch from `starts`, judged at `eps` and unclipped (two "epsilons").
fn boundary<M: Classifier>(
    model: M,
    cfg: &BoundaryConfig,
    starts: Tensor,
    xs: &Tensor,
    labels: &[u32],
    eps: f64,
) -> Result<BatchResult> {
    let attack = Boundary::new(cfg.clone())?.with_starting_points(starts);
    let c = Criterion::misclassification(labels.to_vec());
    Ok(rows_of(&eabs_attacks::attack_min(
        &attack,
        &model,
        xs,
        &c,
        &[eps, f64::INFINITY],
    )?))
}

/// Runs `reproduce gradient-free`; returns the results directory.
pub fn run(spec: &RunSpec) -> Result<PathBuf> {
    let (kind, dir_name) = spec.experiment_dataset("gradient-free", DatasetKind::Svhn);
    let gsizes = {
        let mut g = GradientFreeSizes::of(spec.preset);
        if let Some(n) = spec.samples {
            g.n_samples = n;
        }
        g
    };
    // Inference and EOT sizes are those of the preset's tables.
    let sizes = EvalSizes {
        n_samples: gsizes.n_samples,
        batch_size: gsizes.batch_size,
        ..EvalSizes::of(spec.preset)
    };
    let mut exp = Experiment::open(spec, &dir_name, kind, gsizes.n_samples)?;
    let ds = exp.dataset;
    let pool = select_pool(exp.test.len(), &exp.subset, POOL_SIZE, spec.seed);
    let pool_labels: Vec<u32> = pool.iter().map(|&i| exp.test.labels[i] as u32).collect();
    let pool_images = exp.test.images_tensor(&pool, &exp.device)?;
    let eval_fingerprint = attack_fingerprint(&sizes)?;
    let gf_fingerprint = attack_fingerprint(&gsizes)?;

    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    let mut outcomes: Outcomes = Outcomes::new();
    let mut reach = BTreeMap::new();
    let mut model_config = Vec::new();
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let obtained = exp.obtain(mk)?;
        // A separate instance for the pool predictions: its call counter starts at zero on every
        // run, so a resumed run draws the same starting points as an uninterrupted one.
        let pool_seed = crate::seeds::pool(spec.seed, m_idx);
        let pool_model = to_evaluated(obtained.model.clone(), &sizes, None, pool_seed)?;
        let mut column = exp.column(m_idx, mk.name(), obtained, &sizes, None)?;
        exp.bind_full_inference(&mut column, None)?;
        model_config.push(column.settings.clone());
        let clean_correct = exp.clean(&column, &sizes)?;
        outcomes
            .entry(RowKey::Clean)
            .or_default()
            .insert(mk.name().into(), clean_correct.clone());
        let clf = column.classifier();
        let stochastic = clf.is_stochastic();

        let mut pool_preds: Option<Vec<u32>> = None;
        for (r_idx, &row) in ROWS.iter().enumerate() {
            let seed = crate::seeds::gradient_free_attack(spec.seed, r_idx);
            let eps = ds.epsilon(row.norm);
            let pgd = PgdConfig {
                steps: gsizes.nes_pgd_steps,
                restarts: gsizes.nes_pgd_restarts,
                seed,
                ..PgdConfig::paper_estimated(row.norm)
            };
            let estimator = EstimatorConfig {
                samples: gsizes.nes_samples,
                seed: seed.wrapping_add(1 << 32),
                ..EstimatorConfig::paper()
            };
            let boundary_cfg = BoundaryConfig {
                steps: gsizes.boundary_steps,
                seed,
                ..BoundaryConfig::paper()
            };
            let is_boundary = row.attack == AttackKind::Boundary;
            let (n_eps, attack_settings) = if is_boundary {
                let s = serde_json::json!({
                    "boundary": boundary_cfg,
                    "pool": { "size": POOL_SIZE, "seed": spec.seed, "inference_seed": pool_seed },
                });
                (2, s)
            } else {
                (1, serde_json::json!({ "pgd": pgd, "estimator": estimator }))
            };
            let settings = serde_json::json!({
                "row": row.key(),
                "epsilon": eps,
                "attack": attack_settings,
                "sizes": gf_fingerprint,
                "eval_sizes": eval_fingerprint,
                "eot": stochastic.then_some(sizes.eot_samples),
                "model": column.settings,
            });
            let mut run_batch = |xs: &Tensor, ys: &[u32]| -> Result<BatchResult> {
                clf.begin_unit();
                if !is_boundary {
                    return if stochastic {
                        let eot = Eot::new(clf, sizes.eot_samples)?;
                        nes_pgd(eot, &pgd, &estimator, xs, ys, eps)
                    } else {
                        nes_pgd(clf, &pgd, &estimator, xs, ys, eps)
                    };
                }
                if pool_preds.is_none() {
                    pool_preds = Some(
                        pool_predictions(
                            pool_model.classifier(),
                            sizes.eot_samples,
                            &pool_images,
                            sizes.batch_size,
                        )
                        .context("classifying Boundary's starting-point pool")?,
                    );
                }
                let preds = pool_preds.as_deref().unwrap_or_default();
                let sample_seeds = eabs_attacks::seeding::sample_seeds(seed ^ 0x57A2_7000, xs)?;
                let picks = choose_starting_points(ys, &sample_seeds, &pool_labels, preds)?;
                let picks: Vec<u32> = picks.iter().map(|&p| p as u32).collect();
                let picks = Tensor::new(picks.as_slice(), pool_images.device())?;
                let starts = pool_images.index_select(&picks, 0)?;
                if stochastic {
                    let eot = Eot::new(clf, sizes.eot_samples)?;
                    boundary(eot, &boundary_cfg, starts, xs, ys, eps)
                } else {
                    boundary(clf, &boundary_cfg, starts, xs, ys, eps)
                }
            };
            let label = format!("{} {row}", mk.name());
            let rec = exp.journaled(
                mk.name(),
                &row.key(),
                &label,
                &settings,
                n_eps,
                sizes.batch_size,
                &mut run_batch,
            )?;
            outcomes
                .entry(RowKey::Attack(row))
                .or_default()
                .insert(mk.name().into(), rec.iter().map(|r| r.robust[0]).collect());
            if is_boundary {
                let found: Vec<bool> = rec.iter().map(|r| !r.robust[1]).collect();
                let dist: Vec<f64> = rec.iter().map(|r| r.distance[1]).collect();
                reach.insert(
                    mk.name().to_string(),
                    boundary_reach(&clean_correct, &found, &dist),
                );
            }
        }
    }
    add_all_row(&mut outcomes, Norm::L2, &names)?;

    let mut order: Vec<(RowKey, f64)> = vec![(RowKey::Clean, 0.0)];
    for row in ROWS {
        order.push((RowKey::Attack(row), ds.epsilon(row.norm)));
    }
    order.push((RowKey::All(Norm::L2), ds.l2_epsilon()));
    let config = serde_json::json!({
        "experiment": "gradient-free",
        "dataset": kind.name(),
        "preset": spec.preset,
        "seed": spec.seed,
        "sizes": gsizes,
        "eval_sizes": sizes,
        "pool_size": POOL_SIZE,
        "epsilons": { "linf": ds.linf_epsilon(), "l2": ds.l2_epsilon() },
        "models": names,
        "model_settings": model_config,
        "checkpoints": exp.store,
    });
    let subset = exp.subset.clone();
    let (provenance, out_dir, _lock) = exp.finish();
    let on_paper_dataset = kind == DatasetKind::Svhn;
    let paper = crate::paper::cells("gradient-free", on_paper_dataset);
    let report = build(
        "gradient-free",
        kind.name(),
        &names,
        subset,
        &order,
        &outcomes,
        &paper,
        config,
        provenance,
    )?;
    let title = format!(
        "Gradient-free attacks ({}): Boundary and PGD with estimated gradients (Section 5)",
        kind.name()
    );
    write_outputs(&out_dir, &report, &outcomes, &title)?;
    crate::write_json(&out_dir.join("boundary.json"), &reach)?;
    let mut extra = per_row_mcnemar(&report);
    extra.push_str(&format!(
        "\n## Boundary attack: median L_2 distance reached (unclipped)\n\n\
         Over the samples classified correctly when clean; a sample without an adversarial \
         counts as infinitely far. {} steps.\n\n",
        gsizes.boundary_steps
    ));
    for (m, r) in &reach {
        let median = match (r.clean_correct, r.median_l2) {
            (0, _) => "undefined".to_string(),
            (_, None) => "inf".to_string(),
            (_, Some(d)) => format!("{d:.3}"),
        };
        extra.push_str(&format!(
            "- {m}: median {median}, adversarial found for {}/{} clean-correct samples\n",
            r.adversarial_found, r.clean_correct
        ));
    }
    let md = insert_before_provenance(&to_markdown(&report, &title), &extra);
    crate::write_text(&out_dir.join("table.md"), &md)
        .with_context(|| format!("writing {}", out_dir.join("table.md").display()))?;
    Ok(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_seeded_sorted_and_outside_the_subset() -> Result<()> {
        let subset = crate::select_subset(1000, 50, 3)?;
        let pool = select_pool(1000, &subset, 200, 3);
        assert_eq!(pool.len(), 200);
        assert!(pool.windows(2).all(|w| w[0] < w[1]));
        assert!(pool.iter().all(|p| subset.binary_search(p).is_err()));
        assert_eq!(pool, select_pool(1000, &subset, 200, 3));
        assert_ne!(pool, select_pool(1000, &subset, 200, 4));
        // Fewer images left than asked for: all of them.
        assert_eq!(
            select_pool(10, &[1, 2], 200, 0),
            vec![0, 3, 4, 5, 6, 7, 8, 9]
        );
        Ok(())
    }

    #[test]
    fn starting_points_are_other_class_images_classified_as_another_class() -> Result<()> {
        // Pool: (true label, prediction).
        let pool_labels = [0, 1, 1, 2, 2, 0];
        let pool_preds = [0, 0, 1, 2, 1, 1];
        // Label 0: pool 2 (1 -> 1), 3 (2 -> 2) and 4 (2 -> 1) qualify; 1 (1 -> 0) and 5 (0 -> 1)
        // do not (predicted 0, or of class 0).
        let seeds: Vec<u64> = (0..64).collect();
        let picks = choose_starting_points(&[0; 64], &seeds, &pool_labels, &pool_preds)?;
        assert!(picks.iter().all(|p| [2, 3, 4].contains(p)), "{picks:?}");
        for want in [2, 3, 4] {
            assert!(picks.contains(&want), "pool image {want} never drawn");
        }
        // Same seed, same pick, whatever else is in the batch.
        let alone = choose_starting_points(&[0], &[17], &pool_labels, &pool_preds)?;
        assert_eq!(alone[0], picks[17]);
        // Label 2 with no other-class image predicted as another class than 2: only the
        // fallback (a class-2 image classified as 1) is left.
        let picks = choose_starting_points(&[2], &[5], &[2, 0], &[1, 2])?;
        assert_eq!(picks, vec![0]);
        // Nothing classified as another class: no starting point, with the reason.
        let err = choose_starting_points(&[1], &[0], &[0, 2], &[1, 1]).unwrap_err();
        assert!(format!("{err:#}").contains("classifies all 2 pool images as 1"));
        assert!(choose_starting_points(&[1, 2], &[0], &[0], &[0]).is_err());
        Ok(())
    }

    #[test]
    fn boundary_reach_is_the_median_over_clean_correct_samples() {
        // Samples 0-4; sample 1 misclassified when clean (ignored), sample 3 not broken (inf).
        let correct = [true, false, true, true, true];
        let found = [true, true, true, false, true];
        let dist = [0.5, 0.0, 2.0, 9.0, 1.0];
        // Over {0.5, 2.0, inf, 1.0}: sorted 0.5 1.0 2.0 inf, median (1.0 + 2.0) / 2.
        let r = boundary_reach(&correct, &found, &dist);
        assert_eq!(
            r,
            BoundaryReach {
                clean_correct: 4,
                adversarial_found: 3,
                median_l2: Some(1.5)
            }
        );
        // Odd count: the middle value.
        assert_eq!(
            boundary_reach(&[true; 3], &[true; 3], &[3.0, 1.0, 2.0]).median_l2,
            Some(2.0)
        );
        // Found for at most half: the median is infinite, reported as None.
        let r = boundary_reach(&[true; 2], &[true, false], &[1.0, 1.0]);
        assert_eq!((r.adversarial_found, r.median_l2), (1, None));
        assert_eq!(boundary_reach(&[false], &[true], &[1.0]).clean_correct, 0);
    }

    #[test]
    fn rows_match_the_papers_keys() {
        for (m, n, a, _) in crate::paper::GRADIENT_FREE {
            assert!(MODEL_KINDS.iter().any(|k| k.name() == m));
            assert!(
                ROWS.iter()
                    .any(|r| RowKey::Attack(*r) == RowKey::parse(n, a).unwrap()),
                "{n} {a}"
            );
        }
    }
}
