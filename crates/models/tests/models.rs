//! Integration tests: shapes of every Table 9 configuration, training that lowers the loss,
//! checkpoint round trips, bit-exact resume, and the errors on bad checkpoints and data.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{synthetic, tiny_config, tiny_train_config};
use eabs_core::host::{self, HostRead};
use eabs_core::{Classifier, Differentiable};
use eabs_models::checkpoint::{model_metadata, save_tensors, store_tensors};
use eabs_models::params::{derive_rng, Stream};
use eabs_models::{
    AbsModel, Adam, AdvNorm, Cnn, DatasetKind, Error, Model, ModelConfig, ModelKind, Trainer,
    Variant,
};

const ALL_KINDS: [ModelKind; 5] = [
    ModelKind::Cnn,
    ModelKind::Abs(Variant::ABS),
    ModelKind::Abs(Variant::A_ABS),
    ModelKind::Abs(Variant::D_ABS),
    ModelKind::Abs(Variant::E_ABS),
];

#[test]
fn every_table_9_config_has_the_right_shapes() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for family in DatasetKind::ALL {
        let cfg = ModelConfig::paper(family, ModelKind::E_ABS);
        let (c, h, w) = cfg.arch.image_shape;
        let m = AbsModel::new(&cfg, 0, &dev)?;
        let xs = Tensor::rand(0f32, 1f32, (2, c, h, w), &dev)?;
        let (mean, logvar) = m.encoder_for(0).forward(&xs, false)?;
        assert_eq!(mean.dims(), &[2, cfg.arch.latent_dim]);
        assert_eq!(logvar.dims(), &[2, cfg.arch.latent_dim]);
        assert_eq!(m.decoders().len(), 10);
        let r = m.decoders()[3].forward(&mean, false)?;
        assert_eq!(r.dims(), &[2, c, h, w]);
        let d = m
            .discriminator_for(5)
            .expect("E-ABS has a discriminator")
            .forward(&mean, false)?;
        assert_eq!(d.dims(), &[2]);
        let dv = d.host_vec1::<f32>()?;
        assert!(dv.iter().all(|&p| p > 0.0 && p < 1.0));
        let cnn = Cnn::new(&ModelConfig::paper(family, ModelKind::Cnn), 0, &dev)?;
        assert_eq!(cnn.logits(&xs)?.dims(), &[2, 10]);
        // Train-mode forward too (BatchNorm with batch statistics, dropout).
        assert_eq!(cnn.forward(&xs, true)?.dims(), &[2, 10]);
    }
    // Discriminator widths: 512/256 for SVHN.
    let svhn = AbsModel::new(
        &ModelConfig::paper(DatasetKind::Svhn, ModelKind::E_ABS),
        0,
        &dev,
    )?;
    assert_eq!(
        svhn.store().params()["discriminator.fc0.weight"].dims(),
        &[512, 40]
    );
    assert_eq!(
        svhn.store().params()["discriminator.fc1.weight"].dims(),
        &[256, 512]
    );
    Ok(())
}

#[test]
fn variants_have_the_documented_modules() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let count = |m: &AbsModel| {
        (
            m.encoders().len(),
            m.decoders().len(),
            m.discriminators().len(),
        )
    };
    let abs = AbsModel::new(&tiny_config(ModelKind::Abs(Variant::ABS)), 0, &dev)?;
    assert_eq!(count(&abs), (3, 3, 0));
    let a = AbsModel::new(&tiny_config(ModelKind::Abs(Variant::A_ABS)), 0, &dev)?;
    assert_eq!(count(&a), (3, 3, 3));
    let d = AbsModel::new(&tiny_config(ModelKind::Abs(Variant::D_ABS)), 0, &dev)?;
    assert_eq!(count(&d), (1, 3, 0));
    let e = AbsModel::new(&tiny_config(ModelKind::E_ABS), 0, &dev)?;
    assert_eq!(count(&e), (1, 3, 1));
    assert!(e.store().params().contains_key("discriminator.fc2.weight"));
    assert!(a.store().params().contains_key("discriminators.2.fc0.bias"));
    assert!(abs
        .store()
        .buffers()
        .contains_key("encoders.1.bn0.running_var"));
    Ok(())
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() -> anyhow::Result<()> {
    let cfg = tiny_config(ModelKind::E_ABS);
    let a = AbsModel::new(&cfg, 5, &Device::Cpu)?;
    let b = AbsModel::new(&cfg, 5, &Device::Cpu)?;
    let c = AbsModel::new(&cfg, 6, &Device::Cpu)?;
    let w = |m: &AbsModel| {
        m.store().params()["decoders.1.convt1.weight"]
            .flatten_all()
            .unwrap()
            .host_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    Ok(())
}

/// A few Adam steps on one fixed tiny batch lower the training objective, for every model kind.
#[test]
fn loss_decreases_over_a_few_steps() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let data = synthetic(24, 1, "train");
    let idx: Vec<usize> = (0..24).collect();
    use eabs_models::TrainingData;
    let xs = data.images(&idx, &dev)?;
    let labels = host::from_vec(data.labels(&idx), 24, &dev)?;
    for kind in ALL_KINDS {
        let model = Model::new(&tiny_config(kind), 3, &dev)?;
        let params = model.store().params_without_prefix("discriminator");
        let mut adam = Adam::new();
        let mut losses = Vec::new();
        for step in 0..12u64 {
            model.dropout_rng().reseed(step);
            let mut rng = derive_rng(0, Stream::Step, 0, step);
            let loss = match &model {
                Model::Cnn(c) => eabs_models::loss::cross_entropy(&c.forward(&xs, true)?, &labels)?,
                Model::Abs(m) => m.training_loss(&xs, &labels, &mut rng)?.0.total,
            };
            losses.push(loss.host_scalar::<f32>()?);
            adam.step(&loss.backward()?, &params, 1e-2)?;
        }
        let first = losses[..3].iter().sum::<f32>();
        let last = losses[9..].iter().sum::<f32>();
        assert!(
            last < first,
            "{}: losses did not decrease: {losses:?}",
            kind.name()
        );
    }
    Ok(())
}

