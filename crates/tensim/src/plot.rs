//! Heat-maps of similarity matrices (PNG or SVG by extension), drawn with plotters and an
//! embedded font (DejaVu Sans, `assets/LICENSE-DejaVu.txt`), so no system fonts are needed.
//!
//! Diverging red–white–blue colour map centred at 0 (−1 blue, 0 white, +1 red), a colour bar,
//! checkpoint labels on both axes (or a log-scaled step axis), the metric in the title, and
//! optional phase outlines along the diagonal.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::linalg::Mat;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// What to draw besides the matrix.
#[derive(Clone, Debug, Default)]
pub struct HeatmapOptions {
    pub title: String,
    /// One label per checkpoint (tick labels).
    pub labels: Vec<String>,
    /// Training steps per checkpoint: with `log_steps`, cells are placed on a log(step + 1) axis.
    pub steps: Option<Vec<f64>>,
    pub log_steps: bool,
    /// First checkpoint index of each phase after the first (phase boundaries).
    pub boundaries: Vec<usize>,
}

/// `v ∈ [−1, 1]` → colour, piecewise linear through the RdBu stops (blue, white, red); grey
/// for `NaN` (an undefined similarity).
pub fn diverging(v: f64) -> RGBColor {
    if v.is_nan() {
        return RGBColor(160, 160, 160);
    }
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [5.0, 48.0, 97.0]),
        (0.25, [67.0, 147.0, 195.0]),
        (0.5, [247.0, 247.0, 247.0]),
        (0.75, [214.0, 96.0, 77.0]),
        (1.0, [103.0, 0.0, 31.0]),
    ];
    let t = ((v.clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0);
    let k = STOPS
        .iter()
        .rposition(|s| s.0 <= t)
        .unwrap()
        .min(STOPS.len() - 2);
    let ((t0, c0), (t1, c1)) = (STOPS[k], STOPS[k + 1]);
    let w = (t - t0) / (t1 - t0);
    let ch = |i: usize| (c0[i] + w * (c1[i] - c0[i])).round() as u8;
    RGBColor(ch(0), ch(1), ch(2))
}

/// Cell edges along one axis: unit cells, or cells around `log10(step + 1)` split at midpoints.
fn edges(n: usize, opts: &HeatmapOptions) -> Result<Vec<f64>> {
    match (&opts.steps, opts.log_steps) {
        (Some(steps), true) => {
            if steps.len() != n || steps.windows(2).any(|w| w[1] <= w[0]) {
                return Err(Error::Invalid(
                    "a log step axis needs increasing step numbers, one per checkpoint".into(),
                ));
            }
            let p: Vec<f64> = steps.iter().map(|s| (s + 1.0).log10()).collect();
            let mut e = vec![0.0; n + 1];
            for i in 1..n {
                e[i] = 0.5 * (p[i - 1] + p[i]);
            }
            let gap = |a: f64, b: f64| if n > 1 { 0.5 * (b - a) } else { 0.5 };
            e[0] = p[0] - gap(p[0], *p.get(1).unwrap_or(&(p[0] + 1.0)));
            e[n] = p[n - 1] + gap(p[n.saturating_sub(2)], p[n - 1]);
            Ok(e)
        }
        (None, true) => Err(Error::Invalid(
            "a log step axis needs step numbers in the checkpoint names".into(),
        )),
        // Cell i centred on i, so integer ticks sit on cell centres.
        _ => Ok((0..=n).map(|i| i as f64 - 0.5).collect()),
    }
}

/// Training curves drawn above a heat-map (`training_figure`): panels, top to bottom.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    pub panels: Vec<Panel>,
}

/// One panel of curves: series `(name, one value per checkpoint)` sharing a y axis.
#[derive(Clone, Debug)]
pub struct Panel {
    pub label: String,
    pub log_y: bool,
    pub series: Vec<(String, Vec<f64>)>,
}

