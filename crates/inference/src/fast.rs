//! The fast CPU engine of inference's optimisation stage (stage 2 of [`crate::engine`]): the
//! decoders evaluated on plain f32 buffers with each evaluation-mode BatchNorm folded into the
//! transposed convolution before it, ReLU and sigmoid applied in place, and a hand-written
//! backward that computes the gradient with respect to the latent only (no weight gradients, no
//! autodiff graph). The ten class decoders run in parallel (rayon), each on the whole batch, so
//! a GEMM's `N` is the batch times the layer's pixels.
//!
//! It computes exactly the objective of the generic path, `sum_{i,k} (||x_i - G_k(z_ik)||^2 +
//! prior_k(z_ik)) / P` and its gradient, in a different order of float operations; the tests
//! (`tests/fast_path.rs`) compare the two on losses, gradients and the optimum after the
//! paper's 49 Adam steps. Where a model provides no [`FastModel`], or off the CPU, or with
//! [`eabs_kernels::set_stock_ops`] on, inference takes the generic Candle path.
//!
//! BatchNorm folding: in evaluation mode `BN(y) = gamma (y - mean) / sqrt(var + eps) + beta =
//! s y + t` per output channel with `s = gamma / sqrt(var + eps)`, `t = beta - s mean`; for
//! `y = convT(x, W) + b` that is `convT(x, s W) + (s b + t)`, `s` scaling the output-channel
//! axis of `W: (c_in, c_out, k, k)`.

use eabs_core::host::HostRead;
use std::sync::Arc;

use candle_core::{bail, DType, Result, Tensor};
use eabs_kernels::raw::{matmul, TransposedConv};
use rayon::prelude::*;

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.host_vec1::<f32>()
}

/// A fully-connected layer `y = x Wᵀ + b`, `W: (n_out, n_in)` (PyTorch's layout).
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

impl Dense {
    /// From a `(n_out, n_in)` weight and `(n_out,)` bias.
    ///
    /// # Errors
    /// Shapes that do not fit together.
    pub fn from_tensors(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (n_out, n_in) = weight.dims2()?;
        if bias.dims() != [n_out] {
            bail!(
                "Dense: bias of shape {:?} for a weight of shape {:?}",
                bias.dims(),
                weight.dims()
            );
        }
        Ok(Self {
            weight: values(weight)?,
            bias: values(bias)?,
            n_in,
            n_out,
        })
    }

    fn forward(&self, n: usize, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = Vec::new();
        self.forward_into(n, x, &mut y)?;
        Ok(y)
    }

    /// `y = x Wᵀ + b` into `y`, resized to `(n, n_out)` (no reallocation when it already is).
    fn forward_into(&self, n: usize, x: &[f32], y: &mut Vec<f32>) -> Result<()> {
        y.resize(n * self.n_out, 0.0);
        matmul((n, self.n_out, self.n_in), y, x, false, &self.weight, true)?;
        for row in y.chunks_mut(self.n_out) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += *b);
        }
        Ok(())
    }

    /// `dL/dx = dL/dy · W`, `(n, n_in)`.
    fn input_grad(&self, n: usize, gy: &[f32]) -> Result<Vec<f32>> {
        let mut gx = vec![0.0; n * self.n_in];
        matmul(
            (n, self.n_in, self.n_out),
            &mut gx,
            gy,
            false,
            &self.weight,
            false,
        )?;
        Ok(gx)
    }
}

/// The activation after a transposed convolution of a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(0, y)` (after the folded BatchNorm).
    Relu,
    /// `1 / (1 + exp(-y))` (the last layer: images in (0, 1)).
    Sigmoid,
}

/// One transposed convolution with its bias (a folded BatchNorm's shift) and activation.
#[derive(Debug, Clone)]
pub struct FastConvLayer {
    conv: TransposedConv,
    weight: Vec<f32>,
    bias: Vec<f32>,
    activation: Activation,
}

