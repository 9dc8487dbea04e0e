//! `report.png` of `thp-agent run`: memory pressure over time, then one
//! panel per followed process with its PMD-mapped memory, the memory DAMON
//! found hot, what the run collapsed, and a mark for each collapse.
//!
//! Drawn with `plotters` into an RGB buffer and encoded with `png`. The
//! binary is static, so there is no system font: text is drawn with the 8x8
//! bitmap font of the `font8x8` crate by [`TextBackend`], which wraps the
//! bitmap backend and replaces its text rendering (plotters without a font
//! feature cannot draw text).

use crate::report::{Outcome, RunReport, TargetReport};
use plotters::backend::BitMapBackend;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
// BackendStyle is named in full: imported, its stroke_width would clash
// with that of plotters' Color on colors.
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use std::path::Path;

/// Width of the picture in pixels.
const WIDTH: u32 = 1000;
/// Height of the pressure panel.
const PSI_HEIGHT: u32 = 200;
/// Height of a process panel.
const PANEL_HEIGHT: u32 = 300;
/// Most process panels drawn; the busiest processes are shown.
pub const MAX_PANELS: usize = 8;
/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// Why the picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing failed.
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    /// Encoding or writing the PNG failed.
    #[error("cannot write {path}: {why}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// Any drawing error as a [`PlotError`].
fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// A backend that draws like `B` but renders text with an 8x8 bitmap font,
/// scaled to the requested size, in any of the four rotations.
pub struct TextBackend<B>(pub B);

impl<B> TextBackend<B> {
    /// Pixels per font pixel for a font size.
    fn scale(size: f64) -> i32 {
        ((size / 8.0).floor() as i32).clamp(1, 4)
    }

    /// Width and height of `text` at `size`.
    fn extent(text: &str, size: f64) -> (i32, i32) {
        let s = Self::scale(size);
        let chars = i32::try_from(text.chars().count()).unwrap_or(i32::MAX);
        (chars.saturating_mul(8 * s), 8 * s)
    }
}

/// The 8x8 glyph of `c` (rows top down, bit 0 the leftmost pixel); `?` for
/// characters outside ASCII.
fn glyph(c: char) -> [u8; 8] {
    let c = if c.is_ascii() { c } else { '?' };
    font8x8::legacy::BASIC_LEGACY
        .get(c as usize)
        .copied()
        .unwrap_or_default()
}

impl<B: DrawingBackend> DrawingBackend for TextBackend<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (width, height) = Self::extent(text, style.size());
        let scale = Self::scale(style.size());
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        let inside = |(x, y): BackendCoord| x >= 0 && y >= 0 && x < w as i32 && y < h as i32;
        for (i, c) in text.chars().enumerate() {
            let left = i32::try_from(i)
                .unwrap_or(i32::MAX)
                .saturating_mul(8 * scale);
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = left + col * scale + sx + dx;
                            let y = row as i32 * scale + sy + dy;
                            let (x, y) = transform.transform(x, y);
                            let p = (pos.0 + x, pos.1 + y);
                            if inside(p) {
                                self.draw_pixel(p, color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = Self::extent(text, style.size());
        Ok((w.unsigned_abs(), h.unsigned_abs()))
    }
}

/// The processes drawn: the [`MAX_PANELS`] with the most collapses, in the
/// report's order.
fn shown(report: &RunReport) -> Vec<&TargetReport> {
    let mut by_work: Vec<&TargetReport> = report.targets.iter().collect();
    by_work.sort_by_key(|t| std::cmp::Reverse(t.collapses.len()));
    by_work.truncate(MAX_PANELS);
    report
        .targets
        .iter()
        .filter(|t| by_work.iter().any(|s| std::ptr::eq(*s, *t)))
        .collect()
}

/// Seconds from milliseconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A chart of `area` from 0 to `x_max` seconds and from 0 to `y_max`
/// `y_unit`, with a caption and a mesh.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    (x_max, y_max): (f64, f64),
    y_unit: &str,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(6)
        .x_desc("s")
        .y_desc(y_unit)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// Draws the pressure panel.
fn draw_psi<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &RunReport,
    x_max: f64,
) -> Result<(), PlotError> {
    let limit = report.settings.max_psi_some_avg10;
    let y_max = report
        .psi
        .iter()
        .map(|p| p.some_avg10)
        .fold(limit, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = panel(
        area,
        "memory pressure: PSI some avg10 and the limit",
        (x_max, y_max),
        "%",
    )?;
    chart
        .draw_series(LineSeries::new(
            report.psi.iter().map(|p| (secs(p.t_ms), p.some_avg10)),
            BLACK.stroke_width(2),
        ))
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new([(0.0, limit), (x_max, limit)], RED))
        .map_err(draw_err)?;
    Ok(())
}