#[test]
fn training_writes_checkpoints_and_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kind = ModelKind::E_ABS;
    let mut model = Model::new(&tiny_config(kind), 0, &Device::Cpu)?;
    let summary = Trainer::new(tiny_train_config(kind, 2), dir.path())?.run(
        &mut model,
        &synthetic(36, 1, "train"),
        &synthetic(12, 2, "val"),
    )?;
    assert_eq!(summary.epochs_done, 2);
    assert_eq!(summary.history.len(), 2);
    let m = &summary.history[1];
    assert!(
        m.train_loss.is_finite()
            && m.train_discriminator.is_some()
            && m.train_discriminative.is_some()
    );
    assert!((0.0..=1.0).contains(&m.val_accuracy));
    assert_eq!(m.lr, 3e-3);
    let lines = eabs_models::train::read_metrics_file(&dir.path().join("metrics.jsonl"))?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1].epoch, 2);
    assert!((lines[1].train_loss - m.train_loss).abs() < 1e-9);
    let best = Model::load(&dir.path().join("best.safetensors"), &Device::Cpu)?;
    assert_eq!(best.config(), model.config());
    assert!(dir.path().join("train_config.json").exists());
    Ok(())
}

#[test]
fn cnn_learns_the_synthetic_task() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kind = ModelKind::Cnn;
    let mut model = Model::new(&tiny_config(kind), 0, &Device::Cpu)?;
    let cfg = eabs_models::TrainConfig {
        epochs: 8,
        lr_halve_every: None,
        max_train_samples: None,
        ..tiny_train_config(kind, 8)
    };
    let s = Trainer::new(cfg, dir.path())?.run(
        &mut model,
        &synthetic(60, 1, "train"),
        &synthetic(30, 2, "val"),
    )?;
    assert!(
        s.best_val_accuracy.unwrap_or(0.0) >= 0.9,
        "{:?}",
        s.history.iter().map(|m| m.val_accuracy).collect::<Vec<_>>()
    );
    Ok(())
}

fn assert_same_tensors(a: &Model, b: &Model) -> anyhow::Result<()> {
    let (ta, tb) = (store_tensors(a.store()), store_tensors(b.store()));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, t) in &ta {
        let x = t.flatten_all()?.host_vec1::<f32>()?;
        let y = tb[name].flatten_all()?.host_vec1::<f32>()?;
        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "tensor {name} differs");
    }
    Ok(())
}

#[test]
fn checkpoint_round_trip_is_bit_exact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = Device::Cpu;
    for kind in ALL_KINDS {
        let cfg = tiny_config(kind);
        let model = Model::new(&cfg, 9, &dev)?;
        // Move BatchNorm statistics away from their initial values.
        let xs = Tensor::rand(0f32, 1f32, (4, 1, 8, 8), &dev)?;
        match &model {
            Model::Cnn(c) => drop(c.forward(&xs, true)?),
            Model::Abs(m) => {
                drop(m.decoders()[0].forward(&m.encoder_for(0).forward(&xs, true)?.0, true)?)
            }
        }
        let path = dir.path().join(format!("{}.safetensors", kind.name()));
        model.save(&path)?;
        let back = Model::load(&path, &dev)?;
        assert_eq!(back.config(), &cfg);
        assert_same_tensors(&model, &back)?;
        let back2 = Model::load_expecting(&path, &cfg, &dev)?;
        assert_same_tensors(&model, &back2)?;
    }
    Ok(())
}