/// An evaluation-mode BatchNorm's parameters and running statistics, `(c,)` each.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormParams<'a> {
    /// Scale gamma.
    pub gamma: &'a Tensor,
    /// Shift beta.
    pub beta: &'a Tensor,
    /// Running mean.
    pub mean: &'a Tensor,
    /// Running (unbiased) variance.
    pub var: &'a Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl FastConvLayer {
    /// A transposed convolution on `(c_in, h, w)` inputs with weight `(c_in, c_out, k, k)`,
    /// optional bias `(c_out,)`, an optional BatchNorm after it (folded in, see the module
    /// docs), then `activation`.
    ///
    /// # Errors
    /// Shapes that do not fit together, or a BatchNorm variance with `var + eps <= 0`.
    pub fn new(
        input: (usize, usize, usize),
        weight: &Tensor,
        bias: Option<&Tensor>,
        (stride, padding): (usize, usize),
        batch_norm: Option<BatchNormParams<'_>>,
        activation: Activation,
    ) -> Result<Self> {
        let (c_in, c_out, kh, kw) = weight.dims4()?;
        if kh != kw || c_in != input.0 {
            bail!(
                "FastConvLayer: weight of shape {:?} for input {input:?} (square kernels, c_in first)",
                weight.dims()
            );
        }
        let conv = TransposedConv::new(input, c_out, kh, stride, padding)?;
        let mut w = values(weight)?;
        let mut b = match bias {
            Some(b) if b.dims() == [c_out] => values(b)?,
            Some(b) => bail!(
                "FastConvLayer: bias of shape {:?}, expected [{c_out}]",
                b.dims()
            ),
            None => vec![0.0; c_out],
        };
        if let Some(bn) = batch_norm {
            let [gamma, beta, mean, var] =
                [bn.gamma, bn.beta, bn.mean, bn.var].map(|t| (t.dims() == [c_out], t));
            for (ok, t) in [gamma, beta, mean, var] {
                if !ok {
                    bail!(
                        "FastConvLayer: BatchNorm tensor of shape {:?}, expected [{c_out}]",
                        t.dims()
                    );
                }
            }
            let (gamma, beta, mean, var) = (
                values(gamma.1)?,
                values(beta.1)?,
                values(mean.1)?,
                values(var.1)?,
            );
            let plane = kh * kw;
            for co in 0..c_out {
                let denom = (var[co] as f64 + bn.eps).sqrt();
                if denom.is_nan() || denom <= 0.0 {
                    bail!(
                        "FastConvLayer: BatchNorm channel {co}: var + eps = {} is not positive",
                        var[co] as f64 + bn.eps
                    );
                }
                let s = gamma[co] as f64 / denom;
                for ci in 0..c_in {
                    let row = &mut w[(ci * c_out + co) * plane..(ci * c_out + co + 1) * plane];
                    row.iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
                }
                b[co] = (s * b[co] as f64 + beta[co] as f64 - s * mean[co] as f64) as f32;
            }
        }
        Ok(Self {
            conv,
            weight: w,
            bias: b,
            activation,
        })
    }

    /// The layer's output shape `(c_out, h_out, w_out)`.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        self.conv.output_shape()
    }
}

/// A decoder `G_k`: a fully-connected layer whose output is read as `(c0, 1, 1)` (no activation
/// after it), then transposed convolutions.
#[derive(Debug, Clone)]
pub struct FastDecoder {
    fc: Dense,
    layers: Vec<FastConvLayer>,
}

impl FastDecoder {
    /// # Errors
    /// No layers, or layers whose shapes do not chain.
    pub fn new(fc: Dense, layers: Vec<FastConvLayer>) -> Result<Self> {
        let Some(first) = layers.first() else {
            bail!("FastDecoder: no convolution layers");
        };
        if first.conv.input_len() != fc.n_out {
            bail!(
                "FastDecoder: the fully-connected layer gives {} values, the first convolution takes {:?}",
                fc.n_out,
                first.conv.input_shape()
            );
        }
        for (i, pair) in layers.windows(2).enumerate() {
            if pair[0].conv.output_shape() != pair[1].conv.input_shape() {
                bail!(
                    "FastDecoder: layer {i} gives {:?}, layer {} takes {:?}",
                    pair[0].conv.output_shape(),
                    i + 1,
                    pair[1].conv.input_shape()
                );
            }
        }
        Ok(Self { fc, layers })
    }

    fn latent_dim(&self) -> usize {
        self.fc.n_in
    }

    fn output_len(&self) -> usize {
        self.layers.last().map_or(0, |l| l.conv.output_len())
    }

