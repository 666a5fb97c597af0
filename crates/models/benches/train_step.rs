//! Benchmark of the MNIST E-ABS architecture (Table 9): one training step at batch 512 (Algorithm
//! 1: encoder, all K = 10 decoders on every latent as eq. (5) needs, discriminator; backward; both
//! Adam updates) at batch 128 and 512, one gradient step of the latent optimisation for 1000
//! latents (100 images x 10 classes, Section 3.3), each with our kernels and with Candle's stock
//! ops in the same run (`eabs_kernels::set_stock_ops`), and one evaluation-mode decoder pass over
//! 8000 latents (the ABS / E-ABS inference pool), whole and in chunks of 500.
//!
//! Reports seconds (min and mean over repetitions), samples/s, achieved GFLOP/s and that as a
//! share of a plain 1024^3 f32 matmul's GFLOP/s measured in the same run. FLOPs are counted from
//! the layers ([`eabs_models::ArchConfig::decoder_flops`]: 6.52 MFLOP per decoder pass,
//! [`eabs_models::ArchConfig::encoder_flops`]: 4.25 MFLOP per encoder pass); a training step is
//! counted as 3x its forward FLOPs (forward + backward), the usual convention.
//!
//! Run: `cargo bench -p eabs-models --bench train_step` (env `EABS_BENCH_REPS`, default 3;
//! `EABS_BENCH_STOCK=0` leaves out the stock-Candle timings).

use eabs_core::host::{self, HostRead};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use eabs_models::params::{derive_rng, randn, Stream};
use eabs_models::{AbsModel, Adam, DatasetKind, ModelConfig, ModelKind};

fn time<F: FnMut() -> anyhow::Result<()>>(reps: usize, mut f: F) -> anyhow::Result<(f64, f64)> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((min, mean))
}