/// Draw `sim` (N × N) into `path` (`.png` or `.svg`), written atomically.
pub fn heatmap(sim: &Mat<f64>, path: &Path, opts: &HeatmapOptions) -> Result<()> {
    struct Heat<'a>(&'a Mat<f64>, &'a HeatmapOptions);
    impl Painter for Heat<'_> {
        fn paint<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> std::result::Result<(), String> {
            draw(root, self.0, self.1)
        }
    }
    render(path, (960, 820), &Heat(sim, opts))
}

/// A breakdown's contributions (`parts of A × parts of B`, parts named `what`) into `path`, rows
/// and columns in the matching's order (matched pairs on the diagonal,
/// [`matched_order`](crate::metrics::breakdown::matched_order)), coloured on `[−max|c|, max|c|]`,
/// tick labels the parts' own indices.
pub fn breakdown(c: &Mat<f64>, what: &str, title: &str, path: &Path) -> Result<()> {
    struct Cells<'a>(&'a Mat<f64>, &'a [usize], &'a [usize], &'a str, &'a str);
    impl Painter for Cells<'_> {
        fn paint<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> std::result::Result<(), String> {
            let Cells(c, rows, cols, what, title) = *self;
            let err = |e: &dyn std::fmt::Display| e.to_string();
            root.fill(&WHITE).map_err(|x| err(&x))?;
            let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 - 110);
            let (nr, nc) = (rows.len(), cols.len());
            let mut chart = ChartBuilder::on(&main)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5..nc as f64 - 0.5, nr as f64 - 0.5..-0.5)
                .map_err(|x| err(&x))?;
            let tick = |order: &[usize], v: f64| {
                let i = v.round();
                match ((v - i).abs() < 1e-9, order.get(i.max(0.0) as usize)) {
                    (true, Some(k)) if i >= 0.0 => k.to_string(),
                    _ => String::new(),
                }
            };
            let (xd, yd) = (format!("{what} of B"), format!("{what} of A"));
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(xd)
                .y_desc(yd)
                .label_style(("sans-serif", 13))
                .x_labels(nc.min(16))
                .y_labels(nr.min(16))
                .x_label_formatter(&|v| tick(cols, *v))
                .y_label_formatter(&|v| tick(rows, *v))
                .draw()
                .map_err(|x| err(&x))?;
            let max = crate::linalg::max_abs(c.as_ref());
            let scale = if max > 0.0 { max } else { 1.0 };
            chart
                .draw_series(
                    (0..nr)
                        .flat_map(|i| (0..nc).map(move |j| (i, j)))
                        .map(|(i, j)| {
                            let (x, y) = (j as f64, i as f64);
                            Rectangle::new(
                                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                                diverging(c[(rows[i], cols[j])] / scale).filled(),
                            )
                        }),
                )
                .map_err(|x| err(&x))?;
            colour_bar(&bar, scale).map_err(|x| err(&x))
        }
    }
    let (rows, cols) = crate::metrics::breakdown::matched_order(c);
    render(path, (960, 820), &Cells(c, &rows, &cols, what, title))
}

/// The paper-style figure: `curves` over the checkpoints' (log) step axis on top, the heat-map of
/// `sim` below on the same axis, phases outlined.
pub fn training_figure(
    sim: &Mat<f64>,
    curves: &Curves,
    path: &Path,
    opts: &HeatmapOptions,
) -> Result<()> {
    struct Figure<'a>(&'a Mat<f64>, &'a Curves, &'a HeatmapOptions, u32);
    impl Painter for Figure<'_> {
        fn paint<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> std::result::Result<(), String> {
            let (sim, curves, opts, top) = (self.0, self.1, self.2, self.3);
            root.fill(&WHITE).map_err(|x| x.to_string())?;
            let (upper, lower) = root.split_vertically(top);
            let e = edges(sim.nrows(), opts).map_err(|x| x.to_string())?;
            let panels = upper.split_evenly((curves.panels.len(), 1));
            for (area, panel) in panels.iter().zip(&curves.panels) {
                draw_curves(area, &e, panel, opts).map_err(|x| x.to_string())?;
            }
            draw(&lower, sim, opts)
        }
    }
    let top = 230 * curves.panels.len() as u32;
    render(path, (960, 820 + top), &Figure(sim, curves, opts, top))
}

