//! [`LatentClassModel`] for the trained models of `eabs-models`: ABS, A-ABS, D-ABS and E-ABS
//! ([`eabs_models::AbsModel`], Section 4.4). The V of the V ablations is an inference choice:
//! pick [`LatentInference::Variational`] (E-ABS, V-ABS, AV-ABS, DV-ABS) or
//! [`LatentInference::Exact`] (ABS, A-ABS, D-ABS, AD-ABS) in the config.

use candle_core::{Device, Result, Tensor};
use eabs_models::{AbsModel, ModelConfig};

use std::sync::Arc;

use crate::config::{InferenceConfig, LatentInference};
use crate::fast::{
    Activation, BatchNormParams, Dense, FastConvLayer, FastDecoder, FastDiscriminator, FastModel,
    FastPrior,
};
use crate::model::LatentClassModel;

/// An [`AbsModel`] frozen for inference: detached weights (so the latent optimisation's backward
/// reaches the latents only), evaluation mode (BatchNorm running statistics, no dropout).
#[derive(Debug, Clone)]
pub struct FrozenAbsModel {
    model: AbsModel,
    device: Device,
}

impl FrozenAbsModel {
    /// Freezes a copy of `model` (weights share storage with the original).
    pub fn new(model: &AbsModel) -> Self {
        let device = model.store().device().clone();
        Self {
            model: model.frozen(),
            device,
        }
    }

    /// The frozen model.
    pub fn model(&self) -> &AbsModel {
        &self.model
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The paper's inference settings for this model in `mode`, with the KL weight of VAE
    /// variants set to the model's training beta (the reference uses one beta for both).
    /// The encoder proposal (Section 3.3) is used for every variant but ABS, which follows the
    /// reference (no encoder at inference); this choice for the ablations is ours, the paper
    /// does not state it. Override `use_encoder` to change it.
    pub fn inference_config(&self, mode: LatentInference) -> InferenceConfig {
        let base = match mode {
            LatentInference::Variational => InferenceConfig::e_abs(),
            LatentInference::Exact => InferenceConfig::exact_ablation(),
        };
        let variant = self.model.variant();
        InferenceConfig {
            kl_beta: self.model.config().beta,
            use_encoder: variant.adversarial || variant.discriminative,
            ..base
        }
    }

    fn check_class(&self, class: usize) -> Result<()> {
        let k = self.model.n_classes();
        if class >= k {
            candle_core::bail!("class {class} out of range: the model has {k} classes");
        }
        Ok(())
    }
}

impl LatentClassModel for FrozenAbsModel {
    fn n_classes(&self) -> usize {
        self.model.n_classes()
    }

    fn latent_dim(&self) -> usize {
        self.model.config().arch.latent_dim
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        self.model.config().arch.image_shape
    }

    fn decode(&self, class: usize, z: &Tensor) -> Result<Tensor> {
        self.check_class(class)?;
        self.model.decoders()[class].forward(z, false)
    }

    /// `-beta log D_k(z)` with the model's training beta (eq. (3)); `None` for VAE variants.
    fn prior_term(&self, class: usize, z: &Tensor) -> Result<Option<Tensor>> {
        self.check_class(class)?;
        match self.model.discriminator_for(class) {
            Some(d) => Ok(Some((d.log_d(z)?.neg()? * self.model.config().beta)?)),
            None => Ok(None),
        }
    }

    fn encode(&self, class: usize, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        self.check_class(class)?;
        Ok(Some(self.model.encoder_for(class).forward(x, false)?))
    }

