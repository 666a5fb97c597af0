//! Settings of latent inference, with the paper's and the reference implementation's presets.
//!
//! Every default that the paper does not state comes from bethgelab's AnalysisBySynthesis
//! (`abs_models/models.py::get_ABS`, `inference.py`, `sampling.py`, `loss_functions.py`); each
//! field says where its value comes from.

use serde::{Deserialize, Serialize};

use crate::error::{InferenceError, Result};

/// How the latent distribution of each class is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LatentInference {
    /// ABS and the non-V ablations (Section 2, eq. (2)): optimise the mean of `N(mu, I)` only;
    /// the variance stays fixed at one and the objective is evaluated at `mu`. Deterministic.
    Exact,
    /// E-ABS and the V ablations (Section 3.3, eq. (6)): optimise mean and (diagonal)
    /// log-variance with the reparameterisation trick, one sample `z = mu + sigma * eps` per step.
    /// Random: the final evaluation draws a sample too (see [`FinalEvaluation`]).
    Variational,
}

/// Where the losses that classify are evaluated after the last Adam update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalEvaluation {
    /// At one sample of the optimised `Q*(Z)`: the randomised decision of E-ABS (Section 4.2,
    /// "E-ABS's classification decision is randomized"). Equals `Mean` for exact inference.
    Sample,
    /// At the mean of `Q*(Z)`: a deterministic variant, not the paper's.
    Mean,
}

/// All settings of [`crate::AbsInference`]. No `Default`: pick a named preset and override
/// fields with struct update syntax.
///
/// ```
/// use eabs_inference::InferenceConfig;
/// let cfg = InferenceConfig { n_adam_steps: 10, ..InferenceConfig::e_abs() };
/// assert_eq!(cfg.n_candidates, 8000);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceConfig {
    /// Exact (ABS) or variational (E-ABS) inference.
    pub mode: LatentInference,
    /// Number N of random starting latents shared by all classes. 8000: ABS (Schott et al.) and
    /// E-ABS Section 3.3; reference `n_samples = 8000`.
    pub n_candidates: usize,
    /// Share of prior draws dismissed as least probable: the reference draws `N / (1 - f)`
    /// samples from `N(0, I)` and keeps the N with the highest density (the smallest norms).
    /// 0.1: reference `fraction_to_dismiss`.
    pub fraction_to_dismiss: f64,
    /// Seed of the candidate pool: the candidates are fixed per model and seed, so the decoded
    /// candidates can be cached (the reference fixes its seeds before drawing them, too).
    pub candidate_seed: u64,
    /// Whether the encoder's proposal `Q(Z|x)` joins the candidates (E-ABS, Section 3.3: "we
    /// choose the best from 8000 + 1 variational distributions"). Ignored for models without an
    /// encoder. ABS does not use its encoders at inference.
    pub use_encoder: bool,
    /// Number of Adam updates of the latents. 49: the reference runs `n_iter = 50` iterations of
    /// which the last only evaluates.
    pub n_adam_steps: usize,
    /// Adam learning rate. 0.05: reference `get_ABS(lr=0.05)`.
    pub learning_rate: f64,
    /// Adam `beta1`. 0.9: PyTorch's default, which the reference uses.
    pub adam_beta1: f64,
    /// Adam `beta2`. 0.999: PyTorch's default.
    pub adam_beta2: f64,
    /// Adam `eps`. 1e-8: PyTorch's default.
    pub adam_eps: f64,
    /// Radius of the L2 ball that the latent mean is projected onto after each update (by
    /// scaling, `z * r / ||z||`; the reference's `clip_to_sphere` drops signs, a bug we do not
    /// copy). `Some(5.0)`: reference `clip = 5`. `None` disables the projection.
    pub latent_radius: Option<f64>,
    /// Weight beta of the Gaussian KL term (eq. (2)) for models whose
    /// [`crate::LatentClassModel::prior_term`] is `None`. 1: reference `beta = 1`. Models with a
    /// learned prior (AAE) carry their own beta inside `prior_term`.
    pub kl_beta: f64,
    /// Starting log-variance of the random candidates in variational inference. 0: "random
    /// means and unit variance" (Section 3.3).
    pub initial_log_variance: f64,
    /// Where the final losses are evaluated in variational inference.
    pub final_evaluation: FinalEvaluation,
    /// Logits are `-logit_scale * loss` with the loss normalised by the number of pixel values.
    /// 1: the reference (`logits = -ELBO / n_pixels`; its per-class scales belong to its binary
    /// MNIST model only).
    pub logit_scale: f64,
    /// Candidates decoded per decoder call when the cache is built. 500: keeps activations in
    /// cache (`/work/shared/perf-baseline.md`: 3.5 s to 2.7 s per decoder).
    pub decode_chunk: usize,
    /// Candidates per matrix product in the candidate search, bounding its working memory to
    /// `batch * search_chunk` scores per class. Performance only: results do not depend on it.
    pub search_chunk: usize,
}

