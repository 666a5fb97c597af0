//! The three building blocks of Section 4.3 / Table 9: [`Encoder`], [`Decoder`],
//! [`Discriminator`]. Every `forward` takes `train: bool` (dropout on, BatchNorm with batch
//! statistics) so that the inference crate can run them in evaluation mode.

use candle_core::{Result, Tensor};

use crate::config::ArchConfig;
use crate::layers::{relu, sigmoid, BatchNorm2d, Conv2d, ConvTranspose2d, DropoutRng, Linear};
use crate::params::ParamStore;

fn check_images(xs: &Tensor, shape: (usize, usize, usize), who: &str) -> Result<usize> {
    let dims = xs.dims();
    if dims.len() != 4 || (dims[1], dims[2], dims[3]) != shape {
        candle_core::bail!("{who}: input of shape {dims:?} does not fit the architecture, expected (batch, {}, {}, {})", shape.0, shape.1, shape.2);
    }
    Ok(dims[0])
}

/// Convolutional encoder: 4 x (conv, BatchNorm, LeakyReLU), dropout, then two parallel linear
/// heads giving the mean and the log-variance of `Q(Z|x) = N(mean, diag(exp(logvar)))`.
///
/// Our decision: the variance is parameterised by its logarithm (unconstrained, the VAE
/// convention of Kingma & Welling), so `sigma = exp(logvar / 2)`.
///
/// # Shapes
/// `(b, c, h, w) -> ((b, latent), (b, latent))`.
#[derive(Debug, Clone)]
pub struct Encoder {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    /// Mean head.
    pub mean: Linear,
    /// Log-variance head (absent in the CNN, which uses the mean head only).
    pub logvar: Option<Linear>,
    image_shape: (usize, usize, usize),
    dropout: f64,
    slope: f64,
    rng: DropoutRng,
}

impl Encoder {
    /// Builds an encoder with tensors `prefix.conv{i}.weight`, `prefix.bn{i}.*`,
    /// `prefix.mean.*` and (if `with_logvar`) `prefix.logvar.*`.
    pub fn new(
        cfg: &ArchConfig,
        store: &mut ParamStore,
        prefix: &str,
        with_logvar: bool,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        let mut c_in = cfg.image_shape.0;
        for (i, s) in cfg.encoder.iter().enumerate() {
            convs.push(Conv2d::new(
                store,
                &format!("{prefix}.conv{i}"),
                c_in,
                s.channels,
                s.kernel,
                s.stride,
                s.padding,
            )?);
            bns.push(BatchNorm2d::new(
                store,
                &format!("{prefix}.bn{i}"),
                s.channels,
                cfg.bn_momentum,
                cfg.bn_eps,
            )?);
            c_in = s.channels;
        }
        let n_feat = cfg.encoder_features();
        let mean = Linear::new(store, &format!("{prefix}.mean"), n_feat, cfg.latent_dim)?;
        let logvar = if with_logvar {
            Some(Linear::new(
                store,
                &format!("{prefix}.logvar"),
                n_feat,
                cfg.latent_dim,
            )?)
        } else {
            None
        };
        Ok(Self {
            convs,
            bns,
            mean,
            logvar,
            image_shape: cfg.image_shape,
            dropout: cfg.dropout,
            slope: cfg.leaky_slope,
            rng: rng.clone(),
        })
    }

    /// The convolutional body: flattened features after dropout, `(b, features)`.
    pub fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let b = check_images(xs, self.image_shape, "encoder")?;
        let mut h = xs.clone();
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            h = eabs_kernels::leaky_relu(&bn.forward(&conv.forward(&h)?, train)?, self.slope)?;
        }
        let h = h.reshape((b, ()))?;
        self.rng.dropout(&h, self.dropout, train)
    }

    /// Mean and log-variance of `Q(Z|x)`. Errors if the encoder has no variance head (CNN).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let h = self.features(xs, train)?;
        let Some(logvar) = &self.logvar else {
            candle_core::bail!("this encoder has no log-variance head (it belongs to a CNN)");
        };
        Ok((self.mean.forward(&h)?, logvar.forward(&h)?))
    }

    /// The mean of `Q(Z|x)` only (the encoder's proposal), `(b, latent)`.
    pub fn forward_mean(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.mean.forward(&self.features(xs, train)?)
    }

    /// A copy with detached parameters for evaluation.
    pub fn frozen(&self) -> Self {
        Self {
            convs: self.convs.iter().map(Conv2d::frozen).collect(),
            bns: self.bns.iter().map(BatchNorm2d::frozen).collect(),
            mean: self.mean.frozen(),
            logvar: self.logvar.as_ref().map(Linear::frozen),
            ..self.clone()
        }
    }
}

