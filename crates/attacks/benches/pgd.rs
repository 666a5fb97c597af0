//! PGD iterations per second (one gradient each) on the MNIST CNN of Table 9, batch 100.
//!
//! The network is the E-ABS MNIST encoder (conv 16/32/64/64 channels, kernels 5/5/5/4, strides
//! 2/2/2/1, paddings 2/2/2/1, each followed by BatchNorm in eval mode and LeakyReLU) plus a
//! linear layer to 10 classes, with random weights (plain tensors, so autodiff tracks only the
//! input). Run with `cargo bench -p eabs-attacks --bench pgd`.

use std::time::Instant;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear};
use eabs_attacks::{Criterion, FixedEpsilonAttack, Norm, Pgd, PgdConfig};
use eabs_core::{Bounds, Classifier, Differentiable};

struct Cnn {
    convs: Vec<(Conv2d, BatchNorm)>,
    head: Linear,
    device: Device,
}

impl Cnn {
    fn random(device: &Device) -> candle_core::Result<Self> {
        let spec = [
            (1usize, 16usize, 5usize, 2usize, 2usize),
            (16, 32, 5, 2, 2),
            (32, 64, 5, 2, 2),
            (64, 64, 4, 1, 1),
        ];
        let mut convs = Vec::new();
        for (cin, cout, k, stride, padding) in spec {
            let scale = (2.0 / (cin * k * k) as f64).sqrt();
            let w = (Tensor::randn(0f32, 1.0, (cout, cin, k, k), device)? * scale)?;
            let b = Tensor::zeros(cout, DType::F32, device)?;
            let conv = Conv2d::new(
                w,
                Some(b),
                Conv2dConfig {
                    stride,
                    padding,
                    ..Default::default()
                },
            );
            let ones = Tensor::ones(cout, DType::F32, device)?;
            let zeros = Tensor::zeros(cout, DType::F32, device)?;
            let bn = BatchNorm::new(cout, zeros.clone(), ones.clone(), ones, zeros, 1e-5)?;
            convs.push((conv, bn));
        }
        // 28 -> 14 -> 7 -> 4 -> 3: 64 * 3 * 3 features.
        let w = (Tensor::randn(0f32, 1.0, (10, 576), device)? * (1.0 / 24.0))?;
        let head = Linear::new(w, Some(Tensor::zeros(10, DType::F32, device)?));
        Ok(Self {
            convs,
            head,
            device: device.clone(),
        })
    }
}

impl Classifier for Cnn {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        10
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for (conv, bn) in &self.convs {
            h = conv.forward(&h)?;
            h = bn.forward_t(&h, false)?;
            h = candle_nn::ops::leaky_relu(&h, 0.01)?;
        }
        self.head.forward(&h.flatten_from(1)?)
    }
}
impl Differentiable for Cnn {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let model = Cnn::random(&device)?;
    let batch = 100;
    let xs = Tensor::rand(0f32, 1.0, (batch, 1, 28, 28), &device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let crit = Criterion::misclassification(labels);
    for norm in [Norm::Linf, Norm::L2] {
        let steps = 20;
        let pgd = Pgd::new(PgdConfig {
            steps,
            ..PgdConfig::paper(norm, 1)
        })?;
        // Warm-up.
        let _ = pgd.run(&model, &xs, &crit, 0.1)?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            let _ = pgd.run(&model, &xs, &crit, 0.1)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        // `steps` gradient iterations plus one final forward pass per run.
        println!(
            "pgd-{}: batch {batch}, {steps} steps in {best:.3} s (best of 3): {:.1} iterations/s, {:.0} images x iterations/s",
            norm.name(),
            steps as f64 / best,
            (steps * batch) as f64 / best
        );
    }
    Ok(())
}
