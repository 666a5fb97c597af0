//! Bad input gives clear errors, never a panic.
mod common;

use candle_core::{Device, Tensor};
use common::{inputs, labels, Linear};
use eabs_attacks::*;
use eabs_core::{Bounds, Classifier, Differentiable};

/// A model that claims 3 classes but returns 2 logits.
struct Liar(Linear);
impl Classifier for Liar {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        3
    }
    fn device(&self) -> &Device {
        self.0.device()
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.logits(xs)
    }
}
impl Differentiable for Liar {}

fn setup() -> (Linear, Tensor, Criterion) {
    let model = Linear::random(4, 2, 1);
    let (xs, rows) = inputs(3, 4, 0.2, 0.8, 2);
    let crit = Criterion::misclassification(labels(&model, &rows));
    (model, xs, crit)
}

#[test]
fn bad_epsilons_are_rejected() {
    let (model, xs, crit) = setup();
    let pgd = Pgd::paper_linf(1).unwrap();
    let e = attack_fixed(&pgd, &model, &xs, &crit, &[0.1, -0.1]).unwrap_err();
    assert!(matches!(e, Error::InvalidEpsilon { index: 1, .. }), "{e}");
    let e = attack_fixed(&pgd, &model, &xs, &crit, &[f64::NAN]).unwrap_err();
    assert!(e.to_string().contains("epsilon NaN"), "{e}");
    assert!(matches!(
        attack_fixed(&pgd, &model, &xs, &crit, &[]).unwrap_err(),
        Error::NoEpsilons
    ));
    assert!(attack_fixed(&pgd, &model, &xs, &crit, &[f64::INFINITY]).is_err());
    // Minimisation attacks accept infinity (= unclipped) but not negative values.
    assert!(attack_min(
        &DeepFool::paper(Norm::L2),
        &model,
        &xs,
        &crit,
        &[f64::INFINITY]
    )
    .is_ok());
    assert!(attack_min(&DeepFool::paper(Norm::L2), &model, &xs, &crit, &[-1.0]).is_err());
}

#[test]
fn inputs_outside_the_bounds_are_rejected() {
    let (model, xs, crit) = setup();
    let bad = (xs + 0.5).unwrap();
    let e = attack_fixed(&Pgd::paper_linf(1).unwrap(), &model, &bad, &crit, &[0.1]).unwrap_err();
    assert!(
        matches!(e, Error::OutOfBounds { argument: "xs", .. }),
        "{e}"
    );
    let e = attack_min(&Ddn::paper(), &model, &bad, &crit, &[1.0]).unwrap_err();
    assert!(
        e.to_string().contains("outside the model bounds [0, 1]"),
        "{e}"
    );
}

#[test]
fn label_count_and_range_are_checked() {
    let (model, xs, _) = setup();
    let e = attack_fixed(
        &Pgd::paper_l2(1).unwrap(),
        &model,
        &xs,
        &Criterion::misclassification(vec![0, 1]),
        &[1.0],
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LabelCount {
                expected: 3,
                found: 2
            }
        ),
        "{e}"
    );
    let e = attack_min(
        &CarliniWagnerL2::paper(),
        &model,
        &xs,
        &Criterion::misclassification(vec![0, 1, 7]),
        &[1.0],
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                index: 2,
                label: 7,
                n_classes: 2
            }
        ),
        "{e}"
    );
    // Direct `run` calls check too.
    let e = Pgd::paper_l2(1)
        .unwrap()
        .run(&model, &xs, &Criterion::misclassification(vec![0]), 1.0)
        .unwrap_err();
    assert!(matches!(e, Error::LabelCount { .. }));
}

#[test]
fn wrong_logit_shape_is_reported() {
    let (model, xs, crit) = setup();
    let liar = Liar(model);
    let e = attack_fixed(&Pgd::paper_linf(1).unwrap(), &liar, &xs, &crit, &[0.1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LogitsShape {
                batch: 3,
                n_classes: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("expected (3, 3)"), "{e}");
}

#[test]
fn invalid_configs_are_rejected() {
    assert!(Pgd::new(PgdConfig {
        restarts: 3,
        random_start: false,
        ..PgdConfig::paper(Norm::Linf, 1)
    })
    .is_err());
    assert!(Pgd::new(PgdConfig {
        steps: 0,
        ..PgdConfig::paper(Norm::Linf, 1)
    })
    .is_err());
    assert!(DeepFool::new(DeepFoolConfig {
        candidates: 1,
        ..DeepFoolConfig::paper(Norm::L2)
    })
    .is_err());
    assert!(Ddn::new(DdnConfig {
        gamma: 1.5,
        ..DdnConfig::paper()
    })
    .is_err());
    assert!(CarliniWagnerL2::new(CwConfig {
        steps: 0,
        ..CwConfig::paper()
    })
    .is_err());
    assert!(EstimatedGradient::new(
        Linear::random(2, 2, 0),
        EstimatorConfig {
            samples: 3,
            ..EstimatorConfig::paper()
        }
    )
    .is_err());
    assert!(Boundary::new(BoundaryConfig {
        step_adaptation: 1.0,
        ..BoundaryConfig::paper()
    })
    .is_err());
}

#[test]
fn targeted_deepfool_is_unsupported_and_dlr_needs_classes() {
    let (model, xs, _) = setup();
    let e = attack_min(
        &DeepFool::paper(Norm::L2),
        &model,
        &xs,
        &Criterion::targeted(vec![0, 0, 0]),
        &[1.0],
    )
    .unwrap_err();
    assert!(matches!(e, Error::UnsupportedCriterion { .. }), "{e}");
    let apgd = Apgd::new(ApgdConfig::autoattack(Norm::Linf, Loss::Dlr)).unwrap();
    let crit = Criterion::misclassification(vec![0, 0, 0]);
    let e = attack_fixed(&apgd, &model, &xs, &crit, &[0.1]).unwrap_err();
    assert!(e.to_string().contains("at least 3 classes"), "{e}");
}

#[test]
fn starting_points_need_a_usable_pool() {
    let (model, xs, crit) = setup();
    let pool = Tensor::zeros((5, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let same: Vec<u32> = crit
        .classes()
        .iter()
        .take(1)
        .cycle()
        .take(5)
        .copied()
        .collect();
    let all_label = Criterion::misclassification(vec![same[0]; 3]);
    let e = starting_points_from_pool(&xs, &all_label, &pool, &same, 0).unwrap_err();
    assert!(matches!(e, Error::NoStartingPoint { index: 0, .. }), "{e}");
    let e = starting_points_from_pool(&xs, &crit, &pool, &[0, 1], 0).unwrap_err();
    assert!(e.to_string().contains("pool_predictions"), "{e}");
    let bad_pool = Tensor::zeros((5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(starting_points_from_pool(&xs, &crit, &bad_pool, &[0; 5], 0).is_err());
    let _ = model;
}