fn main() -> anyhow::Result<()> {
    // As xtask does: keep freed memory in the process, and one thread pool (rayon's) for the
    // CPU (see eabs_kernels::allocator and eabs_kernels::threads).
    eabs_kernels::tune_process();
    let reps: usize = std::env::var("EABS_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    // `EABS_BENCH_STOCK=0` skips the stock-Candle timings (minutes at batch 512).
    let modes: &[bool] = if std::env::var("EABS_BENCH_STOCK").is_ok_and(|v| v == "0") {
        &[false]
    } else {
        &[false, true]
    };
    let dev = Device::Cpu;

    // Reference: plain f32 matmul, 1024^3.
    let n = 1024;
    let a = Tensor::rand(0f32, 1f32, (n, n), &dev)?;
    let b = Tensor::rand(0f32, 1f32, (n, n), &dev)?;
    let (mm, _) = time(reps.max(5), || {
        let c = a.matmul(&b)?;
        c.sum_all()?.host_scalar::<f32>()?;
        Ok(())
    })?;
    let mm_gflops = 2.0 * (n * n * n) as f64 / mm / 1e9;
    println!(
        "matmul 1024^3 f32: {:.4} s, {:.1} GFLOP/s (reference)",
        mm, mm_gflops
    );

    let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
    let arch = &cfg.arch;
    let (enc_f, dec_f) = (arch.encoder_flops(), arch.decoder_flops());
    let k = arch.n_classes;
    println!(
        "MNIST architecture: encoder {:.2} MFLOP/image, decoder {:.2} MFLOP/latent",
        enc_f / 1e6,
        dec_f / 1e6
    );
    let model = AbsModel::new(&cfg, 0, &dev)?;
    let main = model.store().params_without_prefix("discriminator");
    let disc = model.store().params_with_prefix("discriminator");

    // One E-ABS training step (Algorithm 1) at batch 128 and 512, with our kernels and with
    // Candle's stock ops (`eabs_kernels::set_stock_ops`), in this one run.
    for batch in [128usize, 512] {
        let mut rng = derive_rng(0, Stream::Noise, 0, batch as u64);
        let xs = randn(&mut rng, &[batch, 1, 28, 28], &dev)?
            .affine(0.2, 0.3)?
            .clamp(0f32, 1f32)?;
        let labels = host::from_vec(
            (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
            batch,
            &dev,
        )?;
        let mut ours_min = f64::NAN;
        for &stock in modes {
            eabs_kernels::set_stock_ops(stock);
            let (mut adam, mut disc_adam) = (Adam::new(), Adam::new());
            let mut step = 0u64;
            let (t_min, t_mean) = time(reps, || {
                step += 1;
                model.dropout_rng().reseed(step);
                let mut rng = derive_rng(0, Stream::Step, 0, step);
                let (parts, latents) = model.training_loss(&xs, &labels, &mut rng)?;
                adam.step(&parts.total.backward()?, &main, 1e-3)?;
                if let Some(dl) = model.discriminator_loss(&latents, batch, &mut rng)? {
                    disc_adam.step(&dl.backward()?, &disc, 1e-3)?;
                }
                parts.total.host_scalar::<f32>()?;
                Ok(())
            })?;
            let step_flops = 3.0 * batch as f64 * (enc_f + k as f64 * dec_f);
            let g = step_flops / t_min / 1e9;
            let speedup = if stock {
                format!(", ours {:.2}x faster", t_min / ours_min)
            } else {
                ours_min = t_min;
                String::new()
            };
            println!(
                "E-ABS training step, batch {batch}, {k} decoders, {}: min {t_min:.3} s, mean {t_mean:.3} s, {:.0} samples/s, {:.2} GFLOP/s ({:.1}% of matmul){speedup}",
                if stock { "Candle stock ops" } else { "our kernels" },
                batch as f64 / t_min,
                g,
                100.0 * g / mm_gflops
            );
        }
        eabs_kernels::set_stock_ops(false);
    }

    // One gradient step of the latent optimisation (Section 3.3, eq. 6) for 100 images x 10
    // classes = 1000 latents: every class decoder on its 100 latents, evaluation mode, detached
    // weights, loss sum_k ||x - G_k(z_k)||^2 - log D(z_k), gradient with respect to z only.
    let frozen = model.frozen();
    let n_img = 100;
    let m = arch.latent_dim;
    let xs = randn(
        &mut derive_rng(0, Stream::Noise, 1, 0),
        &[n_img, 1, 28, 28],
        &dev,
    )?
    .affine(0.2, 0.3)?
    .clamp(0f32, 1f32)?;
    let z0 = randn(
        &mut derive_rng(0, Stream::Step, 2, 0),
        &[k * n_img, m],
        &dev,
    )?;
    let mut ours_min = f64::NAN;
    for &stock in modes {
        eabs_kernels::set_stock_ops(stock);
        let (t_min, t_mean) = time(reps, || {
            let z = candle_core::Var::from_tensor(&z0)?;
            let mut loss = Tensor::zeros((), DType::F32, &dev)?;
            for (c, dec) in frozen.decoders().iter().enumerate() {
                let zc = z.as_tensor().narrow(0, c * n_img, n_img)?;
                let rec = (dec.forward(&zc, false)? - &xs)?.sqr()?.sum_all()?;
                loss = (loss + rec)?;
            }
            if let Some(d) = frozen.discriminator_for(0) {
                loss = (loss - d.log_d(z.as_tensor())?.sum_all()?)?;
            }
            let grads = loss.backward()?;
            let g = grads.get(z.as_tensor()).expect("latent gradient");
            g.sum_all()?.host_scalar::<f32>()?;
            Ok(())
        })?;
        let g = 3.0 * (k * n_img) as f64 * dec_f / t_min / 1e9;
        let speedup = if stock {
            format!(", ours {:.2}x faster", t_min / ours_min)
        } else {
            ours_min = t_min;
            String::new()
        };
        println!(
            "latent gradient step, {n_img} images x {k} classes, {}: min {t_min:.3} s, mean {t_mean:.3} s, {:.2} GFLOP/s ({:.1}% of matmul){speedup}",
            if stock { "Candle stock ops" } else { "our kernels" },
            g,
            100.0 * g / mm_gflops
        );
    }
    eabs_kernels::set_stock_ops(false);

    // One decoder over 8000 latents, evaluation mode, detached weights.
    let dec = &frozen.decoders()[0];
    let zs = randn(
        &mut derive_rng(0, Stream::Step, 1, 0),
        &[8000, arch.latent_dim],
        &dev,
    )?;
    for chunk in [8000usize, 500] {
        let (d_min, d_mean) = time(reps, || {
            let r = dec.forward_chunked(&zs, chunk)?;
            r.sum_all()?.to_dtype(DType::F32)?.host_scalar::<f32>()?;
            Ok(())
        })?;
        let g = 8000.0 * dec_f / d_min / 1e9;
        println!(
            "decoder forward, 8000 latents, chunks of {chunk}: min {d_min:.3} s, mean {d_mean:.3} s, {:.0} samples/s, {:.2} GFLOP/s ({:.1}% of matmul)",
            8000.0 / d_min,
            g,
            100.0 * g / mm_gflops
        );
    }
    Ok(())
}
