//! Drawing for the figure targets: line charts (Figure 3) with plotters as SVG and PNG, image
//! grids (Figures 4 and 5) with the `image` crate, PNG encoding, and the `verify-results`
//! dispatch for figure directories.
//!
//! # Fonts
//! plotters is built with its `ab_glyph` feature only (pure Rust: no fontconfig, freetype or
//! system font lookup, which the `ttf` feature would need at build and run time). Text then needs
//! a TrueType font registered at run time; we load DejaVu Sans from the usual system locations,
//! or the file named by `EABS_FONT` (`EABS_FONT=none`: no font). Without one, charts are drawn without text (curves, markers,
//! grid and the epsilon marker only), the callers say so in `figure.md`, and every number is in
//! `results.json` anyway. The SVG needs the font only to lay text out; viewers render it with
//! their own `sans-serif`.

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::{ImageEncoder, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// DatasetKind name the loaded font is registered under (plotters' default family).
const FONT_FAMILY: &str = "sans-serif";

/// Where DejaVu Sans lives on common Linux distributions and macOS (Homebrew).
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/opt/homebrew/share/fonts/DejaVuSans.ttf",
];

/// Size of a chart in pixels (SVG user units and PNG pixels).
pub const CHART_SIZE: (u32, u32) = (720, 480);

/// Colours of the series, in order (matplotlib's `tab10`, which stays distinguishable for the
/// common colour-vision deficiencies in its first five entries).
pub const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
];

/// The font used for chart text, registered with plotters on first use; `None` when no font
/// file was found (charts are then drawn without text).
pub fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        if std::env::var_os("EABS_FONT").is_some_and(|f| f.is_empty() || f == "none") {
            return None;
        }
        let candidates = std::env::var_os("EABS_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).is_ok() {
                return Some(path);
            }
            tracing::warn!(font = %path.display(), "not a usable TrueType font, skipped");
        }
        tracing::warn!(
            "no TrueType font found (set EABS_FONT to a .ttf file); charts are drawn without text"
        );
        None
    })
    .as_deref()
}

/// One curve of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points, drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: one line with markers per series, a legend, axis labels, and an optional
/// vertical dashed marker line.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Caption above the chart.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Range of the x axis.
    pub x_range: (f64, f64),
    /// Range of the y axis.
    pub y_range: (f64, f64),
    /// The curves, coloured by [`PALETTE`] in order.
    pub series: Vec<Series>,
    /// A vertical dashed line at `x` with its legend text (e.g. the table's epsilon).
    pub marker: Option<(f64, String)>,
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotters: {e}")
}

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

