//! ABS / E-ABS inference (Ju & Wagner, AISec 2020): how a trained class-conditional generative
//! model classifies an image, fast enough to be attacked.
//!
//! - [`AbsInference`]: per-class likelihood estimates by latent optimisation (Section 2 eq. (2),
//!   Section 3.3 eq. (6)), from the best of N cached prior candidates plus the encoder proposal,
//!   then Adam with exact (ABS) or variational (E-ABS) inference.
//! - [`AbsClassifier`]: an [`eabs_core::Classifier`] + [`eabs_core::Differentiable`] whose
//!   gradient is the adaptive gradient of eq. (8).
//! - [`AbsInference::certified_bounds`]: the certified L2 radius of eq. (7) / Appendix A.
//!
//! A model plugs in through [`LatentClassModel`] (decoders, prior term, optional encoder);
//! [`FrozenAbsModel`] implements it for `eabs-models`' ABS / A-ABS / D-ABS / E-ABS.
//!
//! # Performance
//! The N candidates are decoded once per engine ([`CandidateCache`]); the candidate search per
//! batch is one matrix product per class. All images and classes of a batch share one Adam state
//! over a `(batch, K, d)` latent tensor; the backward pass reaches the latents only (model
//! weights are plain tensors). The optimisation (49 forward + backward passes through K
//! decoders) dominates: see `benches/inference.rs` for images/s and the share of each stage.
//!
//! ```
//! use candle_core::{Device, Result, Tensor};
//! use eabs_inference::{AbsInference, InferenceConfig, LatentClassModel};
//!
//! /// Two classes of 1x1x2 "images": G_0(z) = (z, 0), G_1(z) = (0, z).
//! struct Axes(Device);
//! impl LatentClassModel for Axes {
//!     fn n_classes(&self) -> usize { 2 }
//!     fn latent_dim(&self) -> usize { 1 }
//!     fn image_shape(&self) -> (usize, usize, usize) { (1, 1, 2) }
//!     fn decode(&self, class: usize, z: &Tensor) -> Result<Tensor> {
//!         let zero = z.zeros_like()?;
//!         let parts = if class == 0 { [z, &zero] } else { [&zero, z] };
//!         Tensor::cat(&parts, 1)?.reshape((z.dim(0)?, 1, 1, 2))
//!     }
//!     fn prior_term(&self, _: usize, _: &Tensor) -> Result<Option<Tensor>> { Ok(None) }
//!     fn encode(&self, _: usize, _: &Tensor) -> Result<Option<(Tensor, Tensor)>> { Ok(None) }
//!     fn device(&self) -> &Device { &self.0 }
//! }
//!
//! let cfg = InferenceConfig { n_candidates: 100, ..InferenceConfig::abs_reference() };
//! let inference = AbsInference::new(Axes(Device::Cpu), cfg).unwrap();
//! let xs = Tensor::new(&[[[[2f32, 0.1]]], [[[0.0, -1.5]]]], &Device::Cpu).unwrap();
//! let out = inference.infer(&xs, 0).unwrap();
//! assert_eq!(out.losses.dims(), &[2, 2]);
//! assert_eq!(out.predictions().unwrap().to_vec1::<u32>().unwrap(), vec![0, 1]);
//! ```
#![warn(missing_docs)]

pub mod bound;
pub mod candidates;
mod classifier;
pub mod config;
mod engine;
mod error;
pub mod fast;
mod model;
pub mod models_impl;

pub use bound::{certified_radius, quantiles, BoundSummary, CertifiedBounds};
pub use candidates::{draw_candidates, CandidateCache, CandidateChoice};
pub use classifier::AbsClassifier;
pub use config::{FinalEvaluation, InferenceConfig, LatentInference};
pub use engine::{AbsInference, InferenceOutput, LatentStart, StageTimings};
pub use error::{InferenceError, Result};
pub use model::LatentClassModel;
pub use models_impl::FrozenAbsModel;
