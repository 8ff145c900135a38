//! Drawing a [`PlotData`]: plotters makes the SVG (text left to the viewer's `sans-serif`,
//! measured for layout with the font in assets/fonts); resvg rasterises that SVG to PNG with
//! the same font, so a PNG needs no system font and shows what the SVG shows.
//!
//! plotters is the established Rust plotting crate (log axes, error bars, pure Rust with its
//! default features off). Its own bitmap backend draws text through ab_glyph with each glyph
//! placed by its own bounds (a full stop sits mid-line, spacing is uneven), hence resvg, the
//! reference SVG renderer in Rust.

use std::sync::{Arc, Once, OnceLock};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::ReportError;
use super::series::PlotData;

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;
/// Room on the right for the legend.
const LEGEND_W: u32 = 250;

/// Tableau's ten categorical colours: distinct, and readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font checked in with the source; a failure here is a
        // build defect, caught by the tests.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::error!("the bundled font could not be loaded; PNG text will be missing");
        }
    });
}

fn draw_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw(e.to_string())
}

/// A tick label: short, no float noise.
fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e5 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The data's range, padded; a log axis keeps to positive values.
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let vs: Vec<f64> = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let (lo, hi) = vs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (lo, hi) = if lo == hi {
            (lo / 2.0, hi * 2.0)
        } else {
            (lo, hi)
        };
        (lo / 1.15, hi * 1.15)
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.06
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad, hi + pad)
    }
}

/// Ticks at 1, 2 and 5 per decade (every integer multiple when the range spans less than a
/// decade and a half): plotters' log axis labels only powers of ten, so a narrow range had none.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pick = |mult: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mult {
                let v = decade * m;
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    };
    let few = pick(&[1.0, 2.0, 5.0]);
    if few.len() >= 3 {
        few
    } else {
        pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

fn log_axis(
    lo: f64,
    hi: f64,
) -> plotters::coord::combinators::WithKeyPoints<plotters::coord::combinators::LogCoord<f64>> {
    (lo..hi).log_scale().with_key_points(log_ticks(lo, hi))
}

pub fn render_svg(d: &PlotData) -> Result<String, ReportError> {
    register_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, d)?;
        root.present().map_err(draw_err)?;
    }
    Ok(s)
}

/// The fonts resvg may use: only the bundled one, standing in for `sans-serif`.
fn fontdb() -> Arc<resvg::usvg::fontdb::Database> {
    static DB: OnceLock<Arc<resvg::usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = resvg::usvg::fontdb::Database::new();
        db.load_font_data(FONT.to_vec());
        let family = db
            .faces()
            .next()
            .and_then(|f| f.families.first().map(|(n, _)| n.clone()))
            .unwrap_or_else(|| "DejaVu Sans".into());
        db.set_sans_serif_family(family);
        Arc::new(db)
    })
    .clone()
}

