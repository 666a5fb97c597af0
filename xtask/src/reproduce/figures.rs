//! The drawn half of Figures 3-5: `eabs-eval` computes the curves and the adversarial images;
//! this module draws the charts (SVG and PNG) and the image grids, writes them beside the data,
//! and checks them in `verify-results`.

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use eabs_datasets::DatasetKind;
use eabs_eval::targets::examples::{self, ExamplesReport};
use eabs_eval::targets::figure3::{self, fmt_eps, x_axis, Figure3Report};
use eabs_eval::RunSpec;
use std::path::{Path, PathBuf};

use super::plot::{self, GridLayout, LineChart, Series};

/// The chart of panel `panel_idx` of a Figure 3 report.
pub fn chart(report: &Figure3Report, panel_idx: usize, kind: DatasetKind) -> LineChart {
    let panel = &report.panels[panel_idx];
    let (scale, x_label) = x_axis(kind, &panel.norm);
    let (letter, title) = if panel.norm == "linf" {
        ("a", "L∞")
    } else {
        ("b", "L₂")
    };
    let last = panel.epsilons.last().copied().unwrap_or(1.0);
    LineChart {
        title: format!(
            "Figure 3({letter}): accuracy under {title} PGD, {} ({} samples)",
            report.dataset,
            report.samples.len()
        ),
        x_label,
        y_label: "accuracy (%)".into(),
        x_range: (0.0, last * scale),
        // A little room around 0% and 100%, so markers there are not cut in half.
        y_range: (-3.0, 103.0),
        series: panel
            .curves
            .iter()
            .map(|c| Series {
                name: c.model.clone(),
                points: c
                    .points
                    .iter()
                    .map(|p| (p.epsilon * scale, p.percent))
                    .collect(),
            })
            .collect(),
        marker: Some((
            panel.table_epsilon * scale,
            format!("table ε = {}", fmt_eps(panel.table_epsilon, scale)),
        )),
    }
}

/// Writes a Figure 3 report's charts (`fig3-<norm>.svg` and `.png`) into `dir`.
pub fn write_charts(dir: &Path, report: &Figure3Report, kind: DatasetKind) -> Result<()> {
    for (i, panel) in report.panels.iter().enumerate() {
        let c = chart(report, i, kind);
        eabs_eval::write_text(&dir.join(format!("fig3-{}.svg", panel.norm)), &c.to_svg()?)?;
        eabs_eval::provenance::write_atomic(
            &dir.join(format!("fig3-{}.png", panel.norm)),
            &c.to_png()?,
        )?;
    }
    Ok(())
}

/// `reproduce fig3`: the curves, then the charts, then the data files.
pub fn figure3(spec: &RunSpec) -> Result<PathBuf> {
    let run = figure3::run(spec, plot::font().is_some())?;
    write_charts(&run.out_dir, &run.report, run.dataset)?;
    figure3::write_data(&run.out_dir, &run.report, &run.outcomes)?;
    Ok(run.out_dir)
}

/// Layout of the Figures 4-5 grid: 4x nearest-neighbour, 2-pixel separators, a 6-pixel
/// success bar.
pub fn layout(shape: (usize, usize, usize)) -> GridLayout {
    GridLayout {
        shape,
        scale: 4,
        sep: 2,
        mark_height: 6,
    }
}

/// Bar colour under a column whose attack succeeded (tab10 red) or failed (tab10 green).
pub fn mark(success: bool) -> [u8; 3] {
    if success {
        [214, 39, 40]
    } else {
        [44, 160, 44]
    }
}

/// The grid: clean images above their adversarials, a success bar under each column.
pub fn grid_png(report: &ExamplesReport, clean: &Tensor, adv: &Tensor) -> Result<Vec<u8>> {
    let n = report.columns.len();
    let clean = clean.flatten_from(1)?.to_vec2::<f32>()?;
    let adv = adv.flatten_from(1)?.to_vec2::<f32>()?;
    ensure!(
        clean.len() == n && adv.len() == n,
        "{} clean and {} adversarial images for {n} columns",
        clean.len(),
        adv.len()
    );
    let rows: Vec<Vec<&[f32]>> = vec![
        clean.iter().map(|v| v.as_slice()).collect(),
        adv.iter().map(|v| v.as_slice()).collect(),
    ];
    let marks: Vec<[u8; 3]> = report.columns.iter().map(|c| mark(c.success)).collect();
    plot::encode_png(&plot::image_grid(&rows, layout(report.shape), &marks)?)
}

/// Writes a Figures 4-5 run: the grid image, then the data files.
pub fn write_examples(
    dir: &Path,
    report: &ExamplesReport,
    clean: &Tensor,
    adv: &Tensor,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eabs_eval::provenance::write_atomic(&dir.join(&report.image), &grid_png(report, clean, adv)?)?;
    examples::write_data(dir, report, clean, adv)
}

/// `reproduce fig4` / `fig5`.
pub fn examples(figure: &str, default: DatasetKind, spec: &RunSpec) -> Result<PathBuf> {
    let run = examples::run(figure, default, spec)?;
    write_examples(&run.out_dir, &run.report, &run.clean, &run.adversarial)?;
    Ok(run.out_dir)
}

