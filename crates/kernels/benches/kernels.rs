//! Speed of our kernels against Candle's CPU ops, in one process (`cargo bench -p eabs-kernels
//! --bench kernels`).
//!
//! Prints, as markdown tables:
//! - Candle's 1024x1024 f32 matmul GFLOP/s, the reference for "share of matmul";
//! - per layer of the MNIST and SVHN architectures (Table 9), forward and backward GFLOP/s with
//!   our ops and Candle's, and our share of the matmul rate (targets: forward at least 30%,
//!   backward at least 25%). "bwd kernels" calls `conv2d_backward` /
//!   `conv_transpose2d_backward` directly (all three gradients, counted as 2x the forward FLOPs); "bwd autograd" times `loss.backward()`
//!   for `loss = Σ y ⊙ r` with input, weight and bias tracked, so it includes Candle's graph
//!   bookkeeping (the backward of the product and the sum, zero-initialised accumulators);
//!   "dx-only" is the same with plain-tensor weights (the latent-optimisation case, 1x FLOPs);
//! - a decoder-stack step over 1000 latents (forward + gradient w.r.t. the latent only, weights
//!   as plain tensors, eval-mode BatchNorm), ours vs Candle's;
//! - the fused elementwise ops (forward + backward) against Candle compositions.
//!
//! Every time is the minimum over `EABS_BENCH_REPS` repetitions (default 3): the machine is
//! shared, and the minimum is the least noisy estimate of what the code can do. Batch size of
//! the per-layer table: `EABS_BENCH_BATCH` (default 256); `EABS_BENCH_FILTER=svhn` keeps the
//! layers whose name contains the string; `EABS_BENCH_LATENTS=0` stops after the layer table.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use common::{uniform, Kind, Layer, TABLE9};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Minimum wall time in seconds of `reps` runs of `f` (after one warm-up run).
fn min_time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn layer_flops(l: &Layer, n: usize) -> f64 {
    let out = l.out_side();
    let (small_c, small_p, big_c) = match l.kind {
        Kind::Conv => (l.c_out, out * out, l.c_in),
        Kind::ConvT => (l.c_in, l.side * l.side, l.c_out),
    };
    2.0 * n as f64 * small_c as f64 * small_p as f64 * (big_c * l.k * l.k) as f64
}

struct LayerTimes {
    fwd: f64,
    bwd: f64,
    /// Backward with only the input tracked (weights as plain tensors): the inference case.
    bwd_dx: f64,
    /// Our backward kernels called directly (all three gradients), without Candle's graph
    /// bookkeeping (the `Σ y ⊙ r` backward, zero-initialised gradient accumulators).
    bwd_kernels: f64,
    /// Our input-gradient kernel alone.
    dx_kernel: f64,
}

fn time_layer(l: &Layer, n: usize, reps: usize, ours: bool) -> Result<LayerTimes> {
    let x = uniform(&[n, l.c_in, l.side, l.side], 1)?;
    let w = (uniform(&l.weight_shape(), 2)? * 0.1)?;
    let b = uniform(&[l.c_out], 3)?;
    let op = |x: &Tensor, w: &Tensor, b: &Tensor| {
        if ours {
            l.ours(x, w, Some(b))
        } else {
            l.candle(x, w, Some(b))
        }
    };
    let fwd = min_time(reps, || op(&x, &w, &b).map(|_| ()))?;
    let (xv, wv, bv) = (
        Var::from_tensor(&x)?,
        Var::from_tensor(&w)?,
        Var::from_tensor(&b)?,
    );
    let y = op(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())?;
    let out = l.out_side();
    let r = uniform(&[n, l.c_out, out, out], 4)?;
    let loss = (&y * &r)?.sum_all()?;
    let bwd = min_time(reps, || loss.backward().map(|_| ()))?;
    let y = op(xv.as_tensor(), &w, &b)?;
    let loss = (&y * &r)?.sum_all()?;
    let bwd_dx = min_time(reps, || loss.backward().map(|_| ()))?;
    let bwd_kernels = if ours {
        let all = eabs_kernels::ConvGrads::ALL;
        min_time(reps, || {
            match l.kind {
                Kind::Conv => eabs_kernels::conv2d_backward(&x, &w, &r, l.stride, l.pad, all)?,
                Kind::ConvT => eabs_kernels::conv_transpose2d_backward(
                    &x, &w, &r, l.stride, l.pad, l.out_pad, all,
                )?,
            };
            Ok(())
        })?
    } else {
        f64::NAN
    };
    let dx_kernel = if ours {
        let only = eabs_kernels::ConvGrads::INPUT;
        min_time(reps, || {
            match l.kind {
                Kind::Conv => eabs_kernels::conv2d_backward(&x, &w, &r, l.stride, l.pad, only)?,
                Kind::ConvT => eabs_kernels::conv_transpose2d_backward(
                    &x, &w, &r, l.stride, l.pad, l.out_pad, only,
                )?,
            };
            Ok(())
        })?
    } else {
        f64::NAN
    };
    Ok(LayerTimes {
        fwd,
        bwd,
        bwd_dx,
        bwd_kernels,
        dx_kernel,
    })
}