impl InferenceConfig {
    /// E-ABS as in the paper (Section 3.3): variational inference from the best of 8000 random
    /// candidates plus the encoder proposal, then the reference's Adam schedule (49 updates,
    /// lr 0.05, radius 5), final losses at a sample of `Q*`.
    pub fn e_abs() -> Self {
        Self {
            mode: LatentInference::Variational,
            n_candidates: 8000,
            fraction_to_dismiss: 0.1,
            candidate_seed: 0,
            use_encoder: true,
            n_adam_steps: 49,
            learning_rate: 0.05,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            latent_radius: Some(5.0),
            kl_beta: 1.0,
            initial_log_variance: 0.0,
            final_evaluation: FinalEvaluation::Sample,
            logit_scale: 1.0,
            decode_chunk: 500,
            search_chunk: 2000,
        }
    }

    /// The paper's inference: same as [`InferenceConfig::e_abs`].
    pub fn paper() -> Self {
        Self::e_abs()
    }

    /// ABS as in the reference implementation (`get_ABS` defaults): exact inference of the mean
    /// from the best of 8000 prior candidates, no encoder.
    pub fn abs_reference() -> Self {
        Self {
            mode: LatentInference::Exact,
            use_encoder: false,
            ..Self::e_abs()
        }
    }

    /// The ablations of Section 4.4 without V (A-ABS, D-ABS, AD-ABS): exact inference, encoder
    /// proposal used where the model has an encoder.
    pub fn exact_ablation() -> Self {
        Self {
            mode: LatentInference::Exact,
            ..Self::e_abs()
        }
    }

    /// The V ablations of Section 4.4 (V-ABS, AV-ABS, DV-ABS): variational inference, as E-ABS.
    pub fn variational_ablation() -> Self {
        Self::e_abs()
    }

    /// Checks every field once, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| {
            Err(InferenceError::InvalidConfig { field, reason })
        };
        if self.n_candidates == 0 {
            return bad("n_candidates", "must be at least 1, found 0".into());
        }
        if !(0.0..1.0).contains(&self.fraction_to_dismiss) {
            return bad(
                "fraction_to_dismiss",
                format!("must lie in [0, 1), found {}", self.fraction_to_dismiss),
            );
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                format!("must be finite and > 0, found {}", self.learning_rate),
            );
        }
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, format!("must lie in [0, 1), found {v}"));
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad(
                "adam_eps",
                format!("must be finite and > 0, found {}", self.adam_eps),
            );
        }
        if let Some(r) = self.latent_radius {
            if !(r.is_finite() && r > 0.0) {
                return bad(
                    "latent_radius",
                    format!("must be finite and > 0 (or None), found {r}"),
                );
            }
        }
        if !(self.kl_beta.is_finite() && self.kl_beta >= 0.0) {
            return bad(
                "kl_beta",
                format!("must be finite and >= 0, found {}", self.kl_beta),
            );
        }
        if !self.initial_log_variance.is_finite() {
            return bad(
                "initial_log_variance",
                format!("must be finite, found {}", self.initial_log_variance),
            );
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0) {
            return bad(
                "logit_scale",
                format!("must be finite and > 0, found {}", self.logit_scale),
            );
        }
        if self.decode_chunk == 0 {
            return bad("decode_chunk", "must be at least 1, found 0".into());
        }
        if self.search_chunk == 0 {
            return bad("search_chunk", "must be at least 1, found 0".into());
        }
        Ok(())
    }

    /// Number of prior draws before the least probable are dismissed: `floor(N / (1 - f))`, as
    /// the reference's `int(n_samples / (1. - fraction_to_dismiss))` (8888 for the defaults).
    pub fn n_prior_draws(&self) -> usize {
        let n = (self.n_candidates as f64 / (1.0 - self.fraction_to_dismiss)).floor() as usize;
        n.max(self.n_candidates)
    }
}
