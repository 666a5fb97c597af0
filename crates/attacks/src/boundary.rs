//! The decision-based Boundary attack (Brendel et al. 2018), after Foolbox 3's
//! `boundary_attack.py`: from an adversarial starting point, repeatedly propose a random step
//! orthogonal to the direction of the original (on the sphere around it), then a step towards
//! it, keeping the proposal if it is still adversarial and closer. Step sizes adapt per sample
//! from the recent success rates (spherical: grow by 1.5 above 50 %, shrink below 20 % over the
//! last 100 checks; source step: grow above 25 %, shrink below 10 % over the last 30).
//!
//! The paper runs 100000 iterations from "a random sample that is classified as a different
//! class from the ground truth" (Section 4.2): pass such images with
//! [`Boundary::with_starting_points`], e.g. picked by [`starting_points_from_pool`]. Without
//! starting points, samples are initialised like Foolbox's default
//! (`LinearSearchBlendedUniformNoiseAttack`): uniform noise images until one is adversarial,
//! then a linear search for the closest adversarial blend.
//!
//! # Differences to Foolbox
//! - The Gaussian proposal noise is drawn per sample from its own stream (Foolbox shares one
//!   draw across the batch), so results do not depend on the batch.
//! - Samples whose starting point is not adversarial are returned unchanged (attack failed).