fn resume_equals_uninterrupted(kind: ModelKind) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let train = synthetic(36, 1, "train");
    let val = synthetic(12, 2, "val");
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let cfg = tiny_train_config(kind, 3);
    let mut full = Model::new(&tiny_config(kind), cfg.seed, &dev)?;
    Trainer::new(cfg.clone(), a.path())?.run(&mut full, &train, &val)?;

    let mut first = Model::new(&tiny_config(kind), cfg.seed, &dev)?;
    let s = Trainer::new(cfg.clone(), b.path())?.run_until(&mut first, &train, &val, 1)?;
    assert_eq!(s.epochs_done, 1);
    // A fresh process: a model initialised from another seed, restored from last.safetensors.
    let mut resumed = Model::new(&tiny_config(kind), 12345, &dev)?;
    let s = Trainer::new(cfg, b.path())?.run(&mut resumed, &train, &val)?;
    assert_eq!(s.epochs_done, 3);
    assert_eq!(s.history.len(), 3);
    assert_same_tensors(&full, &resumed)?;
    // The optimiser state on disk matches too.
    let la = eabs_models::Checkpoint::read(&a.path().join("last.safetensors"), &dev)?;
    let lb = eabs_models::Checkpoint::read(&b.path().join("last.safetensors"), &dev)?;
    assert_eq!(
        la.tensors.keys().collect::<Vec<_>>(),
        lb.tensors.keys().collect::<Vec<_>>()
    );
    for (n, t) in &la.tensors {
        assert_eq!(
            t.flatten_all()?.host_vec1::<f32>()?,
            lb.tensors[n].flatten_all()?.host_vec1::<f32>()?,
            "{n}"
        );
    }
    Ok(())
}

#[test]
fn resume_equals_uninterrupted_e_abs() -> anyhow::Result<()> {
    resume_equals_uninterrupted(ModelKind::E_ABS)
}

#[test]
fn resume_equals_uninterrupted_a_abs_and_cnn() -> anyhow::Result<()> {
    resume_equals_uninterrupted(ModelKind::Abs(Variant::A_ABS))?;
    resume_equals_uninterrupted(ModelKind::Cnn)?;
    resume_equals_uninterrupted(ModelKind::AdvCnn(AdvNorm::Linf))
}

#[test]
fn adversarial_training_starts_from_the_cnn_and_trains_on_pgd_examples() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let (train, val) = (synthetic(36, 1, "train"), synthetic(12, 2, "val"));
    let dir = tempfile::tempdir()?;
    let mut cnn = Model::new(&tiny_config(ModelKind::Cnn), 0, &dev)?;
    Trainer::new(tiny_train_config(ModelKind::Cnn, 2), dir.path().join("cnn"))?
        .run(&mut cnn, &train, &val)?;
    let best = dir.path().join("cnn").join("best.safetensors");
    for norm in [AdvNorm::Linf, AdvNorm::L2] {
        let kind = ModelKind::AdvCnn(norm);
        let mut adv = Model::adversarial_from_cnn(&best, norm, &dev)?;
        assert_eq!(adv.config().kind, kind);
        let cfg = tiny_train_config(kind, 1);
        assert_eq!(
            cfg.noise_std, 0.0,
            "no noise for adversarially trained models"
        );
        let s =
            Trainer::new(cfg.clone(), dir.path().join(kind.name()))?.run(&mut adv, &train, &val)?;
        assert!(s.history[0].train_loss.is_finite());
        let adv_cfg = cfg
            .adversarial
            .clone()
            .expect("an Adv-CNN config has PGD settings");
        // The same run at epsilon 0 (PGD returns the clean images) ends elsewhere: the PGD
        // examples are what the model was trained on.
        let mut adv0 = Model::adversarial_from_cnn(&best, norm, &dev)?;
        let cfg0 = eabs_models::TrainConfig {
            adversarial: cfg
                .adversarial
                .clone()
                .map(|a| eabs_models::AdvTrainConfig { epsilon: 0.0, ..a }),
            ..cfg
        };
        Trainer::new(cfg0, dir.path().join(format!("{}-eps0", kind.name())))?
            .run(&mut adv0, &train, &val)?;
        let w = |m: &Model| {
            m.store().params()["classifier.weight"]
                .flatten_all()
                .unwrap()
                .host_vec1::<f32>()
                .unwrap()
        };
        assert_ne!(w(&adv), w(&adv0));
        assert_ne!(w(&adv), w(&cnn));
        // Checkpoints are selected by robust validation accuracy: never above the clean one,
        // and equal to it at epsilon 0 (PGD then returns the clean images).
        let Model::Cnn(adv_cnn) = &adv else {
            panic!("an Adv-CNN is a CNN")
        };
        let idx: Vec<usize> = (0..eabs_models::TrainingData::len(&val)).collect();
        let (clean, _) = eabs_models::train::evaluate(&adv, &val, &idx, 8, &dev)?;
        let robust =
            eabs_models::train::evaluate_robust(adv_cnn, &val, &idx, 8, &dev, &adv_cfg, 1)?;
        assert!(robust <= clean, "robust {robust} > clean {clean}");
        let zero = eabs_models::AdvTrainConfig {
            epsilon: 0.0,
            ..adv_cfg
        };
        let same = eabs_models::train::evaluate_robust(adv_cnn, &val, &idx, 8, &dev, &zero, 1)?;
        assert_eq!(same, clean);

        let back = Model::load(&dir.path().join(kind.name()).join("last.safetensors"), &dev)?;
        assert_eq!(back.config().kind, kind);
    }
    // Only a CNN checkpoint can be the starting point.
    let eabs = Model::new(&tiny_config(ModelKind::E_ABS), 0, &dev)?;
    let p = dir.path().join("eabs.safetensors");
    eabs.save(&p)?;
    assert!(matches!(
        Model::adversarial_from_cnn(&p, AdvNorm::L2, &dev),
        Err(Error::InvalidConfig(_))
    ));
    Ok(())
}

