//! Same seed, same result; a sample's result does not depend on its batch.
mod common;

use common::{inputs, labels, rows_of, Linear};
use eabs_attacks::*;
use eabs_core::host;

fn close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (r, s) in a.iter().zip(b) {
        for (x, y) in r.iter().zip(s) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}

fn split_check<A: FixedEpsilonAttack<Linear>>(attack: &A, eps: f64) -> Result<()> {
    let model = Linear::random(10, 3, 41);
    let (xs, rows) = inputs(6, 10, 0.3, 0.7, 42);
    let y = labels(&model, &rows);
    let whole = attack.run(&model, &xs, &Criterion::misclassification(y.clone()), eps)?;
    let again = attack.run(&model, &xs, &Criterion::misclassification(y.clone()), eps)?;
    assert_eq!(rows_of(&whole), rows_of(&again), "same seed, same result");
    // Reversed order, in two batches of 3.
    let order = [5usize, 4, 3, 2, 1, 0];
    let mut parts = Vec::new();
    for chunk in order.chunks(3) {
        let ids = host::new(
            chunk
                .iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            xs.device(),
        )?;
        let sub = xs.index_select(&ids, 0)?;
        let crit = Criterion::misclassification(chunk.iter().map(|&i| y[i]).collect::<Vec<_>>());
        parts.extend(rows_of(&attack.run(&model, &sub, &crit, eps)?));
    }
    let whole_rows = rows_of(&whole);
    let reordered: Vec<Vec<f32>> = order.iter().map(|&i| whole_rows[i].clone()).collect();
    close(&reordered, &parts);
    Ok(())
}

#[test]
fn pgd_restarts_are_batch_independent() -> Result<()> {
    split_check(&Pgd::new(PgdConfig::paper(Norm::Linf, 5))?, 0.05)?;
    split_check(&Pgd::new(PgdConfig::paper(Norm::L2, 5))?, 0.3)
}

#[test]
fn apgd_is_batch_independent() -> Result<()> {
    split_check(
        &Apgd::new(ApgdConfig {
            steps: 20,
            restarts: 2,
            ..ApgdConfig::autoattack(Norm::Linf, Loss::Dlr)
        })?,
        0.05,
    )
}

#[test]
fn different_seeds_give_different_random_starts() -> Result<()> {
    let model = Linear::random(10, 3, 41);
    let (xs, rows) = inputs(4, 10, 0.3, 0.7, 42);
    let crit = Criterion::misclassification(labels(&model, &rows));
    let cfg = PgdConfig {
        steps: 1,
        ..PgdConfig::paper(Norm::Linf, 1)
    };
    let a = Pgd::new(cfg.clone().with_seed(1))?.run(&model, &xs, &crit, 0.01)?;
    let b = Pgd::new(cfg.with_seed(2))?.run(&model, &xs, &crit, 0.01)?;
    assert_ne!(rows_of(&a), rows_of(&b));
    Ok(())
}

#[test]
fn boundary_and_noise_are_batch_independent() -> Result<()> {
    let model = Linear::random(10, 2, 43);
    let (xs, rows) = inputs(4, 10, 0.3, 0.7, 44);
    let y = labels(&model, &rows);
    let crit = Criterion::misclassification(y.clone());
    let boundary = Boundary::new(BoundaryConfig {
        steps: 200,
        ..BoundaryConfig::paper()
    })?;
    let noise = AdditiveGaussianNoise::paper();
    let attacks: [&dyn MinimizationAttack<Linear>; 2] = [&boundary, &noise];
    for attack in attacks {
        let whole = rows_of(&attack.run(&model, &xs, &crit, None)?);
        for i in 0..4 {
            let one = xs.narrow(0, i, 1)?;
            let single = rows_of(&attack.run(
                &model,
                &one,
                &Criterion::misclassification(vec![y[i]]),
                None,
            )?);
            close(&whole[i..i + 1], &single);
        }
    }
    Ok(())
}

#[test]
fn attacks_and_wrappers_are_send_sync_clone() {
    fn has_autotraits<T: Send + Sync + Clone>() {}
    has_autotraits::<Pgd>();
    has_autotraits::<Apgd>();
    has_autotraits::<DeepFool>();
    has_autotraits::<Ddn>();
    has_autotraits::<CarliniWagnerL2>();
    has_autotraits::<Boundary>();
    has_autotraits::<AdditiveGaussianNoise>();
    has_autotraits::<Eot<&'static Linear>>();
    has_autotraits::<EstimatedGradient<&'static Linear>>();
}
