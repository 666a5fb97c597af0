//! Architectures of Table 9 (Appendix C) and the model kinds of Sections 4.3 / 4.4.
//!
//! One [`ArchConfig`] per dataset family ([`DatasetKind`]), with the layer tables transcribed from
//! Table 9, plus the choices the paper leaves open, each marked "our decision" with its reason.
//! [`ModelKind`] names the trained model: a CNN, an adversarially trained CNN, or one of the
//! ABS-family variants (ABS, A-ABS, D-ABS, AD-ABS = E-ABS) as two flags ([`Variant`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The dataset selects the Table 9 architecture, the latent size and the augmentation noise:
/// the workspace's one dataset enum, [`eabs_datasets::DatasetKind`].
pub use eabs_datasets::DatasetKind;

/// One convolution (or transposed convolution) row of Table 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Output channels.
    pub channels: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

const fn conv(channels: usize, kernel: usize, stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        channels,
        kernel,
        stride,
        padding,
    }
}

/// A full architecture: encoder, decoder, discriminator and the choices the paper leaves open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchConfig {
    /// Input image shape `(channels, height, width)`.
    pub image_shape: (usize, usize, usize),
    /// Number of classes `K`.
    pub n_classes: usize,
    /// Latent size `M` (Table 9: 10, 10, 16, 40).
    pub latent_dim: usize,
    /// Encoder convolutions, each followed by BatchNorm + LeakyReLU (Section 4.3).
    pub encoder: Vec<ConvSpec>,
    /// Decoder transposed convolutions; all but the last use BatchNorm + ReLU, the last sigmoid.
    /// The decoder's fully-connected layer outputs `decoder[0].channels` values, reshaped to
    /// `(decoder[0].channels, 1, 1)`: the input depth of the first transposed convolution.
    pub decoder: Vec<ConvSpec>,
    /// Hidden sizes of the latent discriminator (Table 9: 256/128, or 512/256 for SVHN).
    pub discriminator_hidden: Vec<usize>,
    /// Dropout rate after the encoder's last conv and after the decoder's fully-connected layer.
    /// Our decision: 0.2. The paper gives no rate; 0.2 regularises without starving the decoder's
    /// 32- or 64-unit bottleneck, which 0.5 would.
    pub dropout: f64,
    /// LeakyReLU slope in the encoder and discriminator. Our decision: 0.2, the usual value for
    /// GAN-style discriminators and their encoders (Radford et al. 2016); the paper gives none.
    pub leaky_slope: f64,
    /// BatchNorm momentum for the running statistics. Our decision: 0.1, PyTorch's default.
    pub bn_momentum: f64,
    /// BatchNorm epsilon. Our decision: 1e-5, PyTorch's default.
    pub bn_eps: f64,
}

impl ArchConfig {
    /// MNIST / Fashion-MNIST block of Table 9. Spatial sizes: encoder 28 -> 14 -> 7 -> 4 -> 3
    /// (64 x 3 x 3 = 576 features); decoder 1 -> 4 -> 11 -> 25 -> 28 -> 28.
    pub fn mnist() -> Self {
        Self {
            image_shape: (1, 28, 28),
            n_classes: 10,
            latent_dim: 10,
            encoder: vec![
                conv(16, 5, 2, 2),
                conv(32, 5, 2, 2),
                conv(64, 5, 2, 2),
                conv(64, 4, 1, 1),
            ],
            decoder: vec![
                conv(32, 4, 1, 0),
                conv(32, 5, 2, 0),
                conv(16, 5, 2, 0),
                conv(8, 4, 1, 0),
                // Table 9 leaves the last padding cell empty; 0 is the only value giving 28.
                conv(1, 1, 1, 0),
            ],
            discriminator_hidden: vec![256, 128],
            ..Self::shared_choices()
        }
    }

    /// SuperTraffic-10 block of Table 9. Encoder 32 -> 16 -> 8 -> 4 -> 1 (128 features);
    /// decoder 1 -> 4 -> 8 -> 16 -> 32 -> 32.
    pub fn super_traffic10() -> Self {
        Self {
            image_shape: (3, 32, 32),
            n_classes: 10,
            latent_dim: 16,
            encoder: vec![
                conv(16, 5, 2, 2),
                conv(32, 5, 2, 2),
                conv(64, 5, 2, 2),
                conv(128, 4, 1, 0),
            ],
            decoder: vec![
                conv(64, 4, 1, 0),
                conv(64, 4, 2, 1),
                conv(32, 4, 2, 1),
                conv(16, 4, 2, 1),
                conv(3, 1, 1, 0),
            ],
            discriminator_hidden: vec![256, 128],
            ..Self::shared_choices()
        }
    }