impl LineChart {
    /// Renders the chart as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        Ok(svg)
    }

    /// Renders the chart as a PNG file's bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let (w, h) = CHART_SIZE;
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, CHART_SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        let img = RgbImage::from_raw(w, h, buf).context("chart buffer of the wrong size")?;
        encode_png(&img)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        ensure!(
            self.x_range.0 < self.x_range.1 && self.y_range.0 < self.y_range.1,
            "empty chart ranges {:?} x {:?}",
            self.x_range,
            self.y_range
        );
        let text = font().is_some();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut builder = ChartBuilder::on(root);
        builder.margin(16);
        if text {
            builder
                .caption(&self.title, (FONT_FAMILY, 20))
                .x_label_area_size(44)
                .y_label_area_size(56);
        }
        let mut chart = builder
            .build_cartesian_2d(
                self.x_range.0..self.x_range.1,
                self.y_range.0..self.y_range.1,
            )
            .map_err(plot_err)?;
        if text {
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .y_desc(self.y_label.as_str())
                .label_style((FONT_FAMILY, 14))
                .axis_desc_style((FONT_FAMILY, 15))
                .light_line_style(WHITE.mix(0.0))
                .x_label_formatter(&|x| trim_number(*x))
                .y_label_formatter(&|y| trim_number(*y))
                .draw()
                .map_err(plot_err)?;
        } else {
            // The frame and a horizontal grid at round values, which need no text.
            let (x0, x1) = self.x_range;
            let (y0, y1) = self.y_range;
            let grid = BLACK.mix(0.15);
            let step = nice_step((y1 - y0) / 10.0);
            let mut y = (y0 / step).ceil() * step;
            while y <= y1 {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x0, y), (x1, y)],
                        grid,
                    )))
                    .map_err(plot_err)?;
                y += step;
            }
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x1, y1)],
                    BLACK.stroke_width(1),
                )))
                .map_err(plot_err)?;
        }
        if let Some((x, label)) = &self.marker {
            let style = BLACK.mix(0.6).stroke_width(1);
            let drawn = chart
                .draw_series(DashedLineSeries::new(
                    vec![(*x, self.y_range.0), (*x, self.y_range.1)],
                    6,
                    4,
                    style,
                ))
                .map_err(plot_err)?;
            if text {
                drawn
                    .label(label.as_str())
                    .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], style));
            }
        }
        for (i, s) in self.series.iter().enumerate() {
            let c = colour(i);
            // Earlier series are drawn wider, so that a curve hidden under a later one with the
            // same values still shows at its edges.
            let width = 2 + (self.series.len() - 1 - i).min(3) as u32;
            let line = chart
                .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(width)))
                .map_err(plot_err)?;
            if text {
                // A filled square as legend glyph (not a path), so the chart's only polyline in
                // a series' colour is the series itself.
                line.label(s.name.as_str()).legend(move |(lx, ly)| {
                    Rectangle::new([(lx + 4, ly - 5), (lx + 14, ly + 5)], c.filled())
                });
            }
            // Alternate marker shapes so that curves stay apart in grayscale prints.
            if i % 2 == 0 {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(plot_err)?;
            } else {
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&p| TriangleMarker::new(p, 5, c.filled())),
                    )
                    .map_err(plot_err)?;
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT_FAMILY, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw` (> 0).
pub fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw * (1.0 - 1e-12))
        .unwrap_or(10.0 * mag)
}

pub use eabs_eval::report::trim_number;

/// Encodes an RGB image as PNG.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .context("encoding PNG")?;
    Ok(out)
}

/// Layout of an image grid: each `(c, h, w)` image scaled up `scale` times (nearest neighbour),
/// `sep` pixels of separator around and between cells, and optionally a bar of `mark_height`
/// pixels under each column (its colour given per column).
#[derive(Debug, Clone, Copy)]
pub struct GridLayout {
    /// `(channels, height, width)` of every image; 1 (grayscale) or 3 (RGB) channels.
    pub shape: (usize, usize, usize),
    /// Integer upscaling factor.
    pub scale: u32,
    /// Separator width in pixels.
    pub sep: u32,
    /// Height of the per-column mark bar (0: none).
    pub mark_height: u32,
}

/// Colour of the separators (mid gray, visible against black MNIST backgrounds and white
/// Fashion-MNIST / SVHN content alike).
pub const SEPARATOR: [u8; 3] = [128, 128, 128];

impl GridLayout {
    /// Pixel size `(width, height)` of a grid of `n_rows` x `n_cols` images.
    pub fn size(&self, n_rows: usize, n_cols: usize) -> (u32, u32) {
        let (_, h, w) = self.shape;
        let cell_w = w as u32 * self.scale;
        let cell_h = h as u32 * self.scale;
        let marks = if self.mark_height > 0 {
            self.mark_height + self.sep
        } else {
            0
        };
        (
            n_cols as u32 * cell_w + (n_cols as u32 + 1) * self.sep,
            n_rows as u32 * cell_h + (n_rows as u32 + 1) * self.sep + marks,
        )
    }

    /// Top-left pixel of cell `(row, col)`.
    pub fn origin(&self, row: usize, col: usize) -> (u32, u32) {
        let (_, h, w) = self.shape;
        (
            self.sep + col as u32 * (w as u32 * self.scale + self.sep),
            self.sep + row as u32 * (h as u32 * self.scale + self.sep),
        )
    }
}

/// Draws `rows[r][c]` (each a `(c, h, w)` image in `[0, 1]`, channel-major as the tensors are)
/// into a grid, with a bar of `marks[c]` under column `c` when the layout has marks.
pub fn image_grid(rows: &[Vec<&[f32]>], layout: GridLayout, marks: &[[u8; 3]]) -> Result<RgbImage> {
    let (ch, h, w) = layout.shape;
    ensure!(
        ch == 1 || ch == 3,
        "images must have 1 or 3 channels, found {ch}"
    );
    ensure!(layout.scale >= 1, "the scale must be >= 1");
    let n_rows = rows.len();
    let n_cols = rows.first().map_or(0, |r| r.len());
    ensure!(n_rows > 0 && n_cols > 0, "an image grid needs images");
    ensure!(
        rows.iter().all(|r| r.len() == n_cols),
        "every row of an image grid needs {n_cols} images"
    );
    if layout.mark_height > 0 && marks.len() != n_cols {
        bail!("{} column marks for {n_cols} columns", marks.len());
    }
    let (gw, gh) = layout.size(n_rows, n_cols);
    let mut img = RgbImage::from_pixel(gw, gh, image::Rgb(SEPARATOR));
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for (r, row) in rows.iter().enumerate() {
        for (c, chw) in row.iter().enumerate() {
            ensure!(
                chw.len() == ch * h * w,
                "image ({r}, {c}) has {} values, expected {ch}x{h}x{w}",
                chw.len()
            );
            let (ox, oy) = layout.origin(r, c);
            for y in 0..h {
                for x in 0..w {
                    let px = |k: usize| to_u8(chw[k * h * w + y * w + x]);
                    let rgb = if ch == 1 {
                        [px(0); 3]
                    } else {
                        [px(0), px(1), px(2)]
                    };
                    for dy in 0..layout.scale {
                        for dx in 0..layout.scale {
                            img.put_pixel(
                                ox + x as u32 * layout.scale + dx,
                                oy + y as u32 * layout.scale + dy,
                                image::Rgb(rgb),
                            );
                        }
                    }
                }
            }
        }
    }
    if layout.mark_height > 0 {
        let top = gh - layout.sep - layout.mark_height;
        for (c, &m) in marks.iter().enumerate() {
            let (ox, _) = layout.origin(0, c);
            for y in top..top + layout.mark_height {
                for x in ox..ox + w as u32 * layout.scale {
                    img.put_pixel(x, y, image::Rgb(m));
                }
            }
        }
    }
    Ok(img)
}

/// `(stroke colour, number of points)` of every `<polyline>` of an SVG document.
pub fn svg_polylines(svg: &str) -> Vec<(String, usize)> {
    svg.split("<polyline")
        .skip(1)
        .map(|tag| {
            let tag = &tag[..tag.find("/>").unwrap_or(tag.len())];
            let attr = |name: &str| {
                let key = format!(" {name}=\"");
                tag.find(&key).map(|i| {
                    let rest = &tag[i + key.len()..];
                    rest[..rest.find('"').unwrap_or(rest.len())].to_string()
                })
            };
            let stroke = attr("stroke").unwrap_or_default();
            let n = attr("points").map_or(0, |p| p.split_whitespace().count());
            (stroke, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex((r, g, b): (u8, u8, u8)) -> String {
        format!("#{r:02X}{g:02X}{b:02X}")
    }

    fn synthetic() -> LineChart {
        // Three decreasing accuracy curves over five epsilons.
        let xs = [0.0, 0.5, 1.0, 1.5, 2.0];
        let curve = |start: f64, slope: f64| Series {
            name: format!("model {start}"),
            points: xs
                .iter()
                .map(|&x| (x, (start - slope * x).max(0.0)))
                .collect(),
        };
        LineChart {
            title: "synthetic".into(),
            x_label: "epsilon".into(),
            y_label: "accuracy (%)".into(),
            x_range: (0.0, 2.0),
            y_range: (0.0, 100.0),
            series: vec![curve(99.0, 60.0), curve(90.0, 30.0), curve(80.0, 10.0)],
            marker: Some((1.0, "table epsilon".into())),
        }
    }

    #[test]
    fn svg_has_one_polyline_per_series() -> Result<()> {
        let chart = synthetic();
        let svg = chart.to_svg()?;
        let lines = svg_polylines(&svg);
        for (i, s) in chart.series.iter().enumerate() {
            let mine: Vec<_> = lines
                .iter()
                .filter(|(c, _)| *c == hex(PALETTE[i]))
                .collect();
            assert_eq!(mine.len(), 1, "series {i}: {mine:?}");
            assert_eq!(mine[0].1, s.points.len(), "series {i}");
        }
        if font().is_some() {
            for s in &chart.series {
                assert!(svg.contains(&s.name), "legend misses {}", s.name);
            }
            assert!(svg.contains("accuracy (%)") && svg.contains("table epsilon"));
        }
        Ok(())
    }

    #[test]
    fn png_shows_every_series() -> Result<()> {
        let chart = synthetic();
        let png = chart.to_png()?;
        let img = image::load_from_memory(&png)?.to_rgb8();
        assert_eq!((img.width(), img.height()), CHART_SIZE);
        for (i, &(r, g, b)) in PALETTE.iter().take(chart.series.len()).enumerate() {
            let n = img.pixels().filter(|p| p.0 == [r, g, b]).count();
            assert!(n > 50, "series {i}: only {n} pixels of its colour");
        }
        Ok(())
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0), 10.0);
        assert_eq!(nice_step(10.6), 20.0);
        assert_eq!(nice_step(0.03), 0.05);
        assert!((nice_step(0.15) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn tick_numbers_are_trimmed() {
        assert_eq!(trim_number(0.25), "0.25");
        assert_eq!(trim_number(8.0), "8");
        assert_eq!(trim_number(0.1 + 0.2), "0.3");
        assert_eq!(trim_number(-0.0001), "0");
        assert_eq!(trim_number(1.0 / 3.0), "0.333");
    }

    #[test]
    fn grid_places_scaled_images_and_marks() -> Result<()> {
        // Two rows of two 1x2x2 grayscale images; pixel (y, x) of image (r, c) is distinct.
        let imgs: Vec<Vec<Vec<f32>>> = (0..2)
            .map(|r| {
                (0..2)
                    .map(|c| (0..4).map(|k| (r * 8 + c * 4 + k) as f32 / 15.0).collect())
                    .collect()
            })
            .collect();
        let rows: Vec<Vec<&[f32]>> = imgs
            .iter()
            .map(|r| r.iter().map(|v| v.as_slice()).collect())
            .collect();
        let layout = GridLayout {
            shape: (1, 2, 2),
            scale: 3,
            sep: 2,
            mark_height: 4,
        };
        let marks = [[255, 0, 0], [0, 255, 0]];
        let img = image_grid(&rows, layout, &marks)?;
        // Width: 2 cells of 6 px + 3 separators of 2; height: 2 x 6 + 3 x 2 + mark 4 + 2.
        assert_eq!((img.width(), img.height()), (18, 24));
        assert_eq!(layout.size(2, 2), (18, 24));
        // Image (1, 1), pixel (y 1, x 0): value (8 + 4 + 2) / 15, at origin (10, 10) + (0, 3).
        let v = (14.0f32 / 15.0 * 255.0).round() as u8;
        for dy in 3..6 {
            for dx in 0..3 {
                assert_eq!(img.get_pixel(10 + dx, 10 + dy).0, [v; 3]);
            }
        }
        assert_eq!(img.get_pixel(0, 0).0, SEPARATOR);
        assert_eq!(img.get_pixel(8, 5).0, SEPARATOR); // between the columns
        assert_eq!(img.get_pixel(3, 19).0, [255, 0, 0]); // mark of column 0
        assert_eq!(img.get_pixel(12, 21).0, [0, 255, 0]); // mark of column 1
        assert_eq!(img.get_pixel(12, 23).0, SEPARATOR); // bottom border
        Ok(())
    }

    #[test]
    fn grid_keeps_rgb_channels_and_checks_sizes() -> Result<()> {
        // One 3x1x1 image: R = 1, G = 0, B = 0.5.
        let px = [1.0f32, 0.0, 0.5];
        let layout = GridLayout {
            shape: (3, 1, 1),
            scale: 1,
            sep: 1,
            mark_height: 0,
        };
        let img = image_grid(&[vec![&px[..]]], layout, &[])?;
        assert_eq!((img.width(), img.height()), (3, 3));
        assert_eq!(img.get_pixel(1, 1).0, [255, 0, 128]);
        assert!(image_grid(&[vec![&px[..2]]], layout, &[]).is_err());
        let png = encode_png(&img)?;
        assert_eq!(image::load_from_memory(&png)?.to_rgb8(), img);
        Ok(())
    }
}