#[test]
fn bad_checkpoints_give_named_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let cfg = tiny_config(ModelKind::E_ABS);
    let model = Model::new(&cfg, 0, &dev)?;
    let good = dir.path().join("good.safetensors");
    model.save(&good)?;
    let bytes = std::fs::read(&good)?;

    // Truncated file.
    let trunc = dir.path().join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2])?;
    assert!(matches!(
        Model::load(&trunc, &dev),
        Err(Error::Safetensors { .. })
    ));
    // Garbage header.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all")?;
    assert!(matches!(
        Model::load(&junk, &dev),
        Err(Error::Safetensors { .. })
    ));
    // Missing file.
    assert!(matches!(
        Model::load(&dir.path().join("nope.safetensors"), &dev),
        Err(Error::Io { .. })
    ));

    // Another kind of model, or another dataset, than asked for: both named.
    let other = tiny_config(ModelKind::Abs(Variant::ABS));
    let err = Model::load_expecting(&good, &other, &dev).unwrap_err();
    assert!(matches!(err, Error::WrongModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("good.safetensors")
            && msg.contains("holds a E-ABS")
            && msg.contains("ABS for"),
        "{msg}"
    );
    let err = Model::load_as(&good, cfg.family, ModelKind::Cnn, &dev).unwrap_err();
    assert!(
        err.to_string()
            .contains("but a CNN for mnist was asked for"),
        "{err}"
    );
    let err = Model::load_as(&good, DatasetKind::FashionMnist, ModelKind::E_ABS, &dev).unwrap_err();
    assert!(
        err.to_string()
            .contains("E-ABS for fashion-mnist was asked for"),
        "{err}"
    );
    assert!(Model::load_as(&good, cfg.family, ModelKind::E_ABS, &dev).is_ok());
    // Same kind and dataset, another configuration.
    let other = ModelConfig {
        beta: 2.0,
        ..cfg.clone()
    };
    let err = Model::load_expecting(&good, &other, &dev).unwrap_err();
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");

    // One flipped bit in the tensor data: the recorded digest catches it.
    let mut flipped = bytes.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x01;
    let flip = dir.path().join("flip.safetensors");
    std::fs::write(&flip, &flipped)?;
    let err = Model::load(&flip, &dev).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("flip.safetensors: tensor data are corrupt"),
        "{err}"
    );

    // NaN weights (a diverged training), digest consistent: refused by name.
    let mut tensors = store_tensors(model.store());
    let w = tensors["decoders.2.fc.weight"].clone();
    let nan = (w.ones_like()? * f64::NAN)?;
    tensors.insert("decoders.2.fc.weight".into(), nan);
    let bad = dir.path().join("nan.safetensors");
    save_tensors(&bad, &tensors, model_metadata(&cfg))?;
    match Model::load(&bad, &dev) {
        Err(Error::NonFinite { name, count, .. }) => {
            assert_eq!(name, "decoders.2.fc.weight");
            assert_eq!(count, w.elem_count());
        }
        other => panic!("NaN weights loaded: {:?}", other.err()),
    }

    // Wrong tensor shape under the right name.
    let mut tensors = store_tensors(model.store());
    tensors.insert(
        "decoders.1.fc.weight".into(),
        Tensor::zeros((5, 4), DType::F32, &dev)?,
    );
    let bad = dir.path().join("shape.safetensors");
    save_tensors(&bad, &tensors, model_metadata(&cfg))?;
    let err = Model::load(&bad, &dev).unwrap_err();
    match &err {
        Error::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "decoders.1.fc.weight");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[8usize, 4][..], &[5usize, 4][..])
            );
        }
        e => panic!("wrong error {e}"),
    }

    // Missing tensor.
    let mut tensors = store_tensors(model.store());
    tensors.remove("encoder.bn1.running_mean");
    save_tensors(&bad, &tensors, model_metadata(&cfg))?;
    assert!(
        matches!(Model::load(&bad, &dev), Err(Error::MissingTensor { name, .. }) if name == "encoder.bn1.running_mean")
    );

    // Unexpected tensor.
    let mut tensors = store_tensors(model.store());
    tensors.insert(
        "decoders.9.fc.weight".into(),
        Tensor::zeros((8, 4), DType::F32, &dev)?,
    );
    save_tensors(&bad, &tensors, model_metadata(&cfg))?;
    assert!(
        matches!(Model::load(&bad, &dev), Err(Error::UnexpectedTensor { name, .. }) if name == "decoders.9.fc.weight")
    );

    // Metadata missing or not JSON.
    save_tensors(&bad, &store_tensors(model.store()), Default::default())?;
    assert!(matches!(
        Model::load(&bad, &dev),
        Err(Error::MissingMetadata { .. })
    ));
    let mut meta = model_metadata(&cfg);
    meta.insert("model_config".into(), "{oops".into());
    save_tensors(&bad, &store_tensors(model.store()), meta)?;
    assert!(matches!(
        Model::load(&bad, &dev),
        Err(Error::BadMetadata { .. })
    ));
    Ok(())
}