/// One decoder of Table 9 (`prefix` = "mnist dec" or "svhn dec"): transposed convolutions with
/// eval-mode BatchNorm (a per-channel affine: ours `channel_affine`, Candle's broadcast ops) and
/// ReLU, sigmoid at the end; returns
/// `Σ (dec(z) - target)²`.
struct Decoder {
    layers: Vec<Layer>,
    weights: Vec<(Tensor, Tensor, Tensor, Tensor)>,
}

impl Decoder {
    fn new(prefix: &str) -> Result<Self> {
        let layers: Vec<Layer> = TABLE9
            .iter()
            .filter(|l| l.name.starts_with(prefix))
            .copied()
            .collect();
        let mut weights = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let s = 10 * i as u64;
            let fan = (l.c_in * l.k * l.k) as f64;
            let w = (uniform(&l.weight_shape(), s)? * (1.0 / fan.sqrt()))?;
            let shape = (1, l.c_out, 1, 1);
            let bn_scale = (uniform(&[l.c_out], s + 1)?.abs()? + 0.5)?.reshape(shape)?;
            let bn_shift = (uniform(&[l.c_out], s + 2)? * 0.1)?.reshape(shape)?;
            weights.push((w, uniform(&[l.c_out], s + 3)?, bn_scale, bn_shift));
        }
        Ok(Self { layers, weights })
    }

    fn loss(&self, z: &Tensor, target: &Tensor, ours: bool) -> Result<Tensor> {
        let mut h = z.clone();
        let last = self.layers.len() - 1;
        for (i, (l, (w, b, s, t))) in self.layers.iter().zip(&self.weights).enumerate() {
            h = if ours {
                l.ours(&h, w, Some(b))?
            } else {
                l.candle(&h, w, Some(b))?
            };
            if i < last {
                h = h.broadcast_mul(s)?.broadcast_add(t)?;
                h = if ours {
                    eabs_kernels::leaky_relu(&h, 0.0)?
                } else {
                    h.relu()?
                };
            } else {
                h = if ours {
                    eabs_kernels::sigmoid(&h)?
                } else {
                    candle_nn::ops::sigmoid(&h)?
                };
            }
        }
        (h - target)?.sqr()?.sum_all()
    }

    fn flops_per_latent(&self) -> f64 {
        self.layers.iter().map(|l| layer_flops(l, 1)).sum()
    }
}

fn decoder_step(prefix: &str, n: usize, reps: usize, ours: bool) -> Result<f64> {
    let dec = Decoder::new(prefix)?;
    let first = dec.layers[0];
    let last = dec.layers[dec.layers.len() - 1];
    let z = Var::from_tensor(&uniform(&[n, first.c_in, 1, 1], 77)?)?;
    let target = ((uniform(&[n, last.c_out, last.out_side(), last.out_side()], 78)? + 1.0)? * 0.5)?;
    min_time(reps, || {
        let loss = dec.loss(z.as_tensor(), &target, ours)?;
        let grads = loss.backward()?;
        assert!(grads.get(z.as_tensor()).is_some());
        Ok(())
    })
}