use candle_core::Tensor;
use eabs_core::host;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::base::{check_batch, check_bounds, Attack, MinimizationAttack};
use crate::criteria::Criterion;
use crate::error::{config_err, Error, Result};
use crate::norms::Norm;
use crate::seeding::{sample_rngs, sample_seeds};
use crate::util::{column, l2_rows, normal_rows, to_vec_f64, uniform_rows, where_rows};
use eabs_core::Classifier;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Configuration of [`Boundary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundaryConfig {
    /// Iterations.
    pub steps: usize,
    /// Initial spherical step, relative to the current distance.
    pub spherical_step: f64,
    /// Initial step towards the original, relative to the current distance.
    pub source_step: f64,
    /// A sample stops once its source step falls below this.
    pub source_step_convergence: f64,
    /// Factor by which step sizes grow or shrink.
    pub step_adaptation: f64,
    /// Spherical candidates are checked (and statistics updated) every this many steps.
    pub update_stats_every_k: usize,
    /// Uniform-noise draws tried per sample when no starting point is given.
    pub init_directions: usize,
    /// Linear-search steps of the blended-noise initialisation.
    pub init_steps: usize,
    /// Seed of the per-sample streams.
    pub seed: u64,
}

impl BoundaryConfig {
    /// The paper's Boundary attack (Section 4.2): 100000 iterations, Foolbox's other defaults.
    pub fn paper() -> Self {
        Self {
            steps: crate::paper::BOUNDARY_STEPS,
            spherical_step: 1e-2,
            source_step: 1e-2,
            source_step_convergence: 1e-7,
            step_adaptation: 1.5,
            update_stats_every_k: 10,
            init_directions: 1000,
            init_steps: 1000,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.update_stats_every_k == 0 || self.init_steps == 0 {
            return Err(config_err(
                "Boundary",
                "steps, update_stats_every_k and init_steps must be >= 1",
            ));
        }
        for (name, v) in [
            ("spherical_step", self.spherical_step),
            ("source_step", self.source_step),
            ("source_step_convergence", self.source_step_convergence),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(config_err(
                    "Boundary",
                    format!("{name} must be finite and > 0, found {v}"),
                ));
            }
        }
        if !(self.step_adaptation.is_finite() && self.step_adaptation > 1.0) {
            return Err(config_err(
                "Boundary",
                format!(
                    "step_adaptation must be > 1, found {}",
                    self.step_adaptation
                ),
            ));
        }
        Ok(())
    }
}

/// The Boundary attack; see the module docs.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// Configuration.
    pub config: BoundaryConfig,
    starting_points: Option<Tensor>,
}

impl Boundary {
    /// Creates the attack after validating `config`.
    pub fn new(config: BoundaryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            starting_points: None,
        })
    }

    /// Uses these adversarial images (shaped like the inputs) as starting points.
    pub fn with_starting_points(mut self, starting_points: Tensor) -> Self {
        self.starting_points = Some(starting_points);
        self
    }

    /// Blended uniform-noise initialisation (Foolbox's `LinearSearchBlendedUniformNoiseAttack`).
    fn init<M: Classifier + ?Sized>(
        &self,
        model: &M,
        x: &Tensor,
        shape: &[usize],
        criterion: &Criterion,
    ) -> Result<Tensor> {
        let (batch, dim) = x.dims2()?;
        let bounds = model.bounds();
        let mut rngs = sample_rngs(self.config.seed ^ 0x1f1f_1f1f, &x.reshape(shape)?)?;
        let mut found = vec![false; batch];
        let mut noise = x.clone();
        for _ in 0..self.config.init_directions {
            let cand = uniform_rows(&mut rngs, dim, bounds.min, bounds.max, x.device())?
                .to_dtype(x.dtype())?;
            let adv = criterion.is_adversarial(model, &cand.reshape(shape)?)?;
            let take: Vec<bool> = (0..batch).map(|i| adv[i] && !found[i]).collect();
            noise = where_rows(&take, &cand, &noise)?;
            for i in 0..batch {
                found[i] |= adv[i];
            }
            if found.iter().all(|&f| f) {
                break;
            }
        }
        // Linear search for the smallest adversarial blend x + t (noise - x).
        let mut best = noise.clone();
        let mut done: Vec<bool> = found.iter().map(|f| !f).collect();
        let n = self.config.init_steps;
        for s in 1..=n {
            if done.iter().all(|&d| d) {
                break;
            }
            let t = s as f64 / n as f64;
            let blend = ((x * (1.0 - t))? + (&noise * t)?)?;
            let adv = criterion.is_adversarial(model, &blend.reshape(shape)?)?;
            let take: Vec<bool> = (0..batch).map(|i| adv[i] && !done[i]).collect();
            best = where_rows(&take, &blend, &best)?;
            for i in 0..batch {
                done[i] |= adv[i];
            }
        }
        where_rows(&found, &best, x)
    }
}

impl Attack for Boundary {
    fn norm(&self) -> Norm {
        Norm::L2
    }
    fn name(&self) -> String {
        "boundary".into()
    }
}

/// Fixed-length per-sample queues of recent outcomes (Foolbox's `ArrayQueue`).
struct Stats {
    len: usize,
    queues: Vec<VecDeque<bool>>,
}

impl Stats {
    fn new(len: usize, n: usize) -> Self {
        Self {
            len,
            queues: vec![VecDeque::with_capacity(len); n],
        }
    }
    fn push(&mut self, v: &[bool]) {
        for (q, &b) in self.queues.iter_mut().zip(v) {
            if q.len() == self.len {
                q.pop_front();
            }
            q.push_back(b);
        }
    }
    fn full(&self, i: usize) -> bool {
        self.queues[i].len() == self.len
    }
    fn mean(&self, i: usize) -> f64 {
        let q = &self.queues[i];
        q.iter().filter(|&&b| b).count() as f64 / q.len().max(1) as f64
    }
    fn clear(&mut self, i: usize) {
        self.queues[i].clear();
    }
}

impl<M: Classifier + ?Sized> MinimizationAttack<M> for Boundary {
    fn run(
        &self,
        model: &M,
        xs: &Tensor,
        criterion: &Criterion,
        _early_stop: Option<f64>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        cfg.validate()?;
        let batch = check_batch(model, xs, criterion)?;
        let shape = xs.dims().to_vec();
        let (dtype, device) = (xs.dtype(), xs.device().clone());
        let bounds = model.bounds();
        let x = xs.flatten_from(1)?;
        let dim = x.dim(1)?;
        let start = match &self.starting_points {
            Some(sp) => {
                if sp.dims() != xs.dims() {
                    return Err(Error::Shape {
                        argument: "starting_points",
                        found: sp.dims().to_vec(),
                        expected: format!("the input shape {:?}", xs.dims()),
                    });
                }
                check_bounds(model, sp, "starting_points")?;
                sp.to_dtype(dtype)?.flatten_from(1)?
            }
            None => self.init(model, &x, &shape, criterion)?,
        };
        let start_adv = criterion.is_adversarial(model, &start.reshape(shape.as_slice())?)?;
        let mut best = where_rows(&start_adv, &start, &x)?;
        let mut rngs = sample_rngs(cfg.seed, xs)?;
        let mut spherical_steps = vec![cfg.spherical_step; batch];
        let mut source_steps = vec![cfg.source_step; batch];
        let mut stats_spherical = Stats::new(100, batch);
        let mut stats_step = Stats::new(30, batch);
        for step in 1..=cfg.steps {
            let converged: Vec<bool> = (0..batch)
                .map(|i| !start_adv[i] || source_steps[i] < cfg.source_step_convergence)
                .collect();
            if converged.iter().all(|&c| c) {
                break;
            }
            let unnormalized = (&x - &best)?;
            let source_norms_t = l2_rows(&unnormalized)?.clamp(1e-12, f64::MAX)?;
            let source_norms = to_vec_f64(&source_norms_t)?;
            let source_dirs = unnormalized.broadcast_div(&source_norms_t)?;
            // Proposals (Foolbox's draw_proposals), one Gaussian draw per sample.
            let eta = normal_rows(&mut rngs, dim, &device)?.to_dtype(dtype)?;
            let proj = (&eta * &source_dirs)?.sum_keepdim(1)?;
            let eta = (eta - source_dirs.broadcast_mul(&proj)?)?;
            let eta_norms = l2_rows(&eta)?.clamp(1e-12, f64::MAX)?;
            let scale: Vec<f64> = (0..batch)
                .map(|i| spherical_steps[i] * source_norms[i])
                .collect();
            let eta = eta
                .broadcast_div(&eta_norms)?
                .broadcast_mul(&column(&scale, dtype, &device)?)?;
            let dist: Vec<f64> = spherical_steps
                .iter()
                .map(|s| (s * s + 1.0).sqrt())
                .collect();
            let directions = (eta - &unnormalized)?;
            let spherical =
                bounds.clip(&(&x + directions.broadcast_div(&column(&dist, dtype, &device)?)?)?)?;
            let new_dirs = (&x - &spherical)?;
            let new_norms = to_vec_f64(&l2_rows(&new_dirs)?)?;
            let lengths: Vec<f64> = (0..batch)
                .map(|i| {
                    let l = (source_steps[i] * source_norms[i] + new_norms[i] - source_norms[i])
                        .max(0.0);
                    l / new_norms[i].max(1e-12)
                })
                .collect();
            let candidates = bounds.clip(
                &(&spherical + new_dirs.broadcast_mul(&column(&lengths, dtype, &device)?)?)?,
            )?;

            let is_adv = criterion.is_adversarial(model, &candidates.reshape(shape.as_slice())?)?;
            let cand_dist = to_vec_f64(&l2_rows(&(&x - &candidates)?)?)?;
            let accept: Vec<bool> = (0..batch)
                .map(|i| !converged[i] && is_adv[i] && cand_dist[i] < source_norms[i])
                .collect();
            best = where_rows(&accept, &candidates, &best)?;

            if step % cfg.update_stats_every_k == 0 {
                let sph_adv =
                    criterion.is_adversarial(model, &spherical.reshape(shape.as_slice())?)?;
                stats_spherical.push(&sph_adv);
                stats_step.push(&is_adv);
                let a = cfg.step_adaptation;
                for i in 0..batch {
                    if stats_spherical.full(i) {
                        let p = stats_spherical.mean(i);
                        if p > 0.5 {
                            spherical_steps[i] *= a;
                            source_steps[i] *= a;
                            stats_spherical.clear(i);
                        } else if p < 0.2 {
                            spherical_steps[i] /= a;
                            source_steps[i] /= a;
                            stats_spherical.clear(i);
                        }
                    }
                    if stats_step.full(i) {
                        let p = stats_step.mean(i);
                        if p > 0.25 {
                            source_steps[i] *= a;
                            stats_step.clear(i);
                        } else if p < 0.1 {
                            source_steps[i] /= a;
                            stats_step.clear(i);
                        }
                    }
                }
            }
        }
        Ok(best.reshape(shape)?)
    }
}

/// Picks, per sample, a random image of `pool` that the model classifies as another class than
/// the label (untargeted) or as the target (targeted): the paper's Boundary initialisation.
///
/// `pool_predictions[j]` is the model's prediction on `pool[j]`. The choice for sample `i` is
/// drawn from the stream of [`crate::seeding::sample_seed`]`(seed, xs[i])`, so it does not
/// depend on the batch.
///
/// # Shapes
/// `xs`: `(batch, ...)`; `pool`: `(n_pool, ...)` with the same trailing dims; returns `(batch, ...)`.
pub fn starting_points_from_pool(
    xs: &Tensor,
    criterion: &Criterion,
    pool: &Tensor,
    pool_predictions: &[u32],
    seed: u64,
) -> Result<Tensor> {
    let batch = xs.dim(0)?;
    if criterion.len() != batch {
        return Err(Error::LabelCount {
            expected: batch,
            found: criterion.len(),
        });
    }
    if pool.rank() != xs.rank() || pool.dims()[1..] != xs.dims()[1..] {
        return Err(Error::Shape {
            argument: "pool",
            found: pool.dims().to_vec(),
            expected: format!("(n_pool, {:?}) like xs", &xs.dims()[1..]),
        });
    }
    if pool_predictions.len() != pool.dim(0)? {
        return Err(Error::Shape {
            argument: "pool_predictions",
            found: vec![pool_predictions.len()],
            expected: format!("({},) one per pool image", pool.dim(0)?),
        });
    }
    let seeds = sample_seeds(seed, xs)?;
    let mut picks = Vec::with_capacity(batch);
    for (i, &sample_seed) in seeds.iter().enumerate() {
        let c = criterion.classes()[i];
        let ok: Vec<usize> = pool_predictions
            .iter()
            .enumerate()
            .filter(|(_, &p)| {
                if criterion.is_targeted() {
                    p == c
                } else {
                    p != c
                }
            })
            .map(|(j, _)| j)
            .collect();
        if ok.is_empty() {
            let wanted = if criterion.is_targeted() {
                format!("class {c}")
            } else {
                format!("a class other than {c}")
            };
            return Err(Error::NoStartingPoint { index: i, wanted });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed);
        picks.push(ok[rng.random_range(0..ok.len())] as u32);
    }
    let ids = host::new(picks.as_slice(), pool.device())?;
    Ok(pool.index_select(&ids, 0)?)
}