#[test]
fn resuming_with_another_model_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let (train, val) = (synthetic(36, 1, "train"), synthetic(12, 2, "val"));
    let mut m = Model::new(&tiny_config(ModelKind::E_ABS), 0, &dev)?;
    Trainer::new(tiny_train_config(ModelKind::E_ABS, 1), dir.path())?.run(&mut m, &train, &val)?;
    let mut other = Model::new(
        &ModelConfig {
            beta: 2.0,
            ..tiny_config(ModelKind::E_ABS)
        },
        0,
        &dev,
    )?;
    let err = Trainer::new(tiny_train_config(ModelKind::E_ABS, 2), dir.path())?
        .run(&mut other, &train, &val)
        .unwrap_err();
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    Ok(())
}

#[test]
fn data_that_does_not_fit_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let mut m = Model::new(
        &ModelConfig::paper(DatasetKind::Mnist, ModelKind::Cnn),
        0,
        &dev,
    )?;
    let err = Trainer::new(tiny_train_config(ModelKind::Cnn, 1), dir.path())?
        .run(
            &mut m,
            &synthetic(12, 1, "tiny-train"),
            &synthetic(6, 2, "val"),
        )
        .unwrap_err();
    match err {
        Error::DataShape {
            what,
            expected,
            found,
        } => {
            assert_eq!(what, "tiny-train");
            assert_eq!((expected, found), ((1, 28, 28), (1, 8, 8)));
        }
        e => panic!("wrong error {e}"),
    }
    let images = Tensor::zeros((2, 1, 8, 8), DType::F32, &dev)?;
    let bad = eabs_models::TensorData::new(images, vec![0, 7], "labels")?;
    let mut m = Model::new(&tiny_config(ModelKind::Cnn), 0, &dev)?;
    let err = Trainer::new(tiny_train_config(ModelKind::Cnn, 1), dir.path())?
        .run(&mut m, &bad, &bad)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadLabel {
                label: 7,
                index: 1,
                ..
            }
        ),
        "{err}"
    );
    // Forward on a wrongly shaped tensor is an error, not a panic.
    let cnn = Cnn::new(&tiny_config(ModelKind::Cnn), 0, &dev)?;
    assert!(cnn
        .logits(&Tensor::zeros((2, 3, 8, 8), DType::F32, &dev)?)
        .is_err());
    Ok(())
}

#[test]
fn cnn_gives_input_gradients_through_the_core_trait() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let cnn = Cnn::new(&tiny_config(ModelKind::Cnn), 0, &dev)?.frozen();
    let xs = Tensor::rand(0f32, 1f32, (3, 1, 8, 8), &dev)?;
    let loss = |l: &Tensor| l.narrow(1, 0, 1)?.squeeze(1);
    let (value, grad) = cnn.value_and_grad(&xs, &loss)?;
    assert_eq!(value.dims(), &[3]);
    assert_eq!(grad.dims(), xs.dims());
    assert!(grad.abs()?.sum_all()?.host_scalar::<f32>()? > 0.0);
    Ok(())
}

