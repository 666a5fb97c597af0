//! Throughput of full E-ABS inference with the paper's settings (8000 candidates + encoder
//! proposal, 49 variational Adam updates at lr 0.05, radius 5, final sample) on the MNIST
//! (batch 32) and SVHN (batch 8) architectures of Table 9, for both engines of the
//! optimisation stage in the same run (Candle's autodiff graph, the reference, and the fast
//! engine of `eabs_inference::fast`): images/s, the share of time per stage, the optimisation
//! loop's GFLOP/s as a share of the same run's 1024x1024 matmul, the load average and the peak
//! memory.
//!
//! The models are `eabs-models` E-ABS models (shared encoder, K = 10 decoders, one
//! discriminator) with seeded random weights, frozen for inference: the cost of a trained model.
//!
//! Run: `cargo bench -p eabs-inference --bench inference`. Environment overrides for quick runs:
//! `EABS_BENCH_BATCH` (images per batch, default 32 / 8), `EABS_BENCH_REPS` (default 2), `EABS_BENCH_CANDIDATES` (default 8000),
//! `EABS_BENCH_STEPS` (default 49), `EABS_BENCH_ARCH` (`mnist`, `svhn` or `both`, default both),
//! `EABS_BENCH_ENGINE` (`autodiff`, `fast` or `both`, default both: for profiling one engine).

use eabs_core::host::{self, HostRead};
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

/// Candle's 1024x1024 f32 matmul in GFLOP/s: the reference for "share of the matmul rate".
fn matmul_gflops() -> Result<f64, Box<dyn std::error::Error>> {
    let n = 1024;
    let a = Tensor::rand(0f32, 1f32, (n, n), &Device::Cpu)?;
    let b = Tensor::rand(0f32, 1f32, (n, n), &Device::Cpu)?;
    a.matmul(&b)?.sum_all()?.host_scalar::<f32>()?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?.sum_all()?.host_scalar::<f32>()?;
    }
    Ok(2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// Timings of one engine over `reps` batches.
struct Timed {
    images_per_s: f64,
    start: f64,
    opt: f64,
    fin: f64,
}

fn time_engine(
    inference: &AbsInference<FrozenAbsModel>,
    xs: &Tensor,
    reps: usize,
) -> Result<Timed, Box<dyn std::error::Error>> {
    // Warm-up on a small batch, then the timed batches.
    inference.infer(&xs.narrow(0, 0, xs.dim(0)?.min(2))?, 0)?;
    let (mut start, mut opt, mut fin) = (0.0, 0.0, 0.0);
    let t = Instant::now();
    for seed in 0..reps as u64 {
        let out = inference.infer(xs, seed)?;
        start += out.timings.start.as_secs_f64();
        opt += out.timings.optimisation.as_secs_f64();
        fin += out.timings.final_evaluation.as_secs_f64();
    }
    let total = t.elapsed().as_secs_f64();
    Ok(Timed {
        images_per_s: (reps * xs.dim(0)?) as f64 / total,
        start,
        opt,
        fin,
    })
}

fn run(
    family: DatasetKind,
    name: &str,
    default_batch: usize,
    mm: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let batch = env("EABS_BENCH_BATCH", default_batch);
    let reps = env("EABS_BENCH_REPS", 2).max(1);
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
    let (d, k) = (model.latent_dim(), model.n_classes());
    let macs = model
        .fast_model()?
        .map(|f| f.decoder_macs())
        .ok_or("the E-ABS model has no fast engine")?;
    let t = Instant::now();
    let mut inference = AbsInference::new(model, cfg.clone())?;
    let build = t.elapsed().as_secs_f64();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let v: Vec<f32> = (0..batch * c * h * w)
        .map(|_| rand::Rng::random::<f32>(&mut rng))
        .collect();
    let xs = host::from_vec(v, (batch, c, h, w), &Device::Cpu)?;
    println!(
        "{name} E-ABS inference (K = {k}, d = {d}, N = {}, {} Adam steps, variational, encoder on), batch {batch}, mean of {reps} batches:",
        cfg.n_candidates, cfg.n_adam_steps
    );
    println!("  candidate cache build (once per model): {build:.2} s");
    // Optimisation FLOPs: per (image, class, step) one decoder forward and one backward to the
    // latent, 2 x 2 x macs (the discriminator's ~0.1 MFLOP is left out).
    let opt_flops = (batch * k * cfg.n_adam_steps) as f64 * 4.0 * macs as f64 * reps as f64;
    let engines = std::env::var("EABS_BENCH_ENGINE").unwrap_or_else(|_| "both".into());
    let mut rates = Vec::new();
    for (label, fast) in [("autodiff (Candle graph)", false), ("fast engine", true)] {
        if (engines == "fast" && !fast) || (engines == "autodiff" && fast) {
            continue;
        }
        inference.set_fast_engine(fast);
        let r = time_engine(&inference, &xs, reps)?;
        let sum = r.start + r.opt + r.fin;
        let gflops = opt_flops / r.opt / 1e9;
        println!(
            "  {label:<24} {:.2} images/s | stages: start {:.1}%, optimisation {:.1}%, final {:.1}% | optimisation loop {gflops:.1} GFLOP/s = {:.0}% of matmul",
            r.images_per_s,
            100.0 * r.start / sum,
            100.0 * r.opt / sum,
            100.0 * r.fin / sum,
            100.0 * gflops / mm
        );
        rates.push(r.images_per_s);
    }
    if let [autodiff, fast] = rates[..] {
        println!("  fast engine / autodiff: {:.2}x", fast / autodiff);
    }
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
    let mm = matmul_gflops()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Candle f32 matmul 1024x1024: {mm:.1} GFLOP/s; {} threads; load average {}",
        rayon::current_num_threads(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if which == "mnist" || which == "both" {
        run(DatasetKind::Mnist, "MNIST", 32, mm)?;
    }
    if which == "svhn" || which == "both" {
        run(DatasetKind::Svhn, "SVHN", 8, mm)?;
    }
    Ok(())
}
