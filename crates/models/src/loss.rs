//! The training objectives, written as functions of plain tensors so that they can be checked by
//! hand: squared-error cost `c(x, G(z)) = ||x - G(z)||^2`, the KL term of the VAE ELBO (eq. 1),
//! the E-ABS objective of eq. (5) / Algorithm 1, and the discriminator loss of Section 3.1.

use candle_core::{DType, Result, Tensor, D};

use crate::layers::{log_sigmoid, log_softmax, pick};

/// Per-sample squared error `||x - r||^2` summed over every non-batch dimension, `(b,)`.
pub fn reconstruction_cost(xs: &Tensor, recon: &Tensor) -> Result<Tensor> {
    if xs.dims() != recon.dims() {
        candle_core::bail!(
            "reconstruction of shape {:?} does not match input {:?}",
            recon.dims(),
            xs.dims()
        );
    }
    let b = xs.dim(0)?;
    (xs - recon)?.sqr()?.reshape((b, ()))?.sum(1)
}

/// Costs of every class decoder, `(b, K)`: column `k` is `c(x, G_k(z))`.
pub fn costs_per_class(xs: &Tensor, recons: &[Tensor]) -> Result<Tensor> {
    let cols = recons
        .iter()
        .map(|r| reconstruction_cost(xs, r))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&cols, 1)
}

/// `KL(N(mean, diag(exp(logvar))) || N(0, I)) = 0.5 sum(mean^2 + exp(logvar) - logvar - 1)`,
/// `(b,)`.
pub fn kl_to_standard_normal(mean: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let t = ((mean.sqr()? + logvar.exp()?)? - logvar)?.affine(0.5, -0.5)?;
    t.sum(D::Minus1)
}

/// Reparameterised sample `z = mean + exp(logvar / 2) * eps` (Kingma & Welling).
pub fn reparameterise(mean: &Tensor, logvar: &Tensor, eps: &Tensor) -> Result<Tensor> {
    mean + (logvar * 0.5)?.exp()?.mul(eps)?
}

/// Batch means of the parts of the ABS-family objective (scalars, f32).
#[derive(Debug, Clone)]
pub struct LossParts {
    /// Total loss, the quantity descended.
    pub total: Tensor,
    /// Mean `c(x, G_y(z))`.
    pub reconstruction: Tensor,
    /// Mean prior term before `beta` (KL for VAEs, `-log D(z)` for AAEs).
    pub prior: Tensor,
    /// Mean discriminative loss before `gamma` (zero when off).
    pub discriminative: Tensor,
}

/// The generative + discriminative objective of eq. (5), averaged over the batch:
///
/// `mean_i [ c_{i, y_i} + beta * prior_i + gamma * ( -log softmax_k(-c_{i, k})_{y_i} ) ]`
///
/// with `costs: (b, K)` from [`costs_per_class`], `labels: (b,)`, `prior: (b,)` the per-sample
/// prior term (`-log D(z_i)` for E-ABS, `KL` for the VAE variants). `gamma = 0` drops the
/// discriminative term (then only column `y_i` of `costs` matters).
pub fn abs_objective(
    costs: &Tensor,
    labels: &Tensor,
    prior: &Tensor,
    beta: f64,
    gamma: f64,
) -> Result<LossParts> {
    let rec = pick(costs, labels)?.mean_all()?;
    let prior_m = prior.mean_all()?;
    let disc = if gamma != 0.0 {
        pick(&log_softmax(&costs.neg()?)?, labels)?
            .neg()?
            .mean_all()?
    } else {
        Tensor::zeros((), DType::F32, costs.device())?
    };
    let total = ((&rec + (&prior_m * beta)?)? + (&disc * gamma)?)?;
    Ok(LossParts {
        total,
        reconstruction: rec,
        prior: prior_m,
        discriminative: disc,
    })
}

/// Eq. (5) from its ingredients: input `xs: (b, ..)`, reconstructions by every class decoder
/// (`recons[k] = G_k(z)`, each shaped like `xs`), `labels: (b,)`, and `log D(z): (b,)`.
pub fn eabs_loss(
    xs: &Tensor,
    recons: &[Tensor],
    labels: &Tensor,
    log_d: &Tensor,
    beta: f64,
    gamma: f64,
) -> Result<LossParts> {
    let costs = costs_per_class(xs, recons)?;
    abs_objective(&costs, labels, &log_d.neg()?, beta, gamma)
}