#[test]
fn chunked_decoding_equals_one_pass() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let m = AbsModel::new(&tiny_config(ModelKind::E_ABS), 0, &dev)?.frozen();
    let z = Tensor::randn(0f32, 1f32, (10, 4), &dev)?;
    let a = m.decoders()[1]
        .forward(&z, false)?
        .flatten_all()?
        .host_vec1::<f32>()?;
    let b = m.decoders()[1]
        .forward_chunked(&z, 3)?
        .flatten_all()?
        .host_vec1::<f32>()?;
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6);
    }
    Ok(())
}

/// Every ABS-family variant learns the synthetic task (by the validation proxy, argmin of the
/// reconstruction cost at the encoder's proposal).
#[test]
fn abs_family_learns_the_synthetic_task() -> anyhow::Result<()> {
    for variant in [Variant::ABS, Variant::A_ABS, Variant::D_ABS, Variant::E_ABS] {
        let dir = tempfile::tempdir()?;
        let kind = ModelKind::Abs(variant);
        let mut model = Model::new(&tiny_config(kind), 0, &Device::Cpu)?;
        let cfg = eabs_models::TrainConfig {
            epochs: 12,
            lr_halve_every: None,
            max_train_samples: None,
            ..tiny_train_config(kind, 12)
        };
        let s = Trainer::new(cfg, dir.path())?.run(
            &mut model,
            &synthetic(60, 1, "train"),
            &synthetic(30, 2, "val"),
        )?;
        let acc: Vec<f64> = s.history.iter().map(|m| m.val_accuracy).collect();
        assert!(
            s.best_val_accuracy.unwrap_or(0.0) >= 0.9,
            "{}: {acc:?}",
            variant.name()
        );
        assert!(
            s.history[11].train_loss < s.history[0].train_loss,
            "{}",
            variant.name()
        );
    }
    Ok(())
}

#[test]
fn paper_presets_follow_section_4_3() {
    use eabs_models::TrainConfig;
    let e = TrainConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
    assert_eq!(
        (e.epochs, e.batch_size, e.lr, e.lr_halve_every, e.noise_std),
        (500, 512, 1e-3, Some(200), 0.2)
    );
    assert_eq!(e.lr_at(199), 1e-3);
    assert_eq!(e.lr_at(200), 5e-4);
    assert_eq!(e.lr_at(450), 2.5e-4);
    assert_eq!(
        TrainConfig::paper(DatasetKind::Svhn, ModelKind::E_ABS).epochs,
        800
    );
    assert_eq!(
        TrainConfig::paper(DatasetKind::Svhn, ModelKind::ABS).epochs,
        800
    );
    assert_eq!(
        TrainConfig::paper(DatasetKind::Svhn, ModelKind::Cnn).epochs,
        500
    );
    assert_eq!(
        TrainConfig::paper(DatasetKind::Svhn, ModelKind::Cnn).noise_std,
        0.01
    );
    let adv = TrainConfig::paper(
        eabs_datasets::DatasetKind::FashionMnist,
        ModelKind::AdvCnn(AdvNorm::Linf),
    );
    assert_eq!(
        (adv.epochs, adv.lr, adv.lr_halve_every, adv.noise_std),
        (200, 1e-4, None, 0.0)
    );
    let a = adv.adversarial.expect("adversarial settings");
    assert_eq!(a.epsilon, 0.1);
    assert_eq!(
        TrainConfig::paper(DatasetKind::Svhn, ModelKind::AdvCnn(AdvNorm::L2))
            .adversarial
            .map(|a| a.epsilon),
        Some(1.5)
    );
    // smoke shrinks epochs and data only; quick also takes the CPU's batch size (64: more
    // updates in the same time, the budget that limits ABS-family models).
    let t = TrainConfig::smoke(DatasetKind::Mnist, ModelKind::E_ABS);
    assert_eq!((t.batch_size, t.lr, t.noise_std), (512, 1e-3, 0.2));
    assert!(t.epochs < 500 && t.max_train_samples.is_some());
    let q = TrainConfig::quick(DatasetKind::Svhn, ModelKind::E_ABS);
    assert_eq!(
        (q.batch_size, q.lr, q.noise_std, q.epochs, q.lr_halve_every),
        (
            64,
            1e-3,
            TrainConfig::paper(DatasetKind::Svhn, ModelKind::E_ABS).noise_std,
            80,
            Some(16)
        )
    );
    assert_eq!(q.noise_std, 0.01);
    assert_eq!(
        (q.max_train_samples, q.selection_samples),
        (Some(10_000), Some(300))
    );
    // Models without an adversarial autoencoder keep 40 epochs; A-ABS has one, like E-ABS.
    let epochs = |family: DatasetKind, kind| TrainConfig::quick(family, kind).epochs;
    assert_eq!(epochs(DatasetKind::FashionMnist, ModelKind::ABS), 40);
    assert_eq!(epochs(DatasetKind::Mnist, ModelKind::ABS), 40);
    assert_eq!(
        epochs(DatasetKind::SuperTraffic10, ModelKind::Abs(Variant::A_ABS)),
        80
    );
    // The plain CNN trains on the whole split, 20 epochs; so do the adversarial autoencoders
    // of MNIST and Fashion-MNIST, 20 and 27 epochs with lr halved every 9 (measured:
    // `TrainConfig::quick`).
    for family in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
        let c = TrainConfig::quick(family, ModelKind::Cnn);
        assert_eq!(
            (c.epochs, c.lr_halve_every, c.max_train_samples),
            (20, Some(8), None)
        );
    }
    for (family, epochs) in [(DatasetKind::Mnist, 20), (DatasetKind::FashionMnist, 27)] {
        for kind in [ModelKind::E_ABS, ModelKind::Abs(Variant::A_ABS)] {
            let m = TrainConfig::quick(family, kind);
            assert_eq!(
                (
                    m.epochs,
                    m.lr_halve_every,
                    m.max_train_samples,
                    m.batch_size,
                    m.selection_samples
                ),
                (epochs, Some(9), None, 64, Some(300))
            );
        }
    }
    assert_eq!(
        TrainConfig::quick(DatasetKind::Mnist, ModelKind::ABS).max_train_samples,
        Some(10_000)
    );
    let qa = TrainConfig::quick(DatasetKind::Mnist, ModelKind::AdvCnn(AdvNorm::L2));
    assert_eq!((qa.epochs, qa.lr_halve_every, qa.batch_size), (8, None, 64));
}

