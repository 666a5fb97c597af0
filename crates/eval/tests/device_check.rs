//! `cargo xtask gpu-check`'s CPU half at CI sizes: the CPU's stock-op path (the code path CUDA
//! runs) against our kernels and fast engine, on every check. Its own test binary, because
//! `eabs_kernels::set_stock_ops` is process-wide: a test running beside it in the same process
//! would see the switch flip under it.

use anyhow::Result;
use candle_core::{Device, Tensor};
use eabs_eval::device_check::{
    compare_predictions, compare_tensors, run, DeviceCheckReport, DeviceCheckSpec, SizeChoice,
    Tolerance,
};
use eabs_eval::DeviceChoice;

#[test]
fn cpu_half_at_ci_sizes_passes_and_reports_everything() -> Result<()> {
    let spec = DeviceCheckSpec {
        device: DeviceChoice::Cpu,
        sizes: SizeChoice::Ci,
        seed: 0,
        command: "test".into(),
    };
    let report = run(&spec)?;
    let failed: Vec<String> = report.failures().iter().map(|c| format!("{c:?}")).collect();
    assert!(
        failed.is_empty(),
        "{}\n{}",
        report.summary(),
        failed.join("\n")
    );
    assert!(report.passed);
    // The stock-op switch is back off: the reference path is the process default again.
    assert!(!eabs_kernels::stock_ops());

    let (checks, timings) = DeviceCheckReport::expected_names();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, checks, "check names");
    let names: Vec<&str> = report.timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, timings, "timing names");
    for c in &report.checks {
        assert!(c.n_values > 0, "{}: nothing compared", c.name);
        assert!(
            !c.tolerance.why.is_empty(),
            "{}: no reason for the tolerance",
            c.name
        );
    }
    for t in &report.timings {
        assert!(t.seconds_min > 0.0 && t.seconds_min.is_finite(), "{t:?}");
        assert!(t.seconds_mean >= t.seconds_min, "{t:?}");
    }
    // The two paths do differ (otherwise the check compares a path with itself): some layer
    // shows a rounding difference.
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name.starts_with("layer/") && c.max_abs_diff > 0.0),
        "every layer agrees bit for bit: is the subject running the stock ops?"
    );
    assert_eq!(report.device.choice, "cpu");
    assert!(report.subject.contains("stock ops"), "{}", report.subject);
    assert_eq!(report.utc.len(), "2026-01-01T00:00:00Z".len());

    // The JSON round-trips.
    let json = serde_json::to_string_pretty(&report)?;
    let back: DeviceCheckReport = serde_json::from_str(&json)?;
    assert_eq!(back.checks, report.checks);
    assert_eq!(back.timings, report.timings);
    assert_eq!(back.sizes, report.sizes);
    assert_eq!(serde_json::to_string_pretty(&back)?, json);

    // Written where the caller says, atomically.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gpu-check").join("cpu-ci.json");
    eabs_eval::write_json(&path, &report)?;
    let read: DeviceCheckReport = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_eq!(read.checks.len(), report.checks.len());
    Ok(())
}

/// A perturbed subject fails: the checks can fail.
#[test]
fn a_perturbed_subject_fails() -> Result<()> {
    let dev = Device::Cpu;
    let reference = Tensor::new(&[[1.0f32, -2.0, 3.0], [0.5, 0.25, -4.0]], &dev)?;
    let tol = Tolerance::new(1e-6, 1e-5, "test");
    let same = compare_tensors(
        "same",
        &[("x", &reference, &reference.clone())],
        tol.clone(),
    )?;
    assert!(same.passed && same.max_abs_diff == 0.0, "{same:?}");

    // One value off by 1e-3: beyond 1e-6 + 1e-5 * 4.
    let perturbed = (&reference + Tensor::new(&[[0f32, 0.0, 1e-3], [0.0, 0.0, 0.0]], &dev)?)?;
    let c = compare_tensors("perturbed", &[("x", &reference, &perturbed)], tol.clone())?;
    assert!(!c.passed, "{c:?}");
    assert_eq!(c.n_mismatched, 1);
    assert!((c.max_abs_diff - 1e-3).abs() < 1e-6, "{c:?}");
    assert!(c.worst_fraction_of_bound > 1.0);

    // Within rounding passes; one mismatch passes only where the tolerance allows a share.
    let rounded = (&reference * (1.0 + 1e-7))?;
    assert!(compare_tensors("rounded", &[("x", &reference, &rounded)], tol.clone())?.passed);
    let lenient = tol.clone().allowing(0.2);
    assert!(compare_tensors("lenient", &[("x", &reference, &perturbed)], lenient)?.passed);

    // Judged by the relative L2 error: the one value off by 1e-3 is 1e-3 / ||x|| = 1.8e-4.
    let l2 = compare_tensors(
        "l2",
        &[("x", &reference, &perturbed)],
        tol.clone().relative_l2(1e-3),
    )?;
    assert!(
        l2.passed && (l2.relative_l2 - 1e-3 / 30.5f64.sqrt()).abs() < 1e-6,
        "{l2:?}"
    );
    let l2 = compare_tensors(
        "l2",
        &[("x", &reference, &perturbed)],
        tol.clone().relative_l2(1e-4),
    )?;
    assert!(!l2.passed, "{l2:?}");

    // Non-finite values and shape changes fail.
    let nan = Tensor::new(&[[1.0f32, f32::NAN, 3.0], [0.5, 0.25, -4.0]], &dev)?;
    let c = compare_tensors("nan", &[("x", &reference, &nan)], tol.clone())?;
    assert!(!c.passed && c.n_non_finite == 1, "{c:?}");
    let c = compare_tensors("shape", &[("x", &reference, &reference.t()?)], tol.clone())?;
    assert!(!c.passed, "{c:?}");

    // Predictions: a swapped argmin fails, unless the reference itself has a tie there.
    let losses = Tensor::new(&[[0.1f32, 0.5, 0.9], [0.7, 0.2, 0.3]], &dev)?;
    let swapped = Tensor::new(&[[0.6f32, 0.5, 0.9], [0.7, 0.2, 0.3]], &dev)?;
    let c = compare_predictions("preds", &losses, &swapped, tol.clone())?;
    assert!(!c.passed && c.n_mismatched == 1, "{c:?}");
    let tied = Tensor::new(&[[0.1f32, 0.1, 0.9], [0.7, 0.2, 0.3]], &dev)?;
    let nudged = Tensor::new(&[[0.1f32, 0.099_999, 0.9], [0.7, 0.2, 0.3]], &dev)?;
    let c = compare_predictions("tie", &tied, &nudged, tol)?;
    assert!(c.passed, "{c:?}");
    assert!(
        c.note.is_some(),
        "a differing prediction in a tie is noted: {c:?}"
    );
    Ok(())
}