    /// SVHN block of Table 9. Encoder 32 -> 16 -> 8 -> 4 -> 1 (128 features); decoder
    /// 1 -> 4 -> 8 -> 16 -> 32 -> 32. Table 9's SVHN block lacks its last decoder row (the text
    /// is cut off); we use SuperTraffic-10's `3, 1, 1, 0`, the only 1x1 layer giving 3 x 32 x 32.
    pub fn svhn() -> Self {
        Self {
            image_shape: (3, 32, 32),
            n_classes: 10,
            latent_dim: 40,
            encoder: vec![
                conv(32, 5, 2, 2),
                conv(64, 5, 2, 2),
                conv(128, 5, 2, 2),
                conv(128, 4, 1, 0),
            ],
            decoder: vec![
                conv(64, 4, 1, 0),
                conv(64, 4, 2, 1),
                conv(32, 4, 2, 1),
                conv(16, 4, 2, 1),
                conv(3, 1, 1, 0),
            ],
            discriminator_hidden: vec![512, 256],
            ..Self::shared_choices()
        }
    }

    /// The Table 9 architecture of a dataset family.
    pub fn for_family(family: DatasetKind) -> Self {
        match family {
            DatasetKind::Mnist | DatasetKind::FashionMnist => Self::mnist(),
            DatasetKind::SuperTraffic10 => Self::super_traffic10(),
            DatasetKind::Svhn => Self::svhn(),
        }
    }

    fn shared_choices() -> Self {
        Self {
            image_shape: (0, 0, 0),
            n_classes: 0,
            latent_dim: 0,
            encoder: Vec::new(),
            decoder: Vec::new(),
            discriminator_hidden: Vec::new(),
            dropout: 0.2,
            leaky_slope: 0.2,
            bn_momentum: 0.1,
            bn_eps: 1e-5,
        }
    }

    /// Spatial side after each encoder conv, starting with the input side.
    pub fn encoder_sides(&self) -> Vec<usize> {
        let mut sides = vec![self.image_shape.1];
        for c in &self.encoder {
            let s = *sides.last().unwrap_or(&0);
            sides.push((s + 2 * c.padding).saturating_sub(c.kernel) / c.stride.max(1) + 1);
        }
        sides
    }

    /// Number of features the encoder's conv body produces (channels x side x side).
    pub fn encoder_features(&self) -> usize {
        let side = *self.encoder_sides().last().unwrap_or(&0);
        self.encoder.last().map_or(0, |c| c.channels) * side * side
    }

    /// Spatial side after each decoder layer, starting with 1 (the reshaped FC output).
    pub fn decoder_sides(&self) -> Vec<usize> {
        let mut sides = vec![1usize];
        for c in &self.decoder {
            let s = *sides.last().unwrap_or(&0);
            sides.push(((s - 1) * c.stride + c.kernel).saturating_sub(2 * c.padding));
        }
        sides
    }

    /// FLOPs (2 x multiply-adds) of one encoder pass on one image, conv layers and both heads.
    pub fn encoder_flops(&self) -> f64 {
        let sides = self.encoder_sides();
        let mut c_in = self.image_shape.0;
        let mut macs = 0usize;
        for (i, c) in self.encoder.iter().enumerate() {
            macs += c.channels * c_in * c.kernel * c.kernel * sides[i + 1] * sides[i + 1];
            c_in = c.channels;
        }
        macs += 2 * self.encoder_features() * self.latent_dim;
        2.0 * macs as f64
    }

    /// FLOPs (2 x multiply-adds) of one decoder pass on one latent: FC layer and every
    /// transposed conv (each input pixel scatters `c_out x k x k` products).
    pub fn decoder_flops(&self) -> f64 {
        let sides = self.decoder_sides();
        let first = self.decoder.first().map_or(0, |c| c.channels);
        let mut macs = self.latent_dim * first;
        let mut c_in = first;
        for (i, c) in self.decoder.iter().enumerate() {
            macs += c_in * c.channels * c.kernel * c.kernel * sides[i] * sides[i];
            c_in = c.channels;
        }
        2.0 * macs as f64
    }