    fn shared_encoder(&self) -> bool {
        self.model.encoders().len() == 1
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Every decoder with its BatchNorms folded (running statistics: evaluation mode) and the
    /// discriminators' layers, for the fast engine.
    fn fast_model(&self) -> Result<Option<FastModel>> {
        let arch = &self.model.config().arch;
        let decoders = self
            .model
            .decoders()
            .iter()
            .map(|dec| {
                let (fc, convts, bns) = dec.layers();
                let fc = Dense::from_tensors(&fc.weight, &fc.bias)?;
                let mut shape = (arch.decoder.first().map_or(0, |s| s.channels), 1, 1);
                let mut layers = Vec::with_capacity(convts.len());
                for (i, ct) in convts.iter().enumerate() {
                    let running = bns.get(i).map(|bn| {
                        let (mean, var) = (&bn.running_mean, &bn.running_var);
                        (bn, mean.as_tensor().detach(), var.as_tensor().detach())
                    });
                    let params = running.as_ref().map(|(bn, mean, var)| BatchNormParams {
                        gamma: &bn.weight,
                        beta: &bn.bias,
                        mean,
                        var,
                        eps: bn.eps,
                    });
                    let activation = if i + 1 == convts.len() {
                        Activation::Sigmoid
                    } else {
                        Activation::Relu
                    };
                    let layer = FastConvLayer::new(
                        shape,
                        &ct.weight,
                        ct.bias.as_ref(),
                        (ct.stride, ct.padding),
                        params,
                        activation,
                    )?;
                    shape = layer.output_shape();
                    layers.push(layer);
                }
                FastDecoder::new(fc, layers)
            })
            .collect::<Result<Vec<_>>>()?;
        let beta = self.model.config().beta;
        let k = self.model.n_classes();
        let prior = if self.model.discriminator_for(0).is_some() {
            let mut built: Vec<Arc<FastDiscriminator>> = Vec::with_capacity(k);
            let shared = self.model.discriminators().len() == 1;
            for class in 0..k {
                if shared && class > 0 {
                    built.push(built[0].clone());
                    continue;
                }
                let Some(dis) = self.model.discriminator_for(class) else {
                    candle_core::bail!(
                        "fast_model: class {class} has no discriminator, class 0 has one"
                    );
                };
                let (dense, slope) = dis.layers();
                let dense = dense
                    .iter()
                    .map(|l| Dense::from_tensors(&l.weight, &l.bias))
                    .collect::<Result<Vec<_>>>()?;
                built.push(Arc::new(FastDiscriminator::new(dense, slope, beta)?));
            }
            FastPrior::Discriminators(built)
        } else {
            FastPrior::GaussianKl
        };
        Ok(Some(FastModel::new(decoders, prior)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AbsInference;
    use eabs_core::host::HostRead;
    use eabs_models::{DatasetKind, ModelKind, Variant};

    #[test]
    fn every_variant_runs_inference_with_the_right_shapes() {
        for variant in [Variant::ABS, Variant::A_ABS, Variant::D_ABS, Variant::E_ABS] {
            let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::Abs(variant));
            let model = AbsModel::new(&cfg, 3, &Device::Cpu).unwrap();
            let frozen = FrozenAbsModel::new(&model);
            assert_eq!(frozen.shared_encoder(), variant.discriminative);
            let z = Tensor::zeros((2, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
            assert_eq!(
                frozen.prior_term(3, &z).unwrap().is_some(),
                variant.adversarial
            );
            assert!(frozen.decode(10, &z).is_err());
            let inf_cfg = InferenceConfig {
                n_candidates: 16,
                n_adam_steps: 2,
                ..frozen.inference_config(LatentInference::Variational)
            };
            let inference = AbsInference::new(frozen, inf_cfg).unwrap();
            let xs = Tensor::full(0.5f32, (2, 1, 28, 28), &Device::Cpu).unwrap();
            let out = inference.infer(&xs, 0).unwrap();
            assert_eq!(out.losses.dims(), &[2, 10]);
            assert_eq!(out.reconstructions.dims(), &[2, 10, 1, 28, 28]);
            let losses = out
                .losses
                .flatten_all()
                .unwrap()
                .host_vec1::<f32>()
                .unwrap();
            assert!(
                losses.iter().all(|l| l.is_finite() && *l >= 0.0),
                "{variant:?}: {losses:?}"
            );
        }
    }
}
