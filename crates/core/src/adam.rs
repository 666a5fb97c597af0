//! Adam (Kingma & Ba 2015), the workspace's one implementation: model training (`eabs-models`),
//! latent optimisation in ABS / E-ABS inference (`eabs-inference`) and the Carlini-Wagner attack
//! (`eabs-attacks`) all step through [`AdamConfig`]. It lives here because this is the lowest
//! crate that all three depend on.
//!
//! With `t` the number of updates so far (the current one included) and `g` the gradient:
//!
//! ```text
//! m = beta1 m + (1 - beta1) g          m_hat = m / (1 - beta1^t)
//! v = beta2 v + (1 - beta2) g^2        v_hat = v / (1 - beta2^t)
//! p = p - lr m_hat / (sqrt(v_hat) + eps)
//! ```
//!
//! # Two roundings of the same rule
//! The callers came from different sources and round differently, and each keeps its own
//! arithmetic bit for bit (checkpoints resume exactly, and attack and inference results do not
//! move), so the two differences are options rather than one silent choice:
//! - [`LrPlacement`]: training folds `lr` into the first bias correction
//!   (`m * (lr / (1 - beta1^t))`, one scalar multiply, like PyTorch's `step_size`); inference and
//!   Carlini-Wagner divide first and scale the direction by `lr` afterwards, in the order of
//!   Foolbox's `AdamOptimizer`.
//! - [`MomentWeights`]: `1 - beta` computed in f64 (training, inference), or Carlini-Wagner's
//!   literals `0.1` and `0.001`. `1.0 - 0.9` is `0.09999999999999998` in f64, so the two agree
//!   in f32 tensors and differ in the last bit in f64 ones.
//!
//! Both roundings compute `v_hat` as `v * (1 / (1 - beta2^t))` and add `eps` after the square
//! root (PyTorch's placement; PyTorch divides `sqrt(v)` by `sqrt(1 - beta2^t)` instead).
//!
//! # Two kinds of state
//! - [`TensorAdam`]: one tensor that the caller owns and replaces (a latent, a perturbation);
//!   moments start as zero tensors shaped like it.
//! - [`Adam`]: named [`Var`]s updated in place from a [`GradStore`], one step count for the
//!   group, moments created on a parameter's first gradient and saved as named tensors for
//!   checkpoints.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use eabs_core::adam::{AdamConfig, LrPlacement, TensorAdam};
//!
//! // Minimise sum (p - 3)^2, gradient 2 (p - 3), on a (2, 3) tensor.
//! let config = AdamConfig::new(0.9, 0.999, 1e-8, LrPlacement::AfterDivision);
//! let mut p = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let mut adam = TensorAdam::new(config, 0.1, &p)?;
//! for _ in 0..300 {
//!     let g = ((&p - 3.0)? * 2.0)?;
//!     p = adam.step(&p, &g)?;
//! }
//! assert_eq!(p.dims(), &[2, 3]);
//! assert!(p.to_vec2::<f32>()?.iter().flatten().all(|v| (v - 3.0).abs() < 0.1));
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Where the learning rate enters the update. Equal in exact arithmetic; they differ in the
/// last bit, so each caller keeps the one its results were produced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrPlacement {
    /// `p - (m * (lr / (1 - beta1^t))) / (sqrt(v_hat) + eps)`: the learning rate folded into the
    /// first bias correction, as PyTorch's `step_size = lr / bias_correction1`. Model training.
    InBiasCorrection,
    /// `p - ((m * (1 / (1 - beta1^t))) / (sqrt(v_hat) + eps)) * lr`: the direction first, then
    /// the step size, as Foolbox's `AdamOptimizer`. Latent inference and Carlini-Wagner.
    AfterDivision,
}

/// The weights of the new gradient in the two moment averages, `1 - beta1` and `1 - beta2` in
/// exact arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MomentWeights {
    /// `1.0 - beta1` and `1.0 - beta2`, computed in f64 (PyTorch, Foolbox).
    OneMinusBeta,
    /// Given weights, e.g. Carlini-Wagner's literals `0.1` and `0.001` for betas 0.9 and 0.999.
    /// They round to the same f32 as `1.0 - 0.9` and `1.0 - 0.999`, not to the same f64.
    Explicit {
        /// Weight of `g` in `m`.
        first: f64,
        /// Weight of `g^2` in `v`.
        second: f64,
    },
}

