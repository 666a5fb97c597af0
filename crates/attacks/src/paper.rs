//! The evaluation settings of Ju & Wagner 2020, Section 4.2 and Tables 1-4: data sets, their
//! epsilons and PGD random starts.

use serde::{Deserialize, Serialize};

/// The four data sets of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dataset {
    /// MNIST (Table 1).
    Mnist,
    /// Fashion-MNIST (Table 2).
    FashionMnist,
    /// SVHN (Table 4).
    Svhn,
    /// SuperTraffic-10 (Table 3).
    SuperTraffic10,
}

/// L_inf epsilon for MNIST (Table 1).
pub const LINF_EPSILON_MNIST: f64 = 0.3;
/// L_inf epsilon for Fashion-MNIST (Table 2).
pub const LINF_EPSILON_FASHION_MNIST: f64 = 0.1;
/// L_inf epsilon for SVHN and SuperTraffic-10 (Tables 3 and 4).
pub const LINF_EPSILON_COLOR: f64 = 8.0 / 255.0;
/// L_2 epsilon of every data set (Tables 1-4).
pub const L2_EPSILON: f64 = 1.5;
/// Samples per expectation-over-transformation average (Section 4.2; Appendix B, Table 6).
pub const EOT_SAMPLES: usize = 5;
/// Iterations of the Boundary attack (Section 4.2).
pub const BOUNDARY_STEPS: usize = 100_000;

impl Dataset {
    /// L_inf epsilon of the paper's tables.
    pub fn linf_epsilon(&self) -> f64 {
        match self {
            Dataset::Mnist => LINF_EPSILON_MNIST,
            Dataset::FashionMnist => LINF_EPSILON_FASHION_MNIST,
            Dataset::Svhn | Dataset::SuperTraffic10 => LINF_EPSILON_COLOR,
        }
    }

    /// L_2 epsilon of the paper's tables (1.5 everywhere).
    pub fn l2_epsilon(&self) -> f64 {
        L2_EPSILON
    }

    /// Epsilon for a norm.
    pub fn epsilon(&self, norm: crate::Norm) -> f64 {
        match norm {
            crate::Norm::Linf => self.linf_epsilon(),
            crate::Norm::L2 => self.l2_epsilon(),
        }
    }

    /// PGD random starts (Section 4.2): 5 for MNIST and Fashion-MNIST, 20 for SVHN and
    /// SuperTraffic-10 (Appendix B.2, Table 7).
    pub fn pgd_random_starts(&self) -> usize {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => 5,
            Dataset::Svhn | Dataset::SuperTraffic10 => 20,
        }
    }
}
