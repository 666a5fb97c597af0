//! Throughput of full E-ABS inference with the paper's settings (8000 candidates + encoder
//! proposal, 49 variational Adam updates at lr 0.05, radius 5, final sample) on the MNIST and
//! SVHN architectures of Table 9, with the share of time per stage and the peak memory.
//!
//! The models are `eabs-models` E-ABS models (shared encoder, K = 10 decoders, one
//! discriminator) with seeded random weights, frozen for inference: the cost of a trained model.
//!
//! Run: `cargo bench -p eabs-inference --bench inference`. Environment overrides for quick runs:
//! `EABS_BENCH_BATCH` (images per batch, default 32), `EABS_BENCH_CANDIDATES` (default 8000),
//! `EABS_BENCH_STEPS` (default 49), `EABS_BENCH_ARCH` (`mnist`, `svhn` or `both`, default both).

use std::time::Instant;

use candle_core::{Device, Tensor};
use eabs_inference::{
    AbsInference, FrozenAbsModel, InferenceConfig, LatentClassModel, LatentInference,
};
use eabs_models::{AbsModel, DatasetKind, ModelConfig, ModelKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident memory of the process in MiB (Linux `VmHWM`).
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run(family: DatasetKind, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let batch = env("EABS_BENCH_BATCH", 32);
    let model = AbsModel::new(
        &ModelConfig::paper(family, ModelKind::E_ABS),
        1,
        &Device::Cpu,
    )?;
    let model = FrozenAbsModel::new(&model);
    let cfg = InferenceConfig {
        n_candidates: env("EABS_BENCH_CANDIDATES", 8000),
        n_adam_steps: env("EABS_BENCH_STEPS", 49),
        ..model.inference_config(LatentInference::Variational)
    };
    let (c, h, w) = model.image_shape();
    let d = model.latent_dim();
    let t = Instant::now();
    let inference = AbsInference::new(model, cfg.clone())?;
    let build = t.elapsed().as_secs_f64();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let v: Vec<f32> = (0..batch * c * h * w)
        .map(|_| rand::Rng::random::<f32>(&mut rng))
        .collect();
    let xs = Tensor::from_vec(v, (batch, c, h, w), &Device::Cpu)?;
    // Warm-up on a small batch, then the timed batches.
    inference.infer(&xs.narrow(0, 0, batch.min(2))?, 0)?;
    let reps: usize = 2;
    let (mut start, mut opt, mut fin) = (0.0, 0.0, 0.0);
    let t = Instant::now();
    for seed in 0..reps as u64 {
        let out = inference.infer(&xs, seed)?;
        start += out.timings.start.as_secs_f64();
        opt += out.timings.optimisation.as_secs_f64();
        fin += out.timings.final_evaluation.as_secs_f64();
    }
    let total = t.elapsed().as_secs_f64();
    let sum = start + opt + fin;
    println!(
        "{name} E-ABS inference (K = 10, d = {d}, N = {}, {} Adam steps, variational, encoder on), batch {batch}:",
        cfg.n_candidates, cfg.n_adam_steps
    );
    println!("  candidate cache build (once per model): {build:.2} s");
    println!(
        "  throughput: {:.2} images/s ({:.3} s per batch, mean of {reps})",
        (reps * batch) as f64 / total,
        total / reps as f64
    );
    println!(
        "  stages: start (candidate search + encoder) {:.1}%, optimisation {:.1}%, final evaluation {:.1}%",
        100.0 * start / sum,
        100.0 * opt / sum,
        100.0 * fin / sum
    );
    match peak_mib() {
        Some(m) => println!("  peak resident memory of the process so far: {m:.0} MiB"),
        None => println!("  peak resident memory: not available on this platform"),
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As xtask does: keep freed memory in the process, and one thread pool (rayon's) for the
    // CPU (see eabs_kernels::allocator and eabs_kernels::threads).
    eabs_kernels::tune_process();
    let which = std::env::var("EABS_BENCH_ARCH").unwrap_or_else(|_| "both".into());
    if which == "mnist" || which == "both" {
        run(DatasetKind::Mnist, "MNIST")?;
    }
    if which == "svhn" || which == "both" {
        run(DatasetKind::Svhn, "SVHN")?;
    }
    Ok(())
}