/// Discriminator loss of Algorithm 1, `-(beta / n) sum_i [log D(z~_i) + log(1 - D(z_i))]`, from
/// the logits of prior samples `z~` and of encoded latents `z`. Uses `log(1 - sigmoid(l)) =
/// log sigmoid(-l)`.
pub fn discriminator_loss(
    logit_prior: &Tensor,
    logit_encoded: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let real = log_sigmoid(logit_prior)?.sum_all()?;
    let fake = log_sigmoid(&logit_encoded.neg()?)?.sum_all()?;
    let n = logit_prior.dim(0)?.max(1) as f64;
    // With different counts (A-ABS sees all encoded latents), each side is averaged separately.
    let m = logit_encoded.dim(0)?.max(1) as f64;
    (real * (-beta / n))? + (fake * (-beta / m))?
}

/// Cross-entropy of logits `(b, K)` against labels `(b,)`, batch mean.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    pick(&log_softmax(logits)?, labels)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use eabs_core::host::{self, HostRead};

    fn close(a: f32, b: f64) -> bool {
        (a as f64 - b).abs() < 1e-4 * (1.0 + b.abs())
    }

    #[test]
    fn eabs_loss_matches_a_hand_computation_of_eq_5() -> Result<()> {
        let dev = Device::Cpu;
        // Two samples of 2 pixels, K = 3 decoders.
        let xs = host::new(&[[1.0f32, 0.0], [0.5, 0.5]], &dev)?;
        let recons = [
            host::new(&[[1.0f32, 0.0], [0.0, 0.0]], &dev)?, // costs 0, 0.5
            host::new(&[[0.0f32, 0.0], [0.5, 0.5]], &dev)?, // costs 1, 0
            host::new(&[[1.0f32, 1.0], [0.5, 0.0]], &dev)?, // costs 1, 0.25
        ];
        let labels = host::new(&[0u32, 2], &dev)?;
        let log_d = host::new(&[-0.5f32, -2.0], &dev)?;
        let (beta, gamma) = (1.0, 10.0);
        // Sample 0: y = 0, costs (0, 1, 1): rec 0, CE = log(e^0 + e^-1 + e^-1) - 0.
        // Sample 1: y = 2, costs (0.5, 0, 0.25): rec 0.25, CE = log(e^-0.5 + 1 + e^-0.25) + 0.25.
        let ce0 = (1.0f64 + 2.0 * (-1.0f64).exp()).ln();
        let ce1 = ((-0.5f64).exp() + 1.0 + (-0.25f64).exp()).ln() + 0.25;
        let rec = (0.0 + 0.25) / 2.0;
        let prior = (0.5 + 2.0) / 2.0;
        let disc = (ce0 + ce1) / 2.0;
        let want = rec + beta * prior + gamma * disc;
        let got = eabs_loss(&xs, &recons, &labels, &log_d, beta, gamma)?;
        assert!(
            close(got.total.host_scalar::<f32>()?, want),
            "{} vs {want}",
            got.total
        );
        assert!(close(got.reconstruction.host_scalar::<f32>()?, rec));
        assert!(close(got.prior.host_scalar::<f32>()?, prior));
        assert!(close(got.discriminative.host_scalar::<f32>()?, disc));
        Ok(())
    }

    #[test]
    fn kl_and_discriminator_loss_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // KL for mean (1, 0), logvar (0, ln 2): 0.5 [(1 + 1 - 0 - 1) + (0 + 2 - ln 2 - 1)].
        let mean = host::new(&[[1.0f32, 0.0]], &dev)?;
        let logvar = host::new(&[[0.0f32, 2f32.ln()]], &dev)?;
        let want = 0.5 * (1.0 + 1.0 - 2f64.ln());
        assert!(close(
            kl_to_standard_normal(&mean, &logvar)?.host_vec1::<f32>()?[0],
            want
        ));
        // D(z~) = sigmoid(0) = 1/2, D(z) = sigmoid(0) = 1/2: loss = -(log 1/2 + log 1/2) = 2 ln 2.
        let z = host::new(&[0.0f32], &dev)?;
        assert!(close(
            discriminator_loss(&z, &z, 1.0)?.host_scalar::<f32>()?,
            2.0 * 2f64.ln()
        ));
        // Large logits stay finite: a perfect discriminator has loss ~0, not NaN.
        let lp = host::new(&[100.0f32], &dev)?;
        let le = host::new(&[-100.0f32], &dev)?;
        let l = discriminator_loss(&lp, &le, 1.0)?.host_scalar::<f32>()?;
        assert!(l.is_finite() && l.abs() < 1e-6);
        Ok(())
    }
}