    /// Checks that the layer tables are consistent: the encoder reaches a non-empty feature map,
    /// the decoder ends at the image shape, rates are in range.
    pub fn validate(&self) -> Result<()> {
        let (c, h, w) = self.image_shape;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if c == 0 || h == 0 || h != w {
            return bad(format!(
                "image shape {:?}: need square images with channels > 0",
                self.image_shape
            ));
        }
        if self.n_classes < 2 || self.latent_dim == 0 {
            return bad(format!(
                "n_classes = {}, latent_dim = {}: need >= 2 classes and a latent",
                self.n_classes, self.latent_dim
            ));
        }
        if self.encoder.is_empty() || self.decoder.is_empty() {
            return bad("encoder and decoder need at least one layer".into());
        }
        for (i, s) in self.encoder.iter().chain(&self.decoder).enumerate() {
            if s.channels == 0 || s.kernel == 0 || s.stride == 0 {
                return bad(format!(
                    "layer {i}: channels, kernel and stride must be positive"
                ));
            }
        }
        let mut side = h;
        for (i, s) in self.encoder.iter().enumerate() {
            if side + 2 * s.padding < s.kernel {
                return bad(format!(
                    "encoder layer {i}: kernel {} larger than padded input {}",
                    s.kernel,
                    side + 2 * s.padding
                ));
            }
            side = (side + 2 * s.padding - s.kernel) / s.stride + 1;
        }
        let mut side = 1usize;
        for (i, s) in self.decoder.iter().enumerate() {
            let full = (side - 1) * s.stride + s.kernel;
            if full <= 2 * s.padding {
                return bad(format!(
                    "decoder layer {i}: padding {} removes the whole output",
                    s.padding
                ));
            }
            side = full - 2 * s.padding;
        }
        let last = self.decoder.last().map_or(0, |s| s.channels);
        if (last, side, side) != (c, h, w) {
            return bad(format!(
                "decoder ends at {:?}, image shape is {:?}",
                (last, side, side),
                self.image_shape
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} outside [0, 1)", self.dropout));
        }
        if !(0.0..=1.0).contains(&self.leaky_slope)
            || !(0.0..=1.0).contains(&self.bn_momentum)
            || self.bn_eps <= 0.0
        {
            return bad("leaky_slope and bn_momentum must lie in [0, 1], bn_eps > 0".into());
        }
        if self.discriminator_hidden.contains(&0) {
            return bad("discriminator hidden sizes must be positive".into());
        }
        Ok(())
    }
}

/// The three ABS extensions of Section 4.4 that change training (V is inference-only).
///
/// ABS = {}, A-ABS = {A}, D-ABS = {D}, AD-ABS = {A, D} (E-ABS's training).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Variant {
    /// A: adversarial autoencoders (latent discriminator, `-beta log D(z)`) instead of VAEs
    /// (`beta KL(Q(Z|x) || N(0, I))`).
    pub adversarial: bool,
    /// D: one shared encoder and the discriminative loss of eq. (4), weighted by gamma.
    pub discriminative: bool,
}

impl Variant {
    /// Schott et al.'s ABS: K class-specific VAEs.
    pub const ABS: Variant = Variant {
        adversarial: false,
        discriminative: false,
    };
    /// A-ABS: K class-specific AAEs, one discriminator each.
    pub const A_ABS: Variant = Variant {
        adversarial: true,
        discriminative: false,
    };
    /// D-ABS: shared VAE encoder, K decoders, discriminative loss.
    pub const D_ABS: Variant = Variant {
        adversarial: false,
        discriminative: true,
    };
    /// AD-ABS = E-ABS's training: shared encoder, K decoders, one discriminator, eq. (5).
    pub const E_ABS: Variant = Variant {
        adversarial: true,
        discriminative: true,
    };

    /// Whether one encoder is shared by all classes (exactly when D is on, Section 3.2).
    pub fn shared_encoder(self) -> bool {
        self.discriminative
    }

    /// Number of latent discriminators: 0 (VAE), 1 (shared encoder), K (class-specific AAEs).
    pub fn n_discriminators(self, n_classes: usize) -> usize {
        match (self.adversarial, self.discriminative) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => n_classes,
        }
    }

    /// The paper's name: "ABS", "A-ABS", "D-ABS" or "E-ABS".
    pub fn name(self) -> &'static str {
        match (self.adversarial, self.discriminative) {
            (false, false) => "ABS",
            (true, false) => "A-ABS",
            (false, true) => "D-ABS",
            (true, true) => "E-ABS",
        }
    }
}

/// Perturbation norm of adversarial training (Madry et al.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdvNorm {
    /// Adv-L_inf.
    Linf,
    /// Adv-L_2.
    L2,
}

