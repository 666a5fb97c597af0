//! `cargo xtask eval`: one model, one attack, one number (with its 95% interval), for users who
//! want a single figure rather than a table.
//!
//! The model comes from the checkpoint tree `train` and `reproduce` share (or `--checkpoint`);
//! eval never trains. The attack is the paper's (Section 4.2) at the preset's sizes, at the
//! dataset's epsilon unless `--epsilon` says otherwise. Samples are the same seeded subset as
//! `reproduce` uses, and every finished batch is journaled under
//! `<out>/eval/journal/`, so an interrupted evaluation resumes.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use eabs_attacks::Norm;
use eabs_datasets::{load, Split};
use eabs_eval::experiment::attack_fingerprint;
use eabs_eval::preset::EvalSizes;
use eabs_eval::provenance::{git_revision, unix_time, Hardware, Timer};
use eabs_eval::suite::{clean_row, row_config, run_row_at, Epsilon};
use eabs_eval::targets::table::column_of;
use eabs_eval::zoo::{default_inference, to_evaluated, trained_with, CheckpointId};
use eabs_eval::{evaluate, select_subset, AttackKind, AttackRow};
use eabs_inference::LatentInference;
use eabs_models::Model;
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::train::ModelArgs;

/// The attacks of Tables 1-4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackArg {
    /// No attack: clean accuracy.
    Clean,
    /// PGD with random starts (L_inf or L_2).
    Pgd,
    /// DeepFool (L_inf or L_2).
    Deepfool,
    /// Additive Gaussian noise of growing size (L_inf or L_2).
    Noise,
    /// Decoupled direction and norm (L_2).
    Ddn,
    /// Carlini-Wagner with binary search (L_2).
    Cw,
    /// Auto-PGD on the cross-entropy (beyond the paper).
    ApgdCe,
    /// Auto-PGD on the difference-of-logits ratio (beyond the paper).
    ApgdDlr,
}

impl AttackArg {
    /// The suite's attack (`None` for clean accuracy).
    fn kind(self) -> Option<AttackKind> {
        match self {
            AttackArg::Clean => None,
            AttackArg::Pgd => Some(AttackKind::Pgd),
            AttackArg::Deepfool => Some(AttackKind::DeepFool),
            AttackArg::Noise => Some(AttackKind::Noise),
            AttackArg::Ddn => Some(AttackKind::Ddn),
            AttackArg::Cw => Some(AttackKind::Cw),
            AttackArg::ApgdCe => Some(AttackKind::ApgdCe),
            AttackArg::ApgdDlr => Some(AttackKind::ApgdDlr),
        }
    }
}

/// Perturbation norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NormArg {
    /// L_inf.
    Linf,
    /// L_2.
    L2,
}

/// ABS-style latent inference (Section 3.3; Table 5's V).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceArg {
    /// Optimise the latent mean only (ABS).
    Exact,
    /// Optimise mean and variance with the reparameterisation trick (E-ABS).
    Variational,
}

/// A loss for PGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PgdLossArg {
    /// Cross-entropy (the paper's).
    Ce,
    /// Carlini-Wagner's logit margin.
    Margin,
    /// Difference of logits ratio (AutoAttack).
    Dlr,
}

/// Arguments of `cargo xtask eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluate this checkpoint instead of the preset's best one.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The attack (`clean` for clean accuracy).
    #[arg(long, value_enum, default_value_t = AttackArg::Clean)]
    pub attack: AttackArg,
    /// Norm of the attack (DDN and CW are L_2 only).
    #[arg(long, value_enum)]
    pub norm: Option<NormArg>,
    /// Perturbation budget (default: the dataset's, Section 4.2).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Number of test samples (default: the preset's).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Latent inference of an ABS-like model (default: exact for ABS, variational otherwise).
    #[arg(long, value_enum)]
    pub inference: Option<InferenceArg>,
    /// Random latent candidates of ABS-style inference (default: the preset's).
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Adam updates of ABS-style inference (default: the preset's).
    #[arg(long)]
    pub adam_steps: Option<usize>,
    /// The loss PGD ascends: ce (the paper's cross-entropy, default), margin (Carlini-Wagner's
    /// logit margin) or dlr (Croce & Hein's difference of logits ratio): the scale-free losses
    /// for ABS-like models, whose logits differ by ~1e-2.
    #[arg(long, value_enum)]
    pub pgd_loss: Option<PgdLossArg>,
    /// Carlini-Wagner's early abort: batch (Foolbox's, default), per-sample or never.
    #[arg(long)]
    pub cw_abort: Option<eabs_attacks::CwAbort>,
    /// Where the journal (for resuming) goes: `<out>/eval/journal/...`.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Also write the result (with per-sample outcomes and provenance) to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Start the journal over when its inputs (checkpoint, data, settings) changed, instead of
    /// refusing to resume it.
    #[arg(long)]
    pub restart_changed: bool,
}