/// Figure 3's charts: one polyline per model, one vertex per epsilon, PNGs of the chart size.
fn verify_charts(dir: &Path, report: &Figure3Report) -> Result<()> {
    for panel in &report.panels {
        verify_chart(
            dir,
            &format!("fig3-{}", panel.norm),
            &report.models,
            panel.epsilons.len(),
        )?;
    }
    Ok(())
}

/// `<stem>.svg` has one polyline of `n_points` points per model, in the palette's colours in
/// order, and `<stem>.png` is a chart-sized image.
fn verify_chart(dir: &Path, stem: &str, models: &[String], n_points: usize) -> Result<()> {
    let svg_path = dir.join(format!("{stem}.svg"));
    let svg = std::fs::read_to_string(&svg_path)
        .with_context(|| format!("reading {}", svg_path.display()))?;
    let lines = plot::svg_polylines(&svg);
    for (i, m) in models.iter().enumerate() {
        let (r, g, b) = plot::PALETTE[i % plot::PALETTE.len()];
        let colour = format!("#{r:02X}{g:02X}{b:02X}");
        let mine: Vec<usize> = lines
            .iter()
            .filter(|(c, _)| *c == colour)
            .map(|(_, k)| *k)
            .collect();
        ensure!(
            mine == [n_points],
            "{}: {m}'s curve should be one polyline of {n_points} points, found {mine:?}",
            svg_path.display(),
        );
    }
    let png_path = dir.join(format!("{stem}.png"));
    let img = image::open(&png_path).with_context(|| format!("decoding {}", png_path.display()))?;
    ensure!(
        (img.width(), img.height()) == plot::CHART_SIZE,
        "{}: {}x{} pixels, expected {:?}",
        png_path.display(),
        img.width(),
        img.height(),
        plot::CHART_SIZE
    );
    Ok(())
}

/// Points of a ledger curve: 0 to the table's epsilon in 40 steps.
const LEDGER_POINTS: usize = 41;

/// The accuracy-vs-epsilon charts of a table's per-sample ledger (issue 14, item 5), one
/// curve per model and a chart per norm, drawn from `ledger.json` into `ledger-<norm>.svg` and
/// `.png`: at each epsilon up to the table's, the share of samples no attack broke within it.
/// Returns the charts' stems.
pub fn ledger_charts(dir: &Path) -> Result<Vec<String>> {
    let (report, ledger, curves) = ledger_curves(dir)?;
    let mut stems = Vec::new();
    for (norm, eps, grid, series) in curves {
        let title = if norm == "linf" { "L∞" } else { "L₂" };
        let chart = LineChart {
            title: format!(
                "{}: accuracy under the per-sample worst case, {title} ({} samples)",
                report.table.replace("table", "Table "),
                report.samples.len()
            ),
            x_label: format!("{title} ε"),
            y_label: "accuracy (%)".into(),
            x_range: (0.0, eps),
            y_range: (-3.0, 103.0),
            series: series
                .into_iter()
                .map(|(name, acc)| Series {
                    name,
                    points: grid.iter().copied().zip(acc).collect(),
                })
                .collect(),
            marker: Some((eps, format!("table ε = {eps}"))),
        };
        let stem = format!("ledger-{norm}");
        eabs_eval::write_text(&dir.join(format!("{stem}.svg")), &chart.to_svg()?)?;
        eabs_eval::provenance::write_atomic(&dir.join(format!("{stem}.png")), &chart.to_png()?)?;
        stems.push(stem);
    }
    drop(ledger);
    Ok(stems)
}

type Curves = Vec<(String, f64, Vec<f64>, Vec<(String, Vec<f64>)>)>;

/// A table folder's report, ledger and, per norm: the table's epsilon, the grid and each
/// model's curve.
fn ledger_curves(
    dir: &Path,
) -> Result<(eabs_eval::TableReport, eabs_eval::ledger::Ledger, Curves)> {
    let report: eabs_eval::TableReport = eabs_eval::verify::read(&dir.join("results.json"))?;
    let ledger: eabs_eval::ledger::Ledger = eabs_eval::verify::read(&dir.join("ledger.json"))?;
    let mut curves = Vec::new();
    for norm in ["linf", "l2"] {
        let Some(eps) = report
            .rows
            .iter()
            .find(|r| r.norm == norm)
            .map(|r| r.epsilon)
        else {
            continue;
        };
        let grid: Vec<f64> = (0..LEDGER_POINTS)
            .map(|i| eps * i as f64 / (LEDGER_POINTS - 1) as f64)
            .collect();
        let series = report
            .models
            .iter()
            .map(|m| {
                let worst = ledger
                    .get(m)
                    .and_then(|p| p.get(norm))
                    .with_context(|| format!("ledger.json has no {norm} entries for {m}"))?;
                Ok((m.clone(), eabs_eval::ledger::accuracy_curve(worst, &grid)))
            })
            .collect::<Result<Vec<_>>>()?;
        curves.push((norm.to_string(), eps, grid, series));
    }
    Ok((report, ledger, curves))
}