/// Which model is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelKind {
    /// The CNN baseline: encoder + linear classifier, cross-entropy.
    Cnn,
    /// An adversarially trained CNN (same architecture, retrained from the CNN with PGD).
    AdvCnn(AdvNorm),
    /// An ABS-family model.
    Abs(Variant),
}

impl ModelKind {
    /// E-ABS.
    pub const E_ABS: ModelKind = ModelKind::Abs(Variant::E_ABS);
    /// ABS.
    pub const ABS: ModelKind = ModelKind::Abs(Variant::ABS);

    /// Display name: "CNN", "Adv-Linf", "Adv-L2", or the variant's name.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "CNN",
            ModelKind::AdvCnn(AdvNorm::Linf) => "Adv-Linf",
            ModelKind::AdvCnn(AdvNorm::L2) => "Adv-L2",
            ModelKind::Abs(v) => v.name(),
        }
    }
}

/// Everything needed to rebuild a model: stored as JSON in every checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Dataset family.
    pub family: DatasetKind,
    /// Which model.
    pub kind: ModelKind,
    /// Layer tables and open choices.
    pub arch: ArchConfig,
    /// Weight of the prior term (KL or `-log D`); the paper uses 1.
    pub beta: f64,
    /// Weight of the discriminative loss (eq. 5); the paper uses 10.
    pub gamma: f64,
}

impl ModelConfig {
    /// The paper's configuration: Table 9 architecture, beta = 1, gamma = 10 (Section 3.2).
    pub fn paper(family: impl Into<DatasetKind>, kind: ModelKind) -> Self {
        let family = family.into();
        Self {
            family,
            kind,
            arch: ArchConfig::for_family(family),
            beta: 1.0,
            gamma: 10.0,
        }
    }

    /// Validates the architecture and the loss weights.
    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        if !(self.beta.is_finite()
            && self.beta >= 0.0
            && self.gamma.is_finite()
            && self.gamma >= 0.0)
        {
            return Err(Error::InvalidConfig(format!(
                "beta = {}, gamma = {}: need finite, >= 0",
                self.beta, self.gamma
            )));
        }
        Ok(())
    }

    /// JSON form (the checkpoint metadata value).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spatial_sizes_match_table_9() {
        let m = ArchConfig::mnist();
        assert_eq!(m.decoder_sides(), vec![1, 4, 11, 25, 28, 28]);
        assert_eq!(m.encoder_sides(), vec![28, 14, 7, 4, 3]);
        assert_eq!(m.encoder_features(), 576);
        for a in [ArchConfig::super_traffic10(), ArchConfig::svhn()] {
            assert_eq!(a.decoder_sides(), vec![1, 4, 8, 16, 32, 32]);
            assert_eq!(a.encoder_sides(), vec![32, 16, 8, 4, 1]);
            assert_eq!(a.encoder_features(), 128);
        }
        for f in DatasetKind::ALL {
            ArchConfig::for_family(f).validate().unwrap();
        }
    }

    #[test]
    fn flops_match_the_baseline_measurements() {
        // perf-baseline.md: 6.52 MFLOP per decoder pass, 4.25 per encoder pass (MNIST).
        let m = ArchConfig::mnist();
        assert!(
            (m.decoder_flops() / 1e6 - 6.52).abs() < 0.01,
            "{}",
            m.decoder_flops()
        );
        assert!(
            (m.encoder_flops() / 1e6 - 4.25).abs() < 0.01,
            "{}",
            m.encoder_flops()
        );
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mut a = ArchConfig::mnist();
        a.decoder[4].padding = 1;
        assert!(a.validate().is_err());
        let mut a = ArchConfig::svhn();
        a.dropout = 1.0;
        assert!(a.validate().is_err());
    }

    #[test]
    fn variants_have_the_right_structure() {
        assert_eq!(Variant::ABS.n_discriminators(10), 0);
        assert_eq!(Variant::A_ABS.n_discriminators(10), 10);
        assert_eq!(Variant::E_ABS.n_discriminators(10), 1);
        assert!(Variant::D_ABS.shared_encoder() && !Variant::A_ABS.shared_encoder());
        let c = ModelConfig::paper(DatasetKind::Svhn, ModelKind::E_ABS);
        let back: ModelConfig = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back, c);
        for k in eabs_datasets::DatasetKind::ALL {
            let f = k;
            assert_eq!(f.noise_std(), k.noise_std());
            assert_eq!(ArchConfig::for_family(f).image_shape, k.image_shape());
        }
    }
}