/// Adam's hyper-parameters except the learning rate, which schedules change step by step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// First-moment decay, e.g. 0.9.
    pub beta1: f64,
    /// Second-moment decay, e.g. 0.999.
    pub beta2: f64,
    /// Added to `sqrt(v_hat)`, e.g. 1e-8.
    pub eps: f64,
    /// Weights of the new gradient in the moments.
    pub moment_weights: MomentWeights,
    /// Where the learning rate enters.
    pub lr_placement: LrPlacement,
}

/// The moments and parameter after one update.
struct Updated {
    param: Tensor,
    m: Tensor,
    v: Tensor,
}

impl AdamConfig {
    /// The given betas and `eps`, with the moment weights `1 - beta`.
    pub fn new(beta1: f64, beta2: f64, eps: f64, lr_placement: LrPlacement) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            moment_weights: MomentWeights::OneMinusBeta,
            lr_placement,
        }
    }

    /// PyTorch's `torch.optim.Adam` defaults (betas 0.9 and 0.999, eps 1e-8) with the learning
    /// rate in the bias correction, as PyTorch: the arithmetic of model training.
    pub fn pytorch() -> Self {
        Self::new(0.9, 0.999, 1e-8, LrPlacement::InBiasCorrection)
    }

    fn moment_weights(&self) -> (f64, f64) {
        match self.moment_weights {
            MomentWeights::OneMinusBeta => (1.0 - self.beta1, 1.0 - self.beta2),
            MomentWeights::Explicit { first, second } => (first, second),
        }
    }

    /// Update number `t` (1-based) of `param` with gradient `grad`. Absent moments are Adam's
    /// zero start, skipped rather than computed (`0 * beta1 + w g` would round to the same).
    fn update(
        &self,
        t: u64,
        lr: f64,
        param: &Tensor,
        grad: &Tensor,
        m: Option<&Tensor>,
        v: Option<&Tensor>,
    ) -> Result<Updated> {
        let (w1, w2) = self.moment_weights();
        let m = match m {
            Some(m) => ((m * self.beta1)? + (grad * w1)?)?,
            None => (grad * w1)?,
        };
        let v = match v {
            Some(v) => ((v * self.beta2)? + (grad.sqr()? * w2)?)?,
            None => (grad.sqr()? * w2)?,
        };
        // beta^t underflows to 0 long before t reaches i32::MAX, so saturating loses nothing.
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.eps)?;
        let update = match self.lr_placement {
            LrPlacement::InBiasCorrection => (m.affine(lr / bc1, 0.0)? / denom)?,
            LrPlacement::AfterDivision => ((m.affine(1.0 / bc1, 0.0)? / denom)? * lr)?,
        };
        Ok(Updated {
            param: (param - update)?,
            m,
            v,
        })
    }
}

/// Adam on one tensor that the caller owns: [`TensorAdam::step`] returns the updated tensor.
#[derive(Debug, Clone)]
pub struct TensorAdam {
    config: AdamConfig,
    lr: f64,
    step: u64,
    m: Tensor,
    v: Tensor,
}

impl TensorAdam {
    /// Zero moments shaped like `param`, at learning rate `lr`.
    pub fn new(config: AdamConfig, lr: f64, param: &Tensor) -> Result<Self> {
        Ok(Self {
            config,
            lr,
            step: 0,
            m: param.zeros_like()?,
            v: param.zeros_like()?,
        })
    }

    /// One update: `param` moved against `grad` (same shape as the tensor given to `new`).
    pub fn step(&mut self, param: &Tensor, grad: &Tensor) -> Result<Tensor> {
        self.step += 1;
        let u = self.config.update(
            self.step,
            self.lr,
            param,
            grad,
            Some(&self.m),
            Some(&self.v),
        )?;
        self.m = u.m;
        self.v = u.v;
        Ok(u.param)
    }

    /// Number of updates applied so far.
    pub fn n_steps(&self) -> u64 {
        self.step
    }
}