/// The trainer reads `eabs_datasets::Dataset` directly (bytes / 255, labels as u32).
#[test]
fn trains_on_an_eabs_datasets_dataset() -> anyhow::Result<()> {
    use eabs_models::TrainingData;
    let src = synthetic(24, 4, "bytes");
    let idx: Vec<usize> = (0..24).collect();
    let bytes: Vec<u8> = src
        .images(&idx, &Device::Cpu)?
        .flatten_all()?
        .host_vec1::<f32>()?
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let labels: Vec<u8> = src.labels(&idx).iter().map(|&l| l as u8).collect();
    let names = vec!["a".to_string(), "b".into(), "c".into()];
    let ds = eabs_datasets::Dataset::new(
        "toy",
        eabs_datasets::Split::Train,
        bytes,
        labels,
        (1, 8, 8),
        names,
        std::path::Path::new("toy"),
    )?;
    assert_eq!(TrainingData::image_shape(&ds), (1, 8, 8));
    assert_eq!(ds.labels(&[0, 1, 2]), vec![0, 1, 2]);
    let dir = tempfile::tempdir()?;
    let mut m = Model::new(&tiny_config(ModelKind::E_ABS), 0, &Device::Cpu)?;
    let s =
        Trainer::new(tiny_train_config(ModelKind::E_ABS, 1), dir.path())?.run(&mut m, &ds, &ds)?;
    assert_eq!(s.epochs_done, 1);
    Ok(())
}

#[test]
fn resuming_from_a_truncated_checkpoint_names_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let (train, val) = (synthetic(36, 1, "train"), synthetic(12, 2, "val"));
    let kind = ModelKind::Abs(Variant::D_ABS);
    let mut m = Model::new(&tiny_config(kind), 0, &dev)?;
    let trainer = Trainer::new(tiny_train_config(kind, 2), dir.path())?;
    trainer.run_until(&mut m, &train, &val, 1)?;
    let last = trainer.last_path();
    let bytes = std::fs::read(&last)?;
    std::fs::write(&last, &bytes[..bytes.len() - 10])?;
    let err = trainer.run(&mut m, &train, &val).unwrap_err();
    assert!(
        matches!(err, Error::Safetensors { ref path, .. } if path == &last),
        "{err}"
    );
    assert!(err.to_string().contains("last.safetensors"));
    Ok(())
}

/// A validator whose accuracy follows a script, one value per epoch, so the test knows which
/// epoch the real classifier prefers; it records how many images it was shown.
#[derive(Debug)]
struct Scripted {
    accuracy_by_call: Vec<f64>,
    calls: std::sync::Mutex<Vec<usize>>,
    name: &'static str,
}

impl eabs_models::Validator for Scripted {
    fn describe(&self) -> String {
        self.name.into()
    }
    fn correct(
        &self,
        _model: &Model,
        _data: &dyn eabs_models::TrainingData,
        idx: &[usize],
        _seed: u64,
    ) -> Result<Vec<bool>, Box<dyn std::error::Error + Send + Sync>> {
        let mut calls = self.calls.lock().map_err(|e| e.to_string())?;
        let acc = self.accuracy_by_call[calls.len()];
        calls.push(idx.len());
        let n_correct = (acc * idx.len() as f64).round() as usize;
        Ok((0..idx.len()).map(|i| i < n_correct).collect())
    }
}

