//! Evaluate your own Candle model on Fashion-MNIST with the paper's Table 2 attack suite, with a
//! resumable journal per (model, attack), and compare it with a second model by McNemar's test.
//!
//! ```sh
//! cargo run --release -p eabs-eval --example own_model -- results/own-model 100
//! ```
//!
//! The two "models" are nearest-class-mean classifiers (a linear model, written here as any
//! `Differentiable` of yours would be): one on 1000 training images, one on 100. Kill the run and
//! start it again: it resumes at the first unfinished batch.

use anyhow::Result;
use candle_core::{Device, Tensor};
use eabs_core::{Bounds, Classifier, Differentiable};
use eabs_eval::report::{add_all_row, build, to_markdown};
use eabs_eval::{DatasetKind, Experiment, ModelColumn, Norm, Outcomes, Preset, RunSpec};
use std::path::Path;

/// Your model: anything with logits. Gradients default to Candle's autodiff.
struct ClassMeans {
    w: Tensor, // (784, 10): the class means
    b: Tensor, // (10,): -|mean|^2 / 2, so argmax = nearest mean
}

impl Classifier for ClassMeans {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        10
    }
    fn device(&self) -> &Device {
        self.w.device()
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.flatten_from(1)?.matmul(&self.w)?.broadcast_add(&self.b)
    }
}
impl Differentiable for ClassMeans {}

/// Fits the class means on the first `n` training images.
fn fit(exp: &Experiment<'_>, n: usize) -> Result<ClassMeans> {
    let idx: Vec<usize> = (0..n).collect();
    let xs = exp
        .train
        .images_tensor(&idx, &exp.device)?
        .flatten_from(1)?;
    let labels = &exp.train.labels;
    let onehot: Vec<f32> = (0..n)
        .flat_map(|i| (0..10).map(move |c| f32::from(u8::from(usize::from(labels[i]) == c))))
        .collect();
    let onehot = Tensor::from_vec(onehot, (n, 10), &exp.device)?;
    let counts = onehot.sum(0)?.clamp(1f32, f32::MAX)?;
    let w = xs.t()?.matmul(&onehot)?.broadcast_div(&counts)?;
    let b = (w.sqr()?.sum(0)? * -0.5)?;
    Ok(ClassMeans { w, b })
}

/// Runs the suite on both models below `out` with `samples` test images; returns the table.
pub fn run(out: &Path, samples: usize) -> Result<String> {
    let mut spec = RunSpec::new(Preset::Smoke, 0, out, &out.join("checkpoints"));
    spec.samples = Some(samples);
    let sizes = spec.eval_sizes();
    let mut exp = Experiment::open(&spec, "own-model", DatasetKind::FashionMnist, samples)?;
    let (mut outcomes, mut names) = (Outcomes::new(), Vec::new());
    for (name, n) in [("Means-1000", 1000), ("Means-100", 100)] {
        let model = Box::new(fit(&exp, n)?);
        let column = ModelColumn::custom(&exp, name, model, serde_json::json!({ "fit": n }));
        exp.table_protocol(&column, &sizes, &mut outcomes)?;
        names.push(name.to_string());
    }
    add_all_row(&mut outcomes, Norm::Linf, &names)?;
    add_all_row(&mut outcomes, Norm::L2, &names)?;
    let rows = eabs_eval::targets::table::table_rows(exp.dataset);
    let subset = exp.subset.clone();
    let (provenance, _, _lock) = exp.finish();
    let report = build(
        "own-model",
        "fashion-mnist",
        &names,
        subset,
        &rows,
        &outcomes,
        &|_, _| None,
        serde_json::json!({ "sizes": sizes }),
        provenance,
    )?;
    Ok(to_markdown(&report, "Two models under Table 2's attacks"))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "results/own-model".into());
    let samples = args.next().map_or(Ok(100), |s| s.parse())?;
    println!("{}", run(Path::new(&out), samples)?);
    Ok(())
}