    /// Multiply-adds of one forward pass on one latent.
    pub fn macs(&self) -> usize {
        self.fc.n_in * self.fc.n_out
            + self
                .layers
                .iter()
                .map(|l| l.conv.macs_per_image())
                .sum::<usize>()
    }

    /// Forward pass keeping every layer's (post-activation) output in `acts`: `acts[0]` is the
    /// fully-connected output, `acts[i + 1]` layer `i`'s; the last is `G(z)`, `(n, P)`. The
    /// buffers are resized only when `n` changes, so the 49 steps of one batch reuse them.
    fn forward(&self, n: usize, z: &[f32], acts: &mut Vec<Vec<f32>>) -> Result<()> {
        acts.resize_with(self.layers.len() + 1, Vec::new);
        self.fc.forward_into(n, z, &mut acts[0])?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (done, rest) = acts.split_at_mut(i + 1);
            let y = &mut rest[0];
            y.resize(n * layer.conv.output_len(), 0.0);
            layer
                .conv
                .forward_into(n, &done[i], &layer.weight, Some(&layer.bias), y)?;
            match layer.activation {
                Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
                Activation::Sigmoid => y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            }
        }
        Ok(())
    }

    /// Back from `grads[last] = dL/dG(z)` to `dL/dz`, `(n, d)`, through the saved activations;
    /// `grads[i]` (resized like `acts[i]`) receives the gradient with respect to `acts[i]`.
    fn backward(&self, n: usize, acts: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<Vec<f32>> {
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let out = &acts[i + 1];
            let (below, above) = grads.split_at_mut(i + 1);
            let g = &mut above[0];
            match layer.activation {
                // d relu / dy = 1 where the output is positive (PyTorch's choice at 0: 0).
                // Written as a select, not a conditional store: the branchy form was a fifth
                // of the whole loop's time (mispredicted on every other element).
                Activation::Relu => g
                    .iter_mut()
                    .zip(out)
                    .for_each(|(g, y)| *g = if *y > 0.0 { *g } else { 0.0 }),
                Activation::Sigmoid => g
                    .iter_mut()
                    .zip(out)
                    .for_each(|(g, s)| *g *= *s * (1.0 - *s)),
            }
            let gx = &mut below[i];
            gx.resize(acts[i].len(), 0.0);
            layer.conv.input_grad_into(n, g, &layer.weight, gx)?;
        }
        self.fc.input_grad(n, &grads[0])
    }
}

/// A latent discriminator `D` (eq. (3)): fully-connected layers with a LeakyReLU after all
/// but the last, whose single output is the logit; the prior term is `-beta log D(z)`.
#[derive(Debug, Clone)]
pub struct FastDiscriminator {
    layers: Vec<Dense>,
    slope: f32,
    beta: f32,
}

/// `log sigmoid(l) = min(l, 0) - log(1 + exp(-|l|))`, finite for every finite `l`.
fn log_sigmoid(l: f32) -> f32 {
    l.min(0.0) - (-l.abs()).exp().ln_1p()
}

impl FastDiscriminator {
    /// # Errors
    /// No layers, layers that do not chain, or a last layer with more than one output.
    pub fn new(layers: Vec<Dense>, slope: f64, beta: f64) -> Result<Self> {
        if layers.last().map(|l| l.n_out) != Some(1) {
            bail!("FastDiscriminator: the last layer must have one output (the logit)");
        }
        for (i, pair) in layers.windows(2).enumerate() {
            if pair[0].n_out != pair[1].n_in {
                bail!(
                    "FastDiscriminator: layer {i} gives {} values, layer {} takes {}",
                    pair[0].n_out,
                    i + 1,
                    pair[1].n_in
                );
            }
        }
        Ok(Self {
            layers,
            slope: slope as f32,
            beta: beta as f32,
        })
    }