/// The SVG rasterised by resvg on white, so that the PNG is the SVG as a browser shows it.
pub fn render_png(d: &PlotData) -> Result<Vec<u8>, ReportError> {
    use resvg::{tiny_skia, usvg};
    let svg = render_svg(d)?;
    let opt = usvg::Options {
        fontdb: fontdb(),
        font_family: "sans-serif".into(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(&svg, &opt).map_err(draw_err)?;
    let mut pixmap = tiny_skia::Pixmap::new(WIDTH, HEIGHT)
        .ok_or_else(|| ReportError::Draw("cannot allocate the PNG canvas".into()))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    // Every pixel is opaque (white background), so premultiplied RGBA is plain RGBA.
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(draw_err)?;
        w.write_image_data(pixmap.data()).map_err(draw_err)?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    d: &PlotData,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err)?;
    let (chart_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_W);
    let xs = d.series.iter().flat_map(|s| s.points.iter().map(|p| p.x));
    let (x0, x1) = range(xs, d.log_x);
    let ys = d
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .flat_map(|p| {
            let e = if d.error_bars { p.y.std } else { 0.0 };
            [p.y.mean - e, p.y.mean + e]
        })
        .chain(d.baselines.iter().map(|b| b.y.mean));
    let (y0, y1) = range(ys, d.log_y);
    match (d.log_x, d.log_y) {
        (false, false) => chart(&chart_area, d, x0..x1, y0..y1)?,
        (true, false) => chart(&chart_area, d, log_axis(x0, x1), y0..y1)?,
        (false, true) => chart(&chart_area, d, x0..x1, log_axis(y0, y1))?,
        (true, true) => chart(&chart_area, d, log_axis(x0, x1), log_axis(y0, y1))?,
    }
    legend(&legend_area, d)
}

fn chart<DB, X, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    d: &PlotData,
    x: X,
    y: Y,
) -> Result<(), ReportError>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut c = ChartBuilder::on(area)
        .caption(&d.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc(d.x_label.as_str())
        .y_desc(d.y_label.as_str())
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(draw_err)?;
    let (xlo, xhi) = {
        let r = c.x_range();
        (r.start, r.end)
    };
    for b in &d.baselines {
        let style = ShapeStyle::from(&RGBColor(90, 90, 90)).stroke_width(1);
        c.draw_series(DashedLineSeries::new(
            [(xlo, b.y.mean), (xhi, b.y.mean)],
            6,
            4,
            style,
        ))
        .map_err(draw_err)?;
    }
    for s in &d.series {
        let col = colour(s.colour);
        let style = ShapeStyle::from(&col).stroke_width(2);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x, p.y.mean)).collect();
        if s.dashed {
            c.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(draw_err)?;
        } else {
            c.draw_series(LineSeries::new(pts.clone(), style))
                .map_err(draw_err)?;
        }
        if d.error_bars {
            c.draw_series(
                s.points
                    .iter()
                    .filter(|p| p.y.n > 1 && p.y.std > 0.0)
                    .map(|p| {
                        ErrorBar::new_vertical(
                            p.x,
                            p.y.mean - p.y.std,
                            p.y.mean,
                            p.y.mean + p.y.std,
                            col.stroke_width(1),
                            8,
                        )
                    }),
            )
            .map_err(draw_err)?;
        }
        c.draw_series(pts.iter().map(|&p| {
            if s.dashed {
                Circle::new(p, 3, col.stroke_width(2))
            } else {
                Circle::new(p, 3, col.filled())
            }
        }))
        .map_err(draw_err)?;
    }
    if d.point_count() == 0 {
        area.draw(&Text::new(
            "no data (see the notes below the figure)",
            (80, 200),
            ("sans-serif", 16).into_font().color(&RGBColor(150, 0, 0)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    d: &PlotData,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let font = ("sans-serif", 13).into_font();
    let mut y = 48;
    let max_chars = 30;
    let short = |s: &str| {
        if s.chars().count() > max_chars {
            format!("{}…", s.chars().take(max_chars - 1).collect::<String>())
        } else {
            s.to_string()
        }
    };
    for s in &d.series {
        let col = colour(s.colour);
        if s.dashed {
            for k in 0..3 {
                let x = 8 + k * 10;
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 6, y)],
                    col.stroke_width(2),
                ))
                .map_err(draw_err)?;
            }
        } else {
            area.draw(&PathElement::new(
                vec![(8, y), (34, y)],
                col.stroke_width(2),
            ))
            .map_err(draw_err)?;
        }
        area.draw(&Text::new(short(&s.label), (42, y - 7), font.clone()))
            .map_err(draw_err)?;
        y += 20;
    }
    for b in &d.baselines {
        area.draw(&PathElement::new(
            vec![(8, y), (14, y)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(draw_err)?;
        area.draw(&PathElement::new(
            vec![(20, y), (26, y)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(draw_err)?;
        area.draw(&Text::new(short(&b.label), (42, y - 7), font.clone()))
            .map_err(draw_err)?;
        y += 20;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::series::{Baseline, Point, Series};
    use crate::report::stats::Agg;

    fn data(log_x: bool) -> PlotData {
        let pt = |x: f64, m: f64, s: f64, n: usize| Point {
            x,
            y: Agg { mean: m, std: s, n },
        };
        PlotData {
            name: "acc".into(),
            title: "Accuracy ± std".into(),
            x_label: "remaining (%)".into(),
            y_label: "accuracy (%)".into(),
            log_x,
            log_y: false,
            error_bars: true,
            series: vec![
                Series {
                    label: "ticket".into(),
                    points: vec![
                        pt(100.0, 97.0, 0.0, 1),
                        pt(51.2, 97.5, 0.3, 3),
                        pt(3.6, 95.0, 0.5, 3),
                    ],
                    dashed: false,
                    colour: 0,
                },
                Series {
                    label: "random".into(),
                    points: vec![pt(51.2, 96.5, 0.2, 3), pt(3.6, 90.0, 1.0, 3)],
                    dashed: true,
                    colour: 1,
                },
            ],
            baselines: vec![Baseline {
                label: "eval_dense".into(),
                y: Agg {
                    mean: 97.2,
                    std: 0.0,
                    n: 1,
                },
            }],
            notes: vec![],
        }
    }

    #[test]
    fn svg_holds_one_marker_per_point_the_labels_and_error_bars() {
        for log_x in [false, true] {
            let svg = render_svg(&data(log_x)).unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
            // A marker per point (5), and plotters' error bar marks its mean with one more
            // circle (4 points have n > 1 and a spread).
            assert_eq!(svg.matches("<circle").count(), 9);
            for label in [
                "ticket",
                "random",
                "eval_dense",
                "Accuracy ± std",
                "remaining (%)",
            ] {
                assert!(svg.contains(label), "{label} missing");
            }
            assert!(!svg.contains("NaN"));
        }
    }

    #[test]
    fn png_is_drawn_with_the_bundled_font_and_the_series_colours() {
        let bytes = render_png(&data(true)).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let count = |c: (u8, u8, u8)| buf.chunks(4).filter(|p| (p[0], p[1], p[2]) == c).count();
        assert!(count(PALETTE[0]) > 200, "first series drawn");
        assert!(count(PALETTE[1]) > 50, "second series drawn");
        // Text: dark anti-aliased pixels in the caption band at the top.
        let dark_top = buf[..(WIDTH * 40 * 4) as usize]
            .chunks(4)
            .filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100)
            .count();
        assert!(
            dark_top > 100,
            "caption text drawn ({dark_top} dark pixels)"
        );
    }

    #[test]
    fn log_axes_get_ticks_even_when_narrow() {
        assert_eq!(log_ticks(3.0, 110.0), vec![5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(21.9, 57.9), vec![30.0, 40.0, 50.0]);
    }

    #[test]
    fn empty_plots_still_render() {
        let mut d = data(true);
        d.series.clear();
        d.baselines.clear();
        assert!(render_svg(&d).unwrap().contains("no data"));
        assert!(render_png(&d).is_ok());
    }
}