/// [`TensorAdam`] on a plain f32 slice, for hand-written loops (the fast ABS-style inference of
/// `eabs-inference`): the same arithmetic in the same order, every scalar rounded to f32 as
/// Candle's `affine` and scalar ops round them, so both forms give the same iterates up to the
/// rounding of the gradients they are fed.
#[derive(Debug, Clone)]
pub struct SliceAdam {
    config: AdamConfig,
    lr: f64,
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl SliceAdam {
    /// Zero moments for `len` parameters at learning rate `lr`.
    pub fn new(config: AdamConfig, lr: f64, len: usize) -> Self {
        Self {
            config,
            lr,
            step: 0,
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One update of `param` in place against `grad`.
    ///
    /// # Errors
    /// `param` or `grad` not of the length given to `new`.
    pub fn step(&mut self, param: &mut [f32], grad: &[f32]) -> Result<()> {
        if param.len() != self.m.len() || grad.len() != self.m.len() {
            candle_core::bail!(
                "SliceAdam::step: param of {} and grad of {} values, expected {}",
                param.len(),
                grad.len(),
                self.m.len()
            );
        }
        self.step += 1;
        let c = &self.config;
        let (w1, w2) = c.moment_weights();
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (w1, w2) = (w1 as f32, w2 as f32);
        let inv_bc2 = (1.0 / (1.0 - c.beta2.powi(t))) as f32;
        let eps = c.eps as f32;
        let (pre, post) = match c.lr_placement {
            LrPlacement::InBiasCorrection => ((self.lr / (1.0 - c.beta1.powi(t))) as f32, None),
            LrPlacement::AfterDivision => {
                ((1.0 / (1.0 - c.beta1.powi(t))) as f32, Some(self.lr as f32))
            }
        };
        for (((p, &g), m), v) in param
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = *m * b1 + g * w1;
            *v = *v * b2 + (g * g) * w2;
            let denom = (*v * inv_bc2).sqrt() + eps;
            let u = (*m * pre) / denom;
            *p -= match post {
                Some(lr) => u * lr,
                None => u,
            };
        }
        Ok(())
    }

    /// Number of updates applied so far.
    pub fn n_steps(&self) -> u64 {
        self.step
    }
}

/// Adam over a group of named [`Var`]s with inspectable state, so that checkpoints hold the
/// moments and the step count and a resumed run continues exactly where it stopped (Candle's
/// `AdamW` keeps its state private).
#[derive(Debug, Clone)]
pub struct Adam {
    /// Hyper-parameters.
    pub config: AdamConfig,
    /// Number of updates applied so far (one per [`Adam::step`] call, for the whole group).
    pub step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl Adam {
    /// [`AdamConfig::pytorch`]: PyTorch's defaults, the optimiser of model training.
    pub fn new() -> Self {
        Self::with_config(AdamConfig::pytorch())
    }

    /// No moments yet, step 0.
    pub fn with_config(config: AdamConfig) -> Self {
        Self {
            config,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every parameter in `params` that received a gradient; the others keep
    /// their value and moments (the step count, shared by the group, still advances).
    pub fn step(&mut self, grads: &GradStore, params: &[(String, Var)], lr: f64) -> Result<()> {
        self.step += 1;
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let u = self.config.update(
                self.step,
                lr,
                var.as_tensor(),
                g,
                self.m.get(name),
                self.v.get(name),
            )?;
            var.set(&u.param)?;
            self.m.insert(name.clone(), u.m);
            self.v.insert(name.clone(), u.v);
        }
        Ok(())
    }

    /// The moments as named tensors `{prefix}.m.{param}` and `{prefix}.v.{param}`.
    pub fn state_tensors(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (n, t) in &self.m {
            out.insert(format!("{prefix}.m.{n}"), t.clone());
        }
        for (n, t) in &self.v {
            out.insert(format!("{prefix}.v.{n}"), t.clone());
        }
        out
    }

    /// Restores moments from `{prefix}.m.*` / `{prefix}.v.*` tensors and the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, prefix: &str, step: u64) {
        self.m.clear();
        self.v.clear();
        let pm = format!("{prefix}.m.");
        let pv = format!("{prefix}.v.");
        for (n, t) in tensors {
            if let Some(p) = n.strip_prefix(&pm) {
                self.m.insert(p.to_string(), t.clone());
            } else if let Some(p) = n.strip_prefix(&pv) {
                self.v.insert(p.to_string(), t.clone());
            }
        }
        self.step = step;
    }
}

impl Default for Adam {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{self, HostRead};
    use candle_core::{DType, Device};

    /// Betas 0.5 and 0.75, eps 2: every quantity of the first two steps is a short fraction.
    fn fractions(lr_placement: LrPlacement) -> AdamConfig {
        AdamConfig::new(0.5, 0.75, 2.0, lr_placement)
    }

    // From p = 1 at lr 0.5, gradients 2 then -2:
    // step 1: m = 0.5 * 2 = 1, v = 0.25 * 4 = 1; m_hat = 1 / 0.5 = 2, v_hat = 1 / 0.25 = 4;
    //         p = 1 - 0.5 * 2 / (sqrt(4) + 2) = 0.75.
    // step 2: m = 0.5 * 1 + 0.5 * (-2) = -0.5, v = 0.75 * 1 + 0.25 * 4 = 1.75;
    //         m_hat = -0.5 / (1 - 0.25) = -2/3, v_hat = 1.75 / (1 - 0.5625) = 4;
    //         p = 0.75 - 0.5 * (-2/3) / (sqrt(4) + 2) = 0.75 + 1/12 = 5/6.
    const TWO_STEPS: [f64; 2] = [0.75, 5.0 / 6.0];

    #[test]
    fn slice_adam_gives_the_tensor_adams_iterates() -> Result<()> {
        for placement in [LrPlacement::InBiasCorrection, LrPlacement::AfterDivision] {
            let cfg = AdamConfig::new(0.9, 0.999, 1e-8, placement);
            let init = [0.3f32, -1.2, 2.5, 0.0];
            let mut p = host::new(&init, &Device::Cpu)?;
            let mut tensor_adam = TensorAdam::new(cfg, 0.05, &p)?;
            let mut s = init.to_vec();
            let mut slice_adam = SliceAdam::new(cfg, 0.05, 4);
            for step in 0..30 {
                let g: Vec<f32> = s.iter().map(|x| 2.0 * x - 0.1 * step as f32).collect();
                p = tensor_adam.step(&p, &host::new(g.as_slice(), &Device::Cpu)?)?;
                slice_adam.step(&mut s, &g)?;
                let want = p.host_vec1::<f32>()?;
                for (a, b) in s.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "{placement:?} step {step}: {a} vs {b}"
                    );
                }
                // Keep both on the same iterate so that rounding does not accumulate.
                s.copy_from_slice(&want);
            }
            assert_eq!(slice_adam.n_steps(), 30);
            assert!(slice_adam.step(&mut s, &[0.0]).is_err());
        }
        Ok(())
    }

    #[test]
    fn two_steps_match_the_hand_computation() -> Result<()> {
        for placement in [LrPlacement::InBiasCorrection, LrPlacement::AfterDivision] {
            // One tensor.
            let mut p = host::new(&[1f64], &Device::Cpu)?;
            let mut adam = TensorAdam::new(fractions(placement), 0.5, &p)?;
            for (g, want) in [2.0, -2.0].into_iter().zip(TWO_STEPS) {
                p = adam.step(&p, &host::new(&[g], &Device::Cpu)?)?;
                let got = p.host_vec1::<f64>()?[0];
                assert!((got - want).abs() < 1e-12, "{placement:?}: {got} != {want}");
            }
            assert_eq!(adam.n_steps(), 2);
            // A group of Vars, gradients from autodiff: d sum(g p) / dp = g.
            let var = Var::new(&[1f64], &Device::Cpu)?;
            let mut adam = Adam::with_config(fractions(placement));
            for (g, want) in [2.0, -2.0].into_iter().zip(TWO_STEPS) {
                let grads = (var.as_tensor() * g)?.sum_all()?.backward()?;
                adam.step(&grads, &[("p".into(), var.clone())], 0.5)?;
                let got = var.as_tensor().host_vec1::<f64>()?[0];
                assert!((got - want).abs() < 1e-12, "{placement:?}: {got} != {want}");
            }
            assert_eq!(adam.step, 2);
        }
        Ok(())
    }

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() -> Result<()> {
        // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
        for placement in [LrPlacement::InBiasCorrection, LrPlacement::AfterDivision] {
            let p = host::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
            let g = host::new(&[4f32, -0.5, 0.0], &Device::Cpu)?;
            let config = AdamConfig::new(0.9, 0.999, 1e-8, placement);
            let p1 = TensorAdam::new(config, 0.1, &p)?
                .step(&p, &g)?
                .host_vec1::<f32>()?;
            assert!((p1[0] - 0.9).abs() < 1e-6 && (p1[1] + 1.9).abs() < 1e-6 && p1[2] == 0.5);
        }
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let grads = (p.as_tensor() * 3.0)?.sum_all()?.backward()?; // gradient (3, 3)
        let mut adam = Adam::new();
        adam.step(&grads, &[("p".into(), p.clone())], 0.1)?;
        let got = p.as_tensor().host_vec1::<f32>()?;
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 2.1).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(adam.state_tensors("o").len(), 2);
        Ok(())
    }