/// Decoder `G_k`: linear layer to the first transposed conv's depth, dropout, reshape to
/// `(depth, 1, 1)`, transposed convs with BatchNorm + ReLU, the last with sigmoid.
///
/// Our decision: no activation between the linear layer and the first transposed conv (the paper
/// names none; that conv's BatchNorm + ReLU follows).
///
/// # Shapes
/// `(b, latent) -> (b, c, h, w)`, values in (0, 1).
#[derive(Debug, Clone)]
pub struct Decoder {
    fc: Linear,
    convts: Vec<ConvTranspose2d>,
    bns: Vec<BatchNorm2d>,
    depth: usize,
    latent_dim: usize,
    dropout: f64,
    rng: DropoutRng,
}

impl Decoder {
    /// Builds a decoder with tensors `prefix.fc.*`, `prefix.convt{i}.weight`, `prefix.bn{i}.*`
    /// and `prefix.convt{last}.bias`.
    pub fn new(
        cfg: &ArchConfig,
        store: &mut ParamStore,
        prefix: &str,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let depth = cfg.decoder.first().map_or(0, |s| s.channels);
        let fc = Linear::new(store, &format!("{prefix}.fc"), cfg.latent_dim, depth)?;
        let mut convts = Vec::new();
        let mut bns = Vec::new();
        let mut c_in = depth;
        let n = cfg.decoder.len();
        for (i, s) in cfg.decoder.iter().enumerate() {
            let last = i + 1 == n;
            convts.push(ConvTranspose2d::new(
                store,
                &format!("{prefix}.convt{i}"),
                c_in,
                s.channels,
                s.kernel,
                s.stride,
                s.padding,
                last,
            )?);
            if !last {
                bns.push(BatchNorm2d::new(
                    store,
                    &format!("{prefix}.bn{i}"),
                    s.channels,
                    cfg.bn_momentum,
                    cfg.bn_eps,
                )?);
            }
            c_in = s.channels;
        }
        Ok(Self {
            fc,
            convts,
            bns,
            depth,
            latent_dim: cfg.latent_dim,
            dropout: cfg.dropout,
            rng: rng.clone(),
        })
    }

    /// The layers, for code that evaluates the decoder without Candle's graph (the fast
    /// inference of `eabs-inference` folds each BatchNorm into the transposed convolution
    /// before it): the fully-connected layer (no activation after it; dropout, identity in
    /// evaluation mode), the transposed convolutions, and the BatchNorms after all but the last
    /// (each followed by a ReLU; the last convolution has a bias and a sigmoid).
    pub fn layers(&self) -> (&Linear, &[ConvTranspose2d], &[BatchNorm2d]) {
        (&self.fc, &self.convts, &self.bns)
    }

    /// `G(z)`: reconstructions in (0, 1).
    pub fn forward(&self, zs: &Tensor, train: bool) -> Result<Tensor> {
        let sig = self.forward_logits(zs, train)?;
        sigmoid(&sig)
    }

    /// The last layer's pre-sigmoid output.
    pub fn forward_logits(&self, zs: &Tensor, train: bool) -> Result<Tensor> {
        let (b, m) = zs.dims2()?;
        if m != self.latent_dim {
            candle_core::bail!(
                "decoder: latent of shape {:?}, expected (batch, {})",
                zs.dims(),
                self.latent_dim
            );
        }
        let h = self
            .rng
            .dropout(&self.fc.forward(zs)?, self.dropout, train)?;
        let mut h = h.reshape((b, self.depth, 1, 1))?;
        let n = self.convts.len();
        for (i, convt) in self.convts.iter().enumerate() {
            h = convt.forward(&h)?;
            if i + 1 < n {
                h = relu(&self.bns[i].forward(&h, train)?)?;
            }
        }
        Ok(h)
    }