/// `verify-results` for a table's ledger charts, where drawn: one curve per model of the
/// right length, and each curve's end equal to the worst-case robust count of `results.json`.
pub fn verify_ledger_charts(dir: &Path) -> Result<usize> {
    if !dir.join("ledger.json").is_file() {
        return Ok(0);
    }
    let (report, _, curves) = ledger_curves(dir)?;
    let mut n = 0;
    for (norm, _, _, series) in curves {
        let stem = format!("ledger-{norm}");
        if !dir.join(format!("{stem}.svg")).is_file() {
            continue;
        }
        verify_chart(dir, &stem, &report.models, LEDGER_POINTS)?;
        for (m, acc) in &series {
            let wc = report
                .worst_case
                .iter()
                .find(|w| &w.model == m && w.norm == norm)
                .with_context(|| format!("results.json has no worst case of {m} in {norm}"))?;
            let end = acc.last().copied().unwrap_or(0.0);
            let expect = 100.0 * wc.robust as f64 / wc.total.max(1) as f64;
            ensure!(
                (end - expect).abs() < 1e-9,
                "{stem}: {m}'s curve ends at {end}%, the worst case is {expect}%"
            );
        }
        n += 1;
    }
    Ok(n)
}

/// `verify-results` for a figure folder: the data (`eabs-eval`'s checks) and the images drawn
/// from it. Returns a one-line summary.
pub fn verify(dir: &Path) -> Result<String> {
    let path = dir.join("results.json");
    let json: serde_json::Value = figure3::read(&path)?;
    match json.get("figure").and_then(|f| f.as_str()) {
        Some("fig3") => {
            let report = figure3::verify_data(dir)?;
            verify_charts(dir, &report)?;
            Ok(format!(
                "{}: complete and consistent (Figure 3, {} models, {} + {} epsilons, {} samples)",
                dir.display(),
                report.models.len(),
                report.panels[0].epsilons.len(),
                report.panels[1].epsilons.len(),
                report.samples.len()
            ))
        }
        Some("fig4" | "fig5") => {
            let (r, clean, adv) = examples::verify_data(dir)?;
            let png_path = dir.join(&r.image);
            let png = image::open(&png_path)
                .with_context(|| format!("decoding {}", png_path.display()))?
                .to_rgb8();
            let redrawn = image::load_from_memory(&grid_png(&r, &clean, &adv)?)?.to_rgb8();
            ensure!(
                png == redrawn,
                "{} is not the grid of the saved images ({}x{} vs {}x{} pixels, or other pixels)",
                png_path.display(),
                png.width(),
                png.height(),
                redrawn.width(),
                redrawn.height()
            );
            Ok(format!(
                "{}: complete and consistent ({}, {} columns, {} attacks succeeded)",
                dir.display(),
                r.figure,
                r.columns.len(),
                r.columns.iter().filter(|c| c.success).count()
            ))
        }
        other => bail!(
            "{}: unknown figure {other:?} (expected fig3, fig4 or fig5)",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure3_outputs_verify_and_a_lost_curve_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, outcomes) = figure3::synthetic()?;
        let kind = DatasetKind::FashionMnist;
        write_charts(dir.path(), &report, kind)?;
        figure3::write_data(dir.path(), &report, &outcomes)?;
        let summary = verify(dir.path())?;
        assert!(summary.contains("Figure 3, 2 models"), "{summary}");
        let svg_path = dir.path().join("fig3-linf.svg");
        let svg = std::fs::read_to_string(&svg_path)?;
        std::fs::write(&svg_path, svg.replace("#1F77B4", "#000001"))?;
        let err = verify(dir.path()).expect_err("a chart without the CNN curve must fail");
        assert!(format!("{err:#}").contains("CNN's curve"), "{err:#}");
        Ok(())
    }

    #[test]
    fn examples_grid_is_drawn_and_an_edited_png_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, clean, adv) = examples::synthetic()?;
        write_examples(dir.path(), &report, &clean, &adv)?;
        verify(dir.path())?;
        // The grid: 2 rows x 2 columns of 8x8 cells, separators, the success bars.
        let png = image::open(dir.path().join("fig4.png"))?.to_rgb8();
        assert_eq!((png.width(), png.height()), layout((1, 2, 2)).size(2, 2));
        let bar_y = png.height() - 2 - 3;
        assert_eq!(png.get_pixel(3, bar_y).0, mark(true));
        assert_eq!(png.get_pixel(2 + 8 + 2 + 3, bar_y).0, mark(false));
        // The adversarial's first pixel (row 1, column 0) is 0.3 -> 77.
        assert_eq!(png.get_pixel(2, 2 + 8 + 2).0, [77; 3]);
        let mut img = png.clone();
        img.put_pixel(2, 2, image::Rgb([1, 2, 3]));
        img.save(dir.path().join("fig4.png"))?;
        let err = verify(dir.path()).expect_err("an edited PNG must fail");
        assert!(format!("{err:#}").contains("not the grid"), "{err:#}");
        Ok(())
    }
}