    /// Prior terms `-beta log D(z)`, `(n,)`, and `d(scale * sum prior)/dz`, `(n, d)`.
    fn value_and_grad(&self, n: usize, z: &[f32], scale: f32) -> Result<(Vec<f32>, Vec<f32>)> {
        // Pre-activations of every layer (the input of the next is their LeakyReLU).
        let mut pre = Vec::with_capacity(self.layers.len());
        let mut h = z.to_vec();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let y = layer.forward(n, &h)?;
            h = if i < last {
                y.iter()
                    .map(|&v| if v > 0.0 { v } else { v * self.slope })
                    .collect()
            } else {
                Vec::new()
            };
            pre.push(y);
        }
        let logits = &pre[last];
        let prior: Vec<f32> = logits
            .iter()
            .map(|&l| -self.beta * log_sigmoid(l))
            .collect();
        // d(-beta log sigmoid(l))/dl = -beta (1 - sigmoid(l)) = -beta sigmoid(-l).
        let mut g: Vec<f32> = logits
            .iter()
            .map(|&l| -self.beta / (1.0 + l.exp()) * scale)
            .collect();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            g = layer.input_grad(n, &g)?;
            if i > 0 {
                let below = &pre[i - 1];
                g.iter_mut()
                    .zip(below)
                    .for_each(|(g, y)| *g *= if *y > 0.0 { 1.0 } else { self.slope });
            }
        }
        Ok((prior, g))
    }
}

/// The prior term of a [`FastModel`].
#[derive(Debug, Clone)]
pub enum FastPrior {
    /// The Gaussian KL of eq. (2), computed by inference with its `kl_beta`.
    GaussianKl,
    /// `-beta log D_k(z)` with class `k`'s discriminator (one per class; E-ABS shares one).
    Discriminators(Vec<Arc<FastDiscriminator>>),
}

/// A [`crate::LatentClassModel`]'s decoders and prior term in the fast engine's form, for the
/// optimisation stage of inference. Built by the model
/// ([`crate::LatentClassModel::fast_model`]) from its evaluation-mode weights.
#[derive(Debug, Clone)]
pub struct FastModel {
    decoders: Vec<FastDecoder>,
    prior: FastPrior,
}

/// One class's objective on a batch: squared reconstruction errors `(n,)`, the discriminator's
/// prior terms `(n,)` if it has one, and the gradient of `scale * sum(errors + prior)` with
/// respect to the latents, `(n, d)`.
#[derive(Debug, Clone)]
pub struct ClassObjective {
    /// `||x_i - G_k(z_i)||^2`.
    pub errors: Vec<f32>,
    /// `-beta log D_k(z_i)`, `None` for [`FastPrior::GaussianKl`] (or without the prior).
    pub prior: Option<Vec<f32>>,
    /// The gradient with respect to `z`.
    pub grad: Vec<f32>,
}

impl FastModel {
    /// # Errors
    /// No decoders, decoders of different latent or output sizes, or a discriminator list not
    /// of one per decoder.
    pub fn new(decoders: Vec<FastDecoder>, prior: FastPrior) -> Result<Self> {
        let Some(first) = decoders.first() else {
            bail!("FastModel: no decoders");
        };
        let (d, p) = (first.latent_dim(), first.output_len());
        for (k, dec) in decoders.iter().enumerate() {
            if dec.latent_dim() != d || dec.output_len() != p {
                bail!(
                    "FastModel: decoder {k} maps {} to {} values, decoder 0 maps {d} to {p}",
                    dec.latent_dim(),
                    dec.output_len()
                );
            }
        }
        if let FastPrior::Discriminators(ds) = &prior {
            if ds.len() != decoders.len() {
                bail!(
                    "FastModel: {} discriminators for {} decoders",
                    ds.len(),
                    decoders.len()
                );
            }
            if let Some(bad) = ds.iter().position(|dis| dis.layers[0].n_in != d) {
                bail!(
                    "FastModel: discriminator {bad} takes {} values, the latent has {d}",
                    ds[bad].layers[0].n_in
                );
            }
        }
        Ok(Self { decoders, prior })
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.decoders.len()
    }

    /// Latent dimension.
    pub fn latent_dim(&self) -> usize {
        self.decoders[0].latent_dim()
    }

    /// Pixel values per image.
    pub fn n_pixels(&self) -> usize {
        self.decoders[0].output_len()
    }

    /// Whether the prior term comes from discriminators (else the Gaussian KL).
    pub fn has_discriminators(&self) -> bool {
        matches!(self.prior, FastPrior::Discriminators(_))
    }

    /// Multiply-adds of one decoder pass on one latent (the first decoder's; all have the
    /// same shapes).
    pub fn decoder_macs(&self) -> usize {
        self.decoders[0].macs()
    }

