//! What inference needs of a trained ABS-style model: K class-conditional decoders `G_k`, the
//! prior term of each class, and optionally an encoder proposal `Q(Z|x)`.
//!
//! The trait is deliberately small so that ABS (VAEs, Schott et al. 2019), E-ABS (AAEs with a
//! shared encoder, Ju & Wagner 2020, Section 3) and every ablation of Section 4.4 fit it, and so
//! that toy models with closed-form optima can be written in tests.

use candle_core::{Device, Result, Tensor};

/// A K-class generative classifier in the ABS family, seen from inference.
///
/// Implementations run in evaluation mode (no dropout, BatchNorm with running statistics) and
/// keep their weights as plain tensors, not [`candle_core::Var`]s, so that the latent
/// optimisation's backward pass reaches the latents only.
///
/// # Shapes
/// `z`: `(n, latent_dim)`; images: `(n, c, h, w)` with `(c, h, w) = image_shape()`.
pub trait LatentClassModel {
    /// Number of classes K (one decoder per class).
    fn n_classes(&self) -> usize;

    /// Dimension d of the latent space `Z = R^d`.
    fn latent_dim(&self) -> usize;

    /// `(channels, height, width)` of the images the decoders produce.
    fn image_shape(&self) -> (usize, usize, usize);

    /// Decoder of class `class`: `G_k(z)`, `(n, d)` to `(n, c, h, w)`, values in the image range
    /// (the decoders of Table 9 end in a sigmoid). Must be differentiable in `z`.
    fn decode(&self, class: usize, z: &Tensor) -> Result<Tensor>;

    /// Prior term of class `class` per row of `z`, `(n,)`: `-beta log D_k(z)` for adversarial
    /// autoencoders (eq. (3), (6)), weight included. `None` means a VAE-style model whose
    /// Gaussian KL term (eq. (2)) inference computes itself with
    /// [`crate::InferenceConfig::kl_beta`]. Must be differentiable in `z`.
    fn prior_term(&self, class: usize, z: &Tensor) -> Result<Option<Tensor>>;

    /// Encoder proposal `Q(Z|x)` of class `class` as `(mean, log_variance)`, both `(n, d)`, or
    /// `None` when the model has no encoder usable at inference (ABS).
    fn encode(&self, class: usize, x: &Tensor) -> Result<Option<(Tensor, Tensor)>>;

    /// Whether `encode` gives the same proposal for every class (E-ABS's shared encoder,
    /// Section 3.2); inference then calls it once per batch instead of K times.
    fn shared_encoder(&self) -> bool {
        false
    }

    /// Device the model's tensors live on.
    fn device(&self) -> &Device;

    /// The decoders and prior term in the fast CPU engine's form ([`crate::fast`]): BatchNorm
    /// folded, plain f32 buffers, a hand-written backward to the latent. `None` (the default)
    /// keeps inference on the generic Candle path, which every model supports. A model that
    /// returns one promises that its `decode` and `prior_term` compute the same functions
    /// (the tests of `eabs-inference` check this for [`crate::FrozenAbsModel`]).
    fn fast_model(&self) -> Result<Option<crate::fast::FastModel>> {
        Ok(None)
    }

    /// Number of pixel values `c * h * w`, the normaliser of the reference implementation's
    /// losses.
    fn n_pixels(&self) -> usize {
        let (c, h, w) = self.image_shape();
        c * h * w
    }
}

impl<T: LatentClassModel + ?Sized> LatentClassModel for &T {
    fn n_classes(&self) -> usize {
        (**self).n_classes()
    }
    fn latent_dim(&self) -> usize {
        (**self).latent_dim()
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (**self).image_shape()
    }
    fn decode(&self, class: usize, z: &Tensor) -> Result<Tensor> {
        (**self).decode(class, z)
    }
    fn prior_term(&self, class: usize, z: &Tensor) -> Result<Option<Tensor>> {
        (**self).prior_term(class, z)
    }
    fn encode(&self, class: usize, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        (**self).encode(class, x)
    }
    fn shared_encoder(&self) -> bool {
        (**self).shared_encoder()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn fast_model(&self) -> Result<Option<crate::fast::FastModel>> {
        (**self).fast_model()
    }
}
