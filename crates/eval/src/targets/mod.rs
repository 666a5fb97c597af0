//! The paper's tables and figures, each a small configuration of [`crate::Experiment`]:
//! which models (columns), which rows, and how the result is rendered.
//!
//! | target | module | models | rows |
//! |---|---|---|---|
//! | Tables 1-4 | [`table`] | CNN, Adv-L_inf, Adv-L_2, ABS, E-ABS | clean, the 8 attacks, ALL per norm |
//! | Table 5 | [`ablation`] | the 8 A/D/V variants (4 trained models x 2 inferences) | clean, PGD per norm |
//! | Figure 3 | [`figure3`] | the tables' five | PGD per norm over an epsilon grid |
//! | Figures 4-5 | [`examples`] | E-ABS | PGD-L_2 on the first columns, images kept |
//! | Section 5 | [`gradient_free`] | CNN (control), E-ABS | estimated-gradient PGD, Boundary |

pub mod ablation;
pub mod examples;
pub mod figure3;
pub mod gradient_free;
pub mod table;