/// The row an attack and norm make, or why they do not make one.
fn row_of(attack: AttackArg, norm: Option<NormArg>) -> Result<Option<AttackRow>> {
    let Some(kind) = attack.kind() else {
        if norm.is_some() {
            bail!("--norm makes no sense for clean accuracy");
        }
        return Ok(None);
    };
    let norm = match norm {
        Some(NormArg::Linf) => Norm::Linf,
        Some(NormArg::L2) => Norm::L2,
        None if !kind.supports(Norm::Linf) => Norm::L2,
        None => bail!("--norm linf or --norm l2 is needed for {}", kind.as_str()),
    };
    if !kind.supports(norm) {
        bail!("{} is an L_2 attack; use --norm l2", kind.as_str());
    }
    Ok(Some(AttackRow::new(norm, kind)))
}

/// File name of an eval journal: the row, and for attacks the epsilon in scientific notation
/// (short and exact for any finite f64: `1e308` stays a short name).
fn journal_name(row_name: &str, attacked: bool, eps: f64) -> String {
    if attacked {
        format!("{row_name}-eps{eps:e}.jsonl")
    } else {
        format!("{row_name}.jsonl")
    }
}

/// Runs `cargo xtask eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let a = &args.model;
    let commit = git_revision(Path::new("."));
    let started = unix_time();
    let row = row_of(args.attack, args.norm)?;
    let device = a.device.device()?;
    let mut sizes = EvalSizes::of(a.preset);
    if let Some(n) = args.samples {
        sizes.n_samples = n;
    }
    if let Some(n) = args.candidates {
        sizes.n_candidates = n;
    }
    if let Some(n) = args.adam_steps {
        sizes.n_adam_steps = n;
    }
    if let Some(l) = args.pgd_loss {
        if args.attack != AttackArg::Pgd {
            bail!("--pgd-loss applies to --attack pgd");
        }
        sizes.pgd_losses = vec![match l {
            PgdLossArg::Ce => eabs_attacks::Loss::CrossEntropy,
            PgdLossArg::Margin => eabs_attacks::Loss::Margin,
            PgdLossArg::Dlr => eabs_attacks::Loss::Dlr,
        }];
    }
    if let Some(abort) = args.cw_abort {
        if args.attack != AttackArg::Cw {
            bail!("--cw-abort applies to --attack cw");
        }
        sizes.cw_abort = abort;
    }
    let ds = a.dataset;
    let eps = match (row, args.epsilon) {
        (None, Some(_)) => bail!("--epsilon makes no sense for clean accuracy; give --attack too"),
        (None, None) => 0.0,
        (Some(_), Some(e)) if !(e.is_finite() && e >= 0.0) => {
            bail!("--epsilon must be a finite non-negative number, got {e}")
        }
        (Some(_), Some(e)) => e,
        (Some(r), None) => ds.epsilon(r.norm),
    };
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| a.model_dir().join("best.safetensors"));
    if !ckpt.is_file() {
        bail!(
            "no checkpoint at {}: train it first with `cargo xtask train --dataset {} --model {} --preset {} --seed {}` \
             (or pass --checkpoint FILE)",
            ckpt.display(),
            a.dataset.name(),
            a.model.name().to_lowercase(),
            a.preset.as_str(),
            a.seed
        );
    }
    if let Some(json) = &args.json {
        if json.is_dir() {
            bail!("--json {} is a directory; give a file name", json.display());
        }
    }
    // The checkpoint must hold the model and dataset asked for (its metadata says which), and
    // the journal is bound to its content, not its path.
    let checkpoint = CheckpointId::of(&ckpt)?;
    let trained_with = trained_with(&ckpt)?;
    let model = Model::load_as(&ckpt, a.dataset, a.model, &device)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    let mode = args.inference.map(|i| match i {
        InferenceArg::Exact => LatentInference::Exact,
        InferenceArg::Variational => LatentInference::Variational,
    });
    let inference = match &model {
        Model::Abs(m) => Some(mode.unwrap_or_else(|| default_inference(m.variant()))),
        Model::Cnn(_) if mode.is_some() => {
            bail!(
                "--inference applies to ABS-like models; {} is a CNN",
                ckpt.display()
            )
        }
        Model::Cnn(_) => None,
    };
    // The seeds of the model's column and of the row in Tables 1-4, so that `eval` at the
    // preset's sizes recomputes a table cell sample for sample.
    let inference_seed = eabs_eval::seeds::inference(a.seed, column_of(a.model).unwrap_or(0));
    let evaluated = to_evaluated(model, &sizes, mode, inference_seed)?;
    let clf = evaluated.classifier();
    let stochastic = clf.is_stochastic();
    let data_dir = a.data_dir.as_deref();
    let test = load(a.dataset, Split::Test, data_dir, a.seed)?;
    let subset = select_subset(test.len(), sizes.n_samples, a.seed)?;
    let test_sha256 = test.content_sha256();

    let row_name = row.map_or("clean".to_string(), |r| r.key());
    // Inference sizes other than the preset's get their own journal folder, so that a sweep
    // (`--candidates 1`, then `10`, ...) does not collide with itself; the settings beside each
    // journal still guard everything else.
    let mut mode_name = inference.map_or(String::new(), |m| format!("-{m:?}").to_lowercase());
    if let Some(n) = args.candidates {
        mode_name.push_str(&format!("-candidates{n}"));
    }
    if let Some(n) = args.adam_steps {
        mode_name.push_str(&format!("-adam{n}"));
    }
    if let Some(l) = args.pgd_loss {
        mode_name.push_str(&format!("-{l:?}").to_lowercase());
    }
    if let Some(abort) = args.cw_abort {
        mode_name.push_str(&format!("-abort-{abort:?}").to_lowercase());
    }
    let journal_dir = args
        .out
        .join("eval")
        .join("journal")
        .join(a.dataset.name())
        .join(a.preset.as_str())
        .join(format!("seed{}", a.seed))
        .join(format!("{}{mode_name}", a.model.name()));
    let journal = journal_dir.join(journal_name(&row_name, row.is_some(), eps));
    // One evaluation per journal folder at a time.
    let _lock = eabs_eval::lock::DirLock::acquire(&journal_dir, "eval journal folder")?;
    let attack_sizes = attack_fingerprint(&sizes)?;
    let attack_seed = row
        .and_then(|r| eabs_eval::seeds::table_attack(a.seed, r))
        .unwrap_or_else(|| eabs_eval::seeds::attack(a.seed, 0));
    let settings_of = |row: Option<AttackRow>, eps: f64| -> Result<serde_json::Value> {
        // The clean row's seed is the attack seed of no row, whatever row follows it, so that
        // every attack evaluated in this folder shares one clean journal.
        let attack_seed = if row.is_some() {
            attack_seed
        } else {
            eabs_eval::seeds::attack(a.seed, 0)
        };
        let mut s = serde_json::json!({
            "checkpoint_sha256": checkpoint.sha256,
            "test_data_sha256": test_sha256,
            // What the weights were trained with (null when no `train_config.json` lies
            // beside them), not the preset's configuration.
            "train": trained_with,
            "inference": inference,
            "inference_seed": inference_seed,
            "row": row.map_or("clean".to_string(), |r| r.key()),
            "epsilon": eps,
            "sizes": attack_sizes,
            "attack_seed": attack_seed,
            "attack": row.map(|r| row_config(r, &sizes, ds, attack_seed)).transpose()?,
            "eot": stochastic,
        });
        eabs_eval::experiment::bind_inference_noise(&mut s, stochastic);
        if let (true, Some(map)) = (stochastic, s.as_object_mut()) {
            map.insert(
                "verdict".into(),
                serde_json::json!({ "majority_of_draws": sizes.verdict_draws }),
            );
        }
        Ok(s)
    };
    let settings = settings_of(row, eps)?;
    let resume = crate::reproduce::resume_policy(args.restart_changed);
    let mut timer = Timer::new();
    // The clean verdicts first: an attack row counts a sample robust only when its clean image
    // is classified correctly too (the verdict protocol; journaled beside the row's).
    let clean_label = format!("{} clean", a.model.name());
    let clean = timer.stage(&clean_label, || {
        evaluate(
            &journal_dir.join(journal_name("clean", false, 0.0)),
            &settings_of(None, 0.0)?,
            resume,
            &clean_label,
            &test,
            &subset,
            1,
            sizes.batch_size,
            &device,
            &mut |xs, ys| clean_row(clf, xs, ys, sizes.verdict_draws),
        )
    })?;
    let label = format!("{} {row_name}", a.model.name());
    let records = match row {
        None => clean,
        Some(r) => {
            let attacked = timer.stage(&label, || {
                evaluate(
                    &journal,
                    &settings,
                    resume,
                    &label,
                    &test,
                    &subset,
                    1,
                    sizes.batch_size,
                    &device,
                    &mut |xs, ys| run_row_at(r, &sizes, ds, clf, xs, ys, attack_seed, eps),
                )
            })?;
            attacked
                .into_iter()
                .zip(&clean)
                .map(|(mut rec, c)| {
                    if !c.robust[0] {
                        rec.robust[0] = false;
                        rec.distance[0] = 0.0;
                    }
                    rec
                })
                .collect()
        }
    };
    let robust: Vec<bool> = records.iter().map(|r| r.robust[0]).collect();
    let acc = eabs_stats::accuracy(&robust, 0.95)?;
    let what = match row {
        None => "clean accuracy".to_string(),
        Some(r) => format!(
            "accuracy under {} {} at eps = {eps}",
            r.attack.as_str(),
            eabs_eval::suite::norm_title(r.norm)
        ),
    };
    println!(
        "{} on {} ({}{}): {what}: {:.1}% ({}/{}), 95% interval [{:.1}, {:.1}]",
        a.model.name(),
        a.dataset.name(),
        ckpt.display(),
        inference.map_or(String::new(), |m| format!(", {m:?} inference")),
        100.0 * acc.rate,
        acc.correct,
        acc.total,
        100.0 * acc.lower,
        100.0 * acc.upper
    );
    if let Some(path) = &args.json {
        eabs_eval::write_json(
            path,
            &serde_json::json!({
                "model": a.model.name(),
                "dataset": a.dataset.name(),
                "checkpoint": checkpoint,
                "inference": inference,
                "row": row_name,
                "epsilon": eps,
                "accuracy": acc,
                "samples": subset,
                "robust": robust,
                "distances": records.iter().map(|r| r.distance[0]).collect::<Vec<_>>(),
                "settings": settings,
                "provenance": {
                    "commit": commit,
                    "preset": a.preset.as_str(),
                    "seed": a.seed,
                    "device": a.device.as_str(),
                    "hardware": Hardware::detect(),
                    "started_unix": started,
                    "finished_unix": unix_time(),
                    "stages": timer.into_stages(),
                    "command": crate::reproduce::command_line(),
                },
            }),
        )?;
        println!("written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_stay_short_for_any_epsilon() {
        assert_eq!(journal_name("clean", false, 0.0), "clean.jsonl");
        assert_eq!(
            journal_name("linf-pgd", true, 0.1),
            "linf-pgd-eps1e-1.jsonl"
        );
        let huge = journal_name("l2-pgd", true, 1e308);
        assert_eq!(huge, "l2-pgd-eps1e308.jsonl");
        assert!(journal_name("l2-pgd", true, f64::MAX).len() < 60);
    }

    #[test]
    fn attack_and_norm_combinations() {
        assert!(row_of(AttackArg::Clean, None).unwrap().is_none());
        assert!(row_of(AttackArg::Clean, Some(NormArg::L2)).is_err());
        let r = row_of(AttackArg::Cw, None).unwrap().unwrap();
        assert_eq!(r, AttackRow::new(Norm::L2, AttackKind::Cw));
        let err = row_of(AttackArg::Ddn, Some(NormArg::Linf)).unwrap_err();
        assert!(err.to_string().contains("L_2 attack"), "{err}");
        assert!(row_of(AttackArg::Pgd, None).is_err());
        let r = row_of(AttackArg::Deepfool, Some(NormArg::Linf))
            .unwrap()
            .unwrap();
        assert_eq!(r, AttackRow::new(Norm::Linf, AttackKind::DeepFool));
    }
}