    #[test]
    fn minimises_a_quadratic() -> Result<()> {
        // f(p) = sum (p - 3)^2, gradient 2 (p - 3).
        let mut p = host::new(&[0f32, 10.0], &Device::Cpu)?;
        let config = AdamConfig::new(0.9, 0.999, 1e-8, LrPlacement::AfterDivision);
        let mut adam = TensorAdam::new(config, 0.1, &p)?;
        for _ in 0..500 {
            let g = ((&p - 3.0)? * 2.0)?;
            p = adam.step(&p, &g)?;
        }
        for v in p.host_vec1::<f32>()? {
            assert!((v - 3.0).abs() < 1e-2, "{v}");
        }
        Ok(())
    }

    /// Bits of `p0` after one update per gradient of `gs`, by a [`TensorAdam`] and by an [`Adam`].
    fn both_kinds(config: AdamConfig, p0: &Tensor, gs: &[Tensor]) -> Result<[Vec<u64>; 2]> {
        let bits = |t: &Tensor| -> Result<Vec<u64>> {
            Ok(t.to_dtype(DType::F64)?
                .flatten_all()?
                .host_vec1::<f64>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        let mut p = p0.clone();
        let mut single = TensorAdam::new(config, 0.01, &p)?;
        let var = Var::from_tensor(p0)?;
        let mut group = Adam::with_config(config);
        for g in gs {
            p = single.step(&p, g)?;
            let grads = (var.as_tensor() * g)?.sum_all()?.backward()?;
            group.step(&grads, &[("p".into(), var.clone())], 0.01)?;
        }
        Ok([bits(&p)?, bits(var.as_tensor())?])
    }

    #[test]
    fn lazy_moments_equal_zero_moments_bit_for_bit() -> Result<()> {
        let p0 = host::new(&[0.3f32, -1.7, 0.0, 2.5], &Device::Cpu)?;
        let gs = [
            host::new(&[0.1f32, -3.0, 0.0, 1e-30], &Device::Cpu)?,
            host::new(&[-0.7f32, 2.0, 0.5, -1e-30], &Device::Cpu)?,
            host::new(&[0.0f32, 0.25, -0.5, 4.0], &Device::Cpu)?,
        ];
        for placement in [LrPlacement::InBiasCorrection, LrPlacement::AfterDivision] {
            let [single, group] =
                both_kinds(AdamConfig::new(0.9, 0.999, 1e-8, placement), &p0, &gs)?;
            assert_eq!(single, group, "{placement:?}");
        }
        Ok(())
    }

    #[test]
    fn explicit_decimal_weights_differ_from_one_minus_beta_only_in_f64() -> Result<()> {
        let computed = AdamConfig::new(0.9, 0.999, 1e-8, LrPlacement::AfterDivision);
        let literal = AdamConfig {
            moment_weights: MomentWeights::Explicit {
                first: 0.1,
                second: 0.001,
            },
            ..computed
        };
        assert_eq!((1.0f64 - 0.9) as f32, 0.1f32);
        assert_eq!((1.0f64 - 0.999) as f32, 0.001f32);
        assert_ne!(1.0f64 - 0.9, 0.1f64);
        let p32 = host::new(&[0.3f32, -1.7, 2.5], &Device::Cpu)?;
        let g32 = [host::new(&[0.1f32, -3.0, 1.5], &Device::Cpu)?];
        assert_eq!(
            both_kinds(computed, &p32, &g32)?,
            both_kinds(literal, &p32, &g32)?
        );
        let p64 = p32.to_dtype(DType::F64)?;
        let g64 = [g32[0].to_dtype(DType::F64)?];
        assert_ne!(
            both_kinds(computed, &p64, &g64)?,
            both_kinds(literal, &p64, &g64)?
        );
        Ok(())
    }

    #[test]
    fn resumed_state_continues_exactly() -> Result<()> {
        let gs = [0.5f32, -1.25, 2.0, 0.125];
        let run = |resume_at: Option<usize>| -> Result<Vec<f32>> {
            let var = Var::new(&[1f32, -0.5], &Device::Cpu)?;
            let mut adam = Adam::new();
            for (i, g) in gs.iter().enumerate() {
                if resume_at == Some(i) {
                    let saved = adam.state_tensors("optim");
                    let step = adam.step;
                    adam = Adam::new();
                    adam.load_state(&saved, "optim", step);
                }
                let grads = (var.as_tensor() * f64::from(*g))?.sum_all()?.backward()?;
                adam.step(&grads, &[("w".into(), var.clone())], 1e-2)?;
            }
            var.as_tensor().host_vec1::<f32>()
        };
        assert_eq!(run(None)?, run(Some(2))?);
        Ok(())
    }
}
