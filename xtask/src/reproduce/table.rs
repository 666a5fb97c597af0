//! Tables 1-4: train (or reuse) CNN, Adv-L_inf, Adv-L_2, ABS and E-ABS on one dataset, attack each
//! with the paper's suite at the dataset's epsilons, and compare them with McNemar's test.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use eabs_attacks::{
    attack_fixed, attack_min, AdditiveGaussianNoise, AdditiveNoiseConfig, CarliniWagnerL2,
    Criterion, CwConfig, Ddn, DdnConfig, DeepFool, DeepFoolConfig, Eot, FixedEpsilonAttack,
    MinimizationAttack, Norm, Outcome, Pgd, PgdConfig,
};
use eabs_core::{Bounds, Classifier, Differentiable};
use eabs_datasets::{load, Dataset, DatasetKind, Split};
use eabs_inference::{AbsClassifier, AbsInference, FrozenAbsModel, LatentInference};
use eabs_models::{AdvNorm, Family, Model, ModelConfig, ModelKind, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::evaluate::{evaluate, select_subset, BatchResult};
use super::preset::{train_config, EvalSizes};
use super::provenance::{git_revision, unix_time, Hardware, Provenance, Timer};
use super::report::{add_all_row, build, write_outputs, Outcomes};
use super::ReproduceArgs;

/// One row of Tables 1-4: an attack and the norm it is bounded in.
#[derive(Debug, Clone, Copy)]
struct RowSpec {
    norm: &'static str,
    attack: &'static str,
}

/// The attack rows of Tables 1-4 in the paper's order (clean and the ALL rows are added around).
const ATTACK_ROWS: [RowSpec; 8] = [
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

/// The models of Tables 1-4, in column order.
const MODEL_KINDS: [ModelKind; 5] = [
    ModelKind::Cnn,
    ModelKind::AdvCnn(AdvNorm::Linf),
    ModelKind::AdvCnn(AdvNorm::L2),
    ModelKind::ABS,
    ModelKind::E_ABS,
];

fn attack_dataset(kind: DatasetKind) -> eabs_attacks::paper::Dataset {
    use eabs_attacks::paper::Dataset as D;
    match kind {
        DatasetKind::Mnist => D::Mnist,
        DatasetKind::FashionMnist => D::FashionMnist,
        DatasetKind::Svhn => D::Svhn,
        DatasetKind::SuperTraffic10 => D::SuperTraffic10,
    }
}

/// A trained model ready to be attacked.
enum Evaluated {
    Cnn(Box<eabs_models::Cnn>),
    Abs(Box<AbsClassifier<FrozenAbsModel>>),
}

impl Evaluated {
    fn classifier(&self) -> &dyn Differentiable {
        match self {
            Evaluated::Cnn(c) => c.as_ref(),
            Evaluated::Abs(a) => a.as_ref(),
        }
    }
}

/// Trains `kind` (resuming or reusing `dir`), returns the best-by-validation model.
#[allow(clippy::too_many_arguments)]
fn obtain(
    kind: ModelKind,
    family: Family,
    args: &ReproduceArgs,
    ckpt_root: &Path,
    train: &Dataset,
    val: &Dataset,
    device: &Device,
    timer: &mut Timer,
) -> Result<Model> {
    let dir = ckpt_root.join(kind.name());
    let cfg = train_config(args.preset, family, kind, args.seed);
    let trainer = Trainer::new(cfg, &dir)?;
    let best = trainer.best_path();
    timer.stage(&format!("train {}", kind.name()), || {
        let mut model = match kind {
            ModelKind::AdvCnn(_) => {
                // Madry et al. via the paper (Section 4.3): start from the trained CNN.
                let cnn_best = ckpt_root
                    .join(ModelKind::Cnn.name())
                    .join("best.safetensors");
                let cnn = Model::load(&cnn_best, device).with_context(|| {
                    format!(
                        "loading the CNN to adversarially train from {}",
                        cnn_best.display()
                    )
                })?;
                match cnn {
                    Model::Cnn(mut c) => {
                        c.set_kind(kind)?;
                        Model::Cnn(c)
                    }
                    Model::Abs(_) => bail!(
                        "{} holds an ABS model, expected the CNN",
                        cnn_best.display()
                    ),
                }
            }
            _ => Model::new(&ModelConfig::paper(family, kind), args.seed, device)?,
        };
        let summary = trainer.run(&mut model, train, val)?;
        tracing::info!(
            model = kind.name(),
            epochs = summary.epochs_done,
            best_epoch = ?summary.best_epoch,
            best_val_accuracy = ?summary.best_val_accuracy,
            "training done"
        );
        Ok(())
    })?;
    Model::load(&best, device).with_context(|| format!("loading {}", best.display()))
}

fn to_evaluated(model: Model, sizes: &EvalSizes, seed: u64) -> Result<Evaluated> {
    Ok(match model {
        Model::Cnn(c) => Evaluated::Cnn(Box::new(c.frozen())),
        Model::Abs(a) => {
            let frozen = FrozenAbsModel::new(&a);
            // E-ABS: variational inference (Section 3.3); ABS: exact inference (the reference).
            let (mode, base) = if a.variant() == eabs_models::Variant::ABS {
                (
                    LatentInference::Exact,
                    eabs_inference::InferenceConfig::abs_reference(),
                )
            } else {
                (
                    LatentInference::Variational,
                    frozen.inference_config(LatentInference::Variational),
                )
            };
            let cfg = sizes.inference(eabs_inference::InferenceConfig { mode, ..base });
            let inference = AbsInference::new(frozen, cfg)?;
            Evaluated::Abs(Box::new(AbsClassifier::new(inference, Bounds::UNIT, seed)))
        }
    })
}

fn rows_of(outcomes: &[Outcome]) -> BatchResult {
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

fn fixed<M: Differentiable + ?Sized, A: FixedEpsilonAttack<M>>(
    a: &A,
    m: &M,
    xs: &Tensor,
    c: &Criterion,
    eps: f64,
) -> Result<BatchResult> {
    Ok(rows_of(&attack_fixed(a, m, xs, c, &[eps])?))
}

fn minimise<M: Classifier + ?Sized, A: MinimizationAttack<M>>(
    a: &A,
    m: &M,
    xs: &Tensor,
    c: &Criterion,
    eps: f64,
) -> Result<BatchResult> {
    Ok(rows_of(&attack_min(a, m, xs, c, &[eps])?))
}

/// Runs one attack row on a batch. Gradient attacks on a randomised model see it through EOT
/// (Section 4.2: 5 samples per gradient in the paper).
#[allow(clippy::too_many_arguments)]
fn run_row<M: Differentiable + ?Sized>(
    row: RowSpec,
    sizes: &EvalSizes,
    ds: eabs_attacks::paper::Dataset,
    model: &M,
    xs: &Tensor,
    labels: &[u32],
    seed: u64,
) -> Result<BatchResult> {
    let c = Criterion::misclassification(labels.to_vec());
    let norm = if row.norm == "linf" {
        Norm::Linf
    } else {
        Norm::L2
    };
    let eps = ds.epsilon(norm);
    match row.attack {
        "pgd" => {
            let restarts = sizes.pgd_restarts.unwrap_or_else(|| ds.pgd_random_starts());
            let cfg = PgdConfig {
                steps: sizes.pgd_steps,
                restarts,
                seed,
                ..PgdConfig::paper(norm, restarts)
            };
            fixed(&Pgd::new(cfg)?, model, xs, &c, eps)
        }
        "deepfool" => {
            let cfg = DeepFoolConfig {
                steps: sizes.deepfool_steps,
                ..DeepFoolConfig::paper(norm)
            };
            minimise(&DeepFool::new(cfg)?, model, xs, &c, eps)
        }
        "ddn" => {
            let cfg = DdnConfig {
                steps: sizes.ddn_steps,
                ..DdnConfig::paper()
            };
            minimise(&Ddn::new(cfg)?, model, xs, &c, eps)
        }
        "cw" => {
            let cfg = CwConfig {
                binary_search_steps: sizes.cw_binary_steps,
                steps: sizes.cw_steps,
                ..CwConfig::paper()
            };
            minimise(&CarliniWagnerL2::new(cfg)?, model, xs, &c, eps)
        }
        "noise" => {
            let cfg = AdditiveNoiseConfig {
                steps: sizes.noise_steps,
                seed,
                norm,
                ..AdditiveNoiseConfig::paper()
            };
            minimise(&AdditiveGaussianNoise::new(cfg)?, model, xs, &c, eps)
        }
        other => bail!("unknown attack row {other}"),
    }
}

fn clean_row(model: &dyn Differentiable, xs: &Tensor, labels: &[u32]) -> Result<BatchResult> {
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

/// Reproduces one of Tables 1-4.
pub fn run(table: &str, kind: DatasetKind, args: &ReproduceArgs, command: &str) -> Result<PathBuf> {
    let started = unix_time();
    // The revision of the code that runs: read now, since the tree may change during a long run.
    let commit = git_revision(Path::new("."));
    let mut timer = Timer::new();
    let device = args.device.device()?;
    let sizes = {
        let mut s = EvalSizes::of(args.preset);
        if let Some(n) = args.samples {
            s.n_samples = n;
        }
        s
    };
    let family = Family::from(kind);
    let data_dir = args.data_dir.as_deref();
    let (train, val, test) = timer.stage("load data", || {
        Ok((
            load(kind, Split::Train, data_dir, args.seed)?,
            load(kind, Split::Validation, data_dir, args.seed)?,
            load(kind, Split::Test, data_dir, args.seed)?,
        ))
    })?;
    let subset = select_subset(test.len(), sizes.n_samples, args.seed)?;
    let out_dir = args.out.join(table).join(args.preset.as_str());
    let ckpt_root = args
        .checkpoints
        .join(family.name())
        .join(args.preset.as_str())
        .join(format!("seed{}", args.seed));
    let journal_root = out_dir.join("journal").join(format!("seed{}", args.seed));
    let ds = attack_dataset(kind);

    let mut outcomes: Outcomes = BTreeMap::new();
    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let model = obtain(
            mk, family, args, &ckpt_root, &train, &val, &device, &mut timer,
        )?;
        let evaluated = to_evaluated(model, &sizes, args.seed.wrapping_add(m_idx as u64))?;
        let clf = evaluated.classifier();
        let stochastic = clf.is_stochastic();
        let journal = |row: &str| journal_root.join(mk.name()).join(format!("{row}.jsonl"));
        let label = format!("{} clean", mk.name());
        // What a journal may be resumed with: the model's training and inference settings, and
        // for attack rows the attack, its epsilon and sizes (not the batch size or the number of
        // samples, which the per-sample records check themselves).
        let mut attack_sizes = serde_json::to_value(&sizes)?;
        if let Some(o) = attack_sizes.as_object_mut() {
            o.remove("n_samples");
            o.remove("batch_size");
        }
        let model_settings = serde_json::json!({
            "model": mk.name(),
            "train": train_config(args.preset, family, mk, args.seed),
            "inference_sizes": { "n_candidates": sizes.n_candidates, "n_adam_steps": sizes.n_adam_steps },
            "seed": args.seed,
        });
        let clean_settings = serde_json::json!({ "row": "clean", "model": model_settings });
        let rec = timer.stage(&label, || {
            evaluate(
                &journal("clean"),
                &clean_settings,
                &label,
                &test,
                &subset,
                1,
                sizes.batch_size,
                &device,
                &mut |xs, ys| clean_row(clf, xs, ys),
            )
        })?;
        outcomes
            .entry(("none".into(), "clean".into()))
            .or_default()
            .insert(mk.name().into(), rec.iter().map(|r| r.robust[0]).collect());
        for (r_idx, row) in ATTACK_ROWS.iter().enumerate() {
            let label = format!("{} {} {}", mk.name(), row.norm, row.attack);
            let seed = args.seed.wrapping_mul(1000).wrapping_add(r_idx as u64);
            let rec = timer.stage(&label, || {
                evaluate(
                    &journal(&format!("{}-{}", row.norm, row.attack)),
                    &serde_json::json!({
                        "row": format!("{}-{}", row.norm, row.attack),
                        "epsilon": ds.epsilon(if row.norm == "linf" { Norm::Linf } else { Norm::L2 }),
                        "attack_seed": seed,
                        "sizes": attack_sizes,
                        "eot": stochastic,
                        "model": model_settings,
                    }),
                    &label,
                    &test,
                    &subset,
                    1,
                    sizes.batch_size,
                    &device,
                    &mut |xs, ys| {
                        if stochastic {
                            let eot = Eot::new(clf, sizes.eot_samples)?;
                            run_row(*row, &sizes, ds, &eot, xs, ys, seed)
                        } else {
                            run_row(*row, &sizes, ds, clf, xs, ys, seed)
                        }
                    },
                )
            })?;
            outcomes
                .entry((row.norm.into(), row.attack.into()))
                .or_default()
                .insert(mk.name().into(), rec.iter().map(|r| r.robust[0]).collect());
        }
    }
    add_all_row(&mut outcomes, "linf", &names)?;
    add_all_row(&mut outcomes, "l2", &names)?;

    let linf = ds.epsilon(Norm::Linf);
    let l2 = ds.epsilon(Norm::L2);
    let mut order: Vec<(String, String, f64)> = vec![("none".into(), "clean".into(), 0.0)];
    for (norm, eps) in [("linf", linf), ("l2", l2)] {
        for row in ATTACK_ROWS.iter().filter(|r| r.norm == norm) {
            order.push((norm.into(), row.attack.into(), eps));
        }
        order.push((norm.into(), "all".into(), eps));
    }
    let config = serde_json::json!({
        "table": table,
        "dataset": kind.name(),
        "preset": args.preset,
        "seed": args.seed,
        "sizes": sizes,
        "epsilons": { "linf": linf, "l2": l2 },
        "models": names,
        "train": MODEL_KINDS.iter().map(|&k| train_config(args.preset, family, k, args.seed)).collect::<Vec<_>>(),
        "checkpoints": ckpt_root,
    });
    let provenance = Provenance {
        commit,
        preset: args.preset.as_str().into(),
        seed: args.seed,
        device: format!("{:?}", args.device).to_lowercase(),
        hardware: Hardware::detect(),
        started_unix: started,
        finished_unix: unix_time(),
        stages: timer.into_stages(),
        command: command.into(),
    };
    let paper = |m: &str, n: &str, a: &str| crate::paper::paper_accuracy(table, m, n, a);
    let report = build(
        table,
        kind.name(),
        &names,
        subset.clone(),
        &order,
        &outcomes,
        &paper,
        config.clone(),
        provenance,
    )?;
    let dataset_name = crate::paper::TABLES
        .iter()
        .find(|t| t.id == table)
        .map_or(kind.name(), |t| t.dataset);
    let title = format!(
        "{} ({dataset_name}): accuracy under attack",
        table.replace("table", "Table ")
    );
    write_outputs(&out_dir, &report, &outcomes, &title)?;
    Ok(out_dir)
}