fn fused(reps: usize) -> Result<()> {
    let shape = [256, 32, 14, 14];
    let x = Var::from_tensor(&uniform(&shape, 5)?)?;
    let r = uniform(&shape, 6)?;
    let gamma = Var::from_tensor(&(uniform(&[32], 7)? + 1.0)?)?;
    let beta = Var::from_tensor(&uniform(&[32], 8)?)?;
    println!(
        "\n### Fused elementwise ops, x: {shape:?} f32, forward + backward (ms, min of {reps})\n"
    );
    println!("| op | ours | Candle | speed-up |");
    println!("|---|---:|---:|---:|");
    type F<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
    let cases: Vec<(&str, F, F)> = vec![
        (
            "leaky_relu(0.2)",
            Box::new(|x| eabs_kernels::leaky_relu(x, 0.2)),
            Box::new(|x| x.maximum(&(x * 0.2)?)),
        ),
        (
            "sigmoid",
            Box::new(eabs_kernels::sigmoid),
            Box::new(candle_nn::ops::sigmoid),
        ),
        (
            "batch_norm_train",
            Box::new(|x| {
                Ok(eabs_kernels::batch_norm_train(x, gamma.as_tensor(), beta.as_tensor(), 1e-5)?.0)
            }),
            Box::new(|x| {
                let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc
                    .sqr()?
                    .mean_keepdim(0)?
                    .mean_keepdim(2)?
                    .mean_keepdim(3)?;
                xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?
                    .broadcast_mul(&gamma.as_tensor().reshape((1, 32, 1, 1))?)?
                    .broadcast_add(&beta.as_tensor().reshape((1, 32, 1, 1))?)
            }),
        ),
    ];
    for (name, ours, theirs) in &cases {
        let t = |f: &F| {
            min_time(reps, || {
                (f(x.as_tensor())? * &r)?.sum_all()?.backward().map(|_| ())
            })
        };
        let (a, b) = (t(ours)?, t(theirs)?);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1}x |",
            a * 1e3,
            b * 1e3,
            b / a
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // As xtask does: keep freed memory in the process, and one thread pool (rayon's) for the
    // CPU (see eabs_kernels::allocator and eabs_kernels::threads).
    eabs_kernels::tune_process();
    let reps = env_usize("EABS_BENCH_REPS", 3);
    let n = env_usize("EABS_BENCH_BATCH", 256);
    let dev = Device::Cpu;
    println!(
        "threads: {} (rayon), reps: {reps} (minimum reported)",
        rayon::current_num_threads()
    );

    let a = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let b = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let mm = 2.0 * 1024f64.powi(3) / min_time(reps.max(5), || a.matmul(&b).map(|_| ()))? / 1e9;
    println!("Candle f32 matmul 1024x1024: {mm:.1} GFLOP/s\n");

    println!("### Per layer, batch {n}: GFLOP/s (share of the matmul rate)\n");
    println!("| layer | op | in -> out | MFLOP/img | fwd ours | fwd Candle | bwd ours: kernels | bwd ours: autograd | bwd Candle | dx-only ours: kernel | dx-only ours: autograd | dx-only Candle |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut min_fwd, mut min_bwd) = (f64::INFINITY, f64::INFINITY);
    let filter = std::env::var("EABS_BENCH_FILTER").unwrap_or_default();
    let layers = TABLE9
        .iter()
        .filter(|l| l.name.starts_with("mnist") || l.name.starts_with("svhn"))
        .filter(|l| l.name.contains(filter.as_str()));
    for l in layers {
        let f = layer_flops(l, n);
        let ours = time_layer(l, n, reps, true)?;
        let theirs = time_layer(l, n, reps.min(2), false)?;
        let g = |flops: f64, t: f64| flops / t / 1e9;
        let (fo, bo) = (g(f, ours.fwd), g(2.0 * f, ours.bwd_kernels));
        min_fwd = min_fwd.min(fo / mm);
        min_bwd = min_bwd.min(bo / mm);
        let kind = match l.kind {
            Kind::Conv => format!("conv k{} s{} p{}", l.k, l.stride, l.pad),
            Kind::ConvT => format!("convT k{} s{} p{}", l.k, l.stride, l.pad),
        };
        println!(
            "| {} | {kind} | {}x{}² -> {}x{}² | {:.2} | {:.1} ({:.0}%) | {:.1} | {:.1} ({:.0}%) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.name,
            l.c_in,
            l.side,
            l.c_out,
            l.out_side(),
            f / n as f64 / 1e6,
            fo,
            100.0 * fo / mm,
            g(f, theirs.fwd),
            bo,
            100.0 * bo / mm,
            g(2.0 * f, ours.bwd),
            g(2.0 * f, theirs.bwd),
            g(f, ours.dx_kernel),
            g(f, ours.bwd_dx),
            g(f, theirs.bwd_dx),
        );
    }
    println!(
        "\nLowest share of the matmul rate: forward {:.0}% (target 30%), backward {:.0}% (target 25%)",
        100.0 * min_fwd,
        100.0 * min_bwd
    );

    let latents = env_usize("EABS_BENCH_LATENTS", 1000);
    if latents == 0 {
        return Ok(());
    }
    println!(
        "\n### Decoder stack, {latents} latents, forward + gradient w.r.t. the latent only (s)\n"
    );
    println!("| decoder | MFLOP/latent (fwd) | ours | Candle | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for (name, prefix) in [("MNIST", "mnist dec"), ("SVHN", "svhn dec")] {
        let ours = decoder_step(prefix, latents, reps, true)?;
        let theirs = decoder_step(prefix, latents, reps.min(2), false)?;
        let fl = Decoder::new(prefix)?.flops_per_latent();
        println!(
            "| {name} | {:.2} | {ours:.3} | {theirs:.3} | {:.1}x |",
            fl / 1e6,
            theirs / ours
        );
    }

    fused(reps)?;
    Ok(())
}
