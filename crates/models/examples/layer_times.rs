//! Times each layer of one MNIST decoder on 500 latents (evaluation mode), and the forward and
//! backward halves of an E-ABS training step: where the time goes. Run: `cargo run --release -p eabs-models --example layer_times`.

use eabs_core::host;
use std::time::Instant;

use candle_core::{Device, Tensor};
use eabs_models::{AbsModel, ArchConfig, DatasetKind, ModelConfig, ModelKind};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
    let arch: &ArchConfig = &cfg.arch;
    let model = AbsModel::new(&cfg, 0, &dev)?.frozen();
    let store = model.store();
    let n = 500;
    let mut h = Tensor::randn(0f32, 1f32, (n, arch.decoder[0].channels, 1, 1), &dev)?;
    let mut c_in = arch.decoder[0].channels;
    for (i, s) in arch.decoder.iter().enumerate() {
        let w = store.params()[&format!("decoders.0.convt{i}.weight")]
            .as_tensor()
            .detach();
        let t = Instant::now();
        let mut out = h.clone();
        for _ in 0..5 {
            out = eabs_kernels::conv_transpose2d(&h, &w, None, s.stride, s.padding, 0)?;
        }
        let secs = t.elapsed().as_secs_f64() / 5.0;
        let (_, _, hh, _) = h.dims4()?;
        let flops = 2.0 * (n * c_in * s.channels * s.kernel * s.kernel * hh * hh) as f64;
        println!(
            "convt{i} {:?} -> {:?}: {:.4} s, {:.2} GFLOP/s",
            h.dims(),
            out.dims(),
            secs,
            flops / secs / 1e9
        );
        h = out.relu()?;
        c_in = s.channels;
    }
    let z = Tensor::randn(0f32, 1f32, (n, arch.latent_dim), &dev)?;
    let t = Instant::now();
    for _ in 0..5 {
        model.decoders()[0].forward(&z, false)?;
    }
    println!(
        "whole decoder, {n} latents: {:.4} s",
        t.elapsed().as_secs_f64() / 5.0
    );
    // Elementwise stages on the largest activation (500 x 16 x 25 x 25).
    let x = Tensor::randn(0f32, 1f32, (n, 16, 25, 25), &dev)?;
    let ones = Tensor::ones(16, candle_core::DType::F32, &dev)?;
    let zeros = Tensor::zeros(16, candle_core::DType::F32, &dev)?;
    let t = Instant::now();
    for _ in 0..5 {
        eabs_kernels::batch_norm_eval(&x, &ones, &zeros, &zeros, &ones, 1e-5)?;
    }
    println!(
        "batch_norm_eval {:?}: {:.4} s",
        x.dims(),
        t.elapsed().as_secs_f64() / 5.0
    );
    let t = Instant::now();
    for _ in 0..5 {
        x.relu()?;
    }
    println!(
        "relu {:?}: {:.4} s",
        x.dims(),
        t.elapsed().as_secs_f64() / 5.0
    );
    step_split()
}

/// Splits one E-ABS training step (batch 128) into forward and backward time.
fn step_split() -> anyhow::Result<()> {
    use eabs_models::params::{derive_rng, Stream};
    let dev = Device::Cpu;
    let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
    let model = AbsModel::new(&cfg, 0, &dev)?;
    let b = 128;
    let xs = Tensor::rand(0f32, 1f32, (b, 1, 28, 28), &dev)?;
    let labels = host::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<_>>(), b, &dev)?;
    for _ in 0..2 {
        let mut rng = derive_rng(0, Stream::Step, 0, 0);
        let t = Instant::now();
        let (parts, _) = model.training_loss(&xs, &labels, &mut rng)?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _g = parts.total.backward()?;
        println!(
            "E-ABS step, batch {b}: forward {f:.3} s, backward {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