    /// Evaluation-mode forward in chunks of `chunk` latents (keeps activations in cache for
    /// large batches such as the 8000 latents of ABS inference; perf-baseline.md).
    pub fn forward_chunked(&self, zs: &Tensor, chunk: usize) -> Result<Tensor> {
        let b = zs.dim(0)?;
        let chunk = chunk.max(1);
        if b <= chunk {
            return self.forward(zs, false);
        }
        let mut outs = Vec::with_capacity(b.div_ceil(chunk));
        let mut start = 0;
        while start < b {
            let len = chunk.min(b - start);
            outs.push(self.forward(&zs.narrow(0, start, len)?, false)?);
            start += len;
        }
        Tensor::cat(&outs, 0)
    }

    /// Latent size.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// A copy with detached parameters for evaluation.
    pub fn frozen(&self) -> Self {
        Self {
            fc: self.fc.frozen(),
            convts: self.convts.iter().map(ConvTranspose2d::frozen).collect(),
            bns: self.bns.iter().map(BatchNorm2d::frozen).collect(),
            ..self.clone()
        }
    }
}

/// Latent discriminator `D(z)`: two hidden layers with LeakyReLU, one output logit;
/// `D(z) = sigmoid(logit)` is the probability that `z` was drawn from the prior (Section 3.1).
///
/// Our decision: LeakyReLU (slope [`ArchConfig::leaky_slope`]) as the hidden activation, the
/// usual choice for AAE / GAN discriminators; no dropout or normalisation.
///
/// # Shapes
/// `(b, latent) -> (b,)`.
#[derive(Debug, Clone)]
pub struct Discriminator {
    layers: Vec<Linear>,
    slope: f64,
}

impl Discriminator {
    /// Builds a discriminator with tensors `prefix.fc{i}.*`.
    pub fn new(cfg: &ArchConfig, store: &mut ParamStore, prefix: &str) -> Result<Self> {
        let mut layers = Vec::new();
        let mut n_in = cfg.latent_dim;
        for (i, &h) in cfg.discriminator_hidden.iter().enumerate() {
            layers.push(Linear::new(store, &format!("{prefix}.fc{i}"), n_in, h)?);
            n_in = h;
        }
        layers.push(Linear::new(
            store,
            &format!("{prefix}.fc{}", cfg.discriminator_hidden.len()),
            n_in,
            1,
        )?);
        Ok(Self {
            layers,
            slope: cfg.leaky_slope,
        })
    }

    /// The fully-connected layers (a LeakyReLU of slope `leaky_slope` after all but the last,
    /// whose one output is the logit) and that slope.
    pub fn layers(&self) -> (&[Linear], f64) {
        (&self.layers, self.slope)
    }

    /// The pre-sigmoid logit, `(b,)`. Use [`crate::layers::log_sigmoid`] on it (and on its
    /// negation) for `log D` and `log(1 - D)`.
    pub fn logit(&self, zs: &Tensor) -> Result<Tensor> {
        let n = self.layers.len();
        let mut h = zs.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < n {
                h = eabs_kernels::leaky_relu(&h, self.slope)?;
            }
        }
        h.squeeze(1)
    }

    /// `D(z)` in (0, 1), `(b,)`. The `train` flag is accepted for uniformity (the discriminator
    /// has no dropout or BatchNorm).
    pub fn forward(&self, zs: &Tensor, _train: bool) -> Result<Tensor> {
        sigmoid(&self.logit(zs)?)
    }

    /// `log D(z)`, computed stably from the logit, `(b,)`.
    pub fn log_d(&self, zs: &Tensor) -> Result<Tensor> {
        crate::layers::log_sigmoid(&self.logit(zs)?)
    }

    /// A copy with detached parameters for evaluation.
    pub fn frozen(&self) -> Self {
        Self {
            layers: self.layers.iter().map(Linear::frozen).collect(),
            slope: self.slope,
        }
    }
}
