//! Adam (Kingma & Ba 2015) with inspectable state, so that checkpoints hold the moments and the
//! step count and a resumed run continues exactly where it stopped (Candle's `AdamW` keeps its
//! state private). Update rule as PyTorch's `torch.optim.Adam` (no weight decay):
//! `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`, `p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Adam state for one group of parameters.
#[derive(Debug, Clone)]
pub struct Adam {
    /// First-moment decay, 0.9.
    pub beta1: f64,
    /// Second-moment decay, 0.999.
    pub beta2: f64,
    /// Denominator epsilon, 1e-8.
    pub eps: f64,
    /// Number of updates applied so far.
    pub step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl Adam {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every parameter in `params` that received a gradient.
    pub fn step(&mut self, grads: &GradStore, params: &[(String, Var)], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = match self.m.get(name) {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.eps)?;
            let update = (m.affine(lr / bc1, 0.0)? / denom)?;
            var.set(&(var.as_tensor() - update)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
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
    use candle_core::Device;

    #[test]
    fn first_step_moves_by_lr_times_sign() -> Result<()> {
        // With bias correction, step 1 gives m_hat = g, v_hat = g^2: p -= lr * g / (|g| + eps).
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let loss = (p.as_tensor() * 3.0)?.sum_all()?; // gradient (3, 3)
        let grads = loss.backward()?;
        let mut adam = Adam::new();
        adam.step(&grads, &[("p".into(), p.clone())], 0.1)?;
        let got = p.as_tensor().to_vec1::<f32>()?;
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 2.1).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(adam.state_tensors("o").len(), 2);
        Ok(())
    }
}
