//! No host round trip per step in the hot loops (issue 18): the 49 Adam updates of ABS-style
//! inference and the steps of PGD keep their tensors on the model's device.
//!
//! Every host <-> device copy of the crates with hot loops goes through `eabs_core::host`,
//! which counts it (clippy bans the direct Candle calls there). Each case runs the same loop
//! with few and with many steps and requires the same number of copies: a copy per step shows
//! as a difference. The autodiff inference engine is the one CUDA runs (the fast engine is
//! CPU-only and works on host buffers by design), so the inference cases force it.
//!
//! One test function runs every case in turn: the counters are process-wide, and tests of one
//! binary run in parallel threads.

use candle_core::{Device, Tensor};
use eabs_attacks::{Criterion, FixedEpsilonAttack, Norm, Pgd, PgdConfig};
use eabs_core::host::{self, transfers, Transfers};
use eabs_core::Bounds;
use eabs_inference::{AbsClassifier, AbsInference, FrozenAbsModel, InferenceConfig};
use eabs_models::{AbsModel, Cnn, DatasetKind, ModelConfig, ModelKind, Variant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * 28 * 28)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    host::from_vec(v, (n, 1, 28, 28), &Device::Cpu).unwrap()
}

/// The copies `f` makes.
fn copies(f: impl FnOnce()) -> Transfers {
    let before = transfers();
    f();
    transfers().since(before)
}

fn e_abs_inference(steps: usize, fast: bool) -> AbsInference<FrozenAbsModel> {
    let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::Abs(Variant::E_ABS));
    let model = FrozenAbsModel::new(&AbsModel::new(&cfg, 3, &Device::Cpu).unwrap());
    let config = InferenceConfig {
        n_candidates: 20,
        n_adam_steps: steps,
        ..InferenceConfig::e_abs()
    };
    let mut inference = AbsInference::new(model, config).unwrap();
    inference.set_fast_engine(fast);
    inference
}

fn pgd(steps: usize) -> Pgd {
    Pgd::new(PgdConfig {
        steps,
        restarts: 1,
        ..PgdConfig::paper(Norm::Linf, 1)
    })
    .unwrap()
}

#[test]
fn hot_loops_copy_nothing_per_step() {
    let xs = images(3, 1);
    let criterion = Criterion::misclassification(vec![0u32, 1, 2]);

    // ABS-style inference, both engines: copies at entry and exit only.
    for fast in [false, true] {
        let few = e_abs_inference(2, fast);
        let many = e_abs_inference(7, fast);
        let a = copies(|| drop(few.infer(&xs, 5).unwrap()));
        let b = copies(|| drop(many.infer(&xs, 5).unwrap()));
        assert_eq!(a, b, "inference copies per Adam step (fast engine: {fast})");
    }

    // PGD on the CNN: the step loop stays on the device.
    let cnn = Cnn::new(
        &ModelConfig::paper(DatasetKind::Mnist, ModelKind::Cnn),
        2,
        &Device::Cpu,
    )
    .unwrap()
    .frozen();
    let a = copies(|| drop(pgd(2).run(&cnn, &xs, &criterion, 0.3).unwrap()));
    let b = copies(|| drop(pgd(9).run(&cnn, &xs, &criterion, 0.3).unwrap()));
    assert_eq!(a, b, "PGD on the CNN copies per step");

    // PGD on E-ABS with the adaptive gradient of eq. (8), on the autodiff engine: every step
    // runs a whole inference. PGD's own loop adds no copy. Each inference downloads the batch
    // once (the per-image noise keys are hashed from the images' content, so that an image's
    // result depends on neither its batch nor the device) and uploads its reparameterisation
    // noise (one tensor for the Adam steps, one for the final sample: the noise comes from the
    // per-image keyed host generators).
    let clf = || AbsClassifier::new(e_abs_inference(3, false), Bounds::UNIT, 4);
    let per_inference = {
        let c = clf();
        copies(|| drop(c.infer(&xs).unwrap()))
    };
    assert_eq!(
        per_inference,
        Transfers {
            downloads: 1,
            uploads: 2
        }
    );
    let (first, second) = (clf(), clf());
    let a = copies(|| drop(pgd(2).run(&first, &xs, &criterion, 0.3).unwrap()));
    let b = copies(|| drop(pgd(5).run(&second, &xs, &criterion, 0.3).unwrap()));
    assert_eq!(
        b.since(a),
        Transfers {
            downloads: 3 * per_inference.downloads,
            uploads: 3 * per_inference.uploads
        },
        "PGD on E-ABS: 3 more steps may add 3 inferences' uploads, nothing else"
    );
}