    /// Class `class`'s objective and its gradient at latents `z: (n, d)` for images `x: (n,
    /// P)`, with the discriminator's prior term when `use_prior`, computed in the activation
    /// and gradient buffers of `ws`, which later calls on the same batch size reuse
    /// (inference's 49 steps allocate them once; `&mut ClassWorkspace::default()` for one call).
    ///
    /// # Errors
    /// A class out of range or slices of the wrong length.
    pub fn class_objective(
        &self,
        class: usize,
        x: &[f32],
        z: &[f32],
        use_prior: bool,
        scale: f32,
        ws: &mut ClassWorkspace,
    ) -> Result<ClassObjective> {
        let Some(dec) = self.decoders.get(class) else {
            bail!(
                "FastModel: class {class} out of range ({} classes)",
                self.decoders.len()
            );
        };
        let (d, p) = (dec.latent_dim(), dec.output_len());
        let n = z.len() / d;
        if z.len() != n * d || x.len() != n * p {
            bail!(
                "FastModel::class_objective: {} latent and {} pixel values, expected n x {d} and n x {p}",
                z.len(),
                x.len()
            );
        }
        dec.forward(n, z, &mut ws.acts)?;
        ws.grads.resize_with(ws.acts.len(), Vec::new);
        let last = ws.acts.len() - 1;
        let (rec, g) = (&ws.acts[last], &mut ws.grads[last]);
        g.resize(n * p, 0.0);
        let mut errors = Vec::with_capacity(n);
        for ((xr, rr), gr) in x.chunks(p).zip(rec.chunks(p)).zip(g.chunks_mut(p)) {
            let mut e = 0.0f32;
            for ((xv, rv), gv) in xr.iter().zip(rr).zip(gr) {
                let diff = rv - xv;
                e += diff * diff;
                *gv = 2.0 * diff * scale;
            }
            errors.push(e);
        }
        let mut grad = dec.backward(n, &ws.acts, &mut ws.grads)?;
        let prior = match (&self.prior, use_prior) {
            (FastPrior::Discriminators(ds), true) => {
                let (prior, gp) = ds[class].value_and_grad(n, z, scale)?;
                grad.iter_mut().zip(&gp).for_each(|(a, b)| *a += *b);
                Some(prior)
            }
            _ => None,
        };
        Ok(ClassObjective {
            errors,
            prior,
            grad,
        })
    }

    /// One empty [`ClassWorkspace`] per class, for [`FastModel::objectives`].
    pub fn workspaces(&self) -> Vec<ClassWorkspace> {
        vec![ClassWorkspace::default(); self.n_classes()]
    }

    /// [`FastModel::class_objective`] for every class at once, in parallel over classes:
    /// `z: (n, K, d)` (inference's layout), results in class order; class `k` works in
    /// `ws[k]` (from [`FastModel::workspaces`], kept across the steps of a batch).
    ///
    /// # Errors
    /// As [`FastModel::class_objective`], or not one workspace per class.
    pub fn objectives(
        &self,
        x: &[f32],
        z: &[f32],
        use_prior: bool,
        scale: f32,
        ws: &mut [ClassWorkspace],
    ) -> Result<Vec<ClassObjective>> {
        let (k, d) = (self.n_classes(), self.latent_dim());
        let n = z.len() / (k * d);
        if z.len() != n * k * d {
            bail!(
                "FastModel::objectives: {} latent values, expected n x {k} x {d}",
                z.len()
            );
        }
        if ws.len() != k {
            bail!(
                "FastModel::objectives: {} workspaces for {k} classes",
                ws.len()
            );
        }
        ws.par_iter_mut()
            .enumerate()
            .map(|(class, w)| {
                let mut zk = std::mem::take(&mut w.zk);
                zk.clear();
                zk.extend((0..n).flat_map(|i| &z[(i * k + class) * d..(i * k + class + 1) * d]));
                let out = self.class_objective(class, x, &zk, use_prior, scale, w);
                w.zk = zk;
                out
            })
            .collect()
    }
}

/// The buffers of one class's objective: the decoder's activations and their gradients, and the
/// class's latents gathered from inference's `(n, K, d)` layout. Empty at first; sized by the
/// first call and reused by every later call with the same batch size.
#[derive(Debug, Clone, Default)]
pub struct ClassWorkspace {
    zk: Vec<f32>,
    acts: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}
