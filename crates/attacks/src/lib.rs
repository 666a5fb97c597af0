//! Foolbox-style adversarial attacks for any Candle classifier, with the settings of E-ABS
//! (Ju & Wagner, AISec 2020, Section 4.2) as named presets.
//!
//! # Architecture invariant
//! Attacks see a model only through [`eabs_core::Classifier`] (bounds, logits) and
//! [`eabs_core::Differentiable`] (`value_and_grad`, which a model may override: the E-ABS
//! adaptive gradient of eq. (8), [`EstimatedGradient`], [`Eot`]). Decision-based attacks
//! ([`Boundary`], [`AdditiveGaussianNoise`]) need only `Classifier`.
//!
//! # Interface (after Foolbox 3)
//! - [`Criterion`]: untargeted or targeted misclassification.
//! - [`FixedEpsilonAttack`] ([`Pgd`], [`Apgd`]) and [`MinimizationAttack`] ([`DeepFool`],
//!   [`Ddn`], [`CarliniWagnerL2`], [`Boundary`], [`AdditiveGaussianNoise`]).
//! - [`attack_fixed`] / [`attack_min`] take a list of epsilons and return one [`Outcome`] per
//!   epsilon: raw and clipped adversarials and per-sample success, re-checked on the model.
//! - [`robust_if_all_failed`]: the paper's "ALL" row from the attacks' success flags.
//!
//! # Randomness
//! Every attack takes a `seed`; each sample draws from its own stream seeded by
//! `(seed, hash of the sample)` ([`seeding`]), so results do not depend on batch order or size.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use eabs_attacks::{attack_fixed, Criterion, Norm, Pgd, PgdConfig};
//! use eabs_core::{Bounds, Classifier, Differentiable};
//!
//! /// logits = [0, x0 + x1 - 1]: class 1 iff x0 + x1 > 1.
//! struct Toy(Device);
//! impl Classifier for Toy {
//!     fn bounds(&self) -> Bounds { Bounds::UNIT }
//!     fn n_classes(&self) -> usize { 2 }
//!     fn device(&self) -> &Device { &self.0 }
//!     fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
//!         let w = Tensor::new(&[[0f32, 1.], [0., 1.]], &self.0)?;
//!         xs.matmul(&w)?.broadcast_add(&Tensor::new(&[0f32, -1.], &self.0)?)
//!     }
//! }
//! impl Differentiable for Toy {}
//!
//! let model = Toy(Device::Cpu);
//! let xs = Tensor::new(&[[0.3f32, 0.3]], &Device::Cpu)?; // class 0, L_inf distance 0.2
//! let pgd = Pgd::new(PgdConfig { restarts: 1, ..PgdConfig::paper(Norm::Linf, 1) })?;
//! let out = attack_fixed(&pgd, &model, &xs, &Criterion::misclassification(vec![0]), &[0.1, 0.25])?;
//! assert_eq!(out[0].success, vec![false]);
//! assert_eq!(out[1].success, vec![true]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod additive_noise;
pub mod apgd;
pub mod base;
pub mod boundary;
pub mod carlini_wagner;
pub mod criteria;
pub mod ddn;
pub mod deepfool;
pub mod eot;
pub mod error;
pub mod gradient_estimators;
pub mod norms;
pub mod paper;
pub mod pgd;
pub mod seeding;
mod util;

pub use additive_noise::{AdditiveGaussianNoise, AdditiveNoiseConfig};
pub use apgd::{Apgd, ApgdConfig};
pub use base::{
    attack_fixed, attack_min, clip_to_ball, robust_accuracy_all, robust_if_all_failed,
    validate_inputs, Attack, FixedEpsilonAttack, MinimizationAttack, Outcome,
};
pub use boundary::{starting_points_from_pool, Boundary, BoundaryConfig};
pub use carlini_wagner::{CarliniWagnerL2, CwAbort, CwConfig};
pub use criteria::{Criterion, Loss};
pub use ddn::{Ddn, DdnConfig};
pub use deepfool::{DeepFool, DeepFoolConfig, DeepFoolLoss};
pub use eot::Eot;
pub use error::{Error, Result};
pub use gradient_estimators::{EstimatedGradient, EstimatorConfig};
pub use norms::Norm;
pub use pgd::{Pgd, PgdConfig};