/// Draws the panel of one process.
fn draw_target<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    t: &TargetReport,
    x_max: f64,
) -> Result<(), PlotError> {
    let mib = |b: u64| b as f64 / MIB;
    let y_max = t
        .samples
        .iter()
        .map(|s| {
            s.pmd_mapped
                .max(s.hot_bytes.unwrap_or(0))
                .max(s.collapsed_bytes)
        })
        .max()
        .map_or(2.0, mib)
        .max(2.0)
        * 1.15;
    let mut caption = format!("pid {} {} ({})", t.pid, t.comm, t.spec);
    if let Some(ms) = t.exited_at_ms {
        caption.push_str(&format!(", exited at {:.1} s", secs(ms)));
    }
    if t.dropped.is_some() {
        caption.push_str(", dropped");
    }
    let mut chart = panel(area, &caption, (x_max, y_max), "MiB")?;
    let orange = RGBColor(230, 140, 0);
    let green = RGBColor(0, 150, 0);
    let hot: Vec<(f64, f64)> = t
        .samples
        .iter()
        .filter_map(|s| Some((secs(s.t_ms), mib(s.hot_bytes?))))
        .collect();
    chart
        .draw_series(LineSeries::new(hot, orange))
        .map_err(draw_err)?
        .label("hot (DAMON)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], orange));
    let pmd: Vec<(f64, f64)> = t
        .samples
        .iter()
        .map(|s| (secs(s.t_ms), mib(s.pmd_mapped)))
        .collect();
    chart
        .draw_series(LineSeries::new(pmd, BLUE.stroke_width(2)))
        .map_err(draw_err)?
        .label("PMD-mapped")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    // What the run collapsed, as a step at each collapse, and a mark per
    // collapse: filled where it succeeded, hollow where it failed.
    let end = secs(
        t.exited_at_ms
            .unwrap_or(t.samples.last().map_or(0, |s| s.t_ms)),
    );
    let mut done = 0.0;
    let mut steps = vec![(secs(t.first_seen_ms), 0.0)];
    let mut marks = Vec::new();
    for c in &t.collapses {
        let x = secs(c.t_ms);
        let ok = matches!(c.range.outcome, Outcome::Collapsed { .. });
        if ok {
            steps.push((x, done));
            done += mib(c.range.end - c.range.start);
            steps.push((x, done));
        }
        marks.push((x, done, ok));
    }
    steps.push((end.max(steps.last().map_or(0.0, |s| s.0)), done));
    chart
        .draw_series(LineSeries::new(steps, green))
        .map_err(draw_err)?
        .label("collapsed by thp-agent")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], green));
    chart
        .draw_series(marks.iter().map(|&(x, y, ok)| {
            let style = if ok { RED.filled() } else { RED.into() };
            Circle::new((x, y), 3, style)
        }))
        .map_err(draw_err)?
        .label("collapse (hollow: failed)")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Draws the whole picture on `root`.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &RunReport,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let x_max = report.elapsed_s.max(1.0);
    let (psi, rest) = root.split_vertically(PSI_HEIGHT);
    draw_psi(&psi, report, x_max)?;
    let targets = shown(report);
    if targets.is_empty() {
        rest.draw_text(
            "no process was followed",
            &("sans-serif", 16).into_font().color(&BLACK),
            (20, 20),
        )
        .map_err(draw_err)?;
        return Ok(());
    }
    let panels = rest.split_evenly((targets.len(), 1));
    for (area, t) in panels.iter().zip(targets) {
        draw_target(area, t, x_max)?;
    }
    Ok(())
}

/// The size of the picture for `report`.
pub fn size(report: &RunReport) -> (u32, u32) {
    let panels = shown(report).len().max(1) as u32;
    (WIDTH, PSI_HEIGHT + panels * PANEL_HEIGHT)
}

/// Renders `report` as an RGB image of [`size`].
pub fn render(report: &RunReport) -> Result<Vec<u8>, PlotError> {
    let (w, h) = size(report);
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = TextBackend(BitMapBackend::with_buffer(&mut buf, (w, h)));
        let root = backend.into_drawing_area();
        draw(&root, report)?;
        root.present().map_err(draw_err)?;
    }
    Ok(buf)
}

/// Writes `report` as a PNG file.
pub fn write_png(report: &RunReport, path: &Path) -> Result<(), PlotError> {
    let rgb = render(report)?;
    let (w, h) = size(report);
    let err = |why: String| PlotError::Write {
        path: path.display().to_string(),
        why,
    };
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(&rgb)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests;