#[test]
fn a_validator_selects_abs_checkpoints_and_the_proxy_is_logged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kind = ModelKind::E_ABS;
    let (train, val) = (synthetic(36, 1, "train"), synthetic(12, 2, "val"));
    let cfg = eabs_models::TrainConfig {
        selection_samples: Some(8),
        ..tiny_train_config(kind, 3)
    };
    // The real classifier is best at epoch 2, whatever the proxy says.
    let v = std::sync::Arc::new(Scripted {
        accuracy_by_call: vec![0.25, 0.75, 0.5],
        calls: Default::default(),
        name: "scripted",
    });
    let mut model = Model::new(&tiny_config(kind), 0, &Device::Cpu)?;
    let s = Trainer::new(cfg.clone(), dir.path())?
        .with_validator(v.clone())
        .run(&mut model, &train, &val)?;
    assert_eq!(*v.calls.lock().unwrap(), vec![8, 8, 8]);
    assert_eq!(s.best_epoch, Some(2));
    assert_eq!(s.best_val_accuracy, Some(0.75));
    for m in &s.history {
        assert!(m.val_proxy_accuracy.is_some() && m.validation_seconds.is_some());
    }
    assert_eq!(s.history[2].updates, 9, "3 epochs of 3 batches of 12");
    // Resuming under another criterion is refused, naming both.
    let other = std::sync::Arc::new(Scripted {
        accuracy_by_call: vec![1.0; 4],
        calls: Default::default(),
        name: "another",
    });
    let mut again = Model::new(&tiny_config(kind), 0, &Device::Cpu)?;
    let err = Trainer::new(eabs_models::TrainConfig { epochs: 4, ..cfg }, dir.path())?
        .with_validator(other)
        .run(&mut again, &train, &val)
        .unwrap_err()
        .to_string();
    assert!(err.contains("scripted") && err.contains("another"), "{err}");
    // CNNs keep their own validation: the validator is never called for them.
    let cnn_dir = tempfile::tempdir()?;
    let unused = std::sync::Arc::new(Scripted {
        accuracy_by_call: vec![],
        calls: Default::default(),
        name: "unused",
    });
    let mut cnn = Model::new(&tiny_config(ModelKind::Cnn), 0, &Device::Cpu)?;
    let s = Trainer::new(tiny_train_config(ModelKind::Cnn, 1), cnn_dir.path())?
        .with_validator(unused.clone())
        .run(&mut cnn, &train, &val)?;
    assert!(unused.calls.lock().unwrap().is_empty());
    assert_eq!(s.history[0].val_proxy_accuracy, None);
    Ok(())
}

/// Two E-ABS trainings with the same seed give byte-identical checkpoints, on the paper's
/// MNIST architecture (whose convolutions take the kernels' multi-threaded weight-gradient
/// paths) in a 4-thread pool: partial sums are added in a fixed order and the header's keys
/// are sorted, so nothing depends on thread timing or hash-map order.
#[test]
fn e_abs_training_is_bit_reproducible() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let random = |n: usize, seed: u64, name: &str| -> anyhow::Result<eabs_models::TensorData> {
        let mut rng = derive_rng(seed, Stream::Init, 0, 0);
        let data: Vec<f32> = (0..n * 28 * 28)
            .map(|_| rand::Rng::random::<f32>(&mut rng))
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        Ok(eabs_models::TensorData::new(
            host::from_vec(data, (n, 1, 28, 28), &dev)?,
            labels,
            name,
        )?)
    };
    let (train, val) = (random(128, 1, "train")?, random(16, 2, "val")?);
    let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
    let tc = eabs_models::TrainConfig {
        preset: "test".into(),
        epochs: 1,
        batch_size: 64,
        max_train_samples: None,
        max_val_samples: None,
        ..eabs_models::TrainConfig::smoke(DatasetKind::Mnist, ModelKind::E_ABS)
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build()?;
    let digests: Vec<(String, String)> = (0..2)
        .map(|_| -> anyhow::Result<(String, String)> {
            let dir = tempfile::tempdir()?;
            pool.install(|| -> anyhow::Result<()> {
                let mut m = Model::new(&cfg, 0, &dev)?;
                Trainer::new(tc.clone(), dir.path())?.run(&mut m, &train, &val)?;
                Ok(())
            })?;
            let digest = |f: &str| -> anyhow::Result<String> {
                Ok(eabs_datasets::manifest::sha256_hex(&std::fs::read(
                    dir.path().join(f),
                )?))
            };
            Ok((digest("last.safetensors")?, digest("best.safetensors")?))
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(digests[0], digests[1], "same seed, different checkpoints");
    Ok(())
}