/// Several heat-maps side by side, `cols` per row (one panel per metric), written atomically.
pub fn heatmap_grid(
    panels: &[(&Mat<f64>, HeatmapOptions)],
    cols: usize,
    path: &Path,
) -> Result<()> {
    struct Grid<'a>(&'a [(&'a Mat<f64>, HeatmapOptions)], usize);
    impl Painter for Grid<'_> {
        fn paint<DB: DrawingBackend>(
            &self,
            root: &DrawingArea<DB, Shift>,
        ) -> std::result::Result<(), String> {
            root.fill(&WHITE).map_err(|x| x.to_string())?;
            let rows = self.0.len().div_ceil(self.1);
            for (area, (sim, opts)) in root.split_evenly((rows, self.1)).iter().zip(self.0) {
                draw(area, sim, opts)?;
            }
            Ok(())
        }
    }
    let (cols, rows) = (cols.max(1), panels.len().div_ceil(cols.max(1)));
    render(
        path,
        (720 * cols as u32, 640 * rows as u32),
        &Grid(panels, cols),
    )
}

const SERIES_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn draw_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    e: &[f64],
    panel: &Panel,
    opts: &HeatmapOptions,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (label, log_y, series) = (panel.label.as_str(), panel.log_y, &panel.series);
    let (main, _) = area.split_horizontally(area.dim_in_pixel().0 - 110);
    let n = e.len() - 1;
    let centre = |i: usize| 0.5 * (e[i] + e[i + 1]);
    let tf = |v: f64| if log_y { v.max(1e-12).log10() } else { v };
    let values = series.iter().flat_map(|(_, v)| v.iter().map(|&x| tf(x)));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let pad = 0.05 * (hi - lo).max(1e-9);
    let mut chart = ChartBuilder::on(&main)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(e[0]..e[n], (lo - pad)..(hi + pad))?;
    let log = opts.log_steps;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .y_desc(label)
        .label_style(("sans-serif", 13))
        .x_labels(if log { 8 } else { 12 })
        .x_label_formatter(&|v| step_label(*v, log, n, opts))
        .y_label_formatter(&|v| match (log_y, (v - v.round()).abs() < 1e-9) {
            (true, true) => format!("1e{:.0}", v.round()),
            (true, false) => String::new(),
            (false, _) => format!("{v:.2}"),
        })
        .draw()?;
    for (k, (name, v)) in series.iter().enumerate() {
        let colour = SERIES_COLOURS[k % SERIES_COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                (0..n).map(|i| (centre(i), tf(v[i]))),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(if log_y {
            SeriesLabelPosition::LowerLeft
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .draw()?;
    Ok(())
}

/// Tick label of axis value `v`: round decades on a log step axis, else the checkpoint's label.
fn step_label(v: f64, log: bool, n: usize, opts: &HeatmapOptions) -> String {
    if log {
        // Decades only, as round numbers (position log10(step + 1) ≈ log10(step)).
        let k = v.round();
        match ((v - k).abs() < 1e-9, k as i32) {
            (true, 0..=4) => format!("{}", 10u64.pow(k as u32)),
            (true, _) => format!("1e{k}"),
            _ => String::new(),
        }
    } else {
        let i = v.round();
        if (v - i).abs() < 1e-9 && i >= 0.0 && (i as usize) < n {
            opts.labels
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| i.to_string())
        } else {
            String::new()
        }
    }
}

/// Something that draws itself on any plotters backend.
trait Painter {
    fn paint<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

/// Render `painter` into a PNG or SVG (by extension) of `size`, written atomically.
/// The figure format of `path`: `"png"` or `"svg"` (its extension), else an error. Commands
/// call it before their work, so that a misnamed figure is refused before anything is computed.
pub fn format_of(path: &Path) -> Result<&'static str> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => Ok("png"),
        "svg" => Ok("svg"),
        _ => Err(Error::Invalid(format!(
            "{}: figures are written as .png or .svg",
            path.display()
        ))),
    }
}

fn render(path: &Path, size: (u32, u32), painter: &impl Painter) -> Result<()> {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let ext = format_of(path)?;
    let fail = |e: String| Error::Invalid(format!("drawing {}: {e}", path.display()));
    match ext {
        "svg" => {
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
                painter.paint(&root).map_err(fail)?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            write_atomic(path, text.as_bytes())
        }
        "png" => {
            let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
                painter.paint(&root).map_err(fail)?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            write_atomic(path, &encode_png(&pixels, size).map_err(fail)?)
        }
        _ => unreachable!("format_of gives png or svg"),
    }
}

/// PNG bytes of an RGB buffer (plotters' own encoder writes to a path; this keeps writes atomic).
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sim: &Mat<f64>,
    opts: &HeatmapOptions,
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let n = sim.nrows();
    let e = edges(n, opts).map_err(|x| x.to_string())?;
    root.fill(&WHITE).map_err(|x| err(&x))?;
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0 - 110);
    let log = opts.log_steps;
    let label_at = |v: &f64| step_label(*v, log, n, opts);
    let mut chart = ChartBuilder::on(&main)
        .caption(&opts.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(80)
        .build_cartesian_2d(e[0]..e[n], e[n]..e[0])
        .map_err(|x| err(&x))?;
    // Ticks at cell centres (checkpoint labels) or at round steps (log axis).
    let desc = if opts.steps.is_some() {
        "training step"
    } else {
        "checkpoint"
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh()
        .x_desc(desc)
        .y_desc(desc)
        .label_style(("sans-serif", 13))
        .x_label_formatter(&label_at)
        .y_label_formatter(&label_at);
    let ticks = if log { 8 } else { n.min(12) };
    mesh.x_labels(ticks)
        .y_labels(ticks)
        .draw()
        .map_err(|x| err(&x))?;
    chart
        .draw_series(
            (0..n)
                .flat_map(|i| (0..n).map(move |j| (i, j)))
                .map(|(i, j)| {
                    Rectangle::new(
                        [(e[j], e[i]), (e[j + 1], e[i + 1])],
                        diverging(sim[(i, j)]).filled(),
                    )
                }),
        )
        .map_err(|x| err(&x))?;
    // Phase outlines: one square per phase along the diagonal.
    let mut starts = vec![0];
    starts.extend(opts.boundaries.iter().copied().filter(|&b| b > 0 && b < n));
    starts.push(n);
    chart
        .draw_series(starts.windows(2).map(|w| {
            Rectangle::new(
                [(e[w[0]], e[w[0]]), (e[w[1]], e[w[1]])],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|x| err(&x))?;
    colour_bar(&bar, 1.0).map_err(|x| err(&x))
}

/// The colour bar of [`diverging`] for values in `[−max, max]`.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    max: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(46)
        .margin_bottom(82)
        .margin_right(30)
        .y_label_area_size(0)
        .right_y_label_area_size(52)
        .build_cartesian_2d(0.0..1.0, -1.0..1.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(9)
        .y_label_formatter(&|v| {
            if max == 1.0 {
                format!("{v:.2}")
            } else {
                format!("{:.1e}", v * max)
            }
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    let steps = 200;
    chart.draw_series((0..steps).map(|k| {
        let (a, b) = (
            -1.0 + 2.0 * k as f64 / steps as f64,
            -1.0 + 2.0 * (k + 1) as f64 / steps as f64,
        );
        Rectangle::new([(0.0, a), (1.0, b)], diverging(0.5 * (a + b)).filled())
    }))?;
    Ok(())
}
