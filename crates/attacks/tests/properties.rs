//! Property tests: every clipped adversarial lies within epsilon and the bounds, and the
//! success flags are the model's verdict on the returned images.
mod common;

use common::{inputs, labels, Linear};
use eabs_attacks::*;
use eabs_core::host::HostRead;
use proptest::prelude::*;

fn check(out: &Outcome, model: &Linear, xs: &candle_core::Tensor, crit: &Criterion, norm: Norm) {
    let d = norm.distances(&out.clipped, xs).unwrap();
    for v in d {
        assert!(
            v <= out.epsilon * (1.0 + 1e-5) + 1e-6,
            "distance {v} > eps {}",
            out.epsilon
        );
    }
    let lo = out.clipped.min_all().unwrap().host_scalar::<f32>().unwrap();
    let hi = out.clipped.max_all().unwrap().host_scalar::<f32>().unwrap();
    assert!(lo >= 0.0 && hi <= 1.0);
    assert_eq!(
        out.success,
        crit.is_adversarial(model, &out.clipped).unwrap()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn clipped_adversarials_respect_epsilon_bounds_and_verdict(
        seed in 0u64..1000,
        eps_inf in 0.0f64..0.5,
        eps_2 in 0.0f64..3.0,
        k in 2usize..5,
    ) {
        let model = Linear::random(8, k, seed);
        let (xs, rows) = inputs(5, 8, 0.0, 1.0, seed + 1);
        let crit = Criterion::misclassification(labels(&model, &rows));
        let pgd = Pgd::new(PgdConfig { steps: 10, ..PgdConfig::paper(Norm::Linf, 2) }).unwrap();
        for out in attack_fixed(&pgd, &model, &xs, &crit, &[eps_inf, 0.0]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::Linf);
        }
        let pgd2 = Pgd::new(PgdConfig { steps: 10, ..PgdConfig::paper(Norm::L2, 2) }).unwrap();
        for out in attack_fixed(&pgd2, &model, &xs, &crit, &[eps_2]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::L2);
        }
        let df = DeepFool::new(DeepFoolConfig { steps: 10, ..DeepFoolConfig::paper(Norm::Linf) }).unwrap();
        for out in attack_min(&df, &model, &xs, &crit, &[eps_inf, 1.0]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::Linf);
        }
        let ddn = Ddn::new(DdnConfig { steps: 10, ..DdnConfig::paper() }).unwrap();
        for out in attack_min(&ddn, &model, &xs, &crit, &[eps_2]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::L2);
        }
        let cw = CarliniWagnerL2::new(CwConfig { steps: 10, binary_search_steps: 2, ..CwConfig::paper() }).unwrap();
        for out in attack_min(&cw, &model, &xs, &crit, &[eps_2]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::L2);
        }
        let noise = AdditiveGaussianNoise::new(AdditiveNoiseConfig { steps: 20, ..AdditiveNoiseConfig::paper() }).unwrap();
        for out in attack_min(&noise, &model, &xs, &crit, &[eps_2]).unwrap() {
            check(&out, &model, &xs, &crit, Norm::L2);
        }
    }
}
